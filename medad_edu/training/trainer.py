"""The one training loop every gradient-trained method uses (and the single pass of memory-bank methods).

What it guarantees: seeded and resumable (a checkpoint is written atomically after every epoch, and an
interrupted run continues from the last finished epoch with the same shuffling and random state); a
non-finite loss stops the run with a message naming the epoch, step and loss term while the last good
checkpoint stays on disk; thresholds are chosen on validation data at the end and stored in the checkpoint;
timings (images per second, the share of time spent waiting for batches, peak memory) go into the history.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..data import MultiTaskData, load_data
from ..data.batches import iterate_batches, split_tensors
from ..models.base import AnomalyModel
from ..models.registry import get_method
from ..utils import atomic_write_json, get_device, seed_everything
from .checkpoint import CHECKPOINT_NAME, CheckpointError, build_model, read_checkpoint, save_checkpoint
from .config import TrainConfig


@dataclass
class TrainResult:
    model: AnomalyModel
    run_dir: Path
    history: list[dict]
    thresholds: dict[str, float]
    data: MultiTaskData

    @property
    def train_seconds(self) -> float:
        return float(sum(h["seconds"] for h in self.history))

    @property
    def images_per_second(self) -> float:
        imgs = sum(h["images"] for h in self.history)
        compute = sum(h["seconds"] - h["data_wait_seconds"] for h in self.history)
        return imgs / compute if compute > 0 else float("nan")


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    except Exception:  # pragma: no cover - non-Unix
        return float("nan")


def _progress(iterable, enabled: bool, desc: str, total: int):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False, file=sys.stderr)


def train(cfg: TrainConfig, run_dir: str | Path | None = None, data: MultiTaskData | None = None,
          progress: bool = True, resume: bool = True, log: Callable[[str], None] | None = None) -> TrainResult:
    """Train ``cfg.method`` on ``data`` (default: ``load_data(cfg.data)``), checkpointing into ``run_dir``.

    ``run_dir=None`` trains without writing anything (handy in notebooks and tests).
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    seed_everything(cfg.seed)
    device = get_device(cfg.device)
    if data is None:
        data = load_data(cfg.data, image_size=cfg.image_size, sizes=cfg.sizes, tasks=cfg.tasks,
                         seed=0)  # the data is fixed across training seeds
    if data.image_size != cfg.image_size:
        raise ValueError(f"data is {data.image_size} px but the configuration asks for {cfg.image_size} px")
    cls = get_method(cfg.method)
    run_dir = Path(run_dir) if run_dir is not None else None

    model = cls(cfg.image_size, data.task_names, data.prompts, **cfg.options).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = (torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
                 if cls.uses_gradients and params else None)
    start_epoch, history = 0, []

    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt_path = run_dir / CHECKPOINT_NAME
        if ckpt_path.exists():
            if not resume:
                raise CheckpointError(f"{run_dir} already holds a checkpoint; choose a new --out or allow resuming")
            state = read_checkpoint(run_dir)
            if state["method"] != cfg.method or state["init_args"] != model.init_args():
                raise CheckpointError(f"{run_dir} holds a checkpoint of a different run "
                                      f"(method {state['method']!r}); choose a new --out folder")
            if state["complete"] and (state["epoch"] >= cfg.epochs or not cls.uses_gradients):
                log(f"{run_dir}: already trained ({state['epoch']} epochs); loading it")
                model.load_state_dict(state["model_state"])
                model.eval()
                return TrainResult(model, run_dir, state["history"], state["thresholds"], data)
            model.load_state_dict(state["model_state"])
            if optimizer is not None and state["optimizer_state"] is not None:
                optimizer.load_state_dict(state["optimizer_state"])
            start_epoch, history = state["epoch"], list(state["history"])
            if "torch_rng" in state["extra"]:
                torch.set_rng_state(state["extra"]["torch_rng"])
            log(f"{run_dir}: resuming after epoch {start_epoch} of {cfg.epochs}")
        atomic_write_json(run_dir / "config.json", cfg.to_dict())

    model.on_train_start(data, device)
    tensors = split_tensors(data, "train", num_workers=cfg.num_workers)
    use_amp = bool(cfg.amp) and device.type == "cuda"
    epochs = range(start_epoch, cfg.epochs) if cls.uses_gradients else range(start_epoch, min(1, cfg.epochs))

    def checkpoint(epoch: int, complete: bool, thresholds=None):
        if run_dir is not None:
            save_checkpoint(run_dir, model, optimizer, epoch, cfg.to_dict(), history, complete, thresholds,
                            extra={"torch_rng": torch.get_rng_state()})

    for epoch in _progress(epochs, progress, f"{cfg.method}", total=len(epochs)):
        model.train()
        # The shuffling depends on (seed, epoch) only, so a resumed run sees the same batches.
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        sums: dict[str, float] = {}
        n_images, steps, wait = 0, 0, 0.0
        t0 = time.perf_counter()
        batches = iterate_batches(tensors, cfg.batch_size, shuffle=True, generator=gen, device=device,
                                  drop_last=cls.uses_gradients)
        while True:
            tw = time.perf_counter()
            batch = next(batches, None)
            wait += time.perf_counter() - tw
            if batch is None:
                break
            if not cls.uses_gradients:
                with torch.no_grad():
                    model.fit_batch(batch)
            else:
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                    losses = model.training_loss(batch)
                loss = losses["loss"]
                bad = [k for k, v in losses.items() if torch.is_tensor(v) and not torch.isfinite(v).all()]
                if bad:
                    where = f" (last good checkpoint: {run_dir / CHECKPOINT_NAME})" if run_dir else ""
                    raise FloatingPointError(
                        f"{cfg.method}: non-finite loss term(s) {bad} at epoch {epoch + 1}, step {steps + 1}"
                        f"{where}; try a lower --lr (now {cfg.lr}) or check the input images for NaN")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                optimizer.step()
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
            n_images += len(batch["image"])
            steps += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        entry = {"epoch": epoch + 1, "images": n_images, "seconds": seconds, "data_wait_seconds": wait,
                 "images_per_second": n_images / max(seconds - wait, 1e-9),
                 "peak_memory_mb": _peak_memory_mb(device),
                 **{k: v / max(steps, 1) for k, v in sums.items()}}
        history.append(entry)
        if progress and cls.uses_gradients and (epoch + 1 == cfg.epochs or (epoch + 1) % max(1, cfg.epochs // 5) == 0):
            log(f"{cfg.method} epoch {epoch + 1}/{cfg.epochs}: loss {entry.get('loss', math.nan):.4f}, "
                f"{entry['images_per_second']:.0f} img/s")
        checkpoint(epoch + 1, complete=False)

    model.eval()
    with torch.no_grad():
        model.on_train_end(data, device)
    from ..evaluation.thresholds import choose_thresholds

    thresholds = choose_thresholds(model, data, device, batch_size=cfg.batch_size)
    checkpoint(len(history) if not cls.uses_gradients else cfg.epochs, complete=True, thresholds=thresholds)
    if run_dir is not None:
        atomic_write_json(run_dir / "history.json", history)
    return TrainResult(model, run_dir, history, thresholds, data)


def load_or_train(cfg: TrainConfig, run_dir: str | Path, data: MultiTaskData | None = None,
                  progress: bool = False) -> TrainResult:
    """Notebook helper (the UvA way): load the run's checkpoint if it is complete, else train (and resume)."""
    return train(cfg, run_dir, data=data, progress=progress, resume=True, log=lambda m: None)


__all__ = ["TrainResult", "build_model", "load_or_train", "train"]
