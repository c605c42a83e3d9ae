"""Build results.json for notebooks/23_mtl_ablations.ipynb from the per-variant files of run_ablations.py and the
AE / All-in-One / NSA runs of the embedded `quick` bench (``medad-edu bench``; same data, same machine).

    python book/results/mtl_ablations/assemble.py --runs /tmp/mtl_abl --bench BENCH_RESULTS.json [...]
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import platform

import torch

from medad_edu.utils import versions

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", required=True, help="folder of run_ablations.py's <variant>.json files")
    ap.add_argument("--bench", nargs="+", default=[], help="bench results.json files with the baselines")
    ap.add_argument("--methods", default="ae,allinone,nsa")
    args = ap.parse_args()
    runs = {}
    for p in sorted(glob.glob(os.path.join(args.runs, "*.json"))):
        with open(p) as f:
            rec = json.load(f)
        runs[rec["name"]] = rec
    baselines: dict = {}
    for path in args.bench:
        with open(path) as f:
            bench = json.load(f)
        for run in bench["runs"]:
            if run["method"] not in args.methods.split(","):
                continue
            ev, tm = run["evaluation"], run["timing"]
            entry = baselines.setdefault(run["method"], {"source": f"medad-edu bench ({bench['created']})",
                                                         "epochs": tm["epochs"], "seeds": {}})
            entry["seeds"][str(run["seed"])] = {
                "image_auroc": ev["mean"]["image_auroc"],
                "tasks": {k: v["image_auroc"] for k, v in ev["tasks"].items()},
                "train_wall_s": tm["train_seconds"], "train_cpu_s": tm.get("train_cpu_seconds"),
                "train_img_s": tm["train_images_per_second"]}
    out = {
        "schema": 1,
        "description": "MTL-MAD on the embedded data, quick configuration: two full runs (12 epochs, seeds 0 and 1) "
                       "and ablations (6 epochs, seed 0), every fusion scored on valid (to choose) and test (to report).",
        "settings": {"data": "embedded", "image_size": 64, "sizes": "quick", "config": "quick", "batch_size": 32,
                     "lr": 0.001, "torch_threads": 1,
                     "hardware": f"2 shared CPU cores ({platform.machine()}, {platform.system()}), 1 torch thread; "
                                 "other jobs ran on the same cores, so wall times vary, CPU times less",
                     "versions": versions(),
                     "commands": ["OMP_NUM_THREADS=1 python book/results/mtl_ablations/run_ablations.py --out RUNS",
                                  "python book/results/mtl_ablations/assemble.py --runs RUNS --bench BENCH.json ..."]},
        "organs": ["chest_xray", "brain_mri", "fundus", "breast_us", "head_ct"],
        "runs": runs,
        "baselines": baselines,
    }
    diag = os.path.join(HERE, "lesion_diagnosis.json")  # written by diagnose_lesion.py, if run
    if os.path.exists(diag):
        with open(diag) as f:
            out["lesion_diagnosis"] = json.load(f)
    with open(os.path.join(HERE, "results.json"), "w") as f:
        json.dump(out, f, indent=1)
    print("wrote", os.path.join(HERE, "results.json"), "with", len(runs), "MTL runs and", sorted(baselines))


if __name__ == "__main__":
    main()
