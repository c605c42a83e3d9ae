"""Tests of the embedded offline data sets: procedural phantoms and the real-anatomy set.

What the book (notebooks/01_data.ipynb) promises about them: right shapes and ranges at any size,
deterministic under a seed, lesions that change the image only around their mask and only inside the
anatomy, normal images that vary too much to be memorised, and five tasks that look different.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from medad_edu.data import lesions, phantoms, real_anatomy

TASKS = phantoms.TASKS


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """Pixels within Euclidean distance r of the mask."""
    return ndi.distance_transform_edt(~mask.astype(bool)) <= r


@pytest.fixture(scope="module")
def splits64():
    return {t: phantoms.make_split(t, 6, 6, size=64, seed=3) for t in TASKS}


def test_task_list():
    assert TASKS == ("chest_xray", "brain_mri", "fundus", "breast_us", "head_ct")


@pytest.mark.parametrize("size,n", [(32, 3), (64, 3), (256, 1)])
@pytest.mark.parametrize("task", TASKS)
def test_shapes_dtypes_range(task, size, n):
    x, y, m = phantoms.make_split(task, n, n, size=size, seed=0)
    assert x.shape == (2 * n, size, size) and x.dtype == np.float32
    assert y.shape == (2 * n,) and y.dtype == np.int64 and list(y) == [0] * n + [1] * n
    assert m.shape == x.shape and m.dtype == np.uint8
    assert np.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 1.0
    assert set(np.unique(m)) <= {0, 1}
    assert m[:n].sum() == 0, "normal images have empty masks"
    assert all(m[i].sum() >= 1 for i in range(n, 2 * n)), "every abnormal mask has a positive pixel"
    assert x[:n].std() > 0.05, "images are not blank"


def test_make_normal_shape_and_odd_size():
    x = phantoms.make_normal("fundus", 2, size=100, seed=1)
    assert x.shape == (2, 100, 100) and x.dtype == np.float32
    assert phantoms.make_normal("chest_xray", 0).shape == (0, 64, 64)


@pytest.mark.parametrize("task", TASKS)
def test_deterministic_and_seed_dependent(task):
    a = phantoms.make_normal(task, 3, size=32, seed=5)
    b = phantoms.make_normal(task, 3, size=32, seed=5)
    c = phantoms.make_normal(task, 3, size=32, seed=6)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 0.01
    # Image i does not depend on how many images were asked for.
    np.testing.assert_array_equal(phantoms.make_normal(task, 5, size=32, seed=5)[:3], a)
    la, ma = phantoms.add_lesions(task, a, seed=2)
    lb, mb = phantoms.add_lesions(task, b, seed=2)
    np.testing.assert_array_equal(la, lb)
    np.testing.assert_array_equal(ma, mb)


@pytest.mark.parametrize("task", TASKS)
def test_same_anatomy_across_sizes(task):
    """Geometry is defined in normalised coordinates: 32 px is the 128 px image, only coarser."""
    small = phantoms.make_normal(task, 2, size=32, seed=4)
    big = phantoms.make_normal(task, 2, size=128, seed=4).reshape(2, 32, 4, 32, 4).mean(axis=(2, 4))
    for a, b in zip(small, big):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.75


@pytest.mark.parametrize("task", TASKS)
def test_lesion_contract(task, splits64):
    x, y, m = splits64[task]
    S = x.shape[-1]
    base = phantoms._generate(task, 6, S, 3, lesions.STREAM_ABNORMAL_BASE)
    abn, masks = x[6:], m[6:]
    for b, a, k in zip(base, abn, masks):
        assert k.sum() >= 1
        outside = ~_dilate(k, lesions.margin_px(S))
        np.testing.assert_array_equal(a[outside], b[outside])
        assert np.abs(a - b)[k.astype(bool)].mean() > 0.0, "the lesion changes the image inside its mask"
        # Inside the anatomy: the mask does not lie on the dark background around the body.
        assert b[k.astype(bool)].mean() > 0.05
    # Abnormal images are not lesioned copies of the normals of the same split.
    for a in abn:
        assert min(np.abs(a - nrm).mean() for nrm in x[:6]) > 0.01


@pytest.mark.parametrize("task", TASKS)
def test_severity(task):
    x = phantoms.make_normal(task, 4, size=64, seed=8)
    lo, m_lo = phantoms.add_lesions(task, x, seed=1, severity=np.zeros(4))
    hi, m_hi = phantoms.add_lesions(task, x, seed=1, severity=1.0)
    for i in range(4):
        both = (m_lo[i] | m_hi[i]).astype(bool)
        assert np.abs(hi[i] - x[i])[both].mean() > np.abs(lo[i] - x[i])[both].mean()
    # Same place: the masks overlap.
    assert all((m_lo[i] & m_hi[i]).sum() >= 1 for i in range(4))
    with pytest.raises(ValueError, match="severity"):
        phantoms.add_lesions(task, x, severity=np.full(4, 1.5))
    with pytest.raises(ValueError, match="severity"):
        phantoms.add_lesions(task, x, severity=np.zeros(3))


def test_add_lesions_single_image_and_bad_input():
    x = phantoms.make_normal("brain_mri", 1, size=64, seed=0)[0]
    a, m = phantoms.add_lesions("brain_mri", x, seed=0)
    assert a.shape == (64, 64) and m.shape == (64, 64) and m.sum() >= 1
    with pytest.raises(ValueError):
        phantoms.add_lesions("brain_mri", np.zeros((2, 64, 32), np.float32))
    with pytest.raises(ValueError):
        phantoms.add_lesions("brain_mri", np.zeros((2, 64, 64), np.uint8))


@pytest.mark.parametrize("task", TASKS)
def test_normal_variability_no_memorisation(task):
    """A new normal image is never (close to) a copy of a training image."""
    train = phantoms.make_normal(task, 150, size=32, seed=0)
    test = phantoms.make_normal(task, 8, size=32, seed=1)
    smooth = lambda a: ndi.gaussian_filter(a, (0, 1, 1)).reshape(len(a), -1)  # ignore pixel noise
    A, B = smooth(train), smooth(test)
    d_nn = np.sqrt(((B[:, None] - A[None]) ** 2).mean(-1)).min(1)
    pair = np.sqrt(((B[:, None] - B[None]) ** 2).mean(-1))[np.triu_indices(len(B), 1)]
    assert np.median(pair) > 0.04, "normal images vary"
    assert d_nn.min() > 0.15 * np.median(pair), "nearest training image is not a near-copy"


def test_tasks_are_separable_by_simple_statistics():
    """Grey-level histogram plus coarse row/column means, 5 nearest neighbours: the tasks look different."""

    def feats(x):
        n, S, _ = x.shape
        hist = np.stack([np.histogram(a, bins=10, range=(0, 1))[0] / a.size for a in x])
        rows = x.reshape(n, 4, S // 4, S).mean((2, 3))
        cols = x.reshape(n, S, 4, S // 4).mean((1, 3))
        return np.concatenate([hist, rows, cols], 1)

    images = {t: phantoms.make_normal(t, 40, size=32, seed=0) for t in TASKS}
    train = np.concatenate([feats(images[t]) for t in TASKS])
    labels = np.repeat(np.arange(len(TASKS)), 40)
    sd = train.std(0) + 1e-6
    correct = 0
    for k, t in enumerate(TASKS):
        f = feats(phantoms.make_normal(t, 10, size=32, seed=9))
        near = np.argsort((((f[:, None] - train[None]) / sd) ** 2).sum(-1), 1)[:, :5]
        pred = np.array([np.bincount(labels[r], minlength=len(TASKS)).argmax() for r in near])
        correct += (pred == k).sum()
    assert correct / (10 * len(TASKS)) >= 0.9
    # And the plain mean/std of the images differ between tasks.
    stats = np.stack([[images[t].mean(), images[t].std()] for t in TASKS])
    assert len({tuple(np.round(r, 2)) for r in stats}) == len(TASKS)


@pytest.mark.parametrize("bad", ["chest", "brain", "", None, 3])
def test_unknown_task(bad):
    with pytest.raises(ValueError) as err:
        phantoms.make_normal(bad, 1)
    assert repr(bad) in str(err.value) and "chest_xray" in str(err.value)
    with pytest.raises(ValueError):
        phantoms.make_split(bad, 1, 1)
    with pytest.raises(ValueError):
        phantoms.add_lesions(bad, np.zeros((1, 64, 64), np.float32))


@pytest.mark.parametrize("kwargs", [dict(size=16), dict(size=1024), dict(size=64.0), dict(n=-1),
                                    dict(n=2.5), dict(seed=-1), dict(seed=1.5)])
def test_bad_arguments(kwargs):
    args = dict(task="head_ct", n=1, size=32, seed=0)
    args.update(kwargs)
    with pytest.raises(ValueError):
        phantoms.make_normal(**args)


# ------------------------------------------------------------------------------------ real anatomy


def test_real_available_reports_every_task():
    info = real_anatomy.available()
    assert set(info) == set(TASKS)
    for t in TASKS:
        assert isinstance(info[t], str) and info[t]
        assert (t in real_anatomy.REAL_TASKS) != info[t].startswith("missing")


@pytest.mark.parametrize("task", TASKS)
def test_real_task(task):
    if task not in real_anatomy.REAL_TASKS:
        with pytest.raises(ValueError, match="not available"):
            real_anatomy.make_normal(task, 1)
        pytest.skip(f"{task}: {real_anatomy.available()[task]}")
    x, y, m = real_anatomy.make_split(task, 3, 3, size=64, seed=0)
    assert x.shape == (6, 64, 64) and x.dtype == np.float32 and y.dtype == np.int64 and m.dtype == np.uint8
    assert x.min() >= 0 and x.max() <= 1 and x.std() > 0.05
    assert m[:3].sum() == 0 and all(m[i].sum() >= 1 for i in range(3, 6))
    np.testing.assert_array_equal(x, real_anatomy.make_split(task, 3, 3, size=64, seed=0)[0])
    assert np.abs(real_anatomy.make_normal(task, 2, 64, seed=1) - x[:2]).mean() > 0.01
    base = real_anatomy._generate(task, 3, 64, 0, lesions.STREAM_ABNORMAL_BASE)
    for b, a, k in zip(base, x[3:], m[3:]):
        outside = ~_dilate(k, lesions.margin_px(64))
        np.testing.assert_array_equal(a[outside], b[outside])


def test_real_unknown_task():
    with pytest.raises(ValueError, match="unknown task"):
        real_anatomy.make_normal("knee_mri", 1)
