"""All-in-One: a prompt-driven mixture of hallucination-aware experts for universal medical anomaly detection.

One network for every organ and modality (paper: Wang et al., "All-in-One: prompt-driven mixture of
hallucination-aware experts for universal anomaly detection across multi-modal multi-organ medical images",
its equations and hyper-parameters are cited by section below):

1. shared vision encoder f (Sec. 3.1, 4.3): 4 x [Conv 4x4 s2 -> BN -> ReLU] 16-32-64-64, FC 2048, FC 16 -> v;
2. prompt encoder g (Sec. 3.2): frozen CLIP text tower + one trainable FC -> tau (``prompt_encoder.py``; the
   frozen features of the task prompts are computed once and kept in the ``clip_features`` buffer, so a
   checkpoint carries them);
3. router (Eq. 1): s = TopK(softmax([v, tau] W + b)) (``router.py``);
4. N expert decoders, each 4 x ConvTranspose 64-32-16-2 from v, channel 0 = mu^k, channel 1 = sigma^k, run as
   one grouped computation (``experts.py``); mixture x_hat = sum_k s^k mu^k, u = sum_k s^k sigma^k (Eq. 2, 3);
5. training (``loss.py``): L = alpha L_rn (Eq. 4) + beta L_re (Eq. 5), on normal images only;
6. inference: anomaly map (x - x_hat)^2 exp(-u^2), image score = its mean (Sec. 3.5).

Choices the paper leaves open (documented where they are made): mu^k goes through a sigmoid (images are in
[0, 1], as in the AE baseline), sigma^k is left linear; TopK weights are renormalised over the kept experts;
Eq. 4 uses the router's softmax before TopK with expert ``task mod N`` as target; alpha = beta = 1.

Switches for the paper's ablations: ``hallucination=False`` (experts output mu only, loss = MSE, map = squared
error; Table 2 "HQ"), ``use_prompts=False`` (router on v alone; Table 2 "TP"), ``top_k`` in 1..N (Table 3).
Improvement behind an option (paper behaviour by default): ``error_scale`` (see ``loss.py``).
Where this package departs from the paper by default (the published forms stay as options, and as ablation rows
in the bench): ``hallucination_form="logvar"`` (Eq. 5 is inert on images in [0, 1]; chapter 13);
``clip_model="all-MiniLM-L6-v2"`` (a pretrained sentence encoder shipped offline instead of CLIP's text tower,
whose weights cannot be had offline; ``clip_model="ViT-B-32"`` is the paper's; chapter 11);
``router_image_dropout=0.5`` (the router sees a zero image code for half of the training images, so it learns to
read the prompt; 0 is the paper's router, which ignores the prompt; chapter 14);
``map_std_floor=0.05`` in the ``quick`` and ``paper`` configurations (the log-variance form's map reads the
predicted variance as at least 0.05^2: pixels that are constant in training, such as air, otherwise get a variance
near zero and dominate the score; chosen on validation data, chapter 13; the constructor's default 0 is the map
without a floor, that of runs made before the option existed);
``map_opening=3`` in the ``quick`` configuration (11 in ``paper``, the same share of a 256-px image): the map
is opened with a 3 x 3 square before it is pooled (:func:`medad_edu.models.scoring.open_map`), which removes
the one- and two-pixel lines of residual along edges (skull, holder, image border) that otherwise rule the
score; chosen on validation data, chapter 13; the constructor's default 0 is no opening.

The model is a plain ``nn.Module``; ``medad_edu.training`` trains it. Chapters: notebooks/10_allinone_encoder
(encoder), 11_allinone_prompts (prompts), 12_allinone_routing (router, experts), 13_allinone_hallucination
(Eq. 5, maps), 14_allinone_full (the whole model, Tables 1-3).

Example::

    from medad_edu.training import make_config, train
    result = train(make_config("allinone", "quick", epochs=2), run_dir=None, progress=False)
    out = result.model(images, task_ids)   # anomaly_map [B,1,S,S], pred_score [B], extras: reconstruction,
                                           # hallucination, error, routing [B,N], features, map_no_hq, ...

Defined in: notebooks/10_allinone_encoder.ipynb, notebooks/11_allinone_prompts.ipynb, notebooks/12_allinone_routing.ipynb, notebooks/13_allinone_hallucination.ipynb, notebooks/14_allinone_full.ipynb
"""
from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ...checkpoint_io import CheckpointError
from ..base import AnomalyModel, AnomalyResult
from ..components import ConvEncoder, bounded_logvar
from ..scoring import DEFAULT_SIGMA, DEFAULT_TOP, check_opening, check_pooling, check_std_floor, open_map, pool_map
from . import loss as L
from .experts import BatchedExperts
from .prompt_encoder import DEFAULT_MODEL, PromptEncoder, embed_dim_of
from .router import Router


