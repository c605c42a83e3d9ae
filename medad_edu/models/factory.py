"""Builds models and their parts from declared hyper-parameters: everything that reads a file, the environment or
the network happens here, so that model constructors do none of it.

- :func:`make_model`: a registered method built from ``image_size``, ``task_names``, ``prompts`` and its options,
  with the options that name something outside the process resolved first (PatchCore's ``backbone="run:DIR"``:
  the run's method and init_args become ``backbone_source``). ``medad_edu.training`` builds every model with it.
- :func:`make_prompt_encoder`: All-in-One's frozen text encoder with its weights resolved (a checkpoint file,
  ``$MEDAD_CLIP_CHECKPOINT``, the pretrained tag when the machine is online, else a seeded random tower with ONE
  warning) and its disk cache (:class:`PromptCache` in ``$MEDAD_CACHE_DIR/prompt_embeddings/``, default
  ``~/.cache/medad_edu``). ``AllInOne`` calls it the first time it needs to encode a prompt, unless an encoder
  was given to it (``AllInOne.attach_prompt_encoder``).

Example::

    from medad_edu.models.factory import make_model, make_prompt_encoder
    model = make_model("patchcore", 64, ["brain", "chest"], backbone="run:runs/mtl")
    enc = make_prompt_encoder("ViT-B-32")      # offline here: warns once, seeded random tower
    feats = enc.encode(["Brain MRI slice.", "Head CT slice."])   # [2, 512], unit norm, cached on disk

Defined in: notebooks/11_allinone_prompts.ipynb
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import torch

from .allinone.prompt_encoder import (DEFAULT_MODEL, DEFAULT_TAG, ENV_CACHE_DIR, ENV_CHECKPOINT, ENV_OFFLINE,
                                      SENTENCE_MODELS, PromptEncoder, random_source, sentence_model_dir, warn_once)
from .base import AnomalyModel
from .registry import get_method

_ONLINE: dict[str, bool] = {}


# --- models -----------------------------------------------------------------------------------------------------
def resolve_options(method: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with what lies outside the process read in: PatchCore's ``backbone="run:DIR"`` gets the
    ``backbone_source`` (the run's method and init_args) it needs to rebuild the encoder without the folder."""
    options = dict(options)
    backbone = options.get("backbone")
    if (method == "patchcore" and isinstance(backbone, str) and backbone.startswith("run:")
            and options.get("backbone_source") is None):
        from .baselines.patchcore import backbone_source_of

        options["backbone_source"] = backbone_source_of(backbone[4:])
    return options


def make_model(method: str, image_size: int, task_names: list[str], prompts: list[str] | None = None,
                **options: Any) -> AnomalyModel:
    """The ``method`` model (``medad_edu.models.METHODS``) with ``options`` resolved by :func:`resolve_options`."""
    return get_method(method)(image_size, task_names, prompts, **resolve_options(method, options))


# --- All-in-One's prompt encoder --------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    """``$MEDAD_CACHE_DIR`` or ``~/.cache/medad_edu``."""
    return Path(os.environ.get(ENV_CACHE_DIR) or Path.home() / ".cache" / "medad_edu")


def is_online(host: str = "huggingface.co", timeout: float = 1.5) -> bool:
    """Can the weights host be reached? ``False`` at once if ``MEDAD_OFFLINE`` or ``HF_HUB_OFFLINE`` is set."""
    if os.environ.get(ENV_OFFLINE, "") not in ("", "0") or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        return False
    if host not in _ONLINE:
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            _ONLINE[host] = True
        except OSError:
            _ONLINE[host] = False
    return _ONLINE[host]


def resolve_text_weights(model_name: str, weights: str = "auto", checkpoint: str | None = None,
                         seed: int = 0) -> tuple[str, str]:
    """Which weights the text tower gets, as ``PromptEncoder``'s ``source`` ``(kind, value)``.

    ``weights="auto"``: ``checkpoint`` (or ``$MEDAD_CLIP_CHECKPOINT``) if it is a file, else the ``"openai"`` tag
    when online, else a random tower from ``seed`` (one warning per process). ``"random"`` forces the last; a tag
    is used when online; a path must exist. The packaged sentence encoder ignores ``weights``.
    """
    if model_name in SENTENCE_MODELS:
        return "package", sentence_model_dir(model_name)[1]
    if weights == "random":
        return "random", str(seed)
    if weights == "auto":
        path = checkpoint or os.environ.get(ENV_CHECKPOINT) or ""
        if path:
            if Path(path).is_file():
                return "file", str(Path(path).resolve())
            if checkpoint:
                raise ValueError(f"CLIP checkpoint {path!r} does not exist")
            warn_once(f"missing:{path}", f"{ENV_CHECKPOINT}={path!r} is not a file; ignoring it", stacklevel=4)
        if is_online():
            return "tag", DEFAULT_TAG
        return random_source(model_name, seed, "offline and no local checkpoint")
    if Path(weights).expanduser().is_file():
        return "file", str(Path(weights).expanduser().resolve())
    if any(sep in weights for sep in ("/", "\\")) or weights.endswith((".pt", ".bin", ".safetensors")):
        raise ValueError(f"CLIP checkpoint {weights!r} does not exist")
    if is_online():
        return "tag", weights
    return random_source(model_name, seed, f"pretrained tag {weights!r} asked for, but the machine is offline")


class PromptCache:
    """Prompt embeddings on disk: ``folder/prompt_embeddings/<key>.pt``, each holding identity, text, embedding."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def path(self, key: str) -> Path:
        return self.folder / "prompt_embeddings" / f"{key}.pt"

    def load(self, key: str, identity: str, text: str) -> torch.Tensor | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            item = torch.load(path, map_location="cpu", weights_only=True)
            if item.get("identity") == identity and item.get("text") == text:
                return item["embedding"].float()
        except Exception:  # a corrupt cache file is recomputed and overwritten
            pass
        return None

    def save(self, key: str, identity: str, text: str, embedding: torch.Tensor) -> None:
        from ..utils import atomic_torch_save

        try:
            atomic_torch_save({"identity": identity, "text": text, "embedding": embedding}, self.path(key))
        except OSError as err:  # read-only home etc.: the memory cache still works
            warn_once(f"cachedir:{self.folder}", f"cannot write the prompt cache in {self.folder} ({err}); set "
                      f"{ENV_CACHE_DIR} to a writable folder", stacklevel=4)


def make_prompt_encoder(model_name: str = DEFAULT_MODEL, weights: str = "auto", checkpoint: str | None = None,
                        seed: int = 0, cache_dir: str | Path | None = None,
                        disk_cache: bool = True) -> PromptEncoder:
    """A :class:`PromptEncoder` with its weights resolved (:func:`resolve_text_weights`) and its disk cache in
    ``cache_dir`` (default :func:`default_cache_dir`; ``disk_cache=False``: memory only)."""
    if not isinstance(model_name, str) or not model_name:
        raise ValueError(f"model_name must be {DEFAULT_MODEL!r} or an open_clip model name such as 'ViT-B-32'; "
                         f"got {model_name!r}")
    if not isinstance(weights, str) or not weights:
        raise ValueError(f"weights must be 'auto', 'random', a pretrained tag or a file path; got {weights!r}")
    source = resolve_text_weights(model_name, weights, checkpoint, int(seed))
    cache = PromptCache(cache_dir if cache_dir is not None else default_cache_dir()) if disk_cache else None
    return PromptEncoder(model_name, source, seed=int(seed), cache=cache)
