"""Building blocks shared by several models: the conv encoder and deconv decoder of Sec. 4.3 of All-in-One.

Encoder: 4 x [Conv 4x4 stride 2 -> BatchNorm -> ReLU] with channels 16-32-64-64, then FC -> ``hidden`` (2048)
-> ReLU -> FC -> ``latent`` (16). An ``S x S`` input becomes ``64 x S/16 x S/16`` before the FC layers, so any
``S`` that is a multiple of 16 works (64 px on CPU, 256 px as in the paper).

Decoder: FC ``latent`` -> ``64 x S/16 x S/16``, then 4 x [ConvTranspose 4x4 stride 2] with channels
64-32-16-``out_channels``; every layer but the output layer is followed by BatchNorm + ReLU.

Explained in notebooks/10_allinone_encoder.ipynb (and used by the AE of notebooks/03_autoencoder.ipynb).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


def deconv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


class ConvEncoder(nn.Module):
    """``x [B,1,S,S] -> v [B, latent]``; ``features(x)`` gives the ``[B, 64, S/16, S/16]`` feature map."""

    def __init__(self, image_size: int, in_channels: int = 1, channels: Sequence[int] = (16, 32, 64, 64),
                 hidden: int = 2048, latent: int = 16):
        super().__init__()
        if image_size % 16:
            raise ValueError(f"image_size must be a multiple of 16; got {image_size}")
        chans = [in_channels, *channels]
        self.conv = nn.Sequential(*[conv_block(a, b) for a, b in zip(chans[:-1], chans[1:])])
        self.grid = image_size // 2 ** len(channels)
        flat = channels[-1] * self.grid * self.grid
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, latent))
        self.latent = latent

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x))


class ConvDecoder(nn.Module):
    """``z [B, latent] -> [B, out_channels, S, S]`` (no output activation: the caller decides)."""

    def __init__(self, image_size: int, out_channels: int = 1, channels: Sequence[int] = (64, 32, 16),
                 latent: int = 16, start_channels: int = 64):
        super().__init__()
        n_up = len(channels) + 1
        if image_size % 2 ** n_up:
            raise ValueError(f"image_size must be a multiple of {2 ** n_up}; got {image_size}")
        self.grid = image_size // 2 ** n_up
        self.start_channels = start_channels
        self.fc = nn.Linear(latent, start_channels * self.grid * self.grid)
        chans = [start_channels, *channels]
        self.deconv = nn.Sequential(
            nn.BatchNorm2d(start_channels), nn.ReLU(inplace=True),
            *[deconv_block(a, b) for a, b in zip(chans[:-1], chans[1:])],
            nn.ConvTranspose2d(chans[-1], out_channels, 4, stride=2, padding=1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(len(z), self.start_channels, self.grid, self.grid)
        return self.deconv(h)
