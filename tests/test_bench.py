"""``medad-edu bench``: resume without retraining, the results schema, the tables, and the book's stored results."""
import json
import math
from pathlib import Path

import pytest

from medad_edu.evaluation.bench import (RESULT_NAME, SCHEMA_VERSION, _pm, render_markdown, run_bench,
                                        summary_table)
from medad_edu.evaluation.evaluate import METRIC_KEYS

BOOK_RESULTS = Path(__file__).resolve().parents[1] / "book" / "results"
TIMING_KEYS = {"train_seconds", "train_cpu_seconds", "epochs", "train_images", "train_images_per_second",
               "data_wait_share", "inference_seconds", "inference_images_per_second", "peak_memory_mb",
               "peak_memory_kind", "resumed"}


def _strict_json(path: Path) -> dict:
    def bad(x):
        raise ValueError(f"{path}: non-standard JSON constant {x}")
    return json.loads(path.read_text(), parse_constant=bad)


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory, tiny_data_module):
    """ae alone first, then ae + patchcore into the same folder (the second call must reuse the ae run)."""
    data = tiny_data_module
    out = tmp_path_factory.mktemp("bench")
    logs1, logs2 = [], []
    run_bench(["ae"], data=data, seeds=[0], out_dir=out, epochs=1, batch_size=16, figures=False, log=logs1.append)
    ae_run = out / "runs" / "ae-s0"
    stamps = {p.name: p.stat().st_mtime_ns for p in ae_run.iterdir()}
    results = run_bench(["patchcore", "ae"], data=data, seeds=[0], out_dir=out, epochs=1, batch_size=16,
                        method_seeds={"patchcore": [0, 1]}, note="unit test", log=logs2.append)
    return {"out": out, "data": data, "stamps": stamps, "logs1": logs1, "logs2": logs2, "results": results}


@pytest.fixture(scope="module")
def tiny_data_module():
    from conftest import make_tiny_data  # the shared tiny_data, built once for the module

    return make_tiny_data(seed=3)


def test_resume_does_not_retrain_finished_runs(bench_dir):
    ae_run = bench_dir["out"] / "runs" / "ae-s0"
    assert {p.name: p.stat().st_mtime_ns for p in ae_run.iterdir()} == bench_dir["stamps"]
    assert any("ae epoch 1/1: loss" in m for m in bench_dir["logs1"])  # per-epoch progress
    assert any("ae seed 0: already done" in m for m in bench_dir["logs2"])
    assert not any("ae seed 0: training" in m for m in bench_dir["logs2"])
    assert sum("patchcore seed" in m and "training" in m for m in bench_dir["logs2"]) == 2
    # PatchCore's "auto" backbone is the encoder trained by this bench's ae run of the same seed
    runs = {(r["method"], r["seed"]): r for r in bench_dir["results"]["runs"]}
    assert runs[("patchcore", 0)]["spec"]["options"]["backbone"] == f"run:{ae_run}"
    assert runs[("patchcore", 1)]["spec"]["options"]["backbone"] == "random"  # no ae run with seed 1


def test_results_json_schema(bench_dir):
    res = _strict_json(bench_dir["out"] / "results.json")
    assert res["schema_version"] == SCHEMA_VERSION
    for key in ("created", "config", "data", "methods", "seeds", "hardware", "device", "torch_threads", "versions",
                "note", "bench_wall_seconds", "runs", "failures"):
        assert key in res, key
    assert res["methods"] == ["ae", "patchcore"]  # patchcore last: it may use another run's encoder
    assert res["seeds"] == {"ae": [0], "patchcore": [0, 1]}
    assert res["data"]["tasks"] == ["chest_xray", "brain_mri"] and res["data"]["n_test"]["brain_mri"] == [8, 8]
    assert len(res["runs"]) == 3 and res["failures"] == []
    for run in res["runs"]:
        ev = run["evaluation"]
        assert ev["method"] == run["method"] and ev["split"] == "test"
        assert set(ev["tasks"]) == {"chest_xray", "brain_mri"}
        for t in ev["tasks"].values():
            assert set(METRIC_KEYS) <= set(t) and t["n_normal"] == 8 and t["n_abnormal"] == 8
            assert 0 <= t["image_auroc"] <= 1
        assert set(run["timing"]) == TIMING_KEYS
        assert run["timing"]["train_seconds"] > 0 and run["timing"]["inference_images_per_second"] > 0
        assert 0 <= run["timing"]["data_wait_share"] < 1
        assert (Path(run["run_dir"]) / RESULT_NAME).is_file()
    assert "CPU" in res["hardware"] or "GPU" in res["hardware"]


