"""The shared training loop: checkpoints, resume, interruption, NaN losses, thresholds, evaluation schema."""
import inspect
import json

import numpy as np
import pytest
import torch

from medad_edu.evaluation import evaluate_model
from medad_edu.models import METHODS, get_method
from medad_edu.models.ae import AutoEncoder
from medad_edu.training import CheckpointError, load_model, make_config, read_checkpoint, train
from medad_edu.training.config import lr_at_epoch
from medad_edu.utils import atomic_write_bytes, get_device


def cfg(epochs=2, **kw):
    return make_config("ae", "quick", epochs=epochs, image_size=32, batch_size=8, **kw)


def test_make_config_precedence_and_errors():
    c = make_config("ae", "paper")
    assert (c.image_size, c.epochs, c.batch_size, c.lr) == (256, 250, 64, 5e-4)
    assert make_config("ae", "quick", epochs=3).epochs == 3
    with pytest.raises(ValueError, match="config must be one of"):
        make_config("ae", "huge")
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        make_config("nope")
    with pytest.raises(ValueError, match="multiple of 16"):
        make_config("ae", image_size=50)


def test_init_args_are_the_declared_constructor_arguments():
    """A constructor states each hyper-parameter once; the base class records the call (defaults filled in)."""
    for method in METHODS:
        cls = get_method(method)
        params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        args = get_method(method)(64, ["a", "b"]).init_args()
        assert list(args) == params, method
        assert args["task_names"] == ["a", "b"] and args["prompts"] == ["", ""]
    assert AutoEncoder(32, ["a"], latent=8).init_args() == {"image_size": 32, "task_names": ["a"], "prompts": [""],
                                                             "latent": 8, "hidden": 2048}
    allinone = get_method("allinone")(32, ["a"], num_experts=3, use_prompts=False).init_args()
    assert allinone["top_k"] == 3  # the normalised value (None -> num_experts) is what is stored
    assert get_method("dsvdd")(32, ["a"], channels=(8, 16)).init_args()["channels"] == [8, 16]


def test_device_choice():
    assert get_device("cpu").type == "cpu"
    assert get_device("auto").type in {"cpu", "cuda", "mps"}
    with pytest.raises(ValueError, match="device must be one of"):
        get_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            get_device("cuda")


def test_train_writes_run_and_loads(tmp_path, tiny_data):
    result = train(cfg(), tmp_path / "run", data=tiny_data, progress=False)
    for name in ("checkpoint.pt", "config.json", "history.json"):
        assert (tmp_path / "run" / name).is_file()
    state = read_checkpoint(tmp_path / "run")
    assert state["complete"] and state["epoch"] == 2 and state["method"] == "ae"
    assert set(state["thresholds"]) >= {"chest_xray", "brain_mri"}
    assert state["thresholds"]["chest_xray:rule"] == "f1max"  # labelled validation split present
    model, _ = load_model(tmp_path / "run")
    x = torch.rand(3, 1, 32, 32)
    ids = torch.zeros(3, dtype=torch.long)
    torch.testing.assert_close(model(x, ids).pred_score, result.model.eval()(x, ids).pred_score)
    assert len(json.loads((tmp_path / "run" / "history.json").read_text())) == 2


