"""All-in-One's routing network (Sec. 3.3.1, Eq. 1): which experts decode this image, and how much each counts.

    s = TopK(softmax([v, tau] W + b)),   s in R^N

``v`` is the 16-d image code of the shared encoder, ``tau`` the prompt embedding (omitted in the prompt-less
ablation), ``W, b`` one fully connected layer (Sec. 4.3: "the routing network consists of a fully connected
layer, the output size of which matches the number of decoders").

TopK keeps the K largest probabilities and zeroes the rest. The paper does not say whether the kept weights are
renormalised; with K = N (its best setting) the question does not arise. For K < N we renormalise over the kept
experts by default (``renormalize=True``), so that the mixture of Eq. 2 stays a convex combination: without it,
x_hat = sum_k s^k mu^k would be a *shrunken* image whenever the dropped experts had any probability, and the
reconstruction error would measure the router's uncertainty instead of the image. ``renormalize=False`` keeps
the literal Eq. 1. Note that with K = 1 and renormalisation the kept weight is exactly 1, so the router learns
only from the routing loss (Eq. 4), not from the reconstruction.

Ties are broken by ``torch.topk`` (lowest index first), so routing is deterministic.
Explained in notebooks/12_allinone_routing.ipynb.

Example::

    router = Router(in_features=32, num_experts=5, top_k=2)
    weights, probs, logits = router(torch.randn(8, 32))   # weights: 2 nonzero per row, rows sum to 1

Defined in: notebooks/12_allinone_routing.ipynb
"""
from __future__ import annotations

import torch
from torch import nn


def topk_weights(probs: torch.Tensor, k: int, renormalize: bool = True, eps: float = 1e-12) -> torch.Tensor:
    """Keep the ``k`` largest entries of each row of ``probs`` [B, N], zero the others (Eq. 1's TopK).

    With ``renormalize`` the kept entries are divided by their sum. Gradients flow through the kept entries.
    """
    n = probs.shape[-1]
    if not 1 <= k <= n:
        raise ValueError(f"top_k must be in 1..{n} (the number of experts); got {k}")
    if k == n:
        kept = probs
    else:
        idx = probs.topk(k, dim=-1).indices
        mask = torch.zeros_like(probs).scatter_(-1, idx, 1.0)
        kept = probs * mask
    if renormalize:
        kept = kept / kept.sum(-1, keepdim=True).clamp_min(eps)
    return kept


class Router(nn.Module):
    """Eq. 1: one FC layer on ``[v, tau]``, softmax over the N experts, TopK.

    ``forward(z) -> (weights s [B,N], probs [B,N] before TopK, logits [B,N])``.
    """

    def __init__(self, in_features: int, num_experts: int, top_k: int | None = None, renormalize: bool = True):
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1; got {num_experts}")
        top_k = num_experts if top_k is None else int(top_k)
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in 1..{num_experts} (the number of experts); got {top_k}")
        self.fc = nn.Linear(in_features, num_experts)
        self.num_experts, self.top_k, self.renormalize = num_experts, top_k, renormalize

    def forward(self, z: torch.Tensor, top_k: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self.fc(z)
        probs = logits.softmax(-1)
        weights = topk_weights(probs, self.top_k if top_k is None else top_k, self.renormalize)
        return weights, probs, logits
