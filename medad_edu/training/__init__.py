"""Training: configurations, the shared loop, checkpoints. Models stay plain ``nn.Module``s.

Defined in: notebooks/03_autoencoder.ipynb
"""
from .checkpoint import CheckpointError, load_model, read_checkpoint, save_checkpoint
from .config import PRESETS, TrainConfig, make_config
from .trainer import TrainResult, load_or_train, train

__all__ = ["CheckpointError", "PRESETS", "TrainConfig", "TrainResult", "load_model", "load_or_train",
           "make_config", "read_checkpoint", "save_checkpoint", "train"]
