"""Models: each a plain ``nn.Module`` returning an anomaly map and a score (see ``base.py``).

Defined in: notebooks/03_autoencoder.ipynb
"""
from .base import AnomalyModel, AnomalyResult
from .registry import METHODS, available_methods, get_method

__all__ = ["AnomalyModel", "AnomalyResult", "METHODS", "available_methods", "get_method"]
