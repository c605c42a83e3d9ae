"""Figures used across the book and by ``medad-edu bench``: image grids, overlays, score histograms, ROC curves.

All functions take numpy arrays (or tensors) and return the matplotlib ``Figure`` so a caller can save it.

Defined in: notebooks/01_data.ipynb, notebooks/41_results.ipynb
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..ranking import auroc


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


def overlay(image, anomaly_map, mask=None, ax=None, alpha: float = 0.5, vmax: float | None = None,
            title: str | None = None, colorbar: bool = False, legend: bool | None = None):
    """The image in grey, the anomaly map in a heat colour map on top, and the mask's outline in green.

    ``title`` (e.g. the image score) goes above the image; ``colorbar=True`` adds the map's colour bar;
    ``legend`` (default: when a mask is drawn) names the mask outline.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(3.2, 3.2) if colorbar else (2.5, 2.5))
    ax.imshow(_squeeze(image), cmap="gray", vmin=0, vmax=1)
    amap = _squeeze(anomaly_map)
    im = ax.imshow(amap, cmap="inferno", alpha=alpha, vmin=0,
                   vmax=vmax if vmax is not None else float(amap.max() or 1))
    drawn = mask is not None and _squeeze(mask).any()
    if drawn:
        ax.contour(_squeeze(mask), levels=[0.5], colors="lime", linewidths=0.8)
    if legend if legend is not None else drawn:
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], color="lime", lw=1.2, label="lesion mask")] if drawn else []
        if handles:
            ax.legend(handles=handles, loc="lower right", fontsize=7, framealpha=0.7)
    if colorbar:
        cb = ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
        cb.set_label("anomaly map", fontsize=8)
        cb.ax.tick_params(labelsize=7)
    if title:
        ax.set_title(title, fontsize=9)
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


def score_histogram(scores, labels, ax=None, title: str = "", bins: int = 30, threshold: float | None = None,
                    xlabel: str = "anomaly score", ylabel: str = "density", legend: bool = True):
    """Histograms of the image scores of normal (blue) and abnormal (red) images (each normalised to area 1)."""
    import matplotlib.pyplot as plt

    scores, labels = _np(scores).astype(float), _np(labels)
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 2.6))
    edges = np.histogram_bin_edges(scores, bins=bins)
    ax.hist(scores[labels == 0], bins=edges, alpha=0.6, color="tab:blue", label="normal", density=True)
    ax.hist(scores[labels == 1], bins=edges, alpha=0.6, color="tab:red", label="abnormal", density=True)
    if threshold is not None:
        ax.axvline(threshold, color="k", ls="--", lw=1, label="threshold")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    if legend:
        ax.legend(fontsize=7)
    return ax


