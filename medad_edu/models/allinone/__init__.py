"""All-in-One (prompt-driven mixture of hallucination-aware experts): chapters 10-14 of the book.

``AllInOne`` is the model (``torch_model.py``); its parts live in ``prompt_encoder.py`` (frozen CLIP text
features + cache), ``router.py`` (Eq. 1), ``experts.py`` (batched decoders, Eq. 2-3) and ``loss.py``
(Eq. 4-6 and the anomaly map).

Defined in: notebooks/10_allinone_encoder.ipynb, notebooks/14_allinone_full.ipynb
"""
from .experts import BatchedExperts
from .loss import (anomaly_map, expert_targets, hallucination_loss, optimal_u, reconstruction_loss, routing_loss,
                   total_loss)
from .prompt_encoder import PretrainedWeightsWarning, PromptEncoder
from .router import Router, topk_weights
from .torch_model import AllInOne

__all__ = ["AllInOne", "BatchedExperts", "PretrainedWeightsWarning", "PromptEncoder", "Router", "anomaly_map",
           "expert_targets", "hallucination_loss", "optimal_u", "reconstruction_loss", "routing_loss", "topk_weights",
           "total_loss"]
