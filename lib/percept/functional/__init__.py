"""The math of every metric: one plain function per metric, one module per family.

Each function takes NCHW float tensors in [0, 1] of the same shape and returns a scalar (``reduction``
"mean" or "sum") or the (N,) per-image values ("none"). The parameters are arguments with the papers'
values as defaults; the metric modules (``percept.get_metric``) are thin wrappers over these functions that
hold trained weights and pick a fast path by device.

>>> import torch, percept
>>> x, y = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
>>> percept.functional.watson_dft(x, y, reduction="none").shape
torch.Size([2])
"""

__all__: list[str] = []

# --- Watson-DCT, Watson-DFT, Adaptive (functional/watson.py, functional/adaptive.py) -------------------------
from percept.functional.adaptive import adaptive
from percept.functional.watson import watson_dct, watson_dft

__all__ += ["watson_dct", "watson_dft", "adaptive"]
# --- end Watson-DCT, Watson-DFT, Adaptive --------------------------------------------------------------------
