"""``medad-edu predict`` on odd inputs: 16-bit, RGBA, palette, tiny, huge, non-image and corrupt files."""
import csv
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from medad_edu.data.tasks import PAPER_PROMPTS
from medad_edu.interface.cli import main
from medad_edu.interface.predict_files import match_prompt, predict_images, resolve_task
from medad_edu.training import make_config, read_checkpoint, train


@pytest.fixture(scope="module")
def ae_run(tmp_path_factory):
    import torch
    from conftest import make_task_arrays

    from medad_edu.data import ArraySplit, MultiTaskData, TaskData

    torch.set_num_threads(2)
    normals, abnormals = make_task_arrays(seed=5)
    tasks = []
    for name in ("chest_xray", "brain_mri"):
        a, m = abnormals(6)
        split = ArraySplit(np.concatenate([normals(6), a]), np.r_[np.zeros(6), np.ones(6)],
                           np.concatenate([np.zeros_like(m), m]))
        tasks.append(TaskData(name, PAPER_PROMPTS[name], train=ArraySplit(normals(16), np.zeros(16)), test=split,
                              valid=split))
    run = tmp_path_factory.mktemp("run") / "ae"
    train(make_config("ae", "quick", image_size=32, epochs=1, batch_size=16), run,
          data=MultiTaskData(tasks, 32, name="t"), progress=False)
    return run


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((40, 50)) * 4000).astype(np.uint16)).save(d / "sixteen.png")  # 12-bit in 16
    Image.fromarray((rng.random((36, 36, 4)) * 255).astype(np.uint8), "RGBA").save(d / "alpha.png")
    Image.fromarray((rng.random((33, 33)) * 255).astype(np.uint8)).convert("P").save(d / "palette.png")
    Image.fromarray((rng.random((4, 4)) * 255).astype(np.uint8)).save(d / "tiny.png")
    Image.fromarray((rng.random((2000, 2000)) * 255).astype(np.uint8)).save(d / "huge.png")
    (d / "notes.txt").write_text("not an image")
    (d / "fake.png").write_text("not a png either")
    return d


def test_predict_odd_inputs(ae_run, odd_images, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    report = predict_images(ae_run, odd_images, task="brain_mri", out_dir=out, log=lambda m: None)
    scored = sorted(r["file"] for r in report.rows)
    assert scored == ["alpha.png", "huge.png", "palette.png", "sixteen.png"]
    skipped = dict(report.skipped)
    assert "4x4" in skipped[str(odd_images / "tiny.png")]
    assert "not a supported image type" in skipped[str(odd_images / "notes.txt")]
    assert "not a readable image" in skipped[str(odd_images / "fake.png")]
    stored = read_checkpoint(ae_run)["thresholds"]["brain_mri"]
    with open(out / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:5] == ["file", "task", "score", "threshold", "decision"]
    for r in rows:
        assert r["task"] == "brain_mri" and float(r["threshold"]) == pytest.approx(stored, rel=1e-5)
        assert r["decision"] == ("abnormal" if float(r["score"]) >= float(r["threshold"]) else "normal")
        stem = r["file"][:-4]
        assert (out / f"{stem}_map.png").is_file() and (out / f"{stem}_overlay.png").is_file()
    huge = next(r for r in rows if r["file"] == "huge.png")
    assert huge["original_size"] == "2000x2000"
    assert Image.open(out / "huge_map.png").size == (1024, 1024)  # written at most --max-side
    assert Image.open(out / "sixteen_map.png").size == (50, 40)  # the image's own size and aspect
    # the overlays are figures: the image panel (at most --max-side, small images enlarged to 256 px) plus a
    # title band (file, score, threshold, decision) and a colour bar
    w, h = Image.open(out / "huge_overlay.png").size
    assert 1024 < w <= 1024 + 120 and 1024 < h <= 1024 + 80
    w, h = Image.open(out / "sixteen_overlay.png").size
    assert 256 < w <= 256 + 120 and 256 * 40 / 50 < h <= 256 * 40 / 50 + 80
    assert min(Image.open(out / "alpha_overlay.png").size) > 256
    assert (out / "skipped.csv").read_text().count("\n") == 4  # header + 3 skipped


def test_threshold_override_and_cli(ae_run, odd_images, tmp_path, capsys):
    report = predict_images(ae_run, odd_images / "alpha.png", task="chest_xray", threshold=-1.0)
    assert report.threshold_source == "--threshold" and report.rows[0]["decision"] == "abnormal"
    code = main(["predict", "--run", str(ae_run), "--images", str(odd_images), "--task", "chest_xray",
                 "--out", str(tmp_path / "cli")])
    assert code == 0
    assert "scored 4 image(s)" in capsys.readouterr().out
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.txt").write_text("x")
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(bad / "b.png")
    assert main(["predict", "--run", str(ae_run), "--images", str(bad), "--task", "chest_xray",
                 "--out", str(tmp_path / "none")]) == 1
    assert "no image could be scored" in capsys.readouterr().err
    assert main(["predict", "--run", str(ae_run), "--images", str(odd_images), "--task", "lungs",
                 "--out", str(tmp_path / "x")]) == 2
    assert "unknown task 'lungs'" in capsys.readouterr().err
    assert main(["predict", "--run", str(ae_run), "--images", str(odd_images), "--out", str(tmp_path / "x")]) == 2
    assert "choose one with --task" in capsys.readouterr().err
    assert main(["predict", "--run", str(ae_run), "--images", str(odd_images), "--prompt", "Brain MRI slice.",
                 "--out", str(tmp_path / "x")]) == 2
    assert "only for prompt-driven models" in capsys.readouterr().err


def test_prompt_matching():
    prompts = list(PAPER_PROMPTS.values())
    assert match_prompt("brain mri slice", prompts)[0] == 1
    idx, how = match_prompt("Chest X-ray image", prompts)
    assert idx == 0 and "word overlap" in how
    with pytest.raises(ValueError, match="matches none"):
        match_prompt("a photo of a cat", prompts)
    model = SimpleNamespace(task_names=list(PAPER_PROMPTS), prompts=prompts, use_prompts=True, name="allinone")
    assert resolve_task(model, None, "Head CT slice.")[0] == 4
    with pytest.raises(ValueError, match="either --task or --prompt"):
        resolve_task(model, "head_ct", "Head CT slice.")


def test_overlay_figure_is_readable():
    from medad_edu.interface.plots import overlay_figure

    rng = np.random.default_rng(0)
    fig, (w, h) = overlay_figure(rng.random((64, 48)), rng.random((64, 48)), title="a.png: abnormal\nscore 0.3",
                                 vmax=1.0)
    assert (w, h) == (192, 256)  # enlarged to the 256 px longest side, aspect kept
    assert fig.texts[0].get_text().startswith("a.png: abnormal")
    assert len(fig.axes) == 2  # the image and its colour bar
    width, height = (fig.get_size_inches() * fig.dpi).round()
    assert width > w and height > h
