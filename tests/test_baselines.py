"""The from-scratch baselines: shapes, loss decreases, abnormal scores higher, and their key pieces."""
import numpy as np
import pytest
import torch

from medad_edu.data import ArraySplit, MultiTaskData, TaskData
from medad_edu.models.baselines.deep_svdd import DeepSVDD
from medad_edu.models.baselines.memae import MemAE, addressing_entropy, hard_shrink_relu
from medad_edu.models.baselines.nsa import NSA, poisson_blend, synthesize_anomalies
from medad_edu.models.baselines.patchcore import PatchCore, find_torchvision_weights, greedy_coreset, nearest_distance
from medad_edu.models.factory import make_model
from medad_edu.models.registry import get_method
from medad_edu.training import make_config, train

TASKS = ["chest_xray", "brain_mri"]
SIZE = 32


def smooth_images(n, rng, size=SIZE):
    """Smooth random structure (sums of broad blobs): images with content for NSA's transplants."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.zeros((n, size, size), np.float32)
    for i in range(n):
        for _ in range(4):
            cy, cx, w, a = rng.random(4)
            out[i] += (0.3 + 0.4 * a) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (0.02 + 0.05 * w))
    return (0.15 + 0.5 * out / out.max(axis=(1, 2), keepdims=True)).astype(np.float32)


def make_easy_data():
    """Two tasks of smooth 32 px images; abnormal = a bright 8x8 square (masked). Train normal-only."""
    rng = np.random.default_rng(0)
    tasks = []
    for name in TASKS:
        def labelled(n):
            normal, ab = smooth_images(n, rng), smooth_images(n, rng)
            masks = np.zeros_like(ab, np.uint8)
            for i in range(n):
                r, c = rng.integers(4, SIZE - 12, 2)
                ab[i, r:r + 8, c:c + 8] = 1.0
                masks[i, r:r + 8, c:c + 8] = 1
            return ArraySplit(np.concatenate([normal, ab]), np.r_[np.zeros(n), np.ones(n)],
                              np.concatenate([np.zeros_like(masks), masks]))
        tasks.append(TaskData(name, f"{name} prompt", train=ArraySplit(smooth_images(32, rng), np.zeros(32)),
                              valid=labelled(6), test=labelled(10)))
    return MultiTaskData(tasks, SIZE, name="easy")


@pytest.fixture(scope="module")
def easy_data():
    return make_easy_data()


SMALL = {"memae": {"mem_dim": 50}, "nsa": {"width": 8}, "dsvdd": {"channels": [8, 16], "rep_dim": 8},
         "patchcore": {}}


@pytest.mark.parametrize("method", ["memae", "nsa", "dsvdd", "patchcore"])
def test_registry_shapes_and_finite(method, easy_data):
    torch.manual_seed(0)
    cls = get_method(method)
    assert cls.name == method and "epochs" in cls.QUICK and "epochs" in cls.PAPER
    model = cls(SIZE, TASKS, **SMALL[method])
    batch = {"image": torch.rand(6, 1, SIZE, SIZE), "task_id": torch.tensor([0, 1, 0, 1, 0, 1]),
             "label": torch.zeros(6, dtype=torch.long)}
    if method == "patchcore":
        model.on_train_start(easy_data, torch.device("cpu"))
        model.fit_batch(batch)
        model.on_train_end(easy_data, torch.device("cpu"))
    elif method == "dsvdd":
        model.on_train_start(easy_data, torch.device("cpu"))
    model.eval()
    with torch.no_grad():
        out = model(batch["image"], batch["task_id"])
    assert out.anomaly_map.shape == (6, 1, SIZE, SIZE)
    assert out.pred_score.shape == (6,)
    assert torch.isfinite(out.anomaly_map).all() and torch.isfinite(out.pred_score).all()
    with pytest.raises(ValueError, match="32x32"):
        model(torch.rand(2, 1, 16, 16), torch.tensor([0, 1]))


@pytest.mark.parametrize("method", ["memae", "nsa", "dsvdd"])
def test_loss_decreases_on_a_fixed_batch(method, easy_data):
    torch.manual_seed(0)
    model = get_method(method)(SIZE, TASKS, **SMALL[method])
    if method == "dsvdd":
        model.on_train_start(easy_data, torch.device("cpu"))
    x = torch.from_numpy(easy_data.tasks[0].train.arrays()[0][:16]).unsqueeze(1)
    batch = {"image": x, "task_id": torch.zeros(16, dtype=torch.long)}
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    losses = []
    for _ in range(15):
        torch.manual_seed(1)  # NSA: the same synthetic anomalies at every step
        loss = model.training_loss(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses  # BCE on soft labels has a floor > 0


@pytest.mark.parametrize("method,epochs,extra", [
    ("memae", 10, {}), ("nsa", 12, {}), ("dsvdd", 8, {}), ("patchcore", 1, {})])
def test_abnormal_scores_higher(method, epochs, extra, easy_data):
    cfg = make_config(method, "quick", options=SMALL[method], image_size=SIZE, epochs=epochs, batch_size=16,
                      **extra)
    res = train(cfg, None, data=easy_data, progress=False)
    from medad_edu.evaluation import evaluate_model

    report = evaluate_model(res.model, easy_data)
    assert report["mean"]["image_auroc"] > 0.75, report["mean"]
    assert set(res.thresholds) >= set(TASKS)


# --- MemAE ------------------------------------------------------------------------------------------------
def test_hard_shrinkage_and_entropy():
    w = torch.softmax(torch.tensor([[3.0, 2.0, -4.0, -5.0]]), -1)
    s = hard_shrink_relu(w, 0.05)
    assert s[0, 2] == 0 and s[0, 3] == 0 and s[0, 0] > 0 and s[0, 1] > 0
    torch.testing.assert_close(s.sum(-1), torch.ones(1))
    torch.testing.assert_close(s[0, :2] / s[0, :2].sum(), w[0, :2] / w[0, :2].sum(), atol=1e-5, rtol=1e-4)
    assert float(addressing_entropy(torch.tensor([[1.0, 0.0]]))) == pytest.approx(0.0, abs=1e-6)
    assert float(addressing_entropy(torch.tensor([[0.5, 0.5]]))) == pytest.approx(np.log(2), rel=1e-5)


def test_memae_reads_few_slots():
    torch.manual_seed(0)
    model = MemAE(SIZE, TASKS, mem_dim=100, shrink_thres=0.02).eval()
    out = model(torch.rand(3, 1, SIZE, SIZE), torch.zeros(3, dtype=torch.long))
    assert (out.extras["slots_used"] < 100).all()
    with pytest.raises(ValueError, match="shrink_thres"):
        MemAE(SIZE, TASKS, shrink_thres=1.5)


# --- NSA ----------------------------------------------------------------------------------------------------
def test_poisson_blend_matches_target_when_source_is_shifted_target():
    torch.manual_seed(0)
    target = torch.rand(2, 1, 24, 24)
    mask = torch.zeros(2, 1, 24, 24)
    mask[:, :, 6:16, 5:17] = 1
    source = target + 0.3  # same gradients: seamless cloning must give back the target exactly
    out = poisson_blend(target, source, mask, iters=200)
    torch.testing.assert_close(out, target, atol=1e-4, rtol=0)
    # outside the mask nothing changes, whatever the source
    other = poisson_blend(target, torch.rand(2, 1, 24, 24), mask)
    assert torch.equal(other[mask == 0], target[mask == 0])


def test_synthetic_anomalies_are_local_and_reproducible():
    x = torch.from_numpy(smooth_images(8, np.random.default_rng(1))).unsqueeze(1)
    tids = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    a = synthesize_anomalies(x, tids, torch.Generator().manual_seed(3), p_anomaly=1.0)
    b = synthesize_anomalies(x, tids, torch.Generator().manual_seed(3), p_anomaly=1.0)
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    out, label, mask = a
    assert out.shape == label.shape == mask.shape == x.shape
    assert torch.equal(out[mask == 0], x[mask == 0])  # changes only inside the patches
    assert (label[mask == 0] == 0).all() and label.min() >= 0 and label.max() <= 1
    assert (mask.flatten(1).sum(1) > 0).all()
    paste = synthesize_anomalies(x, tids, torch.Generator().manual_seed(3), blend="paste", p_anomaly=0.0)[0]
    assert torch.equal(paste, x)
    with pytest.raises(ValueError, match="blend"):
        NSA(SIZE, TASKS, blend="mix")


# --- Deep SVDD ----------------------------------------------------------------------------------------------
def test_deep_svdd_is_bias_free_and_centre_fixed(easy_data):
    torch.manual_seed(0)
    model = DeepSVDD(SIZE, TASKS, channels=[8, 16], rep_dim=8)
    assert all(getattr(m, "bias", None) is None for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert all(not m.affine for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    model.on_train_start(easy_data, torch.device("cpu"))
    c = model.center.clone()
    assert bool(model.center_ready) and (c.abs() >= 0.1 - 1e-7).all()  # the eps rule
    model.on_train_start(easy_data, torch.device("cpu"))  # a resumed run keeps its centre
    assert torch.equal(model.center, c)
    out = model.eval()(torch.rand(2, 1, SIZE, SIZE), None)
    torch.testing.assert_close(out.pred_score, out.extras["distance_grid"].flatten(1).mean(1))


# --- PatchCore ----------------------------------------------------------------------------------------------
def test_greedy_coreset_matches_a_plain_loop():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 6, generator=g)
    idx = greedy_coreset(x, 25, projection_dim=None, generator=torch.Generator().manual_seed(1))
    start = int(idx[0])
    chosen = [start]
    for _ in range(24):  # farthest point from the chosen set, one at a time
        d = torch.stack([((x - x[c]) ** 2).sum(1) for c in chosen]).min(0).values
        chosen.append(int(d.argmax()))
    assert idx.tolist() == chosen
    q = torch.randn(50, 6, generator=g)
    torch.testing.assert_close(nearest_distance(q, x[idx], chunk_elems=100), torch.cdist(q, x[idx]).min(1).values,
                               atol=1e-4, rtol=1e-4)


def test_patchcore_checkpoint_roundtrip_and_bank_per_task(easy_data):
    torch.manual_seed(0)
    res = train(make_config("patchcore", "quick", image_size=SIZE), None, data=easy_data, progress=False)
    model = res.model
    assert set(model.memory_task.tolist()) == {0, 1}
    n_train_patches = 2 * 32 * (SIZE // 8) ** 2
    assert len(model.memory) == pytest.approx(0.1 * n_train_patches, abs=2)
    fresh = PatchCore(**model.init_args())
    fresh.load_state_dict(model.state_dict())  # the bank's buffers are resized when loaded
    x = torch.rand(3, 1, SIZE, SIZE)
    t = torch.tensor([0, 1, 1])
    torch.testing.assert_close(fresh.eval()(x, t).anomaly_map, model(x, t).anomaly_map)


def test_patchcore_torchvision_weights_from_a_local_file(tmp_path, monkeypatch, easy_data):
    from medad_edu._compat import import_torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    monkeypatch.delenv("MEDAD_EDU_BACKBONE_WEIGHTS", raising=False)
    with pytest.raises(FileNotFoundError, match="resnet18"):
        find_torchvision_weights("resnet18")
    torch.manual_seed(0)
    ref = import_torchvision().models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    monkeypatch.setenv("MEDAD_EDU_BACKBONE_WEIGHTS", str(path))
    model = PatchCore(SIZE, TASKS, backbone="resnet18")
    model.on_train_start(easy_data, torch.device("cpu"))
    torch.testing.assert_close(model.backbone["layer3"][0].conv1.weight, ref.layer3[0].conv1.weight)
    torch.testing.assert_close(model.backbone["stem"][0].weight, ref.conv1.weight)
    assert model.patch_features(torch.rand(2, 1, SIZE, SIZE)).shape == (2, 128 + 256, SIZE // 8, SIZE // 8)
    with pytest.raises(ValueError, match="backbone"):
        PatchCore(SIZE, TASKS, backbone="vgg")


def test_patchcore_uses_a_trained_runs_encoder(tmp_path, easy_data):
    ae = train(make_config("ae", "quick", image_size=SIZE, epochs=1, batch_size=16), tmp_path / "ae",
               data=easy_data, progress=False)
    with pytest.raises(ValueError, match="backbone_source"):  # the constructor reads no run folder
        PatchCore(SIZE, TASKS, backbone=f"run:{tmp_path / 'ae'}")
    model = make_model("patchcore", SIZE, TASKS, backbone=f"run:{tmp_path / 'ae'}")
    assert model.options["backbone_source"]["method"] == "ae"
    model.on_train_start(easy_data, torch.device("cpu"))
    x = torch.rand(2, 1, SIZE, SIZE)
    ae.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.feature_maps(x)[2], ae.model.encoder.conv[:3](x))
    # rebuilt from its own arguments, without the run folder
    (tmp_path / "ae" / "checkpoint.pt").unlink()
    PatchCore(**model.init_args())


# --- AE-U and the coarse-noise DAE ---------------------------------------------------------------------------------
def test_aeu_loss_and_map_by_hand():
    from medad_edu.models.baselines.aeu import AEU, uncertainty_nll

    torch.manual_seed(0)
    model = AEU(32, ["a"]).eval()
    x = torch.rand(3, 1, 32, 32)
    xs, mu, s = model.predict(x)
    torch.testing.assert_close(xs, 2 * x - 1)
    torch.testing.assert_close(uncertainty_nll(xs, mu, s), (torch.exp(-s) * (xs - mu) ** 2 + s).mean())
    out = model(x)
    torch.testing.assert_close(out.anomaly_map, torch.exp(-s) * (xs - mu) ** 2)
    mean_model = AEU(32, ["a"], score_sigma=0.0, score_top=1.0).eval()
    mean_model.load_state_dict(model.state_dict())
    torch.testing.assert_close(mean_model(x).pred_score, out.anomaly_map.flatten(1).mean(1))
    with pytest.raises(ValueError, match="score_top"):
        AEU(32, ["a"], score_top=2.0)


def test_coarse_noise_is_smooth_rolled_and_on_the_foreground_only():
    from medad_edu.models.baselines.dae import DenoisingAE, coarse_noise, foreground_mask

    x = torch.zeros(4, 1, 32, 32)
    x[:, :, 8:24, 8:24] = 0.6  # a body in black air
    noise = coarse_noise(x, torch.Generator().manual_seed(0), res=4, std=0.2)
    fg = foreground_mask(x)
    assert (noise[fg == 0] == 0).all() and noise[fg > 0].abs().sum() > 0
    assert 0.05 < float(noise[fg > 0].std()) < 0.4
    # smooth: neighbouring pixels differ far less than the noise's spread
    assert float((noise[..., 1:] - noise[..., :-1]).abs()[..., 9:22, 9:22].mean()) < 0.2 * float(noise[fg > 0].std())
    again = coarse_noise(x, torch.Generator().manual_seed(0), res=4, std=0.2)
    torch.testing.assert_close(noise, again)  # seeded
    model = DenoisingAE(32, ["a"], width=4, depth=2).eval()
    out = model(x)
    torch.testing.assert_close(out.anomaly_map, (x - out.extras["reconstruction"]).abs())


def test_same_group_partners_shared_by_nsa_and_the_lesion_task():
    from medad_edu.models.synthesis import same_group_partners

    groups = torch.tensor([0, 0, 1, 2, 2, 2, 0])
    for seed in range(5):
        partner = same_group_partners(groups, torch.Generator().manual_seed(seed))
        assert (groups[partner] == groups).all()
        alone = torch.tensor([(groups == g).sum() == 1 for g in groups])
        assert ((partner == torch.arange(len(groups))) == alone).all()  # itself only when alone in its group
    # one [B, B] draw: the same generator state gives the same partners on either path
    a = same_group_partners(groups, torch.Generator().manual_seed(3))
    b = same_group_partners(groups, torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.equal(a, b)
