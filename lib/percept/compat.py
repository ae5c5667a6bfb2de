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

>>> import torch
>>> from percept.compat import LossProvider
>>> loss = LossProvider().get_loss_function("Watson-fft", "RGB", reduction="sum")   # as in the original code
>>> loss(torch.rand(4, 3, 64, 64), torch.rand(4, 3, 64, 64)).shape                  # summed over the batch
torch.Size([])
"""

from __future__ import annotations

import torch
import torch.nn as nn

from percept import checks, registry
from percept.functional.adaptive import alpha_from_latent, barron_constants, coefficients, nll_map, scale_from_latent
from percept.metrics.adaptive import PRETRAINED_SIZE, load_czolbe_weights

__all__ = [
    "LossProvider", "get_loss_function", "OriginalSSIM", "OriginalDeeploss", "original_deeploss",
    "OriginalAdaptive", "OriginalGreyscaleAdaptive", "original_adaptive",
]


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


# ------------------------------------------------------------------------------------------------ Adaptive
class OriginalAdaptive(nn.Module):
    """Reproduction of the original ``RobustLoss(image_size)`` (RGB): AdaptiveImageLossFunction(YUV, DCT).

    Parameters ``robust_loss.adaptive_lossfun.latent_alpha`` / ``latent_scale`` of shape (1, C*H*W), the
    original's state-dict names, so ``load_state_dict`` takes the original checkpoints (leading "." stripped).
    ``forward(input, target)`` on (N, C, H, W) = (N, *image_size) tensors returns, like the original,
    the sum of the elementwise NLL for ``'sum'``, its mean for ``'mean'`` and the (N, C, H, W) map for any
    other reduction (``'none'``). No input range check, as in the original.
    """

    def __init__(self, image_size=(3, 64, 64), reduction: str = "mean") -> None:
        super().__init__()
        size = tuple(int(s) for s in image_size)
        if len(size) != 3 or size[0] != 3 or min(size) < 1:
            raise ValueError(
                "the original Adaptive loss needs image_size (3, H, W) (3 even for LA, see pitfall P21), "
                f"got {image_size!r}"
            )
        self.image_size = size
        self.reduction = reduction
        numel = size[0] * size[1] * size[2]
        self.robust_loss = nn.Module()
        self.robust_loss.adaptive_lossfun = nn.Module()
        self.robust_loss.adaptive_lossfun.latent_alpha = nn.Parameter(torch.zeros(1, numel))
        self.robust_loss.adaptive_lossfun.latent_scale = nn.Parameter(torch.zeros(1, numel))

    def elementwise(self, residual: torch.Tensor) -> torch.Tensor:
        if residual.dim() != 4 or tuple(residual.shape[1:]) != self.image_size:
            raise ValueError(
                f"Adaptive (original) was built for images of shape {self.image_size}, got {tuple(residual.shape)}"
            )
        params = self.robust_loss.adaptive_lossfun
        x = coefficients(residual, "original")
        alpha = alpha_from_latent(params.latent_alpha.to(x.dtype)).reshape(self.image_size)
        scale = scale_from_latent(params.latent_scale.to(x.dtype)).reshape(self.image_size)
        return nll_map(x, barron_constants(alpha, scale))

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        distance = self.elementwise(input - target)
        if self.reduction == "sum":
            return distance.sum()
        if self.reduction == "mean":
            return distance.mean()
        return distance


class OriginalGreyscaleAdaptive(nn.Module):
    """The original ``GreyscaleWrapper(RobustLoss)`` used for colorspace 'LA'.

    Grey input (N, 1, H, W) is expanded to 3 identical channels, the input the grey weights were trained on.
    RGB input (N, 3, H, W) is first converted with the original's weights 0.3 R + 0.59 G + 0.11 B.

    The original tested the BATCH size instead of the channel count (pitfall P8). ``fix_greyscale=True``
    (the default, the policy of :mod:`percept.compat`) tests the channel count. ``fix_greyscale=False``
    reproduces the bug: conversion only when N == 3, so a 3-channel batch of another size is NOT converted
    (its RGB residual meets the grey weights) and a 1-channel batch of 3 fails (the original raised
    IndexError; here ValueError). Both agree on 1-channel batches of size != 3, which the golden LA values use.
    """

    _LUMA = (0.3, 0.59, 0.11)

    def __init__(self, image_size=(3, 64, 64), reduction: str = "mean", fix_greyscale: bool = True) -> None:
        super().__init__()
        self.fix_greyscale = fix_greyscale
        self.loss = OriginalAdaptive(image_size, reduction)

    def _grey(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, [0]] * self._LUMA[0] + x[:, [1]] * self._LUMA[1] + x[:, [2]] * self._LUMA[2]

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if input.dim() != 4 or input.shape != target.shape:
            raise ValueError(
                f"expected two NCHW batches of the same shape, got {tuple(input.shape)}, {tuple(target.shape)}"
            )
        n, c, h, w = input.shape
        if self.fix_greyscale:
            if c not in (1, 3):
                raise ValueError(f"the LA Adaptive loss takes 1- or 3-channel images, got {c} channels")
            convert = c == 3
        else:
            if n == 3 and c != 3:
                raise ValueError(
                    "the original LA Adaptive loss fails on a batch of 3 one-channel images (its GreyscaleWrapper "
                    "tests the batch size instead of the channel count, pitfall P8); use fix_greyscale=True"
                )
            convert = n == 3
        if convert:
            input, target = self._grey(input), self._grey(target)
        return self.loss(input.expand(n, 3, h, w), target.expand(n, 3, h, w))


def original_adaptive(
    colorspace: str = "RGB",
    reduction: str = "sum",
    pretrained: bool = True,
    image_size=None,
    *,
    fix_greyscale: bool = True,
) -> nn.Module:
    """The Adaptive loss as ``LossProvider().get_loss_function('Adaptive', colorspace, reduction, ...)`` built it.

    Args:
        colorspace: RGB or grey ("LA"), read with :func:`percept.checks.normalize_colorspace` (so, unlike the
            original, "gray" means grey).
        reduction: "sum" (sum of the elementwise NLL over the batch, can be negative), "mean", or anything
            else for the elementwise (N, 3, H, W) map (the original's 'none').
        pretrained: load ``{rgb,gray}_adaptive_trial0.pth`` and freeze every parameter (requires_grad False).
            Without it the parameters are alpha = 1, c = 1 and, as in the original, require grad.
        image_size: (3, H, W); None means (3, 64, 64), the provider's fixed value. The weights fit only that.
        fix_greyscale: LA only; False reproduces the GreyscaleWrapper's batch-size test (pitfall P8), see
            :class:`OriginalGreyscaleAdaptive`.

    Returns an ``nn.Module`` called as ``loss(input, target)``; RGB needs (N, 3, H, W) input, LA takes
    (N, 1, H, W) (expanded to 3 channels) or (N, 3, H, W) (converted to grey first), see
    :class:`OriginalGreyscaleAdaptive`.
    """
    size = (3, *PRETRAINED_SIZE) if image_size is None else tuple(int(s) for s in image_size)
    grey = checks.normalize_colorspace(colorspace) == "grey"
    module = OriginalGreyscaleAdaptive(size, reduction, fix_greyscale) if grey else OriginalAdaptive(size, reduction)
    if pretrained:
        if size != (3, *PRETRAINED_SIZE):
            raise ValueError(f"the pretrained Adaptive weights fit only image_size (3, 64, 64), got {size}")
        latent_alpha, latent_scale = load_czolbe_weights("grey" if grey else "rgb")
        core = module.loss if grey else module
        core.load_state_dict(
            {
                "robust_loss.adaptive_lossfun.latent_alpha": latent_alpha[None],
                "robust_loss.adaptive_lossfun.latent_scale": latent_scale[None],
            }
        )
        for p in module.parameters():
            p.requires_grad_(False)
    return module
