"""``medad-edu predict``: score new images with a trained run; write a CSV, anomaly maps and overlays.

::

    medad-edu predict --run RUN --images DIR|FILE [--task NAME | --prompt TEXT] [--threshold T] --out DIR

What it does, per image (any format :func:`medad_edu.data.imageio.read_image` reads: 8/16-bit grey, RGB, RGBA,
palette, TIFF, DICOM; any size):

1. read it as grey in [0, 1] and resize it to the model's input size (huge images are simply resized;
   images smaller than 8 x 8 pixels, unreadable files and files of other types are listed with the reason and
   skipped -- the command fails only if *nothing* could be scored);
2. run the model with the chosen task: the anomaly map and the image score;
3. decide ``abnormal`` if ``score >= threshold``. The threshold is the one chosen at training time on the
   validation data and stored in the checkpoint (``state["thresholds"][task]``: F1-max when the validation
   split has both classes, else the 99th percentile of normal scores); ``--threshold`` overrides it.

Outputs in ``--out``: ``scores.csv`` (``file, task, score, threshold, decision, original_size``), ``skipped.csv``
(``file, reason``) when something was skipped, and per image ``<name>_map.png``, the anomaly map in the
*inferno* colour map at the image's own size (longest side capped by ``--max-side``), and ``<name>_overlay.png``,
a figure to read at a glance: the map over the image (the same size, small images enlarged to at least
``--overlay-min-side`` pixels), the file name, score, threshold and decision above it, and the colour bar
beside it. All maps of one call share one colour scale (``--map-max``, default the 99.5th percentile over the
call's maps), so brighter means more anomalous *across* the images of the call.

Task choice: a run trained on one task needs neither option. ``--task NAME`` names one of the run's tasks.
``--prompt TEXT`` is for prompt-driven models (All-in-One) only: the text is matched to the run's stored task
prompts (exact match after lower-casing and dropping punctuation, else the prompt sharing most words, at least
half of them); the image is then routed with that task's stored prompt and judged with that task's threshold.
Free text that matches no stored prompt is refused with the list of prompts: the stored thresholds were chosen
for those prompts only.

Python::

    from medad_edu.interface.predict_files import predict_images
    report = predict_images("runs/ae", "new_scans/", task="chest_xray", out_dir="pred")
    report.rows[0]   # {'file': ..., 'task': ..., 'score': ..., 'threshold': ..., 'decision': ...}

Explained in notebooks/41_results.ipynb (section "Using a trained model on new images").

Defined in: notebooks/41_results.ipynb
"""
from __future__ import annotations

import argparse
import csv
import io
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..data.imageio import IMAGE_SUFFIXES, ImageReadError, read_image, resize
from ..utils import atomic_write_bytes, get_device

CSV_COLUMNS = ("file", "task", "score", "threshold", "decision", "original_size")


@dataclass
class PredictReport:
    task: str
    threshold: float
    threshold_source: str  # "checkpoint (<rule>)" or "--threshold"
    rows: list[dict] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    note: str = ""


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def match_prompt(text: str, prompts: list[str]) -> tuple[int, str]:
    """Index of the stored prompt that ``text`` means, and how it was matched; ``ValueError`` if none."""
    want = _words(text)
    for i, p in enumerate(prompts):
        if _words(p) == want:
            return i, "exact match"
    overlap = []
    for p in prompts:
        a, b = set(want), set(_words(p))
        overlap.append(len(a & b) / max(1, len(a | b)))
    order = sorted(range(len(prompts)), key=lambda i: -overlap[i])
    if order and overlap[order[0]] >= 0.5 and (len(order) == 1 or overlap[order[1]] < overlap[order[0]]):
        best = order[0]
        return best, f"closest stored prompt {prompts[best]!r} (word overlap {overlap[best]:.2f})"
    listing = "; ".join(f"{p!r}" for p in prompts)
    raise ValueError(f"prompt {text!r} matches none of the run's prompts ({listing}); pass one of them or --task")


def resolve_task(model, task: str | None, prompt: str | None) -> tuple[int, str]:
    """``(task id, note)`` from ``--task`` / ``--prompt`` (see the module docstring)."""
    names = list(model.task_names)
    if task is not None and prompt is not None:
        raise ValueError("give either --task or --prompt, not both")
    if prompt is not None:
        if not getattr(model, "use_prompts", False):
            raise ValueError(f"--prompt is only for prompt-driven models (allinone); this run is {model.name!r}: "
                             f"use --task with one of {names}")
        idx, how = match_prompt(prompt, list(model.prompts))
        return idx, f"prompt {prompt!r} -> task {names[idx]!r} ({how})"
    if task is not None:
        if task not in names:
            raise ValueError(f"unknown task {task!r}; this run knows {names}")
        return names.index(task), ""
    if len(names) == 1:
        return 0, ""
    raise ValueError(f"this run has several tasks {names}: choose one with --task NAME"
                     + (" or --prompt TEXT" if getattr(model, "use_prompts", False) else ""))