def test_markdown_tables_come_from_results_json(bench_dir):
    out = bench_dir["out"]
    res = json.loads((out / "results.json").read_text())
    md = (out / "results.md").read_text()
    assert md == render_markdown(res)
    assert "AUC / F1 / ACC" in md and "Pixel AUROC" in md and "AUPRO" in md and res["hardware"] in md
    assert "Note: unit test" in md
    auc = summary_table(res)["patchcore"]["image_auroc"][0]
    row = next(line for line in md.splitlines() if line.startswith("| patchcore | 2 |"))
    assert f"{100 * auc:.2f} ±" in row
    assert (out / "figures" / "score_histograms.png").stat().st_size > 1000
    assert (out / "figures" / "gallery.png").stat().st_size > 1000


def test_figures_are_readable(bench_dir):
    from PIL import Image

    fig_dir = bench_dir["out"] / "figures"
    # gallery: 2 tasks x (abnormal, normal) rows; image, mask, ae, patchcore columns and a colour bar
    w, h = Image.open(fig_dir / "gallery.png").size
    assert w >= 4 * 130 + 60 and h >= 4 * 130
    # histograms: 2 methods x 2 tasks, each panel large enough for its ticks
    w, h = Image.open(fig_dir / "score_histograms.png").size
    assert w >= 2 * 230 and h >= 2 * 170


def test_gallery_shows_scores_and_a_colour_bar():
    import numpy as np

    from medad_edu.interface.plots import anomaly_gallery

    rng = np.random.default_rng(0)
    images, masks = rng.random((2, 16, 16)), np.zeros((2, 16, 16))
    maps = {"ae": [rng.random((16, 16)), None], "nsa": [rng.random((16, 16)), rng.random((16, 16))]}
    fig = anomaly_gallery(images, masks, ["t\nabnormal", "t\nnormal"], maps,
                          scores={"ae": [0.123456, None], "nsa": [2.0, 3.0]})
    titles = [ax.get_title() for ax in fig.axes]
    assert "ae\n0.123" in titles and "nsa\n2" in titles and "3" in titles
    assert len(fig.axes) == 2 * 4 + 1  # the grid and one colour bar


def test_markdown_heading_level(bench_dir):
    res = bench_dir["results"]
    md, md4 = render_markdown(res), render_markdown(res, heading_level=4)
    assert md.startswith("# Benchmark") and md4.startswith("#### Benchmark")
    assert "\n## Cost" in md and "\n##### Cost" in md4 and not any(line.startswith(("# ", "## ", "### "))
                                                                   for line in md4.splitlines())
    assert md4.replace("#####", "##").replace("####", "#") == md  # only the headings differ
    with pytest.raises(ValueError, match="heading_level"):
        render_markdown(res, heading_level=0)


def test_training_reports_its_epochs_without_a_bar(tiny_data_module, tmp_path, monkeypatch, capfd):
    import medad_edu.evaluation.bench as bench

    logs = []
    run_bench(["ae"], data=tiny_data_module, seeds=[0], out_dir=tmp_path, epochs=3, batch_size=16, figures=False,
              log=logs.append)
    assert sum("ae epoch" in m and "loss" in m for m in logs) == 3  # the trainer's lines (every epochs // 5)
    monkeypatch.setattr(bench, "EPOCH_LOG_SECONDS", 0.0)  # every finished epoch but the last gets a timing line
    logs = []
    run_bench(["ae"], data=tiny_data_module, seeds=[1], out_dir=tmp_path, epochs=3, batch_size=16, figures=False,
              log=logs.append)
    assert [m.split(":")[0] for m in logs if "s/epoch" in m] == ["[bench]   ae epoch 1/3", "[bench]   ae epoch 2/3"]
    assert "it/s" not in capfd.readouterr().err  # no tqdm bar


