"""The joint multi-task network: one shared encoder, Mixture-of-Experts layers steered by the proxy task,
one head per proxy task.

``x -> Encoder -> [f0, f1, f2, f3] -> MoE layer(s) on f3, gated by (proxy task, GAP(f3)) -> task head``.

Training (``losses``): every proxy task corrupts the same batch; the corrupted batches are stacked into one
``[T*B, 1, S, S]`` tensor that goes through the encoder and the MoE layers in one pass (each sample carries its
proxy-task index for the gate), then each task's slice goes to its head and its loss. The total loss is
``sum_t w_t L_t + lambda * sum_layers L_bal``.

Scoring (``failures``): for each proxy task (a loop over the handful of tasks, never over samples), its fixed
inference views go through the trunk and its head, and the task's ``failure`` gives a per-image score and,
where it has one, a per-pixel map.

The MTL-MAD abstract fixes only "a joint model based on Mixture-of-Experts" trained from scratch on several
tasks; this architecture is this project's design, explained in notebooks/21_mtl_moe.ipynb.

Example::

    net = MTLNetwork(64, ["inpaint", "rotate"], width=16)
    losses = net.losses(images, torch.Generator().manual_seed(0))
    scores, maps, gates = net.failures(images)

Defined in: notebooks/21_mtl_moe.ipynb
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .heads import Encoder, widths
from .moe import MoELayer
from .proxy_tasks import PROXY_TASKS, ProxyTask, make_task


class MTLNetwork(nn.Module):
    """The classic design's network. ``tasks`` (a ``ModuleDict``) and ``task_names`` hold the *proxy* tasks (the
    names are kept: checkpoints and the book use them); ``organs`` [B] are the images' organs (the data set's
    ``task_ids``)."""

    def __init__(self, image_size: int, proxy_tasks: Sequence[str], width: int = 16, moe: bool = True,
                 num_experts: int = 4, top_k: int = 2, moe_layers: int = 2, clusters: int = 8,
                 uncertainty: bool = False):
        super().__init__()
        names = list(proxy_tasks)
        if not names:
            raise ValueError(f"proxy_tasks must name at least one of {list(PROXY_TASKS)}")
        unknown = [n for n in names if n not in PROXY_TASKS]
        if unknown:
            raise ValueError(f"unknown proxy task(s) {unknown}; choose from {list(PROXY_TASKS)}")
        if len(set(names)) != len(names):
            raise ValueError(f"proxy_tasks has duplicates: {names}")
        if moe_layers < 1:
            raise ValueError(f"moe_layers must be >= 1; got {moe_layers}")
        self.channels = widths(width)
        self.task_names = names
        self.encoder = Encoder(self.channels)
        experts, k = (num_experts, top_k) if moe else (1, 1)
        self.moe = nn.ModuleList(MoELayer(self.channels[-1], experts, len(names), k) for _ in range(moe_layers))
        kwargs = {"cluster": {"clusters": clusters}, "inpaint": {"uncertainty": uncertainty},
                  "denoise": {"uncertainty": uncertainty}}
        self.tasks = nn.ModuleDict({n: make_task(n, image_size, self.channels, **kwargs.get(n, {})) for n in names})

    @property
    def map_task_names(self) -> list[str]:
        return [n for n in self.task_names if self.tasks[n].has_map]

    def task(self, name: str) -> ProxyTask:
        return self.tasks[name]

    def trunk(self, x: torch.Tensor, proxy_index: torch.Tensor) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """Shared encoder + MoE layers; ``proxy_index`` [N] = each sample's proxy-task index."""
        feats = self.encoder(x)
        h, balance, gates = feats[-1], x.new_zeros(()), []
        for layer in self.moe:
            h, info = layer(h, proxy_index)
            balance = balance + info["balance"]
            gates.append(info["weights"])
        return [*feats[:-1], h], {"balance": balance, "gates": torch.stack(gates, 1)}  # gates [N, L, E]

    def forward_task(self, name: str, inputs: torch.Tensor) -> torch.Tensor:
        """One proxy task's head output for already-corrupted ``inputs``."""
        idx = torch.full((len(inputs),), self.task_names.index(name), dtype=torch.long, device=inputs.device)
        feats, _ = self.trunk(inputs, idx)
        return self.tasks[name](feats)

    def losses(self, images: torch.Tensor, generator: torch.Generator,
               organs: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Every proxy task's loss on its own corruption of ``images``, one stacked trunk pass; plus ``balance``.
        ``organs`` [B]: each image's organ (the lesion task pastes between images of the same organ)."""
        corrupted = [self.tasks[n].corrupt(images, generator, organs) for n in self.task_names]
        x = torch.cat([inp for inp, _ in corrupted])
        proxy_index = torch.arange(len(self.task_names), device=images.device).repeat_interleave(len(images))
        feats, info = self.trunk(x, proxy_index)
        out: dict[str, torch.Tensor] = {}
        for t, (name, (_, targets)) in enumerate(zip(self.task_names, corrupted)):
            sl = slice(t * len(images), (t + 1) * len(images))
            out[name] = self.tasks[name].loss(self.tasks[name]([f[sl] for f in feats]), targets)
        out["balance"] = info["balance"]
        return out

    @torch.no_grad()
    def failures(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Raw failure scores ``[B, T]`` (T proxy tasks), failure maps ``[B, Tm, S, S]`` of the proxy tasks with a
        map (or None) and the mean
        gate weights ``[B, T, E]`` (averaged over views and MoE layers)."""
        b = len(images)
        scores, maps, gates = [], [], []
        for t, name in enumerate(self.task_names):
            proxy = self.tasks[name]
            inputs, targets = proxy.views(images)
            idx = torch.full((len(inputs),), t, dtype=torch.long, device=images.device)
            feats, info = self.trunk(inputs, idx)
            score, amap = proxy.failure(proxy(feats), targets)
            scores.append(score)
            if amap is not None:
                maps.append(amap)
            gates.append(info["gates"].mean(1).unflatten(0, (proxy.num_views, b)).mean(0))
        return (torch.stack(scores, 1), torch.cat(maps, 1) if maps else None, torch.stack(gates, 1))

    def expert_usage(self) -> torch.Tensor:
        """Recorded training usage ``[T, E]``, averaged over the MoE layers, rows summing to 1."""
        return torch.stack([layer.expert_usage() for layer in self.moe]).mean(0)


__all__ = ["MTLNetwork"]
