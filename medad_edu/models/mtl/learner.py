"""MTL-MAD: a multi-task learner trained from scratch on proxy tasks, scored by how badly it solves them.

The idea (the abstract of "MTL-MAD: Multi-Task Learners are Effective Medical Anomaly Detectors"): learn several
self-supervised and pseudo-labelling tasks from scratch on normal images with one joint Mixture-of-Experts
model; at test time an image on which the model fails its tasks is anomalous, and the failures give
interpretable anomaly maps. Only the abstract is public, so the tasks (``proxy_tasks.py``), the MoE layer
(``moe.py``), the network (``torch_model.py``) and the normalisation and fusion of the failure scores
(``fusion.py``) are this project's design, in the spirit of SSMTL (Georgescu et al., CVPR 2021), SSMTL++
(Barbalau et al., CVIU 2023) and Georgescu (arXiv 2307.07534). The book builds it in
notebooks/20_mtl_proxy_tasks.ipynb, 21_mtl_moe.ipynb, 22_mtl_scoring.ipynb and 23_mtl_ablations.ipynb.

Two designs (``design``). ``"unet"``, the quick and paper default (``unet_model.py``, notebooks/24_mtl_unet.ipynb):
a full-resolution U-Net whose bottleneck is a Mixture-of-Experts gated by (proxy task, organ), trained on the three
proxy tasks that detect lesions on the validation splits (coarse-noise removal and pseudo-lesion segmentation at full
resolution, uncertainty-weighted reconstruction through its own encoder and the shared MoE layer), scored by the
``map`` fusion (the top 1 % of the mean of the failure maps, each z-scored with its organ's and task's pixel
statistics); the ``weighted`` fusion's proxy-task weights, fitted as well, come from the validation split's abnormal
images (``weight_source="validation"``; pseudo-anomalies for an organ without any). The own encoder and the map
fusion were chosen on validation images (``book/results/mtl_reconstruct_encoder``), and so was the quick
configuration's learning rate, decayed along half a cosine over its epochs (``book/results/mtl_lr_schedule``), and its
floor of 450 optimizer steps on a small training set (``min_steps``, ``book/results/mtl_min_steps``).
``"classic"`` (``MultiTaskLearner.CLASSIC``; ``torch_model.py``, chapters 20-23): the first design, six proxy tasks
on a light half-resolution trunk, weights from pseudo-anomalies; kept as the ablation row, since on the embedded data
its global tasks fail at random and its pixel heads under-fit.

Training: ``training_loss`` = sum of the weighted task losses + ``balance_weight`` x load-balancing term (each
task's loss is reported too). After training, ``on_train_end`` runs every task on the validation split's
normal images (the training images for an organ without them) and fits, per organ and per proxy task, the score
statistics for z-score / robust / rank fusion and the pixel statistics of the failure maps (buffers, so a
checkpoint keeps them). It then makes ``PSEUDO_COPIES`` synthetic anomalies from each of these normal images
(``synthesize_anomalies`` of the NSA baseline: same-organ patches pasted elsewhere, fixed seed ``PSEUDO_SEED``)
and fits the proxy-task weights of the ``weighted`` fusion: per organ, each proxy task weighs ``max(AUROC - 0.5, 0) **
weight_power``, its AUROC being how well its failure score tells these pseudo-anomalies from the clean images.
No label and no test image is used. The pseudo-anomalies are deliberately *not* those of the lesion task
(whose generator paints ellipses, textures and blends; or, with ``lesion_synthesis="patches"``, the project's
lesions, since the task then learns NSA's patches), so the lesion task is judged on corruptions it has not
been trained on instead of being rewarded for recognising its own. Why weigh at all: on the embedded data
several tasks fail at random on some organs, and a plain mean lets them dilute the ones that detect (the fusions
are compared on trained models in notebooks/22_mtl_scoring.ipynb and 23_mtl_ablations.ipynb).

Words: a *proxy task* is one of the learner's self-supervised tasks (``proxy_tasks``: denoise, lesion, ...); an
*organ* is one of the data set's tasks (``task_names``, indexed by ``task_ids``). Names that other code, stored
notebooks or checkpoints read keep the word "task" for proxy tasks (the option ``proxy_tasks``, the extras
``task_scores`` / ``task_maps``, ``net.tasks``, ``net.task_names``, the MoE's ``gate_task``).

Inference: ``forward(images, task_ids)`` (``task_ids``: each image's organ) ->
``AnomalyResult(anomaly_map, pred_score, extras)`` with
``anomaly_map`` the mean of the pixel-normalised failure maps (with ``weighted``: weighted by the map tasks'
weights), ``pred_score`` the fused score (``weighted``, the default: the weighted mean of the z-scores;
``zscore``, ``robust`` or ``rank``: the plain mean of the normalised task scores; ``map``: the mean of the top
``map_top`` = 1 % pixels of the anomaly map, falling back to z-scores without any map task),
and extras ``task_scores`` [B, T] (raw, one column per proxy task), ``task_scores_norm`` [B, T], ``task_maps``
[B, Tm, S, S] (normalised, one per proxy task with a map) and ``gates`` [B, T, E] (mean gate weights per proxy
task).

Options (constructor arguments, stored in checkpoints; ``--option`` on the command line):

- ``proxy_tasks``: any subset of ``inpaint, denoise, rotate, jigsaw, lesion, cluster`` (default: all six);
- ``moe`` (False: a plain shared trunk), ``num_experts``, ``top_k``, ``moe_layers``, ``balance_weight``;
- ``width``: trunk width (channels 1x, 2x, 4x at S/2, S/4, S/8); ``clusters``: k of the pseudo-label task;
- ``uncertainty``: heteroscedastic heads for inpainting and denoising (failure = error / predicted variance);
- ``fusion``: ``weighted`` (default; ``map`` in the quick and paper configurations), ``zscore``, ``robust``,
  ``rank`` or ``map``; ``map_top``: pooled share of
  the fused map; ``weight_power``: exponent of the ``weighted`` fusion's weights (2: chosen on the validation
  split, where it beat 1 for both seeds; see notebooks/23_mtl_ablations.ipynb);
  ``top_fraction``: pooling of each task's own map into its image score (1 = the mean);
- ``max_reference``: how many reference quantiles rank fusion keeps per (organ, proxy task);
- ``lesion_weight``: loss weight of the lesion task (1 by default; its per-pixel BCE of a sparse mask is small
  beside the other tasks' cross-entropies, so its share of the shared trunk's gradient is small; 5 did not help
  in the ablation of notebooks/23_mtl_ablations.ipynb);
- ``reconstruct_std_floor``, ``reconstruct_opening`` (read only by design ``unet``'s ``reconstruct`` task, unused
  without it): that task's map read as All-in-One's, above a variance floor (a standard deviation of [0, 1]
  intensities) and opened with a square of that many pixels (notebooks/13_allinone_hallucination.ipynb); 0.05 and
  3 in the ``quick`` configuration, chosen on validation images (notebooks/24_mtl_unet.ipynb); 0, AE-U's map, by
  default and for checkpoints written before;
- ``reconstruct_encoder`` (design ``unet``): ``"shared"`` (default, and for checkpoints written before), the
  ``reconstruct`` task reads the bottleneck of the U-Net encoder that the skip tasks train; ``"own"`` (the quick and
  paper configurations), it has its own strided-conv encoder whose bottleneck passes the same MoE layer (gated by the
  task's own rows).

Example::

    from medad_edu.training import make_config, train
    result = train(make_config("mtl", "quick", options={"proxy_tasks": ["inpaint", "lesion"]}, epochs=3))
    out = result.model(images, task_ids)
    out.extras["task_scores"]         # [B, T] raw failure score per proxy task

Defined in: notebooks/20_mtl_proxy_tasks.ipynb, notebooks/21_mtl_moe.ipynb, notebooks/22_mtl_scoring.ipynb, notebooks/23_mtl_ablations.ipynb, notebooks/24_mtl_unet.ipynb
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from ...data.batches import split_tensors
from ..base import AnomalyModel, AnomalyResult
from ..baselines.nsa import synthesize_anomalies
from ..scoring import check_opening, check_std_floor
from .fusion import ScoreNormalizer, check_fusion
from .proxy_tasks import DEFAULT_TASKS, LesionSynthesis
from .torch_model import MTLNetwork
from .unet_model import LESION_SYNTHESES, UNET_TASKS, UNetMTLNetwork

DESIGNS = ("unet", "classic")
# Where the ``weighted`` fusion's per-organ proxy-task weights come from: pseudo-anomalies made from validation normals
# (label-free), or the validation split's own abnormal images where an organ has them (pseudo-anomalies for an
# organ without any). Never the test split.
WEIGHT_SOURCES = ("pseudo", "validation")


class MultiTaskLearner(AnomalyModel):
    name = "mtl"
    # Each MoE expert runs only on the images routed to it: one that no image of a batch chose gets no gradient.
    ddp_find_unused_parameters = True
    # CPU, 64 px: one universal model over the five embedded organs in a few minutes.
    # Each training image is used by the three proxy tasks per step, so an epoch costs several AE epochs.
    # QUICK and PAPER read the reconstruct task's map as All-in-One's (a variance floor, then a 3 x 3 opening; chosen
    # on validation images at 64 px, chapter 24; PAPER's 11 px is the same share of a 256-px image, not measured there).
    # The reconstruct task's own encoder and the map fusion were chosen on the tune split (validation images only,
    # 3 seeds, both sets): book/results/mtl_reconstruct_encoder. PAPER takes them unmeasured at 256 px.
    # QUICK's learning rate decays along half a cosine over its 20 epochs (chosen the same way, at the same cost:
    # book/results/mtl_lr_schedule); PAPER keeps the All-in-One paper's constant Adam rate.
    # One network learns every organ, so it converges in optimizer steps, not epochs: QUICK trains at least 450 steps
    # (min_steps; 20 epochs are 620 on the embedded sets, unchanged there, but 240 on 2 organs x 200 images, which
    # get 38 epochs). 450 steps keep 2 organs near the budget of about 5 CPU-minutes per organ (6 measured); chosen on
    # the tune split's 2-organ runs (validation only, 3 seeds, both sets: book/results/mtl_min_steps).
    QUICK: dict[str, Any] = {"epochs": 20, "min_steps": 450, "batch_size": 32, "lr": 1e-3, "lr_schedule": "cosine",
                             "design": "unet",
                             "proxy_tasks": list(UNET_TASKS), "width": 16, "depth": 3, "num_experts": 4, "top_k": 2,
                             "moe_layers": 1, "fusion": "map", "weight_source": "validation",
                             "lesion_synthesis": "patches", "reconstruct_std_floor": 0.05, "reconstruct_opening": 3,
                             "reconstruct_encoder": "own"}
    # GPU, 256 px: the All-in-One paper's schedule (250 epochs, batch 64, Adam 5e-4), a wider and deeper U-Net.
    PAPER: dict[str, Any] = {"epochs": 250, "batch_size": 64, "lr": 5e-4, "design": "unet",
                             "proxy_tasks": list(UNET_TASKS), "width": 32, "depth": 4, "num_experts": 4, "top_k": 2,
                             "moe_layers": 1, "fusion": "map", "weight_source": "validation",
                             "lesion_synthesis": "patches", "reconstruct_std_floor": 0.05, "reconstruct_opening": 11,
                             "reconstruct_encoder": "own"}
    # The first design (six proxy tasks on a light half-resolution trunk, weighted fusion), kept as an ablation.
    # It has no reconstruct task: its reconstruct_* options are 0 (and "shared"), as in the runs recorded before they
    # existed.
    CLASSIC: dict[str, Any] = {"design": "classic", "proxy_tasks": list(DEFAULT_TASKS), "width": 16,
                               "num_experts": 4, "top_k": 2, "moe_layers": 2, "fusion": "weighted",
                               "weight_source": "pseudo", "lesion_synthesis": "lesions", "reconstruct_std_floor": 0.0,
                               "reconstruct_opening": 0, "reconstruct_encoder": "shared"}
    PSEUDO_SEED = 2024  # seeds the pseudo-anomalies that fit the fusion weights (deterministic scoring)
    PSEUDO_COPIES = 2  # pseudo-anomalies made from each held-out normal image

    def __init__(self, image_size: int, task_names: list[str], prompts: list[str] | None = None,
                 proxy_tasks: Sequence[str] = DEFAULT_TASKS, moe: bool = True, num_experts: int = 4, top_k: int = 2,
                 moe_layers: int = 2, width: int = 16, clusters: int = 8, fusion: str = "weighted",
                 balance_weight: float = 0.01, top_fraction: float = 1.0, max_reference: int = 256,
                 uncertainty: bool = False, map_top: float = 0.01, weight_power: float = 2.0,
                 lesion_weight: float = 1.0, design: str = "classic", depth: int = 3,
                 score_sigma: float = 2.0, score_top: float = 0.01, weight_source: str = "pseudo",
                 lesion_synthesis: str = "lesions", reconstruct_std_floor: float = 0.0, reconstruct_opening: int = 0,
                 reconstruct_encoder: str = "shared"):
        # design defaults to "classic" here so that checkpoints written before the U-Net design load unchanged;
        # the quick and paper configurations select "unet".
        if design not in DESIGNS:
            raise ValueError(f"design must be one of {DESIGNS}; got {design!r}")
        if weight_source not in WEIGHT_SOURCES:
            raise ValueError(f"weight_source must be one of {WEIGHT_SOURCES}; got {weight_source!r}")
        proxy_tasks = list(proxy_tasks)
        if lesion_synthesis not in LESION_SYNTHESES:
            raise ValueError(f"lesion_synthesis must be one of {LESION_SYNTHESES}; got {lesion_synthesis!r}")
        if design == "classic" and lesion_synthesis != "lesions":
            raise ValueError(f"lesion_synthesis {lesion_synthesis!r} is an option of design 'unet'; "
                             "design 'classic' synthesises 'lesions' (as in MultiTaskLearner.CLASSIC)")
        if design == "classic" and reconstruct_encoder != "shared":
            raise ValueError(f"reconstruct_encoder {reconstruct_encoder!r} is an option of design 'unet'; "
                             "design 'classic' has no reconstruct task (reconstruct_encoder='shared', as in "
                             "MultiTaskLearner.CLASSIC)")
        check_fusion(fusion)
        reconstruct_std_floor = check_std_floor(reconstruct_std_floor, "reconstruct_std_floor")
        reconstruct_opening = check_opening(reconstruct_opening, "reconstruct_opening", image_size)
        if not 0 < top_fraction <= 1:
            raise ValueError(f"top_fraction must be in (0, 1]; got {top_fraction}")
        if not 0 < map_top <= 1:
            raise ValueError(f"map_top must be in (0, 1]; got {map_top}")
        if lesion_weight <= 0:
            raise ValueError(f"lesion_weight must be > 0; got {lesion_weight}")
        if weight_power <= 0:
            raise ValueError(f"weight_power must be > 0; got {weight_power}")
        if balance_weight < 0:
            raise ValueError(f"balance_weight must be >= 0; got {balance_weight}")
        if moe and not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in [1, num_experts={num_experts}]; got {top_k}")
        super().__init__(image_size, task_names, prompts, proxy_tasks=proxy_tasks)
        self.weight_source = weight_source
        self.design = design
        if design == "unet":
            self.net = UNetMTLNetwork(image_size, proxy_tasks, width=width, depth=depth, moe=moe,
                                      num_experts=num_experts, top_k=top_k, moe_layers=moe_layers,
                                      num_organs=len(task_names), lesion_synthesis=lesion_synthesis,
                                      reconstruct_encoder=reconstruct_encoder)
            for proxy in self.net.tasks.values():
                proxy.score_sigma, proxy.score_top = float(score_sigma), float(score_top)
            if "reconstruct" in self.net.tasks:
                rec = self.net.tasks["reconstruct"]
                rec.std_floor, rec.opening = float(reconstruct_std_floor), reconstruct_opening
        else:
            self.net = MTLNetwork(image_size, proxy_tasks, width=width, moe=moe, num_experts=num_experts,
                                  top_k=top_k, moe_layers=moe_layers, clusters=clusters, uncertainty=uncertainty)
            for proxy in self.net.tasks.values():  # the U-Net design's proxy tasks pool with score_sigma / score_top
                proxy.top_fraction = top_fraction
        if "lesion" in self.net.tasks and design == "classic":  # the sparse-mask BCE (~0.1) is small beside the cross-entropies (~0.5-1)
            self.net.tasks["lesion"].loss_weight = float(lesion_weight)
        self.fusion = fusion
        self.map_top = map_top
        self.balance_weight = balance_weight
        self.weight_power = float(weight_power)
        # the base class's "tasks" (task_names, num_tasks) are the data set's organs
        self.normalizer = ScoreNormalizer(self.num_tasks, len(proxy_tasks), len(self.net.map_task_names),
                                          max_reference)

    @property
    def proxy_tasks(self) -> list[str]:
        return list(self.net.task_names)

    def set_fusion(self, fusion: str) -> None:
        """Switch the fusion rule of a trained model (the statistics for all rules are already fitted)."""
        self.fusion = check_fusion(fusion)
        self.options["fusion"] = fusion

    # --- training ----------------------------------------------------------------------------------------------
    def on_train_start(self, data, device: torch.device) -> None:
        if "cluster" in self.net.tasks:  # the pseudo-labels come from k-means on the normal training images
            self.net.tasks["cluster"].fit(split_tensors(data, "train").images)

    def training_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        images = batch["image"]
        # corruptions draw from a generator seeded by the global RNG: seeded runs repeat, resumed runs continue
        gen = torch.Generator().manual_seed(int(torch.randint(0, 2 ** 62, (1,))))
        losses = self.net.losses(images, gen, batch.get("task_id"))  # the batch's task_id is each image's organ
        total = self.balance_weight * losses["balance"]
        for name in self.net.task_names:
            total = total + self.net.tasks[name].loss_weight * losses[name]
        return {"loss": total, **losses}

    def on_train_end(self, data, device: torch.device, batch_size: int = 64) -> None:
        """Fit the normalisation statistics on held-out normal images, per organ and per proxy task, then the
        ``weighted`` fusion's proxy-task weights on pseudo-anomalies made from the same images."""
        images, organs = self._reference_images(data)
        scores, means, sqs = [], [], []
        for start in range(0, len(images), batch_size):
            s, maps, _ = self._failures(images[start:start + batch_size].to(device),
                                        organs[start:start + batch_size].to(device))
            scores.append(s.float().cpu())
            if maps is not None:
                means.append(maps.float().mean((2, 3)).cpu())
                sqs.append((maps.float() ** 2).mean((2, 3)).cpu())
        clean = torch.cat(scores)
        self.normalizer.fit(clean, organs, torch.cat(means) if means else None, torch.cat(sqs) if sqs else None)
        pseudo, pseudo_organs = self.pseudo_anomalies(images, organs)
        if self.weight_source == "validation":
            pseudo, pseudo_organs = self._validation_positives(data, pseudo, pseudo_organs)
        pscores = [self._failures(pseudo[start:start + batch_size].to(device),
                                  pseudo_organs[start:start + batch_size].to(device))[0].float().cpu()
                   for start in range(0, len(pseudo), batch_size)]
        self.normalizer.fit_weights(clean, torch.cat(pscores), organs, pseudo_organs, self.weight_power)

    def _failures(self, images: torch.Tensor, organs: torch.Tensor | None):
        """The network's failures; the U-Net design's gate also reads each image's organ."""
        return self.net.failures(images, organs) if self.design == "unet" else self.net.failures(images)

    @staticmethod
    def _validation_positives(data, pseudo: torch.Tensor, pseudo_organs: torch.Tensor):
        """The validation split's abnormal images of each organ that has at least two; pseudo-anomalies for the
        other organs. Weights fitted on these tell which proxy task fails on *real* lesions of that organ."""
        try:
            valid = split_tensors(data, "valid")
        except ValueError:
            return pseudo, pseudo_organs
        xs, organ_parts = [], []
        for organ in range(len(data.tasks)):
            sel = (valid.task_ids == organ) & (valid.labels == 1)
            if int(sel.sum()) >= 2:
                xs.append(valid.images[sel]); organ_parts.append(valid.task_ids[sel])
            else:
                keep = pseudo_organs == organ
                xs.append(pseudo[keep]); organ_parts.append(pseudo_organs[keep])
        return torch.cat(xs).float(), torch.cat(organ_parts)

    @torch.no_grad()
    def pseudo_anomalies(self, images: torch.Tensor, organs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``PSEUDO_COPIES`` synthetic anomalies per normal image (fixed seed), made by the synthesis the lesion
        task did *not* train on: NSA-style same-organ paste, or the project's lesions when the lesion task learnt
        the patches (``lesion_synthesis="patches"``): ``(images [C*N,1,S,S], organs [C*N])``. Label-free."""
        gen = torch.Generator().manual_seed(self.PSEUDO_SEED)
        images, organs = images.float().cpu(), organs.cpu()
        lesion = self.net.tasks["lesion"] if "lesion" in self.net.tasks else None
        if getattr(lesion, "synthesis_kind", "lesions") == "patches":
            # the lesion task learnt NSA's patches: judge it on the project's lesions instead (none left clean)
            synthesis = LesionSynthesis(self.image_size, p_clean=0.0)
            out = [synthesis.corrupt(images, gen, organs)[0] for _ in range(self.PSEUDO_COPIES)]
        else:
            out = [synthesize_anomalies(images, organs, gen, blend="paste", p_anomaly=1.0)[0]
                   for _ in range(self.PSEUDO_COPIES)]
        return torch.cat(out), organs.repeat(self.PSEUDO_COPIES)

    def _reference_images(self, data) -> tuple[torch.Tensor, torch.Tensor]:
        """Normal validation images of every organ; an organ without any uses its training images."""
        parts_x, parts_organ = [], []
        try:
            valid = split_tensors(data, "valid")
        except ValueError:  # no organ has a validation split
            valid = None
        train = split_tensors(data, "train")
        for organ in range(len(data.tasks)):
            if valid is not None:
                sel = (valid.task_ids == organ) & (valid.labels == 0)
                if int(sel.sum()) >= 2:
                    parts_x.append(valid.images[sel])
                    parts_organ.append(valid.task_ids[sel])
                    continue
            sel = train.task_ids == organ
            parts_x.append(train.images[sel])
            parts_organ.append(train.task_ids[sel])
        return torch.cat(parts_x), torch.cat(parts_organ)

    # --- inference ---------------------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, task_ids: torch.Tensor | None = None) -> AnomalyResult:
        """``task_ids`` [B]: each image's organ (the data set's task id; the models' common argument name). The
        extras ``task_scores``, ``task_scores_norm`` and ``task_maps`` are per *proxy* task (names kept)."""
        self.check_input(images, task_ids)
        raw, maps, gates = self._failures(images, task_ids)
        norm = self.normalizer.normalize(raw, task_ids, self.fusion)
        score = self.normalizer.fuse(raw, task_ids, self.fusion) if self.fusion != "map" else norm.mean(1)
        extras = {"task_scores": raw, "task_scores_norm": norm, "gates": gates}
        if maps is not None:
            zmaps = self.normalizer.normalize_maps(maps, task_ids)
            amap, map_score = self.normalizer.fuse_map(maps, task_ids, self.map_top)
            if self.fusion == "weighted":  # the weights of the proxy tasks with a map, renormalised over them
                row = self.normalizer._row(task_ids, len(raw), raw.device)
                w = self.normalizer.weights[row][:, self._map_columns]
                w = w / w.sum(1, keepdim=True).clamp_min(1e-12)
                w = torch.where(w.sum(1, keepdim=True) > 0, w, torch.full_like(w, 1.0 / w.shape[1]))
                amap = (zmaps * w[:, :, None, None]).sum(1, keepdim=True)
            extras["task_maps"] = zmaps
            if self.fusion == "map":
                score = map_score
        else:  # no proxy task with a map: a flat map at the (z-score fused) image score
            amap = score.view(-1, 1, 1, 1).expand(-1, 1, self.image_size, self.image_size)
        return AnomalyResult(amap, score, extras)

    @property
    def _map_columns(self) -> list[int]:
        return [self.net.task_names.index(n) for n in self.net.map_task_names]

    def expert_usage(self) -> torch.Tensor:
        """Training-time expert usage ``[T, E]`` (rows = proxy tasks), for the heatmap."""
        return self.net.expert_usage()


__all__ = ["MultiTaskLearner"]
