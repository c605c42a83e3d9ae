"""Tests of the multi-task learner (medad_edu.models.mtl): proxy tasks, MoE gating and balancing, fusion,
the model's contract and its checkpoints. Small images (16-32 px), narrow trunks, a few steps."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from medad_edu.data import ArraySplit, MultiTaskData, TaskData
from medad_edu.models.mtl import (DEFAULT_TASKS, PROXY_TASKS, MoELayer, MTLNetwork, MultiTaskLearner,
                                  ScoreNormalizer, balance_loss, make_task, mid_rank_percentile, topk_gate)
from medad_edu.models.mtl.proxy_tasks import Inpainting, Jigsaw, Orientation, PseudoLabel, pool_map

S = 32
CH = (4, 8, 16)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny tensors: one thread avoids OpenMP overhead (and spin-waiting on a busy machine)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def smooth_images(n: int, size: int = S, seed: int = 0) -> torch.Tensor:
    """Blobby images in [0, 1] with a clear up/down structure (so orientation is learnable)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 1, 4, 4, generator=g)
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    ramp = torch.linspace(0, 1, size).view(1, 1, size, 1)
    return (0.5 * x + 0.5 * ramp).clamp(0, 1)


def fitted_task(name: str, size: int = S):
    task = make_task(name, size, CH)
    if name == "cluster":
        task.fit(smooth_images(16, size, seed=5))
    return task


# --- proxy tasks -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(PROXY_TASKS))
def test_corrupt_is_deterministic_under_a_seed_and_seeds_differ(name):
    task = fitted_task(name)
    x = smooth_images(6)
    a_in, a_t = task.corrupt(x, torch.Generator().manual_seed(3))
    b_in, b_t = task.corrupt(x, torch.Generator().manual_seed(3))
    c_in, c_t = task.corrupt(x, torch.Generator().manual_seed(4))
    torch.testing.assert_close(a_in, b_in)
    for k in a_t:
        torch.testing.assert_close(a_t[k], b_t[k])
    assert a_in.shape == x.shape
    differ = not torch.equal(a_in, c_in) or any(not torch.equal(a_t[k], c_t[k]) for k in a_t)
    assert differ, f"{name}: seeds 3 and 4 gave the same corruption"


@pytest.mark.parametrize("name", list(PROXY_TASKS))
def test_views_are_fixed_and_independent_of_the_batch(name):
    task = fitted_task(name)
    x = smooth_images(5)
    inp, tg = task.views(x)
    assert inp.shape == (task.num_views * 5, 1, S, S)
    inp1, tg1 = task.views(x[2:3])  # image 2 alone gets the same views as inside the batch
    torch.testing.assert_close(inp.unflatten(0, (task.num_views, 5))[:, 2], inp1)
    inp2, _ = task.views(x)
    torch.testing.assert_close(inp, inp2)


