"""All-in-One's objectives (Sec. 3.4, Eq. 4-6) and anomaly map (Sec. 3.5), as plain functions.

Eq. 4, routing loss: L_rn = -(1/|B|) sum_i c_i . log(s_i), the cross-entropy between the router's output and
the image's task category c_i (one-hot). Expert k is the target of task k (task k mod N when there are more
tasks than experts). ``log(s_i)`` is taken on the router's softmax *before* TopK: after TopK a dropped expert
has s = 0 and log 0 = -inf, so the literal formula is undefined for K < N; with K = N both are the same.

Eq. 5, reconstruction with hallucination quantification, per pixel j of image i:
    L_re = 1/(|B| M) sum_i sum_j [ (x_ij - x_hat_ij)^2 exp(-u_ij^2) + u_ij^2 ].
What minimising it does to u: for a pixel with squared error e, f(u) = e exp(-u^2) + u^2 has
f'(u) = 2u (1 - e exp(-u^2)), so the minimum is u = 0 when e <= 1 and u^2 = ln e when e > 1, where the
weighted error becomes e exp(-ln e) = 1. In other words Eq. 5 is a Gaussian negative log-likelihood with
log-variance u^2 >= 0 (variance >= 1): the network may declare a pixel "hard" (high variance) only where its
error exceeds the variance floor of 1, and there the anomaly map is capped at 1. With images in [0, 1] a
squared error never exceeds 1, so the loss pushes u towards 0 everywhere and the map tends to the plain
squared error; ``error_scale`` (gamma, default 1 = the paper) measures errors in units where the floor sits at
e = 1/gamma instead (as if the images had been standardised), which lets u do its job. Derived and shown in
notebooks/13_allinone_hallucination.ipynb.

The log-variance form (``hallucination_form="logvar"``, this package's default): the expert's second channel is a
log-variance ``s`` bounded to (-10, 4), the loss is ``mean(e exp(-s) + s)`` and the map ``e exp(-s)`` (read with a
variance floor, ``std_floor``); the optimum
``s = ln e`` holds for any intensity range (:func:`logvar_loss`). The paper's form stays as
``hallucination_form="published"``, an ablation row.

Eq. 6: L = alpha L_rn + beta L_re (the paper gives no values for alpha and beta; we default to 1 and 1).

Anomaly map (Sec. 3.5): the first term of Eq. 5, A = gamma (x - x_hat)^2 exp(-u^2); the image score is its mean.

Example::

    loss = hallucination_loss(x, x_hat, u)        # Eq. 5
    amap = anomaly_map(x, x_hat, u)               # [B,1,S,S]; score = amap.flatten(1).mean(1)

Defined in: notebooks/13_allinone_hallucination.ipynb
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..components import uncertainty_map, uncertainty_nll


def expert_targets(task_ids: torch.Tensor, num_experts: int) -> torch.Tensor:
    """The expert each task is routed to by Eq. 4: task ``c`` -> expert ``c mod N``."""
    return task_ids.long() % num_experts


def routing_loss(logits: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
    """Eq. 4: mean over the batch of -log softmax(logits)[target] (target = task id mod N)."""
    return F.cross_entropy(logits, expert_targets(task_ids, logits.shape[-1]))


def squared_error(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    return (x - x_hat) ** 2


def anomaly_map(x: torch.Tensor, x_hat: torch.Tensor, u: torch.Tensor | None = None,
                error_scale: float = 1.0) -> torch.Tensor:
    """Sec. 3.5: ``error_scale * (x - x_hat)^2 * exp(-u^2)`` (``u=None``: the plain squared error)."""
    err = error_scale * squared_error(x, x_hat)
    return err if u is None else err * torch.exp(-u ** 2)


def hallucination_loss(x: torch.Tensor, x_hat: torch.Tensor, u: torch.Tensor, error_scale: float = 1.0) -> torch.Tensor:
    """Eq. 5: mean over images and pixels of ``e exp(-u^2) + u^2`` with ``e = error_scale (x - x_hat)^2``."""
    return (anomaly_map(x, x_hat, u, error_scale) + u ** 2).mean()


def logvar_anomaly_map(x: torch.Tensor, x_hat: torch.Tensor, s: torch.Tensor, std_floor: float = 0.0) -> torch.Tensor:
    """The log-variance form's map: ``(x - x_hat)^2 exp(-s)``, the error in units of the variance it expects.

    ``std_floor`` > 0 reads the variance as at least ``std_floor^2`` (intensities in [0, 1]): pixels that were
    constant in training (air) get ``s`` at its lower bound, and without a floor any anatomy shifted into them
    outweighs a lesion (chapter 13)."""
    if not std_floor >= 0:
        raise ValueError(f"std_floor must be >= 0 (a standard deviation of [0, 1] intensities); got {std_floor}")
    return uncertainty_map(x, x_hat, s, 2 * math.log(std_floor) if std_floor > 0 else None)


def logvar_loss(x: torch.Tensor, x_hat: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Eq. 5 with ``u^2`` replaced by a free log-variance ``s``: ``mean(e exp(-s) + s)``.

    For a pixel with squared error ``e`` the minimiser is ``s = ln e`` for *every* ``e > 0`` (not only ``e > 1``),
    so the term is active on images in [0, 1]: a pixel that is always hard to reconstruct (an edge) learns a large
    ``s`` and its error is discounted; a lesion, never seen in training, keeps the small ``s`` of its place.
    This is AE-U's loss (Mao et al., MICCAI 2020) inside All-in-One's mixture of experts."""
    return uncertainty_nll(x, x_hat, s)


def reconstruction_loss(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """The hallucination-off ablation: plain mean squared error."""
    return squared_error(x, x_hat).mean()


def total_loss(l_rn: torch.Tensor, l_re: torch.Tensor, alpha: float = 1.0, beta: float = 1.0) -> torch.Tensor:
    """Eq. 6: ``alpha * L_rn + beta * L_re``."""
    return alpha * l_rn + beta * l_re


def optimal_u(err: torch.Tensor) -> torch.Tensor:
    """The pointwise minimiser of Eq. 5 for a squared error ``err``: ``sqrt(max(0, ln err))`` (>= 0 branch)."""
    return torch.sqrt(torch.log(err.clamp_min(1.0)))
