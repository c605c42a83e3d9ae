"""Score normalisation and fusion: turning six failure scores on six scales into one anomaly score.

Each proxy task fails in its own unit (a squared error, a cross-entropy, a probability), and its failures on
*normal* images differ by organ (a noisy ultrasound is harder to denoise than a smooth CT). Before fusing, every
task's score is therefore compared with the same task's scores on held-out normal images of the same organ
(the validation split's normal images, else the training images; never test images):

- ``zscore``: ``z = (s - mean) / std``;
- ``robust``: ``z = (s - median) / (1.4826 * MAD)`` (insensitive to a few odd normal images);
- ``rank``: the mid-rank percentile of ``s`` among the reference scores,
  ``p = (#{r < s} + 0.5 * #{r == s}) / n`` in [0, 1].

The fused image score is the mean of the normalised scores over the tasks. Per-pixel failure maps are
normalised with the mean and standard deviation of the task's map pixels on the same normal images and
averaged into one anomaly map; the fourth rule,

- ``map``: the image score is the mean of the top 1 % pixels of that fused map (only tasks with a map vote),

uses that map: lesions are small, and failures of several tasks at the same place add up there instead of being
diluted by the whole image; and the fifth (the default),

- ``weighted``: a *weighted* mean of the z-scores, ``sum_t w_gt z_t`` with weights fitted per organ ``g`` by
  ``fit_weights`` on pseudo-anomalies: the held-out normal images and synthetic anomalies made from them
  (never test images, no labels). A task's weight is ``max(AUROC_gt - 0.5, 0) ** power`` (normalised to sum
  to 1), with ``AUROC_gt`` how well the task's failure score separates the pseudo-anomalies from the clean
  images. Why: a plain mean gives a task that fails at random on an organ (AUROC ~ 0.5) the same vote as one
  that detects; its noise then dilutes the good tasks. With all weights at 0 the organ falls back to the plain
  mean. SSMTL (Georgescu et al., CVPR 2021) averages raw per-task scores; normalising on
normal data first is this project's design. Built by hand and compared in
notebooks/22_mtl_scoring.ipynb.

Statistics are kept per organ (the data set's task id: ``task_ids`` elsewhere, ``organs`` here) and for all
organs pooled (the last row, used for an organ with fewer than two reference images and when no organ is given).
"Task" in this module always means a *proxy* task. They are registered buffers, so a
checkpoint restores them. Reference scores for rank fusion are stored as up to ``max_reference`` quantiles,
padded with ``+inf``.

Example::

    norm = ScoreNormalizer(num_organs=5, num_proxy_tasks=6)
    norm.fit(valid_scores, valid_organs)                 # [N, 6] raw scores of normal images, [N] organ ids
    fused = norm.fuse(test_scores, test_organs, "rank")  # [M]
    norm.fit_weights(valid_scores, pseudo_scores, valid_organs, pseudo_organs)  # for fusion "weighted"

Defined in: notebooks/22_mtl_scoring.ipynb
"""
from __future__ import annotations

import torch
from torch import nn

from ...ranking import RankCounts

FUSIONS: tuple[str, ...] = ("zscore", "robust", "rank", "map", "weighted")
MAD_TO_STD = 1.4826  # MAD of a normal distribution times this = its standard deviation


def check_fusion(name: str) -> str:
    if name not in FUSIONS:
        raise ValueError(f"fusion must be one of {list(FUSIONS)}; got {name!r}")
    return name


