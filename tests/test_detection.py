"""Detection, not just execution: on a small generated set with obvious lesions every headline method and the
peers that set the bar (AE-U, the coarse-noise DAE) must rank abnormal test images above normal ones.

The set (``conftest.make_tiny_data``): 32 px noise backgrounds, abnormal images carry a bright 8x8 square.
Seeded and short (a few epochs on 48 training images); the bound 0.8 leaves margin for other float paths.
"""
import numpy as np
import pytest
import torch

from medad_edu.data.batches import split_tensors
from medad_edu.evaluation.metrics import image_auroc
from medad_edu.training import make_config, train

from conftest import make_tiny_data

CASES = {
    "aeu": dict(epochs=30, options={}),
    "dae": dict(epochs=15, options={}),
    "allinone": dict(epochs=30, options={"clip_weights": "random"}),
    "mtl": dict(epochs=15, options={}),
}


# AE-U (about a second) stays in the fast tier, `pytest -m "not slow"`; the others train for several seconds each.
@pytest.mark.parametrize("method", [m if m == "aeu" else pytest.param(m, marks=pytest.mark.slow) for m in sorted(CASES)])
def test_method_detects_obvious_lesions(method):
    data = make_tiny_data()
    case = CASES[method]
    cfg = make_config(method, "quick", image_size=32, epochs=case["epochs"], batch_size=16, seed=0,
                      options=case["options"])
    model = train(cfg, None, data=data, progress=False, log=lambda m: None).model.eval()
    test = split_tensors(data, "test")
    with torch.no_grad():
        scores = model(test.images, test.task_ids).pred_score.numpy()
    auroc = image_auroc(scores, test.labels.numpy())
    assert np.isfinite(scores).all()
    assert auroc > 0.8, f"{method}: image AUROC {auroc:.3f} on obvious lesions"
