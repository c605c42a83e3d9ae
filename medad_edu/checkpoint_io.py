"""Reading a checkpoint file safely: the error type, the file name and format, and the model-agnostic read.

Below the models on purpose: a model that checks a checkpoint (``AnomalyModel.check_checkpoint``) or reads
another run (PatchCore on a trained encoder) raises and reads with these, without importing the training layer.
Writing checkpoints and rebuilding models from them stays in ``medad_edu.training.checkpoint``, which re-exports
everything here.

Checkpoints are read with ``torch.load(weights_only=True)``: tensors and plain containers only, so a file that is
not ours, or that was crafted to run code when unpickled, is refused with a one-line ``CheckpointError``.

Defined in: notebooks/03_autoencoder.ipynb
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from .utils import safe_torch_load

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("method", "init_args", "model_state", "epoch", "complete", "config")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not match what is asked of it."""


_TORCH_ADVICE = ("Weights only load failed", "Please file an issue", "Check the documentation", "(1)", "(2)")


def first_error_line(err: BaseException) -> str:
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
        detail = first_error_line(err)
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


__all__ = ["CHECKPOINT_NAME", "FORMAT_VERSION", "REQUIRED_KEYS", "CheckpointError", "first_error_line", "load_plain",
           "read_checkpoint"]
