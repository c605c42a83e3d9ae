"""MemAE: an autoencoder that may only rebuild its input from a memory of normal patterns.

Gong et al., "Memorizing Normality to Detect Anomaly: Memory-augmented Deep Autoencoder for Unsupervised
Anomaly Detection", ICCV 2019 (https://arxiv.org/abs/1904.02639). Explained and built step by step in
notebooks/40_baselines.ipynb.

A plain autoencoder often generalises too well: it also reconstructs lesions, so their error stays small.
MemAE inserts a memory ``M`` of ``mem_dim`` learned slots between encoder and decoder. The encoder output at
each spatial location is a query ``z`` (the paper treats every position of a conv feature map as a query);
it is replaced by a convex combination of slots ``z_hat = w M`` with addressing weights

    w = softmax(z M^T)                                       (Eq. 5; dot product, as the authors' code)
    w_hat = max(w - lambda, 0) * w / (|w - lambda| + eps),   then  w_hat /= ||w_hat||_1     (hard shrinkage, Eq. 7)

so only a few slots contribute. The loss is the reconstruction MSE plus ``entropy_weight`` times the mean
entropy of ``w_hat`` (Eq. 10), which pushes the addressing to be sparse as well. At test time a lesion can only
be rebuilt from normal slots, so its error is large: the anomaly map is ``(x - x_hat)^2`` and the image score
its mean, as for the AE.

Architecture here: the All-in-One conv blocks (Conv 4x4 stride 2 + BN + ReLU, channels 16-32-64, then a last
conv to ``latent_channels`` without ReLU so queries can be negative), the memory on the ``S/16 x S/16`` grid,
and a mirrored deconv decoder with a sigmoid output.

Example::

    from medad_edu.training import make_config, train
    result = train(make_config("memae", "quick", epochs=2, sizes="tiny"), run_dir=None, progress=False)
    out = result.model(images, task_ids)   # AnomalyResult(anomaly_map [B,1,S,S], pred_score [B])

Defined in: notebooks/40_baselines.ipynb
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..base import AnomalyModel, AnomalyResult
from ..components import conv_block, deconv_block


def hard_shrink_relu(w: torch.Tensor, lam: float, eps: float = 1e-12) -> torch.Tensor:
    """Hard shrinkage of addressing weights (Gong et al., Eq. 7), then L1 re-normalisation over the last dim.

    Weights below ``lam`` become 0; the rest keep (almost) their value. The continuous form keeps a gradient.
    """
    shrunk = F.relu(w - lam) * w / ((w - lam).abs() + eps)
    return shrunk / shrunk.sum(-1, keepdim=True).clamp_min(eps)


def addressing_entropy(w: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Mean entropy ``-sum_i w_i log w_i`` over queries (Eq. 10)."""
    return -(w * torch.log(w + eps)).sum(-1).mean()


class MemoryModule(nn.Module):
    """``mem_dim`` slots of size ``channels``; reads every location of a ``[B, C, h, w]`` map."""

    def __init__(self, mem_dim: int, channels: int, shrink_thres: float):
        super().__init__()
        # Uniform init in +-1/sqrt(C), as in the authors' code.
        bound = 1.0 / channels ** 0.5
        self.memory = nn.Parameter(torch.empty(mem_dim, channels).uniform_(-bound, bound))
        self.shrink_thres = shrink_thres

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = z.shape
        queries = z.permute(0, 2, 3, 1).reshape(-1, c)  # every location is a query
        att = torch.softmax(queries @ self.memory.t(), dim=-1)
        if self.shrink_thres > 0:
            att = hard_shrink_relu(att, self.shrink_thres)
        read = (att @ self.memory).view(b, h, w, c).permute(0, 3, 1, 2)
        return read, att


class MemAE(AnomalyModel):
    name = "memae"
    # Gong et al. (code defaults): memory size 2000, shrink threshold 0.0025 (in [1/N, 3/N]), entropy weight
    # 0.0002. Trainer settings as the other methods (All-in-One Sec. 4.3) so the benchmark budget is equal.
    PAPER = {"epochs": 250, "lr": 5e-4, "mem_dim": 2000, "shrink_thres": 0.0025, "entropy_weight": 0.0002,
             "latent_channels": 64}
    QUICK = {"epochs": 30, "lr": 1e-3, "mem_dim": 500, "shrink_thres": 0.0025, "entropy_weight": 0.0002,
             "latent_channels": 64}

    def __init__(self, image_size: int, task_names, prompts=None, mem_dim: int = 500, shrink_thres: float = 0.0025,
                 entropy_weight: float = 0.0002, latent_channels: int = 64):
        super().__init__(image_size, task_names, prompts)
        if mem_dim < 1:
            raise ValueError(f"mem_dim must be >= 1; got {mem_dim}")
        if not 0 <= shrink_thres < 1:
            raise ValueError(f"shrink_thres must be in [0, 1); got {shrink_thres}")
        if entropy_weight < 0:
            raise ValueError(f"entropy_weight must be >= 0; got {entropy_weight}")
        self.entropy_weight = entropy_weight
        self.encoder = nn.Sequential(conv_block(1, 16), conv_block(16, 32), conv_block(32, 64),
                                     nn.Conv2d(64, latent_channels, 4, stride=2, padding=1, bias=False),
                                     nn.BatchNorm2d(latent_channels))
        self.memory = MemoryModule(mem_dim, latent_channels, shrink_thres)
        self.decoder = nn.Sequential(deconv_block(latent_channels, 64), deconv_block(64, 32), deconv_block(32, 16),
                                     nn.ConvTranspose2d(16, 1, 4, stride=2, padding=1))

    def reconstruct(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        read, att = self.memory(self.encoder(images))
        return torch.sigmoid(self.decoder(read)), att

    def training_loss(self, batch):
        x = batch["image"]
        recon, att = self.reconstruct(x)
        rec = F.mse_loss(recon.float(), x.float())
        ent = addressing_entropy(att.float())
        return {"loss": rec + self.entropy_weight * ent, "reconstruction": rec, "entropy": ent}

    def forward(self, images: torch.Tensor, task_ids: torch.Tensor | None = None) -> AnomalyResult:
        self.check_input(images, task_ids)
        recon, att = self.reconstruct(images)
        amap = (images - recon) ** 2
        used = (att > 0).float().sum(-1).view(len(images), -1).mean(1)  # slots read per query (sparsity)
        return AnomalyResult(amap, amap.flatten(1).mean(1), {"reconstruction": recon, "slots_used": used})
