"""Choosing the decision threshold from validation data: defined in ``medad_edu.training.thresholds`` (``train``
stores the thresholds in the checkpoint), re-exported here."""
from ..training.thresholds import NORMAL_PERCENTILE, choose_thresholds, threshold_from_scores

__all__ = ["NORMAL_PERCENTILE", "choose_thresholds", "threshold_from_scores"]
