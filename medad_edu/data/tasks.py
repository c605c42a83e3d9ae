"""The data contract shared by every method: tasks, splits and the multi-task container.

A *task* is one organ + modality (the All-in-One paper's "task category"), with a text prompt. Each task has a
``train`` split (normal images only), an optional ``valid`` split (used to choose thresholds and normalise
scores, never the test split) and a ``test`` split. Images are single-channel float32 in [0, 1], square,
resized to the configured ``image_size``; masks are uint8 in {0, 1} or absent.

Explained in notebooks/01_data.ipynb.

Defined in: notebooks/01_data.ipynb
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

# The prompts of the All-in-One paper, Table 4, keyed by our task names.
PAPER_PROMPTS: dict[str, str] = {
    "chest_xray": "Chest X-ray image to evaluate the lungs.",
    "brain_mri": "Brain MRI slice.",
    "fundus": "Retinal fundus image.",
    "breast_us": "Breast ultrasound image.",
    "head_ct": "Head CT slice.",
}
# Folder names of the public datasets that map onto those tasks (lower-cased, without punctuation).
TASK_ALIASES: dict[str, str] = {
    "rsna": "chest_xray", "chestxray": "chest_xray", "chest": "chest_xray", "cxr": "chest_xray",
    "brainmri": "brain_mri", "brain": "brain_mri", "brats": "brain_mri", "brats2021": "brain_mri",
    "braintumor": "brain_mri", "braintumormri": "brain_mri",
    "lag": "fundus", "retina": "fundus", "fundus": "fundus",
    "busi": "breast_us", "breast": "breast_us", "breastus": "breast_us", "breastultrasound": "breast_us",
    "headct": "head_ct", "ct": "head_ct",
}
GENERIC_PROMPT = "Medical image."


def default_prompt(task_name: str) -> str:
    """The paper's prompt for a known task name (or a known dataset alias), else a generic prompt."""
    if task_name in PAPER_PROMPTS:
        return PAPER_PROMPTS[task_name]
    key = "".join(ch for ch in task_name.lower() if ch.isalnum())
    if key in TASK_ALIASES:
        return PAPER_PROMPTS[TASK_ALIASES[key]]
    for canonical in PAPER_PROMPTS:
        if key == canonical.replace("_", ""):
            return PAPER_PROMPTS[canonical]
    return GENERIC_PROMPT


class Split:
    """A list of samples: ``len(split)`` and ``split.get(i) -> (image [S,S] float32, label, mask [S,S] | None)``."""

    has_masks: bool = False
    names: list[str]

    def __len__(self) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def get(self, i: int) -> tuple[np.ndarray, int, np.ndarray | None]:  # pragma: no cover - interface
        raise NotImplementedError

    @property
    def labels(self) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Materialise the whole split: (images [N,S,S], labels [N], masks [N,S,S] or None)."""
        items = [self.get(i) for i in range(len(self))]
        images = np.stack([it[0] for it in items]).astype(np.float32)
        labels = np.asarray([it[1] for it in items], dtype=np.int64)
        masks = None
        if self.has_masks:
            masks = np.stack([it[2] if it[2] is not None else np.zeros_like(it[0], np.uint8) for it in items])
            masks = masks.astype(np.uint8)
        return images, labels, masks


class ArraySplit(Split):
    """A split held in memory (the embedded data, or anything already loaded)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray | Sequence[int], masks: np.ndarray | None = None,
                 names: Sequence[str] | None = None):
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 3 or images.shape[1] != images.shape[2]:
            raise ValueError(f"images must have shape [N, S, S]; got {images.shape}")
        labels = np.asarray(labels, dtype=np.int64)
        if labels.shape != (len(images),):
            raise ValueError(f"labels must have shape [{len(images)}]; got {labels.shape}")
        if not np.isin(labels, (0, 1)).all():
            raise ValueError("labels must be 0 (normal) or 1 (abnormal)")
        if masks is not None:
            masks = (np.asarray(masks) > 0).astype(np.uint8)
            if masks.shape != images.shape:
                raise ValueError(f"masks shape {masks.shape} does not match images shape {images.shape}")
        self.images, self._labels, self.masks = images, labels, masks
        self.has_masks = masks is not None
        self.names = list(names) if names is not None else [f"{i:05d}" for i in range(len(images))]

    def __len__(self) -> int:
        return len(self.images)

    def get(self, i: int):
        return self.images[i], int(self._labels[i]), (self.masks[i] if self.masks is not None else None)

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    def arrays(self):
        return self.images, self._labels, self.masks


@dataclass
class TaskData:
    """One organ/modality: its name, prompt and splits."""

    name: str
    prompt: str
    train: Split
    test: Split
    valid: Split | None = None
    source: str = ""  # where it came from (folder path or "embedded:phantom")

    def __post_init__(self):
        if len(self.train) == 0:
            raise ValueError(f"task {self.name!r}: the train split is empty ({self.source})")
        if int(np.sum(self.train.labels)) != 0:
            raise ValueError(f"task {self.name!r}: the train split must contain only normal images ({self.source})")


@dataclass
class MultiTaskData:
    """Several tasks trained together (one universal model) or one at a time."""

    tasks: list[TaskData]
    image_size: int
    name: str = "data"
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.tasks:
            raise ValueError(f"{self.name}: no tasks")
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: duplicate task names {names}")

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @property
    def prompts(self) -> list[str]:
        return [t.prompt for t in self.tasks]

    def task(self, name: str) -> TaskData:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(f"no task {name!r}; tasks are {self.task_names}")

    def subset(self, names: Sequence[str]) -> "MultiTaskData":
        return MultiTaskData([self.task(n) for n in names], self.image_size, self.name, dict(self.meta))
