"""``medad-edu bench``: train and evaluate several methods side by side, under the same data and budget.

For every method and seed the runner trains with the method's ``quick`` or ``paper`` configuration (the same
image size, data, splits and seeds for all), evaluates on the test split, and writes into ``OUT``:

- ``runs/<method>-s<seed>/``: the run folder (checkpoint, history) plus ``bench_result.json`` (metrics in the
  ``medad-edu evaluate`` schema, timings) and ``predictions.npz`` (test scores, and the maps of a few gallery
  images). A run whose ``bench_result.json`` exists with the same settings is **not** redone, and an
  interrupted training resumes from its last finished epoch (the trainer's checkpoints): running the same
  command again picks up where it stopped;
- ``results.json``: every run (schema below) with the hardware, versions and bench settings;
- ``results.md``: the tables, generated from ``results.json`` alone (:func:`render_markdown`), also printed:
  All-in-One's Table 1 (AUC / F1 / ACC per task and mean, %), BMAD's (image AUROC, pixel AUROC, AUPRO as
  mean +- std over seeds), image AUROC per task, and the timing table naming the hardware;
- ``figures/``: score histograms (normal vs abnormal, per method and task) and a gallery of anomaly maps side by
  side per method.

``results.json`` schema (``schema_version`` 1)::

    {"schema_version": 1, "created": ISO time, "config": "quick", "data": {"spec", "name", "tasks", "image_size",
     "sizes", "n_test": {task: [n_normal, n_abnormal]}}, "methods": [...], "seeds": {method: [...]},
     "hardware": str, "device": str, "torch_threads": int, "versions": {...}, "note": str,
     "bench_wall_seconds": float (the last invocation), "runs": [
        {"method", "seed", "run_dir", "spec": {...}, "evaluation": {evaluate schema},
         "timing": {"train_seconds", "train_cpu_seconds", "epochs", "train_images", "train_images_per_second",
                    "data_wait_share", "inference_seconds", "inference_images_per_second", "peak_memory_mb",
                    "peak_memory_kind"}}, ...],
     "failures": [{"method", "seed", "error"}]}

Explained in notebooks/41_results.ipynb (the results chapter); the GPU commands are in book/real_benchmarks.md.

Example::

    from medad_edu.evaluation.bench import run_bench
    results = run_bench(["ae", "patchcore"], data="embedded", config="quick", seeds=[0], out_dir="bench_out",
                        sizes="tiny", epochs=2)
    print(open("bench_out/results.md").read())
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import re
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..data import MultiTaskData, load_data
from ..data.batches import split_tensors
from ..utils import atomic_write_bytes, atomic_write_json, get_device, versions
from .evaluate import summarise
from .predict import predict_split

SCHEMA_VERSION = 1
RESULT_NAME = "bench_result.json"
PRED_NAME = "predictions.npz"
# Methods whose trained encoder PatchCore can use (backbone "auto"), in order of preference.
# (The U-Net design of MTL-MAD has no bottleneck encoder, so it is the last choice: a classic-design run only.)
ENCODER_SOURCES = ("allinone", "ae", "mtl")


class BenchSettingsError(ValueError):
    """An output folder holds finished runs made with other settings (a user error: never a 'failed run')."""


# --- hardware and memory ------------------------------------------------------------------------------------
def hardware_string(device: torch.device | str = "cpu") -> str:
    """A short description of what ran the bench, e.g. ``'CPU: Intel Xeon ... (2 logical CPUs), Linux'``."""
    device = torch.device(device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"GPU: {props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    if device.type == "mps":
        return f"Apple MPS ({platform.machine()}), {platform.system()}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = re.findall(r"model name\s*:\s*(.+)", f.read())
        if names:
            cpu = names[0].strip()
    except OSError:
        pass
    return f"CPU: {cpu} ({os.cpu_count()} logical CPUs), {platform.system()}"


def _reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: writing 5 resets the process's resident-set high-water mark (VmHWM)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_memory(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "CUDA max allocated"
    try:
        with open("/proc/self/status") as f:
            return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1)) / 1024, "process RSS high-water mark"
    except (OSError, AttributeError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process max RSS (not reset per run)"


# --- one run ------------------------------------------------------------------------------------------------
def gallery_indices(tensors, per_task: int = 1) -> np.ndarray:
    """Indices (into the test split) shown in the gallery: per task the abnormal image with the largest mask
    among the first ten, and the first normal image. Depends on the data only, so every method shows the same."""
    labels, tids = tensors.labels.numpy(), tensors.task_ids.numpy()
    area = tensors.masks.flatten(1).sum(1).numpy()
    out = []
    for t in np.unique(tids):
        ab = np.flatnonzero((tids == t) & (labels == 1))[:10]
        no = np.flatnonzero((tids == t) & (labels == 0))
        if len(ab):
            out += list(ab[np.argsort(-area[ab], kind="stable")[:per_task]])
        out += list(no[:per_task])
    return np.asarray(out, dtype=np.int64)


def _finished_epochs(run_dir: Path) -> int:
    """Epochs already in the run folder's checkpoint (0 if none or unreadable)."""
    from ..training.checkpoint import CheckpointError, read_checkpoint

    if not (run_dir / "checkpoint.pt").is_file():
        return 0
    try:
        state = read_checkpoint(run_dir)
    except CheckpointError:
        return 0
    return int(state["epoch"])


