"""MTL-MAD's default network: a full-resolution U-Net whose bottleneck is a Mixture-of-Experts layer steered by
the proxy task, with one 1x1 output head per proxy task.

``x -> U-Net encoder -> MoE layer(s) (gate: proxy task + GAP of the bottleneck) -> U-Net decoder -> task head``.

Why this and not the light S/2 trunk of ``torch_model.MTLNetwork`` (kept as ``design="classic"``): the tasks
that find lesions answer *per pixel*, and a head that stops at half resolution on a trunk shared with six
objectives under-fits them (notebooks/23_mtl_ablations.ipynb). Measured on the validation splits of the
embedded phantoms and the real-anatomy set, the three proxy tasks below detect, the global ones (orientation,
jigsaw, pseudo-label) do not, so the default learner trains these three (others stay available with
``design="classic"``):

- ``denoise`` (self-supervised): coarse noise on the body (:func:`medad_edu.models.baselines.dae.coarse_noise`,
  Kascenas et al. MIDL 2022) is removed; at inference the *clean* image goes in and the failure map is what the
  network changes, ``|x - f(x)|`` (a lesion looks like noise to be removed);
- ``lesion`` (pseudo-anomaly segmentation): synthetic anomalies are segmented at full resolution; failure map =
  the predicted lesion probability. Which ones (``lesion_synthesis``): ``"patches"`` (the quick and paper
  default), NSA's same-organ patches pasted at another place and scale, with NSA's soft labels (how much each
  pixel changed); ``"lesions"``, the synthetic lesions of :class:`medad_edu.models.mtl.proxy_tasks.SyntheticLesion`
  (intensity changes, same-organ cut-paste, foreign patch interpolation in irregular blobs, hard masks), the
  first choice, kept as an option;
- ``reconstruct`` (self-supervised): AE-U's uncertainty-weighted reconstruction (Mao et al. 2020) from the
  bottleneck alone (:class:`UncertainReconstruction`); the two tasks above see the image through the skips and
  copy a global change of shape, this one cannot. With ``reconstruct_encoder="own"`` (the quick and paper
  configurations) its bottleneck comes from an encoder of its own (then the shared MoE layer), so that the skip
  tasks do not shape it (``book/results/mtl_reconstruct_encoder/``: higher on the validation split of both embedded
  sets; notebooks/24_mtl_unet.ipynb).

Each task's image score pools its map (:func:`medad_edu.models.scoring.pool_map`). The interface is that of
``MTLNetwork`` (``losses``, ``failures``, ``tasks``, ``map_task_names``, ``expert_usage``), so the learner's
normalisation and fusion serve both designs. Explained in notebooks/21_mtl_moe.ipynb.

Example::

    net = UNetMTLNetwork(64, ["denoise", "lesion", "reconstruct"], width=8)
    losses = net.losses(images, torch.Generator().manual_seed(0), organs)
    scores, maps, gates = net.failures(images)

Defined in: notebooks/21_mtl_moe.ipynb, notebooks/23_mtl_ablations.ipynb, notebooks/24_mtl_unet.ipynb
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..baselines.dae import coarse_noise
from ..baselines.nsa import synthesize_anomalies
from ..components import ConvDecoder, bounded_logvar, conv_block, uncertainty_map, uncertainty_nll
from ..scoring import DEFAULT_SIGMA, DEFAULT_TOP, open_map, pool_map
from ..unet import UNet
from .heads import DenseHead
from .moe import MoELayer
from .proxy_tasks import LesionSynthesis

UNET_TASKS: tuple[str, ...] = ("denoise", "lesion", "reconstruct")
# What the ``lesion`` proxy task learns to segment: ``"lesions"``, this project's synthetic lesions
# (:class:`LesionSynthesis`: intensity changes, cut-paste and foreign patches in irregular blobs, hard masks);
# ``"patches"``, NSA's same-organ patches pasted at another place and scale with NSA's soft labels (the change a
# patch makes, Schlueter et al. 2022; :func:`medad_edu.models.baselines.nsa.synthesize_anomalies`).
LESION_SYNTHESES: tuple[str, ...] = ("lesions", "patches")
# Where the ``reconstruct`` task's bottleneck comes from: ``"shared"``, the U-Net encoder of the other tasks;
# ``"own"``, its own strided-conv encoder (both then pass the shared MoE layer).
RECONSTRUCT_ENCODERS: tuple[str, ...] = ("shared", "own")


class CoarseNoiseRemoval(nn.Module):
    """Proxy task ``denoise`` of the U-Net design (see the module docstring)."""

    name, kind, aspect, has_map = "denoise", "self-supervised", "appearance (restoration)", True
    num_views = 1
    reads = "decoder"  # full-resolution U-Net features

    def __init__(self, width: int, noise_res: int = 8, noise_std: float = 0.2):
        super().__init__()
        self.head = nn.Conv2d(width, 1, 1)
        self.noise_res, self.noise_std = int(noise_res), float(noise_std)
        self.loss_weight = 10.0  # the MSE of a restoration (~0.002) is small beside the lesion BCE (~0.05)
        self.score_sigma, self.score_top = DEFAULT_SIGMA, DEFAULT_TOP

    def corrupt(self, images, generator, organs=None):
        return images + coarse_noise(images, generator, self.noise_res, self.noise_std), {"image": images}

    def views(self, images):
        return images, {"image": images}

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(feats)

    def loss(self, output, targets):
        return F.mse_loss(output, targets["image"])

    def failure(self, output, targets):
        amap = (targets["image"] - output).abs()
        return pool_map(amap, self.score_sigma, self.score_top), amap


class LesionSegmentation(nn.Module):
    """Proxy task ``lesion`` of the U-Net design: synthetic anomalies (``synthesis``: ``"patches"``, NSA's pasted
    patches with soft labels, or ``"lesions"``, :class:`LesionSynthesis`, the classic ``SyntheticLesion``'s) and a
    full-resolution head that segments them."""

    name, kind, aspect, has_map = "lesion", "pseudo-anomaly", "local structure", True
    num_views = 1
    reads = "decoder"

    def __init__(self, image_size: int, width: int, synthesis: str = "lesions"):
        super().__init__()
        if synthesis not in LESION_SYNTHESES:
            raise ValueError(f"lesion synthesis must be one of {LESION_SYNTHESES}; got {synthesis!r}")
        self.synthesis_kind = synthesis
        self.synthesis = LesionSynthesis(image_size)
        # This class used to build a whole SyntheticLesion and drop its head, whose initial weights came from the
        # global RNG at this point. Drawing them (and dropping them) still keeps the initial weights of everything
        # built after it, so a run from a given seed gives the same numbers as before (kept results, chapter 24).
        DenseHead((4, 4, 4), 1)
        self.head = nn.Conv2d(width, 1, 1)
        self.loss_weight = 1.0
        self.score_sigma, self.score_top = DEFAULT_SIGMA, DEFAULT_TOP

    def corrupt(self, images, generator, organs=None):
        if self.synthesis_kind == "patches":
            # paste, the blend that was measured; NSA's Poisson blending adds its iterations to every step
            if organs is None:  # one organ: partners from the whole batch
                organs = torch.zeros(len(images), dtype=torch.long, device=images.device)
            corrupted, soft_label, _ = synthesize_anomalies(images, organs, generator, blend="paste")
            return corrupted, {"mask": soft_label}
        return self.synthesis.corrupt(images, generator, organs)

    def views(self, images):
        return images, {"mask": torch.zeros_like(images)}

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(feats)

    def loss(self, output, targets):
        return F.binary_cross_entropy_with_logits(output, targets["mask"])

    def failure(self, output, targets):
        amap = torch.sigmoid(output)
        return pool_map(amap, self.score_sigma, self.score_top), amap


class UncertainReconstruction(nn.Module):
    """Proxy task ``reconstruct``: AE-U's uncertainty-weighted reconstruction (Mao et al. 2020) from the bottleneck.

    The skips of the U-Net would let a reconstruction copy its input, lesion included, so this task reads only
    the (MoE-transformed) bottleneck, squeezes it to a ``latent``-dimensional code and decodes a mean and a
    log-variance per pixel with its own decoder; loss and map are AE-U's (inputs in [-1, 1],
    ``mean(exp(-s)(x - mu)^2 + s)``, map ``exp(-s)(x - mu)^2``). A code of 16 numbers cannot carry a lesion, nor
    a global change of shape (a too-large optic cup), which the two full-resolution tasks copy through the skips.

    Its map can be read as All-in-One's is (chapter 13): ``std_floor`` reads the variance as at least
    ``std_floor^2`` (a standard deviation of [0, 1] intensities, so ``(2 std_floor)^2`` on the task's [-1, 1] scale)
    and ``opening`` opens the map with a square of that many pixels (:func:`medad_edu.models.scoring.open_map`).
    Both are 0 here, which is AE-U's map; the learner sets them from its options.
    """

    name, kind, aspect, has_map = "reconstruct", "self-supervised", "global appearance (reconstruction)", True
    num_views = 1
    reads = "bottleneck"  # the MoE-transformed bottleneck, no skips

    def __init__(self, image_size: int, channels: int, depth: int, latent: int = 16, own_encoder: bool = False):
        super().__init__()
        grid = image_size // 2 ** depth
        # own_encoder: the task's bottleneck comes from its own strided-conv encoder (AE-U's blocks, channels
        # doubling to the U-Net's bottleneck width), not from the U-Net encoder shared with the skip tasks; it
        # still passes the shared MoE layer, gated by the task's own rows.
        self.encoder = None
        if own_encoder:
            chans = [1] + [channels // 2 ** (depth - 1 - i) for i in range(depth)]
            self.encoder = nn.Sequential(*[conv_block(a, b) for a, b in zip(chans[:-1], chans[1:])])
        self.to_latent = nn.Sequential(nn.Flatten(), nn.Linear(channels * grid * grid, latent))
        self.decoder = ConvDecoder(image_size, out_channels=2, latent=latent)
        self.loss_weight = 1.0
        self.score_sigma, self.score_top = DEFAULT_SIGMA, DEFAULT_TOP
        self.std_floor, self.opening = 0.0, 0

    def corrupt(self, images, generator, organs=None):
        return images, {"image": images}

    def views(self, images):
        return images, {"image": images}

    def forward(self, bottleneck: torch.Tensor) -> torch.Tensor:
        out = self.decoder(self.to_latent(bottleneck))
        return torch.cat([torch.tanh(out[:, :1]), bounded_logvar(out[:, 1:])], 1)

    def loss(self, output, targets):
        return uncertainty_nll(targets["image"] * 2 - 1, output[:, :1], output[:, 1:])

    def failure(self, output, targets):
        min_logvar = math.log(4 * self.std_floor ** 2) if self.std_floor > 0 else None  # [-1, 1]: variance x 4
        amap = open_map(uncertainty_map(targets["image"] * 2 - 1, output[:, :1], output[:, 1:], min_logvar),
                        self.opening)
        return pool_map(amap, self.score_sigma, self.score_top), amap


class _MoEStack(nn.Module):
    def __init__(self, channels: int, num_experts: int, num_gate_rows: int, top_k: int, layers: int):
        super().__init__()
        self.layers = nn.ModuleList(MoELayer(channels, num_experts, num_gate_rows, top_k) for _ in range(layers))

    def forward(self, h: torch.Tensor, gate_rows: torch.Tensor):
        balance, gates = h.new_zeros(()), []
        for layer in self.layers:
            h, info = layer(h, gate_rows)
            balance = balance + info["balance"]
            gates.append(info["weights"])
        return h, {"balance": balance, "gates": torch.stack(gates, 1)}


class UNetMTLNetwork(nn.Module):
    """The U-Net design's network. ``tasks`` (a ``ModuleDict``) and ``task_names`` hold the *proxy* tasks (names
    kept: checkpoints and the book use them); ``organs`` [B] are the images' organs (the data set's
    ``task_ids``), ``num_organs`` how many there are."""

    def __init__(self, image_size: int, proxy_tasks: Sequence[str] = UNET_TASKS, width: int = 8, depth: int = 3,
                 moe: bool = True, num_experts: int = 4, top_k: int = 2, moe_layers: int = 1, num_organs: int = 1,
                 lesion_synthesis: str = "lesions", reconstruct_encoder: str = "shared"):
        super().__init__()
        names = list(proxy_tasks)
        if reconstruct_encoder not in RECONSTRUCT_ENCODERS:
            raise ValueError(f"reconstruct_encoder must be one of {RECONSTRUCT_ENCODERS}; got {reconstruct_encoder!r}")
        unknown = [n for n in names if n not in UNET_TASKS]
        if not names or unknown:
            raise ValueError(f"design 'unet' trains proxy tasks from {list(UNET_TASKS)}; got {names}")
        if len(set(names)) != len(names):
            raise ValueError(f"proxy_tasks has duplicates: {names}")
        if moe_layers < 1:
            raise ValueError(f"moe_layers must be >= 1; got {moe_layers}")
        if image_size % 2 ** depth:
            raise ValueError(f"image_size {image_size} must be a multiple of 2**depth = {2 ** depth}")
        if num_organs < 1:
            raise ValueError(f"num_organs must be >= 1; got {num_organs}")
        experts, k = (num_experts, top_k) if moe else (1, 1)
        self.task_names = names
        self.num_organs = int(num_organs)
        # The gate is steered by (proxy task, organ): one row of the gate's task table per pair, so experts can
        # specialise in a proxy task on one organ (the organ of an image is known, as All-in-One's prompt is).
        self.unet = UNet(1, 1, width=width, depth=depth,
                         middle=_MoEStack(width * 2 ** depth, experts, len(names) * self.num_organs, k, moe_layers))
        del self.unet.out  # each proxy task has its own output head
        builders = {"denoise": lambda: CoarseNoiseRemoval(width),
                    "lesion": lambda: LesionSegmentation(image_size, width, lesion_synthesis),
                    "reconstruct": lambda: UncertainReconstruction(image_size, width * 2 ** depth, depth,
                                                                  own_encoder=reconstruct_encoder == "own")}
        self.tasks = nn.ModuleDict({n: builders[n]() for n in names})

    @property
    def map_task_names(self) -> list[str]:
        return list(self.task_names)

    @property
    def moe(self) -> nn.ModuleList:
        return self.unet.middle.layers

    def gate_index(self, proxy_index: int | torch.Tensor, organs: torch.Tensor | None, n: int,
                   device) -> torch.Tensor:
        """Row of the gate table for (proxy task, organ) per sample; organ 0 when unknown."""
        organs = torch.zeros(n, dtype=torch.long, device=device) if organs is None else organs.to(device).long()
        return proxy_index * self.num_organs + organs.clamp(0, self.num_organs - 1)

    def trunk(self, x: torch.Tensor, gate_index: torch.Tensor, decode: bool | torch.Tensor = True,
              own: torch.Tensor | None = None):
        """``(decoder features, MoE-transformed bottleneck, MoE info)``. ``decode``: ``True`` decodes every row
        (every row of the U-Net encoder when ``own`` is given), ``False`` none (features ``None``), a boolean
        ``[N]`` mask only those rows (in order). ``own``: a boolean ``[N]`` mask of the rows whose bottleneck comes
        from the ``reconstruct`` task's own encoder (never decoded)."""
        if own is None or not bool(own.any()):
            shared = None  # every row through the U-Net encoder
            skips = self.unet.encode(x)
            h, info = self.unet.middle(skips.pop(), gate_index)
            if decode is True:
                return self.unet.decode(h, skips), h, info
        else:  # rows with their own encoder: their bottleneck joins the others' before the (shared) MoE layer
            shared = ~own
            own_h = self.tasks["reconstruct"].encoder(x[own])
            skips = self.unet.encode(x[shared]) if bool(shared.any()) else []
            bottleneck = own_h.new_empty((len(x), *own_h.shape[1:]))
            bottleneck[own] = own_h
            if skips:
                bottleneck[shared] = skips.pop()
            h, info = self.unet.middle(bottleneck, gate_index)
            if decode is True:
                decode = shared
            elif decode is not False and bool((decode & own).any()):
                raise ValueError("rows with the reconstruct task's own encoder have no skips to decode")
        if decode is False or not bool(decode.any()):
            return None, h, info
        keep = decode if shared is None else decode[shared]  # the decoded rows among those the U-Net encoded
        return self.unet.decode(h[decode], [s[keep] for s in skips]), h, info

    def _own_encoder(self, name: str) -> bool:
        return getattr(self.tasks[name], "encoder", None) is not None

    def _proxy_output(self, name: str, feats, bottleneck):
        proxy = self.tasks[name]
        return proxy(bottleneck if proxy.reads == "bottleneck" else feats)

    def forward_task(self, name: str, inputs: torch.Tensor, organs: torch.Tensor | None = None) -> torch.Tensor:
        idx = self.gate_index(self.task_names.index(name), organs, len(inputs), inputs.device)
        own = torch.full((len(inputs),), self._own_encoder(name), device=inputs.device)
        feats, h, _ = self.trunk(inputs, idx, self.tasks[name].reads == "decoder", own)
        return self._proxy_output(name, feats, h)

    def losses(self, images: torch.Tensor, generator: torch.Generator,
               organs: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Every proxy task's loss on its own corruption of ``images`` (one stacked pass), plus ``balance``;
        ``organs`` [B]: each image's organ (the gate's row, and the lesion task pastes within an organ)."""
        corrupted = [self.tasks[n].corrupt(images, generator, organs) for n in self.task_names]
        x = torch.cat([inp for inp, _ in corrupted])
        index = torch.cat([self.gate_index(t, organs, len(images), images.device) for t in range(len(self.task_names))])
        n = len(images)
        # only the proxy tasks that read the decoder pay for it
        decode = torch.cat([torch.full((n,), self.tasks[name].reads == "decoder", device=images.device)
                            for name in self.task_names])
        own = torch.cat([torch.full((n,), self._own_encoder(name), device=images.device) for name in self.task_names])
        feats, h, info = self.trunk(x, index, decode, own)
        out: dict[str, torch.Tensor] = {}
        row = 0
        for t, (name, (_, targets)) in enumerate(zip(self.task_names, corrupted)):
            sl = slice(t * n, (t + 1) * n)
            if self.tasks[name].reads == "decoder":
                f, row = feats[row:row + n], row + n
            else:
                f = None
            out[name] = self.tasks[name].loss(self._proxy_output(name, f, h[sl]), targets)
        out["balance"] = info["balance"]
        return out

    @torch.no_grad()
    def failures(self, images: torch.Tensor, organs: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Raw failure scores ``[B, T]`` (T proxy tasks), failure maps ``[B, T, S, S]``, mean gate weights
        ``[B, T, E]``; ``organs`` [B] pick the gate's rows."""
        scores, maps, gates = [], [], []
        for t, name in enumerate(self.task_names):
            proxy = self.tasks[name]
            inputs, targets = proxy.views(images)
            own = torch.full((len(inputs),), self._own_encoder(name), device=images.device)
            feats, h, info = self.trunk(inputs, self.gate_index(t, organs, len(inputs), images.device),
                                        proxy.reads == "decoder", own)
            score, amap = proxy.failure(self._proxy_output(name, feats, h), targets)
            scores.append(score)
            maps.append(amap)
            gates.append(info["gates"].mean(1))
        return torch.stack(scores, 1), torch.cat(maps, 1), torch.stack(gates, 1)

    def expert_usage(self) -> torch.Tensor:
        """Training usage ``[T, E]`` per proxy task (summed over organs), averaged over the MoE layers."""
        usage = torch.stack([layer.usage for layer in self.moe]).sum(0)  # [T*G, E]
        usage = usage.view(len(self.task_names), self.num_organs, -1).sum(1)
        return usage / usage.sum(1, keepdim=True).clamp_min(1e-12)


__all__ = ["CoarseNoiseRemoval", "LESION_SYNTHESES", "LesionSegmentation", "RECONSTRUCT_ENCODERS", "UNET_TASKS",
           "UNetMTLNetwork", "UncertainReconstruction"]
