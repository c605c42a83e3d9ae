"""Running a trained model over a split: defined in ``medad_edu.training.predict`` (thresholds at the end of
training need it), re-exported here where the evaluation and the notebooks import it."""
from ..training.predict import Predictions, predict_split, predict_tensors

__all__ = ["Predictions", "predict_split", "predict_tensors"]
