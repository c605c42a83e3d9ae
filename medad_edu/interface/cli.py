"""The ``medad-edu`` command line (also ``python -m medad_edu``).

Subcommands::

    medad-edu data make --out DIR [--size N] [--seed S] [--set phantom|real] [--sizes tiny|quick|paper]
    medad-edu train --method NAME --data DIR|embedded --out RUN [--config quick|paper] [--epochs N]
                    [--image-size N] [--batch-size N] [--lr LR] [--device auto|cpu|cuda|mps] [--seed S]
    medad-edu evaluate --run RUN [--data DIR] --json FILE
    medad-edu bench ...      (see medad-edu bench --help)
    medad-edu predict ...    (see medad-edu predict --help)
    medad-edu methods        (list the methods this installation provides)

Bad input gives a non-zero exit and a one-line reason on stderr (``--debug`` shows the traceback).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .. import __version__

EXIT_BAD_INPUT = 2


class CliError(Exception):
    """A problem with the user's input; printed as one line."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _image_size(text: str) -> int:
    value = _positive_int(text)
    if value % 16:
        raise argparse.ArgumentTypeError(f"image size must be a multiple of 16 (e.g. 64 or 256), got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def _task_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _add_data_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--data", required=required, default=None if required else None,
                   help="'embedded' (procedural phantoms, the default data), 'embedded:real' (real anatomy "
                        "shipped in packages) or a folder: a multi-task root (one sub-folder per task, optional "
                        "tasks.json of prompts) or one task folder in the BMAD, MedIAnomaly or plain layout")
    p.add_argument("--tasks", type=_task_list, default=None, help="comma-separated subset of task names")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medad-edu", description="Unsupervised anomaly detection in medical "
                                     "images: data, training, evaluation and benchmarks.")
    parser.add_argument("--version", action="version", version=f"medad-edu {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    data = sub.add_parser("data", help="make the embedded datasets on disk")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION")
    make = data_sub.add_parser("make", help="write an embedded set in the BMAD layout with tasks.json")
    make.add_argument("--out", required=True, type=Path, help="output folder (one sub-folder per task)")
    make.add_argument("--size", type=_image_size, default=64, help="image side in pixels, multiple of 16 (default 64)")
    make.add_argument("--seed", type=int, default=0, help="random seed of the generator (default 0)")
    make.add_argument("--set", dest="kind", choices=["phantom", "real"], default="phantom",
                      help="procedural phantoms of five modalities, or lesions on real anatomy (default phantom)")
    make.add_argument("--sizes", choices=["tiny", "quick", "paper"], default="quick",
                      help="images per split: tiny 48/8+8/16+16, quick 200/20+20/60+60, paper 1000/100+100/300+300 "
                           "(train / valid normal+abnormal / test normal+abnormal, per task)")
    make.add_argument("--tasks", type=_task_list, default=None, help="comma-separated subset of tasks")

    tr = sub.add_parser("train", help="train one method; writes RUN/checkpoint.pt, config.json, history.json")
    tr.add_argument("--method", required=True, help="method name (see `medad-edu methods`)")
    _add_data_args(tr, required=False)
    tr.add_argument("--out", required=True, type=Path, help="run folder (an unfinished run there is resumed)")
    tr.add_argument("--config", choices=["quick", "paper"], default="quick",
                    help="quick: CPU, 64 px, minutes; paper: 256 px, 250 epochs, batch 64, Adam 5e-4 (default quick)")
    tr.add_argument("--epochs", type=_positive_int, help="override the configuration's number of epochs")
    tr.add_argument("--image-size", type=_image_size, help="override the image side (multiple of 16)")
    tr.add_argument("--batch-size", type=_positive_int, help="override the batch size")
    tr.add_argument("--lr", type=_positive_float, help="override the learning rate")
    tr.add_argument("--device", default="auto", help="auto (cuda, else mps, else cpu), cpu, cuda, cuda:N or mps")
    tr.add_argument("--seed", type=int, default=0, help="training seed (default 0); the data is fixed")
    tr.add_argument("--sizes", choices=["tiny", "quick", "paper"], help="embedded data size preset")
    tr.add_argument("--workers", type=int, default=None, help="threads decoding image files (default: 0)")
    tr.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="method option, repeatable, value parsed as JSON when possible (e.g. --option top_k=2)")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")

    ev = sub.add_parser("evaluate", help="evaluate a trained run on the test split; writes a JSON file")
    ev.add_argument("--run", required=True, type=Path, help="run folder written by `medad-edu train`")
    ev.add_argument("--data", default=None, help="data to evaluate on (default: the data the run was trained on)")
    ev.add_argument("--tasks", type=_task_list, default=None, help="comma-separated subset of task names")
    ev.add_argument("--json", required=True, type=Path, help="output JSON file")
    ev.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    ev.add_argument("--split", choices=["test", "valid"], default="test", help="split to evaluate (default test)")

    sub.add_parser("methods", help="list the available methods")

    from ..evaluation import bench
    from . import predict

    bench.add_arguments(sub.add_parser("bench", help="train and evaluate several methods side by side"))
    predict.add_arguments(sub.add_parser("predict", help="score new images with a trained run"))
    return parser


