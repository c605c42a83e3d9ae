"""AE-U: an autoencoder that also predicts how uncertain each of its pixels is (Mao et al., MICCAI 2020).

"Abnormality Detection in Chest X-ray Images Using Uncertainty Prediction Autoencoders"
(https://doi.org/10.1007/978-3-030-59725-2_51), as configured in MedIAnomaly (Cai et al. 2024,
``reconstruction/utils/losses.py`` ``AEULoss``): the decoder of a conv autoencoder outputs two channels, a mean
``mu`` and a log-variance ``s`` per pixel; with inputs scaled to [-1, 1] the loss is the Gaussian negative
log-likelihood (up to constants) ``mean(exp(-s) (x - mu)^2 + s)``, whose optimum for a pixel with squared
error ``r`` is ``s = ln r`` whatever the intensity range, so normal but hard pixels (edges, fine texture) are
down-weighted. The anomaly map is the weighted residual ``exp(-s) (x - mu)^2``; the image score pools it
(:func:`medad_edu.models.scoring.pool_map`; ``score_top=1, score_sigma=0`` is the authors' mean).

Encoder and decoder are those of the AE baseline (:mod:`medad_edu.models.components`; latent 16, as
MedIAnomaly). Built by hand in notebooks/40_baselines.ipynb.

Example::

    from medad_edu.training import make_config, train
    result = train(make_config("aeu", "quick", epochs=2, sizes="tiny"), run_dir=None, progress=False)
    out = result.model(images, task_ids)       # anomaly_map = exp(-s) (x - mu)^2

Defined in: notebooks/40_baselines.ipynb
"""
from __future__ import annotations

import torch

from ..base import AnomalyModel, AnomalyResult
# LOGVAR_RANGE (the range of s), uncertainty_nll and uncertainty_map are shared with All-in-One and MTL-MAD
from ..components import (LOGVAR_RANGE, ConvDecoder, ConvEncoder, bounded_logvar,  # noqa: F401
                          uncertainty_map, uncertainty_nll)
from ..scoring import DEFAULT_SIGMA, DEFAULT_TOP, check_pooling, pool_map



class AEU(AnomalyModel):
    name = "aeu"
    # MedIAnomaly's AE-U: 64 px, latent 16, batch 64, Adam 1e-3, 250 epochs.
    PAPER = {"epochs": 250, "batch_size": 64, "lr": 1e-3, "latent": 16, "hidden": 2048}
    # CPU: the validation loss of the embedded sets flattens after about 60 epochs (notebooks/40_baselines.ipynb).
    QUICK = {"epochs": 60, "batch_size": 64, "lr": 1e-3, "latent": 16, "hidden": 2048}

    def __init__(self, image_size: int, task_names, prompts=None, latent: int = 16, hidden: int = 2048,
                 score_sigma: float = DEFAULT_SIGMA, score_top: float = DEFAULT_TOP):
        check_pooling(score_sigma, score_top)
        super().__init__(image_size, task_names, prompts)
        self.encoder = ConvEncoder(image_size, hidden=hidden, latent=latent)
        self.decoder = ConvDecoder(image_size, out_channels=2, latent=latent)
        self.score_sigma, self.score_top = float(score_sigma), float(score_top)

    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x in [-1, 1], mu, log-variance s)``, all ``[B,1,S,S]``."""
        x = images * 2 - 1
        out = self.decoder(self.encoder(x))
        return x, torch.tanh(out[:, :1]), bounded_logvar(out[:, 1:])

    def training_loss(self, batch):
        x, mu, s = self.predict(batch["image"])
        return {"loss": uncertainty_nll(x, mu, s), "mse": ((x - mu) ** 2).mean().detach() / 4}

    def forward(self, images: torch.Tensor, task_ids: torch.Tensor | None = None) -> AnomalyResult:
        self.check_input(images, task_ids)
        x, mu, s = self.predict(images)
        amap = uncertainty_map(x, mu, s)
        return AnomalyResult(amap, pool_map(amap, self.score_sigma, self.score_top),
                             {"reconstruction": (mu + 1) / 2, "log_variance": s, "error": ((x - mu) / 2) ** 2})
