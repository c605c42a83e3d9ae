"""PatchCore: a memory bank of normal patch features; the anomaly map is the distance to the nearest one.

Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022 (https://arxiv.org/abs/2106.08265).
Explained and built step by step in notebooks/40_baselines.ipynb.

No gradient training (``uses_gradients = False``): the trainer makes one pass over the normal training images
and calls :meth:`PatchCore.fit_batch` on each batch, then :meth:`PatchCore.on_train_end`.

1. Patch features: two mid-level feature maps of a frozen backbone, each averaged over its 3x3 neighbourhood
   (the paper's local aggregation), resized to a common grid of stride ``grid_stride`` and concatenated: one
   feature vector per image patch.
2. Coreset: the bank of all training patch features is subsampled to ``coreset_ratio`` of its size by greedy
   k-center selection (each step adds the feature farthest from those already chosen), computed on a random
   projection to ``projection_dim`` dimensions (Johnson-Lindenstrauss) and fully vectorised in torch: the loop
   runs over the picks, each pick is one matrix operation over the whole bank. With ``per_task=True`` (default)
   each task gets its own bank, as if one PatchCore were fitted per organ/modality (the paper's setting).
3. Inference: each test patch's Euclidean distance to its nearest bank feature (of the image's task) is the
   patch score; the grid is upsampled bilinearly and smoothed with a Gaussian (sigma = 4 px at 224 px, scaled
   to the image size). The image score is the largest patch score. We leave out the optional re-weighting of
   the paper's Eq. 7.

Backbones (``backbone=``):

- ``"resnet18"``, ``"resnet50"``, ``"wide_resnet50_2"`` (the paper's): torchvision ImageNet models, layers 2
  and 3. Their weights are never downloaded at run time; they are looked for, in this order, in the ``weights``
  option (a ``.pth`` file), the ``MEDAD_EDU_BACKBONE_WEIGHTS`` environment variable (a ``.pth`` file or a folder
  holding torchvision's file, e.g. ``resnet18-f37072fd.pth``) and torchvision's own cache
  (``$TORCH_HOME/hub/checkpoints``, filled by any earlier ``torchvision.models.resnet18(weights="DEFAULT")`` on
  a machine with internet). Grey images are repeated to 3 channels and normalised with ImageNet statistics.
- ``"run:PATH"``: the encoder of a model trained *from scratch* by this package (the multi-task learner's or
  All-in-One's run folder, or any run whose model has an ``encoder``): fully offline. Feature maps of stride 4
  and 8 are used. The model factory (``medad_edu.models.factory.make_model``, used by ``train``) reads the run's
  method and init_args into the option ``backbone_source``; the constructor only rebuilds the encoder from it.
- ``"random"`` (default): a randomly initialised conv encoder (the All-in-One conv blocks). It works offline
  with no training at all, but random features are **weak**; it is a floor, not a competitor.

The backbone's weights go into the checkpoint with the bank (registered buffers), so a trained PatchCore
reloads without the weight file or the source run.

Example::

    from medad_edu.training import make_config, train
    cfg = make_config("patchcore", "quick", sizes="tiny", options={"backbone": "run:runs/mtl"})
    result = train(cfg, run_dir=None, progress=False)
    out = result.model(images, task_ids)   # anomaly_map = nearest-neighbour distance, pred_score = its max

Defined in: notebooks/40_baselines.ipynb
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..base import AnomalyModel, AnomalyResult
from ..components import ConvEncoder, conv_block

TORCHVISION_BACKBONES = {"resnet18": "ResNet18_Weights", "resnet50": "ResNet50_Weights",
                         "wide_resnet50_2": "Wide_ResNet50_2_Weights"}
WEIGHTS_ENV = "MEDAD_EDU_BACKBONE_WEIGHTS"
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def greedy_coreset(features: torch.Tensor, k: int, projection_dim: int | None = 128,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices of ``k`` rows of ``features [N, D]`` chosen by greedy k-center (farthest-point) selection.

    Distances are computed after a Gaussian random projection to ``projection_dim`` (none if ``None`` or if
    it is not smaller than ``D``). The first point is random (from ``generator``).
    """
    n, d = features.shape
    if not 1 <= k <= n:
        raise ValueError(f"coreset size must be in 1..{n}; got {k}")
    x = features.float()
    if projection_dim is not None and projection_dim < d:
        proj = torch.randn(d, projection_dim, generator=generator) / math.sqrt(projection_dim)
        x = x @ proj.to(x.device)
    start = int(torch.randint(n, (1,), generator=generator))
    chosen = torch.empty(k, dtype=torch.long, device=x.device)
    chosen[0] = start
    sq = (x ** 2).sum(1)
    # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2: one matrix-vector product per pick, no [N, D] temporary.
    min_d = sq - 2 * (x @ x[start]) + sq[start]
    for i in range(1, k):  # a loop over picks; each pick is one vectorised pass over the bank
        nxt = torch.argmax(min_d)
        chosen[i] = nxt
        torch.minimum(min_d, sq - 2 * (x @ x[nxt]) + sq[nxt], out=min_d)
    return chosen


