"""Loaders for real benchmarks' folder layouts.

Three single-task layouts are recognised, and a multi-task root holds one of them per task:

1. **BMAD** (Bao et al. 2024) and its variants as released and as the authors' loaders read them::

       <task>/train/good/[img/]*.png
       <task>/{valid|val}/{good|Good,Ungood|ungood}/[img/]*.png   (optional)
       <task>/test/{good|Good,Ungood|ungood}/[img/]*.png
       <task>/{valid|val|test}/{...}/{anomaly_mask|label}/*.png   (optional pixel masks, paired by file name)

2. **MedIAnomaly** (Cai et al. 2024): ``<task>/images/`` plus ``<task>/data.json`` with lists
   ``train["0"]`` (normal), ``test["0"]`` and ``test["1"]``; optional ``<task>/masks/`` paired by file name.

3. **Plain folders** in the spirit of anomalib's ``Folder``: ``<task>/normal/`` and ``<task>/abnormal/``
   (optional ``<task>/mask/``, optional ``<task>/normal_test/``). When no normal test folder is given, a seeded
   ``test_split_ratio`` of the normal images is held out for testing and ``val_split_ratio`` for validation.

A multi-task root may carry ``tasks.json`` = ``{"<task folder>": "<prompt text>"}``; without it, known task
names (``rsna``, ``brats``, ``lag``, ``busi``, ``headct``, our own names...) get the All-in-One paper's prompts
and others a generic one. A task folder that ``tasks.json`` does not name is not dropped: it is loaded after the
named ones with that default prompt, and a warning naming it is printed on stderr.

Every problem is an error that names the path: missing or empty folders, an unreadable image, an abnormal image
without its mask, a mask without its image, a mask whose size differs from its image.

Explained in notebooks/01_data.ipynb.

Defined in: notebooks/01_data.ipynb
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from .imageio import ImageReadError, is_image_file, read_image, read_mask, resize
from .tasks import MultiTaskData, Split, TaskData, default_prompt


class DataLayoutError(ValueError):
    """A folder does not follow a supported layout; the message names the path and what was expected."""


def _child(parent: Path, *names: str) -> Path | None:
    """First existing child folder among ``names`` (case-insensitive match on the file system)."""
    if not parent.is_dir():
        return None
    entries = {p.name.lower(): p for p in parent.iterdir() if p.is_dir()}
    for name in names:
        if name.lower() in entries:
            return entries[name.lower()]
    return None


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if is_image_file(p))


class FileSplit(Split):
    """Samples read lazily from disk, resized to ``image_size``; cached in memory after the first read."""

    def __init__(self, records: Sequence[tuple[Path, int, Path | None]], image_size: int, has_masks: bool,
                 cache: bool = True):
        self.records = list(records)
        self.image_size = int(image_size)
        self.has_masks = bool(has_masks)
        self.names = [r[0].name for r in self.records]
        self._labels = np.asarray([r[1] for r in self.records], dtype=np.int64)
        self._cache: dict[int, tuple] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    def get(self, i: int):
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        path, label, mask_path = self.records[i]
        image = read_image(path)
        mask = None
        if self.has_masks:
            if mask_path is not None:
                mask = read_mask(mask_path)
                if mask.shape != image.shape:
                    raise ImageReadError(f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image {path} "
                                         f"is {image.shape[1]}x{image.shape[0]}")
                mask = resize(mask, self.image_size, is_mask=True)
            else:
                mask = np.zeros((self.image_size, self.image_size), np.uint8)
        item = (resize(image, self.image_size), int(label), mask)
        if self._cache is not None:
            self._cache[i] = item
        return item


def _pair_masks(images: list[Path], mask_dir: Path | None, where: Path, required: bool) -> list[Path | None]:
    """Pair each image with the mask of the same file stem; mismatches are errors naming the files."""
    if mask_dir is None:
        return [None] * len(images)
    masks = {p.stem: p for p in _images_in(mask_dir)}
    image_stems = {p.stem for p in images}
    missing = [p.name for p in images if p.stem not in masks]
    orphans = sorted(m.name for s, m in masks.items() if s not in image_stems)
    if orphans:
        raise DataLayoutError(f"{mask_dir}: masks without a matching image in {where}: {orphans[:5]}"
                              f"{' ...' if len(orphans) > 5 else ''}")
    if missing and required:
        raise DataLayoutError(f"{where}: images without a matching mask in {mask_dir}: {missing[:5]}"
                              f"{' ...' if len(missing) > 5 else ''}")
    return [masks.get(p.stem) for p in images]


def _bmad_class_folder(split_dir: Path, cls: Path, label: int) -> tuple[list[tuple[Path, int, Path | None]], bool]:
    img_dir = _child(cls, "img", "image", "images") or cls
    images = _images_in(img_dir)
    if not images:
        raise DataLayoutError(f"{img_dir}: no images (expected PNG/JPEG/TIFF/DICOM files)")
    mask_dir = _child(cls, "anomaly_mask", "label", "labels", "mask", "masks", "ground_truth")
    paired = _pair_masks(images, mask_dir, img_dir, required=(label == 1))
    return [(p, label, m) for p, m in zip(images, paired)], mask_dir is not None


def _bmad_split(split_dir: Path, image_size: int, need_abnormal: bool) -> FileSplit:
    good = _child(split_dir, "good", "normal")
    bad = _child(split_dir, "Ungood", "ungood", "bad", "abnormal")
    if good is None and bad is None:
        raise DataLayoutError(f"{split_dir}: expected sub-folders good/ and Ungood/ (or ungood/)")
    records, has_masks = [], False
    if good is not None:
        recs, _ = _bmad_class_folder(split_dir, good, 0)
        records += recs
    if bad is not None:
        recs, has_masks = _bmad_class_folder(split_dir, bad, 1)
        records += recs
    elif need_abnormal:
        raise DataLayoutError(f"{split_dir}: no Ungood/ (abnormal) folder; a test split needs both classes")
    return FileSplit(records, image_size, has_masks)


def load_bmad_task(root: str | Path, image_size: int, name: str | None = None, prompt: str | None = None) -> TaskData:
    """Load one task in the BMAD layout (see the module docstring for the accepted variants)."""
    root = Path(root)
    if not root.is_dir():
        raise DataLayoutError(f"{root}: no such folder")
    train_dir = _child(root, "train")
    if train_dir is None:
        raise DataLayoutError(f"{root}: no train/ folder (BMAD layout expects train/good/)")
    good = _child(train_dir, "good", "normal")
    if good is None:
        raise DataLayoutError(f"{train_dir}: no good/ folder with the normal training images")
    if _child(train_dir, "Ungood", "ungood") is not None:
        raise DataLayoutError(f"{train_dir}: contains Ungood/; training must use normal images only")
    img_dir = _child(good, "img", "image", "images") or good
    train_images = _images_in(img_dir)
    if not train_images:
        raise DataLayoutError(f"{img_dir}: no images (expected PNG/JPEG/TIFF/DICOM files)")
    train = FileSplit([(p, 0, None) for p in train_images], image_size, False)
    test_dir = _child(root, "test")
    if test_dir is None:
        raise DataLayoutError(f"{root}: no test/ folder")
    test = _bmad_split(test_dir, image_size, need_abnormal=True)
    valid_dir = _child(root, "valid", "val", "validation")
    valid = _bmad_split(valid_dir, image_size, need_abnormal=False) if valid_dir is not None else None
    name = name or root.name
    return TaskData(name, prompt or default_prompt(name), train, test, valid, source=f"bmad:{root}")


def _seeded_split(items: list, fractions: Sequence[float], seed: int) -> list[list]:
    order = np.random.default_rng(seed).permutation(len(items))
    out, start = [], 0
    for frac in fractions:
        n = int(round(frac * len(items)))
        out.append([items[i] for i in order[start:start + n]])
        start += n
    out.append([items[i] for i in order[start:]])
    return out


def load_medianomaly_task(root: str | Path, image_size: int, name: str | None = None, prompt: str | None = None,
                          val_split_ratio: float = 0.1, seed: int = 0) -> TaskData:
    """Load one task in the MedIAnomaly layout: ``images/`` + ``data.json`` (+ optional ``masks/``).

    MedIAnomaly has no validation split; a seeded ``val_split_ratio`` of the normal training images is held
    out as a normal-only validation split (used for thresholds and score normalisation, never for training).
    """
    root = Path(root)
    spec_path, img_dir = root / "data.json", _child(root, "images")
    if not spec_path.is_file() or img_dir is None:
        raise DataLayoutError(f"{root}: MedIAnomaly layout needs images/ and data.json")
    try:
        spec = json.loads(spec_path.read_text())
        train_names, test_normal, test_abnormal = spec["train"]["0"], spec["test"]["0"], spec["test"]["1"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise DataLayoutError(f"{spec_path}: expected {{'train': {{'0': [...]}}, 'test': {{'0': [...], '1': [...]}}}}"
                              f" ({err})") from err

    def paths(names):
        out = []
        for n in names:
            p = img_dir / n
            if not p.is_file():
                raise DataLayoutError(f"{spec_path}: lists {n!r} but {p} does not exist")
            out.append(p)
        return out

    train_paths = paths(train_names)
    if not train_paths:
        raise DataLayoutError(f"{spec_path}: train['0'] is empty")
    mask_dir = _child(root, "masks", "mask", "anomaly_mask", "label")
    abnormal = paths(test_abnormal)
    masks = _pair_masks(abnormal, mask_dir, img_dir, required=True) if mask_dir else [None] * len(abnormal)
    val_paths, train_paths = _seeded_split(train_paths, [val_split_ratio], seed) if val_split_ratio > 0 \
        else ([], train_paths)
    train = FileSplit([(p, 0, None) for p in train_paths], image_size, False)
    test = FileSplit([(p, 0, None) for p in paths(test_normal)] + [(p, 1, m) for p, m in zip(abnormal, masks)],
                     image_size, mask_dir is not None)
    valid = FileSplit([(p, 0, None) for p in val_paths], image_size, False) if val_paths else None
    name = name or root.name
    return TaskData(name, prompt or default_prompt(name), train, test, valid, source=f"medianomaly:{root}")


def load_folder_task(normal_dir: str | Path, abnormal_dir: str | Path, image_size: int, name: str,
                     mask_dir: str | Path | None = None, normal_test_dir: str | Path | None = None,
                     prompt: str | None = None, test_split_ratio: float = 0.2, val_split_ratio: float = 0.1,
                     seed: int = 0) -> TaskData:
    """Load one task from plain folders (anomalib ``Folder`` style).

    ``abnormal_dir`` images are test-only. Normal images are split (seeded) into train / valid / test unless
    ``normal_test_dir`` gives the test normals, in which case only the validation share is held out.
    """
    folders = {"normal_dir": normal_dir, "abnormal_dir": abnormal_dir}
    if normal_test_dir is not None:
        folders["normal_test_dir"] = normal_test_dir
    for key, folder in folders.items():
        if not Path(folder).is_dir():
            raise DataLayoutError(f"{key} {folder}: no such folder")
    normal = _images_in(Path(normal_dir))
    abnormal = _images_in(Path(abnormal_dir))
    for key, imgs in (("normal_dir", normal), ("abnormal_dir", abnormal)):
        if not imgs:
            raise DataLayoutError(f"{key} {folders[key]}: no images")
    if mask_dir is not None and not Path(mask_dir).is_dir():
        raise DataLayoutError(f"mask_dir {mask_dir}: no such folder")
    masks = _pair_masks(abnormal, Path(mask_dir) if mask_dir else None, Path(abnormal_dir), required=True)
    if normal_test_dir is not None:
        test_normal = _images_in(Path(normal_test_dir))
        if not test_normal:
            raise DataLayoutError(f"normal_test_dir {normal_test_dir}: no images")
        val, train = _seeded_split(normal, [val_split_ratio], seed)
    else:
        test_normal, val, train = _seeded_split(normal, [test_split_ratio, val_split_ratio], seed)
    if not train:
        raise DataLayoutError(f"normal_dir {normal_dir}: too few normal images ({len(normal)}) to split")
    has_masks = mask_dir is not None
    return TaskData(
        name, prompt or default_prompt(name),
        FileSplit([(p, 0, None) for p in train], image_size, False),
        FileSplit([(p, 0, None) for p in test_normal] + [(p, 1, m) for p, m in zip(abnormal, masks)],
                  image_size, has_masks),
        FileSplit([(p, 0, None) for p in val], image_size, False) if val else None,
        source=f"folder:{normal_dir}")


def detect_layout(folder: Path) -> str | None:
    """'bmad', 'medianomaly', 'folder' or None."""
    if _child(folder, "train") is not None:
        return "bmad"
    if (folder / "data.json").is_file() and _child(folder, "images") is not None:
        return "medianomaly"
    if _child(folder, "normal") is not None and _child(folder, "abnormal") is not None:
        return "folder"
    return None


def load_task(folder: str | Path, image_size: int, name: str | None = None, prompt: str | None = None,
              seed: int = 0) -> TaskData:
    """Load one task folder, detecting its layout."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataLayoutError(f"{folder}: no such folder")
    layout = detect_layout(folder)
    if layout == "bmad":
        return load_bmad_task(folder, image_size, name, prompt)
    if layout == "medianomaly":
        return load_medianomaly_task(folder, image_size, name, prompt, seed=seed)
    if layout == "folder":
        return load_folder_task(folder / "normal", folder / "abnormal", image_size, name or folder.name,
                                mask_dir=_child(folder, "mask", "masks"), normal_test_dir=_child(folder, "normal_test"),
                                prompt=prompt, seed=seed)
    raise DataLayoutError(f"{folder}: not a recognised layout (BMAD: train/good + test/good,Ungood; "
                          f"MedIAnomaly: images/ + data.json; plain: normal/ + abnormal/)")


