"""Denoising autoencoder with coarse noise (Kascenas, Pugeault & O'Neil, MIDL 2022).

"Denoising Autoencoders for Unsupervised Anomaly Detection in Brain MRI" (https://openreview.net/forum?id=Bm8-t_ggzPD),
as in MedIAnomaly (``reconstruction/utils/dae_worker.py``): during training, Gaussian noise is drawn on a
coarse ``noise_res x noise_res`` grid (std ``noise_std``), bilinearly upsampled to the image, randomly rolled,
and added on the body's foreground only; a U-Net (:class:`medad_edu.models.unet.UNet`) learns to restore the
clean image. Coarse noise looks like a smooth blob of wrong intensity, i.e. like a lesion, so the network learns
to *remove* such blobs; at test time the clean input goes in, and what it changes is the anomaly: the map is
the absolute residual ``|x - f(x)|``, the image score pools it (:func:`medad_edu.models.scoring.pool_map`).
Why a U-Net and no bottleneck: noise removal needs no compression, and the skips keep normal detail sharp, so
the residual of normal tissue stays small. Built by hand in notebooks/40_baselines.ipynb.

Example::

    from medad_edu.training import make_config, train
    result = train(make_config("dae", "quick", epochs=2, sizes="tiny"), run_dir=None, progress=False)
    out = result.model(images, task_ids)       # anomaly_map = |x - f(x)|

Defined in: notebooks/40_baselines.ipynb
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..base import AnomalyModel, AnomalyResult
from ..components import smooth_noise
from ..scoring import DEFAULT_SIGMA, DEFAULT_TOP, check_pooling, pool_map
from ..unet import UNet

FOREGROUND = 0.02  # intensity (images in [0, 1]) above which a smoothed pixel counts as body


def foreground_mask(images: torch.Tensor, threshold: float = FOREGROUND) -> torch.Tensor:
    """``[B,1,S,S]`` in {0, 1}: the body (smoothed intensity above ``threshold``), the air around it excluded."""
    smooth = F.avg_pool2d(images, 5, stride=1, padding=2, count_include_pad=False)
    return (smooth > threshold).to(images.dtype)


def coarse_noise(images: torch.Tensor, generator: torch.Generator, res: int = 16, std: float = 0.2) -> torch.Tensor:
    """Kascenas' noise for a batch ``[B,1,S,S]``: N(0, std^2) on a ``res x res`` grid, bilinearly upsampled to
    ``S x S``, rolled by a random offset per image (so the grid's nodes do not always sit at the same pixels),
    zero outside the foreground. One random draw for the whole batch (vectorised, no loop over samples)."""
    b, _, h, w = images.shape
    noise = smooth_noise(b, (h, w), res, generator, images) * std
    shifts = torch.randint(0, max(h, w), (b, 2), generator=generator, device=generator.device).to(images.device)
    # roll each image by its own offset: gather with modular indices
    rows = (torch.arange(h, device=images.device)[None, :] + shifts[:, :1]) % h  # [B, H]
    cols = (torch.arange(w, device=images.device)[None, :] + shifts[:, 1:]) % w  # [B, W]
    noise = noise.gather(2, rows[:, None, :, None].expand(b, 1, h, w))
    noise = noise.gather(3, cols[:, None, None, :].expand(b, 1, h, w))
    return noise * foreground_mask(images)


class DenoisingAE(AnomalyModel):
    name = "dae"
    # Kascenas et al. / MedIAnomaly: 128 px, batch 16, Adam 1e-4; noise on a 16 x 16 grid, std 0.2.
    PAPER = {"image_size": 128, "epochs": 250, "batch_size": 16, "lr": 1e-4, "width": 32, "depth": 4,
             "noise_res": 16, "noise_std": 0.2}
    # CPU, 64 px: a narrower U-Net; the noise grid keeps the paper's cell size (8 px at 128 px -> 8 x 8 at 64 px).
    QUICK = {"epochs": 20, "batch_size": 32, "lr": 1e-3, "width": 16, "depth": 3, "noise_res": 8, "noise_std": 0.2}

    def __init__(self, image_size: int, task_names, prompts=None, width: int = 8, depth: int = 3,
                 noise_res: int = 8, noise_std: float = 0.2, score_sigma: float = DEFAULT_SIGMA,
                 score_top: float = DEFAULT_TOP):
        check_pooling(score_sigma, score_top)
        if noise_res < 1 or noise_std <= 0:
            raise ValueError(f"noise_res must be >= 1 and noise_std > 0; got {noise_res}, {noise_std}")
        super().__init__(image_size, task_names, prompts)
        if image_size % 2 ** depth:
            raise ValueError(f"image_size {image_size} must be a multiple of 2**depth = {2 ** depth}")
        self.net = UNet(1, 1, width=width, depth=depth)
        self.noise_res, self.noise_std = int(noise_res), float(noise_std)
        self.score_sigma, self.score_top = float(score_sigma), float(score_top)

    def restore(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def training_loss(self, batch):
        x = batch["image"]
        gen = torch.Generator().manual_seed(int(torch.randint(0, 2 ** 62, (1,))))  # seeded by the global RNG
        noisy = x + coarse_noise(x, gen, self.noise_res, self.noise_std)
        return {"loss": F.mse_loss(self.restore(noisy), x)}

    def forward(self, images: torch.Tensor, task_ids: torch.Tensor | None = None) -> AnomalyResult:
        self.check_input(images, task_ids)
        restored = self.restore(images)
        amap = (images - restored).abs()
        return AnomalyResult(amap, pool_map(amap, self.score_sigma, self.score_top), {"reconstruction": restored})
