"""Tables and figures of a bench, made from its ``results.json`` alone: ``results.md`` (:func:`render_markdown`),
``figures/`` (:func:`make_figures`), both written by :func:`write_report` after ``medad-edu bench`` ran (or
with ``--report-only``, from the kept ``results.json``).

``results.md``: All-in-One's Table 1 (AUC / F1 / ACC per task and mean, %), BMAD's (image AUROC, pixel AUROC,
AUPRO as mean +- std over seeds), image AUROC per task, and the timing table naming the hardware; one row per
method, or per variant in a variants bench (:mod:`medad_edu.evaluation.bench`, the runner). ``figures/``: score
histograms (normal vs abnormal, per row and task) and a gallery of anomaly maps side by side per row, from the
runs' ``predictions.npz`` (present where the bench ran; kept results have none, so only the tables are made).

Example::

    from medad_edu.evaluation.bench import load_results
    from medad_edu.interface.bench_report import render_markdown
    print(render_markdown(load_results("book/results/embedded_quick")))

Defined in: notebooks/41_results.ipynb
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np

from ..data import MultiTaskData, load_data
from ..data.batches import split_tensors
from ..evaluation.bench import PRED_NAME
from ..utils import atomic_write_bytes
from .plots import anomaly_gallery, score_histogram_grid


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


def _row(record: dict) -> str:
    """A run's (or failure's) bench row: its variant, or its method in benches kept from before variants."""
    return record.get("variant") or record["method"]


def runs_by_row(results: dict) -> dict[str, list[dict]]:
    """``{row: [run records by seed]}`` in the bench's row order (rows without a finished run left out)."""
    out: dict[str, list[dict]] = {n: [] for n in results.get("variants") or results["methods"]}
    for r in sorted(results["runs"], key=lambda r: r["seed"]):
        out.setdefault(_row(r), []).append(r)
    return {n: rs for n, rs in out.items() if rs}


def summary_table(results: dict) -> dict[str, dict[str, tuple[float | None, float | None]]]:
    """``{row: {metric: (mean over seeds, std)}}`` of the task-mean metrics (what the tables print); a row is a
    method, or a variant in a variants bench."""
    keys = ("image_auroc", "f1", "acc", "acc_at_valid_threshold", "pixel_auroc", "aupro", "ap", "dice")
    return {m: {k: _mean_std([r["evaluation"]["mean"].get(k) for r in rs]) for k in keys}
            for m, rs in runs_by_row(results).items()}


