"""Method names on the command line and the classes behind them (imported lazily).

Defined in: notebooks/41_results.ipynb
"""
from __future__ import annotations

import importlib

from .base import AnomalyModel

# name -> "module:Class"; a method appears here once its module exists.
METHODS: dict[str, str] = {
    "ae": "medad_edu.models.ae:AutoEncoder",
    "allinone": "medad_edu.models.allinone:AllInOne",
    "mtl": "medad_edu.models.mtl:MultiTaskLearner",
    "aeu": "medad_edu.models.baselines.aeu:AEU",
    "dae": "medad_edu.models.baselines.dae:DenoisingAE",
    "memae": "medad_edu.models.baselines.memae:MemAE",
    "nsa": "medad_edu.models.baselines.nsa:NSA",
    "dsvdd": "medad_edu.models.baselines.deep_svdd:DeepSVDD",
    "patchcore": "medad_edu.models.baselines.patchcore:PatchCore",
}


def available_methods() -> list[str]:
    """Names whose module can be imported in this installation."""
    out = []
    for name, target in METHODS.items():
        module = target.split(":")[0]
        try:
            if importlib.util.find_spec(module) is not None:
                out.append(name)
        except ModuleNotFoundError:
            pass
    return out


def get_method(name: str) -> type[AnomalyModel]:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {available_methods()}")
    module_name, cls_name = METHODS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and module_name.startswith(err.name):
            raise ValueError(f"method {name!r} is not available in this version; choose one of "
                             f"{available_methods()}") from err
        raise
    return getattr(module, cls_name)
