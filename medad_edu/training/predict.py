"""Running a trained model over a split: scores, maps and labels per task, batched and without gradients.

In the training layer because choosing thresholds at the end of training needs it; ``medad_edu.evaluation``
re-exports it.

Defined in: notebooks/03_autoencoder.ipynb
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data import MultiTaskData
from ..data.batches import SplitTensors, iterate_batches, split_tensors
from ..models.base import AnomalyModel


@dataclass
class Predictions:
    scores: np.ndarray  # [N] float
    maps: np.ndarray  # [N, H, W] float32
    labels: np.ndarray  # [N]
    masks: np.ndarray  # [N, H, W] uint8 (zeros where no mask)
    has_mask: np.ndarray  # [N] bool
    task_ids: np.ndarray  # [N]
    names: list[str]
    extras: dict[str, np.ndarray]

    def task(self, tid: int) -> "Predictions":
        sel = self.task_ids == tid
        return Predictions(self.scores[sel], self.maps[sel], self.labels[sel], self.masks[sel], self.has_mask[sel],
                           self.task_ids[sel], [n for n, s in zip(self.names, sel) if s],
                           {k: v[sel] for k, v in self.extras.items()})


@torch.no_grad()
def predict_tensors(model: AnomalyModel, tensors: SplitTensors, device: torch.device | str = "cpu",
                    batch_size: int = 64, keep_extras: tuple[str, ...] = ()) -> Predictions:
    """Scores and anomaly maps for every image of ``tensors`` (model put in eval mode)."""
    model.eval()
    scores, maps, extras = [], [], {k: [] for k in keep_extras}
    for batch in iterate_batches(tensors, batch_size, shuffle=False, device=device):
        out = model(batch["image"], batch["task_id"])
        scores.append(out.pred_score.float().cpu())
        maps.append(out.anomaly_map.float().cpu().reshape(len(batch["image"]), *out.anomaly_map.shape[-2:]))
        for k in keep_extras:
            if k in out.extras:
                extras[k].append(out.extras[k].float().cpu())
    score_arr = torch.cat(scores).numpy().astype(np.float64)
    if not np.isfinite(score_arr).all():
        raise FloatingPointError(f"{model.name}: non-finite anomaly scores (the model may have diverged)")
    return Predictions(score_arr, torch.cat(maps).numpy(), tensors.labels.numpy(), tensors.masks[:, 0].numpy()
                       .astype(np.uint8), tensors.has_mask.numpy(), tensors.task_ids.numpy(), list(tensors.names),
                       {k: torch.cat(v).numpy() for k, v in extras.items() if v})


def predict_split(model: AnomalyModel, data: MultiTaskData, split: str = "test", device="cpu",
                  batch_size: int = 64, keep_extras: tuple[str, ...] = ()) -> Predictions:
    return predict_tensors(model, split_tensors(data, split), device, batch_size, keep_extras)
