"""Evaluation protocol of the benchmark: image-level and pixel-level anomaly-detection metrics.

Explained step by step, built by hand and checked against this module and scikit-learn, in the book
chapter "Metrics" (``notebooks/02_metrics.ipynb``).

Convention everywhere: a **higher score means more abnormal**, label/mask ``1`` = abnormal, ``0`` = normal,
and a threshold ``t`` predicts "abnormal" for ``score >= t``.

What each metric reads
----------------------
Image level (one score per image, one label per image):

- :func:`image_auroc` -- area under the ROC curve; the probability that a random abnormal image scores higher
  than a random normal one (ties count one half), identical to ``sklearn.metrics.roc_auc_score``.
- :func:`average_precision` -- area under the precision-recall curve as a step sum, identical to
  ``sklearn.metrics.average_precision_score``.
- :func:`f1_max` -- the best F1 over all thresholds and the threshold reaching it.
- :func:`accuracy_at_threshold` -- accuracy of the rule ``score >= threshold``.
- :func:`image_metrics` -- all of the above with the protocol of the All-in-One paper (Sec. 4.2): image AUC, and
  F1 and ACC *at the threshold that maximises F1*. That threshold is chosen on the evaluated set itself, so F1
  and ACC are optimistic; in a deployed system the threshold must come from validation data.
- :func:`image_auroc_by_lesion_size` -- image AUROC of the normal images against the abnormal images of each
  lesion-size bin (terciles of the lesion area): how detection depends on how much of the image a lesion covers.

Pixel level (one anomaly map per image, one binary ground-truth mask per image; all pixels of all images are
pooled):

- :func:`pixel_auroc` -- ROC AUC over all pixels.
- :func:`aupro` -- area under the per-region-overlap (PRO) curve, as in BMAD and anomalib: connected regions of
  the masks are found (8-connectivity, as anomalib's ``cv2.connectedComponents`` and the MVTec AD reference
  script), the PRO at a threshold is the mean over all regions of the fraction of each region's pixels flagged,
  and it is plotted against the false-positive rate on normal pixels. The curve is integrated from FPR 0 up to
  ``fpr_limit`` (BMAD: **0.3**) and divided by ``fpr_limit``, so a perfect map scores 1. Every region counts the
  same, whatever its size: a missed small lesion costs as much as a missed large one.
- :func:`best_dice` -- the best Dice (= pixel F1) over all thresholds of the pooled maps.
- :func:`pixel_metrics` and :func:`evaluate_predictions` -- the dictionaries the benchmark reports.

Undefined values
----------------
With a single class present (only normal or only abnormal images or pixels), AUROC, AP, F1/Dice and AUPRO are
undefined: the functions return ``float('nan')`` and emit an :class:`UndefinedMetricWarning` that names the
missing class. :func:`pixel_metrics` returns ``None`` values when there are no masks or no abnormal pixel.

Exactness and cost
------------------
Everything is computed exactly (no threshold grid, no histogram): the normal scores are sorted once
(``np.sort``), the abnormal scores are located in them with ``np.searchsorted``, and the counts are combined in
integer arithmetic. Ties are treated like scikit-learn (all tied samples cross the threshold together; in the AUC
they count one half). Maps are processed in their own precision: ``float32`` maps stay ``float32`` (half the
memory and time of ``float64``), other dtypes are converted to ``float64``. Memory for the pixel metrics is about
three times the size of the maps, e.g. 1000 maps of 256x256 in ``float32`` (262 MB) need below 1 GB.

Defined in: notebooks/02_metrics.ipynb
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
from scipy import ndimage

from ..ranking import RankCounts  # the exact counting core shared by all metrics

__all__ = [
    "UndefinedMetricWarning",
    "image_auroc",
    "average_precision",
    "f1_max",
    "accuracy_at_threshold",
    "pixel_auroc",
    "aupro",
    "best_dice",
    "image_metrics",
    "pixel_metrics",
    "evaluate_predictions",
]


class UndefinedMetricWarning(UserWarning):
    """Warning emitted when a metric is undefined (e.g. only one class is present) and ``nan`` is returned."""


# ----------------------------------------------------------------------------------------------------------
# Input conversion and validation
# ----------------------------------------------------------------------------------------------------------
def _to_numpy(x: Any, name: str) -> np.ndarray:
    """Convert a numpy array, torch tensor, list or scalar sequence to a numpy array."""
    if x is None:
        raise ValueError(f"{name} is None")
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch
        x = x.detach().cpu()
        try:
            x = x.numpy()
        except TypeError:  # e.g. bfloat16 has no numpy dtype
            x = x.float().numpy()
    return np.asarray(x)


def _as_float(x: np.ndarray) -> np.ndarray:
    """Keep float32 / float64, convert everything else (ints, bools, float16) to float64."""
    if x.dtype in (np.float32, np.float64):
        return x
    if x.dtype.kind not in "biuf":
        raise ValueError(f"scores must be numeric, got dtype {x.dtype}")
    return x.astype(np.float64)


def _check_binary(y: np.ndarray, name: str) -> np.ndarray:
    """Return ``y`` as a boolean array, raising if a value is not 0 or 1."""
    if y.dtype == np.bool_:
        return y
    if y.dtype.kind not in "iuf":
        raise ValueError(f"{name} must contain only 0 and 1, got dtype {y.dtype}")
    bad = (y != 0) & (y != 1)
    if bad.any():
        vals = np.unique(y[bad])[:5]
        raise ValueError(
            f"{name} must contain only 0 (normal) and 1 (abnormal); found other values, e.g. {vals.tolist()}"
            + (" (binarise masks first, e.g. masks > 0)" if name == "masks" else "")
        )
    return y.astype(bool)


def _with_ndim(a: np.ndarray, name: str, ndim: int, accepted: str) -> np.ndarray:
    """``a`` as a non-empty ``ndim``-d array: a singleton axis 1 of one more dimension is dropped ([N, 1] scores,
    [N, 1, H, W] maps), a single [H, W] image gets the image axis; ``accepted`` names the shapes in the error."""
    if a.ndim == ndim + 1 and a.shape[1] == 1:
        a = a[:, 0]
    elif ndim == 3 and a.ndim == 2:
        a = a[None]
    if a.ndim != ndim:
        raise ValueError(f"{name} must {accepted}; got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty (shape {a.shape})")
    return a


def _vector(x: Any, name: str) -> np.ndarray:
    return _with_ndim(_to_numpy(x, name), name, 1, "be one-dimensional (one value per image)")


def _check_scores_labels(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    s = _as_float(_vector(scores, "scores"))
    y = _vector(labels, "labels")
    if s.shape[0] != y.shape[0]:
        raise ValueError(f"length mismatch: {s.shape[0]} scores but {y.shape[0]} labels")
    if np.isnan(s).any():
        raise ValueError(f"scores contain NaN ({int(np.isnan(s).sum())} of {s.size} values)")
    return s, _check_binary(y, "labels")


def _image_stack(a: np.ndarray, name: str) -> np.ndarray:
    """Bring maps or masks to shape [N, H, W] (accepts [H, W], [N, H, W] and [N, 1, H, W])."""
    return _with_ndim(a, name, 3, "have shape [N,H,W], [N,1,H,W] or [H,W]")


def _check_maps_masks(maps: Any, masks: Any) -> tuple[np.ndarray, np.ndarray]:
    m_raw = _to_numpy(maps, "maps")
    g_raw = _to_numpy(masks, "masks")
    m = _as_float(_image_stack(m_raw, "maps"))
    g = _image_stack(g_raw, "masks")
    if m.shape != g.shape:
        raise ValueError(f"shape mismatch: maps have shape {m_raw.shape} but masks have shape {g_raw.shape}")
    if np.isnan(m).any():
        raise ValueError(f"maps contain NaN ({int(np.isnan(m).sum())} of {m.size} values)")
    return m, _check_binary(g, "masks")


def _warn_undefined(metric: str, n_pos: int, n_neg: int, what: str = "samples") -> bool:
    """Warn and return True when one class is missing (the metric is then undefined)."""
    if n_pos > 0 and n_neg > 0:
        return False
    missing = "abnormal (label 1)" if n_pos == 0 else "normal (label 0)"
    warnings.warn(
        f"{metric} is undefined: there are no {missing} {what}; returning nan",
        UndefinedMetricWarning,
        stacklevel=3,
    )
    return True


# ----------------------------------------------------------------------------------------------------------
# Image-level metrics
# ----------------------------------------------------------------------------------------------------------
def image_auroc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve of image scores (identical to ``sklearn.metrics.roc_auc_score``).

    Equals the probability that a random abnormal image scores higher than a random normal image, tied pairs
    counting one half (the average-rank / Mann-Whitney definition). Constant scores give 0.5.

    Args:
        scores: float array or tensor of shape [N], higher = more abnormal.
        labels: array of shape [N] with values in {0, 1} (1 = abnormal).

    Returns:
        The AUROC in [0, 1]; ``nan`` with an :class:`UndefinedMetricWarning` if only one class is present.

    Raises:
        ValueError: length mismatch, NaN in scores, labels not in {0, 1}, empty input.
    """
    s, y = _check_scores_labels(scores, labels)
    if _warn_undefined("image AUROC", int(y.sum()), int((~y).sum()), "images"):
        return float("nan")
    return RankCounts(s[y], s[~y]).auroc()


