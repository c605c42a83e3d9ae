"""The small closed vocabulary of the reasoning policy, the facts it talks about, and a word tokenizer.

MedAD-R1 (Zhang et al., "Eliciting Consistent Reasoning in Interpretable Medical Anomaly Detection via
Consistency-Reinforced Policy Optimization") fine-tunes a large multimodal model whose tokenizer covers all of
language. Our policy is tiny, so it speaks a closed language of 48 words: structural tags, field keys
(``region:``) and the values each field may take (a modality, an organ, a finding, a cell of a 3x3 grid, a
size class, yes/no). Every word is one token, so "tokenizing" is splitting on white space (tags glued to words,
``<think>modality:``, are split too), and an unknown word maps to ``<unk>`` instead of failing.

Explained in notebooks/30_reasoning_vqa_sft.ipynb.

Example::

    from medad_edu.reasoning.vocab import VOCAB
    ids = VOCAB.encode("<answer> yes </answer>", add_eos=True)   # [6, 46, 7, 2]
    VOCAB.decode(ids)                                            # '<answer> yes </answer>'

Defined in: notebooks/30_reasoning_vqa_sft.ipynb
"""
from __future__ import annotations

import re
from typing import Iterable, Sequence

import torch

# --- the facts -----------------------------------------------------------------------------------------------
# task name -> (organ, modality, finding named when the image is abnormal). The finding is the clinical finding
# the embedded phantom draws for that task (and the one the All-in-One paper's datasets are labelled with).
TASK_FACTS: dict[str, tuple[str, str, str]] = {
    "chest_xray": ("chest", "xray", "opacity"),       # RSNA: lung opacity (pneumonia)
    "brain_mri": ("brain", "mri", "tumor"),            # Brain Tumor MRI / BraTS
    "fundus": ("retina", "fundus-photo", "lesion"),   # retinal lesion (LAG: glaucomatous change)
    "breast_us": ("breast", "ultrasound", "mass"),     # BUSI: mass
    "head_ct": ("head", "ct", "hemorrhage"),           # HeadCT: intracranial haemorrhage
}
OTHER_FACTS = ("other", "other", "lesion")  # any task outside the five

ORGANS: tuple[str, ...] = ("chest", "brain", "retina", "breast", "head", "other")
MODALITIES: tuple[str, ...] = ("xray", "mri", "fundus-photo", "ultrasound", "ct", "other")
FINDINGS: tuple[str, ...] = ("opacity", "tumor", "lesion", "mass", "hemorrhage", "none")
# Which organs a finding can be named for (used by the consistency check: "hemorrhage" of the chest is incoherent).
FINDING_ORGANS: dict[str, tuple[str, ...]] = {
    "opacity": ("chest",), "tumor": ("brain", "head"), "mass": ("breast", "chest"),
    "hemorrhage": ("head", "brain", "retina"), "lesion": ORGANS,
}
# The 3x3 region grid, row-major from the top-left of the image.
GRID_NAMES: tuple[str, ...] = ("upper-left", "upper-center", "upper-right",
                               "middle-left", "center", "middle-right",
                               "lower-left", "lower-center", "lower-right")
REGIONS: tuple[str, ...] = GRID_NAMES + ("none", "unknown")  # unknown: abnormal image without a mask
SIZES: tuple[str, ...] = ("small", "medium", "large", "none", "unknown")
CONCLUSIONS: tuple[str, ...] = ("normal", "abnormal")
YES_NO: tuple[str, ...] = ("yes", "no")

# --- the questions -------------------------------------------------------------------------------------------
QUESTION_TYPES: tuple[str, ...] = ("abnormal", "organ", "region", "size")
QUESTIONS: dict[str, str] = {
    "abnormal": "Is this image abnormal?",
    "organ": "Which organ and imaging modality is this?",
    "region": "Where is the finding (3x3 grid)?",
    "size": "How large is the finding?",
}

