"""Import-time compatibility shims, kept in one place.

torchvision 0.28.0 on some machines is a CUDA build while torch 2.13.0 is the CPU build. Then
``import torchvision`` (and therefore ``import open_clip``, which imports it) fails with
``RuntimeError: operator torchvision::nms does not exist`` because torchvision's Python code registers
fake kernels for compiled operators that the CPU torch never loaded. We need none of torchvision's
compiled ops, only its pure-Python transforms, so the fix is to declare the missing operator schemas and
import again. It is applied only when that exact error happens; on a consistent install nothing is touched.

Defined in: book/setup.md
"""
from __future__ import annotations

import importlib
import sys

_LIBRARY = None  # keep the torch.library.Library alive, or its definitions are dropped


def _declare_torchvision_ops() -> None:
    global _LIBRARY
    import torch

    if _LIBRARY is None:
        _LIBRARY = torch.library.Library("torchvision", "DEF")
        _LIBRARY.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _LIBRARY.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")


def import_torchvision():
    """Import torchvision, working around the CPU-torch / CUDA-torchvision mismatch if it occurs."""
    try:
        return importlib.import_module("torchvision")
    except RuntimeError as err:
        if "torchvision::nms does not exist" not in str(err):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        _declare_torchvision_ops()
        return importlib.import_module("torchvision")


def import_open_clip():
    """Import open_clip (which imports torchvision) with the same workaround."""
    import_torchvision()
    return importlib.import_module("open_clip")


def import_sentence_transformers():
    """Import sentence_transformers (transformers imports torchvision when it is installed) with the same workaround."""
    import_torchvision()
    return importlib.import_module("sentence_transformers")
