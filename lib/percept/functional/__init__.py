"""percept.functional: the metrics as plain functions, one module per family (see DESIGN.md).

Each function takes NCHW float tensors in [0, 1] of the same shape and returns a scalar (``reduction`` "mean"
or "sum") or the (N,) per-image values ("none"); the parameters are arguments with the papers' values as
defaults. The metric modules (``percept.get_metric``) are thin wrappers over these functions that hold
trained weights and pick a fast path by device.

>>> import torch, percept
>>> x, y = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
>>> percept.functional.watson_dft(x, y, reduction="none").shape
torch.Size([2])
"""

# ---- Watson-DCT, Watson-DFT, Adaptive (percept.functional.watson, percept.functional.adaptive) -----------
from percept.functional.adaptive import adaptive as adaptive
from percept.functional.watson import watson_dct as watson_dct
from percept.functional.watson import watson_dft as watson_dft

# ---- end of Watson-DCT, Watson-DFT, Adaptive --------------------------------------------------------------
