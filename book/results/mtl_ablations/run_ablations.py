"""Train and evaluate the MTL-MAD variants of notebooks/23_mtl_ablations.ipynb (one process, one torch thread).

Each variant is trained on ``load_data("embedded", 64, sizes="quick")`` with ``make_config("mtl", "quick",
epochs=..., seed=..., options=...)`` and then scored with every fusion on the validation split (real labels; used
to choose options) and on the test split (reported). Per-task AUROCs and the label-free fusion weights are kept.
Writes ``OUT/<name>.json`` per variant (skips variants already there); ``assemble.py`` builds ``results.json``.

    OMP_NUM_THREADS=1 python book/results/mtl_ablations/run_ablations.py --out /tmp/mtl_abl [--only mtl-s0,abl-full]
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from medad_edu.data import load_data
from medad_edu.data.batches import split_tensors
from medad_edu.evaluation import evaluate_model, image_auroc
from medad_edu.training import make_config, train

ALL6 = ["inpaint", "denoise", "rotate", "jigsaw", "lesion", "cluster"]
VARIANTS = [  # (name, epochs, seed, options): the two full runs, then the ablations at half the epochs
    ("mtl-s0", 12, 0, {}), ("mtl-s1", 12, 1, {}), ("abl-full", 6, 0, {}),
    *[(f"abl-only-{t}", 6, 0, {"proxy_tasks": [t]}) for t in ALL6],
    ("abl-moe-off", 6, 0, {"moe": False}), ("abl-experts2", 6, 0, {"num_experts": 2}),
    ("abl-experts8", 6, 0, {"num_experts": 8}), ("abl-lesion-w5", 6, 0, {"lesion_weight": 5.0}),
    ("abl-only-lesion-24ep", 24, 0, {"proxy_tasks": ["lesion"]}),  # the lesion task alone at the full run's CPU cost
    *[(f"abl-no-{t}", 6, 0, {"proxy_tasks": [u for u in ALL6 if u != t]}) for t in ("inpaint", "lesion", "denoise")],
]


def failures(model, x: torch.Tensor, bs: int = 64):
    raw, maps = [], []
    with torch.no_grad():
        for i in range(0, len(x), bs):
            s, mp, _ = model.net.failures(x[i:i + bs])
            raw.append(s)
            maps.append(mp)
    return torch.cat(raw), (torch.cat(maps) if maps[0] is not None else None)


def evaluate_all(model, data) -> dict:
    """Image AUROC per organ of every proxy task and every fusion, on valid and test."""
    G = len(data.task_names)
    out = {}
    # the weighted fusion with power 1 (for the comparison), from the same pseudo-anomalies as the model's
    images, groups = model._reference_images(data)
    clean, _ = failures(model, images)
    px, pg = model.pseudo_anomalies(images, groups)
    pseudo, _ = failures(model, px)
    w2 = model.normalizer.weights.clone()
    w1 = model.normalizer.fit_weights(clean, pseudo, groups, pg, 1.0).clone()
    model.normalizer.weights.copy_(w2)
    out["weights"] = w2.tolist()
    out["pseudo_auroc"] = model.normalizer.pseudo_auroc.tolist()
    for split in ("valid", "test"):
        ts = split_tensors(data, split)
        raw, maps = failures(model, ts.images)
        lab, tid = ts.labels.numpy(), ts.task_ids.numpy()
        cols = {t: raw[:, i].numpy() for i, t in enumerate(model.net.task_names)}
        for fu in ("zscore", "robust", "rank", "weighted"):
            cols["fused_" + fu] = model.normalizer.fuse(raw, ts.task_ids, fu).numpy()
        z = model.normalizer.normalize(raw, ts.task_ids, "zscore")
        cols["fused_weighted_p1"] = (z * w1[ts.task_ids]).sum(1).numpy()
        if maps is not None:
            cols["fused_map"] = model.normalizer.fuse_map(maps, ts.task_ids, model.map_top)[1].numpy()
        out[split] = {k: {data.task_names[g]: image_auroc(v[tid == g], lab[tid == g]) for g in range(G)}
                      for k, v in cols.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    only = set(filter(None, args.only.split(",")))
    data = load_data("embedded", 64, sizes="quick")
    for name, epochs, seed, opts in VARIANTS:
        path = os.path.join(args.out, f"{name}.json")
        if (only and name not in only) or os.path.exists(path):
            continue
        # these ablations are of the first ("classic") design, which the quick configuration no longer selects
        from medad_edu.models.mtl import MultiTaskLearner
        cfg = make_config("mtl", "quick", options={**MultiTaskLearner.CLASSIC, **dict(opts)}, epochs=epochs, seed=seed)
        c0, w0 = time.process_time(), time.perf_counter()
        res = train(cfg, run_dir=os.path.join(args.out, "runs", name), data=data, progress=False, log=lambda m: None)
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        model = res.model.eval()
        t1 = time.perf_counter()
        ev = evaluate_model(model, data, "test", thresholds=res.thresholds)
        infer_s = time.perf_counter() - t1
        rec = {"name": name, "epochs": epochs, "seed": seed, "options": opts, "fusion": model.fusion,
               "proxy_tasks": model.proxy_tasks, "train_wall_s": wall, "train_cpu_s": cpu,
               "train_img_s": res.images_per_second,
               "infer_img_s": len(split_tensors(data, "test").images) / infer_s,
               "test_mean": ev["mean"], "test_tasks": {k: v["image_auroc"] for k, v in ev["tasks"].items()},
               "expert_usage": model.expert_usage().tolist()}
        rec.update(evaluate_all(model, data))
        with open(path, "w") as f:
            json.dump(rec, f, indent=1)
        print(name, f"wall {wall:.0f} s, cpu {cpu:.0f} s, test image AUROC {ev['mean']['image_auroc']:.3f}", flush=True)


if __name__ == "__main__":
    main()