@pytest.mark.parametrize("name", list(PROXY_TASKS))
def test_loss_decreases_on_a_tiny_batch(name):
    torch.manual_seed(0)
    size = 16
    net = MTLNetwork(size, [name], width=4, num_experts=2, top_k=1, moe_layers=1)
    task = net.tasks[name]
    if name == "cluster":
        task.fit(smooth_images(16, size, seed=5))
    x = smooth_images(6, size, seed=1)
    inputs, targets = task.corrupt(x, torch.Generator().manual_seed(0))  # fixed corruption: a clean descent
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(10):
        loss = task.loss(net.forward_task(name, inputs), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.85 * losses[0], f"{name}: {losses}"


@pytest.mark.parametrize("name", list(PROXY_TASKS))
def test_failure_shapes(name):
    task = fitted_task(name)
    x = smooth_images(3)
    inputs, targets = task.views(x)
    net = MTLNetwork(S, [name], width=4, num_experts=2, top_k=1, moe_layers=1)
    net.tasks[name].load_state_dict(task.state_dict())
    score, amap = task.failure(net.forward_task(name, inputs), targets)
    assert score.shape == (3,) and torch.isfinite(score).all()
    assert (amap is None) == (not task.has_map)
    if amap is not None:
        assert amap.shape == (3, 1, S, S) and (amap >= 0).all()


def test_inpainting_masks_partition_the_image_and_fill_is_out_of_range():
    task = Inpainting(S, CH)
    masks = task.view_masks(torch.zeros(1))
    torch.testing.assert_close(masks.sum(0), torch.ones(1, S, S))
    x = smooth_images(2)
    inp, tg = task.corrupt(x, torch.Generator().manual_seed(0))
    m = tg["mask"].bool()
    assert m.any() and (inp[m] == -1).all() and torch.equal(inp[~m], x[~m])
    # failure: each pixel's error counted once, from the view in which it was hidden
    vin, vt = task.views(x)
    out = torch.zeros_like(vin)  # predicting black
    score, amap = task.failure(out, vt)
    torch.testing.assert_close(amap, x ** 2)
    torch.testing.assert_close(score, (x ** 2).mean((1, 2, 3)))


def test_jigsaw_shuffle_and_failure_map_by_hand():
    task = Jigsaw(16, CH, grid=2)
    x = torch.arange(16 * 16, dtype=torch.float32).view(1, 1, 16, 16)
    torch.testing.assert_close(task.untile(task.tiles(x)), x)
    perm = torch.tensor([[3, 2, 1, 0]])  # cell j holds tile perm[j]
    y = task.shuffle(x, perm)
    torch.testing.assert_close(y[..., :8, :8], x[..., 8:, 8:])  # cell 0 holds the bottom-right tile
    torch.testing.assert_close(y[..., :8, 8:], x[..., 8:, :8])
    # a confident wrong answer only for the tile now in cell 1 (tile 2, bottom-left originally)
    logits = torch.full((1, 4, 2, 2), -10.0)
    for cell, tile in enumerate(perm[0].tolist()):
        logits[0, tile, cell // 2, cell % 2] = 10.0
    logits[0, :, 0, 1] = torch.tensor([10.0, -10, -10, -10])
    task.num_views = 1
    score, amap = task.failure(logits, {"label": perm.view(1, 2, 2)})
    assert amap[0, 0, 12, 4] > 10 and amap[0, 0, 4, 4] < 1e-3 and amap[0, 0, 4, 12] < 1e-3  # bottom-left high


def test_orientation_labels_are_quarter_turns():
    task = Orientation(S, CH)
    x = smooth_images(4)
    inp, tg = task.corrupt(x, torch.Generator().manual_seed(1))
    for i in range(4):
        torch.testing.assert_close(inp[i], torch.rot90(x[i], int(tg["label"][i]), dims=(-2, -1)))
    vin, vt = task.views(x)
    assert vt["label"].tolist() == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4


def test_lesion_target_is_inside_the_shape_and_clean_images_are_untouched():
    task = make_task("lesion", S, CH, p_clean=0.3)
    x = smooth_images(32)
    g = torch.Generator().manual_seed(2)
    inp, tg = task.corrupt(x, g)
    clean = tg["kind"] < 0
    assert clean.any() and (~clean).any()
    torch.testing.assert_close(inp[clean], x[clean].clamp(0, 1))
    assert tg["mask"][clean].sum() == 0
    assert tg["mask"][~clean].sum() > 0
    changed = (inp - x).abs() > 1e-6
    assert (tg["mask"].bool() & ~changed).float().mean() < 0.05  # labelled pixels did change (up to the soft edge)
    assert set(tg["kind"].tolist()) <= {-1, 0, 1, 2}


def test_pseudo_label_kmeans_finds_obvious_clusters():
    task = PseudoLabel(S, CH, clusters=2)
    x = torch.cat([torch.full((5, 1, S, S), 0.1), torch.full((5, 1, S, S), 0.9)])
    x = x + 0.01 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    task.fit(x)
    lab = task.labels(x)
    assert lab[:5].unique().numel() == 1 and lab[5:].unique().numel() == 1 and lab[0] != lab[5]
    with pytest.raises(RuntimeError):
        PseudoLabel(S, CH).labels(x)


def test_pool_map_top_fraction():
    amap = torch.arange(100, dtype=torch.float32).view(1, 1, 10, 10)
    assert float(pool_map(amap, 1.0)) == pytest.approx(49.5)
    assert float(pool_map(amap, 0.05)) == pytest.approx(97.0)  # mean of 95..99


def test_unknown_task_and_bad_options_raise():
    with pytest.raises(ValueError, match="unknown proxy task"):
        MultiTaskLearner(S, ["a"], proxy_tasks=["inpaint", "nope"])
    with pytest.raises(ValueError, match="fusion"):
        MultiTaskLearner(S, ["a"], fusion="max")
    with pytest.raises(ValueError, match="top_k"):
        MultiTaskLearner(S, ["a"], num_experts=2, top_k=3)
    with pytest.raises(ValueError, match="images must be"):
        Inpainting(S, CH).corrupt(torch.rand(2, 1, 16, 16), torch.Generator())


# --- MoE ---------------------------------------------------------------------------------------------------------
def test_gate_weights_sum_to_one_with_top_k_nonzero():
    torch.manual_seed(0)
    moe = MoELayer(16, num_experts=5, num_tasks=3, top_k=2)
    h, task = torch.randn(7, 16, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0])
    probs, w = moe.gate(h, task)
    torch.testing.assert_close(probs.sum(1), torch.ones(7))
    torch.testing.assert_close(w.sum(1), torch.ones(7))
    assert ((w > 0).sum(1) == 2).all()
    top2 = probs.topk(2, 1).indices.sort(1).values
    assert torch.equal((w > 0).nonzero()[:, 1].view(7, 2), top2)
    # by hand: softmax(W_x GAP(h) + b + U[t])
    logits = h.mean((2, 3)) @ moe.gate_x.weight.T + moe.gate_x.bias + moe.gate_task[task]
    torch.testing.assert_close(probs, logits.softmax(1))


def test_task_conditioning_changes_the_gate():
    torch.manual_seed(0)
    moe = MoELayer(8, num_experts=4, num_tasks=2, top_k=1)
    with torch.no_grad():
        moe.gate_task.copy_(torch.tensor([[5.0, 0, 0, 0], [0, 0, 0, 5.0]]))
    h = torch.randn(3, 8, 4, 4).repeat(2, 1, 1, 1)
    _, w = moe.gate(h, torch.tensor([0, 0, 0, 1, 1, 1]))
    assert (w[:3, 0] == 1).all() and (w[3:, 3] == 1).all()


def test_sparse_experts_match_the_dense_reference_and_usage_is_recorded():
    torch.manual_seed(1)
    moe = MoELayer(8, num_experts=4, num_tasks=3, top_k=2)
    h, task = torch.randn(6, 8, 4, 4), torch.tensor([0, 1, 2, 2, 1, 0])
    moe.eval()
    out, info = moe(h, task)
    torch.testing.assert_close(out, moe.forward_dense(h, task))
    assert moe.usage.sum() == 0  # not recorded in eval mode
    moe.train()
    moe(h, task)
    torch.testing.assert_close(moe.usage.sum(1), torch.tensor([2.0, 2.0, 2.0]))
    torch.testing.assert_close(moe.expert_usage().sum(1), torch.ones(3))
    # one sample alone gets the same output as in the batch (GroupNorm: no batch coupling)
    moe.eval()
    torch.testing.assert_close(moe(h[2:3], task[2:3])[0], out[2:3])


def test_balance_loss_uniform_is_minimal_and_matches_hand_computation():
    e = 4
    uniform = torch.full((8, e), 1 / e)
    w_uniform = torch.eye(e).repeat(2, 1)  # each expert gets 2 of 8 slots
    assert float(balance_loss(uniform, w_uniform)) == pytest.approx(1.0)
    collapsed = torch.tensor([[1.0, 0, 0, 0]]).repeat(8, 1)
    assert float(balance_loss(collapsed, collapsed)) == pytest.approx(e)
    # hand computation: f = routed share, P = mean prob, L = E * sum f P
    probs = torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.6, 0.3, 0.05, 0.05], [0.2, 0.5, 0.2, 0.1]])
    w = topk_gate(probs, 1)
    f = np.array([2, 1, 0, 0]) / 3
    p = probs.numpy().mean(0)
    assert float(balance_loss(probs, w)) == pytest.approx(e * float((f * p).sum()), rel=1e-6)
    # random gates are never better balanced than uniform usage
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        pr = torch.rand(16, e, generator=g).softmax(1)
        assert float(balance_loss(pr, topk_gate(pr, 1))) >= 1.0 - 1e-6


