"""Data: the embedded datasets, real-benchmark loaders and the batches every method trains on.

``load_data("embedded")`` (or ``"embedded:real"``, or a folder path) is the one entry point the command line
and the notebooks use. Explained in notebooks/01_data.ipynb.

Defined in: notebooks/01_data.ipynb
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .batches import iterate_batches, split_tensors
from .embedded import EmbeddedSizes, load_embedded, write_bmad
from .folders import DataLayoutError, load_bmad_task, load_folder_task, load_medianomaly_task, load_root, load_task
from .imageio import ImageReadError, read_image
from .tasks import GENERIC_PROMPT, PAPER_PROMPTS, ArraySplit, MultiTaskData, TaskData, default_prompt


def load_data(spec: str | Path, image_size: int = 64, seed: int = 0, tasks: Sequence[str] | None = None,
              sizes: str = "quick") -> MultiTaskData:
    """``embedded`` / ``embedded:phantom`` / ``embedded:real`` or a folder (multi-task root or one task)."""
    spec_str = str(spec)
    if spec_str.startswith("embedded"):
        kind = spec_str.split(":", 1)[1] if ":" in spec_str else "phantom"
        return load_embedded(kind, image_size=image_size, seed=seed, sizes=sizes, tasks=tasks)
    return load_root(Path(spec_str), image_size, tasks=tasks, seed=seed)


__all__ = ["ArraySplit", "DataLayoutError", "EmbeddedSizes", "GENERIC_PROMPT", "ImageReadError", "MultiTaskData",
           "PAPER_PROMPTS", "TaskData", "default_prompt", "iterate_batches", "load_bmad_task", "load_data",
           "load_embedded", "load_folder_task", "load_medianomaly_task", "load_root", "load_task", "read_image",
           "split_tensors", "write_bmad"]