def average_precision(scores: Any, labels: Any) -> float:
    """Average precision, the same definition as ``sklearn.metrics.average_precision_score``.

    ``AP = sum_n (R_n - R_{n-1}) P_n`` over the distinct score thresholds (tied scores cross together), i.e. the
    area under the precision-recall step curve without interpolation. A random ranking gives about the
    fraction of abnormal images.

    Returns:
        AP in [0, 1]; ``nan`` with an :class:`UndefinedMetricWarning` if only one class is present.

    Raises:
        ValueError: as :func:`image_auroc`.
    """
    s, y = _check_scores_labels(scores, labels)
    if _warn_undefined("average precision", int(y.sum()), int((~y).sum()), "images"):
        return float("nan")
    return RankCounts(s[y], s[~y]).average_precision()


def f1_max(scores: Any, labels: Any) -> tuple[float, float]:
    """Best F1 over all thresholds, and the threshold giving it.

    The prediction rule is ``score >= threshold`` -> abnormal. All distinct score values are tried; the best
    threshold is always one of the abnormal scores. If several thresholds give the same best F1, the lowest is
    returned (as ``np.argmax`` over scikit-learn's ascending ``precision_recall_curve`` thresholds).

    Returns:
        ``(f1, threshold)``; ``(nan, nan)`` with an :class:`UndefinedMetricWarning` if only one class is present.

    Raises:
        ValueError: as :func:`image_auroc`.
    """
    s, y = _check_scores_labels(scores, labels)
    if _warn_undefined("F1", int(y.sum()), int((~y).sum()), "images"):
        return float("nan"), float("nan")
    return RankCounts(s[y], s[~y]).f1_max()