def _spec(method: str, seed: int, cfg, data_spec: str) -> dict[str, Any]:
    return {"method": method, "seed": seed, "config": cfg.config, "data": data_spec, "image_size": cfg.image_size,
            "sizes": cfg.sizes, "tasks": cfg.tasks, "epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.lr,
            "options": cfg.options}


def _spec_diff(old: dict, new: dict) -> list[str]:
    norm = lambda d: json.loads(json.dumps(d))  # noqa: E731 - tuples vs lists
    old, new = norm(old), norm(new)
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


# Progress of a training inside the bench: the trainer's own epoch lines (loss and speed, every epochs // 5
# epochs) plus, when more than this many seconds passed since the last line, one line per finished epoch.
EPOCH_LOG_SECONDS = 10.0


def run_one(method: str, seed: int, data: MultiTaskData, data_spec: str, config: str, run_dir: Path,
            options: dict | None = None, overrides: dict | None = None, log: Callable[[str], None] = print) -> dict:
    """Train (or resume) and evaluate one method with one seed; returns its bench record (cached on disk)."""
    from ..training import make_config, train

    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    cfg = make_config(method, config, options=options, seed=seed, **overrides)
    spec = _spec(method, seed, cfg, data_spec)
    result_path = run_dir / RESULT_NAME
    if result_path.exists():
        record = json.loads(result_path.read_text())
        diff = _spec_diff(record["spec"], spec)
        if diff:
            raise BenchSettingsError(f"{run_dir} holds a finished bench run with other settings "
                                     f"({'; '.join(diff)}); use another --out folder")
        log(f"[bench] {method} seed {seed}: already done ({result_path}); skipped")
        return record
    device = get_device(cfg.device)
    _reset_peak_memory(device)
    log(f"[bench] {method} seed {seed}: training ({cfg.config}, {cfg.epochs} epochs, {cfg.image_size} px) "
        f"in {run_dir}")
    epochs_before = _finished_epochs(run_dir)
    t0, c0 = time.perf_counter(), time.process_time()
    res = train(cfg, run_dir, data=data, progress=True, bar=False, time_lines_every=EPOCH_LOG_SECONDS,
                log=lambda m: log(f"[bench]   {m}"))
    call_wall, train_cpu = time.perf_counter() - t0, time.process_time() - c0
    hist = res.history
    seconds = sum(h["seconds"] for h in hist)
    # A resumed run: earlier epochs ran in another process. Their times are in the history; the time of this
    # call beyond its own epochs (model set-up, fitting hooks, thresholds) is added once. CPU time is only
    # known when the whole run happened in this call.
    resumed = epochs_before > 0
    train_wall = seconds + max(0.0, call_wall - sum(h["seconds"] for h in hist[epochs_before:]))
    if resumed:
        train_cpu = float("nan")
        log(f"[bench] {method} seed {seed}: resumed after epoch {epochs_before}; CPU time not recorded")
    tensors = split_tensors(data, "test")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t1 = time.perf_counter()
    preds = predict_split(res.model, data, "test", device, batch_size=cfg.batch_size)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    infer = time.perf_counter() - t1
    peak, peak_kind = _peak_memory(device)
    report = summarise(preds, data.task_names, method, "test", res.thresholds)
    gidx = gallery_indices(tensors)
    buf = __import__("io").BytesIO()
    np.savez_compressed(buf, scores=preds.scores.astype(np.float32), labels=preds.labels.astype(np.int8),
                        task_ids=preds.task_ids.astype(np.int16), gallery_index=gidx,
                        gallery_maps=preds.maps[gidx].astype(np.float16))
    atomic_write_bytes(run_dir / PRED_NAME, buf.getvalue())
    n_train = sum(h["images"] for h in hist)
    wait = sum(h["data_wait_seconds"] for h in hist)
    record = {
        "method": method, "seed": seed, "run_dir": str(run_dir), "spec": spec, "evaluation": report,
        "thresholds": {k: v for k, v in res.thresholds.items()},
        "timing": {"train_seconds": train_wall, "train_cpu_seconds": train_cpu, "epochs": len(hist),
                   "train_images": n_train, "train_images_per_second": res.images_per_second,
                   "data_wait_share": wait / seconds if seconds > 0 else float("nan"),
                   "inference_seconds": infer, "inference_images_per_second": len(tensors) / max(infer, 1e-9),
                   "peak_memory_mb": peak, "peak_memory_kind": peak_kind, "resumed": resumed},
    }
    atomic_write_json(result_path, _jsonable(record))
    m = report["mean"]
    log(f"[bench] {method} seed {seed}: image AUROC {_pct(m['image_auroc'])}, pixel AUROC "
        f"{_pct(m['pixel_auroc'])}, trained in {train_wall:.0f} s")
    return json.loads(result_path.read_text())


