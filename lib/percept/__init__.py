"""percept: perceptual image similarity metrics and the experiments that study them.

>>> import percept
>>> loss = percept.get_metric("watson-dft", colorspace="rgb", reduction="sum")
>>> d = loss(input, target)   # NCHW float tensors in [0, 1]
"""

from percept import functional
from percept.provider import LossProvider
from percept.registry import get_metric, list_metrics

__version__ = "0.1.0"
__all__ = ["get_metric", "list_metrics", "LossProvider", "functional", "__version__"]