def list_images(path: Path, recursive: bool = False) -> tuple[list[Path], list[tuple[str, str]]]:
    """Candidate files under ``path`` (or ``path`` itself) and the files skipped for their type."""
    if path.is_file():
        return [path], []
    if not path.is_dir():
        raise FileNotFoundError(f"--images {path}: no such file or folder")
    files = sorted(p for p in (path.rglob("*") if recursive else path.iterdir())
                   if p.is_file() and not p.name.startswith("."))
    keep = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    skipped = [(str(p), f"not a supported image type ({p.suffix or 'no suffix'}; supported: "
                        f"{', '.join(sorted(IMAGE_SUFFIXES))})") for p in files if p not in keep]
    return keep, skipped


def _out_size(h: int, w: int, max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def _resize_float(arr: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    if arr.shape == hw:
        return arr.astype(np.float32)
    img = Image.fromarray(arr.astype(np.float32), mode="F")
    return np.asarray(img.resize((hw[1], hw[0]), Image.BILINEAR), dtype=np.float32)


def _png(arr_uint8: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr_uint8).save(buf, format="PNG")
    return buf.getvalue()


def predict_images(run: str | Path, images: str | Path, task: str | None = None, prompt: str | None = None,
                   threshold: float | None = None, out_dir: str | Path | None = None, device: str = "auto",
                   batch_size: int = 32, recursive: bool = False, map_max: float | None = None,
                   max_side: int = 1024, log: Callable[[str], None] | None = None,
                   overlay_min_side: int = 256) -> PredictReport:
    """Score ``images`` (a file or a folder) with the run ``run``; write outputs to ``out_dir`` if given."""
    from ..interface.plots import overlay_figure
    from ..training import load_model

    log = log or (lambda m: print(m, file=sys.stderr))
    dev = get_device(device)
    model, state = load_model(run, dev)
    tid, note = resolve_task(model, task, prompt)
    task_name = model.task_names[tid]
    if threshold is not None:
        thr, source = float(threshold), "--threshold"
    else:
        stored = state.get("thresholds", {}).get(task_name)
        if stored is None:
            raise ValueError(f"{run}: the checkpoint stores no threshold for task {task_name!r}; pass --threshold")
        thr = float(stored)
        source = f"checkpoint ({state['thresholds'].get(task_name + ':rule', 'validation')})"
    report = PredictReport(task_name, thr, source, note=note)
    if note:
        log(note)
    root = Path(images)
    files, report.skipped = list_images(root, recursive)
    arrays, originals, names = [], [], []
    for path in files:
        try:
            arr = read_image(path)
        except ImageReadError as err:
            report.skipped.append((str(path), str(err)))
            continue
        except Exception as err:  # anything else a decoder may raise: report it, keep going
            report.skipped.append((str(path), f"{path}: could not be read ({type(err).__name__}: {err})"))
            continue
        originals.append(arr)
        arrays.append(resize(arr, model.image_size))
        names.append(path)
    for f, why in report.skipped:
        log(f"skipped {f}: {why}")
    if not arrays:
        return report
    x = torch.from_numpy(np.stack(arrays)).unsqueeze(1)
    scores, maps = [], []
    with torch.no_grad():
        for s in range(0, len(x), batch_size):
            xb = x[s:s + batch_size].to(dev)
            out = model(xb, torch.full((len(xb),), tid, dtype=torch.long, device=dev))
            scores.append(out.pred_score.float().cpu())
            maps.append(out.anomaly_map.float().cpu()[:, 0])
    score_arr, map_arr = torch.cat(scores).numpy(), torch.cat(maps).numpy()
    top = float(map_max) if map_max is not None else float(np.percentile(map_arr, 99.5))
    top = top if top > 0 else 1.0
    used: dict[str, int] = {}
    for i, path in enumerate(names):
        rel = str(path.relative_to(root)) if root.is_dir() else path.name
        report.rows.append({"file": rel, "task": task_name, "score": float(score_arr[i]), "threshold": thr,
                            "decision": "abnormal" if score_arr[i] >= thr else "normal",
                            "original_size": f"{originals[i].shape[1]}x{originals[i].shape[0]}"})
        if out_dir is None:
            continue
        import matplotlib

        stem = path.stem
        n = used.get(stem, 0)
        used[stem] = n + 1
        stem = stem if n == 0 else f"{stem}_{n + 1}"
        report.rows[-1]["outputs"] = stem
        hw = _out_size(*originals[i].shape, max_side)
        amap = _resize_float(map_arr[i], hw)
        heat = matplotlib.colormaps["inferno"](np.clip(amap / top, 0, 1))[..., :3]
        atomic_write_bytes(Path(out_dir) / f"{stem}_map.png", _png((heat * 255).astype(np.uint8)))
        base = np.clip(_resize_float(originals[i], hw), 0, 1)
        row = report.rows[-1]
        shown = row["file"] if len(row["file"]) <= 40 else "..." + row["file"][-37:]
        title = (f"{shown}: {row['decision']} ({task_name})\n"
                 f"score {row['score']:.4g} {'>=' if row['decision'] == 'abnormal' else '<'} threshold {thr:.4g}")
        fig, _ = overlay_figure(base, amap, title=title, vmax=top, min_side=min(overlay_min_side, max_side),
                                colorbar_label="anomaly map (one scale per call)")
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=fig.dpi)
        atomic_write_bytes(Path(out_dir) / f"{stem}_overlay.png", buf.getvalue())
    if out_dir is not None:
        _write_csvs(Path(out_dir), report)
    return report


def _write_csvs(out_dir: Path, report: PredictReport) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in report.rows:
        w.writerow([r["file"], r["task"], f"{r['score']:.6g}", f"{r['threshold']:.6g}", r["decision"],
                    r["original_size"]])
    atomic_write_bytes(out_dir / "scores.csv", buf.getvalue().encode())
    if report.skipped:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(("file", "reason"))
        w.writerows(report.skipped)
        atomic_write_bytes(out_dir / "skipped.csv", buf.getvalue().encode())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``medad-edu predict`` arguments."""
    parser.add_argument("--run", required=True, type=Path, help="run folder written by `medad-edu train` or bench")
    parser.add_argument("--images", required=True, type=Path, help="an image file or a folder of images")
    parser.add_argument("--task", default=None, help="which of the run's tasks the images belong to")
    parser.add_argument("--prompt", default=None,
                        help="prompt-driven models (allinone) only: a text matched to the run's stored prompts")
    parser.add_argument("--threshold", type=float, default=None,
                        help="decision threshold on the image score (default: the one stored in the checkpoint, "
                             "chosen on validation data at training time)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (scores.csv, maps, overlays)")
    parser.add_argument("--device", default="auto", help="auto (cuda, else mps, else cpu), cpu, cuda, cuda:N or mps")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    parser.add_argument("--recursive", action="store_true", help="also score images in sub-folders")
    parser.add_argument("--map-max", type=float, default=None,
                        help="top of the maps' colour scale (default: 99.5th percentile over this call's maps)")
    parser.add_argument("--max-side", type=int, default=1024, help="longest side of the written PNGs (default 1024)")
    parser.add_argument("--overlay-min-side", type=int, default=256,
                        help="small images are enlarged in the overlay figures to this longest side (default 256)")


def run(args: argparse.Namespace) -> int:
    """``medad-edu predict``: 0 if at least one image was scored, 1 if none could be."""
    if args.batch_size < 1 or args.max_side < 8 or args.overlay_min_side < 8:
        raise ValueError(f"--batch-size must be >= 1, --max-side and --overlay-min-side >= 8; got "
                         f"{args.batch_size}, {args.max_side}, {args.overlay_min_side}")
    args.out.mkdir(parents=True, exist_ok=True)
    report = predict_images(args.run, args.images, task=args.task, prompt=args.prompt, threshold=args.threshold,
                            out_dir=args.out, device=args.device, batch_size=args.batch_size,
                            recursive=args.recursive, map_max=args.map_max, max_side=args.max_side,
                            overlay_min_side=args.overlay_min_side)
    if not report.rows:
        if report.skipped:
            _write_csvs(args.out, report)
        print(f"medad-edu predict: no image could be scored ({len(report.skipped)} skipped; see above)",
              file=sys.stderr)
        return 1
    print(f"task {report.task}, threshold {report.threshold:.6g} from {report.threshold_source}")
    width = max(len(r["file"]) for r in report.rows)
    for r in report.rows:
        print(f"{r['file']:<{width}}  {r['score']:.6g}  {r['decision']}")
    n_ab = sum(r["decision"] == "abnormal" for r in report.rows)
    print(f"scored {len(report.rows)} image(s) ({n_ab} abnormal), skipped {len(report.skipped)}; wrote "
          f"{args.out / 'scores.csv'}" + (f" and {args.out / 'skipped.csv'}" if report.skipped else ""))
    return 0


__all__ = ["CSV_COLUMNS", "PredictReport", "add_arguments", "list_images", "match_prompt", "predict_images",
           "resolve_task", "run"]
