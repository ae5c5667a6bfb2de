"""Pixel-wise metrics as ``nn.Module``: L1 (mean absolute error), L2 (mean squared error) and PSNR.

Thin wrappers over :mod:`percept.functional.pixel` (the formulas, the Lab variant of L2 and the closed-form
gradient are documented there). Each takes NCHW float tensors in [0, 1] of the same shape, computes one
value per image, shape (N,), averaged over C, H and W, then applies ``reduction`` ("sum", "mean" or "none").
The original LossProvider's L1/L2 (sums over every element) are in :mod:`percept.compat`.

>>> import torch
>>> from percept.metrics.pixel import L2, PSNR
>>> black, grey = torch.zeros(1, 3, 4, 4), torch.full((1, 3, 4, 4), 0.5)
>>> L2(reduction="none")(black, grey), PSNR(reduction="none")(black, grey)
(tensor([0.2500]), tensor([6.0206]))
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from percept import checks
from percept.functional.pixel import PSNR_MSE_FLOOR, l1, l2, psnr

__all__ = ["L1", "L2", "PSNR", "PSNR_MSE_FLOOR"]


class _PixelMetric(nn.Module):
    """Shared constructor and forward; subclasses set ``name`` and ``function``."""

    higher_is_better = False
    name = "pixel"
    #: the function of :mod:`percept.functional.pixel` it wraps (set by each subclass)
    function: Callable[..., torch.Tensor]
    #: whether ``colorspace="lab"`` (RGB input compared in CIELAB) is offered
    offers_lab = False

    def __init__(self, *, colorspace: str = "rgb", reduction: str = "mean") -> None:
        super().__init__()
        self.colorspace, self.channels, self.reduction = checks.metric_options(colorspace, reduction, lab=self.offers_lab)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """input, target: (N, C, H, W) floats in [0, 1], C = 3 (rgb, lab) or 1 (grey).

        Returns a scalar ("sum", "mean") or shape (N,) ("none").
        """
        return self.function(input, target, colorspace=self.colorspace, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"colorspace={self.colorspace!r}, reduction={self.reduction!r}"


class L1(_PixelMetric):
    """Mean absolute error per image: mean over C, H, W of |input - target|, in [0, 1] (:func:`percept.functional.l1`)."""

    name = "l1"
    function = staticmethod(l1)


class L2(_PixelMetric):
    """Mean squared error per image: mean over C, H, W of (input - target)^2, in [0, 1] (:func:`percept.functional.l2`).

    ``colorspace``: "rgb", "grey" or "lab" (RGB input; the squared error of CIELAB / 100, the LPIPS paper's
    L2 baseline: twice the LPIPS repository's ``l2(..., range=100.)`` value).
    """

    name = "l2"
    function = staticmethod(l2)
    offers_lab = True


class PSNR(_PixelMetric):
    """Peak signal-to-noise ratio in dB per image, for data range 1: ``10 * log10(1 / MSE)``
    (:func:`percept.functional.psnr`).

    A similarity, not a distance: ``higher_is_better = True``. The MSE is floored at ``PSNR_MSE_FLOOR``
    (1e-10), so identical images give a finite 100 dB (with zero gradient) instead of inf. Values are
    >= 0 dB for inputs in [0, 1]. As a training loss, minimise its negative.
    """

    higher_is_better = True
    name = "psnr"
    function = staticmethod(psnr)
