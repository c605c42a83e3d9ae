"""How to read a reconstruction's map: a variance floor and a morphological opening, chosen on a tune split.

The tune split is a fresh draw of the embedded generator (seed 7; 100 normal + 100 abnormal validation images per
organ), disjoint from the benches' data (seed 0), so no bench test image is used to choose. The models are the
three ``quick`` bench runs (seeds 0, 1, 2) of each method on each embedded set. The readings change no weight, so
each run is scored as trained, read in several ways:

- ``allinone``: the map ``(x - x_hat)^2 / max(e^s, 0.05^2)`` opened with a k x k square, k in 0 (none), 3, 5, and
  an off-centre 2 x 2 square (tried, not an option of the package, which takes centred squares);
- ``aeu``: AE-U's map as the bench reads it (its authors' map, pooled as every method's), and read as
  All-in-One's (the same floor and 3 x 3 opening), so a reader sees how much of a gain is the reading's rather
  than the model's;
- ``mtl``: MTL-MAD's ``reconstruct`` task read as AE-U (its authors' map), opened, and floored and opened; each
  time the learner's normalisation and fusion weights are refitted on the bench's own training-time data
  (``on_train_end``: validation normals and pseudo-anomalies made from them), as a training run would.

For each: the image AUROC (mean over the five organs) per seed. Usage (2 CPU cores, a few minutes per set)::

    python book/results/map_reading/tune_split.py OUT.json phantom=BENCH_PHANTOM/runs real=BENCH_REAL/runs

where each ``BENCH_*`` is a ``medad-edu bench --methods mtl,allinone,aeu,... --seeds 0,1,2 --config quick`` folder
on ``--data embedded`` (phantom) or ``embedded:real`` (real).
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medad_edu.data.batches import split_tensors
from medad_edu.data.embedded import EmbeddedSizes, load_embedded
from medad_edu.evaluation.metrics import image_auroc
from medad_edu.models.scoring import open_map, pool_map
from medad_edu.training.checkpoint import load_model

TUNE_SEED, SEEDS, FLOOR = 7, (0, 1, 2), 0.05


def mean_auroc(scores, labels: np.ndarray, organs: np.ndarray) -> float:
    scores = np.asarray(scores)
    return float(np.mean([image_auroc(scores[organs == g], labels[organs == g]) for g in np.unique(organs)]))


def open_2x2(amap: torch.Tensor) -> torch.Tensor:
    """Opening with an off-centre 2 x 2 square (erode towards one corner, dilate back towards the other)."""
    eroded = -F.max_pool2d(F.pad(-amap, (0, 1, 0, 1), mode="replicate"), 2, 1)
    return F.max_pool2d(F.pad(eroded, (1, 0, 1, 0), mode="replicate"), 2, 1)


def batched(model, tune):
    with torch.no_grad():
        return [model(tune.images[i:i + 100], tune.task_ids[i:i + 100]) for i in range(0, len(tune), 100)]


def allinone_rows(run: Path, tune, labels, organs) -> dict[str, float]:
    model = load_model(run)[0].eval()
    model.map_std_floor, model.map_opening = FLOOR, 0
    outs = batched(model, tune)
    floored = torch.cat([o.anomaly_map for o in outs])
    rows = {f"floor, opening {k}": mean_auroc(pool_map(open_map(floored, k), model.score_sigma, model.score_top),
                                              labels, organs) for k in (0, 3, 5)}
    rows["floor, opening 2 x 2 off-centre"] = mean_auroc(pool_map(open_2x2(floored), model.score_sigma,
                                                                  model.score_top), labels, organs)
    return rows


def aeu_rows(run: Path, tune, labels, organs) -> dict[str, float]:
    model = load_model(run)[0].eval()
    outs = batched(model, tune)
    bench = mean_auroc(torch.cat([o.pred_score for o in outs]), labels, organs)
    sq = 4 * torch.cat([o.extras["error"] for o in outs])  # (x - mu)^2 on AE-U's [-1, 1] scale, as its s
    logvar = torch.cat([o.extras["log_variance"] for o in outs])
    read = open_map(sq * torch.exp(-logvar.clamp_min(math.log(4 * FLOOR ** 2))), 3)
    return {"as in the bench": bench,
            "floor, opening 3": mean_auroc(pool_map(read, model.score_sigma, model.score_top), labels, organs)}


def mtl_rows(run: Path, tune, labels, organs, data) -> dict[str, float]:
    model = load_model(run)[0].eval()
    rec = model.net.tasks["reconstruct"]
    rows = {}
    for name, floor, opening in (("as AE-U", 0.0, 0), ("opening 3", 0.0, 3), ("floor, opening 3", FLOOR, 3)):
        rec.std_floor, rec.opening = floor, opening
        with torch.no_grad():
            model.on_train_end(data, torch.device("cpu"))  # the statistics and weights of this reading
        outs = batched(model, tune)
        rows[name] = mean_auroc(torch.cat([o.pred_score for o in outs]), labels, organs)
        rows[f"{name}: reconstruct alone"] = mean_auroc(
            torch.cat([o.extras["task_scores"][:, model.proxy_tasks.index("reconstruct")] for o in outs]),
            labels, organs)
    return rows


def main(out_path: str, *specs: str) -> None:
    from medad_edu.utils import versions
    torch.set_num_threads(1)
    result: dict = {"tune_seed": TUNE_SEED, "split": "valid", "sizes": "100 normal + 100 abnormal per organ",
                    "std_floor": FLOOR, "versions": versions(), "sets": {}}
    for spec in specs:
        kind, runs = spec.split("=", 1)
        data = load_embedded(kind, image_size=64, seed=0, sizes="quick")  # the bench's own data (for on_train_end)
        tune = split_tensors(load_embedded(kind, image_size=64, seed=TUNE_SEED, sizes=EmbeddedSizes(8, 100, 2)),
                             "valid")
        labels, organs = tune.labels.numpy(), tune.task_ids.numpy()
        entry = result["sets"][kind] = {"allinone": {}, "aeu": {}, "mtl": {}}
        for seed in SEEDS:
            entry["allinone"][seed] = allinone_rows(Path(runs) / f"allinone-s{seed}", tune, labels, organs)
            entry["aeu"][seed] = aeu_rows(Path(runs) / f"aeu-s{seed}", tune, labels, organs)
            entry["mtl"][seed] = mtl_rows(Path(runs) / f"mtl-s{seed}", tune, labels, organs, data)
            print(kind, seed, {m: {k: round(v, 3) for k, v in r[seed].items()} for m, r in entry.items()}, flush=True)
    Path(out_path).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: tune_split.py OUT.json KIND=BENCH/runs [...]")
    main(*sys.argv[1:])
