"""Evaluation: the benchmark's metrics, the evaluate schema, the bench; prediction over splits and thresholds
(``medad_edu.training.predict`` / ``.thresholds``) re-exported.

Metrics are explained in notebooks/02_metrics.ipynb.

Defined in: notebooks/02_metrics.ipynb
"""
from .evaluate import METRIC_KEYS, evaluate_model, summarise
from .metrics import (UndefinedMetricWarning, accuracy_at_threshold, aupro, average_precision, best_dice, evaluate_predictions, f1_max,
                      image_auroc, image_auroc_by_lesion_size, image_metrics, pixel_auroc, pixel_metrics)
from ..training.predict import Predictions, predict_split, predict_tensors
from ..training.thresholds import choose_thresholds, threshold_from_scores

__all__ = ["METRIC_KEYS", "Predictions", "UndefinedMetricWarning", "accuracy_at_threshold", "aupro", "average_precision", "best_dice",
           "choose_thresholds", "evaluate_model", "evaluate_predictions", "f1_max", "image_auroc", "image_auroc_by_lesion_size", "image_metrics",
           "pixel_auroc", "pixel_metrics", "predict_split", "predict_tensors", "summarise", "threshold_from_scores"]
