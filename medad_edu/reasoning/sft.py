"""Stage 1, supervised fine-tuning ("cognitive injection" in MedAD-R1): teacher forcing on reference chains.

The policy reads the image (and optionally the detector's anomaly map) and the question, and is trained to
put high probability on every token of the reference ``<think>...</think><answer>...</answer>`` chain: the
loss is the cross-entropy of each next token given the reference prefix, averaged over the tokens up to and
including ``<eos>`` (padding does not count). This teaches the format, the vocabulary of findings and regions,
and the habit of reasoning before answering; it does not teach the policy to keep its answer consistent with
its own (possibly wrong) reasoning at generation time, which is what stage 2 rewards.

Explained in notebooks/30_reasoning_vqa_sft.ipynb.

Example::

    policy = ReasoningPolicy(image_size=32)
    history = train_sft(policy, vqa_train, SFTConfig(epochs=10))

Defined in: notebooks/30_reasoning_vqa_sft.ipynb
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from ..training.trainer import optimizer_step
from ..utils import atomic_torch_save, get_device, to_plain
from .policy import ReasoningPolicy, policy_from_config, sequence_mask
from .vqa import VQASet


@dataclass
class SFTConfig:
    epochs: int = 12
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    seed: int = 0


def sft_loss(policy: ReasoningPolicy, batch: dict) -> torch.Tensor:
    """Mean token cross-entropy of the reference chain (tokens up to and including ``<eos>``)."""
    tokens = batch["tokens"]
    logp = policy.token_logprobs(batch["image"], batch["qtype"], tokens, batch.get("map"))
    mask = sequence_mask(tokens)
    return -(logp * mask).sum() / mask.sum()


@torch.no_grad()
def evaluate_sft_loss(policy: ReasoningPolicy, data: VQASet, batch_size: int = 256,
                      device: torch.device | str = "cpu") -> float:
    """Token-weighted mean cross-entropy over a whole set."""
    total, count = 0.0, 0.0
    for batch in data.batches(batch_size, device=device):
        logp = policy.token_logprobs(batch["image"], batch["qtype"], batch["tokens"], batch.get("map"))
        mask = sequence_mask(batch["tokens"])
        total += float(-(logp * mask).sum())
        count += float(mask.sum())
    return total / count


def train_sft(policy: ReasoningPolicy, train_set: VQASet, config: SFTConfig = SFTConfig(),
              valid_set: VQASet | None = None, device: torch.device | str | None = None,
              log: Callable[[str], None] | None = None) -> list[dict]:
    """Adam on ``sft_loss`` for ``config.epochs`` epochs; returns one history row per epoch."""
    if config.epochs < 1 or config.batch_size < 1 or not config.lr > 0:
        raise ValueError(f"epochs and batch_size must be >= 1 and lr > 0; got {config}")
    if policy.use_map and train_set.maps is None:
        raise ValueError("the policy reads anomaly maps (use_map=True) but the VQA set has none")
    device = get_device() if device is None else torch.device(device)
    policy.to(device)
    gen = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.Adam(policy.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    history = []
    for epoch in range(1, config.epochs + 1):
        policy.train()
        t0, total, n = time.perf_counter(), 0.0, 0
        for batch in train_set.batches(config.batch_size, shuffle=True, generator=gen, device=device):
            loss = sft_loss(policy, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"SFT loss is {float(loss)} at epoch {epoch}")
            optimizer_step(loss, opt, policy.parameters(), config.grad_clip)
            total += float(loss.detach()) * len(batch["qtype"])
            n += len(batch["qtype"])
        row = {"epoch": epoch, "train_loss": total / n, "seconds": time.perf_counter() - t0}
        if valid_set is not None:
            policy.eval()
            row["valid_loss"] = evaluate_sft_loss(policy, valid_set, device=device)
        history.append(row)
        if log:
            log(" ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    policy.eval()
    return history


def save_policy(policy: ReasoningPolicy, path: str | Path, **extra) -> None:
    """Atomic checkpoint: the constructor config, the weights and anything in ``extra`` (history, config)."""
    state = {"config": to_plain(policy.config), "state_dict": policy.state_dict(), **to_plain(extra)}
    atomic_torch_save(state, path)  # plain data only: load_policy reads it with weights_only=True


def load_policy(path: str | Path, device: torch.device | str = "cpu") -> tuple[ReasoningPolicy, dict]:
    """Rebuild a policy saved by ``save_policy``; returns (policy in eval mode, the extra entries).

    The file is read with ``weights_only=True`` (tensors and plain data only, never code); anything else gives
    a one-line ``CheckpointError`` naming the file.
    """
    from ..training.checkpoint import CheckpointError, load_plain

    path = Path(path)
    state = load_plain(path)
    if not isinstance(state, dict) or not isinstance(state.get("config"), dict) or "state_dict" not in state:
        raise CheckpointError(f"{path}: not a reasoning-policy checkpoint (expected 'config' and 'state_dict')")
    try:
        policy = policy_from_config(state.pop("config"))
        policy.load_state_dict(state.pop("state_dict"))
    except (TypeError, ValueError, RuntimeError, KeyError) as err:
        raise CheckpointError(f"{path}: the stored policy cannot be rebuilt ({str(err).splitlines()[0]})") from err
    return policy.to(device).eval(), state


def load_or_train_sft(path: str | Path, make_policy: Callable[[], ReasoningPolicy], train_set: VQASet,
                      config: SFTConfig = SFTConfig(), valid_set: VQASet | None = None,
                      device: torch.device | str | None = None) -> tuple[ReasoningPolicy, list[dict]]:
    """For notebooks: load the stage-1 policy from ``path`` if it exists (with its stored history), else train
    it and save it there. Loading and training print nothing, so a re-run shows the same outputs."""
    path = Path(path)
    device = get_device() if device is None else torch.device(device)
    torch.manual_seed(config.seed)  # the same initial weights whether we then load or train
    policy = make_policy()
    if path.exists():
        loaded, extra = load_policy(path, device)
        if extra.get("sft_config") == asdict(config) and loaded.config == policy.config:
            return loaded, extra["history"]
    history = train_sft(policy, train_set, config, valid_set, device)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_policy(policy, path, history=history, sft_config=asdict(config))
    return policy, history
