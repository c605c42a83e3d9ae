"""The proxy tasks of the multi-task learner: each learnable from normal images only, from scratch.

The MTL-MAD abstract names only "multiple self-supervised and pseudo-labeling tasks"; which tasks,
how they corrupt the images, their losses and their failure scores are this project's design, in the spirit of
SSMTL (Georgescu et al., CVPR 2021), SSMTL++ (Barbalau et al., CVIU 2023) and the pseudo-abnormal module of
Georgescu (arXiv 2307.07534). Each task is explained and built by hand in notebooks/20_mtl_proxy_tasks.ipynb.

Every task is a small ``nn.Module`` with the same interface:

- ``corrupt(images, generator, organs=None) -> (inputs, targets)``: training inputs and targets for a batch
  ``[B,1,S,S]`` in [0, 1]; batched (no loop over samples) and deterministic under the ``torch.Generator``'s seed
  (``organs``, the organ of each image -- the data set's task id -- is only used by the lesion task to paste from
  the same organ). "Task" in the MTL code means a *proxy* task; the data set's tasks are called organs there.
- ``views(images) -> (inputs, targets)``: the *fixed* set of ``num_views`` corruptions used at inference
  (e.g. the 4 rotations, 4 complementary masks, fixed noise fields), stacked view-major ``[V*B, ...]``. They do
  not depend on a random state or on the rest of the batch, so scoring is deterministic.
- ``forward(feats)``: the task's head on the shared trunk's features; ``loss(output, targets)``;
- ``failure(output, targets) -> (score [B], map [B,1,S,S] | None)``: how badly the task was solved on each
  image (averaged over the views), and where, when the task has a per-pixel answer.

=============  ===============  ===============================  =======================================
name           kind             what it probes                   failure score / map
=============  ===============  ===============================  =======================================
``inpaint``    self-supervised  appearance from context          squared error of the masked patches
``denoise``    self-supervised  appearance, texture, intensity   squared error after removing coarse noise
``rotate``     self-supervised  global geometry (orientation)    cross-entropy of the true rotation
``jigsaw``     self-supervised  local layout (tile positions)    cross-entropy per tile (tile map)
``lesion``     pseudo-anomaly   local structure (odd regions)    predicted synthetic-lesion probability
``cluster``    pseudo-label     global appearance (image type)   cross-entropy of the k-means cluster id
=============  ===============  ===============================  =======================================

Example::

    task = Inpainting(image_size=64, channels=(16, 32, 64))
    inputs, targets = task.corrupt(images, torch.Generator().manual_seed(0))

Defined in: notebooks/20_mtl_proxy_tasks.ipynb
"""
from __future__ import annotations

import math
from typing import ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..components import bounded_logvar, smooth_noise
from ..synthesis import affine_warp, same_group_partners
from .heads import BottleneckHead, DenseHead, GlobalHead, GridHead

VIEW_SEED = 1234  # seeds the fixed inference views (noise fields, jigsaw permutations)
Targets = dict[str, torch.Tensor]


