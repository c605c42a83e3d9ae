"""Tests of medad_edu.reasoning: VQA builder, format parser, rewards, policy, SFT and one GRPO step by hand."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from medad_edu.data import ArraySplit, MultiTaskData, TaskData
from medad_edu.reasoning import (GRPOConfig, ReasoningPolicy, Rollout, SFTConfig, VOCAB, answer_reward,
                                 build_vqa_set, concat_vqa_sets, consistency_check, consistency_reward,
                                 evaluate_policy, format_reward, group_advantages, grpo_loss, grpo_update,
                                 image_facts, k3_kl, load_policy, mask_regions, parse_output, reasoning_metrics,
                                 reference_output, sample_rollout, save_policy, sequence_mask, sft_loss,
                                 size_classes, total_reward, train_grpo, train_sft)
from medad_edu.reasoning.format import think_text

torch.set_num_threads(2)
S = 32
FACTS_ABN = {"modality": "mri", "organ": "brain", "finding": "tumor", "region": "upper-left", "size": "small",
             "conclusion": "abnormal"}
FACTS_NOR = {"modality": "ct", "organ": "head", "finding": "none", "region": "none", "size": "none",
             "conclusion": "normal"}
T_ABN = think_text(FACTS_ABN)
T_NOR = think_text(FACTS_NOR)


def _data(n_per_class=4, seed=0):
    """Two tasks of random images; abnormal test images carry a square mask in a known grid cell."""
    rng = np.random.default_rng(seed)
    tasks = []
    for k, name in enumerate(("brain_mri", "chest_xray")):
        n = 2 * n_per_class
        imgs = rng.random((n, S, S)).astype(np.float32)
        labels = np.array([0] * n_per_class + [1] * n_per_class)
        masks = np.zeros((n, S, S), np.uint8)
        for i in range(n_per_class, n):  # cell (i % 3, (i + k) % 3), a 4x4 square well inside it
            r, c = (i % 3), (i + k) % 3
            y, x = r * 11 + 3, c * 11 + 3
            masks[i, y:y + 4, x:x + 4] = 1
            imgs[i, y:y + 4, x:x + 4] = 1.0
        train = ArraySplit(rng.random((6, S, S)).astype(np.float32), np.zeros(6, np.int64))
        tasks.append(TaskData(name, name, train=train, valid=ArraySplit(imgs, labels, masks),
                              test=ArraySplit(imgs, labels, masks)))
    return MultiTaskData(tasks, S)


# ------------------------------------------------------------------------------------------------ VQA builder
def test_mask_regions_hand_built():
    masks = np.zeros((12, S, S), np.uint8)
    masks[0, 0:5, 0:5] = 1  # upper-left
    masks[1, 0:5, 27:32] = 1  # upper-right
    masks[2, 14:18, 14:18] = 1  # center
    masks[3, 28:32, 0:3] = 1  # lower-left
    masks[4, 25:32, 12:20] = 1  # lower-center
    masks[5, 12:20, 25:32] = 1  # middle-right
    masks[6, 10, 10] = 1  # last pixel of the upper-left cell (rows/cols 0..10 are cell 0 at 32 px)
    masks[7, 11, 11] = 1  # first pixel of the center cell
    masks[8, 0:2, 0:10] = 1  # 20 px upper-left ...
    masks[8, 0:6, 11:16] = 1  # ... 30 px upper-center: the majority wins
    masks[9, 0:2, 0:2] = 1
    masks[9, 30:32, 30:32] = 1  # a tie (4 px each) goes to the first cell, row-major
    # masks[10] stays empty
    masks[11] = 1  # everything: ties everywhere -> first cell
    got = mask_regions(masks)
    np.testing.assert_array_equal(got, [0, 2, 4, 6, 7, 5, 0, 4, 1, 0, -1, 0])
    # 9 px images: each cell is exactly 3x3
    m9 = np.zeros((9, 9, 9), np.uint8)
    for k in range(9):
        r, c = divmod(k, 3)
        m9[k, 3 * r + 1, 3 * c + 2] = 1
    np.testing.assert_array_equal(mask_regions(m9), np.arange(9))
    with pytest.raises(ValueError):
        mask_regions(np.zeros((S, S)))


def test_size_classes_and_facts():
    masks = np.zeros((4, 100, 100), np.uint8)
    masks[1, :5, :10] = 1  # 0.5 % -> small
    masks[2, :10, :10] = 1  # 1 % -> medium
    masks[3, :20, :10] = 1  # 2 % -> large
    np.testing.assert_array_equal(size_classes(masks), [-1, 0, 1, 2])
    with pytest.raises(ValueError):
        size_classes(masks, (0.5, 0.1))
    facts = image_facts(["brain_mri", "brain_mri", "head_ct", "rsna", "mystery"], np.array([0, 1, 1, 1, 1]),
                        np.concatenate([masks[:1], masks[1:2], masks[2:3], masks[3:4], masks[:1]]))
    assert facts[0] == {"modality": "mri", "organ": "brain", "finding": "none", "region": "none", "size": "none",
                        "conclusion": "normal"}
    assert facts[1]["finding"] == "tumor" and facts[1]["region"] == "upper-left" and facts[1]["size"] == "small"
    assert facts[2]["finding"] == "hemorrhage" and facts[2]["size"] == "medium"
    assert facts[3]["organ"] == "chest" and facts[3]["finding"] == "opacity" and facts[3]["size"] == "large"
    # abnormal with an empty mask: where and how large are unknown
    assert facts[4]["organ"] == "other" and facts[4]["region"] == "unknown" and facts[4]["conclusion"] == "abnormal"


def test_build_vqa_set():
    data = _data()
    vqa = build_vqa_set(data, "test")
    assert len(vqa.images) == 16 and len(vqa) == 64  # 4 questions per image, every abnormal has a mask
    # 14 think tokens + <answer> + 1 or 2 answer tokens + </answer> + <eos>
    assert vqa.tokens.shape[1] == 24 and set(vqa.lengths.tolist()) == {18, 19}
    for k in range(len(vqa)):
        i, q = int(vqa.image_index[k]), vqa.qtype_names[k]
        f = vqa.facts[i]
        assert vqa.references[k] == reference_output(f, q)
        assert parse_output(vqa.references[k], q).valid
        assert consistency_reward(vqa.references[k], q) == 1.0
        assert answer_reward(vqa.references[k], vqa.answers[k], q) == 1.0
    # image 5 of brain_mri: label 1, mask in cell (5 % 3, 5 % 3) = (2, 2) -> lower-right
    assert vqa.facts[5]["region"] == "lower-right" and vqa.facts[5]["finding"] == "tumor"
    # chest_xray image 4 (index 12): cell (1, (4 + 1) % 3) = (1, 2) -> middle-right; 16 px of 1024 -> large
    assert vqa.facts[12]["region"] == "middle-right" and vqa.facts[12]["size"] == "large"
    assert all(vqa.facts[i]["region"] == "none" for i in (0, 1, 2, 3, 8, 9, 10, 11))
    region_answers = [a for a, q in zip(vqa.answers, vqa.qtype_names) if q == "region"]
    assert region_answers[:4] == [["none"]] * 4
    # anomaly maps: checked shape, normalised by a scale, subset of questions
    maps = np.ones((16, S, S), np.float32) * 3
    vm = build_vqa_set(data, "test", maps, scale=2.0, question_types=("abnormal", "region"))
    assert len(vm) == 32 and torch.allclose(vm.maps, torch.full_like(vm.maps, 1.5))
    with pytest.raises(ValueError):
        build_vqa_set(data, "test", np.ones((15, S, S)))
    with pytest.raises(ValueError):
        build_vqa_set(data, "test", question_types=("colour",))
    both = concat_vqa_sets([vqa, vqa.select(torch.arange(4))])
    assert len(both) == 68 and len(both.images) == 32 and int(both.image_index[-1]) == 16 + 0


def test_no_region_questions_without_mask():
    rng = np.random.default_rng(0)
    imgs = rng.random((4, S, S)).astype(np.float32)
    task = TaskData("fundus", "f", train=ArraySplit(imgs, np.zeros(4, np.int64)),
                    test=ArraySplit(imgs, np.array([0, 0, 1, 1])))
    vqa = build_vqa_set(MultiTaskData([task], S), "test")
    assert len(vqa) == 4 * 2 + 2 * 2 and vqa.facts[2]["region"] == "unknown"


# ------------------------------------------------------------------------------------------------ parser
def test_vocab_roundtrip():
    ref = reference_output(FACTS_ABN, "region")
    ids = VOCAB.encode(ref, add_eos=True)
    assert VOCAB.unk_id not in ids and ids[-1] == VOCAB.eos_id
    assert VOCAB.decode(ids) == ref
    assert VOCAB.decode([VOCAB.bos_id, 10_000, -3]) == "<bos> <unk> <unk>"
    assert VOCAB.encode("<think>modality: banana") == [VOCAB.index["<think>"], VOCAB.index["modality:"], VOCAB.unk_id]


@pytest.mark.parametrize("output, missing, error", [
    ("", ["<think>", "</think>", "<answer>", "</answer>"], "empty output"),
    (None, ["<think>", "</answer>"], "empty output"),
    ("lorem ipsum 42 !!", ["<think>", "</think>", "<answer>", "</answer>"], "unknown token"),
    (T_ABN, ["<answer>", "</answer>"], None),  # no answer at all
    (T_ABN + " <answer> yes", ["</answer>", "answer"], None),  # truncated in the answer
    ("<think> modality: mri organ: brain finding:", ["</think>", "region:", "size:", "conclusion:"], "no value"),
    ("<answer> yes </answer> " + T_ABN, [], "out of order"),
    (T_ABN + " <answer> </answer>", ["answer"], None),
    (T_ABN + " <answer> yes </answer> extra", [], "after </answer>"),
    (T_ABN + " region: <answer> yes </answer>", [], "between </think> and <answer>"),
    ("<think> modality: mri modality: ct organ: brain finding: tumor region: upper-left size: small conclusion: "
     "abnormal </think> <answer> yes </answer>", [], "twice"),
    (T_ABN.replace("upper-left", "purple") + " <answer> yes </answer>", [], "not a valid value"),
    (T_ABN + " <answer> maybe </answer>", [], "unknown token"),
    (T_ABN + " <answer> yes no </answer>", [], "needs 1 token"),
    (T_ABN + " <answer> <unk> </answer>", [], "unknown token"),
    ([10_000, 5, -1], [], "unknown token"),
    (b"\xff\xfe garbage", ["<think>"], "unknown token"),
    (3.14, ["<think>"], "unknown token"),
    ("<think> </think> </think> <answer> yes </answer>", ["modality:"], "appears 2 times"),
])
def test_parser_malformed(output, missing, error):
    p = parse_output(output, "abnormal")
    assert p.valid is False
    for m in missing:
        assert m in p.missing, (m, p.missing)
    if error:
        assert any(error in e for e in p.errors), p.errors
    # and every reward copes without raising
    assert format_reward(output, "abnormal") == 0.0
    assert 0.0 <= total_reward(output, ["yes"], "abnormal") <= 1.0 + 0.5  # answer + consistency at most


def test_parser_valid_and_lenient():
    for q, ans in (("abnormal", "yes"), ("organ", "brain mri"), ("region", "upper-left"), ("size", "small")):
        p = parse_output(f"{T_ABN} <answer> {ans} </answer>", q)
        assert p.valid and not p.missing and not p.errors and p.think == FACTS_ABN
    p = parse_output(f"{T_ABN} <answer> brain mri </answer> <eos> <pad> junk after eos", "organ")
    assert p.valid and p.answer_fields == {"organ": "brain", "modality": "mri"}
    ids = VOCAB.encode(f"{T_ABN}<answer>yes</answer>", add_eos=True) + [VOCAB.pad_id] * 3
    assert parse_output(ids, "abnormal").valid and parse_output(torch.tensor(ids), "abnormal").valid
    # the format does not demand the reference order of the think fields
    shuffled = "<think> organ: brain modality: mri region: upper-left finding: tumor conclusion: abnormal size: small"
    assert parse_output(shuffled + " </think> <answer> yes </answer>", "abnormal").valid
    # truncated think still yields its fields
    p = parse_output("<think> modality: mri organ: brain finding: tum", "abnormal")
    assert p.think == {"modality": "mri", "organ": "brain"} and not p.valid
    with pytest.raises(ValueError):
        parse_output("x", "colour")


# ------------------------------------------------------------------------------------------------ rewards
def test_format_reward():
    assert format_reward(T_ABN + " <answer> yes </answer>", "abnormal") == 1.0
    assert format_reward(T_ABN + " <answer> yes </answer>", "region") == 0.0  # 'yes' is no region
    assert format_reward("<think> modality: ct </think> <answer> yes </answer>", "abnormal") == 0.0
    with pytest.raises(ValueError):
        format_reward("", "colour")


def test_answer_reward_hand_cases():
    out = lambda a: f"{T_ABN} <answer> {a} </answer>"  # noqa: E731
    assert answer_reward(out("yes"), ["yes"], "abnormal") == 1.0
    assert answer_reward(out("no"), ["yes"], "abnormal") == 0.0
    assert answer_reward(out("brain ct"), ["brain", "mri"], "organ") == 0.5
    assert answer_reward(out("chest ct"), ["brain", "mri"], "organ") == 0.0
    assert answer_reward(out("mri brain"), ["brain", "mri"], "organ") == 0.0  # order matters: organ then modality
    assert answer_reward(out("upper-center"), ["upper-left"], "region") == 0.5  # neighbour
    assert answer_reward(out("center"), ["upper-left"], "region") == 0.5  # diagonal neighbour
    assert answer_reward(out("lower-right"), ["upper-left"], "region") == 0.0
    assert answer_reward(out("none"), ["upper-left"], "region") == 0.0
    assert answer_reward(out("center"), ["upper-left"], "region", region_partial=0.0) == 0.0
    assert answer_reward(out("none"), ["none"], "size") == 1.0
    assert answer_reward("<answer> yes </answer>", ["yes"], "abnormal") == 1.0  # only the answer block is read
    assert answer_reward(T_ABN + " <answer> yes", ["yes"], "abnormal") == 0.0  # no closed answer block
    with pytest.raises(ValueError):
        answer_reward(out("yes"), ["purple"], "region")


def test_consistency_reward_hand_cases():
    ok_abn = T_ABN + " <answer> yes </answer>"
    assert consistency_reward(ok_abn, "abnormal") == 1.0
    assert consistency_reward(T_NOR + " <answer> no </answer>", "abnormal") == 1.0
    # think says no finding, answer says abnormal
    ok, why = consistency_check(T_NOR + " <answer> yes </answer>", "abnormal")
    assert not ok and any("implies 'no'" in w for w in why)
    # region in the reasoning differs from the answer
    assert consistency_reward(T_ABN + " <answer> center </answer>", "region") == 0.0
    assert consistency_reward(T_ABN + " <answer> upper-left </answer>", "region") == 1.0
    assert consistency_reward(T_ABN + " <answer> brain mri </answer>", "organ") == 1.0
    assert consistency_reward(T_ABN + " <answer> brain ct </answer>", "organ") == 0.0
    # incoherent reasoning, even with a matching answer
    bad = {**FACTS_ABN, "conclusion": "normal"}
    assert consistency_reward(think_text(bad) + " <answer> yes </answer>", "abnormal") == 0.0
    bad = {**FACTS_NOR, "region": "center"}
    assert consistency_reward(think_text(bad) + " <answer> center </answer>", "region") == 0.0
    bad = {**FACTS_ABN, "organ": "chest", "finding": "hemorrhage"}
    ok, why = consistency_check(think_text(bad) + " <answer> yes </answer>", "abnormal")
    assert not ok and any("not a finding of the chest" in w for w in why)
    # incomplete reasoning or no answer
    assert consistency_reward("<think> finding: none </think> <answer> no </answer>", "abnormal") == 0.0
    assert consistency_reward(T_ABN, "abnormal") == 0.0
    # an answer first and the reasoning after it is no think-then-answer
    ok, why = consistency_check("<answer> yes </answer> " + T_ABN, "abnormal")
    assert not ok and any("before the answer" in w for w in why)
    # consistent but wrong: consistency 1, answer 0
    wrong = T_NOR + " <answer> no </answer>"
    assert consistency_reward(wrong, "abnormal") == 1.0 and answer_reward(wrong, ["yes"], "abnormal") == 0.0


def test_total_reward_weights():
    out = T_ABN + " <answer> upper-center </answer>"  # valid, neighbour cell, inconsistent
    assert total_reward(out, ["upper-left"], "region") == pytest.approx(1.0 * 0.5 + 0.5 * 1 + 0.5 * 0)
    w = {"answer": 2.0, "format": 0.0, "consistency": 1.0}
    assert total_reward(T_ABN + " <answer> upper-left </answer>", ["upper-left"], "region", w) == 3.0
    m = reasoning_metrics([out, T_ABN + " <answer> upper-left </answer>", "garbage"],
                          [["upper-left"], ["upper-left"], ["yes"]], ["region", "region", "abnormal"])
    assert m["answer_accuracy"] == pytest.approx(1 / 3) and m["region_accuracy"] == 0.5
    assert m["format_validity"] == pytest.approx(2 / 3) and m["consistency_rate"] == pytest.approx(1 / 3)


# ------------------------------------------------------------------------------------------------ GRPO by hand
class FixedLogits(nn.Module):
    """A policy whose next-token logits depend only on the position: logits [T, V] (a parameter)."""

    use_map = False

    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(torch.as_tensor(logits, dtype=torch.float64))

    def token_logprobs(self, images, qtypes, tokens, maps=None):
        lp = torch.log_softmax(self.logits, -1)
        return lp[torch.arange(tokens.shape[1])[None], tokens]


def _log_softmax_np(x):
    x = np.asarray(x, np.float64)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_group_advantages_and_k3_by_hand():
    r = torch.tensor([[1.0, 0.0, 0.5, 0.5], [2.0, 2.0, 2.0, 2.0]])
    a = group_advantages(r, eps=0.0 + 1e-12)
    std = math.sqrt((0.25 + 0.25 + 0 + 0) / 4)  # population std of [1, 0, .5, .5]
    np.testing.assert_allclose(a[0].numpy(), [0.5 / std, -0.5 / std, 0, 0], rtol=1e-5)
    assert torch.all(a[1] == 0)  # equal rewards: no signal
    with pytest.raises(ValueError):
        group_advantages(torch.ones(3, 1))
    lp, lr = torch.tensor([-1.0, -0.5]), torch.tensor([-1.0, -1.5])
    np.testing.assert_allclose(k3_kl(lp, lr).numpy(), [0.0, math.exp(-1.0) + 1.0 - 1.0], rtol=1e-6)


def test_one_grpo_step_against_hand_computation():
    # Vocabulary of 3 tokens, outputs of length 3; two questions, G = 2 outputs each (N = 4).
    L = np.array([[0.2, -0.1, 0.4], [1.0, 0.0, -1.0], [0.3, 0.3, -0.2]])  # current policy
    L_old = np.array([[0.0, 0.0, 0.0], [1.5, 0.0, -1.0], [0.3, 0.1, -0.2]])  # sampled from (pi_old)
    L_ref = np.array([[0.1, 0.2, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 0.0]])  # stage-1 reference
    tokens = np.array([[0, 1, 2], [2, 0, 1], [1, 1, 0], [0, 2, 2]])
    mask = np.array([[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 0, 0]], np.float64)  # output lengths 3, 2, 3, 1
    rewards = np.array([1.5, 0.5, 1.0, 1.0])
    eps_c, beta, eps_a = 0.2, 0.04, 1e-4

    # --- by hand, with numpy ---
    g = rewards.reshape(2, 2)
    adv = ((g - g.mean(1, keepdims=True)) / (g.std(1, keepdims=True) + eps_a)).ravel()  # numpy std: population
    assert np.allclose(adv, [0.5 / 0.5001, -0.5 / 0.5001, 0, 0])
    pos = np.arange(3)[None]
    lp, lp_old, lp_ref = (_log_softmax_np(x)[pos, tokens] for x in (L, L_old, L_ref))
    ratio = np.exp(lp - lp_old)
    surr = np.minimum(ratio * adv[:, None], np.clip(ratio, 1 - eps_c, 1 + eps_c) * adv[:, None])
    kl = np.exp(lp_ref - lp) - (lp_ref - lp) - 1
    per_seq = ((surr - beta * kl) * mask).sum(1) / mask.sum(1)
    expected = -per_seq.mean()
    assert (np.clip(ratio, 1 - eps_c, 1 + eps_c) != ratio)[mask > 0].any()  # the clip acts somewhere

    # --- the package ---
    policy = FixedLogits(L)
    logp_old = FixedLogits(L_old).token_logprobs(None, None, torch.tensor(tokens)).detach()
    logp_ref = FixedLogits(L_ref).token_logprobs(None, None, torch.tensor(tokens)).detach()
    advantages = group_advantages(torch.tensor(rewards).view(2, 2), eps_a).flatten()
    loss, stats = grpo_loss(policy.token_logprobs(None, None, torch.tensor(tokens)), logp_old, logp_ref,
                            advantages, torch.tensor(mask), eps_c, beta)
    assert loss.item() == pytest.approx(expected, abs=1e-10)
    roll = Rollout(images=None, maps=None, qtypes=None, tokens=torch.tensor(tokens), mask=torch.tensor(mask),
                   rewards=torch.tensor(rewards), advantages=advantages, logp_old=logp_old, logp_ref=logp_ref)
    opt = torch.optim.SGD(policy.parameters(), lr=0.1)
    cfg = GRPOConfig(clip_eps=eps_c, beta=beta, grad_clip=None)
    stats = grpo_update(policy, roll, opt, cfg)
    assert stats["loss"] == pytest.approx(expected, abs=1e-10)
    assert stats["kl"] == pytest.approx((kl * mask).sum() / mask.sum(), abs=1e-10)
    # the step moved the logits down the gradient: the loss is now lower
    loss_after, _ = grpo_loss(policy.token_logprobs(None, None, torch.tensor(tokens)), logp_old, logp_ref,
                              advantages, torch.tensor(mask), eps_c, beta)
    assert loss_after.item() < expected


def test_grpo_ratio_one_gives_minus_mean_advantage():
    """When pi = pi_old = pi_ref the loss is -mean(A) = 0 (group-normalised), and its gradient is the plain
    policy gradient -mean_i A_i/|o_i| sum_t grad log pi."""
    L = torch.tensor([[0.3, -0.2, 0.1], [0.0, 0.5, -0.5]], dtype=torch.float64)
    tokens = torch.tensor([[0, 1], [2, 2]])
    mask = torch.ones(2, 2, dtype=torch.float64)
    pol = FixedLogits(L)
    lp = pol.token_logprobs(None, None, tokens)
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    loss, _ = grpo_loss(lp, lp.detach(), lp.detach(), adv, mask, 0.2, 0.04)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    pol2 = FixedLogits(L)
    pg = -((adv[:, None] * pol2.token_logprobs(None, None, tokens) * mask).sum(1) / 2).mean()
    pg.backward()
    torch.testing.assert_close(pol.logits.grad, pol2.logits.grad)


# ------------------------------------------------------------------------------------------------ policy, SFT
def test_policy_generate_and_logprobs():
    torch.manual_seed(0)
    data = _data(2)
    vqa = build_vqa_set(data, "test")
    pol = ReasoningPolicy(S)
    b = vqa.batch(torch.arange(6))
    gen = pol.generate(b["image"], b["qtype"], greedy=False, generator=torch.Generator().manual_seed(0))
    assert gen.tokens.shape == gen.logprobs.shape == gen.mask.shape and gen.tokens.shape[0] == 6
    torch.testing.assert_close(gen.mask, sequence_mask(gen.tokens))
    # after an <eos> only <pad>
    for row, m in zip(gen.tokens, gen.mask):
        assert (row[m == 0] == VOCAB.pad_id).all()
    tf = pol.token_logprobs(b["image"], b["qtype"], gen.tokens)  # teacher forcing gives the same log-probs
    torch.testing.assert_close(tf * gen.mask, gen.logprobs, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError):
        ReasoningPolicy(S, use_map=True).encode(b["image"], b["qtype"])
    mp = ReasoningPolicy(S, use_map=True)
    assert mp.generate(b["image"], b["qtype"], maps=b["image"], max_new_tokens=3).tokens.shape == (6, 3)


def test_sft_loss_decreases_and_checkpoint(tmp_path):
    torch.manual_seed(0)
    vqa = build_vqa_set(_data(4), "test", np.random.default_rng(0).random((16, S, S)), scale=1.0)
    pol = ReasoningPolicy(S, use_map=True, width=16, hidden=32, emb=16)
    first = sft_loss(pol, vqa.batch(torch.arange(len(vqa)))).item()
    assert first == pytest.approx(math.log(len(VOCAB)), rel=0.15)  # near uniform at initialisation
    hist = train_sft(pol, vqa, SFTConfig(epochs=5, batch_size=16, lr=1e-2), device="cpu")
    losses = [h["train_loss"] for h in hist]
    assert losses[-1] < 0.6 * losses[0] and all(b < a for a, b in zip(losses, losses[1:]))
    save_policy(pol, tmp_path / "p.pt", history=hist)
    pol2, extra = load_policy(tmp_path / "p.pt")
    assert extra["history"] == hist and pol2.use_map
    b = vqa.batch(torch.arange(8))
    torch.testing.assert_close(pol2(b["image"], b["qtype"], b["tokens"], b["map"]),
                               pol(b["image"], b["qtype"], b["tokens"], b["map"]))
    metrics, texts = evaluate_policy(pol, vqa, device="cpu")
    assert len(texts) == len(vqa) and set(metrics) >= {"answer_accuracy", "format_validity", "consistency_rate",
                                                       "region_accuracy"}


def test_sample_rollout_and_train_grpo_run():
    torch.manual_seed(0)
    vqa = build_vqa_set(_data(2), "test")
    pol = ReasoningPolicy(S, hidden=32)
    cfg = GRPOConfig(steps=2, questions_per_step=3, group_size=4, inner_updates=2)
    roll = sample_rollout(pol, pol, vqa, torch.tensor([0, 5, 9]), cfg, torch.Generator().manual_seed(0))
    assert roll.tokens.shape[0] == 12 and len(roll.texts) == 12
    np.testing.assert_allclose(roll.advantages.view(3, 4).mean(1).numpy(), 0, atol=1e-5)
    assert torch.allclose(roll.logp_old, roll.logp_ref)  # same policy
    hist = train_grpo(pol, vqa, cfg, device="cpu")
    assert len(hist) == 2 and all(math.isfinite(h["loss"]) for h in hist)
    with pytest.raises(ValueError):
        train_grpo(pol, vqa, GRPOConfig(group_size=1, steps=1))
