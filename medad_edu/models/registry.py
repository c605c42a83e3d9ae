"""Method names on the command line and the classes behind them (imported lazily).

Defined in: notebooks/41_results.ipynb
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any

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


def with_default_options(method: str, options: dict[str, Any] | None) -> dict[str, Any]:
    """``options`` with the method's constructor defaults added for the keys it lacks.

    A run (or a bench record, or a variants file) written before an option existed used that option's default,
    so comparing settings this way finds it equal to a configuration that names the default, and different from
    one that names another value. This rests on the package's rule for a new option: its constructor default keeps
    the earlier behaviour (as ``MultiTaskLearner(lesion_synthesis="lesions")`` does). A method this installation
    does not provide is returned as it is.
    """
    options = dict(options or {})
    if method not in available_methods():
        return options
    params = inspect.signature(get_method(method).__init__).parameters
    defaults = {k: p.default for k, p in params.items()
                if p.default is not inspect.Parameter.empty and k not in ("image_size", "task_names", "prompts")}
    return {**defaults, **options}