def _rand(shape: Sequence[int], generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Uniform [0,1) drawn on the generator's device, then moved to ``like``'s device and dtype."""
    return torch.rand(tuple(shape), generator=generator, device=generator.device).to(like.device, like.dtype)


def _randn(shape: Sequence[int], generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=generator, device=generator.device).to(like.device, like.dtype)


def check_images(task_name: str, images: torch.Tensor, image_size: int) -> None:
    """A one-line error unless ``images`` is a ``[B,1,S,S]`` batch of the task's size."""
    if images.ndim != 4 or images.shape[1] != 1 or images.shape[-1] != image_size:
        raise ValueError(f"{task_name}: images must be [B,1,{image_size},{image_size}]; got {tuple(images.shape)}")


def at_least(task_name: str, option: str, value: int, low: int) -> int:
    """``value``, or a one-line error if it is below ``low``."""
    if value < low:
        raise ValueError(f"{task_name}: {option} must be >= {low}; got {value}")
    return value


def gain_and_noise(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Training inputs of the whole-image tasks: a mild random gain in [0.9, 1.1] and noise of std 0.02, so the
    head must generalise rather than memorise (the target stays the clean image or its label)."""
    gain = 0.9 + 0.2 * _rand((len(images), 1, 1, 1), generator, images)
    return (images * gain + 0.02 * _randn(images.shape, generator, images)).clamp(0, 1)


coarse_noise = smooth_noise  # smooth noise [n,1,size,size] on a res x res grid (models/components.py)


def pool_map(amap: torch.Tensor, top_fraction: float = 1.0) -> torch.Tensor:
    """Image score from a map ``[B,1,S,S]``: the mean of its ``top_fraction`` highest pixels (1.0 = the mean)."""
    flat = amap.flatten(1)
    if top_fraction >= 1.0:
        return flat.mean(1)
    k = max(1, int(round(top_fraction * flat.shape[1])))
    return flat.topk(k, dim=1).values.mean(1)


LOGVAR_RANGE = (-9.0, 2.0)  # predicted log-variance is squashed into this range (std ~0.011 .. 2.7)


def gaussian_head_output(raw: torch.Tensor, uncertainty: bool) -> torch.Tensor:
    """Dense head output -> ``[N, 1 or 2, S, S]``: mean in (0, 1) and, with uncertainty, a bounded log-variance."""
    mean = torch.sigmoid(raw[:, :1])
    if not uncertainty:
        return mean
    logvar = bounded_logvar(raw[:, 1:2], *LOGVAR_RANGE)
    return torch.cat([mean, logvar], 1)


def pixel_nll(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-pixel loss: squared error, or the Gaussian NLL ``0.5 (e^2 exp(-s) + s)`` with a log-variance ``s``."""
    err2 = (output[:, :1] - target) ** 2
    if output.shape[1] == 1:
        return err2
    s = output[:, 1:2]
    return 0.5 * (err2 * torch.exp(-s) + s)


def pixel_failure(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-pixel failure: squared error, divided by the predicted variance when there is one."""
    err2 = (output[:, :1] - target) ** 2
    return err2 if output.shape[1] == 1 else err2 * torch.exp(-output[:, 1:2])


class ProxyTask(nn.Module):
    """Base class; see the module docstring for the interface."""

    name: ClassVar[str] = "base"
    kind: ClassVar[str] = ""  # "self-supervised" | "pseudo-anomaly" | "pseudo-label"
    aspect: ClassVar[str] = ""  # what it probes: appearance, geometry, local structure
    has_map: ClassVar[bool] = False
    loss_weight: float = 1.0  # brings the task losses to comparable scales (see notebook 21)
    num_views: int = 1

    def __init__(self, image_size: int, channels: Sequence[int]):
        super().__init__()
        self.image_size = int(image_size)
        self.channels = tuple(channels)
        self.top_fraction = 1.0  # how a failure map is pooled into the image score (set by the learner)

    def _check(self, images: torch.Tensor) -> None:
        check_images(self.name, images, self.image_size)

    def corrupt(self, images: torch.Tensor, generator: torch.Generator,
                organs: torch.Tensor | None = None) -> tuple[torch.Tensor, Targets]:
        """``organs`` [B] (the organ of each image: the data set's task id) is used only by the proxy tasks that
        pair images."""
        raise NotImplementedError

    def views(self, images: torch.Tensor) -> tuple[torch.Tensor, Targets]:
        raise NotImplementedError

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.head(feats)

    def loss(self, output: torch.Tensor, targets: Targets) -> torch.Tensor:
        raise NotImplementedError

    def failure(self, output: torch.Tensor, targets: Targets) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def _view_generator(self, device: torch.device) -> torch.Generator:
        return torch.Generator().manual_seed(VIEW_SEED + sum(map(ord, self.name)))


class Inpainting(ProxyTask):
    """Masked-region inpainting (SSMTL's middle-box prediction, SSMTL++'s masked inpainting).

    The image is cut into ``patch x patch`` squares (default ``S/8``); each is hidden with probability ``ratio``
    and filled with -1, a value that never occurs in images in [0, 1], so the network knows what is missing even
    on a black background. Target: the original pixels; loss: mean squared error over the hidden pixels.
    Inference: four complementary chequerboard masks (patch row parity x column parity), so every pixel is hidden
    exactly once and always predicted from its eight visible neighbouring patches. Failure map: squared error.

    With ``uncertainty=True`` the head also predicts a per-pixel log-variance ``s`` and the loss is the Gaussian
    negative log-likelihood ``0.5 (e^2 exp(-s) + s)``; the failure map is then ``e^2 exp(-s)``, the squared error
    in units of the error the model *expects* there, which discounts normal but unpredictable pixels (edges,
    speckle) -- the same idea as All-in-One's hallucination term.
    """

    name, kind, aspect, has_map = "inpaint", "self-supervised", "appearance from context", True
    num_views = 4
    FILL = -1.0

    def __init__(self, image_size: int, channels: Sequence[int], patch: int | None = None, ratio: float = 0.3,
                 uncertainty: bool = False):
        super().__init__(image_size, channels)
        self.uncertainty = bool(uncertainty)
        self.loss_weight = 1.0 if self.uncertainty else 10.0  # the NLL's gradient is already scaled by exp(-s)
        self.patch = int(patch or max(2, image_size // 8))
        if image_size % self.patch:
            raise ValueError(f"inpaint: patch {self.patch} must divide image_size {image_size}")
        if not 0 < ratio < 1:
            raise ValueError(f"inpaint: ratio must be in (0, 1); got {ratio}")
        self.ratio = ratio
        self.head = DenseHead(self.channels, 2 if self.uncertainty else 1)

    def _upsample(self, grid_mask: torch.Tensor) -> torch.Tensor:
        return grid_mask.repeat_interleave(self.patch, -2).repeat_interleave(self.patch, -1)

    def corrupt(self, images, generator, organs=None):
        self._check(images)
        g = self.image_size // self.patch
        mask = self._upsample((_rand((len(images), 1, g, g), generator, images) < self.ratio).to(images.dtype))
        return images * (1 - mask) + self.FILL * mask, {"image": images, "mask": mask}

    def view_masks(self, like: torch.Tensor) -> torch.Tensor:
        """The 4 complementary chequerboard masks ``[4,1,S,S]`` (sum = 1 everywhere)."""
        g = self.image_size // self.patch
        i = torch.arange(g, device=like.device)
        masks = [((i[:, None] % 2 == a) & (i[None, :] % 2 == b)) for a in (0, 1) for b in (0, 1)]
        return self._upsample(torch.stack(masks)[:, None].to(like.dtype))

    def views(self, images):
        self._check(images)
        masks = self.view_masks(images)[:, None]  # [V,1,1,S,S]
        x = images[None]
        inputs = (x * (1 - masks) + self.FILL * masks).flatten(0, 1)
        return inputs, {"image": x.expand(len(masks), *images.shape).flatten(0, 1),
                        "mask": masks.expand(-1, len(images), -1, -1, -1).flatten(0, 1)}

    def forward(self, feats):
        return gaussian_head_output(self.head(feats), self.uncertainty)

    def loss(self, output, targets):
        m = targets["mask"]
        return (pixel_nll(output, targets["image"]) * m).sum() / m.sum().clamp_min(1.0)

    def failure(self, output, targets):
        v = self.num_views
        err = (pixel_failure(output, targets["image"]) * targets["mask"]).unflatten(0, (v, -1)).sum(0)  # once each
        return pool_map(err, self.top_fraction), err


class Denoising(ProxyTask):
    """Denoising of coarse (low-frequency) noise, as in the denoising autoencoders of Kascenas et al. (MIDL 2022).

    Noise: a standard normal ``res x res`` field (``res = S/8``), bilinearly upsampled and scaled by
    ``sigma ~ U(sigma_min, sigma_max)`` per image, added to the image. Coarse noise looks like blotchy intensity
    changes, i.e. like lesions, so the network learns to remove lesion-like deviations from normal anatomy.
    Target: the clean image; loss: mean squared error. Inference: two fixed noise fields of the middle strength;
    failure map: squared difference between the denoised output and the input image.
    """

    name, kind, aspect, has_map = "denoise", "self-supervised", "appearance, texture and intensity", True
    num_views = 2

    def __init__(self, image_size: int, channels: Sequence[int], sigma: tuple[float, float] = (0.05, 0.3),
                 res: int | None = None, uncertainty: bool = False):
        super().__init__(image_size, channels)
        self.uncertainty = bool(uncertainty)
        self.loss_weight = 1.0 if self.uncertainty else 10.0  # the NLL's gradient is already scaled by exp(-s)
        if not 0 <= sigma[0] <= sigma[1]:
            raise ValueError(f"denoise: sigma must be (low, high) with 0 <= low <= high; got {sigma}")
        self.sigma = (float(sigma[0]), float(sigma[1]))
        self.res = int(res or max(2, image_size // 8))
        self.head = DenseHead(self.channels, 2 if self.uncertainty else 1)

    def corrupt(self, images, generator, organs=None):
        self._check(images)
        b = len(images)
        lo, hi = self.sigma
        sigma = lo + (hi - lo) * _rand((b, 1, 1, 1), generator, images)
        noise = sigma * coarse_noise(b, self.image_size, self.res, generator, images)
        return images + noise, {"image": images}

    def view_noise(self, like: torch.Tensor) -> torch.Tensor:
        """The fixed inference noise fields ``[V,1,S,S]`` (middle strength)."""
        gen = self._view_generator(like.device)
        noise = coarse_noise(self.num_views, self.image_size, self.res, gen, torch.empty(0))
        return (0.5 * sum(self.sigma) * noise).to(like.device, like.dtype)

    def views(self, images):
        self._check(images)
        x = images[None]
        noise = self.view_noise(images)[:, None]
        return (x + noise).flatten(0, 1), {"image": x.expand(self.num_views, *images.shape).flatten(0, 1)}

    def forward(self, feats):
        return gaussian_head_output(self.head(feats), self.uncertainty)

    def loss(self, output, targets):
        return pixel_nll(output, targets["image"]).mean()

    def failure(self, output, targets):
        err = pixel_failure(output, targets["image"]).unflatten(0, (self.num_views, -1)).mean(0)
        return pool_map(err, self.top_fraction), err


class Reconstruction(ProxyTask):
    """Global reconstruction through a 16-d code: the autoencoder's task, as one proxy task of the learner.

    The head squeezes the shared trunk's bottleneck into a ``latent``-d vector and decodes the whole image from it
    with no skip connection (``BottleneckHead``). The other pixel tasks see local context at full resolution and
    can partly *reproduce* a lesion (an inpainted patch continues the lesion visible in its neighbours; a denoiser
    passes it through its skip connections); a 16-d code cannot, so the lesion shows up in the error -- the
    reason the plain AE is a solid baseline on the embedded data. Training inputs get a mild random brightness
    change and noise (the target is the clean image), so the corruption differs between seeds; inference: the
    image itself. Loss: mean squared error (x10); failure map: squared error.
    """

    name, kind, aspect, has_map = "recon", "self-supervised", "global appearance (whole image)", True
    loss_weight = 10.0

    def __init__(self, image_size: int, channels: Sequence[int], latent: int = 16):
        super().__init__(image_size, channels)
        self.head = BottleneckHead(self.channels, image_size, at_least(self.name, "latent", latent, 1))

    def corrupt(self, images, generator, organs=None):
        self._check(images)
        return gain_and_noise(images, generator), {"image": images}

    def views(self, images):
        self._check(images)
        return images, {"image": images}

    def forward(self, feats):
        return torch.sigmoid(self.head(feats))

    def loss(self, output, targets):
        return F.mse_loss(output, targets["image"])

    def failure(self, output, targets):
        err = (output - targets["image"]) ** 2
        return pool_map(err, self.top_fraction), err


class Orientation(ProxyTask):
    """Rotation prediction (RotNet, Gidaris et al., ICLR 2018): which of 0/90/180/270 degrees was applied.

    Medical images have a canonical orientation (head up, lungs beside the heart, skin at the top of an
    ultrasound), so a normal image's rotation is easy to tell; flips are left out because many organs are
    nearly left-right symmetric and a flip would often be unanswerable. Inference: all four rotations;
    failure score: mean cross-entropy of the true rotation. No map.
    """

    name, kind, aspect, has_map = "rotate", "self-supervised", "global geometry", False
    num_views = 4

    def __init__(self, image_size: int, channels: Sequence[int]):
        super().__init__(image_size, channels)
        self.head = GlobalHead(self.channels, 4)

    @staticmethod
    def rotations(images: torch.Tensor) -> torch.Tensor:
        """All four rotations ``[4,B,1,S,S]`` (k quarter turns counter-clockwise)."""
        return torch.stack([torch.rot90(images, k, dims=(-2, -1)) for k in range(4)])

    def corrupt(self, images, generator, organs=None):
        self._check(images)
        k = (_rand((len(images),), generator, images) * 4).long().clamp_max(3)
        return self.rotations(images)[k, torch.arange(len(images), device=images.device)], {"label": k}

    def views(self, images):
        self._check(images)
        label = torch.arange(4, device=images.device).repeat_interleave(len(images))
        return self.rotations(images).flatten(0, 1), {"label": label}

    def loss(self, output, targets):
        return F.cross_entropy(output, targets["label"])

    def failure(self, output, targets):
        ce = F.cross_entropy(output, targets["label"], reduction="none")
        return ce.unflatten(0, (self.num_views, -1)).mean(0), None


class Jigsaw(ProxyTask):
    """Jigsaw puzzle (Noroozi & Favaro, ECCV 2016; SSMTL++), dense version: where did each tile come from?

    The image is cut into ``grid x grid`` tiles, which are shuffled by a random permutation per image; for every
    cell of the shuffled image the head predicts the original position of the tile it holds (``grid**2``
    classes), so the answer is per tile and gives a (coarse) failure map. Inference: ``num_views`` fixed
    permutations; the per-tile cross-entropy is written back at the tile's *original* position.
    """

    name, kind, aspect, has_map = "jigsaw", "self-supervised", "local layout", True
    num_views = 4

    def __init__(self, image_size: int, channels: Sequence[int], grid: int = 4):
        super().__init__(image_size, channels)
        if grid < 2 or image_size % grid:
            raise ValueError(f"jigsaw: grid must be >= 2 and divide image_size {image_size}; got {grid}")
        self.grid = grid
        self.head = GridHead(self.channels, grid, grid * grid)

    def tiles(self, images: torch.Tensor) -> torch.Tensor:
        """``[B,1,S,S] -> [B, grid*grid, t, t]`` in row-major tile order."""
        g, t = self.grid, self.image_size // self.grid
        return images.reshape(len(images), g, t, g, t).permute(0, 1, 3, 2, 4).reshape(len(images), g * g, t, t)

    def untile(self, tiles: torch.Tensor) -> torch.Tensor:
        g, t = self.grid, self.image_size // self.grid
        return tiles.reshape(len(tiles), g, g, t, t).permute(0, 1, 3, 2, 4).reshape(len(tiles), 1, g * t, g * t)

    def shuffle(self, images: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
        """Cell ``j`` of the result holds tile ``perm[b, j]`` of image ``b``."""
        tiles = self.tiles(images)
        idx = perm[:, :, None, None].expand(-1, -1, *tiles.shape[-2:])
        return self.untile(tiles.gather(1, idx))

    def corrupt(self, images, generator, organs=None):
        self._check(images)
        perm = _rand((len(images), self.grid ** 2), generator, images).argsort(1)
        return self.shuffle(images, perm), {"label": perm.view(-1, self.grid, self.grid)}

    def view_perms(self, device: torch.device) -> torch.Tensor:
        gen = self._view_generator(device)
        return torch.rand(self.num_views, self.grid ** 2, generator=gen).argsort(1).to(device)

    def views(self, images):
        self._check(images)
        perms = self.view_perms(images.device)  # [V, g*g]
        perm = perms.repeat_interleave(len(images), 0)  # view-major
        x = images.repeat(self.num_views, 1, 1, 1)
        return self.shuffle(x, perm), {"label": perm.view(-1, self.grid, self.grid)}

    def loss(self, output, targets):
        return F.cross_entropy(output, targets["label"])

    def failure(self, output, targets):
        g = self.grid
        ce = F.cross_entropy(output, targets["label"], reduction="none").flatten(1)  # [V*B, g*g] per cell
        orig = torch.zeros_like(ce).scatter(1, targets["label"].flatten(1), ce)  # back to original positions
        cells = orig.unflatten(0, (self.num_views, -1)).mean(0).view(-1, 1, g, g)
        amap = F.interpolate(cells, size=(self.image_size, self.image_size), mode="nearest")
        return pool_map(amap, self.top_fraction), amap


class LesionSynthesis:
    """The lesion task's synthetic lesions (no network): shapes, appearances and targets as described in
    :class:`SyntheticLesion`; used by it and by the U-Net design's ``LesionSegmentation``."""

    def __init__(self, image_size: int, radius: tuple[float, float] = (0.04, 0.18), p_clean: float = 0.2,
                 tau: float = 0.03, foreground: float = 0.08):
        if not 0 < radius[0] <= radius[1] < 0.5:
            raise ValueError(f"lesion: radius must be (low, high) fractions with 0 < low <= high < 0.5; got {radius}")
        if not 0 <= p_clean < 1:
            raise ValueError(f"lesion: p_clean must be in [0, 1); got {p_clean}")
        self.image_size = int(image_size)
        self.radius, self.p_clean, self.tau = (float(radius[0]), float(radius[1])), float(p_clean), float(tau)
        self.foreground = float(foreground)

    def centres(self, images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Lesion centres ``(cx, cy)`` [n,1,1,1] in pixels, drawn from the smoothed foreground of each image."""
        s = self.image_size
        smooth = F.avg_pool2d(images, 5, stride=1, padding=2, count_include_pad=False)
        margin = torch.zeros(s, s, device=images.device, dtype=images.dtype)
        m = max(1, s // 10)  # keep centres away from the border
        margin[m:s - m, m:s - m] = 1
        weight = ((smooth > self.foreground).to(images.dtype) + 0.02) * margin
        idx = torch.multinomial(weight.flatten(1).to(generator.device), 1, generator=generator).to(images.device)
        jitter = _rand((len(images), 2), generator, images) - 0.5
        cx = (idx % s).to(images.dtype) + 0.5 + jitter[:, :1]
        cy = torch.div(idx, s, rounding_mode="floor").to(images.dtype) + 0.5 + jitter[:, 1:]
        return cx.view(-1, 1, 1, 1), cy.view(-1, 1, 1, 1)

    def lesion_masks(self, images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(soft, hard)`` irregular elliptic masks ``[n,1,S,S]`` centred in each image's foreground."""
        s, n, like = self.image_size, len(images), images
        r = lambda: _rand((n, 1, 1, 1), generator, like)  # noqa: E731
        cx, cy = self.centres(images, generator)
        lo, hi = self.radius
        rx, ry = s * (lo + (hi - lo) * r()), s * (lo + (hi - lo) * r())
        theta = math.pi * r()
        coord = torch.arange(s, device=like.device, dtype=like.dtype) + 0.5
        u, v = coord.view(1, 1, 1, s) - cx, coord.view(1, 1, s, 1) - cy
        du, dv = u * theta.cos() + v * theta.sin(), -u * theta.sin() + v * theta.cos()
        radial = torch.sqrt((du / rx) ** 2 + (dv / ry) ** 2)
        border = 1 + 0.3 * coarse_noise(n, s, 4, generator, like).clamp(-2, 2)
        edge = (border - radial) * torch.minimum(rx, ry) / 1.5  # ~1.5 px wide soft edge
        return torch.sigmoid(edge), (edge > 0).to(like.dtype)

    def corrupt(self, images: torch.Tensor, generator: torch.Generator,
                organs: torch.Tensor | None = None) -> tuple[torch.Tensor, Targets]:
        """``(inputs, {"mask", "kind"})`` for a batch ``[B,1,S,S]``; ``organs`` [B] are the images' organs (all one
        organ when ``None``)."""
        check_images("lesion", images, self.image_size)
        b, s = len(images), self.image_size
        soft, hard = self.lesion_masks(images, generator)
        r = lambda *shape: _rand((b, *shape), generator, images)  # noqa: E731
        # 0: intensity change
        sign = torch.where(r(1, 1, 1) < 0.5, -1.0, 1.0).to(images)
        delta = sign * (0.1 + 0.4 * r(1, 1, 1)) * (1 + 0.3 * coarse_noise(b, s, max(2, s // 8), generator, images))
        x_int = images + soft * delta
        # 1: cut-paste from a partner of the same organ, moved and rescaled, hard edge
        organs = torch.zeros(b, dtype=torch.long) if organs is None else organs
        other = images[same_group_partners(organs, generator, device=images.device, dtype=images.dtype)]
        scale = 0.7 + 0.6 * r()
        x_cut = images + hard * (affine_warp(other, scale, r(2) - 0.5) - images)
        # 2: foreign patch interpolation at the same place
        x_fpi = images + (0.3 + 0.7 * r(1, 1, 1)) * soft * (other - images)
        kind = (r() * 3).long().clamp_max(2)
        chosen = torch.stack([x_int, x_cut, x_fpi])[kind, torch.arange(b, device=images.device)]
        clean = (r(1, 1, 1) < self.p_clean).to(images.dtype)
        inputs = (chosen * (1 - clean) + images * clean).clamp(0, 1)
        changed = F.avg_pool2d((inputs - images).abs(), 3, stride=1, padding=1, count_include_pad=False) > self.tau
        mask = hard * changed.to(images.dtype)
        return inputs, {"mask": mask, "kind": torch.where(clean.view(-1) > 0, -1, kind)}


class SyntheticLesion(ProxyTask):
    """Pseudo-anomaly segmentation: paint a synthetic lesion, predict its mask.

    Lesion shape: an ellipse (radii ``S*U(r_min, r_max)``, random angle) whose border is made irregular by coarse
    noise. Its centre is drawn inside the anatomy: from the pixels of the (smoothed) image brighter than
    ``foreground`` (every pixel has a small floor weight, so a black image still gets a lesion), because real
    lesions sit in tissue, not in the air around it. Appearance, one of three per image (all computed for the
    whole batch and selected per image, so there is no loop over samples):

    0. intensity change: ``x + m * delta * (1 + 0.3 n)``, ``|delta| ~ U(0.1, 0.5)``, either sign, textured by
       coarse noise ``n``, soft edge -- the pseudo-abnormal module of Georgescu (arXiv 2307.07534);
    1. cut-paste: a region of a *partner* image, moved by up to half the image and rescaled by ``U(0.7, 1.3)``,
       pasted with a hard edge (CutPaste, Li et al. CVPR 2021; NSA, Schlueter et al. ECCV 2022);
    2. foreign patch interpolation: ``x + alpha * m * (x_partner - x)``, ``alpha ~ U(0.3, 1)``, soft edge
       (FPI, Tan et al. 2020).

    The partner is a random other image of the batch *of the same organ* (``organs``; itself if it is alone;
    chosen by ``medad_edu.models.synthesis.same_group_partners``, as NSA's): tissue from another modality would be
    recognisable by its texture alone, a shortcut that teaches nothing about anatomy.
    A share ``p_clean`` of the images is left unchanged (empty mask). The target is the lesion mask restricted to
    pixels that really changed (local mean absolute change > ``tau``), so an invisible paste is not labelled.
    Loss: binary cross-entropy (calibrated probabilities, so the mean of the map is a meaningful score).
    Inference: the image itself (one view); failure map: the predicted lesion probability; image score: its mean
    (on the validation split of the ``quick`` runs the mean beat the top 10 / 2 / 0.5 % pixels).

    On the embedded data this is the task that carries the detection, but it is weaker than the NSA baseline
    (the same idea): the head *under-fits* -- NSA's network finds this task's own synthetic lesions better than
    the task does, with no gap between training and validation images -- because it is a light head on a trunk
    shared with five other objectives for 12 epochs, whereas NSA trains a whole U-Net for 20. Raising its loss
    weight (``lesion_weight``) did not help; see notebooks/23_mtl_ablations.ipynb.
    """

    name, kind, aspect, has_map = "lesion", "pseudo-anomaly", "local structure", True

    def __init__(self, image_size: int, channels: Sequence[int], radius: tuple[float, float] = (0.04, 0.18),
                 p_clean: float = 0.2, tau: float = 0.03, foreground: float = 0.08):
        super().__init__(image_size, channels)
        self.synthesis = LesionSynthesis(image_size, radius, p_clean, tau, foreground)
        self.head = DenseHead(self.channels, 1)

    def corrupt(self, images, generator, organs=None):
        return self.synthesis.corrupt(images, generator, organs)

    def views(self, images):
        self._check(images)
        return images, {"mask": torch.zeros_like(images)}

    def loss(self, output, targets):
        return F.binary_cross_entropy_with_logits(output, targets["mask"])

    def failure(self, output, targets):
        amap = torch.sigmoid(output)
        return pool_map(amap, self.top_fraction), amap


class PseudoLabel(ProxyTask):
    """Pseudo-label prediction: the k-means cluster of each image's coarse appearance.

    The labels come from the data, not from a person: ``fit(images)`` runs k-means (k-means++ seeding, Lloyd
    iterations, seeded) on ``8 x 8`` average-pooled thumbnails of the normal training images; an image's label
    is its nearest centroid. With several organs the clusters mostly follow organ and pose, with one organ they
    split it into appearance types, so the task works for one universal model and per task. Training inputs
    get a mild random brightness change and noise (so the head must generalise, not memorise). Failure score:
    cross-entropy of the nearest-centroid label. No map. Centroids are buffers (saved in checkpoints).
    """

    name, kind, aspect, has_map = "cluster", "pseudo-label", "global appearance", False
    THUMB = 8

    def __init__(self, image_size: int, channels: Sequence[int], clusters: int = 8):
        super().__init__(image_size, channels)
        self.clusters = at_least(self.name, "clusters", clusters, 2)
        self.head = GlobalHead(self.channels, clusters)
        self.register_buffer("centroids", torch.zeros(clusters, self.THUMB * self.THUMB))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(images, self.THUMB).flatten(1)

    @torch.no_grad()
    def fit(self, images: torch.Tensor, seed: int = 0, iters: int = 30) -> torch.Tensor:
        """k-means on the thumbnails of ``images``; stores and returns the centroids ``[K, 64]``."""
        feats = self.features(images.float()).cpu()
        n, k = len(feats), self.clusters
        if n < k:
            raise ValueError(f"cluster: need at least {k} images to fit {k} clusters; got {n}")
        gen = torch.Generator().manual_seed(seed)
        cent = feats[torch.randint(n, (1,), generator=gen)]
        for _ in range(k - 1):  # k-means++ seeding: next centre drawn proportionally to squared distance
            d2 = torch.cdist(feats, cent).min(1).values ** 2
            nxt = torch.multinomial(d2 + 1e-12, 1, generator=gen) if d2.sum() > 0 else torch.randint(n, (1,), generator=gen)
            cent = torch.cat([cent, feats[nxt]])
        for _ in range(iters):
            assign = torch.cdist(feats, cent).argmin(1)
            onehot = F.one_hot(assign, k).float()
            counts = onehot.sum(0)
            new = (onehot.T @ feats) / counts.clamp_min(1)[:, None]
            cent = torch.where(counts[:, None] > 0, new, cent)  # an empty cluster keeps its centre
        self.centroids.copy_(cent.to(self.centroids))
        self.fitted.fill_(True)
        return self.centroids

    def labels(self, images: torch.Tensor) -> torch.Tensor:
        if not bool(self.fitted):
            raise RuntimeError("cluster: call fit(normal_training_images) before using the pseudo-label task "
                               "(the learner does it in on_train_start)")
        return torch.cdist(self.features(images), self.centroids.to(images.dtype)).argmin(1)

    def corrupt(self, images, generator, organs=None):
        self._check(images)
        return gain_and_noise(images, generator), {"label": self.labels(images)}

    def views(self, images):
        self._check(images)
        return images, {"label": self.labels(images)}

    def loss(self, output, targets):
        return F.cross_entropy(output, targets["label"])

    def failure(self, output, targets):
        return F.cross_entropy(output, targets["label"], reduction="none"), None


PROXY_TASKS: dict[str, type[ProxyTask]] = {cls.name: cls for cls in
                                           (Inpainting, Denoising, Orientation, Jigsaw, SyntheticLesion, PseudoLabel,
                                            Reconstruction)}
DEFAULT_TASKS: tuple[str, ...] = ("inpaint", "denoise", "rotate", "jigsaw", "lesion", "cluster")


def make_task(name: str, image_size: int, channels: Sequence[int], **kwargs) -> ProxyTask:
    if name not in PROXY_TASKS:
        raise ValueError(f"unknown proxy task {name!r}; choose from {list(PROXY_TASKS)}")
    return PROXY_TASKS[name](image_size, channels, **kwargs)


__all__ = ["DEFAULT_TASKS", "Denoising", "Inpainting", "Jigsaw", "LesionSynthesis", "Orientation", "PROXY_TASKS",
           "ProxyTask", "PseudoLabel", "Reconstruction", "SyntheticLesion", "VIEW_SEED", "at_least",
           "check_images", "coarse_noise", "gain_and_noise", "make_task", "pool_map"]
