"""percept: perceptual image similarity metrics and the experiments that study them.

>>> import percept, torch
>>> loss = percept.get_metric("watson-dft", colorspace="rgb", reduction="sum")
>>> x, y = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)   # NCHW float tensors in [0, 1]
>>> loss(x, y).shape
torch.Size([])
>>> percept.functional.ssim(x, x)   # the math as plain functions (imported on first use)
tensor(1.)
"""

from percept.compat import LossProvider
from percept.registry import get_metric, list_metrics

__version__ = "0.1.0"
__all__ = ["get_metric", "list_metrics", "LossProvider", "functional", "__version__"]


def __getattr__(name: str):
    """``percept.functional`` is imported on first use, so that ``import percept`` stays cheap."""
    if name == "functional":
        import importlib

        return importlib.import_module("percept.functional")
    raise AttributeError(f"module 'percept' has no attribute {name!r}")
