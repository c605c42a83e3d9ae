"""Choosing the decision threshold from validation data, never from the test split.

Per task: with a labelled validation split (both classes), the threshold that maximises F1 on it; with a
normal-only validation split, the ``percentile`` (default 99th) of its normal scores; without a validation
split, the same percentile of the training scores (optimistic: the model has seen those images).

In the training layer because ``train`` stores the thresholds in the checkpoint; ``medad_edu.evaluation``
re-exports them. F1-max is counted exactly by ``medad_edu.ranking`` (the same numbers as
``medad_edu.evaluation.metrics.f1_max``).

Defined in: notebooks/02_metrics.ipynb
"""
from __future__ import annotations

import numpy as np
import torch

from ..data import MultiTaskData
from ..data.batches import split_tensors
from ..models.base import AnomalyModel
from ..ranking import RankCounts
from .predict import predict_tensors

NORMAL_PERCENTILE = 99.0


def threshold_from_scores(scores: np.ndarray, labels: np.ndarray, percentile: float = NORMAL_PERCENTILE) -> tuple[float, str]:
    """(threshold, rule): F1-max if both classes are present, else a percentile of the normal scores."""
    scores, labels = np.asarray(scores, float), np.asarray(labels)
    if labels.min() == 0 and labels.max() == 1:
        if np.isnan(scores).any():  # sorting would place NaN arbitrarily
            raise ValueError(f"scores contain NaN ({int(np.isnan(scores).sum())} of {scores.size} values)")
        abnormal = labels == 1
        return float(RankCounts(scores[abnormal], scores[~abnormal]).f1_max()[1]), "f1max"
    return float(np.percentile(scores[labels == 0], percentile)), f"p{percentile:g}-normal"


def choose_thresholds(model: AnomalyModel, data: MultiTaskData, device: torch.device | str = "cpu",
                      batch_size: int = 64, percentile: float = NORMAL_PERCENTILE) -> dict[str, float]:
    """A threshold per task name (plus ``"<task>:rule"`` entries saying how it was chosen)."""
    has_valid = any(t.valid is not None and len(t.valid) for t in data.tasks)
    preds = predict_tensors(model, split_tensors(data, "valid" if has_valid else "train"), device, batch_size)
    out: dict[str, float] = {}
    for tid, task in enumerate(data.tasks):
        p = preds.task(tid)
        if len(p.scores) == 0:  # this task has no validation split: fall back to its training scores
            p = predict_tensors(model, split_tensors(data, "train"), device, batch_size).task(tid)
            thr, rule = float(np.percentile(p.scores, percentile)), f"p{percentile:g}-train"
        else:
            thr, rule = threshold_from_scores(p.scores, p.labels, percentile)
            rule = rule if has_valid else rule.replace("normal", "train")
        out[task.name] = thr
        out[f"{task.name}:rule"] = rule  # type: ignore[assignment]
    return out