def accuracy_at_threshold(scores: Any, labels: Any, threshold: float) -> float:
    """Accuracy of the rule ``score >= threshold`` -> abnormal.

    Defined for any label set (also a single class). A ``nan`` threshold (e.g. from :func:`f1_max` on a
    single-class set) gives ``nan``.

    Raises:
        ValueError: as :func:`image_auroc`, or a threshold that is not a real number.
    """
    s, y = _check_scores_labels(scores, labels)
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be a real number, got {threshold!r}") from None
    if math.isnan(t):
        return float("nan")
    return float(np.mean((s >= t) == y))


def image_metrics(scores: Any, labels: Any) -> dict:
    """Image-level metrics with the protocol of the All-in-One paper (Sec. 4.2).

    Returns:
        ``{"image_auroc", "ap", "f1", "acc", "threshold"}`` as python floats. ``f1`` is the best F1 over all
        thresholds and ``acc`` the accuracy at that same threshold (``threshold``, in score units). The threshold
        is fitted on the evaluated set, which is optimistic; in practice it comes from validation data. With a
        single class, all values are ``nan`` (one :class:`UndefinedMetricWarning`).
    """
    s, y = _check_scores_labels(scores, labels)
    if _warn_undefined("image AUROC, AP, F1 and ACC at the F1-max threshold", int(y.sum()), int((~y).sum()), "images"):
        nan = float("nan")
        return {"image_auroc": nan, "ap": nan, "f1": nan, "acc": nan, "threshold": nan}
    c = RankCounts(s[y], s[~y])
    f1, thr = c.f1_max()
    return {
        "image_auroc": float(c.auroc()),
        "ap": float(c.average_precision()),
        "f1": float(f1),
        "acc": float(np.mean((s >= thr) == y)),
        "threshold": float(thr),
    }


