"""Stage 2, group-relative policy optimisation (GRPO) with format, answer and consistency rewards.

GRPO (Shao et al. 2024, DeepSeekMath, arXiv 2402.03300; the optimiser MedAD-R1 builds its
consistency-reinforced stage on) needs no value network. For each question ``q`` it samples a group of ``G``
outputs ``o_1..o_G`` from the current policy (frozen as ``pi_old`` for this batch), scores them with the
rewards ``r_i``, and uses the group itself as the baseline:

    A_i = (r_i - mean(r_1..r_G)) / (std(r_1..r_G) + eps)              (population std; every token of o_i gets A_i)

The policy then maximises a clipped surrogate with a KL penalty to the frozen stage-1 (reference) policy:

    ratio_it = pi(o_it | q, o_i<t) / pi_old(o_it | q, o_i<t)
    J = mean_i [ 1/|o_i| sum_t ( min(ratio_it A_i, clip(ratio_it, 1-eps_c, 1+eps_c) A_i) - beta KL_it ) ]
    KL_it = pi_ref/pi - log(pi_ref/pi) - 1                            (the k3 estimator: unbiased, always >= 0)

and ``grpo_loss`` returns ``-J``. With one update per sampled batch the ratio is exactly 1 (the clip then
never acts, the gradient is the plain policy gradient with group-normalised advantages); with
``inner_updates > 1`` the later updates reuse the same samples and the clip keeps them close to ``pi_old``.
A group whose rewards are all equal teaches nothing (all ``A_i = 0``) but the KL term.

Explained in notebooks/31_reasoning_grpo.ipynb (every step by hand, then checked against these functions).

Example::

    ref = copy.deepcopy(policy)           # the stage-1 (SFT) policy, frozen
    history = train_grpo(policy, vqa_train, GRPOConfig(steps=40), ref_policy=ref)

Defined in: notebooks/31_reasoning_grpo.ipynb
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np
import torch

from ..training.trainer import optimizer_step
from ..utils import get_device
from .policy import ReasoningPolicy, sequence_mask
from .rewards import REWARD_WEIGHTS, RewardBreakdown, score_outputs
from .vocab import QUESTION_TYPES, VOCAB
from .vqa import VQASet


@dataclass
class GRPOConfig:
    steps: int = 40
    questions_per_step: int = 32
    group_size: int = 8  # G samples per question
    clip_eps: float = 0.2  # epsilon of the clipped ratio (DeepSeekMath: 0.2)
    beta: float = 0.04  # KL weight (DeepSeekMath: 0.04)
    lr: float = 1e-3
    inner_updates: int = 2  # optimiser steps per sampled batch (mu in the GRPO paper)
    temperature: float = 1.0
    adv_eps: float = 1e-4
    grad_clip: float | None = 1.0
    seed: int = 0
    weights: Mapping[str, float] = field(default_factory=lambda: dict(REWARD_WEIGHTS))


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """``(r - mean_group) / (std_group + eps)`` for rewards [B, G] (one row per question; population std)."""
    if rewards.ndim != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be [questions, group_size >= 2]; got {tuple(rewards.shape)}")
    mean = rewards.mean(1, keepdim=True)
    std = rewards.std(1, unbiased=False, keepdim=True)
    return (rewards - mean) / (std + eps)


def k3_kl(logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi || pi_ref) from samples of pi: ``exp(d) - d - 1`` with ``d = logp_ref - logp``."""
    d = logp_ref - logp
    return torch.exp(d) - d - 1


def grpo_loss(logp: torch.Tensor, logp_old: torch.Tensor, logp_ref: torch.Tensor, advantages: torch.Tensor,
              mask: torch.Tensor, clip_eps: float = 0.2, beta: float = 0.04) -> tuple[torch.Tensor, dict]:
    """The GRPO loss ``-J`` (module docstring) and statistics.

    ``logp`` [N, T] (with gradient), ``logp_old`` / ``logp_ref`` [N, T] (without), ``advantages`` [N] (one
    per output), ``mask`` [N, T] (1 on the output's tokens, up to and including ``<eos>``).
    """
    if not 0 <= clip_eps < 1:
        raise ValueError(f"clip_eps must be in [0, 1); got {clip_eps}")
    if beta < 0:
        raise ValueError(f"beta must be >= 0; got {beta}")
    ratio = torch.exp(logp - logp_old)
    adv = advantages[:, None]
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv
    surrogate = torch.minimum(unclipped, clipped)
    kl = k3_kl(logp, logp_ref)
    per_token = -(surrogate - beta * kl)
    lengths = mask.sum(1).clamp_min(1)
    loss = ((per_token * mask).sum(1) / lengths).mean()
    with torch.no_grad():
        n_tok = mask.sum().clamp_min(1)
        stats = {"loss": float(loss), "kl": float((kl * mask).sum() / n_tok),
                 "clip_fraction": float(((clipped < unclipped).float() * mask).sum() / n_tok),
                 "ratio_mean": float((ratio * mask).sum() / n_tok)}
    return loss, stats


