"""The one training loop every gradient-trained method uses (and the single pass of memory-bank methods).

What it guarantees: seeded and resumable (a checkpoint is written atomically after every epoch, and an
interrupted run continues from the last finished epoch with the same shuffling and random state); a
non-finite loss stops the run with a message naming the epoch, step and loss term while the last good
checkpoint stays on disk; thresholds are chosen on validation data at the end and stored in the checkpoint;
timings (images per second, the share of time spent waiting for batches, peak memory) go into the history.
A run folder is what it says: it is locked while a ``train`` runs in it, and a resume with other settings than
its config.json is refused unless asked for (``allow_config_change=True``, ``--allow-config-change``).

Under ``torchrun`` (``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` set, ``WORLD_SIZE > 1``) the same loop is
distributed data-parallel training (``medad_edu.training.distributed``): each rank trains on its shard with
``batch_size / world_size`` images per step inside ``DistributedDataParallel``, rank 0 alone locks the folder and
writes checkpoints, config.json (which records ``world_size``), history.json and log lines, and every rank
resumes from the same checkpoint. In a single process none of this runs.

Defined in: notebooks/03_autoencoder.ipynb
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..data import MultiTaskData, load_data
from ..data.batches import iterate_batches, split_tensors
from ..models.base import AnomalyModel
from ..models.factory import make_model
from ..models.registry import get_method, with_default_options
from ..utils import atomic_write_json, peak_memory, seed_everything, to_plain
from . import distributed
from .checkpoint import CHECKPOINT_NAME, CheckpointError, build_model, read_checkpoint, save_checkpoint
from .config import TrainConfig, epochs_for_data, lr_at_epoch
from .thresholds import choose_thresholds


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


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, parameters, grad_clip: float | None) -> None:
    """One gradient step on ``loss``: clear the gradients, backpropagate, clip their norm to ``grad_clip`` (none if
    0 or None), step. Shared by this loop and the reasoning trainers (SFT, GRPO)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
    optimizer.step()


def _duration(seconds: float) -> str:
    """``'42 s'``, ``'12 min'`` or ``'1.5 h'``: a time left, as a person reads it."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _progress(iterable, enabled: bool, desc: str, total: int):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False, file=sys.stderr)


LOCK_NAME = ".lock"
# Settings a resumed run must share with the stored config.json (``epochs`` may only grow); the device and the
# number of decoding threads may change freely, they do not change what is trained. ``sizes`` and ``tasks`` only
# count when ``train`` loads the data itself (``data=None``): given data, they do not decide what is trained.
RESUME_SETTINGS = ("method", "data", "image_size", "sizes", "tasks", "seed", "lr", "lr_schedule", "weight_decay",
                   "batch_size", "grad_clip", "amp", "options", "epochs")
DATA_LOADING_SETTINGS = ("sizes", "tasks")


class RunInUseError(RuntimeError):
    """Another ``train`` holds the run folder's lock."""


def _data_key(spec: str | None) -> str | None:
    """``--data`` as stored in config.json: a folder as its absolute path; ``embedded...`` names as they are."""
    if spec is None:
        return None
    text = str(spec)
    if text.startswith("embedded"):
        return text
    path = Path(text).expanduser()
    return str(path.resolve()) if path.is_dir() else text


def _lock_run(run_dir: Path):
    """Take ``RUN/.lock`` (an exclusive ``flock``, released on exit, even on kill -9); fail at once if held."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no locking
        return None
    path = run_dir / LOCK_NAME
    try:
        fh = open(path, "a+")
    except OSError as err:
        raise type(err)(err.errno, f"cannot write {path}: {err.strerror or err}") from err
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip()
        fh.close()
        who = f" (process {holder})" if holder.isdigit() else ""
        raise RunInUseError(f"{run_dir} is in use by another `train`{who}: wait for it to finish or choose "
                            f"another --out folder") from None
    except OSError:  # a file system without locks (some network mounts): train unlocked
        fh.close()
        return None
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    return fh


def _unlock_run(fh) -> None:
    if fh is None:
        return
    import fcntl

    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    finally:
        fh.close()


def _stored_config(run_dir: Path, state: dict) -> tuple[dict, Path | str]:
    """The run's config.json (what the run says it is), else the configuration inside its checkpoint."""
    path = run_dir / "config.json"
    try:
        stored = json.loads(path.read_text())
        if isinstance(stored, dict) and "method" in stored:
            return stored, path
    except (OSError, ValueError):
        pass
    return dict(state.get("config") or {}), run_dir / CHECKPOINT_NAME


