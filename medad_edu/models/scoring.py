"""From an anomaly map to an image score: smooth the map, then pool it.

A small lesion covers a few percent of an image, so the *mean* of a map (the score of the AE, AE-U and
All-in-One papers) dilutes it in the error of the normal pixels; the *maximum* of the raw map is ruled by
single noisy pixels. Between the two: smooth the map with a Gaussian (``sigma`` in pixels, a lesion-sized
window) and average its highest ``top`` share of pixels. ``top = 1`` is the plain mean, ``top = 0`` the maximum.
Kascenas et al. (MIDL 2022) and MedIAnomaly (Cai et al. 2024) smooth residual maps the same way before
pooling. Every method that scores from a map uses this one function, so a comparison between methods is a
comparison of their maps, not of their pooling. Explained in notebooks/40_baselines.ipynb (section 7).

Example::

    score = pool_map(amap, sigma=2.0, top=0.01)      # amap [B,1,S,S] -> [B]

Defined in: notebooks/40_baselines.ipynb
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Chosen on the validation splits of the embedded phantoms and the real-anatomy set (never on test images):
# a validation set of 100 + 100 images per organ (brain MRI, head CT) of each embedded set; notebooks/40_baselines.ipynb.
DEFAULT_SIGMA = 2.0
DEFAULT_TOP = 0.01


def check_pooling(sigma: float, top: float) -> None:
    if not sigma >= 0:
        raise ValueError(f"score_sigma must be >= 0 (pixels); got {sigma}")
    if not 0 <= top <= 1:
        raise ValueError(f"score_top must be in [0, 1] (0 = max, 1 = mean); got {top}")


def gaussian_kernel1d(sigma: float, device=None, dtype=torch.float32) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def smooth_map(amap: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing of ``[B,1,H,W]`` maps (reflect padding); ``sigma = 0`` returns the input."""
    if sigma <= 0:
        return amap
    k = gaussian_kernel1d(sigma, amap.device, amap.dtype)
    r = len(k) // 2
    h, w = amap.shape[-2:]
    if r >= min(h, w):  # reflect padding needs the pad to be smaller than the image
        r = min(h, w) - 1
        k = k[len(k) // 2 - r: len(k) // 2 + r + 1]
        k = k / k.sum()
    x = F.conv2d(F.pad(amap, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))


def pool_map(amap: torch.Tensor, sigma: float = DEFAULT_SIGMA, top: float = DEFAULT_TOP) -> torch.Tensor:
    """Image scores ``[B]``: the mean of the ``top`` share of highest pixels of the smoothed map."""
    flat = smooth_map(amap, sigma).flatten(1)
    if top >= 1:
        return flat.mean(1)
    k = max(1, int(round(top * flat.shape[1])))
    return flat.topk(k, dim=1).values.mean(1)


__all__ = ["DEFAULT_SIGMA", "DEFAULT_TOP", "check_pooling", "gaussian_kernel1d", "pool_map", "smooth_map"]
