"""Tests of medad_edu.evaluation.metrics: against scikit-learn, hand-computed cases and slow references."""
import math
import warnings

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from medad_edu.evaluation import metrics as M


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def _sk_f1_max(scores, labels):
    """F1 max derived from sklearn's precision-recall curve (the last point has no threshold)."""
    p, r, t = precision_recall_curve(labels, scores)
    p, r = p[:-1], r[:-1]
    f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-300), 0.0)
    i = int(np.argmax(f1))
    return f1[i], t[i]


def _random_sets(n_sets=60, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n_sets):
        n = int(rng.integers(2, 80))
        y = rng.integers(0, 2, n)
        y[0], y[1] = 0, 1  # both classes present
        if k % 3 == 0:  # integer-valued scores: many ties
            s = rng.integers(0, 4, n).astype(np.float64)
        elif k % 3 == 1:  # informative continuous scores
            s = rng.normal(size=n) + y
        else:  # float32, few distinct values
            s = np.round(rng.random(n), 1).astype(np.float32)
        out.append((s, y))
    return out


def _slow_aupro(maps, masks, fpr_limit=0.3):
    """Straightforward reference: loop over every distinct threshold and every region (8-connectivity)."""
    maps = np.asarray(maps, dtype=np.float64)
    masks = np.asarray(masks).astype(bool)
    regions = []
    for img in range(masks.shape[0]):
        lab, n = ndimage.label(masks[img], structure=np.ones((3, 3)))
        for r in range(1, n + 1):
            regions.append((img, lab == r))
    normal = maps[~masks]
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:  # descending thresholds
        fprs.append(np.mean(normal >= t))
        pros.append(np.mean([np.mean(maps[img][reg] >= t) for img, reg in regions]))
    fprs, pros = np.array(fprs), np.array(pros)
    # integrate the piecewise-linear curve up to the limit (FPR is non-decreasing along the sweep)
    area = 0.0
    for i in range(1, len(fprs)):
        x0, x1, y0, y1 = fprs[i - 1], fprs[i], pros[i - 1], pros[i]
        if x0 >= fpr_limit:
            break
        if x1 > fpr_limit:  # cut the segment at the limit
            y1 = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            x1 = fpr_limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / fpr_limit


def _random_maps(rng, n=3, h=12, w=12, int_valued=False):
    masks = np.zeros((n, h, w), dtype=np.uint8)
    for i in range(n):
        for _ in range(int(rng.integers(0, 3))):  # 0..2 blobs, some images without defect
            y0, x0 = rng.integers(0, h - 3), rng.integers(0, w - 3)
            masks[i, y0:y0 + rng.integers(1, 4), x0:x0 + rng.integers(1, 4)] = 1
    masks[0, 0, 0] = 1  # at least one abnormal pixel
    masks[0, 1, 1] = 1  # a diagonal neighbour: joined only with 8-connectivity
    maps = rng.normal(size=(n, h, w)) + 1.5 * masks
    if int_valued:
        maps = np.round(maps)
    return maps, masks


# ------------------------------------------------------------------------------------------------
# image level: against scikit-learn
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("idx", range(60))
def test_image_metrics_match_sklearn(idx):
    s, y = _random_sets()[idx]
    assert M.image_auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert M.average_precision(s, y) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    f1, thr = M.f1_max(s, y)
    f1_sk, thr_sk = _sk_f1_max(s, y)
    assert f1 == pytest.approx(f1_sk, abs=1e-12)
    assert thr == pytest.approx(thr_sk)  # lowest threshold among ties, like argmax over sklearn's curve
    # accuracy at the F1-max threshold, recomputed directly
    d = M.image_metrics(s, y)
    assert d["acc"] == pytest.approx(np.mean((s >= thr) == y.astype(bool)))
    assert d["threshold"] == thr and d["f1"] == f1