def config_differences(stored: dict, cfg: TrainConfig, data_given: bool = False) -> list[str]:
    """The settings in which ``cfg`` differs from a stored run configuration, one ``"key: old -> new"`` each
    (``epochs`` may grow; options are compared one by one; with ``data_given``, ``sizes`` and ``tasks`` are not
    compared)."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    old = TrainConfig(**{k: v for k, v in stored.items() if k in known and k != "method"},
                      method=stored.get("method", "?")).to_dict()
    old, new = json.loads(json.dumps(old)), json.loads(json.dumps(cfg.to_dict()))  # tuples vs lists
    old["data"], new["data"] = _data_key(old["data"]), _data_key(new["data"])
    diffs = []
    for key in RESUME_SETTINGS:
        a, b = old.get(key), new.get(key)
        if data_given and key in DATA_LOADING_SETTINGS:
            continue
        if key == "epochs":
            # with min_steps, the stored epochs may have grown from the data (epochs_for_data); resolved after loading
            if isinstance(a, int) and isinstance(b, int) and b < a and not new.get("min_steps"):
                diffs.append(f"epochs: {a} -> {b} (epochs may only grow)")
        elif key == "options" and isinstance(a, dict) and isinstance(b, dict):
            # an option the stored run does not name (it predates it) had its default
            a = json.loads(json.dumps(with_default_options(new.get("method", ""), a)))
            b = json.loads(json.dumps(with_default_options(new.get("method", ""), b)))
            diffs += [f"options.{k}: {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}"
                      for k in sorted(set(a) | set(b)) if a.get(k, "(unset)") != b.get(k, "(unset)")]
        elif a != b:
            diffs.append(f"{key}: {a!r} -> {b!r}")
    return diffs


def _existing_run(run_dir: Path, cfg: TrainConfig, resume: bool, allow_config_change: bool,
                  log: Callable[[str], None], data_given: bool) -> tuple[dict | None, list[str]]:
    """The checkpoint of the run in ``run_dir`` (``None`` if there is none) and the allowed setting changes."""
    if not (run_dir / CHECKPOINT_NAME).exists():
        return None, []
    if not resume:
        raise CheckpointError(f"{run_dir} already holds a checkpoint; choose a new --out or allow resuming")
    state = read_checkpoint(run_dir)
    if state["method"] != cfg.method:
        raise CheckpointError(f"{run_dir} holds a checkpoint of a different run (method {state['method']!r}, "
                              f"not {cfg.method!r}); choose a new --out folder")
    stored, where = _stored_config(run_dir, state)
    diffs = config_differences(stored, cfg, data_given)
    if diffs and not allow_config_change:
        raise CheckpointError(f"{run_dir} holds a different run: the settings differ from {where} "
                              f"({'; '.join(diffs)}); choose a new --out folder, or pass --allow-config-change "
                              f"(train(..., allow_config_change=True)) to continue this run with the new settings")
    if diffs:
        log(f"{run_dir}: continuing with changed settings ({'; '.join(diffs)})")
    return state, diffs


def train(cfg: TrainConfig, run_dir: str | Path | None = None, data: MultiTaskData | None = None,
          progress: bool = True, resume: bool = True, log: Callable[[str], None] | None = None,
          allow_config_change: bool = False, bar: bool = True,
          time_lines_every: float | None = None) -> TrainResult:
    """Train ``cfg.method`` on ``data`` (default: ``load_data(cfg.data)``), checkpointing into ``run_dir``.

    ``run_dir=None`` trains without writing anything (handy in notebooks and tests). With a ``run_dir``:

    - the folder is locked (``RUN/.lock``) while training; a second ``train`` on it fails at once;
    - a finished run with the same settings is loaded, an unfinished one resumed; a run whose stored
      ``config.json`` differs (seed, lr, batch size, data, image size, options, method, fewer epochs...; see
      ``RESUME_SETTINGS``) is
      refused with the list of differences unless ``allow_config_change=True`` (the method and the model's
      constructor arguments can never change: the weights would not fit);
    - the folder is created only once the data has loaded (every training and validation image decoded);
    - a ``--data`` folder is stored in config.json as its absolute path.

    ``progress``: log an epoch line (loss, images/s) every ``epochs // 5`` epochs, and draw a tqdm bar unless
    ``bar=False``; with ``time_lines_every`` (seconds), also log a finished epoch's time and the time left
    whenever the last line is that old (a long run in a log file, e.g. ``medad-edu bench``, then shows life).
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    info = distributed.dist_info()  # a single process unless started by torchrun (WORLD_SIZE > 1)
    if info.enabled:
        if get_method(cfg.method).uses_gradients:
            distributed.check_batch_size(cfg.batch_size, info)
        if not info.is_main:  # rank 0 alone logs and draws the progress bar
            progress, log = False, (lambda msg: None)
    if cfg.data is not None and _data_key(cfg.data) != cfg.data:
        cfg = dataclasses.replace(cfg, data=_data_key(cfg.data))
    run_dir = Path(run_dir) if run_dir is not None else None
    with contextlib.ExitStack() as held:
        state, changes = None, []
        if run_dir is not None and run_dir.exists():  # an existing run: lock and check it before loading data
            if not run_dir.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, f"cannot use {run_dir} as a run folder: it is a file")
            if info.is_main:  # the other ranks of a distributed run only read the folder
                held.callback(_unlock_run, _lock_run(run_dir))
            state, changes = _existing_run(run_dir, cfg, resume, allow_config_change, log, data is not None)
        return _train(cfg, run_dir, data, progress, log, held, state, changes, resume, allow_config_change, bar,
                      time_lines_every, info)


