"""NSA: a one-stage detector that learns to segment synthetic anomalies made from normal images.

Schlueter et al., "Natural Synthetic Anomalies for Self-Supervised Anomaly Detection and Localization", ECCV 2022
(https://arxiv.org/abs/2109.15222); the paste variant is CutPaste (Li et al., CVPR 2021,
https://arxiv.org/abs/2104.04015). Explained and built step by step in notebooks/40_baselines.ipynb.

Training sees only normal images. Each batch is corrupted on the fly (:func:`synthesize_anomalies`, fully
vectorised in torch, no loop over samples): for every image, 1 to ``max_patches`` patches (rectangles or
ellipses, side ``patch_frac`` of the image, rescaled by ``scale_range``) are cut from *another* normal image
of the same organ (itself if it is alone in the batch; ``models/synthesis.py``) and put at a random place, either

- ``blend="poisson"`` (NSA): Poisson image editing. Inside the mask the result keeps the gradients of the
  source patch while matching the target on the mask's border, so the seam disappears and only the
  structure inside changes. We solve for the harmonic correction ``f`` (``Laplace f = 0`` inside, ``f = target -
  source`` outside) with red-black successive over-relaxation on the whole batch at once; or
- ``blend="paste"`` (CutPaste): the patch is pasted as is.

Which blend is the default: ``paste``. On the validation split of the embedded data (never the test split)
pasting detects better than Poisson blending (notebooks/40_baselines.ipynb): many of our lesions are changes of
intensity with visible borders, which pasted patches imitate better than seamless transplants. NSA proper is
``blend="poisson"``.

The target is NSA's soft label: inside the mask, ``sigmoid(label_k * (d - label_x0))`` with ``d`` the 3x3 local
mean of the absolute change, so a transplant that changed nothing visible is not called anomalous. A small
U-Net (conv blocks of All-in-One, with skip connections) predicts a logit per pixel and is trained with binary
cross-entropy. At test time the anomaly map is the predicted probability and the image score is the mean of
the map (NSA's choice; ``score_top < 1`` averages only that fraction of the highest pixels).

Example::

    from medad_edu.training import make_config, train
    result = train(make_config("nsa", "quick", epochs=2, sizes="tiny"), run_dir=None, progress=False)
    out = result.model(images, task_ids)   # anomaly_map = P(pixel is a synthetic anomaly)

Defined in: notebooks/40_baselines.ipynb
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..base import AnomalyModel, AnomalyResult
from ..components import conv_block
from ..synthesis import affine_warp, same_group_partners

BLENDS = ("poisson", "paste")


def _avg4(f: torch.Tensor) -> torch.Tensor:
    """Mean of the 4 neighbours of every pixel (replicate padding at the image border); faster than a conv."""
    p = F.pad(f, (1, 1, 1, 1), mode="replicate")
    return 0.25 * (p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:])


def poisson_blend(target: torch.Tensor, source: torch.Tensor, mask: torch.Tensor, iters: int | None = None,
                  omega: float | None = None) -> torch.Tensor:
    """Seamless cloning of ``source`` into ``target`` inside ``mask`` (all ``[B, 1, H, W]``, mask in {0, 1}).

    Solves ``Laplace(out) = Laplace(source)`` inside the mask with ``out = target`` outside, written as
    ``out = source + f`` with ``f`` harmonic inside and ``f = target - source`` outside. Red-black SOR; ``iters``
    defaults to half the largest mask side + 6 and ``omega`` to the optimal ``2 / (1 + sin(pi / side))``.
    """
    inside = mask > 0.5
    if not inside.any():
        return target.clone()
    side = int(max(inside.any(-1).sum(-1).max(), inside.any(-2).sum(-1).max()))
    # With the ring-mean start below, side/2 sweeps cut the remaining error ~25x: plenty for a synthetic anomaly.
    iters = side // 2 + 6 if iters is None else int(iters)
    omega = 2.0 / (1.0 + math.sin(math.pi / max(side, 2))) if omega is None else float(omega)
    diff = target - source
    # Start inside from the mean difference on the ring just outside the mask: SOR then only fixes the shape.
    ring = (F.max_pool2d(mask, 3, 1, 1) > 0.5) & ~inside
    ring_mean = (diff * ring).sum((-2, -1), keepdim=True) / ring.sum((-2, -1), keepdim=True).clamp_min(1)
    f = torch.where(inside, ring_mean, diff)
    h, w = mask.shape[-2:]
    checker = (torch.arange(h, device=mask.device)[:, None] + torch.arange(w, device=mask.device)[None, :]) % 2 == 0
    # Over-relaxation weights: omega on the pixels updated in this half-sweep, 0 elsewhere (few ops per sweep).
    steps = [omega * (inside & checker).to(f.dtype), omega * (inside & ~checker).to(f.dtype)]
    for _ in range(iters):
        for step in steps:
            f = torch.addcmul(f, step, _avg4(f) - f)
    return torch.where(inside, source + f, target)


def _shape_masks(size: int, cy: torch.Tensor, cx: torch.Tensor, hy: torch.Tensor, hx: torch.Tensor,
                 ellipse: torch.Tensor) -> torch.Tensor:
    """``[B, 1, S, S]`` masks of rectangles or ellipses with centres/half-sides in pixels."""
    coords = torch.arange(size, device=cy.device, dtype=torch.float32) + 0.5
    dy = (coords[None, :, None] - cy[:, None, None]) / hy[:, None, None]
    dx = (coords[None, None, :] - cx[:, None, None]) / hx[:, None, None]
    rect = (dy.abs() <= 1) & (dx.abs() <= 1)
    ell = dy ** 2 + dx ** 2 <= 1
    return torch.where(ellipse[:, None, None], ell, rect).unsqueeze(1).float()


def synthesize_anomalies(images: torch.Tensor, task_ids: torch.Tensor, generator: torch.Generator | None = None,
                         blend: str = "poisson", p_anomaly: float = 0.8, max_patches: int = 2,
                         patch_frac: tuple[float, float] = (0.08, 0.35), scale_range: tuple[float, float] = (0.7, 1.3),
                         label_k: float = 100.0, label_x0: float = 0.03,
                         poisson_iters: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Corrupt a batch ``[B, 1, S, S]``; returns ``(corrupted, soft_label, patch_mask)``, all ``[B, 1, S, S]``.

    Random numbers are drawn on the CPU (from ``generator`` or torch's global generator, which the trainer
    saves in checkpoints), so the corruption is reproducible on any device.
    """
    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {BLENDS}; got {blend!r}")
    b, _, s, _ = images.shape
    dev = images.device
    out = images.clone()
    patch_mask = torch.zeros_like(images)
    n_patches = torch.randint(1, max_patches + 1, (b,), generator=generator)
    n_patches = torch.where(torch.rand(b, generator=generator) < p_anomaly, n_patches, torch.zeros_like(n_patches))
    lo, hi = patch_frac
    for k in range(max_patches):  # a loop over patches, not samples
        active = (n_patches > k).to(dev)
        if not bool(active.any()):
            break
        u = torch.rand(b, 9, generator=generator)
        hy = 0.5 * s * (lo + (hi - lo) * u[:, 0])  # half sides in pixels
        hx = 0.5 * s * (lo + (hi - lo) * u[:, 1])
        scale = scale_range[0] + (scale_range[1] - scale_range[0]) * u[:, 2]
        cy = hy + (s - 2 * hy) * u[:, 3]  # destination centre: the patch fits in the image
        cx = hx + (s - 2 * hx) * u[:, 4]
        sy = hy * scale + (s - 2 * hy * scale).clamp_min(0) * u[:, 5]  # source centre
        sx = hx * scale + (s - 2 * hx * scale).clamp_min(0) * u[:, 6]
        ellipse = u[:, 7] < 0.5
        partner = same_group_partners(task_ids, generator, device="cpu")
        # Affine map destination -> source in grid_sample's normalised coordinates (align_corners=False).
        shift = torch.stack([scale - 2 * scale * cx / s + 2 * sx / s - 1,
                             scale - 2 * scale * cy / s + 2 * sy / s - 1], 1)
        warped = affine_warp(out[partner.to(dev)], scale, shift)
        mask = _shape_masks(s, cy.to(dev), cx.to(dev), hy.to(dev), hx.to(dev), ellipse.to(dev))
        mask = mask * active.view(b, 1, 1, 1).to(mask.dtype)
        if blend == "paste":
            new = torch.where(mask > 0.5, warped, out)
        else:
            new = poisson_blend(out, warped, mask, iters=poisson_iters)
        out = new.clamp(0, 1)
        patch_mask = torch.maximum(patch_mask, mask)
    change = F.avg_pool2d((out - images).abs(), 3, 1, 1, count_include_pad=False)
    label = patch_mask * torch.sigmoid(label_k * (change - label_x0))
    return out, label, patch_mask


