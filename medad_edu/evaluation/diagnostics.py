"""Extra measurements of a trained model that a bench row can ask for (``"diagnostics": [...]`` in a variant).

Each entry of :data:`DIAGNOSTICS` is ``fn(model, data) -> dict`` (JSON-ready) and is kept in the run's bench
record under its name. ``mtl_scores`` scores an MTL-MAD run with each proxy task alone and with every fusion,
on the validation split (real labels: what options are chosen on) and the test split (reported); it is what the
ablations of notebooks/23_mtl_ablations.ipynb read (``book/results/mtl_ablations/variants.json``).

Defined in: notebooks/23_mtl_ablations.ipynb
"""
from __future__ import annotations

from typing import Callable

import torch

from ..data import MultiTaskData
from ..data.batches import split_tensors
from .metrics import image_auroc

FUSIONS = ("zscore", "robust", "rank", "weighted")


def _failures(model, images: torch.Tensor, groups: torch.Tensor, batch_size: int = 64):
    """The network's raw failure scores [N, T] and failure maps (or None), batched, without gradients."""
    raw, maps = [], []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            s, mp, _ = model._failures(images[i:i + batch_size], groups[i:i + batch_size])
            raw.append(s)
            maps.append(mp)
    return torch.cat(raw), (torch.cat(maps) if maps[0] is not None else None)


def mtl_scores(model, data: MultiTaskData) -> dict:
    """Image AUROC per task (organ) of every proxy task's failure score and of every fusion, on valid and test.

    Columns: each proxy task; ``fused_<f>`` for the fusions ``zscore``, ``robust``, ``rank``, ``weighted``;
    ``fused_weighted_p1`` (the weighted fusion with weight power 1, fitted on the model's own pseudo-anomalies);
    ``fused_map`` (the map score), when the model has map tasks. Also the fusion weights (``weights``), the
    pseudo-anomaly AUROCs they come from, the model's fusion, proxy tasks and training-time expert usage.
    """
    model = model.eval().cpu()
    names = data.task_names
    images, groups = model._reference_images(data)
    clean, _ = _failures(model, images, groups)
    pseudo_x, pseudo_g = model.pseudo_anomalies(images, groups)
    pseudo, _ = _failures(model, pseudo_x, pseudo_g)
    fitted, fitted_auroc = model.normalizer.weights.clone(), model.normalizer.pseudo_auroc.clone()
    power1 = model.normalizer.fit_weights(clean, pseudo, groups, pseudo_g, 1.0).clone()
    out = {"fusion": model.fusion, "proxy_tasks": list(model.proxy_tasks),
           "expert_usage": model.expert_usage().tolist(), "weights": fitted.tolist(),
           "pseudo_auroc": model.normalizer.pseudo_auroc.tolist()}
    model.normalizer.weights.copy_(fitted)  # fit_weights overwrote the model's own fusion state
    model.normalizer.pseudo_auroc.copy_(fitted_auroc)
    for split in ("valid", "test"):
        ts = split_tensors(data, split)
        raw, maps = _failures(model, ts.images, ts.task_ids)
        labels, tids = ts.labels.numpy(), ts.task_ids.numpy()
        cols = {t: raw[:, i].numpy() for i, t in enumerate(model.net.task_names)}
        for fusion in FUSIONS:
            cols["fused_" + fusion] = model.normalizer.fuse(raw, ts.task_ids, fusion).numpy()
        z = model.normalizer.normalize(raw, ts.task_ids, "zscore")
        cols["fused_weighted_p1"] = (z * power1[ts.task_ids]).sum(1).numpy()
        if maps is not None:
            cols["fused_map"] = model.normalizer.fuse_map(maps, ts.task_ids, model.map_top)[1].numpy()
        out[split] = {c: {names[g]: image_auroc(v[tids == g], labels[tids == g]) for g in range(len(names))}
                      for c, v in cols.items()}
    return out


DIAGNOSTICS: dict[str, Callable[..., dict]] = {"mtl_scores": mtl_scores}

__all__ = ["DIAGNOSTICS", "FUSIONS", "mtl_scores"]
