"""Bad input of every kind gives a non-zero exit and a one-line message naming what is wrong, never a traceback;
a run folder is always what it says (locked while training, refused when resumed with other settings), and a
checkpoint can never run code.

Every test drives the command line (``medad_edu.interface.cli.main``, in-process unless a second process is the
point) on tiny data: one 32-px task, ``--method ae``, one to three epochs.
"""
import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medad_edu.data import load_root
from medad_edu.data.imageio import ImageReadError, read_image
from medad_edu.data.tasks import PAPER_PROMPTS
from medad_edu.interface.cli import main
from medad_edu.training import read_checkpoint

TRAIN = ["--method", "ae", "--image-size", "32", "--batch-size", "16", "--no-progress"]


def run_cli(*args):
    return main([str(a) for a in args])


def one_line_error(capsys, command="train"):
    """The stderr of a failed command: exactly one line, starting with the command's name."""
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"medad-edu {command}: error: "), err
    assert "Traceback" not in err
    return err


# --- data -------------------------------------------------------------------------------------------------


def _png(path, value=128, size=16):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)
    return path


def make_task(root, n=3, masks=True):
    """A minimal BMAD task folder (``n`` + 1 normal training images, a labelled test split)."""
    for i in range(n + 1):
        _png(root / "train" / "good" / "img" / f"t{i}.png", 100 + i)
    for i in range(n):
        _png(root / "test" / "good" / "img" / f"n{i}.png", 110 + i)
        _png(root / "test" / "Ungood" / "img" / f"a{i}.png", 250)
        if masks:
            _png(root / "test" / "Ungood" / "anomaly_mask" / f"a{i}.png", 255)
    return root


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    """The embedded phantoms' chest X-ray task at 32 px, 48 training images, written in the BMAD layout."""
    out = tmp_path_factory.mktemp("data") / "tiny_bmad"
    assert run_cli("data", "make", "--out", out, "--size", 32, "--sizes", "tiny", "--tasks", "chest_xray") == 0
    return out


@pytest.fixture(scope="module")
def trained_run(tiny_root, tmp_path_factory):
    """A finished one-epoch ae run (read only: tests copy it before changing anything)."""
    run = tmp_path_factory.mktemp("runs") / "ae"
    assert run_cli("train", *TRAIN, "--data", tiny_root, "--out", run, "--epochs", 1) == 0
    return run


def _copy_run(run, dest):
    import shutil

    shutil.copytree(run, dest)
    (dest / ".lock").unlink(missing_ok=True)
    return dest


def test_missing_and_empty_data_root(tmp_path, capsys):
    run = tmp_path / "run"
    assert run_cli("train", *TRAIN, "--data", tmp_path / "missing", "--out", run) == 2
    assert f"{tmp_path / 'missing'}: no such folder" in one_line_error(capsys)
    (tmp_path / "empty").mkdir()
    assert run_cli("train", *TRAIN, "--data", tmp_path / "empty", "--out", run) == 2
    assert f"{tmp_path / 'empty'}: no task folders found" in one_line_error(capsys)
    assert not run.exists()  # a failed data load leaves no run folder behind


def _truncated_png(path):
    _png(path, size=64)
    path.write_bytes(path.read_bytes()[:60])


def _fake_png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("this is not an image")


