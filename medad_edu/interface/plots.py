"""Figures used across the book and by ``medad-edu bench``: image grids, overlays, score histograms, ROC curves.

All functions take numpy arrays (or tensors) and return the matplotlib ``Figure`` so a caller can save it.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _squeeze(img) -> np.ndarray:
    img = _np(img)
    while img.ndim > 2:
        img = img[0]
    return img


def image_grid(rows: Sequence[Sequence], row_titles: Sequence[str] | None = None,
               col_titles: Sequence[str] | None = None, cmaps: Sequence[str] | str = "gray",
               cell: float = 1.6, vmin_vmax: Sequence | None = None):
    """A grid of images; ``rows[r][c]`` is a 2-D array. ``cmaps`` per row (or one for all)."""
    import matplotlib.pyplot as plt

    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(cell * n_cols, cell * n_rows), squeeze=False)
    for r, row in enumerate(rows):
        cmap = cmaps if isinstance(cmaps, str) else cmaps[r]
        lim = vmin_vmax[r] if vmin_vmax is not None else (None, None)
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(row) and row[c] is not None:
                ax.imshow(_squeeze(row[c]), cmap=cmap, vmin=lim[0], vmax=lim[1], interpolation="nearest")
            else:
                ax.axis("off")
            if c == 0 and row_titles is not None:
                ax.set_ylabel(row_titles[r], fontsize=8)
            if r == 0 and col_titles is not None and c < len(col_titles):
                ax.set_title(col_titles[c], fontsize=8)
    fig.tight_layout()
    return fig


def overlay(image, anomaly_map, mask=None, ax=None, alpha: float = 0.5, vmax: float | None = None):
    """The image in grey, the anomaly map in a heat colour map on top, and the mask's outline in green."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(2.5, 2.5))
    ax.imshow(_squeeze(image), cmap="gray", vmin=0, vmax=1)
    amap = _squeeze(anomaly_map)
    ax.imshow(amap, cmap="inferno", alpha=alpha, vmin=0, vmax=vmax if vmax is not None else float(amap.max() or 1))
    if mask is not None and _squeeze(mask).any():
        ax.contour(_squeeze(mask), levels=[0.5], colors="lime", linewidths=0.8)
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


def overlay_rgb(image, anomaly_map, vmax: float | None = None, alpha: float = 0.5) -> np.ndarray:
    """An RGB uint8 overlay (for writing PNG files without a figure)."""
    import matplotlib

    img = np.clip(_squeeze(image), 0, 1)
    amap = _squeeze(anomaly_map).astype(np.float64)
    top = vmax if vmax is not None else (amap.max() if amap.max() > 0 else 1.0)
    heat = matplotlib.colormaps["inferno"](np.clip(amap / top, 0, 1))[..., :3]
    rgb = (1 - alpha) * np.repeat(img[..., None], 3, axis=2) + alpha * heat
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def score_histogram(scores, labels, ax=None, title: str = "", bins: int = 30, threshold: float | None = None):
    """Histograms of the image scores of normal (blue) and abnormal (red) images."""
    import matplotlib.pyplot as plt

    scores, labels = _np(scores).astype(float), _np(labels)
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 2.6))
    edges = np.histogram_bin_edges(scores, bins=bins)
    ax.hist(scores[labels == 0], bins=edges, alpha=0.6, color="tab:blue", label="normal", density=True)
    ax.hist(scores[labels == 1], bins=edges, alpha=0.6, color="tab:red", label="abnormal", density=True)
    if threshold is not None:
        ax.axvline(threshold, color="k", ls="--", lw=1, label="threshold")
    ax.set_xlabel("anomaly score")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return ax


def roc_curve_points(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) at every distinct threshold, ties grouped, from (0, 0) to (1, 1)."""
    scores, labels = _np(scores).astype(float), _np(labels).astype(int)
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    last_of_group = np.r_[np.diff(s) != 0, True]
    tp, fp = np.cumsum(y)[last_of_group], np.cumsum(1 - y)[last_of_group]
    return np.r_[0.0, fp / max(fp[-1], 1)], np.r_[0.0, tp / max(tp[-1], 1)]


def roc_plot(curves: dict, ax=None, title: str = "ROC"):
    """``curves = {label: (scores, labels)}``: one ROC curve each, with the AUROC in the legend."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(3.2, 3.2))
    for name, (scores, labels) in curves.items():
        fpr, tpr = roc_curve_points(scores, labels)
        ax.plot(fpr, tpr, label=f"{name} ({np.trapezoid(tpr, fpr):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return ax
