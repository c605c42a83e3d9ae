"""How well a reasoning policy does on a VQA set: answer accuracy, format validity, consistency, region accuracy.

- ``answer_accuracy``: share of questions whose answer block is exactly the ground truth (every field);
- ``format_validity``: share of outputs that follow the documented format (``format.parse_output().valid``);
- ``consistency_rate``: share whose reasoning is coherent and implies the answer (``rewards.consistency_reward``);
- ``region_accuracy``: exact grid cell on the region questions of abnormal images with a mask (the hard,
  localisation part; "none" on normal images is counted in ``acc_region`` instead);
- ``acc_<question type>``: answer accuracy per question type; ``mean_reward``: the weighted total reward.

MedAD-R1 reports accuracy on MedAD-38K and judges its reasoning's consistency; here every number is computed by
rules against our ground truth. Evaluate on the ``test`` split of the detection data only after every choice
(epochs, learning rates, reward weights) is made on other data.

Explained in notebooks/31_reasoning_grpo.ipynb.

Example::

    metrics, texts = evaluate_policy(policy, vqa_test)
    metrics["answer_accuracy"], metrics["consistency_rate"]

Defined in: notebooks/31_reasoning_grpo.ipynb
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..utils import get_device
from .format import region_cell
from .rewards import REWARD_WEIGHTS, score_outputs
from .vocab import QUESTION_TYPES, VOCAB
from .vqa import VQASet

METRIC_NAMES: tuple[str, ...] = ("answer_accuracy", "format_validity", "consistency_rate", "region_accuracy")


def reasoning_metrics(outputs: Sequence, answers: Sequence[Sequence[str]], qtypes: Sequence[str]) -> dict[str, float]:
    """All metrics for outputs (text, tokens or ids) against ground-truth answers and question type names."""
    br = score_outputs(outputs, answers, qtypes, REWARD_WEIGHTS)
    qtypes = np.asarray(list(qtypes))
    region_q = np.array([q == "region" and region_cell(a[0]) is not None for q, a in zip(qtypes, answers)], bool)
    out = {"answer_accuracy": float(br.exact.mean()) if len(qtypes) else float("nan"),
           "format_validity": float(br.format.mean()) if len(qtypes) else float("nan"),
           "consistency_rate": float(br.consistency.mean()) if len(qtypes) else float("nan"),
           "region_accuracy": float(br.exact[region_q].mean()) if region_q.any() else float("nan"),
           "mean_reward": float(br.total.mean()) if len(qtypes) else float("nan")}
    for q in QUESTION_TYPES:
        sel = qtypes == q
        out[f"acc_{q}"] = float(br.exact[sel].mean()) if sel.any() else float("nan")
    return out


@torch.no_grad()
def generate_outputs(policy, data: VQASet, batch_size: int = 512, greedy: bool = True, temperature: float = 1.0,
                     generator: torch.Generator | None = None, device: torch.device | str | None = None) -> list[str]:
    """Decoded outputs of ``policy`` for every question of ``data``, in order."""
    device = get_device() if device is None else torch.device(device)
    policy.to(device).eval()
    texts: list[str] = []
    for batch in data.batches(batch_size, device=device):
        gen = policy.generate(batch["image"], batch["qtype"], batch["map"], greedy=greedy, temperature=temperature,
                              generator=generator)
        texts.extend(VOCAB.decode(t) for t in gen.tokens.cpu())
    return texts


def evaluate_policy(policy, data: VQASet, batch_size: int = 512, device: torch.device | str | None = None,
                    ) -> tuple[dict[str, float], list[str]]:
    """Greedy decoding over the whole set, then ``reasoning_metrics``; returns (metrics, outputs)."""
    texts = generate_outputs(policy, data, batch_size, greedy=True, device=device)
    return reasoning_metrics(texts, data.answers, data.qtype_names), texts
