"""The experiment runner behind ``medad-edu bench``: train and evaluate several methods, or several variants of
one, side by side, under the same data and budget, and collect the results.

For every bench row and seed the runner trains with the method's ``quick`` or ``paper`` configuration (the same
image size, data, splits and seeds for all), evaluates on the test split, and writes into ``OUT``:

- ``runs/<row>-s<seed>/``: the run folder (checkpoint, history) plus ``bench_result.json`` (metrics in the
  ``medad-edu evaluate`` schema, timings) and ``predictions.npz`` (test scores, and the maps of a few gallery
  images). A run whose ``bench_result.json`` exists with the same settings is **not** redone, and an
  interrupted training resumes from its last finished epoch (the trainer's checkpoints): running the same
  command again picks up where it stopped;
- ``results.json``: every run (schema below) with the hardware, versions and bench settings.

The rows are the methods (one row per method, named after it), or **variants**: ``{name: {"method": ...,
"options": {...}, "seeds": [...], "epochs": N, "diagnostics": [...]}}`` (:func:`load_variants` reads them from a
JSON file, e.g. ``book/results/mtl_ablations/variants.json``, the MTL-MAD ablations); every key but ``method`` is
optional (the bench's seeds, the configuration's epochs). ``diagnostics`` names extra measurements of the
trained model (:data:`DIAGNOSTICS`), kept in the run's record.

The tables (``results.md``) and figures are made from ``results.json`` by :mod:`medad_edu.interface.bench_report`;
the command line is ``medad-edu bench`` (:mod:`medad_edu.interface.cli`).

``results.json`` schema (``schema_version`` 1)::

    {"schema_version": 1, "created": ISO time, "config": "quick", "data": {"spec", "name", "tasks", "image_size",
     "sizes", "n_test": {task: [n_normal, n_abnormal]}}, "methods": [...], "seeds": {row: [...]},
     "variants": {row: {"method", "options", "seeds", "epochs", "diagnostics"}} (variant benches only),
     "hardware": str, "device": str, "torch_threads": int, "versions": {...}, "note": str,
     "bench_wall_seconds": float (the last invocation), "runs": [
        {"method", "variant" (the row), "seed", "run_dir", "spec": {...}, "evaluation": {evaluate schema},
         "timing": {"train_seconds", "train_cpu_seconds", "epochs", "train_images", "train_images_per_second",
                    "data_wait_share", "inference_seconds", "inference_images_per_second", "peak_memory_mb",
                    "peak_memory_kind"}, "diagnostics": {name: {...}} (rows that ask for them),
         "lesion_size": {"bins": ["small", "medium", "large"], "tasks": {task: [{"area_min", "area_max",
                         "n_abnormal", "image_auroc"}, ...]}, "mean": [...]} (data with lesion masks)}, ...],
     "failures": [{"method", "variant", "seed", "error"}]}

(Benches kept from before variants existed have no ``variant`` keys: their rows are their methods; those kept
before ``lesion_size`` existed have none: re-running the bench command adds it from the stored predictions.)

Explained in notebooks/41_results.ipynb (the results chapter); the GPU commands are in book/real_benchmarks.md.

Example::

    from medad_edu.evaluation.bench import run_bench
    from medad_edu.interface.bench_report import render_markdown
    results = run_bench(["ae", "patchcore"], data="embedded", config="quick", seeds=[0], out_dir="bench_out",
                        sizes="tiny", epochs=2)
    print(render_markdown(results))

Defined in: notebooks/41_results.ipynb, book/real_benchmarks.md
"""
from __future__ import annotations

import dataclasses
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
from ..models.registry import get_method, with_default_options
from ..utils import atomic_write_bytes, atomic_write_json, get_device, peak_memory, reset_peak_memory, versions
from .diagnostics import DIAGNOSTICS
from .evaluate import summarise
from .metrics import image_auroc_by_lesion_size
from ..training.predict import predict_split

SCHEMA_VERSION = 1
RESULT_NAME = "bench_result.json"
PRED_NAME = "predictions.npz"
# Methods whose trained encoder PatchCore can use (backbone "auto"), in order of preference.
# (The U-Net design of MTL-MAD has no bottleneck encoder, so it is the last choice: a classic-design run only.)
ENCODER_SOURCES = ("allinone", "ae", "mtl")
# What a variant row may set (besides its name): load_variants refuses anything else.
VARIANT_KEYS = ("method", "options", "seeds", "epochs", "diagnostics")