def _one_pixel(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(path)


def _nan_tiff(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.ones((16, 16), np.float32)
    arr[3, 3] = np.nan
    Image.fromarray(arr).save(path)


def _dicom_without_pixels(path):
    pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # secondary capture
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName = "Nobody"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


@pytest.mark.parametrize("name,make,needle", [
    ("truncated.png", _truncated_png, "could not be read"),
    ("fake.png", _fake_png, "not a readable image"),
    ("dot.png", _one_pixel, "image is 1x1 pixels; at least 8x8 is needed"),
    ("nan.tif", _nan_tiff, "float image contains NaN or infinity"),
    ("nopixels.dcm", _dicom_without_pixels, "DICOM file has no pixel data"),
])
def test_bad_image_file_is_named_and_no_run_folder_is_made(tmp_path, capsys, name, make, needle):
    task = make_task(tmp_path / "task")
    bad = task / "train" / "good" / "img" / name
    make(bad)
    run = tmp_path / "run"
    assert run_cli("train", *TRAIN, "--data", task, "--out", run, "--epochs", 1) == 2
    err = one_line_error(capsys)
    assert f"{bad}: {needle}" in err
    assert not run.exists()  # every training image is decoded before the run folder is created


def test_decompression_bomb_is_refused(tmp_path, capsys, monkeypatch):
    task = make_task(tmp_path / "task")
    big = _png(task / "train" / "good" / "img" / "big.png", size=40)  # 1600 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # over the limit (Pillow warns): refused as well
    with pytest.raises(ImageReadError, match=r"big\.png: image too large to decode safely"):
        read_image(big)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # over twice the limit: Pillow raises
    assert run_cli("train", *TRAIN, "--data", task, "--out", tmp_path / "run", "--epochs", 1) == 2
    err = one_line_error(capsys)
    assert f"{big}: image too large to decode safely" in err and "decompression-bomb limit" in err


def test_mask_size_mismatch_and_empty_class_folder(tmp_path, capsys):
    task = make_task(tmp_path / "m")
    mask = task / "test" / "Ungood" / "anomaly_mask" / "a1.png"
    _png(mask, 255, size=10)
    assert run_cli("train", *TRAIN, "--data", task, "--out", tmp_path / "run", "--epochs", 1) == 0
    capsys.readouterr()
    assert run_cli("evaluate", "--run", tmp_path / "run", "--json", tmp_path / "e.json") == 2
    err = one_line_error(capsys, "evaluate")
    assert f"mask {mask} is 10x10 but its image {task / 'test' / 'Ungood' / 'img' / 'a1.png'} is 16x16" in err
    empty = make_task(tmp_path / "e")
    for p in (empty / "test" / "Ungood" / "img").iterdir():
        p.unlink()
    for p in (empty / "test" / "Ungood" / "anomaly_mask").iterdir():
        p.unlink()
    assert run_cli("train", *TRAIN, "--data", empty, "--out", tmp_path / "run2", "--epochs", 1) == 2
    assert f"{empty / 'test' / 'Ungood' / 'img'}: no images" in one_line_error(capsys)


def test_bad_tasks_json(tmp_path, capsys):
    root = tmp_path / "root"
    make_task(root / "chest_xray")
    (root / "tasks.json").write_text("{not json")
    assert run_cli("train", *TRAIN, "--data", root, "--out", tmp_path / "run", "--epochs", 1) == 2
    assert f"{root / 'tasks.json'}: not valid JSON" in one_line_error(capsys)
    (root / "tasks.json").write_text(json.dumps({"chest_xray": 3}))
    assert run_cli("train", *TRAIN, "--data", root, "--out", tmp_path / "run", "--epochs", 1) == 2
    assert "expected {\"<task folder>\": \"<prompt text>\"" in one_line_error(capsys)
    (root / "tasks.json").write_text(json.dumps({"chest_xray": "A chest.", "gone": "Missing."}))
    assert run_cli("train", *TRAIN, "--data", root, "--out", tmp_path / "run", "--epochs", 1) == 2
    assert f"names task 'gone' but {root / 'gone'} does not exist" in one_line_error(capsys)
    assert not (tmp_path / "run").exists()


def test_task_folder_missing_from_tasks_json_is_kept_with_a_warning(tmp_path, capsys):
    root = tmp_path / "root"
    make_task(root / "chest_xray")
    make_task(root / "brats")
    (root / "tasks.json").write_text(json.dumps({"chest_xray": "A frontal chest radiograph."}))
    data = load_root(root, 32)
    assert data.task_names == ["chest_xray", "brats"]
    assert data.prompts == ["A frontal chest radiograph.", PAPER_PROMPTS["brain_mri"]]
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"does not name the task folder {root / 'brats'}" in err and PAPER_PROMPTS["brain_mri"] in err


def test_16bit_and_dicom_scaling_does_not_depend_on_content(tmp_path):
    # 16-bit: divided by 65535 whatever the rest of the image holds
    for i, top in enumerate((1200, 65000)):
        arr = np.full((16, 16), 1200, np.uint16)
        arr[0, 0] = top
        Image.fromarray(arr).save(tmp_path / f"s{i}.png")
    assert read_image(tmp_path / "s0.png")[8, 8] == read_image(tmp_path / "s1.png")[8, 8] == \
        pytest.approx(1200 / 65535, rel=1e-6)
    # DICOM: rescale, then the stored window if any, else the full range of BitsStored
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    def dicom(path, pixels, window=None):
        meta = FileMetaDataset()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept = "2", "-100"
        if window is not None:
            ds.WindowCenter, ds.WindowWidth = str(window[0]), str(window[1])
        ds.PixelData = pixels.astype(np.uint16).tobytes()
        ds.save_as(path, enforce_file_format=True)
        return path

    a = np.full((16, 16), 1000, np.uint16)
    b = a.copy()
    b[0, 0] = 4000
    # no window: BitsStored 12 -> stored 0..4095 -> rescaled -100..8090
    expected = (1000 * 2 - 100 + 100) / (4095 * 2)
    for arr in (a, b):
        out = read_image(dicom(tmp_path / "x.dcm", arr))
        assert out[8, 8] == pytest.approx(expected, rel=1e-6)
    windowed = read_image(dicom(tmp_path / "w.dcm", b, window=(1900, 200)))  # [1800, 2000]
    assert windowed[8, 8] == pytest.approx((1900 - 1800) / 200) and windowed[0, 0] == 1.0
    assert pydicom is not None


# --- flags ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("option,needle", [
    ("nosuch=3", "--option nosuch: method 'ae' has no option 'nosuch'; its options are: "
                 "latent (int, default 16), hidden (int, default 2048)"),
    ("hidden=abc", "--option hidden=abc: method 'ae' expects int for 'hidden'; its options are: latent (int"),
    ("latent=1.5", "--option latent=1.5: method 'ae' expects int for 'latent'"),
    ("novalue", "--option expects KEY=VALUE, got 'novalue'"),
])
def test_bad_method_option(tmp_path, capsys, option, needle):
    assert run_cli("train", *TRAIN, "--out", tmp_path / "run", "--option", option) == 2
    assert needle in one_line_error(capsys)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag,value,needle", [
    ("--workers", "-1", "expected a whole number >= 0, got -1"),
    ("--epochs", "0", "expected a positive integer, got 0"),
    ("--lr", "-0.1", "expected a positive number, got -0.1"),
    ("--image-size", "50", "multiple of 16"),
    ("--batch-size", "many", "expected a positive integer, got 'many'"),
    ("--no-such-flag", None, "unrecognized arguments: --no-such-flag"),
])
def test_argparse_refuses_bad_flags(tmp_path, capsys, flag, value, needle):
    with pytest.raises(SystemExit) as exc:
        run_cli("train", "--method", "ae", "--out", tmp_path / "run", flag, *([value] if value else []))
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda(tmp_path, capsys):
    assert run_cli("train", *TRAIN, "--out", tmp_path / "run", "--device", "cuda") == 2
    assert "device 'cuda' requested but CUDA is not available on this machine" in one_line_error(capsys)
    assert run_cli("evaluate", "--run", tmp_path / "run", "--json", tmp_path / "e.json", "--device", "cuda") == 2
    assert "CUDA is not available" in one_line_error(capsys, "evaluate")


