"""The shared encoder and the three kinds of task head of the multi-task learner.

- ``Encoder``: a small U-Net-style encoder, ``x [N,1,S,S] -> [f0 (c0, S/2), f1 (c1, S/4), f2 (c2, S/8)]``:
  a 4x4 stride-2 stem (as in All-in-One's encoder blocks, it sees every input pixel), then per level a
  stride-2 3x3 conv and a 3x3 conv, all with GroupNorm + ReLU. Nothing runs at full resolution: on 2 CPU
  cores the full-resolution layers cost most of the time and the proxy tasks multiply every image's cost by
  the number of tasks.
- ``DenseHead``: a light U-Net/FPN decoder (1x1 conv to the skip's width, nearest upsampling, *sum* with the
  encoder's skip feature, 3x3 conv) back to ``S/2``, then nearest upsampling to ``S x S`` and a 3x3 conv to the
  output -- for the pixel tasks (inpainting, denoising, lesion segmentation). Resize-then-convolve instead of a
  stride-2 transposed conv: the latter left a faint regular dot pattern in the maps (the "checkerboard
  artefacts" of Odena, Dumoulin & Olah, Distill 2016), which the per-pixel normalisation then amplified.
- ``GlobalHead``: pool the bottleneck to 4x4, flatten, MLP -> class logits -- for image-level tasks
  (orientation, pseudo-label). Pooling to a fixed 4x4 grid (not to 1x1) keeps the coarse layout, which the
  orientation task needs, and makes the head independent of the image size.
- ``BottleneckHead``: pool the bottleneck to 8x8, flatten, FC to a ``latent``-d code (16 by default, as the AE
  baseline), FC back to the S/8 grid and a decoder *without* skip connections back to ``S x S`` -- for the
  global reconstruction task, which must not be able to copy a lesion through a skip connection.
- ``GridHead``: pool the bottleneck to a ``g x g`` grid, add the global context, 1x1 convs -> logits per cell
  -- for the jigsaw task (which original position each tile came from).

GroupNorm everywhere: the proxy tasks feed very differently corrupted images through one trunk, and per-sample
normalisation makes a sample's output independent of what else is in its batch (training = inference).
Explained in notebooks/20_mtl_proxy_tasks.ipynb.

Defined in: notebooks/20_mtl_proxy_tasks.ipynb
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .moe import _groups


def conv_gn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                         nn.GroupNorm(_groups(c_out), c_out), nn.ReLU(inplace=True))


def widths(width: int) -> tuple[int, int, int]:
    """Channels per level for a base ``width``: (w, 2w, 4w) at S/2, S/4, S/8."""
    if width < 4:
        raise ValueError(f"width must be >= 4; got {width}")
    return (width, 2 * width, 4 * width)


class Encoder(nn.Module):
    def __init__(self, channels: Sequence[int] = (16, 32, 64), in_channels: int = 1):
        super().__init__()
        c0, c1, c2 = channels
        stem = nn.Sequential(nn.Conv2d(in_channels, c0, 4, stride=2, padding=1, bias=False),
                             nn.GroupNorm(_groups(c0), c0), nn.ReLU(inplace=True))
        self.levels = nn.ModuleList([
            stem,
            nn.Sequential(conv_gn(c0, c1, 2), conv_gn(c1, c1)),
            nn.Sequential(conv_gn(c1, c2, 2), conv_gn(c2, c2)),
        ])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for level in self.levels:
            x = level(x)
            feats.append(x)
        return feats


class DenseHead(nn.Module):
    def __init__(self, channels: Sequence[int], out_channels: int = 1):
        super().__init__()
        c = list(channels)
        # from the bottleneck up: 1x1 conv to the skip's width (cheap, at low resolution), upsample, add the
        # skip, 3x3 conv
        self.lateral = nn.ModuleList(nn.Conv2d(c[i + 1], c[i], 1) for i in reversed(range(len(c) - 1)))
        self.conv = nn.ModuleList(conv_gn(c[i], c[i]) for i in reversed(range(len(c) - 1)))
        self.out = nn.Conv2d(c[0], out_channels, 3, padding=1)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        for lateral, conv, skip in zip(self.lateral, self.conv, reversed(feats[:-1])):
            x = conv(F.interpolate(lateral(x), size=skip.shape[-2:], mode="nearest") + skip)
        return self.out(F.interpolate(x, scale_factor=2, mode="nearest"))


class BottleneckHead(nn.Module):
    def __init__(self, channels: Sequence[int], image_size: int, latent: int = 16, pool: int = 8):
        super().__init__()
        c = list(channels)
        self.grid = image_size // 2 ** len(c)  # bottleneck grid (S/8)
        self.pool = min(pool, self.grid)
        self.encode = nn.Linear(c[-1] * self.pool * self.pool, latent)
        self.decode = nn.Linear(latent, c[-1] * self.grid * self.grid)
        self.convs = nn.ModuleList(conv_gn(c[i + 1], c[i]) for i in reversed(range(len(c) - 1)))
        self.out = nn.Conv2d(c[0], 1, 3, padding=1)
        self.c_last = c[-1]

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        z = self.encode(F.adaptive_avg_pool2d(feats[-1], self.pool).flatten(1))
        x = F.relu(self.decode(z)).view(len(z), self.c_last, self.grid, self.grid)
        for conv in self.convs:
            x = conv(F.interpolate(x, scale_factor=2, mode="nearest"))
        return self.out(F.interpolate(x, scale_factor=2, mode="nearest"))


class GlobalHead(nn.Module):
    def __init__(self, channels: Sequence[int], num_classes: int, hidden: int = 128, pool: int = 4):
        super().__init__()
        self.pool = pool
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(channels[-1] * pool * pool, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, num_classes))

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.mlp(F.adaptive_avg_pool2d(feats[-1], self.pool))


class GridHead(nn.Module):
    def __init__(self, channels: Sequence[int], grid: int, num_classes: int, hidden: int = 128):
        super().__init__()
        c = channels[-1]
        self.grid = grid
        self.mlp = nn.Sequential(nn.Conv2d(2 * c, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, num_classes, 1))

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        cells = F.adaptive_avg_pool2d(feats[-1], self.grid)
        context = cells.mean((2, 3), keepdim=True).expand_as(cells)
        return self.mlp(torch.cat([cells, context], 1))


__all__ = ["BottleneckHead", "DenseHead", "Encoder", "GlobalHead", "GridHead", "conv_gn", "widths"]
