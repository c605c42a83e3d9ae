"""Checkpoints: written atomically, self-describing, checked when loaded, never able to run code.

A run folder holds ``checkpoint.pt`` (model + optimiser + progress + thresholds + versions), ``config.json``
(the resolved ``TrainConfig``) and ``history.json`` (per-epoch losses and timings); while ``train`` runs it
also holds the lock file ``.lock``.

Checkpoints are read with ``torch.load(weights_only=True)``: tensors and plain containers (dict, list, str,
numbers) only, so a file that is not ours, or that was crafted to run code when unpickled, is refused with a
one-line ``CheckpointError`` naming it instead of being executed. Everything we save is therefore plain data:
versions are ``str``, numpy numbers become Python numbers (``medad_edu.utils.to_plain``), the RNG state is a
tensor.

Defined in: notebooks/03_autoencoder.ipynb
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

# The error type and the safe read live below the models (models raise and read with them); re-exported here.
from ..checkpoint_io import (CHECKPOINT_NAME, FORMAT_VERSION, REQUIRED_KEYS, CheckpointError, first_error_line,
                             load_plain, read_checkpoint)
from ..models.base import AnomalyModel
from ..models.registry import get_method
from ..utils import atomic_torch_save, to_plain, versions


def save_checkpoint(run_dir: str | Path, model: AnomalyModel, optimizer: torch.optim.Optimizer | None,
                    epoch: int, config: dict[str, Any], history: list[dict], complete: bool,
                    thresholds: dict[str, float] | None = None, extra: dict[str, Any] | None = None) -> Path:
    path = Path(run_dir) / CHECKPOINT_NAME
    state = {
        "format_version": FORMAT_VERSION,
        "method": str(model.name),
        "init_args": to_plain(model.init_args()),
        "model_state": to_plain(model.state_dict()),
        "optimizer_state": optimizer.state_dict() if optimizer is not None else None,
        "epoch": int(epoch),  # number of finished epochs
        "complete": bool(complete),
        "config": to_plain(config),
        "history": to_plain(history),
        "thresholds": to_plain(thresholds or {}),
        "versions": to_plain(versions()),
        "extra": to_plain(extra or {}),
    }
    atomic_torch_save(state, path)
    return path


def build_model(state: dict[str, Any], where: str | Path = "checkpoint") -> AnomalyModel:
    try:
        cls = get_method(state["method"])
    except ValueError as err:
        raise CheckpointError(f"{where}: {err}") from err
    try:
        return cls(**state["init_args"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{where}: cannot rebuild the {state['method']} model from the stored "
                              f"arguments ({err})") from err


def nonfinite_tensors(model: torch.nn.Module) -> list[str]:
    """Names of the parameters holding NaN or infinity and of the floating-point buffers holding NaN.

    Buffers may use infinity on purpose (e.g. the MTL score reference is padded with +inf), NaN never.
    """
    bad = []
    for name, t in model.named_parameters():
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            bad.append(name)
    for name, t in model.named_buffers():
        if t.is_floating_point() and t.numel() and bool(torch.isnan(t).any()):
            bad.append(name)
    return bad


def checkpoint_problems(model: AnomalyModel, state: dict[str, Any]) -> dict[str, str]:
    """What makes a loaded run unfit to report results from: ``{"incomplete": why, "nonfinite": why}``."""
    problems = {}
    if not state.get("complete"):
        planned = state.get("config", {}).get("epochs")
        of = f" of {planned}" if isinstance(planned, int) else ""
        problems["incomplete"] = (f"training is unfinished (checkpoint after epoch {state.get('epoch')}{of}, "
                                  f"no validation thresholds)")
    bad = nonfinite_tensors(model)
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        problems["nonfinite"] = f"the model has non-finite values (NaN, or infinite weights) in {shown}"
    return problems


def load_model(run_dir: str | Path, device: torch.device | str = "cpu",
               expect_method: str | None = None) -> tuple[AnomalyModel, dict[str, Any]]:
    """Rebuild the model of a run and load its weights; returns ``(model in eval mode, checkpoint dict)``."""
    state = read_checkpoint(run_dir)
    if expect_method is not None and state["method"] != expect_method:
        raise CheckpointError(f"{run_dir}: checkpoint is for method {state['method']!r}, not {expect_method!r}")
    saved, now = state.get("versions", {}), versions()
    saved_torch = str(saved.get("torch") or "") if isinstance(saved, dict) else ""
    if saved_torch and saved_torch.split("+")[0] != now["torch"].split("+")[0]:
        warnings.warn(f"{run_dir}: checkpoint written with torch {saved_torch}, running {now['torch']}",
                      stacklevel=2)
    model = build_model(state, run_dir)
    try:
        model.load_state_dict(state["model_state"])
    except (RuntimeError, TypeError, KeyError, AttributeError) as err:
        raise CheckpointError(f"{run_dir}: weights do not fit the {state['method']} model "
                              f"built from the stored arguments ({first_error_line(err)})") from err
    model.check_checkpoint(state)  # e.g. All-in-One checks the prompt encoder identity
    model.to(device).eval()
    return model, state


__all__ = ["CHECKPOINT_NAME", "CheckpointError", "build_model", "checkpoint_problems", "load_model", "load_plain",
           "nonfinite_tensors", "read_checkpoint", "save_checkpoint"]
