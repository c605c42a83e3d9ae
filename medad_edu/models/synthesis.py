"""Primitives shared by the methods that learn from synthetic anomalies made of normal images: the NSA baseline
(``baselines/nsa.py``) and the multi-task learner's lesion task (``mtl/proxy_tasks.py``, ``SyntheticLesion``).

- :func:`same_group_partners`: for each image, a random *other* image of the batch from the same group (organ);
  tissue from another modality would be recognisable by its texture alone, a shortcut that teaches nothing
  about anatomy (NSA pairs images of the same object class for the same reason);
- :func:`affine_warp`: a partner image moved and rescaled (the region a cut-paste transplants), reflection
  padded at the border.

Both draw nothing themselves beyond what the caller's generator gives, so a method's corruption stays
bit-identical for the same generator state.

Defined in: notebooks/40_baselines.ipynb
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def same_group_partners(groups: torch.Tensor, generator: torch.Generator | None = None,
                        device: torch.device | str | None = None,
                        dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Index ``[B]`` of a random other image of the same group for each image (itself if it is the only one).

    One ``[B, B]`` uniform draw from ``generator`` (torch's global generator if ``None``) on the generator's
    device, moved to ``device`` (default: where ``groups`` is) and ``dtype``; the choice is made there.
    """
    b = len(groups)
    device = groups.device if device is None else torch.device(device)
    draw_on = generator.device if generator is not None else torch.device("cpu")
    r = torch.rand((b, b), generator=generator, device=draw_on).to(device, dtype)
    eye = torch.eye(b, dtype=torch.bool, device=device)
    groups = groups.to(device)
    same = groups[:, None] == groups[None, :]
    r = torch.where(same & ~eye, r, torch.full_like(r, -1.0))
    return torch.where(eye, torch.full_like(r, -0.5), r).argmax(1)


def affine_warp(source: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``source [B, C, H, W]`` resampled at ``scale * p + shift`` for every output point ``p`` (``grid_sample``'s
    normalised coordinates, ``align_corners=False``; ``scale [B]``, ``shift [B, 2]`` as (x, y)), bilinear,
    reflection padding."""
    theta = torch.zeros(len(source), 2, 3, device=scale.device, dtype=scale.dtype)
    theta[:, 0, 0] = scale
    theta[:, 1, 1] = scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta.to(source.device, source.dtype), list(source.shape), align_corners=False)
    return F.grid_sample(source, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