def nearest_distance(queries: torch.Tensor, bank: torch.Tensor, chunk_elems: int = 2 ** 25) -> torch.Tensor:
    """Euclidean distance of each row of ``queries [Q, D]`` to its nearest row of ``bank [M, D]`` (chunked)."""
    out = torch.empty(len(queries), device=queries.device)
    bank_sq = (bank ** 2).sum(1)
    step = max(1, chunk_elems // max(1, len(bank)))
    for s in range(0, len(queries), step):
        q = queries[s:s + step]
        d2 = (q ** 2).sum(1, keepdim=True) + bank_sq[None] - 2 * q @ bank.t()
        out[s:s + step] = d2.min(1).values.clamp_min(0).sqrt()
    return out


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``[B, 1, H, W]`` maps (reflect padding)."""
    if sigma <= 0:
        return x
    radius = max(1, int(4 * sigma + 0.5))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    pad = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    if pad < radius:  # tiny maps: fall back to replicate padding of the full radius
        x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    else:
        x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    return F.conv2d(x, k.view(1, 1, -1, 1))


def find_torchvision_weights(backbone: str, weights: str | None = None) -> Path:
    """The local ``.pth`` file for a torchvision backbone, or a ``FileNotFoundError`` that says how to get one."""
    from ..._compat import import_torchvision

    tv = import_torchvision()
    enum = getattr(tv.models, TORCHVISION_BACKBONES[backbone])
    names = [w.url.rsplit("/", 1)[1] for w in enum]
    candidates: list[Path] = []
    if weights:
        candidates.append(Path(weights).expanduser())
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        p = Path(env).expanduser()
        candidates += [p / n for n in names] if p.is_dir() else [p]
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    candidates += [hub / n for n in names]
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(
        f"patchcore: no ImageNet weights for {backbone!r} on this machine (looked at "
        f"{', '.join(str(c) for c in candidates)}). Download {enum.DEFAULT.url} on a machine with internet and "
        f"pass it with --option weights=PATH or {WEIGHTS_ENV}=PATH, or use backbone='run:RUN_DIR' (an encoder "
        f"trained by this package) or backbone='random'")


def _build_torchvision(backbone: str) -> nn.Module:
    from ..._compat import import_torchvision

    tv = import_torchvision()
    net = getattr(tv.models, backbone)(weights=None)
    return nn.ModuleDict({"stem": nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool), "layer1": net.layer1,
                          "layer2": net.layer2, "layer3": net.layer3})


def _source_encoder(source: dict[str, Any]) -> tuple[nn.Module, str]:
    """``(module, qualified name)`` of the encoder of a model rebuilt (without weights) from a run's method and
    init_args: the first submodule called ``encoder`` (for a ``ConvEncoder``, its conv stack)."""
    from ..registry import get_method

    model = get_method(source["method"])(**source["init_args"])
    for qual, module in model.named_modules():
        if qual == "encoder" or qual.endswith(".encoder"):
            if isinstance(module, ConvEncoder):
                return module.conv, f"{qual}.conv"
            return module, qual
    raise ValueError(f"patchcore: a {source['method']!r} model has no 'encoder' module to take features from")


def backbone_source_of(run_dir: str) -> dict[str, Any]:
    """How to rebuild a finished run's model without its folder: ``{"method", "init_args"}`` (the PatchCore
    option ``backbone_source`` for ``backbone="run:RUN_DIR"``). Reads the run's checkpoint: the model factory calls
    it, never the constructor."""
    state = _read_run(run_dir)
    return {"method": state["method"], "init_args": state["init_args"]}


def _read_run(path: str) -> dict[str, Any]:
    from ...checkpoint_io import read_checkpoint

    state = read_checkpoint(path)
    if not state.get("complete"):
        raise ValueError(f"patchcore: the run {path} is not finished training; train it first")
    return state


class PatchCore(AnomalyModel):
    name = "patchcore"
    uses_gradients = False
    # Roth et al.: WideResNet-50 layers 2+3, 3x3 aggregation, 1% coreset (10% also reported), projection 128,
    # Gaussian sigma 4. Offline, the default backbone here is random; pass backbone= for a real one.
    PAPER = {"epochs": 1, "backbone": "random", "coreset_ratio": 0.01, "projection_dim": 128, "grid_stride": 8,
             "per_task": True}
    QUICK = {"epochs": 1, "backbone": "random", "coreset_ratio": 0.1, "projection_dim": 128, "grid_stride": 8,
             "per_task": True}

    def __init__(self, image_size: int, task_names, prompts=None, backbone: str = "random", weights: str | None = None,
                 layers: list[int] | None = None, coreset_ratio: float = 0.1, projection_dim: int | None = 128,
                 grid_stride: int | None = 8, per_task: bool = True, feature_dim: int | None = None,
                 blur_sigma: float | None = None, backbone_source: dict | None = None):
        if isinstance(backbone, str) and backbone.startswith("run:") and backbone_source is None:
            raise ValueError(f"patchcore: backbone={backbone!r} needs backbone_source (the run's method and "
                             f"init_args); build it with medad_edu.models.factory.make_model, which reads the run")
        super().__init__(image_size, task_names, prompts, layers=None if layers is None else [int(v) for v in layers])
        if not 0 < coreset_ratio <= 1:
            raise ValueError(f"coreset_ratio must be in (0, 1]; got {coreset_ratio}")
        if grid_stride is not None and (grid_stride < 1 or image_size % grid_stride):
            raise ValueError(f"grid_stride must divide image_size {image_size}; got {grid_stride}")
        if backbone in TORCHVISION_BACKBONES:
            self.kind = "torchvision"
            self.backbone = _build_torchvision(backbone)
        elif backbone == "random":
            self.kind = "blocks"
            self.backbone = nn.Sequential(conv_block(1, 16), conv_block(16, 32), conv_block(32, 64), conv_block(64, 64))
        elif isinstance(backbone, str) and backbone.startswith("run:"):
            enc, self._source_prefix = _source_encoder(backbone_source)
            self.kind = "blocks" if isinstance(enc, nn.Sequential) else "module"
            self.backbone = enc
        else:
            raise ValueError(f"backbone must be 'random', 'run:RUN_DIR' or one of {sorted(TORCHVISION_BACKBONES)}; "
                             f"got {backbone!r}")
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.backbone.eval()
        self.layers = self._resolve_layers(layers)
        self.register_buffer("memory", torch.zeros(0, 1))
        self.register_buffer("memory_task", torch.zeros(0, dtype=torch.long))
        self._bank: list[torch.Tensor] = []
        self._bank_task: list[torch.Tensor] = []

    # --- features -------------------------------------------------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()  # frozen: BatchNorm keeps its running statistics even while "training"
        return self

    def feature_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """All the backbone's feature maps, from fine to coarse."""
        if self.kind == "torchvision":
            mean = torch.tensor(_IMAGENET_MEAN, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
            std = torch.tensor(_IMAGENET_STD, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
            h = (images.expand(-1, 3, -1, -1) - mean) / std
            h = self.backbone["stem"](h)
            out = []
            for name in ("layer1", "layer2", "layer3"):
                h = self.backbone[name](h)
                out.append(h)
            return out
        if self.kind == "blocks":
            out, h = [], images
            for block in self.backbone:
                h = block(h)
                out.append(h)
            return out
        res = self.backbone(images)
        res = list(res) if isinstance(res, (list, tuple)) else [res]
        return [r for r in res if torch.is_tensor(r) and r.ndim == 4]

    def _resolve_layers(self, layers: list[int] | None) -> list[int]:
        with torch.no_grad():
            maps = self.feature_maps(torch.zeros(1, 1, self.image_size, self.image_size))
        strides = [self.image_size // m.shape[-1] for m in maps]
        if layers is None:
            want = (8, 16) if self.kind == "torchvision" else (4, 8)  # the paper: ResNet layer2 + layer3
            layers = [strides.index(s) for s in want if s in strides] or list(range(len(maps)))[-2:]
        bad = [i for i in layers if not 0 <= i < len(maps)]
        if bad:
            raise ValueError(f"layers {bad} out of range: the backbone gives {len(maps)} maps (strides {strides})")
        return list(layers)

    def patch_features(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, D, g, g]`` locally aggregated, concatenated mid-level features."""
        maps = self.feature_maps(images)
        chosen = [F.avg_pool2d(maps[i].float(), 3, 1, 1, count_include_pad=False) for i in self.layers]
        size = chosen[0].shape[-2:]
        feats = torch.cat([c if c.shape[-2:] == size else
                           F.interpolate(c, size=size, mode="bilinear", align_corners=False) for c in chosen], 1)
        stride = self.options["grid_stride"]
        if stride is not None and feats.shape[-1] != self.image_size // stride:
            feats = F.adaptive_avg_pool2d(feats, self.image_size // stride)
        dim = self.options["feature_dim"]
        if dim is not None and feats.shape[1] > dim:  # the paper's channel reduction by adaptive average pooling
            b, d, h, w = feats.shape
            feats = F.adaptive_avg_pool1d(feats.permute(0, 2, 3, 1).reshape(-1, 1, d), dim)
            feats = feats.view(b, h, w, dim).permute(0, 3, 1, 2)
        return feats

    # --- fitting --------------------------------------------------------------------------------------------
    def on_train_start(self, data, device: torch.device) -> None:
        backbone = self.options["backbone"]
        if self.kind == "torchvision":
            path = find_torchvision_weights(backbone, self.options["weights"])
            sd = torch.load(path, map_location="cpu", weights_only=True)
            rename = {"stem.0.": "conv1.", "stem.1.": "bn1."}  # our stem = torchvision's conv1, bn1
            own = {}
            for key in self.backbone.state_dict():
                src = next((v + key[len(k):] for k, v in rename.items() if key.startswith(k)), key)
                if src not in sd:
                    raise ValueError(f"patchcore: {path} is not a torchvision {backbone} state dict "
                                     f"(missing {src!r})")
                own[key] = sd[src]
            self.backbone.load_state_dict(own)
        elif backbone.startswith("run:"):
            state = _read_run(backbone[4:])
            prefix = self._source_prefix + "."
            sd = {k[len(prefix):]: v for k, v in state["model_state"].items() if k.startswith(prefix)}
            try:
                self.backbone.load_state_dict(sd)
            except RuntimeError as err:
                raise ValueError(f"patchcore: the encoder weights of {backbone[4:]} do not fit ({err})") from err
        self.backbone.to(device).eval()
        self._bank, self._bank_task = [], []

    def fit_batch(self, batch: dict[str, torch.Tensor]) -> None:
        feats = self.patch_features(batch["image"])
        b, d, h, w = feats.shape
        self._bank.append(feats.permute(0, 2, 3, 1).reshape(-1, d))
        self._bank_task.append(batch["task_id"].repeat_interleave(h * w))

    def on_train_end(self, data, device: torch.device) -> None:
        if not self._bank:  # e.g. resumed after the pass: redo it (it is cheap)
            from ...data.batches import iterate_batches, split_tensors

            for batch in iterate_batches(split_tensors(data, "train"), 64, device=device):
                self.fit_batch(batch)
        feats, tasks = torch.cat(self._bank), torch.cat(self._bank_task)
        self._bank, self._bank_task = [], []
        groups = ([tasks == t for t in tasks.unique()] if self.options["per_task"]
                  else [torch.ones_like(tasks, dtype=torch.bool)])
        mem, mem_task = [], []
        for sel in groups:  # a loop over tasks
            x = feats[sel]
            k = max(1, int(math.ceil(self.options["coreset_ratio"] * len(x))))
            idx = greedy_coreset(x, k, self.options["projection_dim"]) if k < len(x) else torch.arange(len(x))
            mem.append(x[idx.to(x.device)])
            mem_task.append(tasks[sel][idx.to(tasks.device)])
        self.memory = torch.cat(mem).contiguous()
        self.memory_task = torch.cat(mem_task).contiguous()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # The bank's size is only known after fitting: resize the buffers before the copy.
        for name in ("memory", "memory_task"):
            key = prefix + name
            if key in state_dict:
                setattr(self, name, torch.empty_like(state_dict[key], device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def check_checkpoint(self, state: dict[str, Any]) -> None:
        if state.get("complete") and len(self.memory) == 0:
            from ...checkpoint_io import CheckpointError

            raise CheckpointError("patchcore checkpoint is marked complete but its memory bank is empty")

    # --- inference ------------------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, task_ids: torch.Tensor | None = None) -> AnomalyResult:
        self.check_input(images, task_ids)
        if len(self.memory) == 0:
            raise RuntimeError("patchcore: the memory bank is empty; fit the model first (medad-edu train)")
        feats = self.patch_features(images)
        b, d, h, w = feats.shape
        queries = feats.permute(0, 2, 3, 1).reshape(b, h * w, d)
        dist = torch.empty(b, h * w, device=images.device)
        if self.options["per_task"]:
            if task_ids is None:
                raise ValueError("patchcore with per_task=True needs task_ids")
            for t in task_ids.unique():  # a loop over tasks present in the batch
                sel = task_ids == t
                bank = self.memory[self.memory_task == t]
                if len(bank) == 0:
                    raise ValueError(f"patchcore: no memory for task {self.task_names[int(t)]!r}")
                dist[sel] = nearest_distance(queries[sel].reshape(-1, d), bank).view(-1, h * w)
        else:
            dist = nearest_distance(queries.reshape(-1, d), self.memory).view(b, h * w)
        grid = dist.view(b, 1, h, w)
        amap = F.interpolate(grid, size=images.shape[-2:], mode="bilinear", align_corners=False)
        sigma = self.options["blur_sigma"]
        amap = gaussian_blur(amap, 4.0 * self.image_size / 224 if sigma is None else sigma)
        return AnomalyResult(amap, dist.max(1).values, {"patch_scores": grid})
