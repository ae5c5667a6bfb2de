"""Everything kept only to equal the original code of Czolbe et al. (2020): its ``LossProvider`` and its losses'
output conventions.

``LossProvider().get_loss_function('Watson-fft', 'RGB', reduction='sum')`` returns a module that
computes what the original returned, with the original's names, defaults and output shapes. The metric
modules of :mod:`percept.metrics` have one reduction semantic ("none" -> (N,), "mean" and "sum" over the
images); the original's reductions live here, on top of the same per-image values:

- ``reduction='sum'`` sums per-image distances over the batch; ``'none'`` gives (N,) for Watson,
  (N, 1, 1, 1) for Deeploss (:class:`OriginalDeeploss`) and elementwise tensors for L1/L2/Adaptive.
  SSIM's ``'sum'`` is 1 - mean SSIM (a mean, as in the original; :class:`OriginalSSIM`).
- Watson's luminance masking is pooled over the whole batch, so one image's value depends on the other
  images in the batch. ``percept.get_metric`` computes each image alone instead.
- ``deterministic=False`` (the default, as in the original) shifts both images by the same random
  offset of up to 8 px; the shift draws from torch's RNG, not numpy's.

- Watson uses the original formula exactly, including its dark-block behaviour: a pure-black target
  block gets a near-zero threshold, so errors there weigh enormously (about 3e7 on a real photograph
  with black blocks). That weight is what pulls a VAE's black background to black early in training,
  so the paper's training behaviour needs it (see :mod:`percept.metrics.watson` and the README).
- L1/L2 are torch's ``L1Loss``/``MSELoss`` as in the original (their 'none' is elementwise, their 'sum' a
  sum over every element), but check their input first (same NCHW shape, finite, in [0, 1]);
  ``validate=False`` skips the checks for the original's exact behaviour.

Fixed rather than reproduced: ``'gray'``/``'Gray'`` mean grey (the original silently used RGB), grey
conversion checks the channel count rather than the batch size, and modules move with ``.to(device)``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from percept import checks, registry

__all__ = ["LossProvider", "get_loss_function", "OriginalSSIM", "OriginalDeeploss", "original_deeploss"]


class LossProvider:
    """The original ``LossProvider`` interface on top of percept's metrics."""

    loss_functions = [
        "L1",
        "L2",
        "SSIM",
        "Watson-dct",
        "Watson-fft",
        "Watson-vgg",
        "Deeploss-vgg",
        "Deeploss-squeeze",
        "Adaptive",
    ]
    color_models = ["LA", "RGB"]

    def get_loss_function(
        self,
        model: str,
        colorspace: str = "RGB",
        reduction: str = "sum",
        deterministic: bool = False,
        pretrained: bool = True,
        image_size: tuple[int, int, int] | None = None,
        validate: bool = True,
    ) -> nn.Module:
        """Build a loss by its original name; see the module docstring for the semantics.

        ``validate=False`` gives L1/L2 exactly as the original (``nn.L1Loss``/``nn.MSELoss``, which accept
        NaN, any range and broadcast mismatched shapes); by default they check their input first."""
        rec = registry.by_original(model)  # the original's names, e.g. "watson" = Watson-dct as in the original
        name = rec.original[0]
        space = checks.normalize_colorspace(colorspace)
        if reduction not in ("sum", "none"):
            raise ValueError(f"reduction must be 'sum' or 'none' (the original's choices), got {reduction!r}")

        if name in ("L1", "L2"):
            if not validate:
                return nn.L1Loss(reduction=reduction) if name == "L1" else nn.MSELoss(reduction=reduction)
            return _CheckedL1(reduction=reduction) if name == "L1" else _CheckedMSE(reduction=reduction)
        if name == "SSIM":
            return OriginalSSIM(reduction=reduction)
        if name in ("Watson-dct", "Watson-fft"):  # paper style: batch-pooled luminance, no floor (the original)
            return registry.get_metric(
                rec.name, style="paper", colorspace=space, reduction=reduction, deterministic=deterministic,
                pretrained=pretrained
            )
        if name == "Watson-vgg":
            return registry.get_metric(rec.name, colorspace=space, reduction=reduction, pretrained=pretrained)
        if name.startswith("Deeploss"):
            # (always the trained weights, as before: the original's pretrained=False keeps the ImageNet
            # backbone with untrained linear layers, which percept's Deeploss(pretrained=False) is not)
            return original_deeploss(name.split("-")[1], space, reduction)
        from percept.metrics.adaptive import original_adaptive

        if image_size is None:
            raise ValueError("Adaptive needs image_size, e.g. (3, 64, 64) (3 channels also for 'LA')")
        return original_adaptive(space, reduction, pretrained, image_size)