def score_histogram_grid(scores: dict, labels: dict, task_ids: dict, tasks: Sequence[str], bins: int = 20,
                         cell: tuple[float, float] = (2.7, 2.0),
                         title: str = "Test image scores: normal (blue) vs abnormal (red)"):
    """One score histogram per (method, task): rows ``scores`` keys (methods), columns ``tasks``.

    ``scores[m]``, ``labels[m]``, ``task_ids[m]`` are the test arrays of method ``m`` (task ids index ``tasks``).
    Each panel has its own score axis (the methods' scores are on different scales) with few ticks; rows are
    labelled with the method, the bottom row with the score. Returns a headless ``Figure`` (no pyplot).
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    methods = list(scores)
    fig = Figure(figsize=(cell[0] * len(tasks) + 0.4, cell[1] * len(methods) + 0.7), layout="constrained")
    axes = fig.subplots(len(methods), len(tasks), squeeze=False)
    for i, m in enumerate(methods):
        s, y, t = _np(scores[m]).astype(float), _np(labels[m]), _np(task_ids[m])
        for j, task in enumerate(tasks):
            ax = axes[i][j]
            sel = t == j
            if not sel.any():
                ax.axis("off")
                continue
            score_histogram(s[sel], y[sel], ax=ax, bins=bins, title=task if i == 0 else "", legend=False,
                            xlabel="anomaly score" if i == len(methods) - 1 else "",
                            ylabel=f"{m}\ndensity" if j == 0 else "")
            ax.xaxis.set_major_locator(MaxNLocator(nbins=3))
            ax.yaxis.set_major_locator(MaxNLocator(nbins=3))
            ax.tick_params(labelsize=7)
            ax.xaxis.get_offset_text().set_fontsize(7)
            ax.yaxis.label.set_fontsize(9 if j == 0 else 8)
            ax.title.set_fontsize(10)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside upper right", ncols=2, fontsize=8)
    fig.suptitle(title, fontsize=11)
    return fig


def anomaly_gallery(images, masks, row_labels: Sequence[str], maps: dict, scores: dict | None = None,
                    scales: dict | None = None, cell: float = 1.55,
                    title: str = "Anomaly maps (brighter = more anomalous); number: the image score"):
    """Rows of (image, mask, one anomaly map per method), with the image score above each map and a colour bar.

    ``images``, ``masks``: ``(n, H, W)``; ``maps[m]``: a list of ``n`` 2-D maps (``None`` where missing);
    ``scores[m]``: ``n`` image scores; ``scales[m]``: ``n`` ``(lo, hi)`` pairs, the colour range of each map
    (default: the map's own 1st to 99.5th percentile). Each map is shown as ``(map - lo) / (hi - lo)``, so one
    colour bar (low to high on each method's scale) serves every panel. Returns a headless ``Figure``.
    """
    from matplotlib.figure import Figure

    methods = list(maps)
    n, n_cols = len(images), 2 + len(methods)
    fig = Figure(figsize=(cell * n_cols + 1.2, (cell + 0.16) * n + 0.5), layout="constrained")
    fig.get_layout_engine().set(w_pad=0.01, h_pad=0.01, wspace=0.01, hspace=0.02)
    axes = fig.subplots(n, n_cols, squeeze=False)
    heat = None
    for r in range(n):
        cells = [(_squeeze(images[r]), "gray", "image", None), (_squeeze(masks[r]), "gray", "mask", None)]
        for m in methods:
            amap = maps[m][r]
            if amap is None:
                cells.append((None, None, m, None))
                continue
            amap = _squeeze(amap).astype(np.float32)
            lo, hi = (scales[m][r] if scales is not None else
                      (float(np.percentile(amap, 1)), float(np.percentile(amap, 99.5))))
            shown = (amap - lo) / (hi - lo if hi > lo else 1e-6)
            score = None if scores is None or scores[m][r] is None else float(scores[m][r])
            cells.append((shown, "inferno", m, score))
        for c, (img, cmap, name, score) in enumerate(cells):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if img is None:
                ax.axis("off")
                continue
            im = ax.imshow(img, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            if cmap == "inferno":
                heat = im
            label = [name] if r == 0 else []
            if score is not None:
                label.append(f"{score:.3g}")
            if label:
                ax.set_title("\n".join(label), fontsize=8, pad=2)
        axes[r][0].set_ylabel(row_labels[r], fontsize=8)
    if heat is not None:
        cb = fig.colorbar(heat, ax=axes, shrink=min(0.5, 4 / max(n, 1)), aspect=25, pad=0.01)
        cb.set_ticks([0, 1], labels=["low", "high"])
        cb.set_label("anomaly map, per method and task", fontsize=8)
        cb.ax.tick_params(labelsize=8)
    fig.suptitle(title, fontsize=10)
    return fig


def overlay_figure(image, anomaly_map, title: str = "", vmax: float | None = None, alpha: float = 0.5,
                   min_side: int = 256, dpi: int = 100, colorbar_label: str = "anomaly map"):
    """A headless ``Figure`` for a PNG file: the image with the map on top, ``title`` above, a colour bar.

    The image panel is shown pixel for pixel, enlarged (bilinear) so its longest side is at least ``min_side``
    pixels; the title band and the colour bar are added around it. Returns ``(figure, (width, height))``, the
    panel's size in pixels.
    """
    from matplotlib.figure import Figure
    from PIL import Image

    img = np.clip(_squeeze(image).astype(np.float32), 0, 1)
    amap = _squeeze(anomaly_map).astype(np.float32)
    h, w = img.shape
    scale = max(1.0, min_side / max(h, w))
    if scale > 1:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        img = np.asarray(Image.fromarray(img).resize(size, Image.BILINEAR), dtype=np.float32)
        amap = np.asarray(Image.fromarray(amap).resize(size, Image.BILINEAR), dtype=np.float32)
        h, w = img.shape
    top = vmax if vmax is not None else (float(amap.max()) if amap.max() > 0 else 1.0)
    n_lines = title.count("\n") + 1 if title else 0
    pad, title_px, bar_px = 6, 16 * n_lines + 8 if title else 0, 84
    fw, fh = w + bar_px + 2 * pad, h + title_px + 2 * pad
    fig = Figure(figsize=(fw / dpi, fh / dpi), dpi=dpi)
    ax = fig.add_axes((pad / fw, pad / fh, w / fw, h / fh))
    ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest", aspect="auto")
    im = ax.imshow(amap, cmap="inferno", alpha=alpha, vmin=0, vmax=top, interpolation="nearest", aspect="auto")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        fig.text(pad / fw, 1 - pad / fh, title, ha="left", va="top", fontsize=9)
    cax = fig.add_axes(((w + 2 * pad + 4) / fw, (pad + 0.1 * h) / fh, 12 / fw, 0.8 * h / fh))
    cb = fig.colorbar(im, cax=cax)
    cb.solids.set_alpha(1)
    cb.set_label(colorbar_label, fontsize=8)
    cb.ax.tick_params(labelsize=7)
    return fig, (w, h)


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
        scores, abnormal = _np(scores).astype(float).ravel(), _np(labels).astype(int).ravel() == 1
        ax.plot(fpr, tpr, label=f"{name} ({auroc(scores[abnormal], scores[~abnormal]):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return ax