# --- writing ----------------------------------------------------------------------------------------------


def test_unwritable_out_and_disk_full_name_the_path(tiny_root, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert run_cli("train", *TRAIN, "--data", tiny_root, "--out", blocker / "run", "--epochs", 1) == 2
    assert f"cannot create the run folder {blocker / 'run'}" in one_line_error(capsys)
    assert run_cli("train", *TRAIN, "--data", tiny_root, "--out", blocker, "--epochs", 1) == 2
    assert f"cannot use {blocker} as a run folder: it is a file" in one_line_error(capsys)

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    run = tmp_path / "run"
    assert run_cli("train", *TRAIN, "--data", tiny_root, "--out", run, "--epochs", 1) == 2
    assert f"cannot write {run / 'config.json'}: No space left on device" in one_line_error(capsys)
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*.tmp"))  # no temporary file left behind


# --- checkpoints that could run code ----------------------------------------------------------------------


class _Evil:
    """Unpickling this runs a shell command (what a crafted checkpoint would do with weights_only=False)."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.mark.parametrize("kind", ["torch", "pickle"])
def test_malicious_checkpoint_is_never_executed(tmp_path, capsys, kind, tiny_root):
    target = tmp_path / "PWNED"
    run = tmp_path / "evil"
    run.mkdir()
    ckpt = run / "checkpoint.pt"
    payload = {"format_version": 1, "method": "ae", "init_args": _Evil(target), "model_state": {},
               "epoch": 1, "complete": True, "config": {"method": "ae"}}
    if kind == "torch":
        torch.save(payload, ckpt)
    else:
        ckpt.write_bytes(pickle.dumps(payload))
    images = tmp_path / "images"
    _png(images / "x.png")
    needle = "refused to load" if kind == "torch" else "unreadable checkpoint"
    assert run_cli("evaluate", "--run", run, "--json", tmp_path / "e.json") == 2
    assert f"{ckpt}: {needle}" in one_line_error(capsys, "evaluate")
    assert run_cli("predict", "--run", run, "--images", images, "--out", tmp_path / "pred") == 2
    assert f"{ckpt}: {needle}" in one_line_error(capsys, "predict")
    assert run_cli("train", *TRAIN, "--data", tiny_root, "--out", run, "--epochs", 1) == 2  # a resume
    assert f"{ckpt}: {needle}" in one_line_error(capsys)
    assert not target.exists()


def test_foreign_and_corrupt_checkpoints(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"format_version": 1, "weights": torch.zeros(2)}, run / "checkpoint.pt")  # no 'method'
    assert run_cli("evaluate", "--run", run, "--json", tmp_path / "e.json") == 2
    err = one_line_error(capsys, "evaluate")
    assert f"{run / 'checkpoint.pt'}: not a complete medad-edu checkpoint (missing method" in err
    (run / "checkpoint.pt").write_bytes(b"garbage")
    assert run_cli("evaluate", "--run", run, "--json", tmp_path / "e.json") == 2
    assert f"{run / 'checkpoint.pt'}: unreadable checkpoint" in one_line_error(capsys, "evaluate")
    (run / "checkpoint.pt").write_bytes(b"")
    assert run_cli("evaluate", "--run", run, "--json", tmp_path / "e.json") == 2
    assert "the file is empty or truncated" in one_line_error(capsys, "evaluate")


def test_checkpoint_loads_with_weights_only(trained_run):
    state = torch.load(trained_run / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert type(state["versions"]["torch"]) is str and state["complete"]


# --- runs that are what they say --------------------------------------------------------------------------


def test_locked_run_folder_refuses_a_second_train(tiny_root, tmp_path, capsys):
    fcntl = pytest.importorskip("fcntl")
    run = tmp_path / "run"
    run.mkdir()
    with open(run / ".lock", "a+") as held:  # as another `train` would hold it
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242\n")
        held.flush()
        t0 = time.perf_counter()
        assert run_cli("train", *TRAIN, "--data", tiny_root, "--out", run, "--epochs", 1) == 2
        assert time.perf_counter() - t0 < 5  # at once, before any data is loaded
        err = one_line_error(capsys)
        assert f"{run} is in use by another `train` (process 4242)" in err
    assert not (run / "checkpoint.pt").exists()
    assert run_cli("train", *TRAIN, "--data", tiny_root, "--out", run, "--epochs", 1) == 0  # lock released


def test_resume_with_other_settings_is_refused_unless_allowed(tiny_root, trained_run, tmp_path, capsys):
    run = _copy_run(trained_run, tmp_path / "run")
    code = run_cli("train", *TRAIN, "--data", tiny_root, "--out", run, "--epochs", 2, "--seed", 1, "--lr", "0.002",
                   "--option", "hidden=1024")
    assert code == 2
    err = one_line_error(capsys)
    assert f"{run} holds a different run: the settings differ from {run / 'config.json'}" in err
    assert "(seed: 0 -> 1; lr: 0.001 -> 0.002; options.hidden: 2048 -> 1024)" in err
    assert "--allow-config-change" in err
    assert run_cli("train", *TRAIN, "--data", tiny_root / "chest_xray", "--out", run, "--epochs", 1) == 2
    assert f"data: '{tiny_root}' -> '{tiny_root / 'chest_xray'}'" in one_line_error(capsys)
    assert run_cli("train", *TRAIN, "--data", tiny_root, "--out", run, "--epochs", 1, "--batch-size", 8) == 2
    assert "batch_size: 16 -> 8" in one_line_error(capsys)
    # more epochs is a continuation, not a change; a deliberate change is allowed and recorded
    assert run_cli("train", *TRAIN, "--data", tiny_root, "--out", run, "--epochs", 2, "--seed", 1,
                   "--allow-config-change") == 0
    state = read_checkpoint(run)
    assert state["epoch"] == 2 and state["complete"] and state["config"]["seed"] == 1
    assert state["extra"]["config_changes"] == [{"after_epoch": 1, "changes": ["seed: 0 -> 1"]}]
    assert json.loads((run / "config.json").read_text())["seed"] == 1
    # the method can never change (the weights would not fit)
    capsys.readouterr()
    assert run_cli("train", "--method", "memae", "--image-size", 32, "--no-progress", "--data", tiny_root,
                   "--out", run, "--allow-config-change") == 2
    assert "holds a checkpoint of a different run (method 'ae', not 'memae')" in one_line_error(capsys)


def test_data_folder_is_stored_as_an_absolute_path(tiny_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tiny_root.parent)
    run = tmp_path / "run"
    assert run_cli("train", *TRAIN, "--data", tiny_root.name, "--out", run, "--epochs", 1) == 0
    assert json.loads((run / "config.json").read_text())["data"] == str(tiny_root.resolve())
    # the same run resumes/loads from another folder with the relative spelling or the absolute path
    assert run_cli("train", *TRAIN, "--data", tiny_root.name, "--out", run, "--epochs", 1) == 0
    monkeypatch.chdir(tmp_path)
    assert run_cli("evaluate", "--run", run, "--json", "e.json") == 0
    assert json.loads((tmp_path / "e.json").read_text())["checkpoint"]["complete"] is True


def test_embedded_spec_name_is_kept(tmp_path):
    from medad_edu.training import make_config, train

    cfg = make_config("ae", "quick", epochs=1, image_size=32, batch_size=16, sizes="tiny", tasks=["chest_xray"])
    train(cfg, tmp_path / "run", progress=False, log=lambda m: None)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"] == "embedded"
    again = train(cfg, tmp_path / "run", progress=False, log=lambda m: None)  # loads, no config difference
    assert len(again.history) == 1


def _interrupted_run(tiny_root, run, monkeypatch):
    """A run stopped (Ctrl-C) during its second epoch: checkpoint after epoch 1, not complete."""
    from medad_edu.models.ae import AutoEncoder

    original, calls = AutoEncoder.training_loss, {"n": 0}

    def stop(self, batch):
        calls["n"] += 1
        if calls["n"] == 4:  # 48 images, batch 16: 3 steps per epoch
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(AutoEncoder, "training_loss", stop)
    assert run_cli("train", *TRAIN, "--data", tiny_root, "--out", run, "--epochs", 3) == 130
    monkeypatch.setattr(AutoEncoder, "training_loss", original)


def test_evaluate_refuses_unfinished_run_unless_asked(tiny_root, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    _interrupted_run(tiny_root, run, monkeypatch)
    capsys.readouterr()
    assert run_cli("evaluate", "--run", run, "--json", tmp_path / "e.json") == 2
    err = one_line_error(capsys, "evaluate")
    assert f"{run}: training is unfinished (checkpoint after epoch 1 of 3" in err and "--allow-incomplete" in err
    assert not (tmp_path / "e.json").exists()
    assert run_cli("evaluate", "--run", run, "--json", tmp_path / "e.json", "--allow-incomplete") == 0
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["checkpoint"]["complete"] is False and report["checkpoint"]["epoch"] == 1
    assert "training is unfinished" in report["checkpoint"]["problems"]["incomplete"]
    assert "warning" in capsys.readouterr().err


def test_evaluate_refuses_nonfinite_model_unless_asked(trained_run, tmp_path, capsys):
    run = _copy_run(trained_run, tmp_path / "run")
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    name = next(k for k, v in state["model_state"].items() if v.is_floating_point())
    state["model_state"][name][...] = float("nan")
    torch.save(state, run / "checkpoint.pt")
    assert run_cli("evaluate", "--run", run, "--json", tmp_path / "e.json") == 2
    err = one_line_error(capsys, "evaluate")
    assert f"the model has non-finite values (NaN, or infinite weights) in {name}" in err
    assert "--allow-nonfinite" in err
    # allowed: it proceeds, and the JSON says what is wrong (here every score is NaN, so there are no metrics)
    assert run_cli("evaluate", "--run", run, "--json", tmp_path / "e.json", "--allow-nonfinite") == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("medad-edu evaluate: warning: ")
    assert lines[1].startswith("medad-edu evaluate: error: ") and "non-finite anomaly scores" in lines[1]
    report = json.loads((tmp_path / "e.json").read_text())
    assert name in report["checkpoint"]["problems"]["nonfinite"]
    assert report["mean"]["image_auroc"] is None and "non-finite anomaly scores" in report["error"]


def test_evaluate_method_mismatch(trained_run, tmp_path, capsys):
    assert run_cli("evaluate", "--run", trained_run, "--json", tmp_path / "e.json", "--method", "mtl") == 2
    assert f"{trained_run}: checkpoint is for method 'ae', not 'mtl'" in one_line_error(capsys, "evaluate")


_CHILD = r"""
import pathlib, sys, time
import torch
torch.set_num_threads(int(sys.argv[1]))
from medad_edu.models.ae import AutoEncoder
marker, hang_at = pathlib.Path(sys.argv[2]), int(sys.argv[3])
original, calls = AutoEncoder.training_loss, [0]
def hang(self, batch):
    calls[0] += 1
    if calls[0] == hang_at:  # mid-epoch: the parent kills us with SIGKILL here
        marker.write_text("hanging")
        time.sleep(120)
    return original(self, batch)
AutoEncoder.training_loss = hang
from medad_edu.interface.cli import main
sys.exit(main(sys.argv[4:]))
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
@pytest.mark.slow
def test_kill_9_then_resume_matches_uninterrupted_run_and_lock_holds(tiny_root, tmp_path, capsys):
    args = [*TRAIN, "--data", str(tiny_root), "--epochs", "3"]
    run, marker = tmp_path / "killed", tmp_path / "hanging"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(torch.get_num_threads()), str(marker), "5",
                              "train", *args, "--out", str(run)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not marker.exists():
            assert child.poll() is None, child.stderr.read().decode()
            assert time.time() < deadline, "the training process never reached epoch 2"
            time.sleep(0.05)
        # a second `train` on the same folder while the first one runs: refused at once
        assert run_cli("train", *args, "--out", run) == 2
        assert f"{run} is in use by another `train` (process {child.pid})" in one_line_error(capsys)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    assert child.returncode == -signal.SIGKILL
    state = read_checkpoint(run)
    assert state["epoch"] == 1 and not state["complete"]
    assert run_cli("train", *args, "--out", run) == 0  # resumes after epoch 1 (the dead process's lock is gone)
    assert run_cli("train", *args, "--out", tmp_path / "straight") == 0
    resumed, straight = read_checkpoint(run), read_checkpoint(tmp_path / "straight")
    assert resumed["complete"] and [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    assert resumed["model_state"].keys() == straight["model_state"].keys()
    for key, value in straight["model_state"].items():
        assert torch.equal(resumed["model_state"][key], value), key
    assert resumed["thresholds"] == straight["thresholds"]
