"""A visual-question-answering set built from our anomaly-detection data, with reference chains of thought.

MedAD-R1 trains and evaluates on MedAD-38K: 38K structured VQA pairs over medical images, each with a
diagnostic chain of thought. We build the same kind of set from any ``MultiTaskData`` split, entirely from the
ground truth:

- the task gives the organ, the modality and the name of the finding (``vocab.TASK_FACTS``);
- the label says whether there is a finding at all (normal images: finding, region and size are ``none``);
- the mask gives the region, the cell of a 3x3 grid (upper-left ... lower-right) holding the largest share of
  the mask's pixels (``mask_regions``), and the size class from the mask's area fraction (``size_classes``);
  an abnormal image without a mask gets ``unknown`` and no region / size questions.

Each image yields up to four questions (``abnormal organ region size``), all sharing the image's reference
reasoning and each with its own answer (``format.reference_output``). Optionally a trained detector's anomaly
map (``predict_split(model, data, split).maps``, same order as ``split_tensors``) rides along as a second input
channel for the policy, normalised by a scale taken from *training* maps (``map_scale``), never from the split
being evaluated.

Explained in notebooks/30_reasoning_vqa_sft.ipynb.

Example::

    from medad_edu.data import load_data
    from medad_edu.reasoning.vqa import build_vqa_set
    data = load_data("embedded", image_size=32, sizes="tiny")
    vqa = build_vqa_set(data, "valid")
    vqa.questions[0], vqa.references[0]

Defined in: notebooks/30_reasoning_vqa_sft.ipynb
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from ..data.batches import split_tensors
from ..data.tasks import MultiTaskData
from .format import answer_tokens, reference_output
from .vocab import GRID_NAMES, QUESTION_TYPES, QUESTIONS, VOCAB, task_facts

# Area fraction of the image covered by the mask: < 0.6% small, < 1.5% medium, else large: roughly the tertiles
# of the embedded phantoms' lesions (measured on a data seed we never evaluate on), so all three classes occur.
SIZE_THRESHOLDS: tuple[float, float] = (0.006, 0.015)
MAX_LEN = 24  # longest output in tokens: 14 think + 4 answer + <eos> = 19, with room to spare


def mask_regions(masks: np.ndarray, grid: int = 3) -> np.ndarray:
    """Index of the grid cell (row-major, 0 = upper-left) holding most mask pixels; -1 for an empty mask.

    ``masks`` [N, H, W]. Row ``y`` belongs to grid row ``y * grid // H`` (so 32 px rows split 11/11/10).
    Ties go to the first cell in row-major order.
    """
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be [N, H, W]; got shape {masks.shape}")
    n, h, w = masks.shape
    rows = np.arange(h) * grid // h
    cols = np.arange(w) * grid // w
    onehot_r = np.eye(grid)[rows]  # [H, grid]
    onehot_c = np.eye(grid)[cols]  # [W, grid]
    per_cell = np.einsum("nhw,hr,wc->nrc", (masks > 0).astype(np.float64), onehot_r, onehot_c).reshape(n, -1)
    out = per_cell.argmax(1)
    out[per_cell.sum(1) == 0] = -1
    return out


def size_classes(masks: np.ndarray, thresholds: tuple[float, float] = SIZE_THRESHOLDS) -> np.ndarray:
    """Mask area fraction -> 0 small, 1 medium, 2 large; -1 for an empty mask."""
    lo, hi = thresholds
    if not 0 < lo < hi < 1:
        raise ValueError(f"size thresholds must satisfy 0 < small < large < 1; got {thresholds}")
    frac = (np.asarray(masks) > 0).reshape(len(masks), -1).mean(1)
    out = np.where(frac < lo, 0, np.where(frac < hi, 1, 2))
    out[frac == 0] = -1
    return out


def image_facts(task_names: Sequence[str], labels: np.ndarray, masks: np.ndarray | None,
                has_mask: np.ndarray | None = None, size_thresholds: tuple[float, float] = SIZE_THRESHOLDS,
                ) -> list[dict[str, str]]:
    """Ground-truth facts per image: modality, organ, finding, region, size, conclusion (all vocabulary words)."""
    n = len(labels)
    if masks is None:
        regions, sizes, has_mask = np.full(n, -1), np.full(n, -1), np.zeros(n, bool)
    else:
        regions, sizes = mask_regions(masks), size_classes(masks, size_thresholds)
        has_mask = np.ones(n, bool) if has_mask is None else np.asarray(has_mask, bool)
    size_names = ("small", "medium", "large")
    out = []
    for name, lab, reg, siz, hm in zip(task_names, np.asarray(labels), regions, sizes, has_mask):
        organ, modality, finding = task_facts(name)
        if not lab:
            f = {"finding": "none", "region": "none", "size": "none", "conclusion": "normal"}
        elif hm and reg >= 0:
            f = {"finding": finding, "region": GRID_NAMES[reg], "size": size_names[siz], "conclusion": "abnormal"}
        else:  # abnormal but no (or an empty) mask: where and how large are not known
            f = {"finding": finding, "region": "unknown", "size": "unknown", "conclusion": "abnormal"}
        out.append({"modality": modality, "organ": organ, **f})
    return out


def map_scale(reference_maps: np.ndarray, q: float = 0.99) -> float:
    """Scale for anomaly maps: the ``q`` quantile of maps on reference (training, normal) images."""
    s = float(np.quantile(np.asarray(reference_maps, np.float64), q))
    if not np.isfinite(s) or s <= 0:
        raise ValueError(f"reference maps give a non-positive scale {s}; are they all zero?")
    return s


@dataclass
class VQASet:
    """Questions over a split. Images are stored once; question ``k`` reads image ``image_index[k]``."""

    images: torch.Tensor  # [N, 1, S, S] float32 in [0, 1]
    maps: torch.Tensor | None  # [N, 1, S, S] normalised anomaly maps, or None
    facts: list[dict[str, str]]  # per image (ground truth)
    task_ids: torch.Tensor  # [N]
    image_index: torch.Tensor  # [M] image of each question
    qtypes: torch.Tensor  # [M] index into QUESTION_TYPES
    tokens: torch.Tensor  # [M, MAX_LEN] reference output ids, <eos> then <pad>
    lengths: torch.Tensor  # [M] tokens up to and including <eos>
    answers: list[list[str]]  # [M] correct answer tokens
    task_names: list[str]

    def __len__(self) -> int:
        return len(self.qtypes)

    @property
    def questions(self) -> list[str]:
        return [QUESTIONS[QUESTION_TYPES[q]] for q in self.qtypes.tolist()]

    @property
    def qtype_names(self) -> list[str]:
        return [QUESTION_TYPES[q] for q in self.qtypes.tolist()]

    @property
    def references(self) -> list[str]:
        return [VOCAB.decode(t) for t in self.tokens]

    def select(self, index: torch.Tensor | Sequence[int]) -> "VQASet":
        """A subset of the questions (images are shared)."""
        index = torch.as_tensor(index, dtype=torch.long)
        return VQASet(self.images, self.maps, self.facts, self.task_ids, self.image_index[index], self.qtypes[index],
                      self.tokens[index], self.lengths[index], [self.answers[i] for i in index.tolist()],
                      self.task_names)

    def batch(self, index: torch.Tensor, device: torch.device | str = "cpu") -> dict:
        img = self.image_index[index]
        longest = int(self.lengths[index].max()) if len(index) else 1  # no compute on all-padding columns
        return {"image": self.images[img].to(device),
                "map": None if self.maps is None else self.maps[img].to(device),
                "qtype": self.qtypes[index].to(device), "tokens": self.tokens[index, :longest].to(device),
                "lengths": self.lengths[index].to(device), "index": index}

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
                device: torch.device | str = "cpu") -> Iterator[dict]:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        for start in range(0, len(self), batch_size):
            yield self.batch(order[start:start + batch_size], device)


def build_vqa_set(data: MultiTaskData, split: str, anomaly_maps: np.ndarray | torch.Tensor | None = None,
                  scale: float | None = None, question_types: Sequence[str] = QUESTION_TYPES,
                  size_thresholds: tuple[float, float] = SIZE_THRESHOLDS) -> VQASet:
    """Questions and reference chains for every image of ``split`` (``train``, ``valid`` or ``test``).

    ``anomaly_maps`` [N, S, S] (or [N, 1, S, S]) in ``split_tensors`` order, e.g.
    ``predict_split(model, data, split).maps``; divided by ``scale`` (``map_scale`` of the detector's maps on
    its *training* images) and clipped to [0, 4]. Without ``scale`` each map is divided by its own maximum
    (uses nothing but that image).
    """
    unknown = [q for q in question_types if q not in QUESTION_TYPES]
    if unknown or not question_types:
        raise ValueError(f"question types must be a non-empty subset of {QUESTION_TYPES}; got {list(question_types)}")
    t = split_tensors(data, split)
    n = len(t)
    names = [data.tasks[i].name for i in t.task_ids.tolist()]
    facts = image_facts(names, t.labels.numpy(), t.masks[:, 0].numpy(), t.has_mask.numpy(), size_thresholds)
    maps = None
    if anomaly_maps is not None:
        maps = torch.as_tensor(np.asarray(anomaly_maps), dtype=torch.float32)
        if maps.ndim == 3:
            maps = maps[:, None]
        if maps.shape != t.images.shape:
            raise ValueError(f"anomaly_maps must have shape {tuple(t.images.shape)} (or without the channel axis), "
                             f"in split_tensors order; got {tuple(maps.shape)}")
        if scale is not None:
            if not scale > 0:
                raise ValueError(f"scale must be > 0; got {scale}")
            maps = (maps / scale).clamp(0, 4)
        else:
            maps = maps / maps.flatten(1).amax(1).clamp_min(1e-12)[:, None, None, None]
    img_idx, qtypes, outputs, answers = [], [], [], []
    for i, f in enumerate(facts):
        for q in question_types:
            if q in ("region", "size") and f["region"] == "unknown":
                continue  # no mask: we cannot say where or how large, so we do not ask
            img_idx.append(i)
            qtypes.append(QUESTION_TYPES.index(q))
            outputs.append(reference_output(f, q))
            answers.append(answer_tokens(f, q))
    tokens, lengths = VOCAB.encode_batch(outputs, MAX_LEN)
    return VQASet(t.images, maps, facts, t.task_ids.clone(), torch.tensor(img_idx, dtype=torch.long),
                  torch.tensor(qtypes, dtype=torch.long), tokens, lengths, answers, list(data.task_names))


def concat_vqa_sets(sets: Sequence[VQASet]) -> VQASet:
    """Join several sets (e.g. the valid and test splits of a separate labelled data seed) into one."""
    if not sets:
        raise ValueError("concat_vqa_sets needs at least one set")
    if len({s.maps is None for s in sets}) != 1:
        raise ValueError("either all sets carry anomaly maps or none does")
    if any(s.task_names != sets[0].task_names for s in sets):
        raise ValueError("all sets must have the same tasks in the same order (task ids index into them)")
    offsets = np.cumsum([0] + [len(s.images) for s in sets[:-1]])
    return VQASet(
        images=torch.cat([s.images for s in sets]),
        maps=None if sets[0].maps is None else torch.cat([s.maps for s in sets]),
        facts=[f for s in sets for f in s.facts], task_ids=torch.cat([s.task_ids for s in sets]),
        image_index=torch.cat([s.image_index + int(o) for s, o in zip(sets, offsets)]),
        qtypes=torch.cat([s.qtypes for s in sets]), tokens=torch.cat([s.tokens for s in sets]),
        lengths=torch.cat([s.lengths for s in sets]), answers=[a for s in sets for a in s.answers],
        task_names=list(sets[0].task_names))
