"""``medad-edu bench``: resume without retraining, the results schema, variants files, the tables (re-rendered
from every kept results.json), and the book's stored results."""
import json
import math
from pathlib import Path

import pytest

from medad_edu.evaluation.bench import RESULT_NAME, SCHEMA_VERSION, VariantsError, load_variants, run_bench
from medad_edu.evaluation.evaluate import METRIC_KEYS
from medad_edu.interface.bench_report import _pm, render_markdown, summary_table, write_report

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
    run_bench(["ae"], data=data, seeds=[0], out_dir=out, epochs=1, batch_size=16, log=logs1.append)
    ae_run = out / "runs" / "ae-s0"
    stamps = {p.name: p.stat().st_mtime_ns for p in ae_run.iterdir()}
    results = run_bench(["patchcore", "ae"], data=data, seeds=[0], out_dir=out, epochs=1, batch_size=16,
                        method_seeds={"patchcore": [0, 1]}, note="unit test", log=logs2.append)
    write_report(results, out, data=data)  # results.md and figures/, as `medad-edu bench` writes them
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
        assert ev["method"] == run["method"] and ev["split"] == "test" and run["variant"] == run["method"]
        assert set(ev["tasks"]) == {"chest_xray", "brain_mri"}
        for t in ev["tasks"].values():
            assert set(METRIC_KEYS) <= set(t) and t["n_normal"] == 8 and t["n_abnormal"] == 8
            assert 0 <= t["image_auroc"] <= 1
        assert set(run["timing"]) == TIMING_KEYS
        assert run["timing"]["train_seconds"] > 0 and run["timing"]["inference_images_per_second"] > 0
        assert 0 <= run["timing"]["data_wait_share"] < 1
        assert (Path(run["run_dir"]) / RESULT_NAME).is_file()
        size = run["lesion_size"]  # the tiny set has masks on every abnormal image
        assert size["bins"] == ["small", "medium", "large"] and set(size["tasks"]) == {"chest_xray", "brain_mri"}
        for bins in size["tasks"].values():
            assert sum(b["n_abnormal"] for b in bins) == 8 and all(0 <= b["image_auroc"] <= 1 for b in bins)
            assert all(a["area_max"] <= b["area_min"] for a, b in zip(bins, bins[1:]))  # smallest lesions first
    assert "CPU" in res["hardware"] or "GPU" in res["hardware"]


def test_lesion_size_rows_come_from_the_stored_predictions(bench_dir):
    """A run's per-size AUROCs are those of its stored test scores against the data's mask areas, and a cached
    run gets them too (the ae run of this bench was finished before the second call)."""
    import numpy as np

    from medad_edu.data.batches import split_tensors
    from medad_edu.evaluation.bench import PRED_NAME
    from medad_edu.evaluation.metrics import image_auroc_by_lesion_size

    test = split_tensors(bench_dir["data"], "test")
    area, labels, tids = test.masks.flatten(1).mean(1).numpy(), test.labels.numpy(), test.task_ids.numpy()
    for run in bench_dir["results"]["runs"]:
        scores = np.load(Path(run["run_dir"]) / PRED_NAME)["scores"]
        for i, task in enumerate(bench_dir["data"].task_names):
            sel = tids == i
            assert run["lesion_size"]["tasks"][task] == image_auroc_by_lesion_size(scores[sel], labels[sel], area[sel])
        mean = run["lesion_size"]["mean"]
        assert mean[2]["image_auroc"] == pytest.approx(
            np.mean([run["lesion_size"]["tasks"][t][2]["image_auroc"] for t in ("chest_xray", "brain_mri")]))


def test_markdown_tables_come_from_results_json(bench_dir):
    out = bench_dir["out"]
    res = json.loads((out / "results.json").read_text())
    md = (out / "results.md").read_text()
    assert md == render_markdown(res)
    assert "AUC / F1 / ACC" in md and "Pixel AUROC" in md and "AUPRO" in md and res["hardware"] in md
    assert "Note: unit test" in md and "Image AUROC per lesion size" in md
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
    run_bench(["ae"], data=tiny_data_module, seeds=[0], out_dir=tmp_path, epochs=3, batch_size=16,
              log=logs.append)
    assert sum("ae epoch" in m and "loss" in m for m in logs) == 3  # the trainer's lines (every epochs // 5)
    monkeypatch.setattr(bench, "EPOCH_LOG_SECONDS", 0.0)  # every finished epoch but the last gets a timing line
    logs = []
    run_bench(["ae"], data=tiny_data_module, seeds=[1], out_dir=tmp_path, epochs=3, batch_size=16,
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
                  log=lambda m: None)
    out = bench_dir["out"] / "failing"
    res = run_bench(["memae", "ae"], data=bench_dir["data"], seeds=[0], out_dir=out, epochs=1, batch_size=16,
                    options={"memae": {"mem_dim": 0}}, log=lambda m: None)
    write_report(res, out, figures=False)
    assert [f["method"] for f in res["failures"]] == ["memae"] and "mem_dim" in res["failures"][0]["error"]
    assert [r["method"] for r in res["runs"]] == ["ae"]
    assert "Failed runs: memae seed 0" in (out / "results.md").read_text()
    with pytest.raises(ValueError, match="unknown method"):
        run_bench(["nope"], data=bench_dir["data"], out_dir=out, log=lambda m: None)


