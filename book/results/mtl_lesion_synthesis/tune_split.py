"""Which synthetic anomalies MTL-MAD's lesion task should learn, measured on a tune split (validation images only).

The tune split is a fresh draw of the embedded generator (seed 7; 100 normal + 100 abnormal validation images
per organ), disjoint from the bench's data (seed 0), so no bench test image is used to choose. For each bench run
given, the image AUROC (mean over organs) of the fused score and of each proxy task's own score.

Usage (2 CPU cores, about a minute per set)::

    python book/results/mtl_lesion_synthesis/tune_split.py OUT.json \\
        phantom:patches=BENCH_P/runs phantom:lesions=BENCH_L/runs real:patches=BENCH_RP/runs real:lesions=BENCH_RL/runs

where each ``BENCH*`` is a ``medad-edu bench --methods mtl,... --seeds 0,1,2 --config quick`` folder made with
``--option mtl.lesion_synthesis=patches`` (the default) or ``=lesions``, on ``--data embedded`` (phantom) or
``embedded:real`` (real). The peers' runs found beside them (nsa, aeu, allinone) are scored too, for reference.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from medad_edu.data.batches import split_tensors
from medad_edu.data.embedded import EmbeddedSizes, load_embedded
from medad_edu.evaluation.metrics import image_auroc
from medad_edu.training.checkpoint import load_model
from medad_edu.training.predict import predict_tensors
from medad_edu.utils import versions

TUNE_SEED, SEEDS, PEERS = 7, (0, 1, 2), ("nsa", "aeu", "allinone")


def mean_auroc(scores: np.ndarray, labels: np.ndarray, organs: np.ndarray) -> float:
    return float(np.mean([image_auroc(scores[organs == g], labels[organs == g]) for g in np.unique(organs)]))


def score(run: Path, tune) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The run's image scores on ``tune`` and, for MTL-MAD, each proxy task's own score."""
    model = load_model(run)[0]
    pred = predict_tensors(model, tune, batch_size=100, keep_extras=("task_scores",))
    tasks = pred.extras.get("task_scores")
    return pred.scores, ({name: tasks[:, j] for j, name in enumerate(model.proxy_tasks)} if tasks is not None else {})


def main(out_path: str, *specs: str) -> None:
    torch.set_num_threads(1)
    result: dict = {"tune_seed": TUNE_SEED, "split": "valid", "sizes": "100 normal + 100 abnormal per organ",
                    "versions": versions(), "sets": {}}
    for spec in specs:
        kind_choice, runs = spec.split("=", 1)
        kind, choice = kind_choice.split(":")
        tune = split_tensors(load_embedded(kind, image_size=64, seed=TUNE_SEED, sizes=EmbeddedSizes(8, 100, 2)),
                             "valid")
        labels, organs = tune.labels.numpy(), tune.task_ids.numpy()
        entry = result["sets"].setdefault(kind, {})
        rows = {}
        for seed in SEEDS:
            fused, per_task = score(Path(runs) / f"mtl-s{seed}", tune)
            rows[seed] = {"fused": mean_auroc(fused, labels, organs),
                          **{name: mean_auroc(s, labels, organs) for name, s in per_task.items()}}
        entry[f"mtl:{choice}"] = rows
        for peer in PEERS:
            if peer in entry or not all((Path(runs) / f"{peer}-s{s}").is_dir() for s in SEEDS):
                continue
            entry[peer] = {s: {"fused": mean_auroc(score(Path(runs) / f"{peer}-s{s}", tune)[0], labels, organs)}
                           for s in SEEDS}
        print(kind, choice, {s: round(r["fused"], 3) for s, r in rows.items()}, flush=True)
    Path(out_path).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: tune_split.py OUT.json KIND:CHOICE=BENCH/runs [...]")
    main(*sys.argv[1:])
