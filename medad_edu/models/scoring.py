"""From an anomaly map to an image score: smooth the map, then pool it.

A small lesion covers a few percent of an image, so the *mean* of a map (the score of the AE, AE-U and
All-in-One papers) dilutes it in the error of the normal pixels; the *maximum* of the raw map is ruled by
single noisy pixels. Between the two: smooth the map with a Gaussian (``sigma`` in pixels, a lesion-sized
window) and average its highest ``top`` share of pixels. ``top = 1`` is the plain mean, ``top = 0`` the maximum.
Kascenas et al. (MIDL 2022) and MedIAnomaly (Cai et al. 2024) smooth residual maps the same way before
pooling. Every method that scores from a map uses this one function, so a comparison between methods is a
comparison of their maps, not of their pooling. Explained in notebooks/40_baselines.ipynb (section 7).

:func:`open_map` is a step a model may take before pooling (All-in-One's ``map_opening``): a grey-scale
morphological opening, the minimum over a ``size`` x ``size`` square followed by the maximum over the same square.
A response narrower than the square (the thin lines of residual along the edges of the skull or of the image
that a reconstruction never gets exactly right) is removed; a flat blob that contains the square keeps its values,
and a graded one keeps its extent. The opened map is never above the map.
Explained in notebooks/13_allinone_hallucination.ipynb (section 7).

Example::

    score = pool_map(amap, sigma=2.0, top=0.01)      # amap [B,1,S,S] -> [B]
    score = pool_map(open_map(amap, 3))              # thin responses removed first

Defined in: notebooks/40_baselines.ipynb, notebooks/13_allinone_hallucination.ipynb
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


def check_opening(size: int, name: str = "map_opening", image_size: int | None = None) -> int:
    """``size`` as an int, or a one-line ``ValueError``: 0 (no opening) or an odd number of pixels (a centred
    square), smaller than ``image_size`` when that is given."""
    whole = isinstance(size, int) or (isinstance(size, float) and math.isfinite(size) and size == int(size))
    if isinstance(size, bool) or not whole or size < 0 or (size > 0 and int(size) % 2 == 0):
        raise ValueError(f"{name} must be 0 (none) or an odd number of pixels (1, 3, 5, ...); got {size!r}")
    if image_size is not None and size >= image_size:
        raise ValueError(f"{name} must be smaller than the image ({image_size} px); got {size}")
    return int(size)


def check_std_floor(value: float, name: str = "map_std_floor") -> float:
    """``value`` as a float, or a one-line ``ValueError``: a variance floor is a standard deviation of [0, 1]
    intensities in [0, 1), 0 meaning none."""
    if not 0 <= value < 1:
        raise ValueError(f"{name} must be in [0, 1) (a standard deviation of [0, 1] intensities; 0 = none); "
                         f"got {value}")
    return float(value)


def open_map(amap: torch.Tensor, size: int) -> torch.Tensor:
    """Grey-scale opening of ``[B,1,H,W]`` maps with a ``size`` x ``size`` square (replicate padding): the erosion
    (local minimum) removes what is narrower than the square, the dilation (local maximum) gives what survives
    its extent back. ``size`` 0 or 1 returns the input."""
    size = check_opening(size)
    if size <= 1:
        return amap
    r = size // 2
    eroded = -F.max_pool2d(F.pad(-amap, (r, r, r, r), mode="replicate"), size, 1)
    return F.max_pool2d(F.pad(eroded, (r, r, r, r), mode="replicate"), size, 1)


def pool_map(amap: torch.Tensor, sigma: float = DEFAULT_SIGMA, top: float = DEFAULT_TOP) -> torch.Tensor:
    """Image scores ``[B]``: the mean of the ``top`` share of highest pixels of the smoothed map."""
    flat = smooth_map(amap, sigma).flatten(1)
    if top >= 1:
        return flat.mean(1)
    k = max(1, int(round(top * flat.shape[1])))
    return flat.topk(k, dim=1).values.mean(1)


__all__ = ["DEFAULT_SIGMA", "DEFAULT_TOP", "check_opening", "check_pooling", "check_std_floor", "gaussian_kernel1d",
           "open_map", "pool_map", "smooth_map"]
