"""A from-scratch convolutional autoencoder: the baseline every chapter compares against.

Trained on normal images to reconstruct them through a 16-d bottleneck (MedIAnomaly's AE setting: latent 16,
lr 1e-3); at test time the anomaly map is the squared reconstruction error ``(x - x_hat)^2`` and the image score
is its mean. Its known weakness, shown in notebooks/03_autoencoder.ipynb: normal but hard-to-reconstruct
structure (edges, boundaries, fine texture) also has a large error, the "hallucinatory anomalies" that the
All-in-One model's hallucination map is designed to discount.

Example::

    from medad_edu.training import make_config, train
    result = train(make_config("ae", "quick", epochs=5), run_dir=None)
    out = result.model(images, task_ids)      # AnomalyResult(anomaly_map [B,1,S,S], pred_score [B])

Defined in: notebooks/03_autoencoder.ipynb
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import AnomalyModel, AnomalyResult
from .components import ConvDecoder, ConvEncoder


class AutoEncoder(AnomalyModel):
    name = "ae"
    QUICK = {"epochs": 30, "lr": 1e-3, "latent": 16, "hidden": 2048}
    PAPER = {"epochs": 250, "lr": 5e-4, "latent": 16, "hidden": 2048}

    def __init__(self, image_size: int, task_names, prompts=None, latent: int = 16, hidden: int = 2048):
        super().__init__(image_size, task_names, prompts)
        self.encoder = ConvEncoder(image_size, hidden=hidden, latent=latent)
        self.decoder = ConvDecoder(image_size, out_channels=1, latent=latent)

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(self.encoder(images)))

    def training_loss(self, batch):
        x = batch["image"]
        return {"loss": F.mse_loss(self.reconstruct(x), x)}

    def forward(self, images: torch.Tensor, task_ids: torch.Tensor | None = None) -> AnomalyResult:
        self.check_input(images, task_ids)
        recon = self.reconstruct(images)
        amap = (images - recon) ** 2
        return AnomalyResult(amap, amap.flatten(1).mean(1), {"reconstruction": recon})
