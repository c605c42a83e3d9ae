"""Mixture-of-Experts layer with gating conditioned on the proxy task and on the input.

The MTL-MAD abstract says only that the joint model is "based on Mixture-of-Experts"; how the gate
is conditioned, where the layer sits and how it is balanced is this project's design, explained in
notebooks/21_mtl_moe.ipynb:

- ``E`` experts, each a ResNet bottleneck branch (1x1 conv C -> C/2, 3x3 conv C/2 -> C/2, 1x1 conv C/2 -> C,
  GroupNorm + ReLU between) on the ``[C, h, w]`` bottleneck feature map. GroupNorm (not BatchNorm) keeps every sample independent of the others
  in its batch, so routing a sample to a subset of experts gives exactly the same result as running it alone.
- The gate: ``logits = W_x . GAP(h) + b + U[t]`` where ``GAP(h)`` is the global average of the input feature map
  (input conditioning) and ``U`` is a learnt ``[T, E]`` table with one row per proxy task ``t`` (task
  conditioning, the "task steering" of multi-task MoEs such as Mod-Squad / M3ViT). ``p = softmax(logits)``;
  only the ``top_k`` largest ``p`` are kept and renormalised to sum to 1: ``w = topk(p) / sum(topk(p))``.
- Output: ``h + sum_e w_e * expert_e(h)`` (residual around the mixture, so an untrained layer is near identity).
  Experts are evaluated sparsely: a loop over the ``E`` experts (never over samples), each expert running once
  on the index-selected samples routed to it.
- Load balancing (Switch Transformer, Fedus et al., JMLR 2022): ``L_bal = E * sum_e f_e * P_e`` with ``f_e`` the
  share of the ``N * top_k`` routing slots that went to expert ``e`` and ``P_e`` the mean gate probability of
  ``e``. It equals 1 when usage is uniform and ``E`` when one expert takes everything (``top_k = 1``). The term is
  computed over the whole stacked batch (all proxy tasks together): the load is balanced overall while each task
  remains free to prefer its own experts.
- Usage is recorded in the buffer ``usage`` ``[T, E]`` (sum of gate weights per proxy task, in training mode),
  which the book plots as the task x expert heatmap.

Example::

    moe = MoELayer(channels=64, num_experts=4, num_tasks=6, top_k=2)
    out, info = moe(torch.randn(8, 64, 8, 8), torch.randint(0, 6, (8,)))
    info["weights"].sum(1)   # all ones; two non-zero entries per row
    balance_loss(info["probs"], info["weights"])

Defined in: notebooks/21_mtl_moe.ipynb
"""
from __future__ import annotations

import torch
from torch import nn

from ..components import group_norm_groups


_groups = group_norm_groups  # (heads.py imports it from here)


