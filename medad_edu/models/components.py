"""Building blocks shared by several models: the conv encoder and deconv decoder of Sec. 4.3 of All-in-One.

Encoder: 4 x [Conv 4x4 stride 2 -> BatchNorm -> ReLU] with channels 16-32-64-64, then FC -> ``hidden`` (2048)
-> ReLU -> FC -> ``latent`` (16). An ``S x S`` input becomes ``64 x S/16 x S/16`` before the FC layers, so any
``S`` that is a multiple of 16 works (64 px on CPU, 256 px as in the paper).

Decoder: FC ``latent`` -> ``64 x S/16 x S/16``, then 4 x [ConvTranspose 4x4 stride 2] with channels
64-32-16-``out_channels``; every layer but the output layer is followed by BatchNorm + ReLU.

Explained in notebooks/10_allinone_encoder.ipynb (and used by the AE of notebooks/03_autoencoder.ipynb).

Also small helpers that several models share: ``group_norm_groups`` (GroupNorm groups for a width),
``smooth_noise`` (coarse Gaussian noise, for the MTL-MAD proxy tasks and the denoising autoencoder) and
``bounded_logvar`` (a predicted log-variance: AE-U, All-in-One, MTL-MAD's uncertainty heads).

Defined in: notebooks/03_autoencoder.ipynb, notebooks/10_allinone_encoder.ipynb
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import check_image_size

LOGVAR_RANGE = (-10.0, 4.0)  # default range of a predicted log-variance: exp(-s) stays finite in float32 and bf16


def group_norm_groups(channels: int) -> int:
    """The number of GroupNorm groups for ``channels``: 8, 4, 2 or 1, the largest that divides it."""
    for g in (8, 4, 2):
        if channels % g == 0:
            return g
    return 1


def smooth_noise(n: int, size: int | tuple[int, int], res: int, generator: torch.Generator,
                 like: torch.Tensor) -> torch.Tensor:
    """Smooth noise ``[n,1,H,W]`` (``size`` = H = W, or ``(H, W)``): standard normal on a ``res x res`` grid (drawn on
    the generator's device), bilinearly upsampled, on ``like``'s device and dtype."""
    low = torch.randn((n, 1, res, res), generator=generator, device=generator.device).to(like.device, like.dtype)
    hw = (size, size) if isinstance(size, int) else tuple(size)
    return F.interpolate(low, size=hw, mode="bilinear", align_corners=False)


def bounded_logvar(raw: torch.Tensor, low: float = LOGVAR_RANGE[0], high: float = LOGVAR_RANGE[1]) -> torch.Tensor:
    """A raw network output -> a log-variance in ``(low, high)`` (smooth, so gradients never vanish at a clamp)."""
    return low + (high - low) * torch.sigmoid(raw)


def uncertainty_nll(x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``mean(exp(-s) (x - mu)^2 + s)``: a Gaussian NLL without its constant and factor 1/2 (AE-U's loss, All-in-One's
    log-variance form, MTL-MAD's reconstruction task). For a squared error ``r`` its optimum is ``s = ln r``."""
    return (uncertainty_map(x, mu, logvar) + logvar).mean()


def uncertainty_map(x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
                    min_logvar: float | None = None) -> torch.Tensor:
    """``exp(-s) (x - mu)^2``: the squared error in units of the variance the network predicts for that pixel.

    ``min_logvar`` floors ``s`` in the map (not in the loss): where every training image had the same value (air,
    the black frame), the network learns a variance near zero, and a small shift of anatomy into such a pixel
    then outweighs a lesion by orders of magnitude. A floor at the images' noise level stops that."""
    if min_logvar is not None:
        logvar = logvar.clamp_min(min_logvar)
    return torch.exp(-logvar) * (x - mu) ** 2


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
        check_image_size(image_size)
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
