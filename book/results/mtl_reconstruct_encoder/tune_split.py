"""MTL-MAD's ``reconstruct`` task with its own encoder, and the fusion rules, scored on the tune split.

The tune split is the one of ``../map_reading/tune_split.py``: a fresh draw of the embedded generator (seed 7; 100
normal + 100 abnormal validation images per organ), disjoint from the benches' data (seed 0), so no bench test
image is used to choose. The models are ``quick`` bench runs of MTL-MAD (``medad-edu bench --methods mtl``), one
folder of runs per variant and set. Each run's failures are computed once per split and fused by every rule of
``medad_edu.models.mtl.fusion.FUSIONS`` (the statistics and weights of every rule were fitted at training time on
the bench's own validation data, so switching the rule changes no weight); each proxy task's own score is kept too.

The bench's test split (seed 0) is scored the same way and written apart (``"test"``): it is read only after the
choice made on ``"tune"``. Usage (2 CPU cores, under a minute per run)::

    python book/results/mtl_reconstruct_encoder/tune_split.py OUT.json \\
        own:phantom=RUNS_A own:real=RUNS_B shared:phantom=RUNS_C shared:real=RUNS_D

where each ``RUNS_*`` is a bench's ``runs`` folder holding ``mtl-s<seed>`` runs on ``--data embedded`` (phantom)
or ``embedded:real`` (real). A bench run with ``--tasks`` is scored on the same organs of the tune split.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "map_reading"))
from tune_split import TUNE_SEED, mean_auroc  # noqa: E402  (the same tune split, the same AUROC)

from medad_edu.data.batches import split_tensors  # noqa: E402
from medad_edu.data.embedded import EmbeddedSizes, load_embedded  # noqa: E402
from medad_edu.models.mtl.fusion import FUSIONS  # noqa: E402
from medad_edu.training.checkpoint import load_model  # noqa: E402


def split_rows(model, split) -> dict[str, float]:
    """Image AUROC (mean over organs) of every fusion rule and of each proxy task alone on one split."""
    labels, organs = split.labels.numpy(), split.task_ids.numpy()
    raw, maps = [], []
    with torch.no_grad():
        for i in range(0, len(split), 100):
            r, m, _ = model._failures(split.images[i:i + 100], split.task_ids[i:i + 100])
            raw.append(r)
            maps.append(m)
    raw, maps, ids = torch.cat(raw), torch.cat(maps), split.task_ids
    norm = model.normalizer
    rows = {}
    for fusion in FUSIONS:
        score = norm.fuse_map(maps, ids, model.map_top)[1] if fusion == "map" else norm.fuse(raw, ids, fusion)
        rows[f"fusion {fusion}"] = mean_auroc(score, labels, organs)
    # the same numbers as the model's own forward pass, for its trained fusion
    with torch.no_grad():
        own = model(split.images[:100], split.task_ids[:100]).pred_score
    fused = (norm.fuse_map(maps[:100], ids[:100], model.map_top)[1] if model.fusion == "map"
             else norm.fuse(raw[:100], ids[:100], model.fusion))
    torch.testing.assert_close(own, fused)
    for i, task in enumerate(model.proxy_tasks):
        rows[f"{task} alone"] = mean_auroc(raw[:, i], labels, organs)
    return rows


def main(out_path: str, *specs: str) -> None:
    from medad_edu.utils import versions
    torch.set_num_threads(1)
    result: dict = {"tune_seed": TUNE_SEED, "split": "valid", "sizes": "100 normal + 100 abnormal per organ",
                    "test": "the benches' own test split (seed 0), read after the choice", "versions": versions(),
                    "variants": {}}
    splits: dict = {}
    for spec in specs:
        name, runs = spec.split("=", 1)
        variant, kind = name.split(":")
        entry = result["variants"].setdefault(variant, {}).setdefault(kind, {})
        for run in sorted(Path(runs).glob("mtl-s*")):
            model = load_model(run)[0].eval()
            seed = int(run.name.split("-s")[-1])
            # the organs the run was trained on (a bench's --tasks), in its order: the task ids must match
            tasks = json.loads((run / "config.json").read_text()).get("tasks")
            key = (kind, tuple(tasks or ()))
            if key not in splits:
                splits[key] = {
                    "tune": split_tensors(load_embedded(kind, image_size=64, seed=TUNE_SEED,
                                                        sizes=EmbeddedSizes(8, 100, 2), tasks=tasks), "valid"),
                    "test": split_tensors(load_embedded(kind, image_size=64, seed=0, sizes="quick", tasks=tasks),
                                          "test")}
            entry[seed] = {part: split_rows(model, tensors) for part, tensors in splits[key].items()}
            bench = run / "bench_result.json"  # the run's cost, where the bench recorded it
            if bench.is_file():
                timing = json.loads(bench.read_text())["timing"]
                entry[seed]["timing"] = {k: timing.get(k) for k in ("epochs", "train_cpu_seconds")}
            print(variant, kind, seed, {k: round(v, 3) for k, v in entry[seed]["tune"].items()}, flush=True)
    Path(out_path).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: tune_split.py OUT.json VARIANT:KIND=BENCH/runs [...]")
    main(*sys.argv[1:])
