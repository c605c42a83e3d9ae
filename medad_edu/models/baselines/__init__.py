"""From-scratch baselines that every chapter compares against, all behind the same ``AnomalyModel`` contract.

- :class:`~medad_edu.models.baselines.memae.MemAE` -- memory-augmented autoencoder (Gong et al., ICCV 2019);
- :class:`~medad_edu.models.baselines.nsa.NSA` -- one-stage self-supervised detector trained to segment
  synthetic anomalies (NSA, Schlueter et al., ECCV 2022; CutPaste, Li et al., CVPR 2021);
- :class:`~medad_edu.models.baselines.deep_svdd.DeepSVDD` -- one-class deep support vector data description
  (Ruff et al., ICML 2018);
- :class:`~medad_edu.models.baselines.patchcore.PatchCore` -- a memory bank of patch features with coreset
  subsampling and nearest-neighbour distances (Roth et al., CVPR 2022), with a selectable backbone.

The plain autoencoder lives in :mod:`medad_edu.models.ae`. Each baseline is explained, built step by step and
trained small in notebooks/40_baselines.ipynb; the side-by-side comparison is ``medad-edu bench``
(:mod:`medad_edu.evaluation.bench`, notebooks/41_results.ipynb).

Method names (``--method``): ``memae``, ``nsa``, ``dsvdd``, ``patchcore``. Classes are imported lazily by
:mod:`medad_edu.models.registry`.

Defined in: notebooks/40_baselines.ipynb, notebooks/41_results.ipynb
"""
from __future__ import annotations

__all__ = ["MemAE", "NSA", "DeepSVDD", "PatchCore"]


def __getattr__(name: str):  # lazy: importing the package does not import torchvision etc.
    if name == "MemAE":
        from .memae import MemAE
        return MemAE
    if name == "NSA":
        from .nsa import NSA
        return NSA
    if name == "DeepSVDD":
        from .deep_svdd import DeepSVDD
        return DeepSVDD
    if name == "PatchCore":
        from .patchcore import PatchCore
        return PatchCore
    raise AttributeError(name)