def test_mean_std_formatting():
    assert _pm([0.5, 0.7]) == f"60.00 ± {100 * math.sqrt(0.02):.2f}"
    assert _pm([0.9]) == "90.00"
    assert _pm([None]) == "n/a"


def test_changed_settings_are_refused_and_failures_isolated(bench_dir):
    with pytest.raises(ValueError, match="other settings"):
        run_bench(["ae"], data=bench_dir["data"], seeds=[0], out_dir=bench_dir["out"], epochs=2, batch_size=16,
                  figures=False, log=lambda m: None)
    out = bench_dir["out"] / "failing"
    res = run_bench(["memae", "ae"], data=bench_dir["data"], seeds=[0], out_dir=out, epochs=1, batch_size=16,
                    options={"memae": {"mem_dim": 0}}, figures=False, log=lambda m: None)
    assert [f["method"] for f in res["failures"]] == ["memae"] and "mem_dim" in res["failures"][0]["error"]
    assert [r["method"] for r in res["runs"]] == ["ae"]
    assert "Failed runs: memae seed 0" in (out / "results.md").read_text()
    with pytest.raises(ValueError, match="unknown method"):
        run_bench(["nope"], data=bench_dir["data"], out_dir=out, log=lambda m: None)


def test_auto_backbone_is_kept_when_methods_are_added(bench_dir):
    # runs last among the bench_dir tests: it adds an ae run with seed 1 to the folder
    logs = []
    res = run_bench(["ae", "patchcore"], data=bench_dir["data"], seeds=[1], out_dir=bench_dir["out"], epochs=1,
                    batch_size=16, figures=False, log=logs.append)
    assert any("ae seed 1: training" in m for m in logs)
    assert any("patchcore seed 1: already done" in m for m in logs)  # not redone with the new ae encoder
    assert [r["spec"]["options"]["backbone"] for r in res["runs"] if r["method"] == "patchcore"] == ["random"]


def test_cli_bench_on_a_data_folder(tmp_path, tiny_data_module, capsys):
    from medad_edu.data import write_bmad
    from medad_edu.interface.cli import main

    write_bmad(tiny_data_module, tmp_path / "data")
    code = main(["bench", "--methods", "patchcore", "--data", str(tmp_path / "data"), "--seeds", "0",
                 "--image-size", "32", "--out", str(tmp_path / "b"), "--no-figures", "--threads", "1",
                 "--option", "patchcore.coreset_ratio=0.5"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| patchcore |" in printed and "Image AUROC" in printed
    res = json.loads((tmp_path / "b" / "results.json").read_text())
    assert res["runs"][0]["spec"]["options"]["coreset_ratio"] == 0.5


# --- the book's stored results ------------------------------------------------------------------------------
# Kept benches (schema of run_bench); other kept results, e.g. the MTL-MAD ablations, have their own chapter checks.
BOOK_DIRS = sorted(p.parent for p in BOOK_RESULTS.glob("*/results.json")
                   if "schema_version" in json.loads(p.read_text()))


def test_the_book_keeps_the_benches_its_chapters_read():
    names = {d.name for d in BOOK_DIRS}
    assert {"embedded_quick", "embedded_real_quick", "embedded_quick_allinone_gamma100"} <= names


@pytest.mark.parametrize("result_dir", BOOK_DIRS, ids=[p.name for p in BOOK_DIRS])
def test_book_tables_match_the_kept_results(result_dir):
    res = _strict_json(result_dir / "results.json")
    assert (result_dir / "results.md").read_text() == render_markdown(res)
    assert res["runs"], "a kept bench must hold runs"
    assert not res["failures"], f"{result_dir.name}: a kept bench has failed runs: {res['failures']}"
    for run in res["runs"]:
        assert set(METRIC_KEYS) <= set(run["evaluation"]["mean"])


def test_book_results_stay_small():
    # What the book keeps: every file under book/results/ except the git-ignored runs/ (checkpoints).
    kept = [p for p in BOOK_RESULTS.rglob("*") if p.is_file() and "runs" not in p.relative_to(BOOK_RESULTS).parts]
    if not kept:
        pytest.skip("no stored results")
    total = sum(p.stat().st_size for p in kept)
    assert total < 2 * 2**20, f"book/results keeps {total / 2**20:.2f} MB (keep it under 2 MB)"