def read_tasks_json(root: Path) -> dict[str, str]:
    path = root / "tasks.json"
    if not path.is_file():
        return {}
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataLayoutError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(spec, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in spec.items()):
        raise DataLayoutError(f'{path}: expected {{"<task folder>": "<prompt text>", ...}}')
    return spec


def load_root(root: str | Path, image_size: int, tasks: Sequence[str] | None = None, seed: int = 0) -> MultiTaskData:
    """Load a multi-task root (one sub-folder per task, optional ``tasks.json``) or a single task folder."""
    root = Path(root)
    if not root.is_dir():
        raise DataLayoutError(f"{root}: no such folder")
    prompts = read_tasks_json(root)
    if detect_layout(root) is not None:  # the root is itself one task
        task = load_task(root, image_size, prompt=prompts.get(root.name), seed=seed)
        return MultiTaskData([task], image_size, name=str(root))
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and detect_layout(p) is not None)
    if prompts:
        names = list(prompts)
        for n in names:
            if not (root / n).is_dir():
                raise DataLayoutError(f"{root / 'tasks.json'} names task {n!r} but {root / n} does not exist")
        unnamed = [n for n in found if n not in prompts]
        for n in unnamed:
            if tasks and n not in tasks:
                continue
            print(f"warning: {root / 'tasks.json'} does not name the task folder {root / n}; it is used with "
                  f"the default prompt {default_prompt(n)!r}", file=sys.stderr)
        names += unnamed
    else:
        names = found
    if tasks:
        unknown = [t for t in tasks if t not in names]
        if unknown:
            raise DataLayoutError(f"{root}: no task folder(s) {unknown}; found {names}")
        names = list(tasks)
    if not names:
        raise DataLayoutError(f"{root}: no task folders found (each task needs a BMAD, MedIAnomaly or plain layout)")
    loaded = [load_task(root / n, image_size, name=n, prompt=prompts.get(n), seed=seed) for n in names]
    return MultiTaskData(loaded, image_size, name=str(root))