class SmallUNet(nn.Module):
    """Encoder of All-in-One conv blocks (S/2..S/16), a decoder with skip connections back to S/2, and one logit
    per pixel (computed at S/2, upsampled bilinearly)."""

    def __init__(self, width: int = 16):
        super().__init__()
        w = width
        self.enc = nn.ModuleList([conv_block(1, w), conv_block(w, 2 * w), conv_block(2 * w, 4 * w),
                                  conv_block(4 * w, 4 * w)])

        def fuse(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                                 nn.ReLU(inplace=True))

        self.dec = nn.ModuleList([fuse(8 * w, 4 * w), fuse(6 * w, 2 * w), fuse(3 * w, w)])
        self.head = nn.Conv2d(w, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips, h = [], x
        for block in self.enc:
            h = block(h)
            skips.append(h)
        for block, skip in zip(self.dec, reversed(skips[:-1])):
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            h = block(torch.cat([h, skip], 1))
        # Logits at half resolution, upsampled: a full-resolution stage would double the cost for little gain.
        return F.interpolate(self.head(h), size=x.shape[-2:], mode="bilinear", align_corners=False)


class NSA(AnomalyModel):
    name = "nsa"
    # NSA/CutPaste train a ResNet-18 for hundreds of epochs; here the same budget as the other methods. Default
    # blend "paste" (CutPaste): on the embedded data's *validation* split it beats Poisson blending (see the module
    # docstring); pass blend="poisson" for NSA proper.
    PAPER = {"epochs": 250, "lr": 5e-4, "width": 32, "blend": "paste", "p_anomaly": 0.8, "max_patches": 2,
             "patch_frac": [0.08, 0.35], "scale_range": [0.7, 1.3], "label_k": 100.0, "label_x0": 0.03,
             "score_top": 1.0}
    QUICK = {"epochs": 20, "lr": 1e-3, "width": 16, "blend": "paste", "p_anomaly": 0.8, "max_patches": 2,
             "patch_frac": [0.08, 0.35], "scale_range": [0.7, 1.3], "label_k": 100.0, "label_x0": 0.03,
             "score_top": 1.0}

    def __init__(self, image_size: int, task_names, prompts=None, width: int = 16, blend: str = "paste",
                 p_anomaly: float = 0.8, max_patches: int = 2, patch_frac=(0.08, 0.35), scale_range=(0.7, 1.3),
                 label_k: float = 100.0, label_x0: float = 0.03, score_top: float = 1.0):
        patch_frac, scale_range = [float(v) for v in patch_frac], [float(v) for v in scale_range]
        super().__init__(image_size, task_names, prompts, patch_frac=patch_frac, scale_range=scale_range)
        if blend not in BLENDS:
            raise ValueError(f"blend must be one of {BLENDS}; got {blend!r}")
        if not 0 < patch_frac[0] <= patch_frac[1] < 1:
            raise ValueError(f"patch_frac must be 0 < low <= high < 1; got {patch_frac}")
        if not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range must be 0 < low <= high; got {scale_range}")
        if not 0 <= p_anomaly <= 1 or max_patches < 1:
            raise ValueError(f"need 0 <= p_anomaly <= 1 and max_patches >= 1; got {p_anomaly}, {max_patches}")
        if not 0 < score_top <= 1:
            raise ValueError(f"score_top must be in (0, 1]; got {score_top}")
        self.net = SmallUNet(width)

    def corrupt(self, images: torch.Tensor, task_ids: torch.Tensor, generator: torch.Generator | None = None):
        o = self.options
        return synthesize_anomalies(images, task_ids, generator, o["blend"], o["p_anomaly"], o["max_patches"],
                                    tuple(o["patch_frac"]), tuple(o["scale_range"]), o["label_k"], o["label_x0"])

    def training_loss(self, batch):
        with torch.no_grad():
            x, label, _ = self.corrupt(batch["image"].float(), batch["task_id"])
        logits = self.net(x)
        loss = F.binary_cross_entropy_with_logits(logits.float(), label)
        return {"loss": loss, "label_mean": label.mean()}

    def forward(self, images: torch.Tensor, task_ids: torch.Tensor | None = None) -> AnomalyResult:
        self.check_input(images, task_ids)
        amap = torch.sigmoid(self.net(images).float())
        flat = amap.flatten(1)
        top = self.options["score_top"]
        if top >= 1:
            score = flat.mean(1)
        else:
            score = flat.topk(max(1, int(round(top * flat.shape[1]))), dim=1).values.mean(1)
        return AnomalyResult(amap, score)
