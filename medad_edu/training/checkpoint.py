"""Checkpoints: written atomically, self-describing, checked when loaded, never able to run code.

A run folder holds ``checkpoint.pt`` (model + optimiser + progress + thresholds + versions), ``config.json``
(the resolved ``TrainConfig``) and ``history.json`` (per-epoch losses and timings); while ``train`` runs it
also holds the lock file ``.lock``.

Checkpoints are read with ``torch.load(weights_only=True)``: tensors and plain containers (dict, list, str,
numbers) only, so a file that is not ours, or that was crafted to run code when unpickled, is refused with a
one-line ``CheckpointError`` naming it instead of being executed. Everything we save is therefore plain data:
versions are ``str``, numpy numbers become Python numbers (``medad_edu.utils.to_plain``), the RNG state is a
tensor.
"""
from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from ..models.base import AnomalyModel
from ..models.registry import get_method
from ..utils import atomic_torch_save, safe_torch_load, to_plain, versions

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("method", "init_args", "model_state", "epoch", "complete", "config")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not match what is asked of it."""


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


_TORCH_ADVICE = ("Weights only load failed", "Please file an issue", "Check the documentation", "(1)", "(2)")


def _first_line(err: BaseException) -> str:
    """The informative line of an exception (torch's weights_only refusal wraps it in a page of advice)."""
    if isinstance(err, EOFError):
        return "the file is empty or truncated"
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    lines = [ln.split("WeightsUnpickler error:", 1)[-1].strip() for ln in lines]
    useful = [ln for ln in lines if ln and not ln.startswith(_TORCH_ADVICE)]
    line = (useful or lines or [type(err).__name__])[0]
    if len(line) > 160 and ". " in line:  # keep the first sentence of a long explanation
        line = line.split(". ", 1)[0] + "."
    return line if len(line) <= 300 else line[:297] + "..."


def load_plain(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` onto the CPU; any failure is a one-line ``CheckpointError``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        return safe_torch_load(path, map_location="cpu")
    except Exception as err:
        detail = _first_line(err)
        if isinstance(err, pickle.UnpicklingError) and "global" in detail.lower():
            raise CheckpointError(f"{path}: refused to load: it holds objects other than tensors and plain data, "
                                  f"which could run code when unpickled; not a medad-edu checkpoint "
                                  f"({detail})") from err
        raise CheckpointError(f"{path}: unreadable checkpoint ({detail})") from err


def read_checkpoint(run_dir: str | Path) -> dict[str, Any]:
    """Read a run's checkpoint safely (``weights_only=True``) and check that it is one of ours."""
    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT_NAME if run_dir.is_dir() else run_dir
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint (train first: medad-edu train --out {run_dir})")
    state = load_plain(path)
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: not a medad-edu checkpoint of format {FORMAT_VERSION}")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a complete medad-edu checkpoint (missing {', '.join(missing)})")
    if not isinstance(state["init_args"], dict) or not isinstance(state["config"], dict):
        raise CheckpointError(f"{path}: not a medad-edu checkpoint (init_args and config must be dicts)")
    state.setdefault("optimizer_state", None)
    state.setdefault("history", [])
    state.setdefault("thresholds", {})
    state.setdefault("versions", {})
    state.setdefault("extra", {})
    return state


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
                              f"built from the stored arguments ({_first_line(err)})") from err
    check = getattr(model, "check_checkpoint", None)
    if check is not None:  # e.g. All-in-One checks the prompt encoder identity
        check(state)
    model.to(device).eval()
    return model, state


__all__ = ["CHECKPOINT_NAME", "CheckpointError", "build_model", "checkpoint_problems", "load_model", "load_plain",
           "nonfinite_tensors", "read_checkpoint", "save_checkpoint"]
