"""Checkpoints: written atomically, self-describing, checked when loaded.

A run folder holds ``checkpoint.pt`` (model + optimiser + progress + thresholds + versions), ``config.json``
(the resolved ``TrainConfig``) and ``history.json`` (per-epoch losses and timings).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from ..models.base import AnomalyModel
from ..models.registry import get_method
from ..utils import atomic_torch_save, versions

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not match what is asked of it."""


def save_checkpoint(run_dir: str | Path, model: AnomalyModel, optimizer: torch.optim.Optimizer | None,
                    epoch: int, config: dict[str, Any], history: list[dict], complete: bool,
                    thresholds: dict[str, float] | None = None, extra: dict[str, Any] | None = None) -> Path:
    path = Path(run_dir) / CHECKPOINT_NAME
    state = {
        "format_version": FORMAT_VERSION,
        "method": model.name,
        "init_args": model.init_args(),
        "model_state": model.state_dict(),
        "optimizer_state": optimizer.state_dict() if optimizer is not None else None,
        "epoch": epoch,  # number of finished epochs
        "complete": complete,
        "config": config,
        "history": history,
        "thresholds": thresholds or {},
        "versions": versions(),
        "extra": extra or {},
    }
    atomic_torch_save(state, path)
    return path


def read_checkpoint(run_dir: str | Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT_NAME if run_dir.is_dir() else run_dir
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint (train first: medad-edu train --out {run_dir})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise CheckpointError(f"{path}: unreadable checkpoint ({err})") from err
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: not a medad-edu checkpoint of format {FORMAT_VERSION}")
    return state


def build_model(state: dict[str, Any]) -> AnomalyModel:
    cls = get_method(state["method"])
    return cls(**state["init_args"])


def load_model(run_dir: str | Path, device: torch.device | str = "cpu",
               expect_method: str | None = None) -> tuple[AnomalyModel, dict[str, Any]]:
    """Rebuild the model of a run and load its weights; returns ``(model in eval mode, checkpoint dict)``."""
    state = read_checkpoint(run_dir)
    if expect_method is not None and state["method"] != expect_method:
        raise CheckpointError(f"{run_dir}: checkpoint is for method {state['method']!r}, not {expect_method!r}")
    saved, now = state.get("versions", {}), versions()
    if saved.get("torch") and saved["torch"].split("+")[0] != now["torch"].split("+")[0]:
        warnings.warn(f"{run_dir}: checkpoint written with torch {saved['torch']}, running {now['torch']}",
                      stacklevel=2)
    model = build_model(state)
    try:
        model.load_state_dict(state["model_state"])
    except RuntimeError as err:
        raise CheckpointError(f"{run_dir}: weights do not fit the {state['method']} model "
                              f"built from the stored arguments ({err})") from err
    check = getattr(model, "check_checkpoint", None)
    if check is not None:  # e.g. All-in-One checks the prompt encoder identity
        check(state)
    model.to(device).eval()
    return model, state
