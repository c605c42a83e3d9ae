"""Rule-based rewards for think-then-answer outputs: format, answer correctness, consistency, and their sum.

MedAD-R1's second stage optimises the policy with rewards that check more than the final answer: the output
must follow the format, and the reasoning must agree with the answer (its "consistency-reinforced" policy
optimisation). Each reward here is a separate function returning a float in [0, 1]; ``total_reward`` is their
weighted sum (``REWARD_WEIGHTS``). All of them accept raw text (or tokens, or ids) or an already parsed
``ParsedOutput``, and none of them raises on malformed outputs: broken outputs simply earn 0 where they fail.

Hand-checkable examples (question ``region``, correct answer ``upper-left``)::

    T = "<think> modality: mri organ: brain finding: tumor region: upper-left size: small conclusion: abnormal </think>"
    format_reward(T + " <answer> upper-left </answer>", "region")                    # 1.0
    answer_reward(T + " <answer> upper-left </answer>", ["upper-left"], "region")    # 1.0
    answer_reward(T + " <answer> upper-center </answer>", ["upper-left"], "region")  # 0.5 (neighbour cell)
    consistency_reward(T + " <answer> upper-center </answer>", "region")             # 0.0 (think: upper-left)
    N = T.replace("tumor", "none")                                   # no finding, but a region and a size
    consistency_reward(N + " <answer> upper-left </answer>", "region")              # 0.0 (incoherent)

Explained in notebooks/30_reasoning_vqa_sft.ipynb (each reward by hand) and 31_reasoning_grpo.ipynb.

Defined in: notebooks/30_reasoning_vqa_sft.ipynb, notebooks/31_reasoning_grpo.ipynb
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from .format import ANSWER_FIELDS, ParsedOutput, parse_answer, parse_output, region_cell
from .vocab import FINDING_ORGANS, QUESTION_TYPES

# Weights of the total reward (ours: the answer matters most; format and consistency shape the reasoning).
REWARD_WEIGHTS: dict[str, float] = {"answer": 1.0, "format": 0.5, "consistency": 0.5}
# Credit for naming a grid cell next to (8-neighbourhood) the right one: a near miss is better than a far one.
REGION_PARTIAL = 0.5


def _parsed(output: Any, qtype: str) -> ParsedOutput:
    if isinstance(output, ParsedOutput):
        return output
    return parse_output(output, qtype)


def _check_qtype(qtype: str) -> None:
    if qtype not in ANSWER_FIELDS:
        raise ValueError(f"question type must be one of {QUESTION_TYPES}; got {qtype!r}")


def format_reward(output: Any, qtype: str) -> float:
    """1.0 if the output follows the documented format for this question, else 0.0.

    Format = the four tags present once and in order, nothing outside them, the six think fields each present
    once with an allowed value, and an answer block that answers ``qtype``
    (``format.parse_output(...).valid``).

    >>> format_reward("<think> modality: ct </think> <answer> yes </answer>", "abnormal")  # fields missing
    0.0
    """
    _check_qtype(qtype)
    return 1.0 if _parsed(output, qtype).valid else 0.0


def answer_reward(output: Any, target: Sequence[str], qtype: str, region_partial: float = REGION_PARTIAL) -> float:
    """Correctness of the answer block against the ground-truth answer tokens ``target``, in [0, 1].

    Fields are weighted equally within a question: ``organ`` questions score 0.5 for the organ and 0.5 for the
    modality; the others have one field. A region in a grid cell next to the right one earns
    ``region_partial``. An answer that cannot be parsed for ``qtype`` (missing, wrong length, a word that is no
    answer) earns 0. Only the answer block is read: the reasoning is judged by ``consistency_reward``.

    >>> answer_reward("<answer> brain ct </answer>", ["brain", "mri"], "organ")
    0.5
    """
    _check_qtype(qtype)
    truth, err = parse_answer(list(target), qtype)
    if err:
        raise ValueError(f"target {list(target)} is not an answer to {qtype!r}: {err}")
    p = _parsed(output, qtype)
    if p.answer is None:
        return 0.0
    got, err = parse_answer(p.answer, qtype)
    if err:
        return 0.0
    names = ANSWER_FIELDS[qtype]
    score = 0.0
    for name in names:
        if got[name] == truth[name]:
            score += 1.0
        elif name == "region":
            a, b = region_cell(got[name]), region_cell(truth[name])
            if a is not None and b is not None and max(abs(a[0] - b[0]), abs(a[1] - b[1])) == 1:
                score += region_partial
    return score / len(names)


def think_coherence(think: Mapping[str, str]) -> list[str]:
    """Reasons the reasoning contradicts itself (empty list = coherent). Needs all six fields.

    Rules: the conclusion is ``abnormal`` exactly when a finding is named; no finding means region and size
    ``none``; a finding has a region and a size (``unknown`` allowed); the finding must be one that can occur in
    the named organ (``vocab.FINDING_ORGANS``: no "hemorrhage" of the chest).
    """
    reasons = []
    finding = think["finding"]
    if (finding == "none") != (think["conclusion"] == "normal"):
        reasons.append(f"finding {finding!r} but conclusion {think['conclusion']!r}")
    if finding == "none":
        for key in ("region", "size"):
            if think[key] != "none":
                reasons.append(f"no finding but {key} {think[key]!r}")
    else:
        for key in ("region", "size"):
            if think[key] == "none":
                reasons.append(f"finding {finding!r} but {key} 'none'")
        if think["organ"] not in FINDING_ORGANS[finding]:
            reasons.append(f"{finding!r} is not a finding of the {think['organ']}")
    return reasons


def implied_answer(think: Mapping[str, str], qtype: str) -> list[str]:
    """The answer the reasoning commits to: ``abnormal`` -> yes iff a finding is named; ``organ`` -> organ
    and modality; ``region`` / ``size`` -> those fields."""
    _check_qtype(qtype)
    if qtype == "abnormal":
        return ["yes" if think["finding"] != "none" else "no"]
    if qtype == "organ":
        return [think["organ"], think["modality"]]
    return [think[qtype]]


def consistency_check(output: Any, qtype: str) -> tuple[bool, list[str]]:
    """(consistent?, reasons if not): the reasoning is complete, comes before the answer, is coherent, and
    implies the answer."""
    _check_qtype(qtype)
    p = _parsed(output, qtype)
    reasons = []
    if not p.think_complete:
        reasons.append("reasoning incomplete (missing " + " ".join(m for m in p.missing if m.endswith(":")) + ")")
    if p.answer is None:
        reasons.append("no answer block")
    elif not p.think_first:
        reasons.append("the reasoning does not come before the answer")
    elif parse_answer(p.answer, qtype)[1] is not None:
        reasons.append("answer does not answer the question")
    if reasons:
        return False, reasons
    reasons = think_coherence(p.think)
    expected = implied_answer(p.think, qtype)
    if list(p.answer) != expected:
        reasons.append(f"reasoning implies {' '.join(expected)!r} but the answer is {' '.join(p.answer)!r}")
    return not reasons, reasons


def consistency_reward(output: Any, qtype: str) -> float:
    """1.0 if the reasoning is coherent and implies the final answer, else 0.0 (see ``consistency_check``).

    It does not look at the ground truth: a wrong but consistent output scores 1 here and 0 in
    ``answer_reward``. Example: think says ``finding: none`` but the answer to "is it abnormal?" is ``yes``:

    >>> consistency_reward("<think> modality: ct organ: head finding: none region: none size: none "
    ...                    "conclusion: normal </think> <answer> yes </answer>", "abnormal")
    0.0
    """
    return 1.0 if consistency_check(output, qtype)[0] else 0.0


def total_reward(output: Any, target: Sequence[str], qtype: str,
                 weights: Mapping[str, float] = REWARD_WEIGHTS) -> float:
    """``w_answer * answer + w_format * format + w_consistency * consistency`` (weights: ``REWARD_WEIGHTS``)."""
    p = _parsed(output, qtype)
    return (weights["answer"] * answer_reward(p, target, qtype) + weights["format"] * format_reward(p, qtype)
            + weights["consistency"] * consistency_reward(p, qtype))


@dataclass
class RewardBreakdown:
    """Per-output rewards, each [N]; ``total`` is the weighted sum."""

    total: np.ndarray
    answer: np.ndarray
    format: np.ndarray
    consistency: np.ndarray
    exact: np.ndarray  # answer exactly right (every field), for accuracy metrics
    parsed: list[ParsedOutput]


def score_outputs(outputs: Sequence[Any], targets: Sequence[Sequence[str]], qtypes: Sequence[str],
                  weights: Mapping[str, float] = REWARD_WEIGHTS) -> RewardBreakdown:
    """All rewards for a list of outputs (parsed once each)."""
    if not len(outputs) == len(targets) == len(qtypes):
        raise ValueError(f"{len(outputs)} outputs, {len(targets)} targets and {len(qtypes)} question types")
    for key in ("answer", "format", "consistency"):
        if key not in weights:
            raise ValueError(f"weights must have keys answer, format, consistency; got {sorted(weights)}")
    parsed = [_parsed(o, q) for o, q in zip(outputs, qtypes)]
    ans = np.array([answer_reward(p, t, q) for p, t, q in zip(parsed, targets, qtypes)], np.float64)
    fmt = np.array([format_reward(p, q) for p, q in zip(parsed, qtypes)], np.float64)
    con = np.array([consistency_reward(p, q) for p, q in zip(parsed, qtypes)], np.float64)
    exact = np.array([p.answer is not None and list(p.answer) == list(t) for p, t in zip(parsed, targets)])
    total = weights["answer"] * ans + weights["format"] * fmt + weights["consistency"] * con
    return RewardBreakdown(total, ans, fmt, con, exact, parsed)
