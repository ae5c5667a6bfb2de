"""Pixel-wise metrics: L1 (mean absolute error), L2 (mean squared error) and PSNR.

All three take NCHW float tensors in [0, 1] of the same shape and compute one value per image, shape (N,),
averaged over C, H and W, then apply ``reduction`` ("sum", "mean" or "none").

L2 also offers ``colorspace="lab"``, the LPIPS paper's L2 baseline (its 2AFC table's default): RGB input
converted to CIELAB (:func:`percept.color.rgb_to_lab`, = ``skimage.color.rgb2lab``) and divided by 100, so
the value is the mean over the three Lab channels of ((Lab_input - Lab_target) / 100)^2. The LPIPS
repository's ``l2`` helper returns half of that (``0.5 * mean``), on 8-bit images (tensors truncated to
uint8 before ``rgb2lab``): the same ranking, so the same 2AFC and JND scores.

The original LossProvider used ``nn.L1Loss`` / ``nn.MSELoss`` with reduction ``'sum'``, i.e. a sum over every
element; that equals the per-image value here times C*H*W, summed over the batch.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from percept import checks
from percept.color import rgb_to_lab_scaled

#: PSNR floor on the mean squared error: identical images get 10 * log10(1 / 1e-10) = 100 dB, not inf
PSNR_MSE_FLOOR = 1e-10


def _per_image_mean(values: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N,) mean over everything but the batch dimension."""
    return values.flatten(1).mean(dim=1)


class _PerImageError(torch.autograd.Function):
    """Per-image mean absolute (``power=1``) or squared (``power=2``) error with its gradient in closed form.

    The difference is computed once and itself becomes the gradient (``sign(d) / D`` or ``2 d / D``),
    scaled in place by the backward pass (a second backward pass recomputes it). A training step
    therefore holds one input-sized tensor where autograd keeps two or three. Differentiable in
    ``input`` only (the target is a constant here).
    """

    @staticmethod
    def forward(ctx, input, target, power):
        diff = (input - target).flatten(1)
        if power == 1:
            values = diff.abs().sum(dim=1)  # (vector_norm's float32 accumulation is less accurate)
        else:
            values = torch.linalg.vecdot(diff, diff)
        values = values / diff.shape[1]
        if ctx.needs_input_grad[0]:
            grad = diff.sign_() if power == 1 else diff.mul_(2)
            ctx.grad, ctx.power, ctx.shape = grad.div_(diff.shape[1]), power, input.shape
            ctx.save_for_backward(input, target)
        return values

    @staticmethod
    def backward(ctx, grad_values):
        grad = ctx.grad
        if grad is None:  # a second backward pass: the first one scaled the gradient in place
            input, target = ctx.saved_tensors
            diff = (input - target).flatten(1)
            grad = (diff.sign_() if ctx.power == 1 else diff.mul_(2)).div_(diff.shape[1])
        ctx.grad = None
        return grad.mul_(grad_values.to(grad.dtype)[:, None]).view(ctx.shape), None, None


def _per_image_error(input: torch.Tensor, target: torch.Tensor, power: int) -> torch.Tensor:
    """Mean |input - target| ** power per image: closed-form gradients when only the input needs one."""
    if target.requires_grad and torch.is_grad_enabled():
        diff = input - target
        return _per_image_mean(diff.abs() if power == 1 else diff.square())
    return _PerImageError.apply(input, target, power)


class _PixelMetric(nn.Module):
    """Shared constructor and checks; subclasses define ``per_image(input, target) -> (N,)``."""

    higher_is_better = False
    name = "pixel"
    #: whether ``colorspace="lab"`` (RGB input compared in CIELAB) is offered
    offers_lab = False

    def __init__(self, *, colorspace: str = "rgb", reduction: str = "mean") -> None:
        super().__init__()
        self.colorspace = checks.normalize_colorspace(colorspace, lab=self.offers_lab)
        self.channels = checks.channels_of(self.colorspace)
        self.reduction = checks.check_reduction(reduction)

    def per_image(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """input, target: (N, C, H, W) floats in [0, 1], C = 3 (rgb) or 1 (grey).

        Returns a scalar ("sum", "mean") or shape (N,) ("none").
        """
        if self.colorspace == "lab":
            checks.check_lab_input(input, target, name=self.name)
        checks.check_pair(input, target, channels=self.channels, name=self.name)
        if self.colorspace == "lab":
            input, target = rgb_to_lab_scaled(input), rgb_to_lab_scaled(target)
        return checks.reduce(self.per_image(input, target), self.reduction)

    def extra_repr(self) -> str:
        return f"colorspace={self.colorspace!r}, reduction={self.reduction!r}"


class L1(_PixelMetric):
    """Mean absolute error per image: mean over C, H, W of |input - target|, in [0, 1]."""

    name = "l1"

    def per_image(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _per_image_error(input, target, 1)


class L2(_PixelMetric):
    """Mean squared error per image: mean over C, H, W of (input - target)^2, in [0, 1].

    ``colorspace``: "rgb", "grey" or "lab" (RGB input; the squared error of CIELAB / 100, the LPIPS paper's
    L2 baseline: twice the LPIPS repository's ``l2(..., range=100.)`` value; see the module docstring).
    """

    name = "l2"
    offers_lab = True

    def per_image(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _per_image_error(input, target, 2)


class PSNR(_PixelMetric):
    """Peak signal-to-noise ratio in dB per image, for data range 1: ``10 * log10(1 / MSE)``.

    A similarity, not a distance: ``higher_is_better = True``. The MSE is floored at ``PSNR_MSE_FLOOR``
    (1e-10), so identical images give a finite 100 dB (with zero gradient) instead of inf. Values are
    >= 0 dB for inputs in [0, 1]. As a training loss, minimise its negative.
    """

    higher_is_better = True
    name = "psnr"

    def per_image(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # float16 cannot hold the 1e-10 floor: compute the MSE in at least float32
        dtype = torch.promote_types(input.dtype, torch.float32)
        mse = _per_image_mean((input.to(dtype) - target.to(dtype)).square())
        return -10.0 * torch.log10(mse.clamp_min(PSNR_MSE_FLOOR))
