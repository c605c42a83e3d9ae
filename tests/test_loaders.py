"""Every supported folder layout, generated in temporary folders, and the errors for broken ones."""
import json

import numpy as np
import pytest
from PIL import Image

from medad_edu.data import DataLayoutError, load_data, load_folder_task, load_root, load_task
from medad_edu.data.tasks import GENERIC_PROMPT, PAPER_PROMPTS


def _png(path, value=128, size=20, mask_box=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size, size), value, np.uint8)
    if mask_box is not None:
        arr[:] = 0
        arr[mask_box] = 255
    Image.fromarray(arr).save(path)


def make_bmad(root, good="good", bad="Ungood", valid="valid", img_sub=True, mask_name="anomaly_mask",
              with_masks=True, n=3):
    sub = (lambda p: p / "img") if img_sub else (lambda p: p)
    for i in range(n + 1):
        _png(sub(root / "train" / "good") / f"t{i}.png")
    for split in (valid, "test"):
        if split is None:
            continue
        for i in range(n):
            _png(sub(root / split / good) / f"{split}_n{i}.png")
            _png(sub(root / split / bad) / f"{split}_a{i}.png", value=250)
            if with_masks:
                _png(root / split / bad / mask_name / f"{split}_a{i}.png", mask_box=(slice(2, 6), slice(2, 6)))
    return root


@pytest.mark.parametrize("good,bad,valid,img_sub,mask_name", [
    ("good", "Ungood", "valid", True, "anomaly_mask"),   # BMAD README
    ("good", "ungood", "val", False, "label"),           # released data / authors' loader variant
    ("good", "Ungood", None, True, "label"),             # no validation split
])
def test_bmad_variants(tmp_path, good, bad, valid, img_sub, mask_name):
    root = make_bmad(tmp_path / "brats", good, bad, valid, img_sub, mask_name)
    task = load_task(root, 32)
    assert task.name == "brats" and task.prompt == PAPER_PROMPTS["brain_mri"]
    assert len(task.train) == 4 and task.train.labels.sum() == 0
    images, labels, masks = task.test.arrays()
    assert images.shape == (6, 32, 32) and labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert masks is not None and masks[:3].sum() == 0 and (masks[3:].reshape(3, -1).sum(1) > 0).all()
    assert (task.valid is not None) == (valid is not None)


def test_bmad_image_label_only(tmp_path):
    root = make_bmad(tmp_path / "rsna", with_masks=False)
    task = load_task(root, 16)
    _, labels, masks = task.test.arrays()
    assert masks is None and labels.sum() == 3


def test_bmad_errors(tmp_path):
    with pytest.raises(DataLayoutError, match="no such folder"):
        load_task(tmp_path / "nowhere", 32)
    root = make_bmad(tmp_path / "x")
    (root / "test" / "Ungood" / "anomaly_mask" / "test_a0.png").unlink()  # abnormal image without mask
    with pytest.raises(DataLayoutError, match="test_a0.png"):
        load_task(root, 32)
    root = make_bmad(tmp_path / "y")
    _png(root / "test" / "Ungood" / "anomaly_mask" / "orphan.png", mask_box=(slice(0, 2), slice(0, 2)))
    with pytest.raises(DataLayoutError, match="orphan.png"):
        load_task(root, 32)
    root = make_bmad(tmp_path / "z")
    for p in (root / "train" / "good" / "img").iterdir():
        p.unlink()
    with pytest.raises(DataLayoutError, match="no images"):
        load_task(root, 32)


def test_mask_size_mismatch_is_named(tmp_path):
    root = make_bmad(tmp_path / "m")
    _png(root / "test" / "Ungood" / "anomaly_mask" / "test_a1.png", size=10, mask_box=(slice(0, 2), slice(0, 2)))
    task = load_task(root, 32)
    with pytest.raises(ValueError, match="test_a1.png.*10x10.*20x20"):
        task.test.arrays()


def test_medianomaly(tmp_path):
    root = tmp_path / "HeadCT"
    names = {"train": [f"tr{i}.png" for i in range(10)], "n": ["n0.png", "n1.png"], "a": ["a0.png", "a1.png"]}
    for n in names["train"] + names["n"]:
        _png(root / "images" / n)
    for n in names["a"]:
        _png(root / "images" / n, value=250)
    (root / "data.json").write_text(json.dumps({"train": {"0": names["train"]},
                                                "test": {"0": names["n"], "1": names["a"]}}))
    task = load_task(root, 16)
    assert task.prompt == PAPER_PROMPTS["head_ct"]
    assert len(task.train) + len(task.valid) == 10 and len(task.valid) == 1
    assert task.test.labels.tolist() == [0, 0, 1, 1]
    (root / "data.json").write_text(json.dumps({"train": {"0": ["missing.png"]}, "test": {"0": [], "1": []}}))
    with pytest.raises(DataLayoutError, match="missing.png"):
        load_task(root, 16)


def test_plain_folder(tmp_path):
    for i in range(10):
        _png(tmp_path / "normal" / f"n{i}.png")
    for i in range(3):
        _png(tmp_path / "abnormal" / f"a{i}.png", value=250)
        _png(tmp_path / "mask" / f"a{i}.png", mask_box=(slice(1, 4), slice(1, 4)))
    task = load_folder_task(tmp_path / "normal", tmp_path / "abnormal", 16, "mytask", mask_dir=tmp_path / "mask")
    assert task.prompt == GENERIC_PROMPT
    assert len(task.train) + len(task.valid) + int((task.test.labels == 0).sum()) == 10
    assert task.test.labels.sum() == 3 and task.test.has_masks
    with pytest.raises(DataLayoutError, match="abnormal_dir"):
        load_folder_task(tmp_path / "normal", tmp_path / "nope", 16, "t")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataLayoutError, match="no images"):
        load_folder_task(tmp_path / "empty", tmp_path / "abnormal", 16, "t")


def test_multitask_root_with_tasks_json(tmp_path):
    make_bmad(tmp_path / "rsna")
    make_bmad(tmp_path / "mystery")
    data = load_root(tmp_path, 16)
    assert data.task_names == ["mystery", "rsna"]
    assert data.task("rsna").prompt == PAPER_PROMPTS["chest_xray"] and data.task("mystery").prompt == GENERIC_PROMPT
    (tmp_path / "tasks.json").write_text(json.dumps({"rsna": "A chest film.", "mystery": "Something else."}))
    data = load_data(tmp_path, 16)
    assert data.task_names == ["rsna", "mystery"] and data.task("rsna").prompt == "A chest film."
    assert load_data(tmp_path, 16, tasks=["mystery"]).task_names == ["mystery"]
    with pytest.raises(DataLayoutError, match="nope"):
        load_data(tmp_path, 16, tasks=["nope"])
    (tmp_path / "tasks.json").write_text(json.dumps({"ghost": "x"}))
    with pytest.raises(DataLayoutError, match="ghost"):
        load_root(tmp_path, 16)
    (tmp_path / "tasks.json").write_text("{not json")
    with pytest.raises(DataLayoutError, match="tasks.json"):
        load_root(tmp_path, 16)


def test_empty_root(tmp_path):
    with pytest.raises(DataLayoutError, match="no task folders"):
        load_root(tmp_path, 16)


def test_train_split_with_abnormal_is_rejected(tmp_path):
    root = make_bmad(tmp_path / "t")
    _png(root / "train" / "Ungood" / "x.png")
    with pytest.raises(DataLayoutError, match="normal images only"):
        load_task(root, 16)
