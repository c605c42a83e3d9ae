"""Evaluating a trained model on a test split, in the schema ``medad-edu evaluate --json`` writes::

    {"method": ..., "split": "test",
     "tasks": {"<task>": {"image_auroc", "ap", "f1", "acc", "threshold", "pixel_auroc", "aupro", "dice",
                          "n_normal", "n_abnormal"}},
     "mean": {...}}

``medad-edu evaluate`` adds ``"run"``, ``"data"`` and ``"checkpoint": {"complete", "epoch", "problems"}``: it
refuses a run whose training is unfinished or whose model holds NaN/infinite weights unless asked to go on
(``--allow-incomplete``, ``--allow-nonfinite``), and then names the problem in ``problems``.

All metric values are fractions in [0, 1]; pixel metrics are ``null`` for a task without masks. ``f1`` and
``acc`` follow the All-in-One paper's protocol (at the F1-maximising threshold on the evaluated split);
``acc_at_valid_threshold`` uses the threshold chosen on validation data at training time (the honest one).

Defined in: notebooks/02_metrics.ipynb
"""
from __future__ import annotations

import math

import numpy as np

from ..data import MultiTaskData
from ..models.base import AnomalyModel
from .metrics import accuracy_at_threshold, evaluate_predictions
from ..training.predict import Predictions, predict_split

METRIC_KEYS = ("image_auroc", "ap", "f1", "acc", "pixel_auroc", "aupro", "dice")


def summarise(preds: Predictions, task_names: list[str], method: str, split: str = "test",
              thresholds: dict | None = None) -> dict:
    tasks = {}
    for tid, name in enumerate(task_names):
        p = preds.task(tid)
        if len(p.scores) == 0:
            continue
        with_masks = bool(p.has_mask.any())
        m = evaluate_predictions(p.scores, p.labels, p.maps if with_masks else None,
                                 p.masks if with_masks else None)
        m = {k: (None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)) for k, v in m.items()}
        if thresholds and name in thresholds:
            m["acc_at_valid_threshold"] = float(accuracy_at_threshold(p.scores, p.labels, thresholds[name]))
        m["n_normal"], m["n_abnormal"] = int((p.labels == 0).sum()), int((p.labels == 1).sum())
        tasks[name] = m
    mean = {}
    for k in (*METRIC_KEYS, "acc_at_valid_threshold"):
        vals = [t[k] for t in tasks.values() if t.get(k) is not None]
        mean[k] = float(np.mean(vals)) if vals else None
    return {"method": method, "split": split, "tasks": tasks, "mean": mean}


def evaluate_model(model: AnomalyModel, data: MultiTaskData, split: str = "test", device="cpu",
                   batch_size: int = 64, thresholds: dict | None = None) -> dict:
    """Metrics per task and their mean; see the module docstring for the schema."""
    missing = [t for t in data.task_names if t not in model.task_names]
    if missing:
        raise ValueError(f"the model was trained on tasks {model.task_names}; the data has unknown task(s) {missing}")
    if data.task_names != model.task_names:  # evaluate a subset, or the same tasks in another order
        order = [model.task_names.index(t) for t in data.task_names]
        preds = _predict_remapped(model, data, split, device, batch_size, order)
    else:
        preds = predict_split(model, data, split, device, batch_size)
    return summarise(preds, data.task_names, model.name, split, thresholds)


def _predict_remapped(model, data, split, device, batch_size, order):
    from ..data.batches import split_tensors
    from ..training.predict import predict_tensors
    import torch

    tensors = split_tensors(data, split)
    remapped = tensors.select(torch.arange(len(tensors)))
    remapped.task_ids = torch.as_tensor(order)[tensors.task_ids]
    preds = predict_tensors(model, remapped, device, batch_size)
    preds.task_ids = tensors.task_ids.numpy()  # back to the data's own task order for the summary
    return preds