def test_auto_backbone_is_kept_when_methods_are_added(bench_dir):
    # runs last among the bench_dir tests: it adds an ae run with seed 1 to the folder
    logs = []
    res = run_bench(["ae", "patchcore"], data=bench_dir["data"], seeds=[1], out_dir=bench_dir["out"], epochs=1,
                    batch_size=16, log=logs.append)
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


# --- variants files -----------------------------------------------------------------------------------------
def _write_variants(path: Path, variants) -> Path:
    path.write_text(json.dumps(variants) if not isinstance(variants, str) else variants)
    return path


def test_cli_bench_runs_and_caches_a_variants_file(tmp_path, tiny_data_module, capsys):
    from medad_edu.data import write_bmad
    from medad_edu.interface.cli import main

    write_bmad(tiny_data_module, tmp_path / "data")
    variants = _write_variants(tmp_path / "variants.json", {
        "ae-latent8": {"method": "ae", "options": {"latent": 8}},
        "ae-latent4": {"method": "ae", "options": {"latent": 4}, "seeds": [1]}})
    argv = ["bench", "--variants", str(variants), "--data", str(tmp_path / "data"), "--seeds", "0", "--epochs", "1",
            "--image-size", "32", "--batch-size", "16", "--out", str(tmp_path / "b"), "--no-figures",
            "--threads", "1"]
    assert main(argv) == 0
    first = capsys.readouterr()
    res = json.loads((tmp_path / "b" / "results.json").read_text())
    assert res["seeds"] == {"ae-latent8": [0], "ae-latent4": [1]} and res["methods"] == ["ae"]
    assert list(res["variants"]) == ["ae-latent8", "ae-latent4"] and res["failures"] == []
    runs = {(r["variant"], r["seed"]): r for r in res["runs"]}
    assert set(runs) == {("ae-latent8", 0), ("ae-latent4", 1)}
    assert runs[("ae-latent8", 0)]["spec"]["options"]["latent"] == 8
    assert runs[("ae-latent4", 1)]["spec"]["options"]["latent"] == 4 and runs[("ae-latent4", 1)]["spec"]["epochs"] == 1
    assert Path(runs[("ae-latent4", 1)]["run_dir"]) == tmp_path / "b" / "runs" / "ae-latent4-s1"
    assert "| ae-latent8 |" in first.out and "| Variant |" in first.out and "ae-latent8 seed 0: training" in first.err
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "b" / "runs").rglob("*") if p.is_file()}
    assert main(argv) == 0  # the same command again: both runs read back, nothing retrained
    again = capsys.readouterr()
    assert "ae-latent8 seed 0: already done" in again.err and "ae-latent4 seed 1: already done" in again.err
    assert "training" not in again.err
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert json.loads((tmp_path / "b" / "results.json").read_text())["runs"] == res["runs"]
    # --report-only re-renders the same tables from results.json, and checks the variants file it is given
    md = (tmp_path / "b" / "results.md").read_text()
    (tmp_path / "b" / "results.md").unlink()
    assert main(["bench", "--variants", str(variants), "--report-only", "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "b" / "results.md").read_text() == md
    other = _write_variants(tmp_path / "other.json", {"ae-latent8": {"method": "ae", "options": {"latent": 8}}})
    assert main(["bench", "--variants", str(other), "--report-only", "--out", str(tmp_path / "b")]) == 2
    assert "was not made with the variants of" in capsys.readouterr().err


@pytest.mark.parametrize("content, problem", [
    ("{\"a\": {\"method\": \"ae\",}}", "not valid JSON"),
    ("[\"ae\"]", "expected a JSON object"),
    ("{}", "expected a JSON object"),
    ({"a": {"method": "nope"}}, "method 'nope' is not one of"),
    ({"a": {"method": "ae", "epoch": 2}}, "unknown keys ['epoch']"),
    ({"a": {"method": "ae", "seeds": 0}}, "\"seeds\" must be a non-empty list of integers"),
    ({"a": {"method": "ae", "epochs": 0}}, "\"epochs\" must be a positive integer"),
    ({"a": {"method": "ae", "options": [1]}}, "\"options\" must be an object"),
    ({"a": {"method": "ae", "diagnostics": ["x"]}}, "\"diagnostics\" must be a list of mtl_scores"),
    ({"a/b": {"method": "ae"}}, "variant name 'a/b'"),
    ({"a": "ae"}, "variant 'a' must be an object"),
])
def test_a_bad_variants_file_is_a_one_line_error_naming_it(tmp_path, capsys, content, problem):
    from medad_edu.interface.cli import main

    path = _write_variants(tmp_path / "v.json", content)
    with pytest.raises(VariantsError) as err:
        load_variants(path)
    assert str(err.value).startswith(f"{path}: ") and problem in str(err.value)
    assert main(["bench", "--variants", str(path), "--out", str(tmp_path / "b")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and problem in lines[0]
    assert not (tmp_path / "b").exists()


def test_a_missing_variants_file_and_conflicting_options(tmp_path, capsys):
    from medad_edu.interface.cli import main

    assert main(["bench", "--variants", str(tmp_path / "none.json"), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'none.json'}: cannot read the variants file" in err and len(err.strip().splitlines()) == 1
    path = _write_variants(tmp_path / "v.json", {"a": {"method": "ae"}})
    assert main(["bench", "--variants", str(path), "--option", "ae.latent=4", "--out", str(tmp_path / "b")]) == 2
    assert "drop --option" in capsys.readouterr().err
    with pytest.raises(ValueError, match="do not also give"):
        run_bench(["ae"], variants={"a": {"method": "ae"}}, out_dir=tmp_path / "b", log=lambda m: None)


def test_the_mtl_scores_diagnostic(tmp_path, tiny_data_module):
    from medad_edu.models.mtl import MultiTaskLearner

    options = {**MultiTaskLearner.CLASSIC, "proxy_tasks": ["denoise", "lesion"], "width": 8}
    res = run_bench(data=tiny_data_module, seeds=[0], out_dir=tmp_path, batch_size=16, log=lambda m: None,
                    variants={"mtl-two": {"method": "mtl", "options": options, "epochs": 1,
                                          "diagnostics": ["mtl_scores"]}})
    assert res["failures"] == [], res["failures"]
    run = res["runs"][0]
    d = run["diagnostics"]["mtl_scores"]
    assert run["spec"]["diagnostics"] == ["mtl_scores"] and d["proxy_tasks"] == ["denoise", "lesion"]
    cols = ["denoise", "lesion", "fused_zscore", "fused_robust", "fused_rank", "fused_weighted", "fused_weighted_p1"]
    assert list(d["test"])[:len(cols)] == cols and set(d["valid"]) == set(d["test"])
    tasks = tiny_data_module.task_names
    assert all(set(col) == set(tasks) and all(0 <= v <= 1 for v in col.values()) for col in d["test"].values())
    # the model's own score is the weighted fusion: the same AUROC as the bench's evaluation
    for t in tasks:
        assert d["test"]["fused_" + d["fusion"]][t] == pytest.approx(run["evaluation"]["tasks"][t]["image_auroc"])
    assert len(d["weights"]) == len(tasks) + 1 and all(abs(sum(w) - 1) < 1e-5 for w in d["weights"])


# --- the book's stored results ------------------------------------------------------------------------------
# Kept benches: every folder of book/results/ with a results.json (the MTL-MAD ablations are a variants bench).
BOOK_DIRS = sorted(p.parent for p in BOOK_RESULTS.glob("*/results.json"))


def test_the_book_keeps_the_benches_its_chapters_read():
    names = {d.name for d in BOOK_DIRS}
    assert {"embedded_quick", "embedded_real_quick", "embedded_quick_allinone_gamma100", "embedded_quick_peers",
            "embedded_real_quick_peers", "embedded_real_quick_allinone_gamma100", "mtl_ablations"} <= names
    assert all("schema_version" in json.loads((d / "results.json").read_text()) for d in BOOK_DIRS)


@pytest.mark.parametrize("result_dir", BOOK_DIRS, ids=[p.name for p in BOOK_DIRS])
def test_report_only_rerenders_the_kept_tables_identically(result_dir, tmp_path, capsys):
    """``medad-edu bench --report-only`` on a copy of each kept results.json writes the committed results.md,
    byte for byte (a variants bench is re-rendered with its variants file, which must match)."""
    from medad_edu.interface.cli import main

    (tmp_path / "results.json").write_bytes((result_dir / "results.json").read_bytes())
    argv = ["bench", "--report-only", "--out", str(tmp_path)]
    if (result_dir / "variants.json").is_file():
        argv += ["--variants", str(result_dir / "variants.json")]
    assert main(argv) == 0, capsys.readouterr().err
    assert (tmp_path / "results.md").read_bytes() == (result_dir / "results.md").read_bytes()


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


def test_an_option_added_later_matches_its_default_in_older_records():
    """A run or variants file recorded before an option existed used its default: the comparisons of the cache
    and of --report-only treat a missing key as that default, and any other value as a change."""
    from medad_edu.evaluation.bench import _spec_diff, same_variants
    from medad_edu.models.registry import with_default_options

    old = {"method": "mtl", "seed": 0, "options": {"design": "classic", "width": 16}}
    assert with_default_options("mtl", old["options"])["lesion_synthesis"] == "lesions"
    assert _spec_diff(old, {**old, "options": {**old["options"], "lesion_synthesis": "lesions"}}) == []
    diff = _spec_diff(old, {**old, "options": {**old["options"], "lesion_synthesis": "patches"}})
    assert len(diff) == 1 and "patches" in diff[0]
    assert _spec_diff(old, {**old, "options": {**old["options"], "width": 8}})  # a real change stays one
    row = {"method": "mtl", "options": {"design": "classic"}, "seeds": [0], "epochs": 6, "diagnostics": []}
    named = {**row, "options": {"design": "classic", "lesion_synthesis": "lesions"}}
    other = {**row, "options": {"design": "classic", "lesion_synthesis": "patches"}}
    assert same_variants({"a": row}, {"a": named}) and not same_variants({"a": row}, {"a": other})
    assert not same_variants({"a": row}, {"b": row})
    # a method this installation lacks is compared as written
    assert with_default_options("no-such-method", {"x": 1}) == {"x": 1}


def test_a_stored_run_without_a_newer_option_resumes_at_its_default():
    """The trainer's resume check: a stored run that predates an option is compared at that option's default."""
    from medad_edu.training import make_config
    from medad_edu.training.trainer import config_differences

    cfg = make_config("mtl", "quick", options={"design": "classic", "lesion_synthesis": "lesions"})
    stored = cfg.to_dict()
    stored["options"] = {k: v for k, v in stored["options"].items() if k != "lesion_synthesis"}
    assert config_differences(stored, cfg) == []
    unet = make_config("mtl", "quick")  # the quick default, "patches"
    stored_unet = unet.to_dict()
    stored_unet["options"] = {k: v for k, v in stored_unet["options"].items() if k != "lesion_synthesis"}
    assert config_differences(stored_unet, unet) == ["options.lesion_synthesis: 'lesions' -> 'patches'"]


def test_the_lr_schedule_is_in_the_spec_only_when_not_constant(tmp_path, tiny_data_module):
    """Runs cached before the setting existed keep their specs; a cosine run is another run and says so."""
    from medad_edu.evaluation.bench import _spec
    from medad_edu.training import make_config

    assert "lr_schedule" not in _spec("ae", 0, make_config("ae", "quick"), "embedded")
    assert _spec("ae", 0, make_config("ae", "quick", lr_schedule="cosine"), "embedded")["lr_schedule"] == "cosine"
    out = tmp_path / "b"
    res = run_bench(["ae"], data=tiny_data_module, seeds=[0], out_dir=out, epochs=1, batch_size=16,
                    lr_schedule="cosine", log=lambda m: None)
    assert res["runs"][0]["spec"]["lr_schedule"] == "cosine"
    with pytest.raises(ValueError, match=r"lr_schedule: 'cosine' -> None"):
        run_bench(["ae"], data=tiny_data_module, seeds=[0], out_dir=out, epochs=1, batch_size=16, log=lambda m: None)


def test_a_bench_run_records_the_epochs_that_min_steps_makes_on_its_data(tmp_path, tiny_data_module):
    """The spec holds the epochs the trainer runs on this data, so a run cached at the same length still matches."""
    from medad_edu.data.batches import split_tensors
    from medad_edu.evaluation.bench import run_one
    from medad_edu.training.config import steps_per_epoch

    per_epoch = steps_per_epoch(len(split_tensors(tiny_data_module, "train")), 16)
    rec = run_one("ae", 0, tiny_data_module, "tiny", "quick", tmp_path / "ae-s0",
                  overrides={"epochs": 1, "min_steps": 2 * per_epoch, "batch_size": 16, "image_size": 32},
                  log=lambda m: None)
    assert rec["spec"]["epochs"] == 2 and "min_steps" not in rec["spec"] and rec["timing"]["epochs"] == 2
