"""What every anomaly detector in the package is: a plain ``nn.Module`` with one inference contract.

Like anomalib's ``torch_model.py``: ``model(images, task_ids)`` in eval mode returns an ``AnomalyResult``
with a per-pixel ``anomaly_map`` and a per-image ``pred_score`` (higher = more anomalous), plus optional
``extras`` (reconstruction, hallucination map, routing weights, per-task failure scores...). Training is kept
apart in ``medad_edu.training``: the trainer only asks the model for ``training_loss(batch)``, a dict whose
``"loss"`` entry is minimised, and calls the optional hooks below; loading a checkpoint calls
``check_checkpoint``.

A model subclass declares:

- ``name``: the method name on the command line (``--method NAME``);
- ``QUICK`` and ``PAPER``: its default options for the ``quick`` (CPU, 64 px) and ``paper`` (GPU, 256 px)
  configurations, including ``epochs``, ``batch_size`` and ``lr`` when they differ from the trainer's;
- ``__init__(self, image_size, task_names, prompts, <hyper-parameters with defaults>)``: everything needed to
  rebuild it from a checkpoint. It calls ``super().__init__(image_size, task_names, prompts)``; the base class
  records the arguments the constructor was called with (defaults filled in, see ``__init_subclass__``) as
  ``options``, and the checkpoint stores exactly these arguments. A constructor that normalises an argument
  (e.g. ``top_k=None`` -> ``num_experts``) passes the normalised value on as a keyword to ``super().__init__``.
  Constructors do no file, network or environment access: whatever needs it is resolved by a factory and passed
  in (``medad_edu/models/factory.py``, which the trainer builds every model with).

Any state that is not a parameter but must survive a checkpoint (score normalisation statistics, a memory bank,
a threshold) is a registered buffer, so ``state_dict`` carries it.

Defined in: notebooks/03_autoencoder.ipynb
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn


def check_image_size(image_size: int) -> int:
    """The image side, if it is a positive multiple of 16 (every encoder halves it four times); else ValueError."""
    if image_size % 16 != 0 or image_size < 16:
        raise ValueError(f"image_size must be a positive multiple of 16; got {image_size}")
    return int(image_size)


@dataclass
class AnomalyResult:
    """Inference output: ``anomaly_map`` [B, 1, H, W] and ``pred_score`` [B], plus method-specific extras."""

    anomaly_map: torch.Tensor
    pred_score: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


class AnomalyModel(nn.Module):
    name: ClassVar[str] = "base"
    QUICK: ClassVar[dict[str, Any]] = {}
    PAPER: ClassVar[dict[str, Any]] = {}
    # Methods fitted without gradient descent (e.g. a memory bank) set this False: the trainer then makes one
    # pass over the data through ``fit_batch`` instead of optimising ``training_loss``.
    uses_gradients: ClassVar[bool] = True
    # A model whose training step may leave some parameters without a gradient (e.g. sparse experts that no image
    # of a batch chose) sets this True: distributed training must then search for them after every forward.
    ddp_find_unused_parameters: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Wrap each subclass's ``__init__`` so the arguments of the outermost call are recorded, once, before
        it runs: a constructor then states each hyper-parameter only in its signature."""
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return
        signature = inspect.signature(init)

        @functools.wraps(init)  # keeps the signature for ``inspect.signature`` (the CLI reads it)
        def recording_init(self, *args: Any, **kw: Any) -> None:
            if "_declared_args" not in self.__dict__:  # a subclass's wrapper may already have recorded them
                bound = signature.bind(self, *args, **kw)
                bound.apply_defaults()
                declared: dict[str, Any] = {}
                for name, value in list(bound.arguments.items())[1:]:  # [0] is self
                    if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
                        declared.update(value)
                    else:
                        declared[name] = value
                object.__setattr__(self, "_declared_args", declared)  # before nn.Module.__init__: plain setattr
            init(self, *args, **kw)

        cls.__init__ = recording_init  # type: ignore[method-assign]

    def __init__(self, image_size: int, task_names: list[str], prompts: list[str] | None = None,
                 **normalised: Any):
        """``normalised``: arguments whose recorded value the subclass's constructor replaced (e.g. a tuple made a
        list, ``None`` resolved to its value); they override the recorded ones in ``options``."""
        declared = {k: v for k, v in self.__dict__.get("_declared_args", {}).items()
                    if k not in ("image_size", "task_names", "prompts")}
        super().__init__()
        check_image_size(image_size)
        if not task_names:
            raise ValueError("task_names must name at least one task")
        self.image_size = int(image_size)
        self.task_names = list(task_names)
        self.prompts = list(prompts) if prompts is not None else [""] * len(self.task_names)
        if len(self.prompts) != len(self.task_names):
            raise ValueError(f"{len(self.prompts)} prompts for {len(self.task_names)} tasks")
        self.options = {**declared, **normalised}

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    def init_args(self) -> dict[str, Any]:
        """The constructor arguments, stored in checkpoints to rebuild the model."""
        return {"image_size": self.image_size, "task_names": self.task_names, "prompts": self.prompts,
                **self.options}

    def check_input(self, images: torch.Tensor, task_ids: torch.Tensor | None) -> None:
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"{self.name}: images must be [B, 1, H, W] grey; got {tuple(images.shape)}")
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"{self.name}: model was built for {self.image_size}x{self.image_size} images; "
                             f"got {images.shape[-1]}x{images.shape[-2]}")
        if task_ids is not None and (task_ids.min() < 0 or task_ids.max() >= self.num_tasks):
            raise ValueError(f"{self.name}: task ids must be in [0, {self.num_tasks}); got {task_ids.tolist()}")

    # --- inference -------------------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, task_ids: torch.Tensor) -> AnomalyResult:  # pragma: no cover
        raise NotImplementedError

    # --- training hooks (called by medad_edu.training.trainer) ------------------------------------------------
    def training_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError(f"{self.name} is not trained by gradient descent")

    def on_train_start(self, data, device: torch.device) -> None:
        """Called once before training (e.g. to encode prompts once and cache them)."""

    def fit_batch(self, batch: dict[str, torch.Tensor]) -> None:
        """For ``uses_gradients = False`` methods: accumulate one batch of normal training images."""

    def on_train_end(self, data, device: torch.device) -> None:
        """Called once after training, with the data (e.g. to normalise scores on held-out normal images).

        Must only read the ``train`` and ``valid`` splits, never ``test``.
        """

    # --- loading hook (called by medad_edu.training.checkpoint.load_model) ------------------------------------
    def check_checkpoint(self, state: dict[str, Any]) -> None:
        """Called after the weights of checkpoint dict ``state`` are loaded: raise
        ``medad_edu.checkpoint_io.CheckpointError`` (one line) if the model is unfit to use. Default: no check."""
