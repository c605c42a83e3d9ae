"""The ``medad-edu`` command line (also ``python -m medad_edu``).

Subcommands::

    medad-edu data make --out DIR [--size N] [--seed S] [--set phantom|real] [--sizes tiny|quick|paper]
    medad-edu train --method NAME --data DIR|embedded --out RUN [--config quick|paper] [--epochs N]
                    [--image-size N] [--batch-size N] [--lr LR] [--device auto|cpu|cuda|mps] [--seed S]
                    [--option KEY=VALUE ...] [--allow-config-change] [--compile] [--channels-last] [--sync-bn]
    torchrun --nproc-per-node N -m medad_edu train ...   (distributed data-parallel: the same flags; --batch-size
                    is the global batch, split over the N processes)
    medad-edu evaluate --run RUN [--data DIR] --json FILE [--method NAME] [--allow-incomplete] [--allow-nonfinite]
    medad-edu bench --out DIR [--methods M,M | --variants FILE] [--data ...] [--config quick|paper] [--seeds 0,1,2]
                    [--report-only] ... (see medad-edu bench --help)
    medad-edu predict ...    (see medad-edu predict --help)
    medad-edu methods        (list the methods this installation provides)

Bad input gives a non-zero exit and a one-line reason on stderr (``--debug`` shows the traceback).
Checkpoints are only ever read with ``weights_only=True`` (``medad_edu.training.checkpoint``): ``evaluate``,
``predict`` and a resumed ``train`` refuse a file that could run code.

Defined in: book/real_benchmarks.md, book/setup.md
"""
from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from pathlib import Path
from typing import Any

from .. import __version__
from ..models.base import check_image_size

EXIT_BAD_INPUT = 2


class CliError(Exception):
    """A problem with the user's input; printed as one line."""