def test_resume_matches_uninterrupted(tmp_path, tiny_data):
    full = train(cfg(epochs=3), tmp_path / "full", data=tiny_data, progress=False)
    train(cfg(epochs=1), tmp_path / "part", data=tiny_data, progress=False)
    resumed = train(cfg(epochs=3), tmp_path / "part", data=tiny_data, progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_interrupted_run_keeps_last_epoch_and_resumes(tmp_path, tiny_data, monkeypatch):
    calls = {"n": 0}
    original = AutoEncoder.training_loss

    def flaky(self, batch):
        calls["n"] += 1
        if calls["n"] == 15:  # during the third epoch (48 images, batch 8: 6 steps per epoch)
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(AutoEncoder, "training_loss", flaky)
    with pytest.raises(KeyboardInterrupt):
        train(cfg(epochs=4), tmp_path / "run", data=tiny_data, progress=False)
    state = read_checkpoint(tmp_path / "run")
    assert state["epoch"] == 2 and not state["complete"]
    monkeypatch.setattr(AutoEncoder, "training_loss", original)
    result = train(cfg(epochs=4), tmp_path / "run", data=tiny_data, progress=False)
    assert len(result.history) == 4 and read_checkpoint(tmp_path / "run")["complete"]


def test_nan_loss_is_reported(tmp_path, tiny_data, monkeypatch):
    monkeypatch.setattr(AutoEncoder, "training_loss",
                        lambda self, batch: {"loss": self.reconstruct(batch["image"]).mean() * float("nan")})
    with pytest.raises(FloatingPointError, match=r"non-finite loss term\(s\) \['loss'\] at epoch 1, step 1"):
        train(cfg(), tmp_path / "run", data=tiny_data, progress=False)


def test_other_run_in_folder_is_refused(tmp_path, tiny_data):
    train(cfg(epochs=1), tmp_path / "run", data=tiny_data, progress=False)
    other = make_config("ae", "quick", epochs=1, image_size=32, batch_size=8, options={"latent": 8})
    with pytest.raises(CheckpointError, match="different run"):
        train(other, tmp_path / "run", data=tiny_data, progress=False)


def test_corrupt_checkpoint_is_named(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="unreadable checkpoint"):
        load_model(tmp_path)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_model(tmp_path / "empty")


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]  # no temporary file left behind


def test_evaluate_schema_and_score_sign(tiny_data):
    result = train(cfg(epochs=4), None, data=tiny_data, progress=False)
    report = evaluate_model(result.model, tiny_data, thresholds=result.thresholds)
    assert report["method"] == "ae" and set(report["tasks"]) == {"chest_xray", "brain_mri"}
    for m in (*report["tasks"].values(), report["mean"]):
        for key in ("image_auroc", "ap", "f1", "acc", "pixel_auroc", "aupro", "dice", "acc_at_valid_threshold"):
            assert m[key] is None or 0.0 <= m[key] <= 1.0, key
    assert report["mean"]["image_auroc"] > 0.8  # bright squares are easy: abnormal must score higher
    sub = evaluate_model(result.model, tiny_data.subset(["brain_mri"]))
    assert list(sub["tasks"]) == ["brain_mri"]
    assert sub["tasks"]["brain_mri"]["image_auroc"] == pytest.approx(report["tasks"]["brain_mri"]["image_auroc"])


def test_model_input_checks(tiny_data):
    model = get_method("ae")(32, tiny_data.task_names)
    with pytest.raises(ValueError, match="built for 32x32"):
        model(torch.rand(2, 1, 64, 64), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="task ids"):
        model(torch.rand(2, 1, 32, 32), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="grey"):
        model(torch.rand(2, 3, 32, 32), torch.zeros(2, dtype=torch.long))


def test_resume_with_other_settings_needs_allow_config_change(tmp_path, tiny_data):
    train(cfg(epochs=1), tmp_path / "run", data=tiny_data, progress=False)
    with pytest.raises(CheckpointError, match=r"config\.json \(seed: 0 -> 3; lr: 0\.001 -> 0\.01\)"):
        train(cfg(epochs=2, seed=3, lr=1e-2), tmp_path / "run", data=tiny_data, progress=False)
    other_batch = make_config("ae", "quick", epochs=1, image_size=32, batch_size=4)
    with pytest.raises(CheckpointError, match=r"\(batch_size: 8 -> 4\)"):
        train(other_batch, tmp_path / "run", data=tiny_data, progress=False)
    # data given explicitly: the embedded-size preset does not decide what is trained, so it is not compared
    res = train(cfg(epochs=2, sizes="tiny"), tmp_path / "run", data=tiny_data, progress=False)
    assert len(res.history) == 2
    res = train(cfg(epochs=3, seed=3), tmp_path / "run", data=tiny_data, progress=False, allow_config_change=True)
    state = read_checkpoint(tmp_path / "run")
    assert len(res.history) == 3 and state["config"]["seed"] == 3
    assert state["extra"]["config_changes"] == [{"after_epoch": 2, "changes": ["seed: 0 -> 3"]}]