def test_moe_false_is_a_plain_trunk():
    net = MTLNetwork(S, ["inpaint", "rotate"], width=4, moe=False)
    assert all(layer.num_experts == 1 for layer in net.moe)
    losses = net.losses(smooth_images(2), torch.Generator().manual_seed(0))
    assert float(losses["balance"]) == 0.0


# --- fusion ------------------------------------------------------------------------------------------------------
def _ref_scores():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(12, 3, generator=g) * torch.tensor([1.0, 10.0, 0.1])
    groups = torch.tensor([0] * 5 + [1] * 6 + [2])  # organ 2 has a single reference -> pooled row
    return scores, groups


def test_zscore_and_robust_fusion_match_hand_computation():
    scores, groups = _ref_scores()
    norm = ScoreNormalizer(3, 3).fit(scores, groups)
    s = scores.numpy().astype(np.float64)
    test = torch.tensor([[0.5, 5.0, 0.05], [2.0, 1.0, 0.2], [0.1, 0.1, 0.1]])
    tg = torch.tensor([0, 1, 2])
    rows = [s[:5], s[5:11], s]  # organ 2 falls back to all organs
    z = np.stack([(test.numpy()[i] - r.mean(0)) / r.std(0) for i, r in enumerate(rows)])
    np.testing.assert_allclose(norm.normalize(test, tg, "zscore").numpy(), z, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(norm.fuse(test, tg, "zscore").numpy(), z.mean(1), rtol=1e-5, atol=1e-5)
    rz = np.stack([(test.numpy()[i] - np.median(r, 0)) / (1.4826 * np.median(np.abs(r - np.median(r, 0)), 0))
                   for i, r in enumerate(rows)])
    # torch's median of an even count is the lower middle value; compare with the same convention
    low_med = lambda a: np.sort(a, 0)[(len(a) - 1) // 2]  # noqa: E731
    rz = np.stack([(test.numpy()[i] - low_med(r)) / (1.4826 * low_med(np.abs(r - low_med(r))))
                   for i, r in enumerate(rows)])
    np.testing.assert_allclose(norm.normalize(test, tg, "robust").numpy(), rz, rtol=1e-5, atol=1e-5)
    # no group given: the pooled statistics
    np.testing.assert_allclose(norm.normalize(test, None, "zscore").numpy(), (test.numpy() - s.mean(0)) / s.std(0), atol=1e-5,
                               rtol=1e-5)


def test_rank_fusion_matches_hand_computation_with_ties():
    ref = torch.tensor([[1.0], [2.0], [2.0], [3.0], [5.0]])
    norm = ScoreNormalizer(1, 1).fit(ref, torch.zeros(5, dtype=torch.long))
    test = torch.tensor([[0.0], [2.0], [4.0], [9.0], [1.0]])
    want = [0.0, (1 + 0.5 * 2) / 5, 4 / 5, 1.0, 0.5 / 5]
    np.testing.assert_allclose(norm.normalize(test, torch.zeros(5, dtype=torch.long), "rank").numpy()[:, 0], want,
                               rtol=1e-6)
    # the same with numpy, for random data
    scores, groups = _ref_scores()
    norm = ScoreNormalizer(3, 3).fit(scores, groups)
    t = torch.rand(4, 3, generator=torch.Generator().manual_seed(1)) * torch.tensor([1.0, 10.0, 0.1])
    r0 = scores[:5].numpy()
    hand = ((r0[None] < t.numpy()[:, None]).sum(1) + 0.5 * (r0[None] == t.numpy()[:, None]).sum(1)) / 5
    got = norm.normalize(t, torch.zeros(4, dtype=torch.long), "rank").numpy()
    np.testing.assert_allclose(got, hand, rtol=1e-6)
    np.testing.assert_allclose(norm.fuse(t, torch.zeros(4, dtype=torch.long), "rank").numpy(), hand.mean(1),
                               rtol=1e-6)


def test_rank_reference_is_subsampled_to_quantiles():
    ref = torch.arange(1000, dtype=torch.float32).view(-1, 1)
    norm = ScoreNormalizer(1, 1, max_reference=11).fit(ref, torch.zeros(1000, dtype=torch.long))
    torch.testing.assert_close(norm.reference[0, 0], torch.linspace(0, 999, 11))
    p = mid_rank_percentile(norm.reference[:1], norm.count[:1], torch.tensor([[[500.0]]]))
    assert float(p) == pytest.approx(0.5, abs=0.05)


def test_map_normalisation_matches_hand_computation():
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(6, 2, 8, 8, generator=g)
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    norm = ScoreNormalizer(2, 2, num_map_tasks=2).fit(torch.rand(6, 2, generator=g), groups, maps.mean((2, 3)),
                                                      (maps ** 2).mean((2, 3)))
    pix = maps[:3].transpose(0, 1).reshape(2, -1)
    mu, sd = pix.mean(1), pix.std(1, unbiased=False)
    got = norm.normalize_maps(maps[:1], torch.tensor([0]))
    torch.testing.assert_close(got, (maps[:1] - mu.view(1, 2, 1, 1)) / sd.view(1, 2, 1, 1), rtol=1e-4, atol=1e-5)


# --- the model ---------------------------------------------------------------------------------------------------
def tiny_data(size: int = S, n: int = 16) -> MultiTaskData:
    tasks = []
    for tid, name in enumerate(["alpha", "beta"]):
        imgs = smooth_images(n, size, seed=10 + tid).numpy()[:, 0] * (0.6 + 0.3 * tid)
        valid = smooth_images(8, size, seed=20 + tid).numpy()[:, 0] * (0.6 + 0.3 * tid)
        test = smooth_images(8, size, seed=30 + tid).numpy()[:, 0] * (0.6 + 0.3 * tid)
        masks = np.zeros_like(test, np.uint8)
        test[4:, 10:16, 10:16] = 1.0
        masks[4:, 10:16, 10:16] = 1
        vlab = np.array([0] * 6 + [1] * 2)
        valid[6:, 5:9, 5:9] = 1.0
        tasks.append(TaskData(name, "", train=ArraySplit(imgs, np.zeros(n)), valid=ArraySplit(valid, vlab),
                              test=ArraySplit(test, [0] * 4 + [1] * 4, masks)))
    return MultiTaskData(tasks, size)


@pytest.mark.parametrize("size", [64, 256])
def test_forward_shapes(size):
    model = MultiTaskLearner(size, ["alpha", "beta"], width=4, clusters=2)
    model.net.tasks["cluster"].fit(smooth_images(4, size))
    model.eval()
    x = smooth_images(2, size)
    out = model(x, torch.tensor([0, 1]))
    t, tm = len(DEFAULT_TASKS), sum(PROXY_TASKS[n].has_map for n in DEFAULT_TASKS)
    assert out.anomaly_map.shape == (2, 1, size, size) and out.pred_score.shape == (2,)
    assert out.extras["task_scores"].shape == (2, t) and out.extras["task_scores_norm"].shape == (2, t)
    assert out.extras["task_maps"].shape == (2, tm, size, size)
    assert out.extras["gates"].shape == (2, t, 4)
    torch.testing.assert_close(model(x, torch.tensor([0, 1])).pred_score, out.pred_score)  # deterministic


def test_training_loss_reports_every_task():
    model = MultiTaskLearner(S, ["alpha"], width=4, clusters=2, proxy_tasks=["inpaint", "cluster", "jigsaw"])
    model.on_train_start(tiny_data(), torch.device("cpu"))
    losses = model.training_loss({"image": smooth_images(4)})
    assert set(losses) == {"loss", "inpaint", "cluster", "jigsaw", "balance"}
    want = 0.01 * losses["balance"] + 10 * losses["inpaint"] + losses["cluster"] + losses["jigsaw"]
    torch.testing.assert_close(losses["loss"], want)


def test_checkpoint_round_trip_restores_normalisation(tmp_path):
    from medad_edu.training import load_model, make_config, train

    data = tiny_data()
    cfg = make_config("mtl", "quick", epochs=1, batch_size=8, image_size=S,
                      options={**MultiTaskLearner.CLASSIC, "width": 4, "clusters": 2, "num_experts": 2, "top_k": 1,
                               "moe_layers": 1, "proxy_tasks": ["inpaint", "lesion", "rotate", "cluster"],
                               "fusion": "rank"})
    res = train(cfg, run_dir=tmp_path, data=data, progress=False)
    model = res.model
    assert bool(model.normalizer.fitted) and model.normalizer.count[0, 0] == 6  # the 6 normal valid images
    assert model.expert_usage().sum() > 0
    loaded, state = load_model(tmp_path)
    for name, buf in model.named_buffers():
        torch.testing.assert_close(dict(loaded.named_buffers())[name], buf)
    x = torch.from_numpy(data.tasks[0].test.arrays()[0][:, None])
    tid = torch.zeros(len(x), dtype=torch.long)
    a, b = model(x, tid), loaded(x, tid)
    torch.testing.assert_close(a.pred_score, b.pred_score)
    torch.testing.assert_close(a.anomaly_map, b.anomaly_map)
    assert loaded.fusion == "rank" and ((b.extras["task_scores_norm"] >= 0) & (b.extras["task_scores_norm"] <= 1)).all()


def test_uncertainty_head_loss_and_failure_by_hand():
    from medad_edu.models.mtl.proxy_tasks import Denoising

    torch.manual_seed(0)
    task = Denoising(S, CH, uncertainty=True)
    assert task.loss_weight == 1.0 and Denoising(S, CH).loss_weight == 10.0
    x = smooth_images(2)
    mean, logvar = torch.rand(2, 1, S, S), torch.rand(2, 1, S, S) * 4 - 6
    out = torch.cat([mean, logvar], 1)
    want_loss = (0.5 * ((mean - x) ** 2 * torch.exp(-logvar) + logvar)).mean()
    torch.testing.assert_close(task.loss(out, {"image": x}), want_loss)
    task.num_views = 1
    score, amap = task.failure(out, {"image": x})
    torch.testing.assert_close(amap, (mean - x) ** 2 * torch.exp(-logvar))
    raw = torch.randn(2, 2, S, S) * 10
    from medad_edu.models.mtl.proxy_tasks import LOGVAR_RANGE, gaussian_head_output
    o = gaussian_head_output(raw, True)
    assert o.shape == (2, 2, S, S) and (o[:, 1] >= LOGVAR_RANGE[0]).all() and (o[:, 1] <= LOGVAR_RANGE[1]).all()


def test_map_fusion_is_the_top_fraction_of_the_fused_normalised_map():
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(4, 2, 10, 10, generator=g)
    groups = torch.tensor([0, 0, 1, 1])
    norm = ScoreNormalizer(2, 3, num_map_tasks=2).fit(torch.rand(4, 3, generator=g), groups, maps.mean((2, 3)),
                                                      (maps ** 2).mean((2, 3)))
    fused, score = norm.fuse_map(maps, groups, top_fraction=0.05)
    z = (maps - norm.map_mean[groups][:, :, None, None]) / norm.map_std[groups][:, :, None, None]
    torch.testing.assert_close(fused, z.mean(1, keepdim=True))
    torch.testing.assert_close(score, fused.flatten(1).sort(1, descending=True).values[:, :5].mean(1))
    with pytest.raises(ValueError, match="fuse_map"):
        norm.fuse(torch.rand(4, 3), groups, "map")
    model = MultiTaskLearner(S, ["alpha"], width=4, clusters=2, proxy_tasks=["inpaint", "rotate"], map_top=0.05,
                             fusion="map")
    model.eval()
    out = model(smooth_images(2), torch.zeros(2, dtype=torch.long))
    torch.testing.assert_close(out.pred_score, out.anomaly_map.flatten(1).topk(51, 1).values.mean(1))
    model.set_fusion("zscore")
    out = model(smooth_images(2), torch.zeros(2, dtype=torch.long))
    torch.testing.assert_close(out.pred_score, out.extras["task_scores_norm"].mean(1))


def test_pairwise_auroc_and_weights_match_hand_computation():
    from medad_edu.models.mtl.fusion import auroc_weights, pairwise_auroc
    from sklearn.metrics import roc_auc_score

    g = torch.Generator().manual_seed(3)
    pos, neg = torch.randn(7, 3, generator=g) + torch.tensor([1.0, 0.0, -1.0]), torch.randn(9, 3, generator=g)
    pos[0, 0] = neg[0, 0]  # a tie counts 1/2
    hand = [roc_auc_score(np.r_[np.ones(7), np.zeros(9)], np.r_[pos[:, t], neg[:, t]]) for t in range(3)]
    np.testing.assert_allclose(pairwise_auroc(pos, neg).numpy(), hand, rtol=1e-6)
    w = auroc_weights(torch.tensor([[0.9, 0.6, 0.4], [0.5, 0.3, 0.2]]), power=2.0)
    np.testing.assert_allclose(w[0].numpy(), [0.16 / 0.17, 0.01 / 0.17, 0.0], rtol=1e-5)
    np.testing.assert_allclose(w[1].numpy(), [1 / 3] * 3, rtol=1e-6)  # no task better than chance: uniform


def test_weighted_fusion_follows_the_pseudo_anomaly_auroc_per_organ():
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(20, 3, generator=g)
    groups = torch.tensor([0] * 10 + [1] * 10)
    pseudo = clean.clone()
    pseudo[:10, 0] += 1.0  # organ 0: only task 0 separates the pseudo-anomalies
    pseudo[10:, 2] += 1.0  # organ 1: only task 2
    norm = ScoreNormalizer(2, 3).fit(clean, groups)
    w = norm.fit_weights(clean, pseudo, groups, groups, power=2.0)
    torch.testing.assert_close(w[0], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(w[1], torch.tensor([0.0, 0.0, 1.0]))
    assert norm.pseudo_auroc[0, 0] == 1.0 and norm.pseudo_auroc[1, 2] == 1.0
    x, tg = torch.rand(4, 3, generator=g), torch.tensor([0, 0, 1, 1])
    z = norm.normalize(x, tg, "zscore")
    torch.testing.assert_close(norm.fuse(x, tg, "weighted"), torch.where(tg == 0, z[:, 0], z[:, 2]))
    with pytest.raises(ValueError, match="power"):
        norm.fit_weights(clean, pseudo, groups, groups, power=0.0)


def test_default_fusion_is_weighted_and_fitted_on_pseudo_anomalies():
    model = MultiTaskLearner(S, ["alpha", "beta"], width=4, clusters=2, proxy_tasks=["inpaint", "rotate", "lesion"])
    # the constructor's default (and that of checkpoints written before); the quick and paper configurations fuse
    # the maps instead (chosen on validation images, book/results/mtl_reconstruct_encoder), but fit these weights too
    assert model.fusion == "weighted" and MultiTaskLearner.QUICK["fusion"] == MultiTaskLearner.PAPER["fusion"] == "map"
    torch.testing.assert_close(model.normalizer.weights.sum(1), torch.ones(3))  # uniform before fitting
    data = tiny_data()
    model.eval()
    model.on_train_end(data, torch.device("cpu"))
    w = model.normalizer.weights
    torch.testing.assert_close(w.sum(1), torch.ones(3))
    assert (w >= 0).all()
    # the pseudo-anomalies are deterministic and need only the normal images
    imgs, grp = model._reference_images(data)
    a, ga = model.pseudo_anomalies(imgs, grp)
    b, _ = model.pseudo_anomalies(imgs, grp)
    assert a.shape == (model.PSEUDO_COPIES * len(imgs), 1, S, S) and torch.equal(a, b) and not torch.equal(a[:len(imgs)], imgs)
    assert torch.equal(ga, grp.repeat(model.PSEUDO_COPIES))
    x, tid = smooth_images(3), torch.tensor([0, 1, 0])
    out = model(x, tid)
    z = out.extras["task_scores_norm"]
    torch.testing.assert_close(out.pred_score, (z * w[tid]).sum(1))
    # the fused map weighs the map tasks (inpaint, lesion) by their renormalised weights
    wm = w[tid][:, [0, 2]]
    wm = torch.where(wm.sum(1, keepdim=True) > 0, wm / wm.sum(1, keepdim=True).clamp_min(1e-12), torch.full_like(wm, 0.5))
    torch.testing.assert_close(out.anomaly_map, (out.extras["task_maps"] * wm[:, :, None, None]).sum(1, keepdim=True))
    with pytest.raises(ValueError, match="weight_power"):
        MultiTaskLearner(S, ["alpha"], weight_power=0)


def test_robust_fusion_is_the_mean_of_robust_z():
    model = MultiTaskLearner(S, ["alpha"], width=4, clusters=2, proxy_tasks=["inpaint", "rotate"], fusion="robust")
    model.eval()
    assert model.fusion == "robust"
    out = model(smooth_images(2), torch.zeros(2, dtype=torch.long))
    raw = out.extras["task_scores"]
    want = ((raw - model.normalizer.median[0]) / model.normalizer.mad[0]).mean(1)
    torch.testing.assert_close(out.pred_score, want)


def test_lesion_weight_scales_the_lesion_loss_in_the_total():
    model = MultiTaskLearner(S, ["alpha"], width=4, clusters=2, proxy_tasks=["rotate", "lesion"], lesion_weight=5.0)
    assert model.net.tasks["lesion"].loss_weight == 5.0 and model.options["lesion_weight"] == 5.0
    torch.manual_seed(0)
    losses = model.training_loss({"image": smooth_images(4), "task_id": torch.zeros(4, dtype=torch.long)})
    torch.testing.assert_close(losses["loss"], 0.01 * losses["balance"] + losses["rotate"] + 5.0 * losses["lesion"])
    with pytest.raises(ValueError, match="lesion_weight"):
        MultiTaskLearner(S, ["alpha"], lesion_weight=0.0)


# --- the U-Net design (the quick and paper default) --------------------------------------------------------------
def _assert_unet_losses_by_hand(net, x, groups, corrupted, feats, h):
    """The stacked step's losses (``net.losses`` with generator seed 3) equal each task's loss computed by hand from
    ``corrupted`` (drawn with seed 3), the decoder features ``feats`` of the denoise and lesion rows and the
    MoE-transformed bottleneck ``h`` of all rows (tasks stacked in order: denoise, lesion, reconstruct); returns them."""
    hand = [net.tasks["denoise"].loss(net.tasks["denoise"](feats[:4]), corrupted[0][1]),
            net.tasks["lesion"].loss(net.tasks["lesion"](feats[4:8]), corrupted[1][1]),
            net.tasks["reconstruct"].loss(net.tasks["reconstruct"](h[8:]), corrupted[2][1])]
    pkg = net.losses(x, torch.Generator().manual_seed(3), groups)
    for name, want in zip(net.task_names, hand):
        torch.testing.assert_close(pkg[name], want)
    return pkg


def test_unet_design_losses_failures_and_organ_gate():
    from medad_edu.models.mtl.unet_model import UNET_TASKS

    torch.manual_seed(0)
    model = MultiTaskLearner(S, ["alpha", "beta"], design="unet", proxy_tasks=list(UNET_TASKS), width=4, depth=2,
                             num_experts=2, top_k=1)
    x = torch.rand(4, 1, S, S)
    groups = torch.tensor([0, 0, 1, 1])
    losses = model.training_loss({"image": x, "task_id": groups})
    assert set(losses) >= {"loss", "denoise", "lesion", "reconstruct", "balance"} and torch.isfinite(losses["loss"])
    # the stacked step decodes only the rows of the tasks that read the decoder; the reconstruction reads the
    # MoE-transformed bottleneck alone: by hand, decoding everything, the same losses
    net = model.net
    gen = torch.Generator().manual_seed(3)
    corrupted = [net.tasks[n].corrupt(x, gen, groups) for n in net.task_names]
    skips = net.unet.encode(torch.cat([c[0] for c in corrupted]))
    h, _ = net.unet.middle(skips.pop(), torch.cat([net.gate_index(t, groups, 4, "cpu") for t in range(3)]))
    pkg = _assert_unet_losses_by_hand(net, x, groups, corrupted, net.unet.decode(h, skips), h)
    model.eval()
    scores, maps, gates = model.net.failures(x, groups)
    assert scores.shape == (4, 3) and maps.shape == (4, 3, S, S) and gates.shape == (4, 3, 2)
    # the gate row depends on the organ: the same image gated as organ 0 or organ 1 uses different table rows
    idx0 = model.net.gate_index(1, torch.zeros(1, dtype=torch.long), 1, "cpu")
    idx1 = model.net.gate_index(1, torch.ones(1, dtype=torch.long), 1, "cpu")
    assert int(idx0) == 2 and int(idx1) == 3
    # denoise failure is the absolute residual of the clean input, lesion failure a probability, reconstruction
    # failure AE-U's weighted squared residual
    assert (maps[:, 0] >= 0).all() and ((maps[:, 1] >= 0) & (maps[:, 1] <= 1)).all() and (maps[:, 2] >= 0).all()
    with pytest.raises(ValueError, match="design 'unet'"):
        MultiTaskLearner(S, ["alpha"], design="unet", proxy_tasks=["rotate"])
    with pytest.raises(ValueError, match="weight_source"):
        MultiTaskLearner(S, ["alpha"], weight_source="test")


def test_the_reconstruct_map_floor_and_opening():
    """``reconstruct_std_floor`` and ``reconstruct_opening``: 0.05 and 3 in the quick configuration, 0 (AE-U's map)
    by default and for records without the keys; the task's map is AE-U's map with the floor (in [0, 1] units, so
    ``4 * floor^2`` on the task's [-1, 1] scale), then opened; the other tasks' maps and every loss are unchanged."""
    import math
    from medad_edu.models.components import uncertainty_map
    from medad_edu.models.registry import with_default_options
    from medad_edu.models.scoring import open_map
    from medad_edu.models.mtl.unet_model import UNET_TASKS
    from medad_edu.training import make_config

    quick, paper = make_config("mtl", "quick").options, make_config("mtl", "paper").options
    assert (quick["reconstruct_std_floor"], quick["reconstruct_opening"]) == (0.05, 3)
    assert (paper["reconstruct_std_floor"], paper["reconstruct_opening"]) == (0.05, 11)
    assert with_default_options("mtl", {})["reconstruct_opening"] == 0
    assert with_default_options("mtl", {})["reconstruct_std_floor"] == 0.0
    assert quick["reconstruct_encoder"] == paper["reconstruct_encoder"] == "own"  # chosen with the map fusion
    assert with_default_options("mtl", {})["reconstruct_encoder"] == "shared"
    kw = dict(design="unet", proxy_tasks=list(UNET_TASKS), width=4, depth=2, num_experts=2, top_k=1)
    torch.manual_seed(0)
    plain = MultiTaskLearner(S, ["alpha", "beta"], **kw).eval()
    torch.manual_seed(0)
    read = MultiTaskLearner(S, ["alpha", "beta"], reconstruct_std_floor=0.05, reconstruct_opening=3, **kw).eval()
    rec = read.net.tasks["reconstruct"]
    assert (rec.std_floor, rec.opening) == (0.05, 3) and plain.net.tasks["reconstruct"].opening == 0
    with torch.no_grad():
        rec.decoder.deconv[-1].bias[1] = -20.0  # s near its lower bound, as in air: so the floor is read
        plain.load_state_dict(read.state_dict())
        x, groups = torch.rand(4, 1, S, S), torch.tensor([0, 0, 1, 1])
        s0, m0, _ = plain.net.failures(x, groups)
        s1, m1, _ = read.net.failures(x, groups)
        _, h, _ = read.net.trunk(x, read.net.gate_index(2, groups, 4, "cpu"), False)
        out = rec(h)
    floored = uncertainty_map(x * 2 - 1, out[:, :1], out[:, 1:], math.log(4 * 0.05 ** 2))
    torch.testing.assert_close(m1[:, 2:3], open_map(floored, 3))
    torch.testing.assert_close(m0[:, 2:3], uncertainty_map(x * 2 - 1, out[:, :1], out[:, 1:]))
    assert not torch.allclose(m0[:, 2], m1[:, 2])
    torch.testing.assert_close(m0[:, :2], m1[:, :2])
    torch.testing.assert_close(s0[:, :2], s1[:, :2])
    torch.manual_seed(1)
    l0 = plain.train().training_loss({"image": x, "task_id": groups})["loss"]
    torch.manual_seed(1)
    l1 = read.train().training_loss({"image": x, "task_id": groups})["loss"]
    torch.testing.assert_close(l0, l1, rtol=0, atol=0)
    for bad, match in (({"reconstruct_std_floor": -0.1}, "reconstruct_std_floor"),
                       ({"reconstruct_opening": 4}, "reconstruct_opening must be 0"),
                       ({"reconstruct_opening": 33}, "smaller than the image")):
        with pytest.raises(ValueError, match=match):
            MultiTaskLearner(S, ["alpha"], **kw, **bad)
    assert MultiTaskLearner.CLASSIC["reconstruct_opening"] == 0  # no reconstruct task: as recorded before


def test_the_reconstruct_task_with_its_own_encoder():
    """``reconstruct_encoder="own"``: the reconstruct rows get their bottleneck from the task's own encoder, then
    pass the shared MoE layer; the stacked step equals the hand computation, the reconstruction loss sends no
    gradient into the U-Net encoder, and "shared" (the default) builds no such encoder."""
    from medad_edu.models.mtl.unet_model import UNET_TASKS

    kw = dict(design="unet", proxy_tasks=list(UNET_TASKS), width=4, depth=2, num_experts=2, top_k=1)
    assert MultiTaskLearner(S, ["alpha"], **kw).net.tasks["reconstruct"].encoder is None
    torch.manual_seed(0)
    model = MultiTaskLearner(S, ["alpha", "beta"], reconstruct_encoder="own", **kw)
    assert model.options["reconstruct_encoder"] == "own"
    net = model.net
    x, groups = torch.rand(4, 1, S, S), torch.tensor([0, 0, 1, 1])
    gen = torch.Generator().manual_seed(3)
    corrupted = [net.tasks[n].corrupt(x, gen, groups) for n in net.task_names]
    skips = net.unet.encode(torch.cat([c[0] for c in corrupted[:2]]))
    own_h = net.tasks["reconstruct"].encoder(corrupted[2][0])
    assert own_h.shape[1:] == skips[-1].shape[1:]  # the U-Net bottleneck's shape, so the MoE layer takes both
    h, _ = net.unet.middle(torch.cat([skips.pop(), own_h]),
                           torch.cat([net.gate_index(t, groups, 4, "cpu") for t in range(3)]))
    pkg = _assert_unet_losses_by_hand(net, x, groups, corrupted, net.unet.decode(h[:8], skips), h)
    net.zero_grad()
    pkg["reconstruct"].backward()
    assert all(p.grad is None or not p.grad.any() for p in net.unet.inc.parameters())
    assert any(p.grad is not None and p.grad.any() for p in net.tasks["reconstruct"].encoder.parameters())
    model.eval()
    scores, maps, gates = net.failures(x, groups)
    assert scores.shape == (4, 3) and maps.shape == (4, 3, S, S) and torch.isfinite(scores).all()
    # the task alone, as the bench's per-task rows read it, is the same reconstruction
    torch.testing.assert_close(net.forward_task("reconstruct", x, groups),
                               net.tasks["reconstruct"](net.trunk(x, net.gate_index(2, groups, 4, "cpu"), False,
                                                                  torch.ones(4, dtype=torch.bool))[1]))
    with pytest.raises(ValueError, match="reconstruct_encoder must be one of"):
        MultiTaskLearner(S, ["alpha"], reconstruct_encoder="private", **kw)
    with pytest.raises(ValueError, match="option of design 'unet'"):
        MultiTaskLearner(S, ["alpha"], design="classic", reconstruct_encoder="own")


def test_lesion_synthesis_patches_trains_on_nsa_patches_and_weighs_on_the_other_synthesis():
    from medad_edu.models.baselines.nsa import synthesize_anomalies
    from medad_edu.models.mtl.proxy_tasks import LesionSynthesis

    model = MultiTaskLearner(S, ["alpha", "beta"], design="unet", proxy_tasks=["denoise", "lesion"], width=4,
                             depth=2, num_experts=2, top_k=1, lesion_synthesis="patches")
    assert model.options["lesion_synthesis"] == "patches"
    x, organs = smooth_images(6), torch.tensor([0, 0, 0, 1, 1, 1])
    lesion = model.net.tasks["lesion"]
    got, targets = lesion.corrupt(x, torch.Generator().manual_seed(5), organs)
    want, soft, _ = synthesize_anomalies(x, organs, torch.Generator().manual_seed(5), blend="paste")
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(targets["mask"], soft)  # NSA's soft labels, in [0, 1], zero off the patches
    assert bool((got != x).any()) and 0 <= float(soft.min()) and float(soft.max()) <= 1
    # one organ when none is given: partners from the whole batch
    alone, _ = lesion.corrupt(x, torch.Generator().manual_seed(5))
    assert alone.shape == x.shape
    # the fusion's pseudo-anomalies are then the project's lesions, not the patches the task learnt
    pseudo, pseudo_organs = model.pseudo_anomalies(x, organs)
    synthesis = LesionSynthesis(S, p_clean=0.0)
    gen = torch.Generator().manual_seed(model.PSEUDO_SEED)
    by_hand = torch.cat([synthesis.corrupt(x, gen, organs)[0] for _ in range(model.PSEUDO_COPIES)])
    torch.testing.assert_close(pseudo, by_hand)
    assert pseudo_organs.tolist() == organs.tolist() * model.PSEUDO_COPIES
    default = MultiTaskLearner(S, ["alpha", "beta"], design="unet", proxy_tasks=["denoise", "lesion"], width=4, depth=2)
    nsa_pseudo, _ = default.pseudo_anomalies(x, organs)
    assert not torch.allclose(nsa_pseudo, pseudo)
    with pytest.raises(ValueError, match="lesion_synthesis must be one of"):
        MultiTaskLearner(S, ["alpha"], design="unet", proxy_tasks=["lesion"], lesion_synthesis="blobs")
    with pytest.raises(ValueError, match="design 'classic'"):
        MultiTaskLearner(S, ["alpha"], proxy_tasks=["lesion"], lesion_synthesis="patches")


def test_validation_weight_source_uses_valid_abnormals(tmp_path):
    from medad_edu.training import make_config, train

    data = tiny_data()
    cfg = make_config("mtl", "quick", epochs=1, batch_size=8, image_size=S,
                      options={"width": 4, "depth": 2, "num_experts": 2, "top_k": 1, "fusion": "weighted",
                               "weight_source": "validation"})
    model = train(cfg, None, data=data, progress=False).model
    w = model.normalizer.weights
    assert torch.isfinite(w).all() and torch.allclose(w.sum(1), torch.ones(len(w)))
    positives, groups = model._validation_positives(data, torch.zeros(0, 1, S, S), torch.zeros(0, dtype=torch.long))
    valid = data.tasks[0].valid
    assert len(positives) == int((valid.labels == 1).sum()) * len(data.tasks)


def test_a_checkpoint_written_before_lesion_synthesis_existed_loads_and_resumes(tmp_path):
    """A run saved before the option existed (no ``lesion_synthesis`` in its arguments or config) used the
    lesions; the trainer must load it as that run, not refuse it as a different one, and resume it."""
    import json

    from medad_edu.training import load_or_train, make_config, train
    from medad_edu.training.checkpoint import CHECKPOINT_NAME

    data = tiny_data()
    options = {"design": "classic", "proxy_tasks": ["rotate", "lesion"], "width": 4, "clusters": 2,
               "lesion_synthesis": "lesions", "reconstruct_encoder": "shared"}
    cfg = make_config("mtl", "quick", epochs=1, batch_size=8, image_size=S, seed=0, options=options)
    run = tmp_path / "run"
    first = train(cfg, run, data=data, progress=False)
    state = torch.load(run / CHECKPOINT_NAME, weights_only=True)  # make it an older run's checkpoint
    state["init_args"].pop("lesion_synthesis")
    state["config"]["options"].pop("lesion_synthesis")
    torch.save(state, run / CHECKPOINT_NAME)
    stored = json.loads((run / "config.json").read_text())
    stored["options"].pop("lesion_synthesis")
    (run / "config.json").write_text(json.dumps(stored))
    loaded = load_or_train(cfg, run, data)
    for name, tensor in first.model.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[name], tensor)
    longer = train(make_config("mtl", "quick", epochs=2, batch_size=8, image_size=S, seed=0, options=options), run,
                   data=data, progress=False, resume=True)
    assert len(longer.history) == 2
    # a real change of the option is still refused
    with pytest.raises(Exception, match="lesion_synthesis"):
        load_or_train(make_config("mtl", "quick", epochs=2, batch_size=8, image_size=S, seed=0,
                                  options={**options, "design": "unet", "proxy_tasks": ["lesion"],
                                           "lesion_synthesis": "patches"}), run, data)


def test_quick_configuration_decays_the_learning_rate_along_a_cosine_and_paper_keeps_it_constant():
    # chosen on validation images at the same cost (book/results/mtl_lr_schedule); an explicit setting still wins
    from medad_edu.evaluation.bench import _spec
    from medad_edu.training import make_config
    from medad_edu.training.config import lr_at_epoch

    quick = make_config("mtl", "quick")
    assert quick.lr_schedule == "cosine" and "lr_schedule" not in quick.options
    last = 1e-3 * 0.5 * (1 + np.cos(np.pi * 19 / 20))  # the 20th and last epoch's, about 6e-6
    assert [round(lr_at_epoch(quick, e), 9) for e in (0, 10, 19)] == [1e-3, 5e-4, round(last, 9)]
    assert make_config("mtl", "paper").lr_schedule == "constant"
    assert make_config("mtl", "quick", lr_schedule="constant").lr_schedule == "constant"
    assert make_config("ae", "quick").lr_schedule == "constant"  # the other methods keep theirs
    assert _spec("mtl", 0, quick, "embedded")["lr_schedule"] == "cosine"  # the bench records it


def test_quick_configuration_trains_at_least_450_steps_and_keeps_20_epochs_on_the_embedded_sets():
    # chosen on the tune split's 2-organ runs (book/results/mtl_min_steps); an explicit epochs turns the floor off
    from medad_edu.training import make_config
    from medad_edu.training.config import epochs_for_data

    quick = make_config("mtl", "quick")
    assert quick.min_steps == 450 and "min_steps" not in quick.options
    assert epochs_for_data(quick, 5 * 200) == 20                   # 31 steps per epoch: 620 steps, the floor unused
    assert epochs_for_data(quick, 2 * 200) == 38                   # 12 steps per epoch: 456 steps
    assert epochs_for_data(quick, 2 * 240) == 30                   # 15 steps per epoch: 450 steps
    assert make_config("mtl", "quick", epochs=20).min_steps == 0   # an explicit epochs is taken as it is
    assert make_config("mtl", "paper").min_steps == 0 and make_config("ae", "quick").min_steps == 0