def _int_at_least(minimum: int, expected: str):
    """An argparse type: an integer >= ``minimum``; errors say ``expected <expected>, got ...``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
        return value
    return parse


_positive_int = _int_at_least(1, "a positive integer")
_non_negative_int = _int_at_least(0, "a whole number >= 0")


def _image_size(text: str) -> int:
    try:  # the package's one rule (every encoder halves the side four times)
        return check_image_size(_positive_int(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{err} (e.g. 64 or 256)") from None


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
    tr.add_argument("--epochs", type=_positive_int,
                    help="override the configuration's number of epochs, taken as it is (a method's min_steps, which "
                         "lengthens training on a small set, no longer applies)")
    tr.add_argument("--image-size", type=_image_size, help="override the image side (multiple of 16)")
    tr.add_argument("--batch-size", type=_positive_int, help="override the batch size")
    tr.add_argument("--lr", type=_positive_float, help="override the learning rate")
    tr.add_argument("--lr-schedule", choices=["constant", "cosine"], default=None,
                    help="learning rate over the epochs: constant, or cosine decay from --lr towards 0 "
                         "(default: the method's configuration's; cosine for mtl quick, else constant)")
    tr.add_argument("--device", default="auto", help="auto (cuda, else mps, else cpu), cpu, cuda, cuda:N or mps")
    tr.add_argument("--seed", type=int, default=0, help="training seed (default 0); the data is fixed")
    tr.add_argument("--sizes", choices=["tiny", "quick", "paper"], help="embedded data size preset")
    tr.add_argument("--workers", type=_non_negative_int, default=None,
                    help="threads decoding image files, 0 or more (default: 0)")
    tr.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="method option, repeatable, value parsed as JSON when possible (e.g. --option top_k=2); "
                         "an unknown option or a value of the wrong type is an error naming the method's options")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")
    tr.add_argument("--allow-config-change", action="store_true",
                    help="resume a run in --out even though these settings differ from its config.json "
                         "(without it such a resume is refused and the differences are listed)")
    tr.add_argument("--compile", action="store_true",
                    help="torch.compile the training step (default off; the first steps wait for the compiler)")
    tr.add_argument("--channels-last", action="store_true",
                    help="CUDA only: weights and batches in channels-last memory format (may speed up convolutions "
                         "on GPUs); ignored on the CPU")
    tr.add_argument("--sync-bn", action="store_true",
                    help="CUDA under torchrun only: BatchNorm statistics over the global batch (SyncBatchNorm) "
                         "instead of each process's share; ignored otherwise")

    ev = sub.add_parser("evaluate", help="evaluate a trained run on the test split; writes a JSON file")
    ev.add_argument("--run", required=True, type=Path, help="run folder written by `medad-edu train`")
    ev.add_argument("--data", default=None, help="data to evaluate on (default: the data the run was trained on)")
    ev.add_argument("--tasks", type=_task_list, default=None, help="comma-separated subset of task names")
    ev.add_argument("--json", required=True, type=Path, help="output JSON file")
    ev.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    ev.add_argument("--split", choices=["test", "valid"], default="test", help="split to evaluate (default test)")
    ev.add_argument("--method", default=None, help="the method the run must hold (an error if it holds another)")
    ev.add_argument("--allow-incomplete", action="store_true",
                    help="evaluate a run whose training is unfinished (marked in the JSON; refused without it)")
    ev.add_argument("--allow-nonfinite", action="store_true",
                    help="evaluate a model with NaN/infinite weights (marked in the JSON; refused without it)")

    sub.add_parser("methods", help="list the available methods")

    _add_bench_args(sub.add_parser("bench", help="train and evaluate several methods (or variants) side by side; "
                                                 "writes results.json, results.md and figures"))
    from . import predict_files

    predict_files.add_arguments(sub.add_parser("predict", help="score new images with a trained run"))
    from . import student

    student.add_arguments(sub.add_parser("book", help="the book's notebooks: `book student` writes them "
                                                      "without solutions"))
    return parser


def _seed_list(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in _task_list(text)]
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


def _add_bench_args(parser: argparse.ArgumentParser) -> None:
    """The ``medad-edu bench`` arguments (the runner is :func:`medad_edu.evaluation.bench.run_bench`)."""
    rows = parser.add_mutually_exclusive_group()
    rows.add_argument("--methods", type=_task_list, default=None,
                      help="comma-separated methods (default: every method this installation provides)")
    rows.add_argument("--variants", type=Path, default=None, metavar="FILE",
                      help="a JSON file of bench rows {name: {\"method\": M, \"options\": {...}, \"seeds\": [...], "
                           "\"epochs\": N, \"diagnostics\": [...]}} (e.g. book/results/mtl_ablations/variants.json), "
                           "run instead of --methods with the same caching")
    parser.add_argument("--data", default="embedded",
                        help="'embedded' (default), 'embedded:real' or a data folder (as for medad-edu train)")
    parser.add_argument("--config", choices=["quick", "paper"], default="quick",
                        help="quick: CPU, 64 px; paper: 256 px, 250 epochs, batch 64 (default quick)")
    parser.add_argument("--seeds", type=_seed_list, default=[0, 1, 2], help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--method-seeds", type=_method_seeds, default=None, metavar="M=S,S;M=S",
                        help="other seeds for some methods, e.g. 'allinone=0;mtl=0' for slow ones")
    parser.add_argument("--out", required=True, type=Path,
                        help="output folder (results.json, results.md, figures/, runs/); rerunning resumes")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: rewrite results.md (and figures/, where the runs' predictions are "
                             "present) from OUT/results.json")
    parser.add_argument("--sizes", choices=["tiny", "quick", "paper"], default=None,
                        help="embedded data size preset (default: the configuration's)")
    parser.add_argument("--tasks", type=_task_list, default=None, help="comma-separated subset of tasks")
    parser.add_argument("--epochs", type=_positive_int, default=None,
                        help="override every row's epochs, a variant's own too, taken as they are (no min_steps; "
                             "smoke tests; the timing table shows the epochs)")
    parser.add_argument("--image-size", type=_image_size, default=None,
                        help="override the image side (multiple of 16)")
    parser.add_argument("--batch-size", type=_positive_int, default=None, help="override every method's batch size")
    parser.add_argument("--lr-schedule", choices=["constant", "cosine"], default=None,
                        help="override every method's learning-rate schedule (default: each method's; "
                             "cosine for mtl quick, else constant)")
    parser.add_argument("--device", default="auto", help="auto (cuda, else mps, else cpu), cpu, cuda, cuda:N or mps")
    parser.add_argument("--threads", type=_positive_int, default=None,
                        help="torch CPU threads (default: torch's choice; 1 is faster on a busy shared machine)")
    parser.add_argument("--patchcore-backbone", default="auto",
                        help="auto (encoder of this bench's mtl, else allinone, else ae run), random, run:RUN_DIR, "
                             "resnet18, resnet50 or wide_resnet50_2 (needs local ImageNet weights)")
    parser.add_argument("--option", action="append", default=[], metavar="METHOD.KEY=VALUE",
                        help="method option, repeatable, value parsed as JSON when possible "
                             "(e.g. --option patchcore.coreset_ratio=0.05); with --variants, set them in the file")
    parser.add_argument("--note", default="", help="a sentence stored with the results and printed in results.md")
    parser.add_argument("--no-figures", action="store_true", help="skip the figures")


def _parse_method_options(items: list[str]) -> dict[str, dict]:
    """``--option METHOD.KEY=VALUE`` items -> ``{method: {key: value}}``."""
    out: dict[str, dict] = {}
    for item in items:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise CliError(f"--option expects METHOD.KEY=VALUE, got {item!r}")
        method, rest = item.split(".", 1)
        out.setdefault(method.strip(), {}).update(_parse_options([rest]))
    return out


def _parse_options(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise CliError(f"--option expects KEY=VALUE, got {item!r}")
        key, val = item.split("=", 1)
        key = key.strip()
        if not key:
            raise CliError(f"--option expects KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(val)
        except json.JSONDecodeError:
            out[key] = val
    return out


_NOT_OPTIONS = {"self", "image_size", "task_names", "prompts"}


def _option_kind(param: inspect.Parameter) -> str:
    """The expected type of a constructor option, as written in its annotation (or read off its default)."""
    ann = param.annotation
    if ann is not inspect.Parameter.empty:
        return ann if isinstance(ann, str) else getattr(ann, "__name__", str(ann))
    default = param.default
    if default is inspect.Parameter.empty or default is None:
        return "any"
    if isinstance(default, (tuple, list)):
        return "list"
    return type(default).__name__


def _accepts(kind: str, value: Any) -> bool:
    """Whether ``value`` (parsed from JSON) fits ``kind`` (``int``, ``float | None``, ``list[int]``...)."""
    verdicts = []
    for part in kind.split("|"):
        base = part.strip().split("[")[0].strip().rsplit(".", 1)[-1]
        if base in ("None", "NoneType"):
            verdicts.append(value is None)
        elif base == "int":
            verdicts.append(isinstance(value, int) and not isinstance(value, bool))
        elif base == "float":
            verdicts.append(isinstance(value, (int, float)) and not isinstance(value, bool))
        elif base == "bool":
            verdicts.append(isinstance(value, bool))
        elif base == "str":
            verdicts.append(isinstance(value, str))
        elif base in ("list", "tuple", "Sequence"):
            verdicts.append(isinstance(value, (list, tuple)))
        elif base in ("dict", "Mapping"):
            verdicts.append(isinstance(value, dict))
        else:  # a type we do not check (Any, a Literal...): let the method judge
            return True
    return any(verdicts)


def method_options(method: str) -> dict[str, tuple[str, Any]]:
    """``{option: (expected type, default)}`` read off the method class's ``__init__`` signature."""
    from ..models.registry import get_method

    params = inspect.signature(get_method(method).__init__).parameters
    return {name: (_option_kind(p), p.default) for name, p in params.items()
            if name not in _NOT_OPTIONS and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def check_method_options(method: str, options: dict[str, Any]) -> None:
    """Refuse an option the method does not take, or a value of the wrong type, naming the valid options."""
    from ..models.registry import get_method

    if not options:
        return
    params = inspect.signature(get_method(method).__init__).parameters
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
    known = method_options(method)

    def listing() -> str:
        return ", ".join(f"{n} ({k}, default {d!r})" for n, (k, d) in known.items()) or "none"

    for key, value in options.items():
        if key not in known:
            if takes_any:
                continue
            raise CliError(f"--option {key}: method {method!r} has no option {key!r}; its options are: {listing()}")
        kind, _ = known[key]
        if not _accepts(kind, value):
            raise CliError(f"--option {key}={json.dumps(value) if not isinstance(value, str) else value}: "
                           f"method {method!r} expects {kind} for {key!r}; its options are: {listing()}")


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

    options = _parse_options(args.option)
    check_method_options(args.method, options)
    cfg = make_config(args.method, args.config, options=options, data=args.data,
                      epochs=args.epochs, image_size=args.image_size, batch_size=args.batch_size, lr=args.lr,
                      lr_schedule=args.lr_schedule, device=args.device, seed=args.seed, sizes=args.sizes,
                      tasks=args.tasks,
                      num_workers=args.workers, compile=args.compile, channels_last=args.channels_last,
                      sync_bn=args.sync_bn)
    t0 = time.perf_counter()
    result = train(cfg, args.out, progress=not args.no_progress, allow_config_change=args.allow_config_change)
    from ..training.distributed import dist_info

    info = dist_info()
    if not info.is_main:  # under torchrun, rank 0 reports
        return 0
    ranks = f" on {info.world_size} processes" if info.enabled else ""
    ips = result.images_per_second
    speed = f"{ips:.2f}" if ips < 10 else f"{ips:.0f}"  # a 256-px model on a CPU trains at well under 1 img/s
    print(f"trained {cfg.method} on {result.data.name} ({', '.join(result.data.task_names)}) for "
          f"{len(result.history)} epochs{ranks} in {time.perf_counter() - t0:.1f} s "
          f"({speed} img/s); checkpoint: {args.out / 'checkpoint.pt'}")
    return 0


def cmd_evaluate(args) -> int:
    from ..data import load_data
    from ..evaluation import evaluate_model
    from ..evaluation.evaluate import METRIC_KEYS
    from ..training import TrainConfig, load_model
    from ..training.checkpoint import checkpoint_problems
    from ..utils import atomic_write_json, get_device

    device = get_device(args.device)
    model, state = load_model(args.run, device, expect_method=args.method)  # weights_only=True
    problems = checkpoint_problems(model, state)
    allowed = {"incomplete": args.allow_incomplete, "nonfinite": args.allow_nonfinite}
    flags = {"incomplete": "--allow-incomplete", "nonfinite": "--allow-nonfinite"}
    for kind, why in problems.items():
        if not allowed[kind]:
            raise CliError(f"{args.run}: {why}; refusing to evaluate it (pass {flags[kind]} to evaluate it anyway, "
                           f"marked in the JSON)")
    for why in problems.values():
        print(f"medad-edu evaluate: warning: {args.run}: {why}", file=sys.stderr)
    cfg = TrainConfig.from_dict(state["config"])
    data = load_data(args.data or cfg.data, image_size=model.image_size, sizes=cfg.sizes,
                     tasks=args.tasks or cfg.tasks, seed=0)
    failed = None
    try:
        report = evaluate_model(model, data, args.split, device, batch_size=cfg.batch_size,
                                thresholds=state.get("thresholds"))
    except FloatingPointError as err:  # e.g. NaN weights giving NaN scores: no metrics, but say so in the JSON
        if "nonfinite" not in problems:
            raise
        failed = err
        report = {"method": model.name, "split": args.split, "tasks": {},
                  "mean": {k: None for k in METRIC_KEYS}, "error": _one_line(err)}
    report["run"] = str(args.run)
    report["data"] = data.name
    report["checkpoint"] = {"complete": bool(state.get("complete")), "epoch": int(state.get("epoch", 0)),
                            "problems": problems}
    atomic_write_json(args.json, report)
    if failed is not None:
        raise CliError(f"{args.run}: {_one_line(failed)}; no metrics (wrote {args.json} with the problem marked)")
    _print_table(report)
    print(f"wrote {args.json}")
    return 0


def cmd_bench(args) -> int:
    """``medad-edu bench``: 0 if every run finished, 1 if some failed (their errors are in results.json)."""
    from ..evaluation.bench import load_results, load_variants, run_bench, same_variants
    from .bench_report import render_markdown, write_report

    variants = load_variants(args.variants) if args.variants is not None else None
    if args.report_only:
        results = load_results(args.out)
        if variants is not None and not same_variants(results.get("variants"), variants):
            raise CliError(f"{args.out / 'results.json'} was not made with the variants of {args.variants} "
                           f"(rows {sorted(results.get('variants') or results['methods'])} against {sorted(variants)}, "
                           f"or other settings); report it without --variants")
    else:
        if variants is not None and (args.option or args.method_seeds):
            raise CliError(f"--variants {args.variants} sets the rows' options and seeds; drop --option and "
                           f"--method-seeds (or put them in the file)")
        results = run_bench(methods=args.methods, data=args.data, config=args.config, seeds=args.seeds,
                            out_dir=args.out, sizes=args.sizes, tasks=args.tasks, epochs=args.epochs,
                            image_size=args.image_size, batch_size=args.batch_size, device=args.device,
                            threads=args.threads, lr_schedule=args.lr_schedule, method_seeds=args.method_seeds,
                            options=_parse_method_options(args.option) if variants is None else None,
                            patchcore_backbone=args.patchcore_backbone, note=args.note, variants=variants)
    written = write_report(results, args.out, figures=not args.no_figures,
                           log=lambda m: print(m, file=sys.stderr))
    print(render_markdown(results))
    took = "" if args.report_only else f" ({results['bench_wall_seconds']:.0f} s)"
    print(f"wrote {', '.join(str(p) for p in ([args.out / 'results.json'] if not args.report_only else []) + written)}"
          f"{took}")
    return 1 if results["failures"] else 0


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
    handlers = {"data": cmd_data_make, "train": cmd_train, "evaluate": cmd_evaluate, "bench": cmd_bench,
                "methods": cmd_methods}
    if args.command == "predict":
        from . import predict_files
        handler = predict_files.run
    elif args.command == "book":
        from . import student
        handler = student.run
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
    except Exception as err:  # noqa: BLE001 - every failure is one line unless --debug
        if args.debug:
            raise
        print(f"medad-edu {args.command}{_rank_tag()}: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _rank_tag() -> str:
    """``' (rank 1)'`` in a process that torchrun started with a rank other than 0 (each rank prints its error)."""
    import os

    rank = os.environ.get("RANK", "0")
    return f" (rank {rank})" if os.environ.get("WORLD_SIZE", "1") not in ("", "1") and rank not in ("", "0") else ""


_EXPECTED = (CliError, ValueError, FileNotFoundError, KeyError, RuntimeError, FloatingPointError, OSError)


def _one_line(err: BaseException) -> str:
    """The message of ``err`` on one line: an OSError as 'path: reason', a KeyError without quotes, an
    unexpected exception with its type (``--debug`` shows the traceback)."""
    if isinstance(err, OSError) and err.strerror:
        text = f"{err.filename}: {err.strerror}" if err.filename else err.strerror
    elif isinstance(err, KeyError) and len(err.args) == 1:
        text = str(err.args[0])
    else:
        text = str(err)
    text = " ".join(line.strip() for line in text.splitlines() if line.strip()) or type(err).__name__
    if not isinstance(err, _EXPECTED):
        text = f"{type(err).__name__}: {text} (run with --debug for the traceback)"
    return text


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
