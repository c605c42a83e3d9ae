"""Distributed data-parallel training under ``torchrun``: who this process is, the process group, each rank's shard.

``medad-edu train`` runs unchanged under ``torchrun --nproc-per-node N [--nnodes M ...]``: torchrun starts one
process per GPU (or per CPU worker) and sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; the trainer then

- joins the process group (NCCL on CUDA, gloo on the CPU) and wraps the training step in PyTorch's
  ``DistributedDataParallel`` (gradients averaged over ranks after every step);
- gives every rank its shard of every epoch (:class:`ShardSampler`: the same seeded permutation on every rank,
  rank ``r`` keeps positions ``r, r + W, ...``, no image twice), with a per-rank batch of
  ``batch_size / world_size``, so the global batch stays the configured one;
- writes checkpoints, ``config.json``, ``history.json``, log lines and the progress bar on rank 0 only; every rank
  resumes from the same checkpoint.

Without those variables (or with ``WORLD_SIZE=1``) nothing here does anything, and training is the plain
single-process loop, bit for bit.

Defined in: book/scaling.md
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a distributed run (``world_size == 1``: a plain single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text.strip() == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable {name}={text!r} is not a whole number") from None


def dist_info() -> DistInfo:
    """Rank, world size and local rank: from an initialised process group, else from torchrun's environment
    variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), else a single process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        return DistInfo(rank, world, _env_int("LOCAL_RANK", rank))
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank} and WORLD_SIZE={world} do not fit (need 0 <= RANK < WORLD_SIZE)")
    if world > 1 and not dist.is_available():
        raise RuntimeError(f"WORLD_SIZE={world} but this PyTorch build has no torch.distributed")
    return DistInfo(rank, world, _env_int("LOCAL_RANK", rank))


def check_batch_size(batch_size: int, info: DistInfo) -> None:
    """The global batch is split evenly over the ranks; refuse a batch size that does not divide."""
    if info.enabled and batch_size % info.world_size:
        raise ValueError(f"batch size {batch_size} does not divide over {info.world_size} processes (each takes "
                         f"batch_size / world_size images per step); choose a multiple of {info.world_size}")


def device_for(name: str, info: DistInfo) -> torch.device:
    """The device of this rank: ``get_device(name)``, except that under torchrun a CUDA rank takes the GPU of its
    ``LOCAL_RANK`` (one GPU per process)."""
    from ..utils import get_device

    device = get_device(name)
    if not info.enabled:
        return device
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if info.local_rank >= count:
            raise RuntimeError(f"LOCAL_RANK {info.local_rank} but this node has {count} CUDA device(s): start at "
                               f"most {count} processes per node (torchrun --nproc-per-node {count})")
        return torch.device("cuda", info.local_rank)
    if device.type != "cpu":
        raise ValueError(f"distributed training runs on CUDA (NCCL) or on the CPU (gloo), not on {device.type!r}; "
                         f"pass --device cpu or --device cuda")
    return device


@contextlib.contextmanager
def process_group(info: DistInfo, device: torch.device) -> Iterator[None]:
    """Join the process group for the duration (NCCL on CUDA, gloo on the CPU; rendezvous from torchrun's
    ``MASTER_ADDR`` / ``MASTER_PORT``) and leave it afterwards. Nothing for a single process, and nothing either
    when the caller already initialised a group (it stays the caller's to destroy)."""
    import torch.distributed as dist

    if not info.enabled or dist.is_initialized():
        yield
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _enabled() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier(device: torch.device | None = None) -> None:
    import torch.distributed as dist

    if not _enabled():
        return
    if device is not None and device.type == "cuda" and dist.get_backend() == "nccl":
        dist.barrier(device_ids=[device.index])
    else:
        dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sums over all ranks of a few numbers (float64, one collective)."""
    import torch.distributed as dist

    if not _enabled():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_gather_object(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (small picklable objects, e.g. RNG states)."""
    import torch.distributed as dist

    if not _enabled():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    import torch.distributed as dist

    if not _enabled():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


@torch.no_grad()
def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers into every rank's ``module`` in place (same shapes assumed).

    After the last step the weights agree (DistributedDataParallel averages the gradients), but BatchNorm's
    running statistics were last updated with each rank's own batch: this makes them rank 0's everywhere.
    """
    import torch.distributed as dist

    if not _enabled():
        return
    for tensor in [*module.parameters(), *module.buffers()]:
        if not tensor.is_contiguous():
            tmp = tensor.contiguous()
            dist.broadcast(tmp, src=src)
            tensor.copy_(tmp)
        else:
            dist.broadcast(tensor, src=src)


def find_unused_parameters(model: nn.Module) -> bool:
    """Whether ``DistributedDataParallel`` must look for parameters without a gradient after every forward: the
    model says so (``AnomalyModel.ddp_find_unused_parameters``; MTL-MAD's sparse experts). All-in-One's experts are
    one grouped convolution that always runs all of them, so it, like every other method, skips the search (checked
    under 2-process gloo with the quick settings)."""
    return bool(getattr(model, "ddp_find_unused_parameters", False))


class LossModule(nn.Module):
    """The training step as a module: ``forward(batch) = model.training_loss(batch)``.

    ``DistributedDataParallel`` and ``torch.compile`` wrap a module's ``forward``; the trainer's step is
    ``training_loss``, so this is what they wrap (gradient synchronisation needs the forward to go through DDP).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.model.training_loss(batch)


def shuffle_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of epoch ``epoch``'s shuffling: it depends on (seed, epoch) only, so a resumed run and every
    rank of a distributed run draw the same permutation."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def rank_seed(seed: int, rank: int, epoch: int = 0) -> int:
    """The seed of rank ``rank``'s own random stream (augmentations, noise, dropout) from epoch ``epoch`` on: ranks
    draw different random numbers for their different images, as one process would for one whole batch."""
    return (seed * 1_000_003 + (rank + 1) * 7_919 + epoch * 104_729) % (2 ** 63)


class ShardSampler:
    """A seeded shard of ``range(n)`` per rank and epoch (``torch.utils.data.DistributedSampler`` semantics).

    Every rank draws the same permutation of ``range(n)`` from ``shuffle_generator(seed, epoch)`` (the one a
    single process draws), drops its last ``n % world_size`` entries (no image twice, every rank as many) and
    keeps the positions ``rank, rank + world_size, ...``. With these strided shards, the k-th per-rank batch of
    ``batch_size / world_size`` images of all ranks together is exactly the single process's k-th batch of
    ``batch_size`` images: the same global batches, in the same order.
    """

    def __init__(self, n: int, seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size; got rank {rank}, world_size {world_size}")
        self.n, self.seed, self.rank, self.world_size, self.shuffle = int(n), int(seed), rank, world_size, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> "ShardSampler":
        self.epoch = int(epoch)
        return self

    def indices(self) -> torch.Tensor:
        order = (torch.randperm(self.n, generator=shuffle_generator(self.seed, self.epoch)) if self.shuffle
                 else torch.arange(self.n))
        order = order[:self.n - self.n % self.world_size]
        return order[self.rank::self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.n // self.world_size


__all__ = ["DistInfo", "LossModule", "ShardSampler", "all_gather_object", "all_reduce_sum",
           "barrier", "broadcast_module", "broadcast_object", "check_batch_size", "device_for", "dist_info",
           "find_unused_parameters", "process_group", "rank_seed", "shuffle_generator"]