# --- the tokens ----------------------------------------------------------------------------------------------
PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE = "<think>", "</think>", "<answer>", "</answer>"
SPECIALS: tuple[str, ...] = (PAD, BOS, EOS, UNK)
TAGS: tuple[str, ...] = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)
THINK_KEYS: tuple[str, ...] = ("modality", "organ", "finding", "region", "size", "conclusion")
THINK_VALUES: dict[str, tuple[str, ...]] = {"modality": MODALITIES, "organ": ORGANS, "finding": FINDINGS,
                                            "region": REGIONS, "size": SIZES, "conclusion": CONCLUSIONS}

_TOKEN_RE = re.compile(r"</?[A-Za-z]+>|[^\s<]+|<")


def tokenize(text: str) -> list[str]:
    """Split on white space, and split tags off glued words: ``"<think>modality:"`` -> two tokens."""
    return _TOKEN_RE.findall(text)


def task_facts(task_name: str) -> tuple[str, str, str]:
    """(organ, modality, finding) of a task name or a known dataset alias (``rsna`` -> chest X-ray)."""
    if task_name in TASK_FACTS:
        return TASK_FACTS[task_name]
    from ..data.tasks import TASK_ALIASES

    key = "".join(ch for ch in task_name.lower() if ch.isalnum())
    canonical = TASK_ALIASES.get(key)
    return TASK_FACTS.get(canonical, OTHER_FACTS) if canonical else OTHER_FACTS


class Vocab:
    """Token <-> id. Ids 0..3 are ``<pad> <bos> <eos> <unk>``; unknown words encode to ``<unk>``."""

    def __init__(self, words: Iterable[str]):
        tokens: list[str] = []
        for w in (*SPECIALS, *words):
            if w not in tokens:
                tokens.append(w)
        self.tokens = tokens
        self.index = {t: i for i, t in enumerate(tokens)}
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = (self.index[t] for t in SPECIALS)

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: str) -> bool:
        return token in self.index

    def encode(self, text: str | Sequence[str], add_bos: bool = False, add_eos: bool = False) -> list[int]:
        words = tokenize(text) if isinstance(text, str) else list(text)
        ids = [self.index.get(w, self.unk_id) for w in words]
        return ([self.bos_id] if add_bos else []) + ids + ([self.eos_id] if add_eos else [])

    def decode(self, ids: Iterable[int] | torch.Tensor, stop_at_eos: bool = True, skip_pad: bool = True) -> str:
        """Ids to text; stops at the first ``<eos>``; ids out of range become ``<unk>`` (never raises)."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        words = []
        for i in ids:
            i = int(i)
            if stop_at_eos and i == self.eos_id:
                break
            if skip_pad and i == self.pad_id:
                continue
            words.append(self.tokens[i] if 0 <= i < len(self.tokens) else UNK)
        return " ".join(words)

    def encode_batch(self, texts: Sequence[str], max_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Texts -> (ids [N, T] with ``<eos>`` appended and ``<pad>`` after it, lengths [N] counting ``<eos>``)."""
        seqs = [self.encode(t, add_eos=True) for t in texts]
        longest = max((len(s) for s in seqs), default=1)
        max_len = longest if max_len is None else max_len
        if longest > max_len:
            raise ValueError(f"a sequence has {longest} tokens, more than max_len={max_len}")
        out = torch.full((len(seqs), max_len), self.pad_id, dtype=torch.long)
        for i, s in enumerate(seqs):
            out[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        return out, torch.tensor([len(s) for s in seqs], dtype=torch.long)


def _all_words() -> list[str]:
    words = [*TAGS, *(k + ":" for k in THINK_KEYS)]
    for values in (MODALITIES, ORGANS, FINDINGS, REGIONS, SIZES, CONCLUSIONS, YES_NO):
        words.extend(values)
    return words


VOCAB = Vocab(_all_words())