HALLUCINATION_FORMS = ("logvar", "published")


class NetworkPass(NamedTuple):
    """One pass of the network over a batch (``AllInOne._run``)."""

    features: torch.Tensor  # v [B, latent], the image code
    weights: torch.Tensor  # s [B, N], routing weights after TopK
    probs: torch.Tensor  # [B, N], the router's softmax before TopK
    logits: torch.Tensor  # [B, N], the router's logits (Eq. 4's input)
    reconstruction: torch.Tensor  # x_hat [B, 1, S, S]
    hallucination: torch.Tensor | None  # u [B, 1, S, S]; None without hallucination
    task_ids: torch.Tensor  # [B], zeros where none were given


class AllInOne(AnomalyModel):
    """The All-in-One universal anomaly detector. See the module docstring for the architecture."""

    name = "allinone"
    # The paper's settings (Sec. 4.3, Tables 2-3): 256 px, 250 epochs, batch 64, Adam 5e-4, K = N = 5.
    # PAPER and QUICK both read the map above a variance floor (map_std_floor) and open it before pooling
    # (map_opening); both are this package's, chosen on validation images at 64 px (chapter 13). PAPER's opening,
    # 11 px at 256 px, is QUICK's 3 px at 64 px scaled with the image side: not measured at 256 px. The
    # constructor's defaults, 0, are the map of runs made before the options existed.
    PAPER = {"image_size": 256, "epochs": 250, "batch_size": 64, "lr": 5e-4,
             "num_experts": 5, "top_k": 5, "latent": 16, "hidden": 2048, "map_std_floor": 0.05, "map_opening": 11}
    # CPU: 64 px, the embedded "quick" sizes (5 tasks x 200 normal training images), 60 epochs: the same budget as
    # AE-U (both are 16-d bottleneck autoencoders with a log-variance output); 12 epochs left it under-trained.
    QUICK = {"image_size": 64, "epochs": 60, "batch_size": 32, "lr": 1e-3,
             "num_experts": 5, "top_k": 5, "latent": 16, "hidden": 2048, "map_std_floor": 0.05, "map_opening": 3}

    def __init__(self, image_size: int, task_names: list[str], prompts: list[str] | None = None,
                 num_experts: int = 5, top_k: int | None = None, latent: int = 16, hidden: int = 2048,
                 prompt_dim: int = 16, use_prompts: bool = True, hallucination: bool = True,
                 alpha: float = 1.0, beta: float = 1.0, renormalize: bool = True, error_scale: float = 1.0,
                 clip_model: str = DEFAULT_MODEL, clip_weights: str = "auto", clip_seed: int = 0,
                 hallucination_form: str = "logvar", score_sigma: float = DEFAULT_SIGMA,
                 score_top: float = DEFAULT_TOP, router_image_dropout: float = 0.5, map_std_floor: float = 0.0,
                 map_opening: int = 0):
        top_k = num_experts if top_k is None else int(top_k)
        if hallucination_form not in HALLUCINATION_FORMS:
            raise ValueError(f"hallucination_form must be one of {HALLUCINATION_FORMS}; got {hallucination_form!r}")
        check_pooling(score_sigma, score_top)
        super().__init__(image_size, task_names, prompts, top_k=top_k)
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1; got {num_experts}")
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in 1..{num_experts} (num_experts); got {top_k}")
        if alpha < 0 or beta <= 0:
            raise ValueError(f"alpha must be >= 0 and beta > 0; got alpha={alpha}, beta={beta}")
        if not error_scale > 0:
            raise ValueError(f"error_scale must be > 0; got {error_scale}")
        map_std_floor = check_std_floor(map_std_floor, "map_std_floor")
        map_opening = check_opening(map_opening, "map_opening", image_size)
        if not 0 <= router_image_dropout < 1:
            raise ValueError(f"router_image_dropout must be in [0, 1); got {router_image_dropout}")
        if use_prompts and prompt_dim < 1:
            raise ValueError(f"prompt_dim must be >= 1 when prompts are used; got {prompt_dim}")
        self.num_experts, self.top_k = int(num_experts), top_k
        self.use_prompts, self.hallucination = bool(use_prompts), bool(hallucination)
        self.alpha, self.beta, self.error_scale = float(alpha), float(beta), float(error_scale)
        self.hallucination_form = hallucination_form
        self.score_sigma, self.score_top = float(score_sigma), float(score_top)
        self.map_std_floor = float(map_std_floor)
        self.map_opening = map_opening
        self.router_image_dropout = float(router_image_dropout) if self.use_prompts else 0.0

        self.encoder = ConvEncoder(image_size, hidden=hidden, latent=latent)  # f: x -> v (16-d)
        router_in = latent
        if self.use_prompts:
            clip_dim = embed_dim_of(clip_model)
            # Frozen CLIP features of the task prompts, filled once (``prepare_prompts``) and saved in checkpoints.
            self.register_buffer("clip_features", torch.zeros(self.num_tasks, clip_dim))
            self.prompt_proj = nn.Linear(clip_dim, prompt_dim)  # the trainable FC of g
            router_in += prompt_dim
        self.router = Router(router_in, num_experts, top_k, renormalize)
        self.experts = BatchedExperts(num_experts, image_size, latent=latent,
                                      out_channels=2 if self.hallucination else 1)
        self._prompt_encoder: PromptEncoder | None = None
        self._prompt_identity = ""  # set when the features are computed or loaded
        self._loaded_identity: str | None = None

    # --- prompts --------------------------------------------------------------------------------------------
    def attach_prompt_encoder(self, encoder: PromptEncoder) -> None:
        """Use ``encoder`` (e.g. one with a chosen cache folder) for the prompts instead of building one."""
        if encoder.model_name != self.options["clip_model"]:
            raise ValueError(f"the prompt encoder is {encoder.model_name!r} but this model was built for "
                             f"{self.options['clip_model']!r}")
        self._prompt_encoder = encoder

    @property
    def prompt_encoder(self) -> PromptEncoder:
        """The frozen text tower + cache (not a submodule: its weights stay out of checkpoints).

        Unless one was attached, built on first use by ``medad_edu.models.factory.make_prompt_encoder`` (which
        resolves the weights and the disk cache), never in the constructor."""
        if self._prompt_encoder is None:
            from ..factory import make_prompt_encoder

            weights = self.options["clip_weights"]
            # A loaded model encodes new prompts with the tower that made its stored features, when possible.
            ident = self._prompt_identity or ""
            if ":random-init:seed=" in ident:
                weights, seed = "random", int(ident.rsplit("=", 1)[1])
            else:
                seed = self.options["clip_seed"]
                if ":pretrained=" in ident and weights == "auto":
                    weights = ident.rsplit("=", 1)[1]
            self._prompt_encoder = make_prompt_encoder(self.options["clip_model"], weights=weights, seed=seed)
        return self._prompt_encoder

    @property
    def prompt_identity(self) -> str:
        return self._prompt_identity

    def prepare_prompts(self, force: bool = False) -> None:
        """Fill the ``clip_features`` buffer for the task prompts (from the cache when possible). Idempotent."""
        if not self.use_prompts or (self._prompt_identity and not force):
            return
        feats = self.prompt_encoder.encode(self.prompts)
        self.clip_features.copy_(feats.to(self.clip_features))
        self._prompt_identity = self.prompt_encoder.identity

    def encode_prompts(self, texts: list[str]) -> torch.Tensor:
        """Frozen CLIP features ``[P, D]`` of arbitrary prompts (e.g. a paraphrase typed in the explorer)."""
        if not self.use_prompts:
            raise ValueError("this model was built with use_prompts=False; it has no prompt encoder")
        self.prepare_prompts()
        enc = self.prompt_encoder
        if enc.identity != self._prompt_identity:
            warnings.warn(f"new prompts are encoded with {enc.identity}, but the model was trained with "
                          f"{self._prompt_identity}: their embeddings are not comparable", stacklevel=2)
        return enc.encode(texts).to(self.clip_features)

    def get_extra_state(self) -> dict[str, Any]:
        return {"prompt_identity": self._prompt_identity, "prompts": list(self.prompts),
                "clip_model": self.options["clip_model"]}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self._loaded_identity = state.get("prompt_identity", "")
        self._prompt_identity = self._loaded_identity
        self._prompt_encoder = None

    def check_checkpoint(self, state: dict[str, Any]) -> None:
        """Called by ``load_model``: the stored prompt features must belong to these prompts and be complete."""
        extra = state["model_state"].get("_extra_state", {})
        if extra.get("prompts") != list(self.prompts):
            raise CheckpointError(f"checkpoint prompts {extra.get('prompts')} differ from {self.prompts}")
        if not self.use_prompts:
            return
        ident = extra.get("prompt_identity", "")
        model = self.options["clip_model"]
        if not (ident.startswith(f"open_clip:{model}:") or ident.startswith(f"sentence-transformers:{model}:")):
            raise CheckpointError(f"checkpoint has no prompt-encoder identity for {self.options['clip_model']} "
                                  f"(got {ident!r})")
        feats = self.clip_features
        if not torch.isfinite(feats).all() or (feats.norm(dim=-1) < 0.5).any():
            raise CheckpointError("checkpoint's prompt features are missing or not unit vectors")
        # Where this machine has cached the same (identity, prompt), the stored features must agree with it.
        if ":random-init:" in ident or ":pretrained=" in ident or ":package=" in ident:
            enc = self.prompt_encoder
            if enc.identity == ident:
                for i, text in enumerate(self.prompts):
                    cached = enc.cached(text)
                    if cached is not None and not torch.allclose(cached, feats[i].cpu(), atol=1e-4):
                        raise CheckpointError(f"stored features of prompt {text!r} differ from this machine's "
                                              f"{ident} encoding (different open_clip/torch version?)")

    # --- the network ----------------------------------------------------------------------------------------
    def prompt_embeddings(self, task_ids: torch.Tensor, clip_features: torch.Tensor | None = None) -> torch.Tensor:
        """tau = g(p) per image: the trainable FC on the frozen CLIP features (computed once per task, gathered)."""
        if clip_features is not None:  # [B, D] features of arbitrary prompts, one per image
            return self.prompt_proj(clip_features)
        if not self._prompt_identity:
            self.prepare_prompts()
        return self.prompt_proj(self.clip_features)[task_ids]

    def route(self, v: torch.Tensor, task_ids: torch.Tensor, top_k: int | None = None,
              clip_features: torch.Tensor | None = None):
        """Eq. 1 -> (weights s [B,N], probs before TopK, logits).

        With ``router_image_dropout = p > 0``, during training the router sees a zero image code for a random
        share p of the images, so Eq. 4 must be met from the prompt alone for them: without it the router learns to
        route on the (louder) image code and ignores the prompt (notebooks/14_allinone_full.ipynb measures both).
        """
        if self.use_prompts and self.training and self.router_image_dropout > 0:
            keep = (torch.rand(len(v), 1, device=v.device) >= self.router_image_dropout).to(v.dtype)
            v = v * keep  # only the router's copy: the experts still decode the full code
        z = torch.cat([v, self.prompt_embeddings(task_ids, clip_features)], 1) if self.use_prompts else v
        return self.router(z, top_k)

    def mixture(self, v: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Eq. 2-3: x_hat = sum_k s^k mu^k, u = sum_k s^k sigma^k (u is None without hallucination)."""
        out = self.experts(v)  # [B, N, C, S, S]
        mu = torch.sigmoid(out[:, :, 0])
        x_hat = torch.einsum("bn,bnhw->bhw", weights, mu).unsqueeze(1)
        u = torch.einsum("bn,bnhw->bhw", weights, out[:, :, 1]).unsqueeze(1) if self.hallucination else None
        if u is not None and self.hallucination_form == "logvar":
            u = bounded_logvar(u)  # u is the log-variance s
        return x_hat, u

    def _map(self, x: torch.Tensor, x_hat: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
        if u is not None and self.hallucination_form == "logvar":
            return L.logvar_anomaly_map(x, x_hat, u, self.map_std_floor)
        return L.anomaly_map(x, x_hat, u, self.error_scale)

    def _run(self, images, task_ids, top_k=None, clip_features=None) -> NetworkPass:
        if task_ids is None:
            if self.use_prompts and clip_features is None:
                raise ValueError("allinone needs task_ids (which prompt each image has) when use_prompts=True")
            task_ids = torch.zeros(len(images), dtype=torch.long, device=images.device)
        v = self.encoder(images)
        weights, probs, logits = self.route(v, task_ids, top_k, clip_features)
        x_hat, u = self.mixture(v, weights)
        return NetworkPass(v, weights, probs, logits, x_hat, u, task_ids)

    def training_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, task_ids = batch["image"], batch["task_id"]
        run = self._run(x, task_ids)
        x_hat, u = run.reconstruction, run.hallucination
        l_rn = L.routing_loss(run.logits, task_ids)
        if not self.hallucination:
            l_re = L.reconstruction_loss(x, x_hat)
        elif self.hallucination_form == "logvar":
            l_re = L.logvar_loss(x, x_hat, u)
        else:
            l_re = L.hallucination_loss(x, x_hat, u, self.error_scale)
        out = {"loss": L.total_loss(l_rn, l_re, self.alpha, self.beta), "routing": l_rn.detach(),
               "reconstruction": l_re.detach(), "mse": F.mse_loss(x_hat, x).detach()}
        if u is not None:
            out["u_rms"] = u.detach().pow(2).mean().sqrt()
        return out

    def forward(self, images: torch.Tensor, task_ids: torch.Tensor | None = None, top_k: int | None = None,
                clip_features: torch.Tensor | None = None) -> AnomalyResult:
        """Inference. ``top_k`` overrides K for this call; ``clip_features`` [B, D] replaces the task prompts."""
        self.check_input(images, task_ids)
        run = self._run(images, task_ids, top_k, clip_features)
        x_hat, u = run.reconstruction, run.hallucination
        err = L.squared_error(images, x_hat)
        # the opening is part of reading a map, so the map without the hallucination term (the HQ ablation) gets it too
        amap = open_map(self._map(images, x_hat, u), self.map_opening)
        err_map = open_map(err, self.map_opening)
        extras = {"reconstruction": x_hat, "error": err, "routing": run.weights, "router_probs": run.probs,
                  "features": run.features, "map_no_hq": err_map,
                  "score_no_hq": pool_map(err_map, self.score_sigma, self.score_top)}
        extras["hallucination"] = u if u is not None else torch.zeros_like(x_hat)
        return AnomalyResult(amap, pool_map(amap, self.score_sigma, self.score_top), extras)

    # --- training hooks -------------------------------------------------------------------------------------
    def on_train_start(self, data, device: torch.device) -> None:
        if list(data.task_names) != self.task_names:
            raise ValueError(f"data tasks {data.task_names} differ from the model's {self.task_names}")
        self.prepare_prompts()  # once, before the first batch: training never runs the text tower
