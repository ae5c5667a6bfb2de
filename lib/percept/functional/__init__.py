"""percept.functional: the math of every metric as plain functions, one module per family.

Each function takes NCHW float tensors in [0, 1] of the same shape and returns the metric per image, reduced
by ``reduction`` ("mean" or "sum" over the images, or "none" for shape (N,)). The ``nn.Module`` metrics of
:mod:`percept.metrics` (what :func:`percept.get_metric` builds) are thin wrappers over these functions; the
deep metrics' functions build their frozen module once per options and device and reuse it.

>>> import torch
>>> from percept import functional as PF
>>> x = torch.zeros(2, 3, 16, 16)
>>> PF.l1(x, x + 0.5)
tensor(0.5000)
>>> PF.watson_dft(torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64), reduction="none").shape
torch.Size([2])
"""

__all__: list[str] = []

# ---- pixel and SSIM family (functional/pixel.py, functional/ssim.py) -------------------------------------
from percept.functional.pixel import l1, l2, psnr  # noqa: E402
from percept.functional.ssim import ms_ssim, ssim, ssim_skimage  # noqa: E402

__all__ += ["l1", "l2", "psnr", "ssim", "ms_ssim", "ssim_skimage"]
# ---- end of the pixel and SSIM family ---------------------------------------------------------------------

# ---- deep metrics (functional/deep.py) --------------------------------------------------------------------
from percept.functional.deep import deeploss, dps, elpips, lpips  # noqa: E402

__all__ += ["lpips", "deeploss", "dps", "elpips"]
# ---- end of deep metrics ----------------------------------------------------------------------------------

# ---- Watson-DCT, Watson-DFT, Adaptive (functional/watson.py, functional/adaptive.py) ---------------------
from percept.functional.adaptive import adaptive  # noqa: E402
from percept.functional.watson import watson_dct, watson_dft  # noqa: E402

__all__ += ["watson_dct", "watson_dft", "adaptive"]
# ---- end of Watson-DCT, Watson-DFT, Adaptive --------------------------------------------------------------
