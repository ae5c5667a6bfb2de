"""percept.functional: the math of every metric as plain functions, one module per family.

Each function takes NCHW float tensors in [0, 1] of the same shape and returns the metric per image, reduced
by ``reduction`` ("mean" or "sum" over the images, or "none" for shape (N,)). The ``nn.Module`` metrics of
:mod:`percept.metrics` (what :func:`percept.get_metric` builds) are thin wrappers over these functions.

>>> import torch
>>> from percept import functional as PF
>>> x = torch.rand(2, 3, 64, 64)
>>> PF.watson_dft(x, x.flip(-1), reduction="none").shape
torch.Size([2])
"""

__all__: list[str] = []

# ---- Watson-DCT, Watson-DFT, Adaptive (functional/watson.py, functional/adaptive.py) ---------------------
from percept.functional.adaptive import adaptive  # noqa: E402
from percept.functional.watson import watson_dct, watson_dft  # noqa: E402

__all__ += ["watson_dct", "watson_dft", "adaptive"]
# ---- end of Watson-DCT, Watson-DFT, Adaptive --------------------------------------------------------------