def image_auroc_by_lesion_size(scores: Any, labels: Any, lesion_area: Any, n_bins: int = 3) -> list[dict]:
    """Image AUROC of all normal images against the abnormal images of one lesion-size bin, for each bin.

    The abnormal images are sorted by lesion area and split into ``n_bins`` groups of (nearly) equal count
    (terciles for 3; equal areas keep their input order, so a boundary may split them): a small lesion covers few
    pixels, and a score pooled over a map finds it less easily. Compute it per task (areas differ between organs)
    and average over tasks.

    Args:
        scores: image scores ``[N]``, higher = more abnormal.
        labels: ``[N]`` in {0, 1}.
        lesion_area: ``[N]``, the share of each image's pixels inside its lesion mask (read for abnormal images only).
        n_bins: the number of size bins, >= 1.

    Returns:
        One dict per bin, smallest lesions first: ``{"area_min", "area_max", "n_abnormal", "image_auroc"}`` (areas
        as shares of the image); fewer than ``n_bins`` when there are fewer abnormal images. Empty when there are
        no normal or no abnormal images.

    Raises:
        ValueError: invalid scores/labels, ``lesion_area`` of another length or negative, ``n_bins < 1``, or an
        abnormal image without lesion pixels (its size is unknown).
    """
    s, y = _check_scores_labels(scores, labels)
    area = _as_float(_vector(lesion_area, "lesion_area"))
    if area.shape != s.shape:
        raise ValueError(f"length mismatch: {s.shape[0]} scores but {area.shape[0]} lesion areas")
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be an integer >= 1; got {n_bins!r}")
    ab = area[y]
    if (ab < 0).any() or np.isnan(ab).any():
        raise ValueError("lesion_area must be >= 0 (a share of the image's pixels)")
    if (ab == 0).any():
        raise ValueError(f"{int((ab == 0).sum())} abnormal image(s) have no lesion pixels: their size is unknown")
    if not y.any() or y.all():
        return []
    normal, abnormal = s[~y], s[y]
    out = []
    for sel in np.array_split(np.argsort(ab, kind="stable"), int(n_bins)):
        if len(sel):
            out.append({"area_min": float(ab[sel].min()), "area_max": float(ab[sel].max()),
                        "n_abnormal": int(len(sel)), "image_auroc": float(RankCounts(abnormal[sel], normal).auroc())})
    return out


# ----------------------------------------------------------------------------------------------------------
# Pixel-level metrics
# ----------------------------------------------------------------------------------------------------------
_STRUCTURE = {
    8: np.ones((3, 3), dtype=bool),
    4: np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool),
}


def _region_weights(masks: np.ndarray, connectivity: int) -> np.ndarray:
    """Weight of every abnormal pixel (in ``masks[masks]`` order): 1 / (number of regions * size of its region).

    Regions are connected components inside each image (never across images).
    """
    if connectivity not in _STRUCTURE:
        raise ValueError(f"connectivity must be 8 or 4, got {connectivity!r}")
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = _STRUCTURE[connectivity]  # no connection along the image axis
    has = masks.reshape(masks.shape[0], -1).any(axis=1)
    sub = masks[has]
    regions, n_regions = ndimage.label(sub, structure=structure)
    lab = regions[sub]  # same order as masks[masks], because images without positives contribute nothing
    sizes = np.bincount(lab, minlength=n_regions + 1).astype(np.float64)
    return 1.0 / (n_regions * sizes[lab])


def _pixel_counts(m: np.ndarray, g: np.ndarray, weights: bool, connectivity: int = 8) -> RankCounts:
    w = _region_weights(g, connectivity) if weights else None
    return RankCounts(m[g], m[~g], w)


def pixel_auroc(maps: Any, masks: Any) -> float:
    """ROC AUC over all pixels of all images pooled (exact, ties count one half).

    Args:
        maps: float anomaly maps [N, H, W] or [N, 1, H, W] (array or tensor), higher = more abnormal.
        masks: ground-truth masks of the same shape with values in {0, 1}.

    Returns:
        The pixel AUROC; ``nan`` with an :class:`UndefinedMetricWarning` if there is no abnormal or no normal pixel.

    Raises:
        ValueError: shape mismatch (both shapes are named), NaN in maps, mask values not in {0, 1}.
    """
    m, g = _check_maps_masks(maps, masks)
    n_pos = int(g.sum())
    if _warn_undefined("pixel AUROC", n_pos, g.size - n_pos, "pixels"):
        return float("nan")
    return _pixel_counts(m, g, weights=False).auroc()


def aupro(maps: Any, masks: Any, fpr_limit: float = 0.3, *, connectivity: int = 8) -> float:
    """Normalised area under the per-region-overlap curve up to ``fpr_limit`` (BMAD / anomalib AUPRO).

    Each connected region of the masks (``connectivity`` 8 by default, as anomalib and the MVTec AD script;
    regions never span two images) is one ground-truth defect. At a threshold ``t`` the PRO is the mean over all
    regions of ``|region & (map >= t)| / |region|`` and the FPR is the fraction of normal pixels with
    ``map >= t``. The curve through all distinct thresholds, starting at (0, 0) and linear between points, is
    integrated from FPR 0 to ``fpr_limit`` (interpolated at the limit) and divided by ``fpr_limit``: a perfect
    map scores 1, a random one about ``fpr_limit / 2``.

    Implementation: the mean of per-region overlaps equals the sum of ``1 / (n_regions * region size)`` over the
    flagged abnormal pixels, so the PRO curve is a weighted true-positive-rate curve and is computed exactly with
    one sort of the normal pixels (no threshold loop, no grid).

    Returns:
        AUPRO in [0, 1]; ``nan`` with an :class:`UndefinedMetricWarning` if there is no abnormal or no normal pixel.

    Raises:
        ValueError: as :func:`pixel_auroc`, ``fpr_limit`` outside (0, 1], ``connectivity`` not 4 or 8.
    """
    fpr_limit = _check_fpr_limit(fpr_limit)
    m, g = _check_maps_masks(maps, masks)
    n_pos = int(g.sum())
    if _warn_undefined("AUPRO", n_pos, g.size - n_pos, "pixels"):
        return float("nan")
    return _pixel_counts(m, g, weights=True, connectivity=connectivity).partial_weighted_auc(fpr_limit)