def get_loss_function(model: str, colorspace: str = "RGB", **kwargs) -> nn.Module:
    """Shortcut for ``LossProvider().get_loss_function(...)``."""
    return LossProvider().get_loss_function(model, colorspace, **kwargs)


# ------------------------------------------------------------------------------------------------ L1 / L2
class _CheckedL1(nn.L1Loss):
    """``nn.L1Loss`` (the original's L1, same numbers) that first checks its input like every percept metric:
    same NCHW shape (no broadcasting), finite, in [0, 1]."""

    def forward(self, input, target):
        checks.check_pair(input, target, name="L1")
        return super().forward(input, target)


class _CheckedMSE(nn.MSELoss):
    """``nn.MSELoss`` (the original's L2, same numbers) with the input checks of :class:`_CheckedL1`."""

    def forward(self, input, target):
        checks.check_pair(input, target, name="L2")
        return super().forward(input, target)


# ------------------------------------------------------------------------------------------------ SSIM
class OriginalSSIM(nn.Module):
    """The SSIM loss of the original Czolbe et al. LossProvider: the same values up to float32 rounding.

    The per-image SSIM of :func:`percept.functional.ssim` with zero padding of 5 (``padding="zeros"``), for any
    channel count (the original ignores the colorspace) and any image size (also smaller than the window).
    ``reduction``: "sum" and "mean" both give 1 - mean SSIM over the whole batch, a scalar (the original's
    quirk: its 'sum' is a mean); "none" gives (N,), 1 - the per-image mean. Input: (N, C, H, W) in [0, 1].
    """

    higher_is_better = False

    def __init__(self, reduction: str = "sum") -> None:
        super().__init__()
        self.reduction = checks.check_reduction(reduction)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        from percept.functional.ssim import _ssim_per_image  # (on first use: importing percept stays cheap)

        checks.check_pair(input, target, name="ssim (original)")
        per_image = 1 - _ssim_per_image(input, target, "zeros")
        return per_image if self.reduction == "none" else per_image.mean()

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


# ------------------------------------------------------------------------------------------------ Deeploss
class OriginalDeeploss(nn.Module):
    """The original LossProvider's output convention around per-image Deeploss values (``metric``, whose
    reduction is "none"): "sum" the scalar sum over the batch, "mean" the batch mean, "none" shape (N, 1, 1, 1)."""

    higher_is_better = False

    def __init__(self, metric: nn.Module, reduction: str):
        super().__init__()
        if getattr(metric, "reduction", "none") != "none":
            raise ValueError(
                f"OriginalDeeploss wraps per-image values: metric.reduction must be 'none', got {metric.reduction!r}"
            )
        self.metric = metric
        self.reduction = checks.check_reduction(reduction)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        d = self.metric(input, target)  # (N,)
        if self.reduction == "none":
            return d.view(-1, 1, 1, 1)
        return checks.reduce(d, self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


def original_deeploss(net: str, colorspace: str, reduction: str, *, pretrained: bool = True) -> nn.Module:
    """Deeploss as the original ``LossProvider.get_loss_function('Deeploss-<net>', colorspace, reduction)``
    returns it: ``'sum'`` gives the scalar sum over the batch, ``'none'`` shape (N, 1, 1, 1) (``'mean'``,
    which the original treated like 'none', gives the batch mean here). Grey ('LA', 'grey', ...) takes
    1-channel input, expanded to 3 channels. All parameters are frozen."""
    from percept.metrics.deep import Deeploss

    if reduction not in ("sum", "none", "mean"):
        raise ValueError(f"unknown reduction {reduction!r}: use 'sum' or 'none' (or 'mean')")
    metric = Deeploss(net=net, colorspace=colorspace, reduction="none", pretrained=pretrained)
    metric.requires_grad_(False)
    return OriginalDeeploss(metric, reduction)