def test_hand_computed_image_case():
    s = [0.1, 0.4, 0.35, 0.8]
    y = [0, 0, 1, 1]
    # AUROC: abnormal {0.35, 0.8} vs normal {0.1, 0.4}; pairs won: (0.35>0.1), (0.8>0.1), (0.8>0.4) = 3 of 4
    assert M.image_auroc(s, y) == pytest.approx(0.75, abs=1e-15)
    # AP: descending 0.8(1) 0.4(0) 0.35(1) 0.1(0); at t=0.8 recall 1/2 precision 1, at t=0.35 recall 1 precision
    # 2/3 -> AP = 1/2 * 1 + 1/2 * 2/3 = 5/6
    assert M.average_precision(s, y) == pytest.approx(5 / 6, abs=1e-15)
    # F1 = 2TP/(TP+FP+P): t=0.8: 2/3; t=0.4: 2/4; t=0.35: 4/5; t=0.1: 4/6 -> best 0.8 at t=0.35
    f1, thr = M.f1_max(s, y)
    assert f1 == pytest.approx(0.8, abs=1e-15) and thr == 0.35
    # at t=0.35 the predictions are [0,1,1,1] -> 3 of 4 correct
    assert M.accuracy_at_threshold(s, y, 0.35) == 0.75
    assert M.image_metrics(s, y) == pytest.approx(
        {"image_auroc": 0.75, "ap": 5 / 6, "f1": 0.8, "acc": 0.75, "threshold": 0.35})


def test_auroc_by_lesion_size_hand_case():
    normal = [0.1, 0.2, 0.3]
    abnormal = [0.15, 0.05, 0.25, 0.35, 0.5, 0.6]  # areas 1 % .. 6 %: terciles {1, 2}, {3, 4}, {5, 6} %
    s, y = normal + abnormal, [0, 0, 0] + [1] * 6
    area = [0.9, 0.0, 0.5] + [0.01, 0.02, 0.03, 0.04, 0.05, 0.06]  # normal images' areas are not read
    bins = M.image_auroc_by_lesion_size(s, y, area)
    # small: 0.15 beats 1 of 3 normals, 0.05 none -> 1/6; medium: 0.25 beats 2, 0.35 all 3 -> 5/6; large: 1
    assert [b["image_auroc"] for b in bins] == pytest.approx([1 / 6, 5 / 6, 1.0], abs=1e-15)
    assert [(b["area_min"], b["area_max"], b["n_abnormal"]) for b in bins] == [(0.01, 0.02, 2), (0.03, 0.04, 2),
                                                                            (0.05, 0.06, 2)]
    for b, sel in zip(bins, ([3, 4], [5, 6], [7, 8])):  # each bin is a plain AUROC of the normals and its images
        assert b["image_auroc"] == pytest.approx(roc_auc_score([0, 0, 0, 1, 1], np.r_[normal, np.take(s, sel)]))
    assert [b["n_abnormal"] for b in M.image_auroc_by_lesion_size(s, y, area, n_bins=1)] == [6]
    assert M.image_auroc_by_lesion_size([0.1, 0.2], [0, 0], [0, 0]) == []  # no abnormal image: nothing to bin


@pytest.mark.parametrize("area, n_bins, message", [
    ([0.1, 0.0, 0.02], 3, "no lesion pixels"), ([0.1, 0.01], 3, "length mismatch"),
    ([0.1, -0.01, 0.02], 3, ">= 0"), ([0.1, 0.01, 0.02], 0, "n_bins")])
def test_auroc_by_lesion_size_bad_inputs(area, n_bins, message):
    with pytest.raises(ValueError, match=message):
        M.image_auroc_by_lesion_size([0.1, 0.5, 0.7], [0, 1, 1], area, n_bins=n_bins)


def test_hand_computed_ties():
    # abnormal {1, 2} vs normal {0, 1}: (1>0)=1, (1=1)=1/2, (2>0)=1, (2>1)=1 -> 3.5 / 4
    s, y = [0, 1, 1, 2], [0, 0, 1, 1]
    assert M.image_auroc(s, y) == pytest.approx(0.875, abs=1e-15)
    # thresholds 2: R=1/2 P=1; 1 (two samples cross together): R=1 P=2/3 -> AP = 1/2 + 1/3 = 5/6
    assert M.average_precision(s, y) == pytest.approx(5 / 6, abs=1e-15)
    # F1: t=2: 2/(1+0+2)=2/3; t=1: 4/(2+1+2)=4/5; t=0: 4/(2+2+2)=2/3
    assert M.f1_max(s, y) == pytest.approx((0.8, 1.0))


def test_constant_scores_give_half():
    y = [0, 1, 1, 0, 1]
    assert M.image_auroc(np.full(5, 3.0), y) == 0.5
    assert M.image_auroc(np.full(5, 3.0), y) == roc_auc_score(y, np.full(5, 3.0))
    # AP of constant scores = fraction of abnormal images (one threshold, recall 1, precision 3/5)
    assert M.average_precision(np.zeros(5), y) == pytest.approx(0.6)
    maps = np.zeros((2, 4, 4))
    masks = np.zeros((2, 4, 4), dtype=int)
    masks[0, :2, :2] = 1
    assert M.pixel_auroc(maps, masks) == 0.5