def _check_fpr_limit(fpr_limit: float) -> float:
    try:
        f = float(fpr_limit)
    except (TypeError, ValueError):
        raise ValueError(f"fpr_limit must be a number in (0, 1], got {fpr_limit!r}") from None
    if not 0.0 < f <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit!r}")
    return f


def best_dice(maps: Any, masks: Any) -> tuple[float, float]:
    """Best Dice over all thresholds of the pooled maps, and that threshold.

    Dice at ``t`` = ``2 TP / (2 TP + FP + FN)`` counted over all pixels of all images with the rule
    ``map >= t``; this is the pixel-level F1, so the lowest threshold among equally good ones is returned
    (as :func:`f1_max`).

    Returns:
        ``(dice, threshold)``; ``(nan, nan)`` with an :class:`UndefinedMetricWarning` if there is no abnormal or no
        normal pixel.

    Raises:
        ValueError: as :func:`pixel_auroc`.
    """
    m, g = _check_maps_masks(maps, masks)
    n_pos = int(g.sum())
    if _warn_undefined("Dice", n_pos, g.size - n_pos, "pixels"):
        return float("nan"), float("nan")
    return _pixel_counts(m, g, weights=False).f1_max()


def pixel_metrics(maps: Any, masks: Any, fpr_limit: float = 0.3) -> dict:
    """Pixel-level metrics ``{"pixel_auroc", "aupro", "dice"}`` (python floats), sharing one sort of the pixels.

    All values are ``None`` if ``masks`` is ``None`` or contains no abnormal pixel (sets with image labels only).
    If every pixel is abnormal the values are ``nan`` (with an :class:`UndefinedMetricWarning`).
    ``aupro`` uses ``fpr_limit`` (BMAD: 0.3) and 8-connectivity; ``dice`` is the best Dice of :func:`best_dice`.
    """
    none = {"pixel_auroc": None, "aupro": None, "dice": None}
    if masks is None:
        return none
    if maps is None:
        raise ValueError("masks were given but maps is None")
    fpr_limit = _check_fpr_limit(fpr_limit)
    m, g = _check_maps_masks(maps, masks)
    n_pos = int(g.sum())
    if n_pos == 0:
        return none
    if _warn_undefined("pixel AUROC, AUPRO and Dice", n_pos, g.size - n_pos, "pixels"):
        nan = float("nan")
        return {"pixel_auroc": nan, "aupro": nan, "dice": nan}
    c = _pixel_counts(m, g, weights=True)
    return {
        "pixel_auroc": float(c.auroc()),
        "aupro": float(c.partial_weighted_auc(fpr_limit)),
        "dice": float(c.f1_max()[0]),
    }


def evaluate_predictions(scores: Any, labels: Any, maps: Any = None, masks: Any = None) -> dict:
    """Every metric of the benchmark in one flat dictionary of python floats (or ``None``).

    Keys: ``image_auroc``, ``ap``, ``f1``, ``acc``, ``threshold`` (see :func:`image_metrics`; ``threshold`` is in
    score units, the others in [0, 1]) and ``pixel_auroc``, ``aupro``, ``dice`` (see :func:`pixel_metrics`;
    ``None`` without masks or without abnormal pixels). Single-class image sets give ``nan`` image metrics.

    Raises:
        ValueError: invalid inputs, or maps/masks whose number of images differs from the number of scores.
    """
    out = image_metrics(scores, labels)
    if masks is not None and maps is not None:
        n_img = _vector(scores, "scores").shape[0]
        m_raw = _to_numpy(maps, "maps")
        n_map = _image_stack(m_raw, "maps").shape[0]
        if n_map != n_img:
            raise ValueError(f"length mismatch: {n_img} scores but {n_map} maps (maps shape {m_raw.shape})")
    out.update(pixel_metrics(maps, masks))
    return out