def _train(cfg: TrainConfig, run_dir: Path | None, data: MultiTaskData | None, progress: bool,
           log: Callable[[str], None], held: contextlib.ExitStack, state: dict | None, changes: list[str],
           resume: bool, allow_config_change: bool, bar: bool = True,
           time_lines_every: float | None = None,
           info: distributed.DistInfo = distributed.DistInfo()) -> TrainResult:
    data_given = data is not None
    seed_everything(cfg.seed)  # the same on every rank: the same initial weights and start-of-training hooks
    device = distributed.device_for(cfg.device, info)  # get_device(cfg.device) in a single process
    held.enter_context(distributed.process_group(info, device))  # nothing in a single process
    if data is None:
        data = load_data(cfg.data, image_size=cfg.image_size, sizes=cfg.sizes, tasks=cfg.tasks,
                         seed=0)  # the data is fixed across training seeds
    if data.image_size != cfg.image_size:
        raise ValueError(f"data is {data.image_size} px but the configuration asks for {cfg.image_size} px")
    cls = get_method(cfg.method)
    # Decode every training and validation image now (cached on ``data``; no random numbers are drawn), so that
    # a broken file stops the run before a run folder is made.
    tensors = split_tensors(data, "train", num_workers=cfg.num_workers)
    if cls.uses_gradients and cfg.min_steps:
        epochs = epochs_for_data(cfg, len(tensors))
        if epochs != cfg.epochs:
            log(f"{cfg.method}: {epochs} epochs instead of {cfg.epochs}: at least {cfg.min_steps} optimizer steps "
                f"over {len(tensors)} training images (min_steps)")
        if state is not None:  # a stored run that went further (its epochs may only grow) keeps its epochs
            epochs = max(epochs, int(state["config"].get("epochs") or 0))
        cfg = dataclasses.replace(cfg, epochs=epochs)
    if any(t.valid is not None and len(t.valid) for t in data.tasks):
        split_tensors(data, "valid", num_workers=cfg.num_workers)
    if run_dir is not None and not run_dir.is_dir() and info.is_main:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise type(err)(err.errno, f"cannot create the run folder {run_dir}: {err.strerror or err}") from err
        held.callback(_unlock_run, _lock_run(run_dir))
        state, changes = _existing_run(run_dir, cfg, resume, allow_config_change, log,  # another process's?
                                       data_given)

    model = make_model(cfg.method, cfg.image_size, data.task_names, data.prompts, **cfg.options).to(device)
    channels_last = bool(cfg.channels_last) and device.type == "cuda"
    if channels_last:  # 4-d weights in NHWC; the Parameter objects stay the same
        model = model.to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = (torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
                 if cls.uses_gradients and params else None)
    start_epoch, history = 0, []
    config_changes: list = []
    run_config = {**cfg.to_dict(), "world_size": info.world_size}  # config.json and the checkpoint's config

    if run_dir is not None:
        if state is not None:
            # arguments added after the checkpoint was written had their defaults
            if (to_plain(with_default_options(cfg.method, state["init_args"]))
                    != to_plain(with_default_options(cfg.method, model.init_args()))):
                raise CheckpointError(f"{run_dir} holds a checkpoint of a different run (method {state['method']!r}, "
                                      f"other model arguments); choose a new --out folder")
            config_changes = list(state["extra"].get("config_changes", []))
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
            if changes:
                config_changes.append({"after_epoch": start_epoch, "changes": changes})
            log(f"{run_dir}: resuming after epoch {start_epoch} of {cfg.epochs}")
            before = state["config"].get("world_size", 1)
            if before != info.world_size:
                log(f"{run_dir}: trained so far by {before} process(es), now by {info.world_size}; the global batch "
                    f"stays {cfg.batch_size}")
        if info.is_main:
            atomic_write_json(run_dir / "config.json", run_config)

    model.on_train_start(data, device)
    use_amp = bool(cfg.amp) and device.type == "cuda"
    epochs = range(start_epoch, cfg.epochs) if cls.uses_gradients else range(start_epoch, min(1, cfg.epochs))
    # Data-parallel only for gradient training: a method fitted without gradients (a memory bank) makes its one
    # cheap pass over all the training images on every rank, which then all hold the same model.
    sharded = info.enabled and cls.uses_gradients and optimizer is not None
    step = _training_step(model, cfg, device, info, sharded)  # None: call model.training_loss (one process)
    if sharded:
        # Each rank draws its augmentations from its own stream, continued exactly on resume (the states of all
        # ranks are in the checkpoint); with another number of ranks, or from a single-process checkpoint, the
        # streams restart from (seed, rank, epoch).
        rank_states = (state or {}).get("extra", {}).get("torch_rng_ranks")
        if isinstance(rank_states, list) and len(rank_states) == info.world_size:
            torch.set_rng_state(rank_states[info.rank])
            if device.type == "cuda":
                torch.cuda.manual_seed(distributed.rank_seed(cfg.seed, info.rank, start_epoch))
        else:
            torch.manual_seed(distributed.rank_seed(cfg.seed, info.rank, start_epoch))

    def checkpoint(epoch: int, complete: bool, thresholds=None, rank_states=None):
        if run_dir is not None:
            extra = {"torch_rng": torch.get_rng_state()}
            if info.enabled:  # collective: every rank takes part, rank 0 writes
                extra["torch_rng_ranks"] = (rank_states if rank_states is not None
                                            else distributed.all_gather_object(torch.get_rng_state()))
            if config_changes:
                extra["config_changes"] = config_changes
            if info.is_main:
                save_checkpoint(run_dir, model, optimizer, epoch, run_config, history, complete, thresholds,
                                extra=extra)

    last_line = [time.perf_counter()]  # when the last progress line was logged
    if progress and time_lines_every is not None:
        user_log = log

        def log(msg: str) -> None:  # noqa: F811 - the same log, remembering when it last spoke
            last_line[0] = time.perf_counter()
            user_log(msg)

    loop_start = time.perf_counter()
    for done, epoch in enumerate(_progress(epochs, progress and bar, f"{cfg.method}", total=len(epochs)), 1):
        model.train()
        if optimizer is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr_at_epoch(cfg, epoch)
        # The shuffling depends on (seed, epoch) only, so a resumed run sees the same batches.
        sums: dict[str, float] = {}
        n_images, steps, wait = 0, 0, 0.0
        t0 = time.perf_counter()
        if sharded:  # this rank's shard of the same permutation; together the ranks' batches are the global ones
            order = distributed.ShardSampler(len(tensors), cfg.seed, info.rank, info.world_size).set_epoch(epoch)
            batches = iterate_batches(tensors, cfg.batch_size // info.world_size, order=order.indices(),
                                      device=device, drop_last=True)
        else:
            gen = distributed.shuffle_generator(cfg.seed, epoch)
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
                if channels_last:
                    batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                    losses = model.training_loss(batch) if step is None else step(batch)
                loss = losses["loss"]
                bad = [k for k, v in losses.items() if torch.is_tensor(v) and not torch.isfinite(v).all()]
                if bad:
                    where = f" (last good checkpoint: {run_dir / CHECKPOINT_NAME})" if run_dir else ""
                    raise FloatingPointError(
                        f"{cfg.method}: non-finite loss term(s) {bad} at epoch {epoch + 1}, step {steps + 1}"
                        f"{where}; try a lower --lr (now {cfg.lr}) or check the input images for NaN")
                optimizer_step(loss, optimizer, params, cfg.grad_clip)
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
            n_images += len(batch["image"])
            steps += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        if sharded:  # the epoch's numbers over all ranks: images in total, losses averaged over the ranks
            keys = list(sums)
            totals = distributed.all_reduce_sum([float(n_images), *(sums[k] for k in keys)], device)
            n_images = int(totals[0])
            sums = {k: v / info.world_size for k, v in zip(keys, totals[1:])}
        entry = {"epoch": epoch + 1, "images": n_images, "seconds": seconds, "data_wait_seconds": wait,
                 "images_per_second": n_images / max(seconds - wait, 1e-9),
                 "peak_memory_mb": peak_memory(device)[0],
                 **{k: v / max(steps, 1) for k, v in sums.items()}}
        if info.enabled:  # seconds, waiting and memory are rank 0's; images and losses are global
            entry["world_size"] = info.world_size
        history.append(entry)
        if progress and cls.uses_gradients and (epoch + 1 == cfg.epochs or (epoch + 1) % max(1, cfg.epochs // 5) == 0):
            log(f"{cfg.method} epoch {epoch + 1}/{cfg.epochs}: loss {entry.get('loss', math.nan):.4f}, "
                f"{entry['images_per_second']:.0f} img/s")
        checkpoint(epoch + 1, complete=False)
        now = time.perf_counter()
        if (progress and time_lines_every is not None and done < len(epochs)
                and now - last_line[0] >= time_lines_every):
            per = (now - loop_start) / done
            log(f"{cfg.method} epoch {epoch + 1}/{cfg.epochs}: {per:.1f} s/epoch, about "
                f"{_duration(per * (len(epochs) - done))} left")

    rank_states = None
    if info.enabled:
        # End-of-training statistics (on_train_end: score normalisation, memory-bank coresets; the thresholds) are
        # computed on every rank identically, on the full training / validation data: they are cheap beside
        # training and need no gathering. Identical inputs first: rank 0's weights and buffers (BatchNorm running
        # statistics were last updated with each rank's own batch) and rank 0's random state.
        rank_states = distributed.all_gather_object(torch.get_rng_state()) if run_dir is not None else None
        distributed.broadcast_module(model)
        torch.set_rng_state(distributed.broadcast_object(torch.get_rng_state()))
    model.eval()
    with torch.no_grad():
        model.on_train_end(data, device)
    thresholds = choose_thresholds(model, data, device, batch_size=cfg.batch_size)
    checkpoint(len(history) if not cls.uses_gradients else max(cfg.epochs, len(history)), complete=True,
               thresholds=thresholds, rank_states=rank_states)
    if run_dir is not None and info.is_main:
        atomic_write_json(run_dir / "history.json", history)
    distributed.barrier(device)  # on every rank, train() returns once the run folder is complete
    return TrainResult(model, run_dir, history, thresholds, data)


def _training_step(model: AnomalyModel, cfg: TrainConfig, device: torch.device, info: distributed.DistInfo,
                   sharded: bool):
    """The module that runs ``model.training_loss`` under DistributedDataParallel and/or torch.compile, or
    ``None`` (a single process without --compile calls ``model.training_loss`` itself)."""
    if not (sharded or (cfg.compile and model.uses_gradients)):
        return None
    if sharded and cfg.sync_bn and device.type == "cuda":  # BatchNorm statistics over the global batch
        torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # in place below the top module; same Parameters
    step: torch.nn.Module = distributed.LossModule(model)
    if sharded:
        import warnings

        from torch.nn.parallel import DistributedDataParallel

        # A convolution with one input channel (the grey image) gets a weight gradient [C, 1, k, k] whose strides
        # read as channels-last; DDP copies it into its bucket and warns once per process. Harmless (a few KB).
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        step = DistributedDataParallel(step, device_ids=[device.index] if device.type == "cuda" else None,
                                       find_unused_parameters=distributed.find_unused_parameters(model))
    if cfg.compile:
        step = torch.compile(step)
    return step


def load_or_train(cfg: TrainConfig, run_dir: str | Path, data: MultiTaskData | None = None,
                  progress: bool = False) -> TrainResult:
    """Notebook helper (the UvA way): load the run's checkpoint if it is complete, else train (and resume)."""
    return train(cfg, run_dir, data=data, progress=progress, resume=True, log=lambda m: None)


__all__ = ["RESUME_SETTINGS", "RunInUseError", "TrainResult", "build_model", "config_differences", "load_or_train",
           "optimizer_step", "train"]
