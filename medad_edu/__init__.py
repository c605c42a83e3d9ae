"""medad-edu: unsupervised anomaly detection in medical images, as an executable textbook and a package.

Where each piece is explained in the book:

- ``medad_edu.data``       -- chapter "The data" (notebooks/01_data.ipynb)
- ``medad_edu.evaluation`` -- chapter "Metrics" (notebooks/02_metrics.ipynb)
- ``medad_edu.models.ae``  -- chapter "The autoencoder baseline" (notebooks/03_autoencoder.ipynb)
- ``medad_edu.models.allinone`` -- chapters 10-14 (All-in-One)
- ``medad_edu.models.mtl`` -- chapters 20-22 (multi-task learner)
- ``medad_edu.reasoning``  -- chapter 30 (reasoning)

Defined in: notebooks/01_data.ipynb, notebooks/02_metrics.ipynb, notebooks/03_autoencoder.ipynb
"""
__version__ = "0.1.0"

from .utils import get_device, seed_everything  # noqa: E402

__all__ = ["__version__", "get_device", "seed_everything"]
