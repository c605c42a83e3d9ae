"""The embedded datasets: generated offline, seeded, licence-free; the default data for everything.

``load_embedded("phantom")`` builds the five procedural tasks of ``medad_edu.data.phantoms`` in memory;
``load_embedded("real")`` builds the smaller set from real anatomy shipped inside registry packages
(``medad_edu.data.real_anatomy``). ``write_bmad`` writes any ``MultiTaskData`` to disk in the BMAD layout
with a ``tasks.json`` (that is what ``medad-edu data make`` does), so the disk path and the in-memory path
are the same data.

Explained in notebooks/01_data.ipynb.

Defined in: notebooks/01_data.ipynb
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..utils import atomic_write_json
from .tasks import PAPER_PROMPTS, ArraySplit, MultiTaskData, TaskData


@dataclass(frozen=True)
class EmbeddedSizes:
    """How many images per task and split. ``quick`` suits a CPU; ``paper`` a GPU at 256 px."""

    n_train: int = 200
    n_valid: int = 20  # per class (normal and abnormal)
    n_test: int = 60  # per class

    @classmethod
    def preset(cls, name: str) -> "EmbeddedSizes":
        presets = {"tiny": cls(48, 8, 16), "quick": cls(200, 20, 60), "paper": cls(1000, 100, 300)}
        if name not in presets:
            raise ValueError(f"embedded size preset must be one of {sorted(presets)}; got {name!r}")
        return presets[name]


# Different seed offsets per split, so train, valid and test never share an image.
_SPLIT_SEEDS = {"train": 0, "valid": 1_000_003, "test": 2_000_029}


def _generator(kind: str):
    if kind == "phantom":
        from . import phantoms
        return phantoms, phantoms.TASKS
    if kind == "real":
        from . import real_anatomy
        return real_anatomy, tuple(real_anatomy.REAL_TASKS)
    raise ValueError(f"embedded set must be 'phantom' or 'real'; got {kind!r}")


def load_embedded(kind: str = "phantom", image_size: int = 64, seed: int = 0,
                  sizes: EmbeddedSizes | str = "quick", tasks: Sequence[str] | None = None) -> MultiTaskData:
    """Generate an embedded set in memory as ``MultiTaskData`` (train normal-only; valid and test labelled)."""
    if isinstance(sizes, str):
        sizes = EmbeddedSizes.preset(sizes)
    module, available = _generator(kind)
    names = list(tasks) if tasks else list(available)
    unknown = [t for t in names if t not in available]
    if unknown:
        raise ValueError(f"unknown embedded task(s) {unknown} for set {kind!r}; available: {list(available)}")
    out = []
    for name in names:
        train, _, _ = module.make_split(name, sizes.n_train, 0, image_size, seed + _SPLIT_SEEDS["train"])
        vi, vl, vm = module.make_split(name, sizes.n_valid, sizes.n_valid, image_size, seed + _SPLIT_SEEDS["valid"])
        ti, tl, tm = module.make_split(name, sizes.n_test, sizes.n_test, image_size, seed + _SPLIT_SEEDS["test"])
        out.append(TaskData(
            name, PAPER_PROMPTS[name],
            train=ArraySplit(train, np.zeros(len(train), np.int64)),
            valid=ArraySplit(vi, vl, vm), test=ArraySplit(ti, tl, tm), source=f"embedded:{kind}"))
    return MultiTaskData(out, image_size, name=f"embedded:{kind}",
                         meta={"kind": kind, "seed": seed, "sizes": sizes.__dict__})


def _save_png(path: Path, image: np.ndarray, is_mask: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = (image > 0).astype(np.uint8) * 255 if is_mask else np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
    Image.fromarray(arr).save(path)


def write_bmad(data: MultiTaskData, out_dir: str | Path) -> Path:
    """Write ``data`` in the BMAD layout (``train/good/img``, ``{valid,test}/{good,Ungood}/img``,
    ``.../Ungood/anomaly_mask``) with a ``tasks.json`` of prompts. Images are 8-bit grey PNGs."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for task in data.tasks:
        root = out_dir / task.name
        for split_name, split in (("train", task.train), ("valid", task.valid), ("test", task.test)):
            if split is None:
                continue
            images, labels, masks = split.arrays()
            for i, (img, lab) in enumerate(zip(images, labels)):
                cls = "Ungood" if lab else "good"
                fname = f"{split_name}_{i:05d}.png"
                _save_png(root / split_name / cls / "img" / fname, img)
                if lab and masks is not None:
                    _save_png(root / split_name / cls / "anomaly_mask" / fname, masks[i], is_mask=True)
    atomic_write_json(out_dir / "tasks.json", {t.name: t.prompt for t in data.tasks})
    return out_dir