def test_cosine_lr_schedule_resumes_exactly(tmp_path, tiny_data):
    """The cosine schedule sets each epoch's rate from the epoch alone: a resumed run equals an uninterrupted one."""
    c = cfg(epochs=3, lr_schedule="cosine")
    assert [lr_at_epoch(c, e) for e in range(3)] == pytest.approx([1e-3, 0.75e-3, 0.25e-3])
    assert lr_at_epoch(cfg(epochs=3), 2) == 1e-3  # constant: cfg.lr throughout (every run before the setting)
    full = train(c, tmp_path / "full", data=tiny_data, progress=False)
    assert read_checkpoint(tmp_path / "full")["optimizer_state"]["param_groups"][0]["lr"] == pytest.approx(0.25e-3)
    train(cfg(epochs=1, lr_schedule="cosine"), tmp_path / "part", data=tiny_data, progress=False)
    with pytest.raises(CheckpointError, match=r"lr_schedule: 'cosine' -> 'constant'"):
        train(cfg(epochs=3), tmp_path / "part", data=tiny_data, progress=False)
    resumed = train(c, tmp_path / "part", data=tiny_data, progress=False)
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b)
    constant = train(cfg(epochs=3), tmp_path / "constant", data=tiny_data, progress=False)
    assert not all(torch.equal(a, b) for a, b in zip(full.model.state_dict().values(),
                                                        constant.model.state_dict().values()))
    with pytest.raises(ValueError, match=r"lr_schedule must be one of \('constant', 'cosine'\); got 'step'"):
        make_config("ae", "quick", lr_schedule="step")


def test_lock_is_released_when_training_fails(tmp_path, tiny_data, monkeypatch):
    fcntl = pytest.importorskip("fcntl")
    def boom(self, batch):
        raise RuntimeError("boom")

    monkeypatch.setattr(AutoEncoder, "training_loss", boom)
    with pytest.raises(RuntimeError, match="boom"):
        train(cfg(epochs=1), tmp_path / "run", data=tiny_data, progress=False)
    with open(tmp_path / "run" / ".lock") as fh:  # nobody holds it any more
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_checkpoint_is_plain_data(tmp_path, tiny_data):
    train(cfg(epochs=1), tmp_path / "run", data=tiny_data, progress=False)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)  # no custom classes inside
    assert all(type(v) is str for v in state["versions"].values())
    torch.save({"format_version": 1, "method": np.float64(1.0)}, tmp_path / "numpy.pt")
    with pytest.raises(CheckpointError, match=r"numpy\.pt: refused to load"):
        read_checkpoint(tmp_path / "numpy.pt")


def test_min_steps_lengthens_training_on_a_small_set_and_an_explicit_epochs_turns_it_off(tmp_path, tiny_data):
    """A model that learns in optimizer steps gets at least min_steps of them; the grown epochs resume and load."""
    from medad_edu.data.batches import split_tensors
    from medad_edu.training.config import epochs_for_data, steps_per_epoch

    assert [steps_per_epoch(n, 32) for n in (10, 32, 63, 64, 1000)] == [1, 1, 1, 2, 31]
    n = len(split_tensors(tiny_data, "train"))
    per_epoch = steps_per_epoch(n, 8)
    c = make_config("ae", "quick", epochs=1, image_size=32, batch_size=8, min_steps=2 * per_epoch + 1)
    assert c.min_steps == 2 * per_epoch + 1 and epochs_for_data(c, n) == 3  # ceil: at least min_steps
    assert epochs_for_data(make_config("ae", "quick", epochs=5, batch_size=8, min_steps=1), n) == 5  # never fewer
    assert cfg(epochs=1).min_steps == 0  # an explicit epochs, no explicit min_steps: taken as it is
    logs = []
    res = train(c, tmp_path / "run", data=tiny_data, progress=False, log=logs.append)
    assert len(res.history) == 3 and any("3 epochs instead of 1" in m for m in logs)
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (stored["epochs"], stored["min_steps"]) == (3, 2 * per_epoch + 1)
    again = train(c, tmp_path / "run", data=tiny_data, progress=False)  # the same settings: loaded, not retrained
    assert len(again.history) == 3
    for a, b in zip(res.model.state_dict().values(), again.model.state_dict().values()):
        torch.testing.assert_close(a, b)
    with pytest.raises(CheckpointError, match=r"epochs: 3 -> 1 \(epochs may only grow\)"):
        train(cfg(epochs=1), tmp_path / "run", data=tiny_data, progress=False)  # min_steps off: fewer epochs
    with pytest.raises(ValueError, match=r"min_steps must be an integer >= 0; got -1"):
        make_config("ae", "quick", min_steps=-1)