def pairwise_auroc(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """AUROC per column (Mann-Whitney, ties count 1/2): ``positive`` [P, T] vs ``negative`` [N, T] -> [T]."""
    if len(positive) == 0 or len(negative) == 0:
        return torch.full((positive.shape[1],), 0.5)
    pos, neg = (t.detach().cpu().float().numpy() if t.dtype == torch.bfloat16 else t.detach().cpu().numpy()
                for t in (positive, negative))  # bfloat16 has no numpy type; to float32 is exact
    # U is a multiple of 1/2, exact in float32; dividing in float32 gives the float32 mean of the pairwise wins
    u = torch.tensor([RankCounts(pos[:, t], neg[:, t]).twice_u() / 2 for t in range(pos.shape[1])],
                     dtype=torch.float32)
    return u.div_(len(positive) * len(negative)).to(positive.device)


def auroc_weights(auroc: torch.Tensor, power: float = 2.0) -> torch.Tensor:
    """``max(auroc - 0.5, 0) ** power``, normalised over the last dim; uniform where all are 0."""
    w = (auroc - 0.5).clamp_min(0) ** power
    total = w.sum(-1, keepdim=True)
    uniform = torch.full_like(w, 1.0 / w.shape[-1])
    return torch.where(total > 0, w / total.clamp_min(1e-12), uniform)


def mid_rank_percentile(reference_sorted: torch.Tensor, count: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """``(#{r < s} + 0.5 #{r == s}) / n`` for each score; ``reference_sorted`` ``[..., M]`` padded with +inf.

    ``reference_sorted`` and ``scores`` share leading dims (``scores`` is ``[..., K]``); ``count`` is ``[...]``.
    """
    less = torch.searchsorted(reference_sorted.contiguous(), scores.contiguous(), right=False)
    less_eq = torch.searchsorted(reference_sorted.contiguous(), scores.contiguous(), right=True)
    n = count.clamp_min(1).unsqueeze(-1).to(scores.dtype)
    return (less + less_eq).to(scores.dtype) / (2 * n)


class ScoreNormalizer(nn.Module):
    """Per-organ statistics of the proxy tasks' failure scores on normal images, and the fusion rules.

    ``num_organs``: how many organs (the data set's tasks, indexed by ``task_ids``); ``num_proxy_tasks``: how many
    proxy tasks (columns T of the scores); ``num_map_tasks``: how many of them have a failure map (Tm). Buffers
    are ``[organs + 1 (pooled), proxy tasks, ...]``.
    """

    def __init__(self, num_organs: int, num_proxy_tasks: int, num_map_tasks: int = 0, max_reference: int = 256):
        super().__init__()
        if num_organs < 1 or num_proxy_tasks < 1:
            raise ValueError(f"need num_organs >= 1 and num_proxy_tasks >= 1; got {num_organs}, {num_proxy_tasks}")
        if max_reference < 2:
            raise ValueError(f"max_reference must be >= 2; got {max_reference}")
        g, t = num_organs + 1, num_proxy_tasks  # + the pooled row
        self.num_organs, self.num_proxy_tasks, self.num_map_tasks = num_organs, num_proxy_tasks, num_map_tasks
        self.max_reference = max_reference
        self.register_buffer("mean", torch.zeros(g, t))
        self.register_buffer("std", torch.ones(g, t))
        self.register_buffer("median", torch.zeros(g, t))
        self.register_buffer("mad", torch.ones(g, t))
        self.register_buffer("reference", torch.full((g, t, max_reference), float("inf")))
        self.register_buffer("count", torch.zeros(g, t, dtype=torch.long))
        self.register_buffer("map_mean", torch.zeros(g, max(num_map_tasks, 1)))
        self.register_buffer("map_std", torch.ones(g, max(num_map_tasks, 1)))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        # proxy-task weights of the ``weighted`` fusion (uniform until ``fit_weights``) and the pseudo-anomaly AUROCs
        self.register_buffer("weights", torch.full((g, t), 1.0 / t))
        self.register_buffer("pseudo_auroc", torch.full((g, t), 0.5))

    # --- fitting -----------------------------------------------------------------------------------------------
    def _rows(self, organs: torch.Tensor) -> list[torch.Tensor]:
        """Boolean selectors of the reference images for each row (each organ, then all organs pooled)."""
        return [organs == organ for organ in range(self.num_organs)] + [torch.ones_like(organs, dtype=torch.bool)]

    @torch.no_grad()
    def fit(self, scores: torch.Tensor, organs: torch.Tensor, map_mean: torch.Tensor | None = None,
            map_sq_mean: torch.Tensor | None = None, eps: float = 1e-6) -> "ScoreNormalizer":
        """Fit on normal images: ``scores`` [N, T] raw; ``organs`` [N] in [0, G); optional per-image pixel
        means ``map_mean`` and means of squares ``map_sq_mean`` [N, Tm] of the failure maps."""
        scores, organs = scores.float().cpu(), organs.long().cpu()
        if scores.ndim != 2 or scores.shape[1] != self.num_proxy_tasks or organs.shape != (len(scores),):
            raise ValueError(f"scores must be [N, {self.num_proxy_tasks}] and organs [N]; got {tuple(scores.shape)}, "
                             f"{tuple(organs.shape)}")
        if len(scores) < 2:
            raise ValueError(f"need at least 2 normal reference images to fit the normalisation; got {len(scores)}")
        if organs.min() < 0 or organs.max() >= self.num_organs:
            raise ValueError(f"organs must be in [0, {self.num_organs}); got {organs.unique().tolist()}")
        rows = self._rows(organs)
        pooled = rows[-1]
        m = self.max_reference
        for row, sel in enumerate(rows):
            if int(sel.sum()) < 2:  # too few references of this organ: use all organs pooled
                sel = pooled
            s = scores[sel]
            self.mean[row] = s.mean(0)
            self.std[row] = s.std(0, unbiased=False).clamp_min(eps)
            med = s.median(0).values
            self.median[row] = med
            self.mad[row] = (MAD_TO_STD * (s - med).abs().median(0).values).clamp_min(eps)
            ref = s.sort(0).values.T  # [T, n]
            if ref.shape[1] > m:  # keep m evenly spaced quantiles
                ref = torch.quantile(ref, torch.linspace(0, 1, m), dim=1).T
            self.reference[row] = float("inf")
            self.reference[row, :, :ref.shape[1]] = ref
            self.count[row] = ref.shape[1]
            if map_mean is not None and self.num_map_tasks:
                mu = map_mean.float().cpu()[sel].mean(0)
                sq = map_sq_mean.float().cpu()[sel].mean(0)
                self.map_mean[row] = mu
                self.map_std[row] = (sq - mu ** 2).clamp_min(0).sqrt().clamp_min(eps)
        self.fitted.fill_(True)
        return self

    @torch.no_grad()
    def fit_weights(self, clean: torch.Tensor, pseudo: torch.Tensor, clean_organs: torch.Tensor,
                    pseudo_organs: torch.Tensor, power: float = 2.0) -> torch.Tensor:
        """Weights of the ``weighted`` fusion from raw scores of normal images ``clean`` [N, T] and of pseudo-
        anomalies made from them ``pseudo`` [M, T] (organs [N], [M]); per organ, then all pooled (last row).
        Returns the weights ``[G+1, T]``."""
        if power <= 0:
            raise ValueError(f"power must be > 0; got {power}")
        clean, pseudo = clean.float().cpu(), pseudo.float().cpu()
        co, po = clean_organs.long().cpu(), pseudo_organs.long().cpu()
        if clean.shape[1] != self.num_proxy_tasks or pseudo.shape[1] != self.num_proxy_tasks:
            raise ValueError(f"scores must have {self.num_proxy_tasks} columns; got {tuple(clean.shape)}, "
                             f"{tuple(pseudo.shape)}")
        c_rows, p_rows = self._rows(co), self._rows(po)
        for row, (cs, ps) in enumerate(zip(c_rows, p_rows)):
            if int(cs.sum()) < 2 or int(ps.sum()) < 2:  # too few images of this organ: all organs pooled
                cs, ps = c_rows[-1], p_rows[-1]
            self.pseudo_auroc[row] = pairwise_auroc(pseudo[ps], clean[cs])
        self.weights.copy_(auroc_weights(self.pseudo_auroc, power))
        return self.weights

    # --- applying ----------------------------------------------------------------------------------------------
    def _row(self, organs: torch.Tensor | None, n: int, device) -> torch.Tensor:
        if organs is None:
            return torch.full((n,), self.num_organs, dtype=torch.long, device=device)
        return organs.long().to(device)

    def normalize(self, scores: torch.Tensor, organs: torch.Tensor | None, method: str = "zscore") -> torch.Tensor:
        """Normalised scores ``[B, T]`` (z-scores, robust z-scores or percentiles; ``map``, ``weighted`` ->
        z-scores)."""
        check_fusion(method)
        row = self._row(organs, len(scores), scores.device)
        if method in ("zscore", "map", "weighted"):
            return (scores - self.mean[row]) / self.std[row]
        if method == "robust":
            return (scores - self.median[row]) / self.mad[row]
        return mid_rank_percentile(self.reference[row], self.count[row], scores.unsqueeze(-1)).squeeze(-1)

    def fuse(self, scores: torch.Tensor, organs: torch.Tensor | None, method: str = "zscore") -> torch.Tensor:
        """One score per image: the mean of the normalised proxy-task scores, for ``weighted`` their weighted sum with
        the organ's weights (for ``map`` use ``fuse_map``)."""
        if method == "map":
            raise ValueError("fusion 'map' scores the fused anomaly map: use fuse_map(maps, organs)")
        norm = self.normalize(scores, organs, method)
        if method == "weighted":
            return (norm * self.weights[self._row(organs, len(scores), scores.device)]).sum(1)
        return norm.mean(1)

    def fuse_map(self, maps: torch.Tensor, organs: torch.Tensor | None,
                 top_fraction: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
        """``(fused map [B,1,H,W], image score [B])``: mean of the pixel-normalised maps, then the mean of its
        ``top_fraction`` highest pixels."""
        fused = self.normalize_maps(maps, organs).mean(1, keepdim=True)
        flat = fused.flatten(1)
        k = max(1, int(round(top_fraction * flat.shape[1])))
        return fused, flat.topk(k, dim=1).values.mean(1)

    def normalize_maps(self, maps: torch.Tensor, organs: torch.Tensor | None) -> torch.Tensor:
        """``[B, Tm, H, W]`` maps -> pixel z-scores with the per-(organ, proxy task) pixel statistics."""
        row = self._row(organs, len(maps), maps.device)
        return (maps - self.map_mean[row][:, :, None, None]) / self.map_std[row][:, :, None, None]


__all__ = ["FUSIONS", "MAD_TO_STD", "ScoreNormalizer", "auroc_weights", "check_fusion", "mid_rank_percentile",
           "pairwise_auroc"]
