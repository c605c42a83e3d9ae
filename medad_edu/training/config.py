"""Training configurations: ``quick`` (CPU, 64 px, minutes) and ``paper`` (GPU, 256 px, 250 epochs).

``batch_size`` is the global batch: under ``torchrun`` with W processes each takes ``batch_size / W`` images
per step (``medad_edu.training.distributed``).

One code path serves both; a configuration is only numbers. Precedence: the trainer's preset below, then the
method's own ``QUICK`` / ``PAPER`` dict (``medad_edu.models.*``), then explicit overrides (command-line flags).

Defined in: notebooks/03_autoencoder.ipynb
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..data.batches import count_batches
from ..models.base import check_image_size

# The All-in-One paper's Sec. 4.3: 256x256, 250 epochs, Adam lr 5e-4, batch 64.
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"image_size": 64, "epochs": 20, "batch_size": 32, "lr": 1e-3, "sizes": "quick", "amp": False},
    "paper": {"image_size": 256, "epochs": 250, "batch_size": 64, "lr": 5e-4, "sizes": "paper", "amp": True},
}


@dataclass
class TrainConfig:
    method: str
    data: str = "embedded"
    config: str = "quick"
    image_size: int = 64
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "auto"
    amp: bool = False  # bfloat16 autocast on CUDA only; ignored elsewhere
    grad_clip: float | None = 5.0
    # Learning rate over the epochs: "constant" (cfg.lr throughout; every run made before this setting), or "cosine"
    # (cfg.lr at the first epoch, decayed per epoch along half a cosine towards 0; see ``lr_at_epoch``).
    lr_schedule: str = "constant"
    # At least this many optimizer steps: on a small training set ``epochs`` grows to
    # ceil(min_steps / steps per epoch) (``epochs_for_data``); 0 = ``epochs`` as given. A configuration's own
    # ``epochs`` only: an explicit ``epochs`` override (a flag, a bench variant's) turns it off.
    min_steps: int = 0
    num_workers: int = 0  # threads decoding image files once, before training
    # Speed settings, all off by default; like ``device`` they may change when a run is resumed.
    compile: bool = False  # torch.compile the training step
    channels_last: bool = False  # CUDA: model weights and input batches in channels-last memory format
    sync_bn: bool = False  # CUDA, distributed: BatchNorm statistics over the global batch (SyncBatchNorm)
    sizes: str = "quick"  # embedded data size preset (tiny | quick | paper)
    tasks: list[str] | None = None  # restrict to these tasks (default: all)
    options: dict[str, Any] = field(default_factory=dict)  # method-specific options

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


_TRAINER_KEYS = {f.name for f in fields(TrainConfig)} - {"options"}
LR_SCHEDULES = ("constant", "cosine")


def lr_at_epoch(cfg: TrainConfig, epoch: int) -> float:
    """The learning rate of epoch ``epoch`` (0-based) of ``cfg.epochs``.

    ``cosine``: ``lr * (1 + cos(pi * epoch / epochs)) / 2``, set at the start of each epoch. It depends on the epoch
    alone, so a resumed run continues the same schedule; a run resumed with more epochs (``epochs`` may grow)
    continues along the longer schedule from the epoch it reached.
    """
    if cfg.lr_schedule == "constant":
        return cfg.lr
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / max(cfg.epochs, 1)))


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Optimizer steps in one epoch over ``n_train`` images: the trainer's batches, its last, partial batch dropped
    (at least 1)."""
    return max(1, count_batches(n_train, batch_size, drop_last=True))


def epochs_for_data(cfg: TrainConfig, n_train: int) -> int:
    """The epochs a run over ``n_train`` training images trains: ``cfg.epochs``, or more where ``cfg.min_steps``
    asks for more optimizer steps than ``cfg.epochs`` epochs make.

    A model shared by every organ learns in steps, not epochs: MTL-MAD's ``quick`` 20 epochs are 620 steps on the
    embedded sets (5 organs x 200 images, batch 32) but 300 on 2 organs x 240 images, where it has not converged
    (``book/results/mtl_min_steps``).
    """
    if cfg.min_steps <= 0:
        return cfg.epochs
    return max(cfg.epochs, math.ceil(cfg.min_steps / steps_per_epoch(n_train, cfg.batch_size)))


def make_config(method: str, config: str = "quick", options: dict[str, Any] | None = None,
                **overrides: Any) -> TrainConfig:
    """Resolve a configuration: preset, then the method's defaults, then ``overrides`` (``None`` = keep)."""
    from ..models.registry import get_method

    if config not in PRESETS:
        raise ValueError(f"config must be one of {sorted(PRESETS)}; got {config!r}")
    cls = get_method(method)
    values: dict[str, Any] = dict(PRESETS[config])
    method_defaults = dict(cls.QUICK if config == "quick" else cls.PAPER)
    opts: dict[str, Any] = {}
    for key, val in method_defaults.items():
        (values if key in _TRAINER_KEYS else opts)[key] = val
    for key, val in overrides.items():
        if val is None:
            continue
        if key not in _TRAINER_KEYS:
            raise ValueError(f"unknown training setting {key!r}")
        values[key] = val
    opts.update(options or {})
    if overrides.get("epochs") is not None and overrides.get("min_steps") is None:
        values["min_steps"] = 0  # an explicit epochs is taken as it is (a smoke test's 1 epoch stays 1)
    cfg = TrainConfig(method=method, config=config, options=opts, **values)
    if cfg.epochs < 1:
        raise ValueError(f"epochs must be >= 1; got {cfg.epochs}")
    if cfg.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {cfg.batch_size}")
    check_image_size(cfg.image_size)
    if not cfg.lr > 0:
        raise ValueError(f"lr must be > 0; got {cfg.lr}")
    if not isinstance(cfg.min_steps, int) or cfg.min_steps < 0:
        raise ValueError(f"min_steps must be an integer >= 0; got {cfg.min_steps!r}")
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}; got {cfg.lr_schedule!r}")
    return cfg