def test_perfect_and_inverted_scores():
    y = np.array([0, 0, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.5, 0.6, 0.9])
    assert M.image_auroc(s, y) == 1.0 and M.average_precision(s, y) == 1.0
    assert M.f1_max(s, y) == (1.0, 0.5)
    assert M.image_auroc(-s, y) == 0.0


@pytest.mark.parametrize("labels,missing", [([0, 0, 0], "abnormal"), ([1, 1, 1], "normal")])
def test_single_class_is_nan_with_warning(labels, missing):
    s = [0.1, 0.5, 0.3]
    for fn in (M.image_auroc, M.average_precision):
        with pytest.warns(M.UndefinedMetricWarning, match=missing):
            assert math.isnan(fn(s, labels))
    with pytest.warns(M.UndefinedMetricWarning, match=missing):
        f1, thr = M.f1_max(s, labels)
    assert math.isnan(f1) and math.isnan(thr)
    with pytest.warns(M.UndefinedMetricWarning, match=missing):
        d = M.image_metrics(s, labels)
    assert all(math.isnan(v) for v in d.values())
    # accuracy itself is defined for one class
    assert M.accuracy_at_threshold(s, labels, 0.2) == pytest.approx(2 / 3 if missing == "normal" else 1 / 3)
    assert math.isnan(M.accuracy_at_threshold(s, labels, float("nan")))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="length mismatch"):
        M.image_auroc([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ValueError, match="NaN"):
        M.image_auroc([0.1, float("nan")], [0, 1])
    with pytest.raises(ValueError, match="only 0"):
        M.image_auroc([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError, match="only 0"):
        M.f1_max([0.1, 0.2], [0.0, 0.5])
    with pytest.raises(ValueError, match="empty"):
        M.image_metrics([], [])
    with pytest.raises(ValueError, match="one-dimensional"):
        M.image_auroc(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="threshold"):
        M.accuracy_at_threshold([0.1, 0.2], [0, 1], "high")
    maps, masks = np.zeros((2, 8, 8)), np.zeros((2, 8, 9))
    with pytest.raises(ValueError, match=r"\(2, 8, 8\).*\(2, 8, 9\)"):
        M.pixel_auroc(maps, masks)
    masks = np.zeros((2, 8, 8))
    masks[0, 0, 0] = 255
    with pytest.raises(ValueError, match="masks > 0"):
        M.aupro(maps, masks)
    masks[0, 0, 0] = 1
    bad = maps.copy()
    bad[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        M.best_dice(bad, masks)
    with pytest.raises(ValueError, match="fpr_limit"):
        M.aupro(maps, masks, fpr_limit=0)
    with pytest.raises(ValueError, match="fpr_limit"):
        M.aupro(maps, masks, fpr_limit=1.5)
    with pytest.raises(ValueError, match="connectivity"):
        M.aupro(maps, masks, connectivity=6)
    with pytest.raises(ValueError, match="shape"):
        M.pixel_auroc(np.zeros(5), np.zeros(5))
    with pytest.raises(ValueError, match="2 scores but 3 maps"):
        M.evaluate_predictions([0.1, 0.2], [0, 1], np.zeros((3, 4, 4)), np.ones((3, 4, 4)))


def test_torch_tensors_accepted():
    torch = pytest.importorskip("torch")
    s, y = _random_sets()[1]
    st = torch.tensor(s, requires_grad=True)
    assert M.image_auroc(st, torch.tensor(y)) == pytest.approx(roc_auc_score(y, s))
    rng = np.random.default_rng(3)
    maps, masks = _random_maps(rng)
    mt = torch.tensor(maps, dtype=torch.float32).unsqueeze(1)  # [N,1,H,W]
    gt = torch.tensor(masks).unsqueeze(1)
    assert M.pixel_auroc(mt, gt) == pytest.approx(roc_auc_score(masks.ravel(), maps.astype(np.float32).ravel()))
    assert M.aupro(mt.bfloat16(), gt) == pytest.approx(M.aupro(mt.bfloat16().float(), gt))


# ------------------------------------------------------------------------------------------------
# pixel level
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(8))
def test_pixel_auroc_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    maps, masks = _random_maps(rng, int_valued=seed % 2 == 0)
    if seed % 4 == 1:
        maps = maps.astype(np.float32)
    assert M.pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
    assert M.pixel_auroc(maps[:, None], masks[:, None]) == M.pixel_auroc(maps, masks)


@pytest.mark.parametrize("seed", range(10))
def test_aupro_matches_slow_reference(seed):
    rng = np.random.default_rng(100 + seed)
    maps, masks = _random_maps(rng, n=2, h=10, w=10, int_valued=seed % 2 == 0)
    for limit in (0.3, 0.05, 1.0):
        assert M.aupro(maps, masks, limit) == pytest.approx(_slow_aupro(maps, masks, limit), abs=1e-9)


def test_aupro_perfect_and_inverted():
    masks = np.zeros((2, 16, 16), dtype=np.uint8)
    masks[0, 2:5, 2:5] = 1
    masks[1, 8:14, 3:12] = 1
    maps = masks.astype(np.float64)
    # perfect: at t=1 every region is fully covered at FPR 0 -> PRO 1 over all of [0, 0.3]
    assert M.aupro(maps, masks) == pytest.approx(1.0, abs=1e-12)
    # inverted: every normal pixel (FPR 1) is flagged before any abnormal pixel -> PRO 0 on [0, 0.3]
    assert M.aupro(1 - maps, masks) == pytest.approx(0.0, abs=1e-12)


def test_aupro_one_of_two_regions():
    # region A (4 px) scores 1, region B (36 px) scores 0, normal pixels 0.5.
    # t=1: FPR 0, PRO = (1 + 0)/2 = 0.5; t=0.5: FPR 1, PRO still 0.5; t=0: FPR 1, PRO 1.
    # On [0, 0.3] the PRO is 0.5 -> AUPRO = 0.5: each region weighs the same, whatever its size, although
    # A holds only 4 of the 40 abnormal pixels (pixel recall at t=1 is 0.1).
    masks = np.zeros((1, 20, 20), dtype=np.uint8)
    masks[0, 1:3, 1:3] = 1  # A
    masks[0, 10:16, 10:16] = 1  # B
    maps = np.full((1, 20, 20), 0.5)
    maps[0, 1:3, 1:3] = 1.0
    maps[0, 10:16, 10:16] = 0.0
    assert M.aupro(maps, masks) == pytest.approx(0.5, abs=1e-12)
    # if B ties with the normal pixels (all 0.5), the last segment rises linearly from (0, 0.5) to (1, 1):
    # area on [0, 0.3] = 0.3*0.5 + 0.5*0.3^2/2 = 0.1725 -> AUPRO = 0.1725/0.3 = 0.575
    maps[0, 10:16, 10:16] = 0.5
    assert M.aupro(maps, masks) == pytest.approx(0.575, abs=1e-12)
    # swapping roles (detect only the big region) gives the same value: sizes do not matter
    maps2 = np.full((1, 20, 20), 0.5)
    maps2[0, 10:16, 10:16] = 1.0
    maps2[0, 1:3, 1:3] = 0.0
    assert M.aupro(maps2, masks) == pytest.approx(0.5, abs=1e-12)


def test_aupro_hand_case_with_interpolation():
    # one row: 2 abnormal pixels (one region) with scores 0.9, 0.2 and 8 normal pixels
    maps = np.array([[[0.9, 0.2, 0.95, 0.5, 0.5, 0.5, 0.1, 0.1, 0.1, 0.1]]])
    masks = np.array([[[1, 1, 0, 0, 0, 0, 0, 0, 0, 0]]])
    # t=0.95: FPR 1/8 PRO 0; t=0.9: FPR 1/8 PRO 1/2; t=0.5: FPR 4/8 PRO 1/2 (crosses 0.3)
    # area on [0, 0.3] = 0 on [0, 1/8] + 0.5 * (0.3 - 0.125) = 0.0875 -> 0.0875 / 0.3
    assert M.aupro(maps, masks) == pytest.approx(0.0875 / 0.3, abs=1e-12)


def test_aupro_connectivity():
    # two pixels touching only at a corner: one region with 8-connectivity, two regions with 4
    masks = np.zeros((1, 6, 6), dtype=np.uint8)
    masks[0, 1, 1] = masks[0, 2, 2] = 1
    masks[0, 4:6, 4:6] = 1  # a 2x2 region, undetected below
    maps = np.where(masks > 0, 0.0, 0.5)  # missed abnormal pixels score below every normal pixel
    maps[0, 1, 1] = 1.0  # only one of the two diagonal pixels is found
    # 8-connectivity: regions {diag pair, 2x2}; at t=1, PRO = (1/2 + 0)/2 = 1/4 until FPR 1 -> 0.25
    assert M.aupro(maps, masks) == pytest.approx(0.25, abs=1e-12)
    # 4-connectivity: regions {(1,1)}, {(2,2)}, {2x2}; PRO = (1 + 0 + 0)/3 = 1/3
    assert M.aupro(maps, masks, connectivity=4) == pytest.approx(1 / 3, abs=1e-12)


def test_regions_do_not_span_images():
    # the same pixel set in two images gives two regions, not one
    masks = np.zeros((2, 4, 4), dtype=np.uint8)
    masks[:, 1:3, 1:3] = 1
    maps = np.where(masks > 0, 0.0, 0.5)
    maps[0][masks[0] > 0] = 1.0  # first image found, second missed (below every normal pixel)
    assert M.aupro(maps, masks) == pytest.approx(0.5, abs=1e-12)


def test_best_dice_hand_case():
    # pixels (score, mask): (0.9,1) (0.8,0) (0.3,1) (0.1,0); Dice = 2TP/(TP+FP+P) with P=2:
    # t=0.9: 2/3; t=0.8: 2/4; t=0.3: 4/5; t=0.1: 4/6 -> best 0.8 at t=0.3
    maps = np.array([[[0.9, 0.8], [0.3, 0.1]]])
    masks = np.array([[[1, 0], [1, 0]]])
    assert M.best_dice(maps, masks) == pytest.approx((0.8, 0.3))


@pytest.mark.parametrize("seed", range(4))
def test_best_dice_brute_force(seed):
    rng = np.random.default_rng(seed)
    maps, masks = _random_maps(rng, int_valued=seed % 2 == 0)
    g = masks.astype(bool)
    best = max(2 * np.sum((maps >= t) & g) / (np.sum(maps >= t) + g.sum()) for t in np.unique(maps))
    dice, thr = M.best_dice(maps, masks)
    assert dice == pytest.approx(best, abs=1e-12)
    assert 2 * np.sum((maps >= thr) & g) / (np.sum(maps >= thr) + g.sum()) == pytest.approx(dice)


def test_pixel_metrics_dict_and_none():
    rng = np.random.default_rng(7)
    maps, masks = _random_maps(rng)
    d = M.pixel_metrics(maps, masks)
    assert set(d) == {"pixel_auroc", "aupro", "dice"}
    assert d["pixel_auroc"] == pytest.approx(M.pixel_auroc(maps, masks))
    assert d["aupro"] == pytest.approx(M.aupro(maps, masks))
    assert d["dice"] == pytest.approx(M.best_dice(maps, masks)[0])
    assert all(type(v) is float and 0 <= v <= 1 for v in d.values())
    none = {"pixel_auroc": None, "aupro": None, "dice": None}
    assert M.pixel_metrics(maps, None) == none
    assert M.pixel_metrics(None, None) == none
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no positive pixel -> None, without a warning
        assert M.pixel_metrics(maps, np.zeros_like(masks)) == none
    with pytest.warns(M.UndefinedMetricWarning, match="normal"):
        assert math.isnan(M.pixel_auroc(maps, np.ones_like(masks)))
    with pytest.warns(M.UndefinedMetricWarning, match="abnormal"):
        assert math.isnan(M.aupro(maps, np.zeros_like(masks)))


def test_evaluate_predictions():
    rng = np.random.default_rng(11)
    maps, masks = _random_maps(rng, n=4)
    labels = masks.reshape(4, -1).max(axis=1)
    labels[-1] = 0
    scores = maps.reshape(4, -1).max(axis=1)
    out = M.evaluate_predictions(scores, labels, maps, masks)
    assert set(out) == {"image_auroc", "ap", "f1", "acc", "threshold", "pixel_auroc", "aupro", "dice"}
    assert all(type(v) is float for v in out.values())
    assert out["image_auroc"] == pytest.approx(roc_auc_score(labels, scores))
    out = M.evaluate_predictions(scores, labels)
    assert out["pixel_auroc"] is None and out["aupro"] is None and out["dice"] is None