def _jsonable(obj):
    """NaN/inf -> None, numpy scalars -> python (results.json stays strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


# --- the whole bench ----------------------------------------------------------------------------------------
def _order_methods(methods: Sequence[str]) -> list[str]:
    """PatchCore last (it may use an encoder trained earlier in the bench); otherwise as given."""
    return [m for m in methods if m != "patchcore"] + [m for m in methods if m == "patchcore"]


def run_bench(methods: Sequence[str] | None = None, data: str | MultiTaskData = "embedded", config: str = "quick",
              seeds: Sequence[int] = (0, 1, 2), out_dir: str | Path = "bench", sizes: str | None = None,
              tasks: Sequence[str] | None = None, epochs: int | None = None, image_size: int | None = None,
              batch_size: int | None = None, device: str = "auto", threads: int | None = None,
              method_seeds: dict[str, Sequence[int]] | None = None, options: dict[str, dict] | None = None,
              patchcore_backbone: str = "auto", figures: bool = True, note: str = "",
              log: Callable[[str], None] | None = None) -> dict:
    """Run the benchmark (see the module docstring); returns the ``results.json`` content.

    ``method_seeds`` gives some methods fewer (or other) seeds than ``seeds``; ``options`` per-method options;
    ``epochs`` / ``image_size`` / ``batch_size`` override every method's configuration (e.g. for a smoke run).
    ``patchcore_backbone="auto"`` takes the encoder of this bench's mtl, else allinone, else ae run of the same
    seed (trained from scratch, offline), else a random encoder.
    """
    from ..models.registry import available_methods, get_method
    from ..training.config import PRESETS

    log = log or (lambda m: print(m, file=sys.stderr))
    t_start = time.perf_counter()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1; got {threads}")
        torch.set_num_threads(int(threads))
    if config not in PRESETS:
        raise ValueError(f"config must be one of {sorted(PRESETS)}; got {config!r}")
    methods = list(methods) if methods else available_methods()
    for m in methods:
        get_method(m)  # ValueError naming the available methods
    if len(set(methods)) != len(methods):
        raise ValueError(f"methods listed twice: {methods}")
    methods = _order_methods(methods)
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    method_seeds = {m: [int(s) for s in v] for m, v in (method_seeds or {}).items()}
    unknown = sorted(set(method_seeds) - set(methods))
    if unknown:
        raise ValueError(f"method_seeds names methods not in the bench: {unknown}")
    options = {m: dict(v) for m, v in (options or {}).items()}
    out_dir = Path(out_dir)
    image_size = int(image_size or PRESETS[config]["image_size"])
    sizes = sizes or PRESETS[config]["sizes"]
    if isinstance(data, MultiTaskData):
        data_obj, data_spec = data, data.name
        if data_obj.image_size != image_size:
            image_size = data_obj.image_size
    else:
        data_spec = str(data)
        log(f"[bench] loading {data_spec} ({sizes} sizes, {image_size} px)")
        data_obj = load_data(data_spec, image_size=image_size, sizes=sizes, tasks=tasks, seed=0)
    tasks = list(tasks) if tasks else None
    device_obj = get_device(device)
    overrides = {"epochs": epochs, "image_size": image_size, "batch_size": batch_size, "device": device,
                 "sizes": sizes, "tasks": tasks, "data": data_spec}
    runs_dir = out_dir / "runs"
    records, failures = [], []
    done: dict[tuple[str, int], dict] = {}
    all_seeds = sorted({s for m in methods for s in method_seeds.get(m, seeds)})
    for seed in all_seeds:
        for method in methods:
            if seed not in method_seeds.get(method, seeds):
                continue
            opts = dict(options.get(method, {}))
            run_dir = runs_dir / f"{method}-s{seed}"
            if method == "patchcore" and "backbone" not in opts:
                opts["backbone"] = _patchcore_backbone(patchcore_backbone, seed, done, run_dir)
            try:
                rec = run_one(method, seed, data_obj, data_spec, config, run_dir, opts, overrides, log)
            except (KeyboardInterrupt, SystemExit, BenchSettingsError):
                raise
            except Exception as err:  # one method failing must not lose the others
                log(f"[bench] {method} seed {seed} FAILED: {type(err).__name__}: {err}")
                log("".join(traceback.format_exception(type(err), err, err.__traceback__, limit=-3)))
                failures.append({"method": method, "seed": seed, "error": f"{type(err).__name__}: {err}"})
                continue
            done[(method, seed)] = rec
            records.append(rec)
    results = {
        "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "config": config,
        "data": {"spec": data_spec, "name": data_obj.name, "tasks": data_obj.task_names, "image_size": image_size,
                 "sizes": sizes, "n_test": _test_counts(data_obj)},
        "methods": methods,
        "seeds": {m: [s for s in method_seeds.get(m, seeds)] for m in methods},
        "hardware": hardware_string(device_obj),
        "device": str(device_obj),
        "torch_threads": torch.get_num_threads(),
        "versions": versions(),
        "note": note,
        "bench_wall_seconds": time.perf_counter() - t_start,
        "runs": [{k: r[k] for k in ("method", "seed", "run_dir", "spec", "evaluation", "timing")} for r in records],
        "failures": failures,
    }
    results = _jsonable(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "results.json", results)
    atomic_write_bytes(out_dir / "results.md", render_markdown(results).encode())
    if figures and records:
        try:
            make_figures(results, data_obj, out_dir / "figures")
        except Exception as err:  # figures are a convenience; the numbers are already written
            log(f"[bench] figures failed: {type(err).__name__}: {err}")
    return results


def _patchcore_backbone(choice: str, seed: int, done: dict, run_dir: Path) -> str:
    if choice != "auto":
        return choice
    finished = run_dir / RESULT_NAME
    if finished.is_file():  # "auto" keeps what it chose when this run was made (methods added later change nothing)
        return json.loads(finished.read_text())["spec"]["options"]["backbone"]
    for src in ENCODER_SOURCES:
        rec = done.get((src, seed))
        if rec is not None:
            return f"run:{rec['run_dir']}"
    return "random"


def _test_counts(data: MultiTaskData) -> dict[str, list[int]]:
    out = {}
    for t in data.tasks:
        labels = np.asarray(t.test.labels)
        out[t.name] = [int((labels == 0).sum()), int((labels == 1).sum())]
    return out


# --- tables -------------------------------------------------------------------------------------------------
def _pct(v, digits: int = 2) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.{digits}f}"


def _mean_std(values: list) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    return float(np.mean(vals)), (float(np.std(vals, ddof=1)) if len(vals) > 1 else None)


def _pm(values: list) -> str:
    mean, std = _mean_std(values)
    if mean is None:
        return "n/a"
    return f"{100 * mean:.2f} ± {100 * std:.2f}" if std is not None else f"{100 * mean:.2f}"


def _by_method(results: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {m: [] for m in results["methods"]}
    for r in sorted(results["runs"], key=lambda r: r["seed"]):
        out.setdefault(r["method"], []).append(r)
    return {m: rs for m, rs in out.items() if rs}


def summary_table(results: dict) -> dict[str, dict[str, tuple[float | None, float | None]]]:
    """``{method: {metric: (mean over seeds, std)}}`` of the task-mean metrics (what the tables print)."""
    keys = ("image_auroc", "f1", "acc", "acc_at_valid_threshold", "pixel_auroc", "aupro", "ap", "dice")
    return {m: {k: _mean_std([r["evaluation"]["mean"].get(k) for r in rs]) for k in keys}
            for m, rs in _by_method(results).items()}


def render_markdown(results: dict, heading_level: int = 1) -> str:
    """``results.md`` from ``results.json`` alone (deterministic: the book's test regenerates and compares).

    ``heading_level`` is the level of the title (``#`` by default, as in ``results.md``); the sections are one
    level below. A page that shows the tables under its own sections passes e.g. 4 (``####``).
    """
    if not 1 <= heading_level <= 5:
        raise ValueError(f"heading_level must be 1 to 5; got {heading_level}")
    h1, h2 = "#" * heading_level, "#" * (heading_level + 1)
    by = _by_method(results)
    tasks = results["data"]["tasks"]
    seeds_txt = "; ".join(f"{m}: {', '.join(str(r['seed']) for r in rs)}" for m, rs in by.items())
    n_test = results["data"].get("n_test", {})
    lines = [f"{h1} Benchmark: {results['data']['name']} data, `{results['config']}` configuration", ""]
    lines.append(f"- Data: `{results['data']['spec']}`, tasks {', '.join(tasks)}, {results['data']['image_size']} px "
                 f"(`{results['data']['sizes']}` sizes); test images per task (normal + abnormal): "
                 + ", ".join(f"{t} {n[0]}+{n[1]}" for t, n in n_test.items()) + ".")
    lines.append(f"- Seeds per method: {seeds_txt}.")
    lines.append(f"- Hardware: {results['hardware']}; device `{results['device']}`, {results['torch_threads']} torch "
                 f"thread(s); torch {results['versions'].get('torch', '?')}, medad_edu "
                 f"{results['versions'].get('medad_edu', '?')}.")
    if results.get("note"):
        lines.append(f"- Note: {results['note']}")
    if results.get("failures"):
        lines.append("- Failed runs: " + "; ".join(f"{f['method']} seed {f['seed']} ({f['error']})"
                                                   for f in results["failures"]) + ".")
    lines += ["", f"{h2} Image-level detection per task (All-in-One Table 1 layout)", "",
              "AUC / F1 / ACC in %, each the mean over seeds. As in the All-in-One paper, F1 and ACC are taken at "
              "the threshold that maximises F1 on the test set itself (optimistic); **ACC@val** is the accuracy "
              "at the threshold chosen on validation data at training time (what a deployed model gets).", ""]
    head = ["Method"] + [f"{t} AUC / F1 / ACC" for t in tasks] + ["Mean AUC / F1 / ACC", "ACC@val"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, rs in by.items():
        cells = [m]
        for t in tasks:
            ms = [r["evaluation"]["tasks"].get(t, {}) for r in rs]
            trip = [_mean_std([x.get(k) for x in ms])[0] for k in ("image_auroc", "f1", "acc")]
            cells.append(" / ".join(_pct(v) for v in trip))
        mean = [_mean_std([r["evaluation"]["mean"].get(k) for r in rs])[0] for k in ("image_auroc", "f1", "acc")]
        cells.append("**" + " / ".join(_pct(v) for v in mean) + "**")
        cells.append(_pct(_mean_std([r["evaluation"]["mean"].get("acc_at_valid_threshold") for r in rs])[0]))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"{h2} Detection and localisation (BMAD layout)", "",
              "Mean over tasks, then mean ± standard deviation over seeds (sample std, ddof = 1; no ± with one "
              "seed), in %. AUPRO integrates the per-region overlap up to a false-positive rate of 0.3.", ""]
    head = ["Method", "seeds", "Image AUROC", "Pixel AUROC", "AUPRO", "AP", "best Dice"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, rs in by.items():
        cells = [m, str(len(rs))] + [_pm([r["evaluation"]["mean"].get(k) for r in rs])
                                     for k in ("image_auroc", "pixel_auroc", "aupro", "ap", "dice")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"{h2} Image AUROC per task (%, mean ± std over seeds)", ""]
    head = ["Method"] + tasks
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, rs in by.items():
        lines.append("| " + " | ".join([m] + [_pm([r["evaluation"]["tasks"].get(t, {}).get("image_auroc")
                                                    for r in rs]) for t in tasks]) + " |")
    lines += ["", f"{h2} Cost ({results['hardware']}, device `{results['device']}`)", "",
              "Mean over seeds. Train s: wall time of training (incl. fitting hooks and threshold choice); CPU s: "
              "process CPU time of the same (unaffected by other jobs on a shared machine); train img/s: images "
              "per second of computation (time waiting for batches excluded); data wait: share of the epoch time "
              "spent waiting for batches; infer img/s: test images per second (scores and maps); peak MB: "
              + _peak_kind(results) + ".", ""]
    head = ["Method", "epochs", "train s", "CPU s", "train img/s", "data wait %", "infer img/s", "peak MB"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, rs in by.items():
        def avg(key):
            return _mean_std([r["timing"].get(key) for r in rs])[0]

        def num(v, fmt):
            return "n/a" if v is None else format(v, fmt)

        lines.append("| " + " | ".join([m, num(avg("epochs"), ".0f"), num(avg("train_seconds"), ".1f"),
                                         num(avg("train_cpu_seconds"), ".1f"),
                                         num(avg("train_images_per_second"), ".0f"),
                                         num(None if avg("data_wait_share") is None else 100 * avg("data_wait_share"),
                                             ".2f"),
                                         num(avg("inference_images_per_second"), ".0f"),
                                         num(avg("peak_memory_mb"), ".0f")]) + " |")
    lines.append("")
    return "\n".join(lines)


def _peak_kind(results: dict) -> str:
    kinds = sorted({r["timing"].get("peak_memory_kind", "") for r in results["runs"]} - {""})
    return ", ".join(kinds) if kinds else "peak memory"


# --- figures ------------------------------------------------------------------------------------------------
def _load_predictions(run: dict) -> dict[str, np.ndarray] | None:
    path = Path(run["run_dir"]) / PRED_NAME
    if not path.is_file():
        return None
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def first_seed_predictions(results: dict) -> dict[str, dict[str, np.ndarray]]:
    """``{method: predictions.npz content}`` of each method's lowest seed (runs whose files are present)."""
    out = {}
    for m, rs in _by_method(results).items():
        pred = _load_predictions(rs[0])
        if pred is not None:
            out[m] = pred
    return out


def make_figures(results: dict, data: MultiTaskData, fig_dir: str | Path, dpi: int = 100) -> list[Path]:
    """``score_histograms.png`` and ``gallery.png`` (each method's lowest seed) in ``fig_dir``."""
    from ..interface.plots import anomaly_gallery, score_histogram_grid

    fig_dir = Path(fig_dir)
    fig_dir.mkdir(parents=True, exist_ok=True)
    preds = first_seed_predictions(results)
    if not preds:
        return []
    tasks = results["data"]["tasks"]
    methods = list(preds)
    written = []
    fig = score_histogram_grid({m: p["scores"] for m, p in preds.items()}, {m: p["labels"] for m, p in preds.items()},
                               {m: p["task_ids"] for m, p in preds.items()}, tasks)
    path = fig_dir / "score_histograms.png"
    fig.savefig(path, dpi=dpi)
    written.append(path)

    tensors = split_tensors(data, "test")
    gidx = preds[methods[0]]["gallery_index"]
    images, masks, labels = tensors.images[gidx, 0].numpy(), tensors.masks[gidx, 0].numpy(), tensors.labels[gidx]
    tids = tensors.task_ids[gidx].numpy()
    maps, scores, scales = {}, {}, {}
    for m in methods:
        p = preds[m]
        pos = [np.flatnonzero(p["gallery_index"] == g) for g in gidx]
        maps[m] = [p["gallery_maps"][q[0]].astype(np.float32) if len(q) else None for q in pos]
        scores[m] = [float(p["scores"][g]) if g < len(p["scores"]) else None for g in gidx]
        # One colour scale per (method, task) over that task's gallery images: a normal image's map is
        # shown on the same scale as the abnormal one's.
        scales[m] = []
        for r in range(len(gidx)):
            pool = [maps[m][k].ravel() for k in range(len(gidx)) if tids[k] == tids[r] and maps[m][k] is not None]
            pool = np.concatenate(pool) if pool else np.zeros(1, np.float32)
            lo, hi = float(np.percentile(pool, 1)), float(np.percentile(pool, 99.5))
            scales[m].append((lo, hi if hi > lo else lo + 1e-6))
    row_labels = [f"{tasks[tids[r]]}\n{'abnormal' if int(labels[r]) else 'normal'}" for r in range(len(gidx))]
    fig = anomaly_gallery(images, masks, row_labels, maps, scores=scores, scales=scales)
    path = fig_dir / "gallery.png"
    fig.savefig(path, dpi=dpi)
    written.append(path)
    return written


# --- command line -------------------------------------------------------------------------------------------
def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _seed_list(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be comma-separated integers, got {text!r}") from None
    if not seeds:
        raise argparse.ArgumentTypeError("at least one seed is needed")
    return seeds


def _method_seeds(text: str) -> dict[str, list[int]]:
    out = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        if "=" not in part:
            raise argparse.ArgumentTypeError(f"--method-seeds expects METHOD=S1,S2;METHOD=S, got {text!r}")
        m, s = part.split("=", 1)
        out[m.strip()] = _seed_list(s)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``medad-edu bench`` arguments."""
    parser.add_argument("--methods", type=_csv, default=None,
                        help="comma-separated methods (default: every method this installation provides)")
    parser.add_argument("--data", default="embedded",
                        help="'embedded' (default), 'embedded:real' or a data folder (as for medad-edu train)")
    parser.add_argument("--config", choices=["quick", "paper"], default="quick",
                        help="quick: CPU, 64 px; paper: 256 px, 250 epochs, batch 64 (default quick)")
    parser.add_argument("--seeds", type=_seed_list, default=[0, 1, 2], help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--method-seeds", type=_method_seeds, default=None, metavar="M=S,S;M=S",
                        help="other seeds for some methods, e.g. 'allinone=0;mtl=0' for slow ones")
    parser.add_argument("--out", required=True, type=Path,
                        help="output folder (results.json, results.md, figures/, runs/); rerunning resumes")
    parser.add_argument("--sizes", choices=["tiny", "quick", "paper"], default=None,
                        help="embedded data size preset (default: the configuration's)")
    parser.add_argument("--tasks", type=_csv, default=None, help="comma-separated subset of tasks")
    parser.add_argument("--epochs", type=int, default=None,
                        help="override every method's epochs (smoke tests; the timing table shows the epochs)")
    parser.add_argument("--image-size", type=int, default=None, help="override the image side (multiple of 16)")
    parser.add_argument("--batch-size", type=int, default=None, help="override every method's batch size")
    parser.add_argument("--device", default="auto", help="auto (cuda, else mps, else cpu), cpu, cuda, cuda:N or mps")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice; 1 is faster on a busy shared machine)")
    parser.add_argument("--patchcore-backbone", default="auto",
                        help="auto (encoder of this bench's mtl, else allinone, else ae run), random, run:RUN_DIR, "
                             "resnet18, resnet50 or wide_resnet50_2 (needs local ImageNet weights)")
    parser.add_argument("--option", action="append", default=[], metavar="METHOD.KEY=VALUE",
                        help="method option, repeatable, value parsed as JSON when possible "
                             "(e.g. --option patchcore.coreset_ratio=0.05)")
    parser.add_argument("--note", default="", help="a sentence stored with the results and printed in results.md")
    parser.add_argument("--no-figures", action="store_true", help="skip the figures")


def _parse_method_options(items: list[str]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for item in items:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ValueError(f"--option expects METHOD.KEY=VALUE, got {item!r}")
        key, val = item.split("=", 1)
        method, name = key.split(".", 1)
        try:
            out.setdefault(method, {})[name] = json.loads(val)
        except json.JSONDecodeError:
            out.setdefault(method, {})[name] = val
    return out


def run(args: argparse.Namespace) -> int:
    """``medad-edu bench``: 0 if every run finished, 1 if some failed (their errors are in results.json)."""
    results = run_bench(methods=args.methods, data=args.data, config=args.config, seeds=args.seeds,
                        out_dir=args.out, sizes=args.sizes, tasks=args.tasks, epochs=args.epochs,
                        image_size=args.image_size, batch_size=args.batch_size, device=args.device,
                        threads=args.threads, method_seeds=args.method_seeds,
                        options=_parse_method_options(args.option), patchcore_backbone=args.patchcore_backbone,
                        figures=not args.no_figures, note=args.note)
    print(render_markdown(results))
    print(f"wrote {args.out / 'results.json'}, {args.out / 'results.md'} "
          f"({results['bench_wall_seconds']:.0f} s)")
    return 1 if results["failures"] else 0


__all__ = ["BenchSettingsError", "add_arguments", "gallery_indices", "hardware_string", "make_figures",
           "render_markdown", "run", "run_bench", "run_one", "summary_table"]
