"""Keep a compact record of a 2-organ peer bench (the runs of ``medad-edu bench ... --tasks brain_mri,head_ct``).

For each method and seed: image AUROC, pixel AUROC and AUPRO (means over the two organs, test split), the image
AUROC per organ, the epochs and the training CPU seconds. Usage::

    python book/results/mtl_min_steps/peers.py peers_2organs.json phantom=PH_PEERS real=RE_PEERS

where each ``*_PEERS`` is a bench's output folder (its ``results.json``).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def compact(results: dict) -> dict:
    out: dict = {}
    for run in results["runs"]:
        ev = run["evaluation"]
        out.setdefault(run["method"], {})[str(run["seed"])] = {
            "image_auroc": ev["mean"]["image_auroc"], "pixel_auroc": ev["mean"]["pixel_auroc"],
            "aupro": ev["mean"]["aupro"],
            "image_auroc_per_organ": {t: v["image_auroc"] for t, v in ev["tasks"].items()},
            "epochs": run["timing"]["epochs"], "train_cpu_seconds": run["timing"]["train_cpu_seconds"]}
    return out


def main(out_path: str, *specs: str) -> None:
    record: dict = {"about": "2-organ peer benches (brain_mri, head_ct; quick; seeds 0, 1, 2): test split, "
                             "read after the choice of min_steps", "sets": {}}
    for spec in specs:
        kind, folder = spec.split("=", 1)
        results = json.loads((Path(folder) / "results.json").read_text())
        record["sets"][kind] = {"data": results["data"], "hardware": results["hardware"],
                                "versions": {k: results["versions"].get(k) for k in ("torch", "medad_edu")},
                                "methods": compact(results)}
    Path(out_path).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: peers.py OUT.json KIND=BENCH_FOLDER [...]")
    main(*sys.argv[1:])
