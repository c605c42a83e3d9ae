"""Turning a split of every task into tensors, and iterating over shuffled batches.

Splits are decoded once (in parallel for files) into one tensor per split, all tasks concatenated, with a
``task_id`` per image. Batches are then index slices of those tensors: no per-sample Python work in the
training loop, so data loading is never the bottleneck (the trainer measures the share of time spent waiting
for batches). On CUDA the tensors are pinned and copied with ``non_blocking=True``.

Defined in: notebooks/01_data.ipynb
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from .tasks import MultiTaskData


@dataclass
class SplitTensors:
    images: torch.Tensor  # [N, 1, S, S] float32 in [0, 1]
    labels: torch.Tensor  # [N] int64
    masks: torch.Tensor  # [N, 1, S, S] float32 in {0, 1} (zeros where the set has no masks)
    has_mask: torch.Tensor  # [N] bool: whether this image's task provides pixel masks
    task_ids: torch.Tensor  # [N] int64, index into data.tasks
    names: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, index: torch.Tensor | np.ndarray) -> "SplitTensors":
        index = torch.as_tensor(index, dtype=torch.long)
        return SplitTensors(self.images[index], self.labels[index], self.masks[index], self.has_mask[index],
                            self.task_ids[index], [self.names[i] for i in index.tolist()])


def _split_arrays(split, num_workers: int):
    if num_workers > 1 and not hasattr(split, "images"):  # file-backed: decode in parallel (PIL releases the GIL)
        with ThreadPoolExecutor(num_workers) as pool:
            items = list(pool.map(split.get, range(len(split))))
        images = np.stack([it[0] for it in items])
        labels = np.asarray([it[1] for it in items], np.int64)
        masks = np.stack([it[2] for it in items]) if split.has_masks else None
        return images, labels, masks
    return split.arrays()


def split_tensors(data: MultiTaskData, split: str, num_workers: int = 0) -> SplitTensors:
    """All tasks' ``split`` ('train', 'valid' or 'test') as one ``SplitTensors`` (cached on ``data``)."""
    if split not in ("train", "valid", "test"):
        raise ValueError(f"split must be 'train', 'valid' or 'test'; got {split!r}")
    cache = data.__dict__.setdefault("_tensor_cache", {})
    if split in cache:
        return cache[split]
    parts = []
    for tid, task in enumerate(data.tasks):
        sp = getattr(task, split)
        if sp is None or len(sp) == 0:
            continue
        images, labels, masks = _split_arrays(sp, num_workers)
        if images.shape[1:] != (data.image_size, data.image_size):
            raise ValueError(f"task {task.name!r} {split}: images are {images.shape[1:]}, expected "
                             f"{data.image_size}x{data.image_size}")
        n = len(labels)
        parts.append((images, labels, masks if masks is not None else np.zeros_like(images, np.uint8),
                      np.full(n, masks is not None), np.full(n, tid), [f"{task.name}/{nm}" for nm in sp.names]))
    if not parts:
        raise ValueError(f"{data.name}: no task has a {split!r} split")
    out = SplitTensors(
        images=torch.from_numpy(np.concatenate([p[0] for p in parts]).astype(np.float32)).unsqueeze(1),
        labels=torch.from_numpy(np.concatenate([p[1] for p in parts])).long(),
        masks=torch.from_numpy(np.concatenate([p[2] for p in parts]).astype(np.float32)).unsqueeze(1),
        has_mask=torch.from_numpy(np.concatenate([p[3] for p in parts])),
        task_ids=torch.from_numpy(np.concatenate([p[4] for p in parts])).long(),
        names=[nm for p in parts for nm in p[5]])
    cache[split] = out
    return out


def count_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    """How many batches ``iterate_batches`` yields over ``n`` images: ceil(n / batch_size), or with ``drop_last``
    the full batches only (one batch of all the images when there are fewer than ``batch_size``)."""
    return n // batch_size if (drop_last and n >= batch_size) else -(-n // batch_size)


def iterate_batches(tensors: SplitTensors, batch_size: int, shuffle: bool = False,
                    generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                    drop_last: bool = False, order: torch.Tensor | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Yield batches ``{"image", "label", "mask", "has_mask", "task_id", "index"}`` on ``device``.

    ``order``: the indices to visit, in this order (e.g. one rank's shard of a distributed epoch,
    ``medad_edu.training.distributed.ShardSampler``); default all of them, shuffled with ``generator`` if
    ``shuffle``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    if order is None:
        n = len(tensors)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    else:
        order = torch.as_tensor(order, dtype=torch.long)
        n = len(order)
    device = torch.device(device)
    pin = device.type == "cuda"
    for start in range(0, count_batches(n, batch_size, drop_last) * batch_size, batch_size):
        idx = order[start:start + batch_size]
        batch = {"image": tensors.images[idx], "label": tensors.labels[idx], "mask": tensors.masks[idx],
                 "has_mask": tensors.has_mask[idx], "task_id": tensors.task_ids[idx], "index": idx}
        if device.type != "cpu":
            batch = {k: (v.pin_memory() if pin else v).to(device, non_blocking=pin) for k, v in batch.items()}
        yield batch