class BenchSettingsError(ValueError):
    """An output folder holds finished runs made with other settings (a user error: never a 'failed run')."""


class VariantsError(ValueError):
    """A variants file (or dict) that cannot define bench rows; the message names the file and the problem."""


# --- variants -----------------------------------------------------------------------------------------------
def check_variants(variants: Any, source: str = "variants") -> dict[str, dict]:
    """Validate bench rows ``{name: {"method", "options", "seeds", "epochs", "diagnostics"}}`` and return them
    normalised (every key present; ``seeds`` / ``epochs`` None = the bench's). Errors name ``source``."""
    from ..models.registry import available_methods

    def bad(problem: str) -> VariantsError:
        return VariantsError(f"{source}: {problem}")

    if not isinstance(variants, dict) or not variants:
        raise bad("expected a JSON object {name: {\"method\": ..., \"options\": {...}}} with at least one variant")
    out = {}
    for name, row in variants.items():
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", name):
            raise bad(f"variant name {name!r} must be letters, digits, '_', '.', '+' or '-' (it names a folder)")
        if not isinstance(row, dict):
            raise bad(f"variant {name!r} must be an object with a \"method\", got {type(row).__name__}")
        unknown = sorted(set(row) - set(VARIANT_KEYS))
        if unknown:
            raise bad(f"variant {name!r} has unknown keys {unknown}; allowed: {', '.join(VARIANT_KEYS)}")
        method = row.get("method")
        if method not in available_methods():
            raise bad(f"variant {name!r}: method {method!r} is not one of {', '.join(available_methods())}")
        options = row.get("options", {})
        if not isinstance(options, dict):
            raise bad(f"variant {name!r}: \"options\" must be an object, got {type(options).__name__}")
        seeds = row.get("seeds")
        if seeds is not None and (not isinstance(seeds, list) or not seeds
                                  or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
            raise bad(f"variant {name!r}: \"seeds\" must be a non-empty list of integers, got {seeds!r}")
        epochs = row.get("epochs")
        if epochs is not None and (not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1):
            raise bad(f"variant {name!r}: \"epochs\" must be a positive integer, got {epochs!r}")
        diagnostics = row.get("diagnostics", [])
        if not isinstance(diagnostics, list) or not all(d in DIAGNOSTICS for d in diagnostics):
            raise bad(f"variant {name!r}: \"diagnostics\" must be a list of {', '.join(sorted(DIAGNOSTICS))}, "
                      f"got {diagnostics!r}")
        out[name] = {"method": method, "options": dict(options), "seeds": seeds, "epochs": epochs,
                     "diagnostics": list(diagnostics)}
    return out


def load_variants(path: str | Path) -> dict[str, dict]:
    """Bench rows from a JSON file ``{name: {"method": ..., "options": {...}, ...}}`` (see the module docstring);
    a missing, unreadable or malformed file is a :class:`VariantsError` naming the file and the problem."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise VariantsError(f"{path}: cannot read the variants file ({err.strerror or err})") from None
    try:
        variants = json.loads(text)
    except json.JSONDecodeError as err:
        raise VariantsError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})") from None
    return check_variants(variants, str(path))


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
    spec = {"method": method, "seed": seed, "config": cfg.config, "data": data_spec, "image_size": cfg.image_size,
            "sizes": cfg.sizes, "tasks": cfg.tasks, "epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.lr,
            "options": cfg.options}
    if cfg.lr_schedule != "constant":  # only then: runs cached before the setting existed keep their specs
        spec["lr_schedule"] = cfg.lr_schedule
    return spec


def _at_defaults(record: dict) -> dict:
    """A run spec or variant row as plain JSON, its options completed with the method's defaults
    (:func:`medad_edu.models.registry.with_default_options`), so records made before an option existed compare."""
    plain = json.loads(json.dumps(record))  # tuples vs lists
    if isinstance(plain.get("options"), dict):
        plain["options"] = json.loads(json.dumps(with_default_options(plain.get("method"), plain["options"])))
    return plain


def same_variants(a: dict | None, b: dict | None) -> bool:
    """Whether two variants dicts define the same rows, options compared at their defaults."""
    if a is None or b is None or set(a) != set(b):
        return a == b
    return all(_at_defaults(a[name]) == _at_defaults(b[name]) for name in a)


def _spec_diff(old: dict, new: dict) -> list[str]:
    old, new = _at_defaults(old), _at_defaults(new)
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


# Progress of a training inside the bench: the trainer's own epoch lines (loss and speed, every epochs // 5
# epochs) plus, when more than this many seconds passed since the last line, one line per finished epoch.
EPOCH_LOG_SECONDS = 10.0


def run_one(method: str, seed: int, data: MultiTaskData, data_spec: str, config: str, run_dir: Path,
            options: dict | None = None, overrides: dict | None = None, log: Callable[[str], None] = print,
            name: str | None = None, diagnostics: Sequence[str] = ()) -> dict:
    """Train (or resume) and evaluate one method with one seed; returns its bench record (cached on disk).

    ``name`` is the bench row (a variant's name; the method's by default), ``diagnostics`` names entries of
    :data:`DIAGNOSTICS` computed on the trained model and kept in the record.
    """
    from ..training import make_config, train
    from ..training.config import epochs_for_data

    name = name or method
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    cfg = make_config(method, config, options=options, seed=seed, **overrides)
    if cfg.min_steps and get_method(method).uses_gradients:  # the epochs the trainer will run on this data
        cfg = dataclasses.replace(cfg, epochs=epochs_for_data(cfg, len(split_tensors(data, "train"))))
    spec = _spec(method, seed, cfg, data_spec)
    if diagnostics:  # only then: the specs of plain runs stay those of runs cached before variants existed
        spec["diagnostics"] = list(diagnostics)
    result_path = run_dir / RESULT_NAME
    if result_path.exists():
        record = json.loads(result_path.read_text())
        diff = _spec_diff(record["spec"], spec)
        if diff:
            raise BenchSettingsError(f"{run_dir} holds a finished bench run with other settings "
                                     f"({'; '.join(diff)}); use another --out folder")
        log(f"[bench] {name} seed {seed}: already done ({result_path}); skipped")
        return {**record, "variant": name}
    device = get_device(cfg.device)
    reset_peak_memory(device)
    log(f"[bench] {name} seed {seed}: training ({cfg.config}, {cfg.epochs} epochs, {cfg.image_size} px) "
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
        log(f"[bench] {name} seed {seed}: resumed after epoch {epochs_before}; CPU time not recorded")
    tensors = split_tensors(data, "test")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t1 = time.perf_counter()
    preds = predict_split(res.model, data, "test", device, batch_size=cfg.batch_size)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    infer = time.perf_counter() - t1
    peak, peak_kind = peak_memory(device)
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
        "method": method, "variant": name, "seed": seed, "run_dir": str(run_dir), "spec": spec, "evaluation": report,
        "thresholds": {k: v for k, v in res.thresholds.items()},
        "timing": {"train_seconds": train_wall, "train_cpu_seconds": train_cpu, "epochs": len(hist),
                   "train_images": n_train, "train_images_per_second": res.images_per_second,
                   "data_wait_share": wait / seconds if seconds > 0 else float("nan"),
                   "inference_seconds": infer, "inference_images_per_second": len(tensors) / max(infer, 1e-9),
                   "peak_memory_mb": peak, "peak_memory_kind": peak_kind, "resumed": resumed},
    }
    if diagnostics:
        record["diagnostics"] = {d: DIAGNOSTICS[d](res.model, data) for d in diagnostics}
    atomic_write_json(result_path, _jsonable(record))
    m = report["mean"]
    pct = lambda v: "n/a" if v is None or v != v else f"{100 * v:.2f}"  # noqa: E731 - NaN != NaN
    log(f"[bench] {name} seed {seed}: image AUROC {pct(m['image_auroc'])}, pixel AUROC "
        f"{pct(m['pixel_auroc'])}, trained in {train_wall:.0f} s")
    return json.loads(result_path.read_text())


# Detection by lesion size: the abnormal test images of each task in terciles of their lesion area.
LESION_SIZE_BINS = ("small", "medium", "large")


def lesion_areas(data: MultiTaskData) -> dict[str, np.ndarray]:
    """The test split's labels, task ids, lesion areas (share of the image's pixels) and whether masks exist."""
    t = split_tensors(data, "test")
    return {"labels": t.labels.numpy().astype(int), "task_ids": t.task_ids.numpy().astype(int),
            "area": t.masks.flatten(1).mean(1).numpy(), "has_mask": t.has_mask.numpy().astype(bool)}


def lesion_size_auroc(run_dir: Path, areas: dict[str, np.ndarray], task_names: Sequence[str]) -> dict | None:
    """Image AUROC per lesion-size tercile of one finished run, from its stored test predictions.

    ``{"bins": [...], "tasks": {task: [bin, ...]}, "mean": [{"area_min", "area_max", "image_auroc"}, ...]}``: per
    task, the normal images against the abnormal ones of each tercile
    (:func:`medad_edu.evaluation.metrics.image_auroc_by_lesion_size`); ``mean`` averages the tasks that have masks
    on every abnormal image. ``None`` when the run has no stored predictions or no task has such masks.
    """
    path = Path(run_dir) / PRED_NAME
    if not path.is_file():
        return None
    with np.load(path) as z:
        scores, labels, task_ids = z["scores"], z["labels"].astype(int), z["task_ids"].astype(int)
    if not (np.array_equal(labels, areas["labels"]) and np.array_equal(task_ids, areas["task_ids"])):
        raise ValueError(f"{path}: its test images differ from this bench's data (labels or tasks)")
    per_task = {}
    for i, task in enumerate(task_names):
        sel = task_ids == i
        abnormal = sel & (labels == 1)
        if not abnormal.any() or not areas["has_mask"][abnormal].all() or (areas["area"][abnormal] <= 0).any():
            continue  # no masks, or an abnormal image without lesion pixels: sizes unknown
        bins = image_auroc_by_lesion_size(scores[sel], labels[sel], areas["area"][sel], len(LESION_SIZE_BINS))
        if len(bins) == len(LESION_SIZE_BINS):
            per_task[task] = bins
    if not per_task:
        return None
    mean = [{k: float(np.mean([b[j][k] for b in per_task.values()])) for k in ("area_min", "area_max", "image_auroc")}
            for j in range(len(LESION_SIZE_BINS))]
    return {"bins": list(LESION_SIZE_BINS), "tasks": per_task, "mean": mean}


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
def _order_rows(rows: dict[str, dict]) -> dict[str, dict]:
    """PatchCore rows last (they may use an encoder trained earlier in the bench); otherwise as given."""
    return {**{n: r for n, r in rows.items() if r["method"] != "patchcore"},
            **{n: r for n, r in rows.items() if r["method"] == "patchcore"}}


def run_bench(methods: Sequence[str] | None = None, data: str | MultiTaskData = "embedded", config: str = "quick",
              seeds: Sequence[int] = (0, 1, 2), out_dir: str | Path = "bench", sizes: str | None = None,
              tasks: Sequence[str] | None = None, epochs: int | None = None, image_size: int | None = None,
              batch_size: int | None = None, device: str = "auto", threads: int | None = None,
              lr_schedule: str | None = None, method_seeds: dict[str, Sequence[int]] | None = None,
              options: dict[str, dict] | None = None,
              patchcore_backbone: str = "auto", note: str = "", variants: dict[str, dict] | None = None,
              log: Callable[[str], None] | None = None) -> dict:
    """Run the benchmark (see the module docstring), write ``OUT/results.json`` and return its content.

    The rows are ``methods`` (default: all), or ``variants`` (``{name: {"method", "options", "seeds", "epochs",
    "diagnostics"}}``, e.g. from :func:`load_variants`; not together with ``methods``, ``method_seeds`` or
    ``options``). ``method_seeds`` gives some methods fewer (or other) seeds than ``seeds``; ``options``
    per-method options; ``epochs`` / ``image_size`` / ``batch_size`` / ``lr_schedule`` override every row's
    configuration (e.g. for a smoke run; ``epochs`` also a variant's own). ``patchcore_backbone="auto"`` takes
    the encoder of this bench's mtl, else allinone, else ae run of the same seed (trained from scratch, offline),
    else a random encoder.
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
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    if variants is not None:
        given = [n for n, v in (("methods", methods), ("method_seeds", method_seeds), ("options", options)) if v]
        if given:
            raise ValueError(f"variants define the rows, their seeds and options; do not also give {given}")
        rows = check_variants(variants)
    else:
        methods = list(methods) if methods else available_methods()
        for m in methods:
            get_method(m)  # ValueError naming the available methods
        if len(set(methods)) != len(methods):
            raise ValueError(f"methods listed twice: {methods}")
        method_seeds = {m: [int(s) for s in v] for m, v in (method_seeds or {}).items()}
        unknown = sorted(set(method_seeds) - set(methods))
        if unknown:
            raise ValueError(f"method_seeds names methods not in the bench: {unknown}")
        options = options or {}
        rows = {m: {"method": m, "options": dict(options.get(m, {})), "seeds": method_seeds.get(m), "epochs": None,
                    "diagnostics": []} for m in methods}
    rows = _order_rows(rows)
    row_seeds = {n: list(r["seeds"] or seeds) for n, r in rows.items()}
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
    runs_dir = out_dir / "runs"
    records, failures = [], []
    areas = lesion_areas(data_obj)
    done: dict[tuple[str, int], dict] = {}  # (method, seed) -> the first finished row's record
    for seed in sorted({s for v in row_seeds.values() for s in v}):
        for name, row in rows.items():
            if seed not in row_seeds[name]:
                continue
            method, opts = row["method"], dict(row["options"])
            overrides = {"epochs": epochs if epochs is not None else row["epochs"], "image_size": image_size,
                         "batch_size": batch_size, "lr_schedule": lr_schedule, "device": device, "sizes": sizes,
                         "tasks": tasks, "data": data_spec}
            run_dir = runs_dir / f"{name}-s{seed}"
            if method == "patchcore" and "backbone" not in opts:
                opts["backbone"] = _patchcore_backbone(patchcore_backbone, seed, done, run_dir)
            try:
                rec = run_one(method, seed, data_obj, data_spec, config, run_dir, opts, overrides, log, name=name,
                              diagnostics=row["diagnostics"])
            except (KeyboardInterrupt, SystemExit, BenchSettingsError):
                raise
            except Exception as err:  # one run failing must not lose the others
                log(f"[bench] {name} seed {seed} FAILED: {type(err).__name__}: {err}")
                log("".join(traceback.format_exception(type(err), err, err.__traceback__, limit=-3)))
                failures.append({"method": method, "variant": name, "seed": seed,
                                 "error": f"{type(err).__name__}: {err}"})
                continue
            size = lesion_size_auroc(run_dir, areas, data_obj.task_names)
            if size is not None:  # computed afresh from the stored predictions, also for cached runs
                rec = {**rec, "lesion_size": size}
            done.setdefault((method, seed), rec)
            records.append(rec)
    keep = ("method", "variant", "seed", "run_dir", "spec", "evaluation", "timing", "diagnostics", "lesion_size")
    results = {
        "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "config": config,
        "data": {"spec": data_spec, "name": data_obj.name, "tasks": data_obj.task_names, "image_size": image_size,
                 "sizes": sizes, "n_test": _test_counts(data_obj)},
        "methods": list(dict.fromkeys(r["method"] for r in rows.values())),
        "seeds": row_seeds,
        **({"variants": rows} if variants is not None else {}),
        "hardware": hardware_string(device_obj),
        "device": str(device_obj),
        "torch_threads": torch.get_num_threads(),
        "versions": versions(),
        "note": note,
        "bench_wall_seconds": time.perf_counter() - t_start,
        "runs": [{k: r[k] for k in keep if k in r} for r in records],
        "failures": failures,
    }
    results = _jsonable(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "results.json", results)
    return results


def load_results(out_dir: str | Path) -> dict:
    """``OUT/results.json`` of a bench (a one-line error if there is none)."""
    path = Path(out_dir) / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no bench results there (run the bench into {out_dir} first)")
    return json.loads(path.read_text())


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


__all__ = ["BenchSettingsError", "DIAGNOSTICS", "PRED_NAME", "RESULT_NAME", "SCHEMA_VERSION", "VariantsError",
           "check_variants", "gallery_indices", "hardware_string", "load_results", "load_variants", "run_bench",
           "run_one", "same_variants"]
