"""Exact rank counting of two-class scores: the one AUROC primitive of the package, and the counts behind it.

The AUROC is the probability that a random abnormal sample scores higher than a random normal one, tied pairs
counting one half (Mann-Whitney U / (P N), identical to ``sklearn.metrics.roc_auc_score``). It is counted
exactly: the normal scores are sorted once, the abnormal ones located in them with ``np.searchsorted``, and the
counts combined in integers. ``RankCounts`` also gives average precision, F1-max and the partial weighted area
of the PRO curve from the same counts. Below the models on purpose: the metrics (``medad_edu.evaluation``),
the MTL fusion weights (``medad_edu.models.mtl.fusion``), the training thresholds and the ROC plots all use it.

Defined in: notebooks/02_metrics.ipynb
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np


class RankCounts:
    """Counts of a two-class score set at every distinct abnormal score ``u`` (ascending).

    ``neg`` (normal scores) is sorted once; the abnormal scores are sorted and grouped by value. For each
    distinct abnormal value ``u``: ``cnt`` abnormal samples equal ``u``, ``tp`` abnormal samples are ``>= u``,
    ``neg_lt`` / ``neg_eq`` normal samples are ``< u`` / ``== u``. Every threshold that can maximise F1, and every
    step of the ROC, PR and PRO curves along the recall axis, is one of these values.
    """

    def __init__(self, pos: np.ndarray, neg: np.ndarray, pos_weights: Optional[np.ndarray] = None):
        neg = np.sort(neg)  # ascending copy
        if pos_weights is None:
            order = None
            pos = np.sort(pos)
        else:
            order = np.argsort(pos, kind="stable")
            pos = pos[order]
        self.neg = neg
        self.n_pos = int(pos.size)
        self.n_neg = int(neg.size)
        if self.n_pos:
            starts = np.flatnonzero(np.r_[True, pos[1:] != pos[:-1]])
            self.u = pos[starts]
            self.cnt = np.diff(np.r_[starts, pos.size]).astype(np.int64)
            self.tp = self.n_pos - starts.astype(np.int64)
            left = np.searchsorted(neg, self.u, side="left").astype(np.int64)
            right = np.searchsorted(neg, self.u, side="right").astype(np.int64)
            self.neg_lt = left
            self.neg_eq = right - left
            self.fp = self.n_neg - left
            self.w = None if order is None else np.add.reduceat(pos_weights[order], starts)
        else:
            self.u = pos
            self.cnt = self.tp = self.neg_lt = self.neg_eq = self.fp = np.zeros(0, np.int64)
            self.w = None

    def twice_u(self) -> int:
        """Twice the Mann-Whitney U: over abnormal samples, 2 x #normal below + #normal tied (exact integer)."""
        return int(np.sum(self.cnt * (2 * self.neg_lt + self.neg_eq), dtype=np.int64))

    def auroc(self) -> float:
        # Mann-Whitney: sum over abnormal samples of (#normal below + 1/2 #normal tied), exact in integers.
        return self.twice_u() / (2.0 * self.n_pos * self.n_neg)

    def average_precision(self) -> float:
        # sum over thresholds of (recall step) * precision; recall only steps at abnormal values.
        precision = self.tp / (self.tp + self.fp)
        return float(np.sum(self.cnt * precision) / self.n_pos)

    def f1_max(self) -> tuple[float, float]:
        # F1 = 2TP / (2TP + FP + FN) = 2TP / (TP + FP + P); equal ratios of integers give equal floats, so ties
        # are exact; np.argmax picks the first = lowest threshold among ties.
        f1 = 2.0 * self.tp / (self.tp + self.fp + self.n_pos)
        i = int(np.argmax(f1))
        return float(f1[i]), float(self.u[i])

    def partial_weighted_auc(self, fpr_limit: float) -> float:
        """Area under (FPR, sum of weights of abnormal samples >= t) up to ``fpr_limit``, divided by it.

        The curve is piecewise linear through the points of all distinct thresholds, starting at (0, 0), as a
        trapezoidal ROC; at ``fpr_limit`` it is interpolated linearly.
        """
        n = self.n_neg
        w = self.w
        m = min(int(math.floor(fpr_limit * n)), n)
        if m >= n:  # the whole curve is inside the limit
            area = float(np.sum(w * (self.neg_lt + 0.5 * self.neg_eq))) / n
            return area / fpr_limit
        # t*: the highest threshold whose FPR exceeds the limit (the (m+1)-th largest normal score).
        t_star = self.neg[n - 1 - m]
        n_le = int(np.searchsorted(self.neg, t_star, side="right"))  # normals <= t*
        n_lt = int(np.searchsorted(self.neg, t_star, side="left"))  # normals < t*
        a = (n - n_le) / n  # FPR just above t*
        b = (n - n_lt) / n  # FPR at t*  (> fpr_limit)
        above = self.u > t_star
        # each abnormal value u > t* keeps its weight for the normals in (t*, u) and half of those tied with u
        width = (self.neg_lt[above] - n_le) + 0.5 * self.neg_eq[above]
        area = float(np.sum(w[above] * width)) / n
        # the segment of the tie group at t*, from FPR a (height p_a) to b (height p_a + dp), cut at fpr_limit
        p_a = float(np.sum(w[above]))
        dp = float(np.sum(w[self.u == t_star]))
        x = min(max(fpr_limit - a, 0.0), b - a)
        area += x * p_a + dp * x * x / (2.0 * (b - a))
        return area / fpr_limit


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """AUROC of abnormal scores ``positive`` against normal scores ``negative`` (1-d, no NaN; ties count 1/2);
    ``nan`` if either is empty."""
    positive, negative = np.asarray(positive).ravel(), np.asarray(negative).ravel()
    if positive.size == 0 or negative.size == 0:
        return float("nan")
    return RankCounts(positive, negative).auroc()


__all__ = ["RankCounts", "auroc"]
