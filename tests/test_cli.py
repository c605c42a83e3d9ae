"""The command line end to end on tiny data, and its one-line errors on bad input."""
import json
import subprocess
import sys

import pytest

from medad_edu.interface.cli import main


def run_cli(*args):
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "embedded"
    assert run_cli("data", "make", "--out", out, "--size", 32, "--sizes", "tiny",
                   "--tasks", "chest_xray,brain_mri") == 0
    return out


def test_data_make_layout(tiny_root):
    prompts = json.loads((tiny_root / "tasks.json").read_text())
    assert prompts == {"chest_xray": "Chest X-ray image to evaluate the lungs.", "brain_mri": "Brain MRI slice."}
    task = tiny_root / "chest_xray"
    assert len(list((task / "train" / "good" / "img").glob("*.png"))) == 48
    assert len(list((task / "test" / "Ungood" / "img").glob("*.png"))) == 16
    assert len(list((task / "test" / "Ungood" / "anomaly_mask").glob("*.png"))) == 16
    assert len(list((task / "valid" / "good" / "img").glob("*.png"))) == 8


def test_train_evaluate_on_folder(tiny_root, tmp_path, capsys):
    run = tmp_path / "run"
    assert run_cli("train", "--method", "ae", "--data", tiny_root, "--out", run, "--epochs", 1,
                   "--image-size", 32, "--batch-size", 16, "--no-progress") == 0
    assert (run / "checkpoint.pt").is_file() and (run / "config.json").is_file()
    report_path = tmp_path / "eval.json"
    assert run_cli("evaluate", "--run", run, "--json", report_path) == 0
    report = json.loads(report_path.read_text())
    assert report["method"] == "ae" and set(report["tasks"]) == {"chest_xray", "brain_mri"}
    for key in ("image_auroc", "ap", "f1", "acc", "pixel_auroc", "aupro"):
        assert 0.0 <= report["mean"][key] <= 1.0
    assert "AUROC" in capsys.readouterr().out


@pytest.mark.parametrize("args,needle", [
    (["train", "--method", "nope", "--out", "{tmp}/r"], "unknown method 'nope'"),
    (["train", "--method", "ae", "--data", "{tmp}/missing", "--out", "{tmp}/r"], "missing: no such folder"),
    (["evaluate", "--run", "{tmp}/norun", "--json", "{tmp}/x.json"], "no checkpoint"),
    (["train", "--method", "ae", "--out", "{tmp}/r", "--device", "tpu"], "device must be one of"),
    (["bench", "--report-only", "--out", "{tmp}/nobench"], "no bench results there"),
    (["bench", "--methods", "nope", "--out", "{tmp}/b"], "unknown method 'nope'"),
    (["bench", "--methods", "ae", "--option", "ae-latent", "--out", "{tmp}/b"], "--option expects METHOD.KEY=VALUE"),
])
def test_bad_input_one_line_error(tmp_path, capsys, args, needle):
    code = run_cli(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and needle in err and len(err.splitlines()) == 1


def test_an_unknown_lr_schedule_names_the_allowed_ones(tmp_path, capsys):
    for cmd in (["train", "--method", "ae"], ["bench", "--methods", "ae"]):
        with pytest.raises(SystemExit) as exit_:
            run_cli(*cmd, "--out", tmp_path / "r", "--lr-schedule", "step")
        assert exit_.value.code == 2  # argparse: the usage line, then the error
        last = capsys.readouterr().err.strip().splitlines()[-1]  # how the choices are quoted varies by Python
        assert "argument --lr-schedule: invalid choice: 'step'" in last and "constant" in last and "cosine" in last


def test_argparse_rejects_bad_numbers(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        run_cli("train", "--method", "ae", "--out", tmp_path, "--image-size", 50)
    assert exc.value.code == 2 and "multiple of 16" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_cli("train", "--method", "ae", "--out", tmp_path, "--epochs", 0)
    with pytest.raises(SystemExit) as exc:  # the rows are methods or a variants file, not both
        run_cli("bench", "--methods", "ae", "--variants", tmp_path / "v.json", "--out", tmp_path)
    assert exc.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        run_cli("bench", "--seeds", "0,x", "--out", tmp_path)
    assert exc.value.code == 2 and "seeds must be comma-separated integers" in capsys.readouterr().err


@pytest.mark.slow  # starts a fresh interpreter (seconds)
def test_module_entry_point_and_methods():
    out = subprocess.run([sys.executable, "-m", "medad_edu", "methods"], capture_output=True, text=True, check=True)
    assert "ae" in out.stdout.split()
    helped = subprocess.run([sys.executable, "-m", "medad_edu", "train", "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and "--config" in helped.stdout and "--device" in helped.stdout
    # `medad-edu bench` is the one command line of the bench (its options live in the interface's cli)
    helped = subprocess.run([sys.executable, "-m", "medad_edu", "bench", "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and all(o in helped.stdout for o in ("--methods", "--variants", "--report-only",
                                                                        "--method-seeds", "--patchcore-backbone"))


@pytest.mark.parametrize("method", ["allinone", "mtl"])
@pytest.mark.filterwarnings("ignore::medad_edu.models.allinone.PretrainedWeightsWarning")
def test_train_universal_methods_on_a_bmad_root_with_tasks_json(tiny_root, tmp_path, method, monkeypatch):
    """`medad-edu train --method allinone|mtl --data DIR` on a multi-task BMAD root: the prompts come from
    tasks.json (edited here, so they cannot come from the built-in table) and reach the saved model."""
    import shutil

    from medad_edu.training import load_model

    monkeypatch.setenv("MEDAD_CACHE_DIR", str(tmp_path / "cache"))  # the prompt cache stays private to the test
    root = tmp_path / "bmad"
    shutil.copytree(tiny_root, root)
    prompts = {"chest_xray": "A frontal chest radiograph.", "brain_mri": "An axial brain MR slice."}
    (root / "tasks.json").write_text(json.dumps(prompts))
    run = tmp_path / "run"
    # two proxy tasks keep the multi-task learner's step cheap; the option goes through the CLI's JSON parsing
    options = ["--option", 'proxy_tasks=["denoise", "lesion"]'] if method == "mtl" else []
    assert run_cli("train", "--method", method, "--data", root, "--out", run, "--epochs", 1,
                   "--image-size", 32, "--batch-size", 16, "--no-progress", *options) == 0
    model, _ = load_model(run, "cpu")
    assert list(model.task_names) == ["chest_xray", "brain_mri"]
    assert list(model.prompts) == [prompts["chest_xray"], prompts["brain_mri"]]
    assert run_cli("evaluate", "--run", run, "--json", tmp_path / "eval.json") == 0
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["method"] == method and 0.0 <= report["mean"]["image_auroc"] <= 1.0
