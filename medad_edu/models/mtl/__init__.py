"""MTL-MAD, the multi-task learner (method name ``mtl``): proxy tasks, a task-steered Mixture-of-Experts,
failure-score normalisation and fusion. See ``learner.py`` and notebooks/20-22.

Defined in: notebooks/20_mtl_proxy_tasks.ipynb, notebooks/24_mtl_unet.ipynb
"""
from .fusion import FUSIONS, ScoreNormalizer, auroc_weights, mid_rank_percentile, pairwise_auroc
from .learner import MultiTaskLearner
from .moe import MoELayer, balance_loss, topk_gate
from .proxy_tasks import (DEFAULT_TASKS, PROXY_TASKS, Denoising, Inpainting, Jigsaw, Orientation, ProxyTask,
                          PseudoLabel, SyntheticLesion, make_task)
from .torch_model import MTLNetwork

__all__ = ["DEFAULT_TASKS", "Denoising", "FUSIONS", "Inpainting", "Jigsaw", "MTLNetwork", "MoELayer",
           "MultiTaskLearner", "Orientation", "PROXY_TASKS", "ProxyTask", "PseudoLabel", "ScoreNormalizer",
           "SyntheticLesion", "auroc_weights", "balance_loss", "make_task", "mid_rank_percentile", "pairwise_auroc",
           "topk_gate"]
