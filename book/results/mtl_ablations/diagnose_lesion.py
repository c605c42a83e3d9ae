"""Why is the lesion proxy task weaker than the NSA baseline although it is the same idea?

For a trained MTL run and a trained NSA run: make synthetic anomalies from normal *training* and *validation*
images with both generators (the lesion task's own, and NSA's paste), and measure how well each network finds
them (image AUROC of the mean predicted probability against the clean images; pixel AUROC of the logits
against the mask). Then, for the MTL run, the lesion task's image score pooled as the mean of the map (the
default) or as the mean of its top 10 / 2 / 0.5 % pixels, on the validation split (real labels). Writes
``lesion_diagnosis.json`` here.

    OMP_NUM_THREADS=1 python book/results/mtl_ablations/diagnose_lesion.py MTL_RUN_DIR NSA_RUN_DIR

The run folders are those of the bench over ``variants.json`` (``OUT/runs/mtl-s0``, ``OUT/runs/nsa-s0``).
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from medad_edu.data import load_data
from medad_edu.data.batches import split_tensors
from medad_edu.evaluation import image_auroc
from medad_edu.models.baselines.nsa import synthesize_anomalies
from medad_edu.models.mtl.proxy_tasks import pool_map
from medad_edu.training import load_model


def main(mtl_dir: str, nsa_dir: str) -> None:
    torch.set_num_threads(1)
    data = load_data("embedded", 64, sizes="quick")
    mtl, _ = load_model(mtl_dir)
    nsa, _ = load_model(nsa_dir)
    net, les = mtl.net, mtl.net.tasks["lesion"]
    t = net.task_names.index("lesion")

    def lesion_logits(x):
        with torch.no_grad():
            return torch.cat([les(net.trunk(x[i:i + 64], torch.full((len(x[i:i + 64]),), t))[0])
                              for i in range(0, len(x), 64)])

    def nsa_logits(x):
        with torch.no_grad():
            return torch.cat([nsa.net(x[i:i + 64]) for i in range(0, len(x), 64)])

    out = {"mtl_run": os.path.basename(mtl_dir.rstrip("/")), "nsa_run": os.path.basename(nsa_dir.rstrip("/")),
           "synthetic": []}
    tr, va = split_tensors(data, "train"), split_tensors(data, "valid")
    for split, ts in (("train", tr), ("valid", va)):
        if split == "train":  # 20 normal training images per organ
            idx = torch.cat([torch.nonzero(ts.task_ids == k)[:20, 0] for k in range(len(data.tasks))])
        else:
            idx = torch.nonzero(ts.labels == 0)[:, 0]
        x, g = ts.images[idx], ts.task_ids[idx]
        x_les, tgt = les.corrupt(x, torch.Generator().manual_seed(3), g)
        x_nsa, lab, _ = synthesize_anomalies(x, g, torch.Generator().manual_seed(3), blend="paste", p_anomaly=1.0)
        for net_name, fn in (("mtl lesion task", lesion_logits), ("nsa", nsa_logits)):
            clean = torch.sigmoid(fn(x)).flatten(1).mean(1)
            for gen_name, xa, mask in (("lesion task's generator", x_les, tgt["mask"]),
                                       ("nsa paste", x_nsa, (lab > 0.5).float())):
                logits = fn(xa)
                has = mask.flatten(1).sum(1) > 0
                s = torch.sigmoid(logits).flatten(1).mean(1)
                img = image_auroc(np.r_[s[has].numpy(), clean.numpy()], np.r_[np.ones(int(has.sum())), np.zeros(len(clean))])
                pix = roc_auc_score(mask.flatten().numpy() > 0.5, logits.flatten().numpy())
                out["synthetic"].append({"images": split, "network": net_name, "generator": gen_name,
                                         "bce": F.binary_cross_entropy_with_logits(logits, mask).item(),
                                         "image_auroc": img, "pixel_auroc": float(pix)})
    prob = torch.sigmoid(lesion_logits(va.images))
    lab, tid = va.labels.numpy(), va.task_ids.numpy()
    out["pooling_valid"] = {str(f): float(np.mean([image_auroc(pool_map(prob, f).numpy()[tid == k], lab[tid == k])
                                                    for k in range(len(data.tasks))])) for f in (1.0, 0.1, 0.02, 0.005)}
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "lesion_diagnosis.json"), "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:3])