def _parse_options(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise CliError(f"--option expects KEY=VALUE, got {item!r}")
        key, val = item.split("=", 1)
        try:
            out[key] = json.loads(val)
        except json.JSONDecodeError:
            out[key] = val
    return out


def _print_table(report: dict) -> None:
    cols = [("image_auroc", "AUROC"), ("f1", "F1"), ("acc", "ACC"), ("pixel_auroc", "pxAUROC"), ("aupro", "AUPRO")]
    rows = list(report["tasks"].items()) + [("mean", report["mean"])]
    width = max(len(n) for n, _ in rows)
    print(f"{report['method']} ({report['split']}, %)")
    print(f"{'task':<{width}}  " + "  ".join(f"{c:>7}" for _, c in cols))
    for name, m in rows:
        cells = ["    n/a" if m.get(k) is None else f"{100 * m[k]:7.2f}" for k, _ in cols]
        print(f"{name:<{width}}  " + "  ".join(cells))


def cmd_data_make(args) -> int:
    from ..data import load_embedded, write_bmad

    t0 = time.perf_counter()
    data = load_embedded(args.kind, image_size=args.size, seed=args.seed, sizes=args.sizes, tasks=args.tasks)
    write_bmad(data, args.out)
    n = sum(len(t.train) + len(t.valid or []) + len(t.test) for t in data.tasks)
    print(f"wrote {n} images of {len(data.tasks)} tasks ({', '.join(data.task_names)}) at {args.size} px to "
          f"{args.out} in {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_train(args) -> int:
    from ..training import make_config, train

    cfg = make_config(args.method, args.config, options=_parse_options(args.option), data=args.data,
                      epochs=args.epochs, image_size=args.image_size, batch_size=args.batch_size, lr=args.lr,
                      device=args.device, seed=args.seed, sizes=args.sizes, tasks=args.tasks,
                      num_workers=args.workers)
    t0 = time.perf_counter()
    result = train(cfg, args.out, progress=not args.no_progress)
    ips = result.images_per_second
    speed = f"{ips:.2f}" if ips < 10 else f"{ips:.0f}"  # a 256-px model on a CPU trains at well under 1 img/s
    print(f"trained {cfg.method} on {result.data.name} ({', '.join(result.data.task_names)}) for "
          f"{len(result.history)} epochs in {time.perf_counter() - t0:.1f} s "
          f"({speed} img/s); checkpoint: {args.out / 'checkpoint.pt'}")
    return 0


def cmd_evaluate(args) -> int:
    from ..data import load_data
    from ..evaluation import evaluate_model
    from ..training import TrainConfig, load_model
    from ..utils import atomic_write_json, get_device

    device = get_device(args.device)
    model, state = load_model(args.run, device)
    cfg = TrainConfig.from_dict(state["config"])
    data = load_data(args.data or cfg.data, image_size=model.image_size, sizes=cfg.sizes,
                     tasks=args.tasks or cfg.tasks, seed=0)
    report = evaluate_model(model, data, args.split, device, batch_size=cfg.batch_size,
                            thresholds=state.get("thresholds"))
    report["run"] = str(args.run)
    report["data"] = data.name
    atomic_write_json(args.json, report)
    _print_table(report)
    print(f"wrote {args.json}")
    return 0


def cmd_methods(args) -> int:
    from ..models import METHODS, available_methods, get_method

    for name in available_methods():
        doc = (get_method(name).__module__ and sys.modules[get_method(name).__module__].__doc__ or "").strip()
        print(f"{name:<10} {doc.splitlines()[0] if doc else ''}")
    missing = sorted(set(METHODS) - set(available_methods()))
    if missing:
        print(f"(not in this version: {', '.join(missing)})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_BAD_INPUT
    if args.command == "data" and getattr(args, "data_command", None) is None:
        parser.parse_args(["data", "--help"])
    handlers = {"data": cmd_data_make, "train": cmd_train, "evaluate": cmd_evaluate, "methods": cmd_methods}
    if args.command == "bench":
        from ..evaluation import bench
        handler = bench.run
    elif args.command == "predict":
        from . import predict
        handler = predict.run
    else:
        handler = handlers[args.command]
    if args.command == "train" and args.data is None:
        args.data = "embedded"
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        print("medad-edu: interrupted; the last finished epoch is saved and the same command resumes it",
              file=sys.stderr)
        return 130
    except (CliError, ValueError, FileNotFoundError, KeyError, RuntimeError, FloatingPointError, OSError) as err:
        if args.debug:
            raise
        print(f"medad-edu {args.command}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