class Expert(nn.Module):
    """One expert: the residual branch of a ResNet bottleneck block, 1x1 -> 3x3 -> 1x1 (C -> C/2 -> C/2 -> C)."""

    def __init__(self, channels: int):
        super().__init__()
        mid = max(1, channels // 2)
        self.body = nn.Sequential(nn.Conv2d(channels, mid, 1, bias=False), nn.GroupNorm(_groups(mid), mid),
                                  nn.ReLU(inplace=True),
                                  nn.Conv2d(mid, mid, 3, padding=1, bias=False), nn.GroupNorm(_groups(mid), mid),
                                  nn.ReLU(inplace=True), nn.Conv2d(mid, channels, 1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.body(h)


def topk_gate(probs: torch.Tensor, top_k: int) -> torch.Tensor:
    """Keep the ``top_k`` largest probabilities of each row and renormalise them to sum to 1 (others -> 0)."""
    if not 1 <= top_k <= probs.shape[-1]:
        raise ValueError(f"top_k must be in [1, {probs.shape[-1]}]; got {top_k}")
    if top_k == probs.shape[-1]:
        return probs
    vals, idx = probs.topk(top_k, dim=-1)
    kept = torch.zeros_like(probs).scatter(-1, idx, vals)
    return kept / kept.sum(-1, keepdim=True)


def balance_loss(probs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Switch-Transformer load-balancing term ``E * sum_e f_e * P_e``.

    ``probs`` [N, E]: full softmax gate probabilities; ``weights`` [N, E]: the top-k weights (non-zero = routed).
    ``f_e`` = routed slots of expert e / all routed slots (not differentiable), ``P_e`` = mean of ``probs[:, e]``.
    """
    num_experts = probs.shape[-1]
    routed = (weights > 0).float()
    f = routed.sum(0) / routed.sum().clamp_min(1.0)
    p = probs.mean(0)
    return num_experts * (f.detach() * p).sum()


class MoELayer(nn.Module):
    """Task- and input-conditioned top-k mixture of conv experts; ``forward(h, proxy_task) -> (out, info)``.

    ``num_experts=1`` is the plain shared trunk (one residual block, gate always 1), used by the ``moe=False``
    ablation. ``info`` holds ``probs`` [N, E] (softmax), ``weights`` [N, E] (top-k, renormalised) and
    ``balance`` (the load-balancing term, 0 for a single expert).

    "Task" here means *proxy* task: ``num_tasks`` is the number of rows of the gate table ``U`` (parameter
    ``gate_task``; buffer ``usage``), one per proxy task, and ``proxy_task`` [N] picks each sample's row. The U-Net
    design uses one row per (proxy task, organ) pair (``unet_model.UNetMTLNetwork.gate_index``). The names
    ``num_tasks`` and ``gate_task`` are kept as they are: checkpoints and the book use them.
    """

    def __init__(self, channels: int, num_experts: int = 4, num_tasks: int = 1, top_k: int = 2):
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1; got {num_experts}")
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1; got {num_tasks}")
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in [1, num_experts={num_experts}]; got {top_k}")
        self.channels, self.num_experts, self.num_tasks, self.top_k = channels, num_experts, num_tasks, top_k
        self.experts = nn.ModuleList(Expert(channels) for _ in range(num_experts))
        self.gate_x = nn.Linear(channels, num_experts)  # input conditioning: W_x . GAP(h) + b
        self.gate_task = nn.Parameter(torch.zeros(num_tasks, num_experts))  # task conditioning: U[t]
        nn.init.normal_(self.gate_x.weight, std=0.01)
        nn.init.zeros_(self.gate_x.bias)
        nn.init.normal_(self.gate_task, std=1.0)  # distinct starting preferences per task
        self.register_buffer("usage", torch.zeros(num_tasks, num_experts))  # sum of gate weights per task

    def gate(self, h: torch.Tensor, proxy_task: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(probs, weights)``: softmax of ``W_x . GAP(h) + b + U[proxy_task]``, then top-k renormalised."""
        logits = self.gate_x(h.mean((2, 3))) + self.gate_task[proxy_task]
        probs = logits.softmax(-1)
        return probs, topk_gate(probs, self.top_k)

    def forward(self, h: torch.Tensor, proxy_task: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if proxy_task.shape != (h.shape[0],):
            raise ValueError(f"proxy_task must have shape [{h.shape[0]}]; got {tuple(proxy_task.shape)}")
        if self.num_experts == 1:
            ones = h.new_ones(h.shape[0], 1)
            return h + self.experts[0](h), {"probs": ones, "weights": ones, "balance": h.new_zeros(())}
        probs, weights = self.gate(h, proxy_task)
        mixed = torch.zeros_like(h)
        for e, expert in enumerate(self.experts):  # loop over experts, each on the samples routed to it
            idx = (weights[:, e] > 0).nonzero(as_tuple=True)[0]
            if idx.numel() == 0:
                continue
            w = weights[idx, e].view(-1, 1, 1, 1)
            mixed = mixed.index_add(0, idx, w * expert(h.index_select(0, idx)))
        if self.training:
            with torch.no_grad():
                self.usage.index_add_(0, proxy_task, weights.detach().to(self.usage.dtype))
        return h + mixed, {"probs": probs, "weights": weights, "balance": balance_loss(probs, weights)}

    def forward_dense(self, h: torch.Tensor, proxy_task: torch.Tensor) -> torch.Tensor:
        """Reference computation: every expert on every sample, weighted (for tests and the book)."""
        if self.num_experts == 1:
            return h + self.experts[0](h)
        _, weights = self.gate(h, proxy_task)
        outs = torch.stack([expert(h) for expert in self.experts], 1)  # [N, E, C, h, w]
        return h + (weights[:, :, None, None, None] * outs).sum(1)

    def expert_usage(self) -> torch.Tensor:
        """Recorded usage ``[T, E]``, each row normalised to sum to 1 (rows of unseen tasks stay 0)."""
        return self.usage / self.usage.sum(1, keepdim=True).clamp_min(1e-12)


__all__ = ["Expert", "MoELayer", "balance_loss", "topk_gate"]
