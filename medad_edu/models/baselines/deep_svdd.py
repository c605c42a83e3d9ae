"""Deep SVDD: map normal images close to a fixed centre; the distance to it is the anomaly score.

Ruff et al., "Deep One-Class Classification", ICML 2018 (http://proceedings.mlr.press/v80/ruff18a.html).
Explained and built step by step in notebooks/40_baselines.ipynb.

A network ``phi`` maps an image to a representation; training minimises the one-class loss
``mean ||phi(x) - c||^2`` over normal images (plus weight decay through the optimiser), which shrinks the
smallest sphere around ``c`` that holds the normal data. Two rules from the paper prevent the trivial
solution of mapping everything onto ``c``:

- ``c`` is *fixed*, the mean of ``phi(x)`` over one initial pass on the training images (before any update),
  with coordinates closer than ``eps = 0.1`` to zero pushed to ``+-eps``;
- the network has **no bias terms** and no bounded activations (bias-free convs, BatchNorm without affine
  parameters, leaky ReLU), so it cannot output a constant.

Anomaly map (our choice, documented): ``phi`` is fully convolutional and its representation is the feature map
``[rep_dim, S/8, S/8]`` flattened, with a centre of the same shape (one centre per location: the images are
roughly aligned, so a lung location and a border location may sit in different places). The Deep SVDD distance
then splits exactly into per-location terms ``||phi(x)[:, i, j] - c[:, i, j]||^2``; that grid, upsampled
bilinearly to the image size, is the anomaly map, and the image score is its mean (= the classical Deep SVDD
score divided by the number of locations). Each location's receptive field is a patch of about 36 x 36
pixels, so the map localises at patch resolution. Gradient saliency would be an alternative; it is noisier.

We skip the paper's optional autoencoder pre-training (the method is usable without it; see the notebook).

Example::

    from medad_edu.training import make_config, train
    result = train(make_config("dsvdd", "quick", epochs=2, sizes="tiny"), run_dir=None, progress=False)
    out = result.model(images, task_ids)   # pred_score = mean squared distance to the centre

Defined in: notebooks/40_baselines.ipynb
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..base import AnomalyModel, AnomalyResult


def bias_free_block(c_in: int, c_out: int) -> nn.Sequential:
    """5x5 conv (no bias) -> BatchNorm without affine parameters -> leaky ReLU -> 2x2 max pool (Ruff's blocks)."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 5, padding=2, bias=False),
                         nn.BatchNorm2d(c_out, eps=1e-4, affine=False),
                         nn.LeakyReLU(0.1), nn.MaxPool2d(2))


class DeepSVDD(AnomalyModel):
    name = "dsvdd"
    # Ruff et al.: Adam, lr 1e-4, weight decay 5e-7 (lambda = 1e-6 / 2 in the paper's notation), eps 0.1.
    PAPER = {"epochs": 250, "lr": 1e-4, "weight_decay": 5e-7, "channels": [32, 64, 128], "rep_dim": 64, "eps": 0.1}
    # The short CPU schedule (no autoencoder pre-training, 30 epochs) needs a larger step than the paper's 1e-4.
    QUICK = {"epochs": 30, "lr": 1e-3, "weight_decay": 5e-7, "channels": [16, 32, 64], "rep_dim": 32, "eps": 0.1}

    def __init__(self, image_size: int, task_names, prompts=None, channels=(16, 32, 64), rep_dim: int = 32,
                 eps: float = 0.1):
        channels = [int(c) for c in channels]
        super().__init__(image_size, task_names, prompts, channels=channels)
        if not channels or min(channels) < 1 or rep_dim < 1:
            raise ValueError(f"channels and rep_dim must be positive; got {channels}, {rep_dim}")
        if image_size % 2 ** len(channels):
            raise ValueError(f"image_size {image_size} must be divisible by 2**{len(channels)}")
        if eps < 0:
            raise ValueError(f"eps must be >= 0; got {eps}")
        chans = [1, *channels]
        self.phi = nn.Sequential(*[bias_free_block(a, b) for a, b in zip(chans[:-1], chans[1:])],
                                 nn.Conv2d(chans[-1], rep_dim, 1, bias=False))
        grid = image_size // 2 ** len(channels)
        self.register_buffer("center", torch.zeros(rep_dim, grid, grid))
        self.register_buffer("center_ready", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def init_center(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Set ``c`` to the mean representation of ``images`` (one pass, no update), with the ``eps`` rule."""
        total = torch.zeros_like(self.center)
        for start in range(0, len(images), batch_size):
            total += self.phi(images[start:start + batch_size].to(self.center.device)).float().sum(0)
        c = total / len(images)
        eps = self.options["eps"]
        c = torch.where(c.abs() < eps, torch.where(c < 0, -eps, eps) * torch.ones_like(c), c)
        self.center.copy_(c)
        self.center_ready.fill_(True)
        return c

    def on_train_start(self, data, device: torch.device) -> None:
        if bool(self.center_ready):  # resumed run: the centre is fixed once and for all
            return
        from ...data.batches import split_tensors

        # Eval mode as in Ruff's code: the initial pass must not move BatchNorm's running statistics.
        was_training = self.training
        self.eval()
        self.init_center(split_tensors(data, "train").images)
        self.train(was_training)

    def distance_map(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, h, w]`` squared distances of each location's representation to its centre."""
        return ((self.phi(images).float() - self.center) ** 2).sum(1)

    def training_loss(self, batch):
        if not bool(self.center_ready):
            raise RuntimeError("dsvdd: the centre is not initialised (on_train_start was not called)")
        return {"loss": self.distance_map(batch["image"]).mean()}

    def forward(self, images: torch.Tensor, task_ids: torch.Tensor | None = None) -> AnomalyResult:
        self.check_input(images, task_ids)
        dist = self.distance_map(images).unsqueeze(1)
        amap = F.interpolate(dist, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return AnomalyResult(amap, dist.flatten(1).mean(1), {"distance_grid": dist})