@dataclass
class Rollout:
    """A sampled batch: ``N = B * G`` outputs, row ``i`` answering question ``i // G`` of the batch."""

    images: torch.Tensor
    maps: torch.Tensor | None
    qtypes: torch.Tensor
    tokens: torch.Tensor  # [N, T]
    mask: torch.Tensor  # [N, T]
    rewards: torch.Tensor  # [N]
    advantages: torch.Tensor  # [N]
    logp_old: torch.Tensor  # [N, T]
    logp_ref: torch.Tensor  # [N, T]
    breakdown: RewardBreakdown | None = None
    texts: list[str] | None = None


@torch.no_grad()
def sample_rollout(policy: ReasoningPolicy, ref_policy: ReasoningPolicy, data: VQASet, index: torch.Tensor,
                   config: GRPOConfig, generator: torch.Generator | None = None,
                   device: torch.device | str = "cpu") -> Rollout:
    """Sample ``G`` outputs for each question in ``index``, reward them, and compute advantages and the old and
    reference log-probabilities."""
    g = config.group_size
    if g < 2:
        raise ValueError(f"group_size must be >= 2 (the group is the baseline); got {g}")
    batch = data.batch(index, device)
    rep = lambda x: None if x is None else x.repeat_interleave(g, 0)  # noqa: E731
    images, maps, qtypes = rep(batch["image"]), rep(batch["map"]), rep(batch["qtype"])
    policy.eval()
    gen = policy.generate(images, qtypes, maps, greedy=False, temperature=config.temperature, generator=generator)
    texts = [VOCAB.decode(t) for t in gen.tokens]
    answers = [data.answers[i] for i in index.tolist() for _ in range(g)]
    qnames = [QUESTION_TYPES[q] for q in qtypes.tolist()]
    br = score_outputs(texts, answers, qnames, config.weights)
    rewards = torch.as_tensor(br.total, dtype=torch.float32, device=images.device)
    adv = group_advantages(rewards.view(-1, g), config.adv_eps).flatten()
    mask = sequence_mask(gen.tokens)
    logp_old = policy.token_logprobs(images, qtypes, gen.tokens, maps)
    logp_ref = ref_policy.token_logprobs(images, qtypes, gen.tokens, maps)
    return Rollout(images, maps, qtypes, gen.tokens, mask, rewards, adv, logp_old, logp_ref, br, texts)


def grpo_update(policy, rollout: Rollout, optimizer: torch.optim.Optimizer, config: GRPOConfig) -> dict:
    """One optimiser step on ``grpo_loss`` for a rollout; returns the loss (before the step) and statistics."""
    logp = policy.token_logprobs(rollout.images, rollout.qtypes, rollout.tokens, rollout.maps)
    loss, stats = grpo_loss(logp, rollout.logp_old, rollout.logp_ref, rollout.advantages, rollout.mask,
                            config.clip_eps, config.beta)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"GRPO loss is {float(loss)}")
    optimizer_step(loss, optimizer, policy.parameters(), config.grad_clip)
    return stats


def frozen_copy(policy: ReasoningPolicy) -> ReasoningPolicy:
    """The reference policy: a copy in eval mode with gradients off."""
    ref = copy.deepcopy(policy).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def train_grpo(policy: ReasoningPolicy, train_set: VQASet, config: GRPOConfig = GRPOConfig(),
               ref_policy: ReasoningPolicy | None = None, device: torch.device | str | None = None,
               log: Callable[[str], None] | None = None) -> list[dict]:
    """``config.steps`` GRPO steps on random questions of ``train_set``; one history row per step.

    ``ref_policy`` defaults to a frozen copy of ``policy`` as it is now (the stage-1 policy).
    """
    if config.steps < 1 or config.questions_per_step < 1 or config.inner_updates < 1 or not config.lr > 0:
        raise ValueError(f"steps, questions_per_step, inner_updates must be >= 1 and lr > 0; got {config}")
    if policy.use_map and train_set.maps is None:
        raise ValueError("the policy reads anomaly maps (use_map=True) but the VQA set has none")
    device = get_device() if device is None else torch.device(device)
    policy.to(device)
    ref_policy = frozen_copy(policy) if ref_policy is None else ref_policy.to(device).eval()
    pick = torch.Generator().manual_seed(config.seed)
    sample_gen = torch.Generator(device=device).manual_seed(config.seed + 1)
    opt = torch.optim.Adam(policy.parameters(), lr=config.lr)
    history = []
    for step in range(1, config.steps + 1):
        t0 = time.perf_counter()
        index = torch.randperm(len(train_set), generator=pick)[:config.questions_per_step]
        roll = sample_rollout(policy, ref_policy, train_set, index, config, sample_gen, device)
        policy.train()
        stats = {}
        for k in range(config.inner_updates):
            s = grpo_update(policy, roll, opt, config)
            stats = stats or s  # the first update's loss (ratio = 1)
            stats["clip_fraction"] = s["clip_fraction"]  # the last update's (the clip only acts from update 2)
        policy.eval()
        br = roll.breakdown
        row = {"step": step, "reward": float(np.mean(br.total)), "answer": float(np.mean(br.answer)),
               "format": float(np.mean(br.format)), "consistency": float(np.mean(br.consistency)),
               "zero_adv_groups": float((roll.advantages.view(-1, config.group_size).abs().sum(1) == 0)
                                        .float().mean()),
               **stats, "seconds": time.perf_counter() - t0}
        history.append(row)
        if log:
            log(" ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    return history