def render_markdown(results: dict, heading_level: int = 1) -> str:
    """``results.md`` from ``results.json`` alone (deterministic: the book's test regenerates and compares).

    ``heading_level`` is the level of the title (``#`` by default, as in ``results.md``); the sections are one
    level below. A page that shows the tables under its own sections passes e.g. 4 (``####``).
    """
    if not 1 <= heading_level <= 5:
        raise ValueError(f"heading_level must be 1 to 5; got {heading_level}")
    h1, h2 = "#" * heading_level, "#" * (heading_level + 1)
    by = runs_by_row(results)
    row_kind = "Variant" if results.get("variants") else "Method"
    tasks = results["data"]["tasks"]
    seeds_txt = "; ".join(f"{m}: {', '.join(str(r['seed']) for r in rs)}" for m, rs in by.items())
    n_test = results["data"].get("n_test", {})
    lines = [f"{h1} Benchmark: {results['data']['name']} data, `{results['config']}` configuration", ""]
    lines.append(f"- Data: `{results['data']['spec']}`, tasks {', '.join(tasks)}, {results['data']['image_size']} px "
                 f"(`{results['data']['sizes']}` sizes); test images per task (normal + abnormal): "
                 + ", ".join(f"{t} {n[0]}+{n[1]}" for t, n in n_test.items()) + ".")
    if results.get("variants"):  # a variants bench: its rows are named variants of methods
        lines.append("- Variants (method): " + ", ".join(f"{n} ({results['variants'][n]['method']})" for n in by)
                     + "; their options are in results.json.")
    lines.append(f"- Seeds per {row_kind.lower()}: {seeds_txt}.")
    lines.append(f"- Hardware: {results['hardware']}; device `{results['device']}`, {results['torch_threads']} torch "
                 f"thread(s); torch {results['versions'].get('torch', '?')}, medad_edu "
                 f"{results['versions'].get('medad_edu', '?')}.")
    if results.get("note"):
        lines.append(f"- Note: {results['note']}")
    if results.get("failures"):
        lines.append("- Failed runs: " + "; ".join(f"{_row(f)} seed {f['seed']} ({f['error']})"
                                                   for f in results["failures"]) + ".")
    lines += ["", f"{h2} Image-level detection per task (All-in-One Table 1 layout)", "",
              "AUC / F1 / ACC in %, each the mean over seeds. As in the All-in-One paper, F1 and ACC are taken at "
              "the threshold that maximises F1 on the test set itself (optimistic); **ACC@val** is the accuracy "
              "at the threshold chosen on validation data at training time (what a deployed model gets).", ""]
    head = [row_kind] + [f"{t} AUC / F1 / ACC" for t in tasks] + ["Mean AUC / F1 / ACC", "ACC@val"]
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
    head = [row_kind, "seeds", "Image AUROC", "Pixel AUROC", "AUPRO", "AP", "best Dice"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, rs in by.items():
        cells = [m, str(len(rs))] + [_pm([r["evaluation"]["mean"].get(k) for r in rs])
                                     for k in ("image_auroc", "pixel_auroc", "aupro", "ap", "dice")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"{h2} Image AUROC per task (%, mean ± std over seeds)", ""]
    head = [row_kind] + tasks
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, rs in by.items():
        lines.append("| " + " | ".join([m] + [_pm([r["evaluation"]["tasks"].get(t, {}).get("image_auroc")
                                                    for r in rs]) for t in tasks]) + " |")
    sized = {m: [r["lesion_size"] for r in rs if r.get("lesion_size")] for m, rs in by.items()}
    if all(sized.values()) and sized:  # every row has it (benches kept before it existed have none)
        first = next(iter(sized.values()))[0]
        lines += ["", f"{h2} Image AUROC per lesion size (%, mean ± std over seeds)", "",
                  "Per task, the normal test images against the abnormal ones of each tercile of lesion area (the "
                  "share of the image inside the lesion mask), then the mean over the tasks with masks ("
                  + ", ".join(first["tasks"]) + "). The ranges are the mean over those tasks of each tercile's "
                  "smallest and largest lesion.", ""]
        head = [row_kind] + [f"{b} ({100 * x['area_min']:.1f}-{100 * x['area_max']:.1f} % of pixels)"
                             for b, x in zip(first["bins"], first["mean"])]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for m, ss in sized.items():
            lines.append("| " + " | ".join([m] + [_pm([x["mean"][j]["image_auroc"] for x in ss])
                                                for j in range(len(first["bins"]))]) + " |")
    lines += ["", f"{h2} Cost ({results['hardware']}, device `{results['device']}`)", "",
              "Mean over seeds. Train s: wall time of training (incl. fitting hooks and threshold choice); CPU s: "
              "process CPU time of the same (unaffected by other jobs on a shared machine); train img/s: images "
              "per second of computation (time waiting for batches excluded); data wait: share of the epoch time "
              "spent waiting for batches; infer img/s: test images per second (scores and maps); peak MB: "
              + _peak_kind(results) + ".", ""]
    head = [row_kind, "epochs", "train s", "CPU s", "train img/s", "data wait %", "infer img/s", "peak MB"]
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
    """``{row: predictions.npz content}`` of each row's lowest seed (runs whose files are present)."""
    out = {}
    for m, rs in runs_by_row(results).items():
        pred = _load_predictions(rs[0])
        if pred is not None:
            out[m] = pred
    return out


def make_figures(results: dict, data: MultiTaskData, fig_dir: str | Path, dpi: int = 100) -> list[Path]:
    """``score_histograms.png`` and ``gallery.png`` (each method's lowest seed) in ``fig_dir``."""
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


def write_report(results: dict, out_dir: str | Path, data: MultiTaskData | None = None, figures: bool = True,
                 log: Callable[[str], None] = print) -> list[Path]:
    """Write ``OUT/results.md`` and (when the runs' predictions are present) ``OUT/figures/``; returns the paths.

    ``data`` is the bench's data for the gallery's images; by default it is loaded again from
    ``results["data"]`` (only if there are predictions to show).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "results.md"]
    atomic_write_bytes(written[0], render_markdown(results).encode())
    if not figures or not first_seed_predictions(results):
        return written
    try:
        if data is None:
            d = results["data"]
            data = load_data(d["spec"], image_size=d["image_size"], sizes=d["sizes"], tasks=d["tasks"], seed=0)
        written += make_figures(results, data, out_dir / "figures")
    except Exception as err:  # figures are a convenience; the numbers are already written
        log(f"[bench] figures failed: {type(err).__name__}: {err}")
    return written


__all__ = ["first_seed_predictions", "make_figures", "render_markdown", "runs_by_row", "summary_table",
           "write_report"]
