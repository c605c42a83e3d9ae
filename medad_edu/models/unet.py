"""A full-resolution U-Net: the network behind the coarse-noise denoising autoencoder and the new MTL-MAD.

``UNet(width=w, depth=d)``: d down levels with channels ``w, 2w, ..., 2^d w``; each level two 3x3
Conv-GroupNorm-ReLU layers; 2x2 max pooling down, bilinear upsampling then concatenation with the skip on the
way up; a 1x1 conv to ``out_channels`` at full resolution. GroupNorm (not BatchNorm) so that an image's output
does not depend on the rest of its batch: training and inference behave the same, whatever the batch holds.
Unlike the bottleneck autoencoders, a U-Net can copy its input through the skips, so it is trained on a task
where copying is wrong (remove coarse noise, find a pasted lesion), not on plain reconstruction.

An optional ``middle`` module (e.g. a Mixture-of-Experts layer, ``medad_edu.models.mtl``) transforms the
bottleneck: ``forward(x, middle_args)`` calls ``middle(h, *middle_args)``, which returns ``(h, info)``.

Explained in notebooks/40_baselines.ipynb (denoising autoencoder) and notebooks/24_mtl_unet.ipynb.

Example::

    net = UNet(in_channels=1, out_channels=1, width=16, depth=3)
    y = net(torch.rand(4, 1, 64, 64))        # [4, 1, 64, 64]

Defined in: notebooks/24_mtl_unet.ipynb, notebooks/40_baselines.ipynb
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .components import group_norm_groups as _groups


def double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.GroupNorm(_groups(c_out), c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.GroupNorm(_groups(c_out), c_out), nn.ReLU(inplace=True))


class UNet(nn.Module):
    def __init__(self, in_channels: int = 1, out_channels: int = 1, width: int = 16, depth: int = 3,
                 middle: nn.Module | None = None):
        super().__init__()
        if width < 4:
            raise ValueError(f"width must be >= 4; got {width}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1; got {depth}")
        chans = [width * 2 ** i for i in range(depth + 1)]
        self.channels = chans
        self.depth = depth
        self.inc = double_conv(in_channels, chans[0])
        self.down = nn.ModuleList(double_conv(chans[i], chans[i + 1]) for i in range(depth))
        self.up = nn.ModuleList(double_conv(chans[i + 1] + chans[i], chans[i]) for i in reversed(range(depth)))
        self.middle = middle
        self.out = nn.Conv2d(chans[0], out_channels, 1)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's feature maps, finest first; the last one is the bottleneck ``[N, 2^d w, S/2^d, S/2^d]``."""
        if x.shape[-1] % 2 ** self.depth or x.shape[-2] % 2 ** self.depth:
            raise ValueError(f"image size must be a multiple of {2 ** self.depth}; got {tuple(x.shape[-2:])}")
        skips = [self.inc(x)]
        for down in self.down:
            skips.append(down(F.max_pool2d(skips[-1], 2)))
        return skips

    def decode(self, h: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        """Full-resolution decoder features from the bottleneck ``h`` and the encoder's other maps (finest first)."""
        skips = list(skips)
        for up in self.up:
            skip = skips.pop()
            h = up(torch.cat([F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False), skip], 1))
        return h

    def features(self, x: torch.Tensor, middle_args: tuple = ()) -> tuple[torch.Tensor, dict[str, Any]]:
        """Full-resolution decoder features ``[N, width, S, S]`` (before the output conv) and the middle's info."""
        skips = self.encode(x)
        h, info = skips.pop(), {}
        if self.middle is not None:
            h, info = self.middle(h, *middle_args)
        return self.decode(h, skips), info

    def forward(self, x: torch.Tensor, middle_args: tuple = ()) -> torch.Tensor:
        return self.out(self.features(x, middle_args)[0])


__all__ = ["UNet", "double_conv"]
