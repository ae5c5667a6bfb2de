"""Drop-in replacement for the original ``LossProvider`` of Czolbe et al. (2020).

``LossProvider().get_loss_function('Watson-fft', 'RGB', reduction='sum')`` returns a module that
computes what the original returned, with the original's names, defaults and output shapes:

- ``reduction='sum'`` sums per-image distances over the batch; ``'none'`` gives (N,) for Watson,
  (N, 1, 1, 1) for Deeploss and elementwise tensors for L1/L2/Adaptive. SSIM's ``'sum'`` is
  1 - mean SSIM (a mean, as in the original).
- Watson's luminance masking is pooled over the whole batch, so one image's value depends on the other
  images in the batch. ``percept.get_metric`` computes each image alone instead.
- ``deterministic=False`` (the default, as in the original) shifts both images by the same random
  offset of up to 8 px; the shift draws from torch's RNG, not numpy's.

- Watson uses the original formula exactly, including its dark-block behaviour: a pure-black target
  block gets a near-zero threshold, so errors there weigh enormously (about 3e7 on a real photograph
  with black blocks). That weight is what pulls a VAE's black background to black early in training,
  so the paper's training behaviour needs it (see :mod:`percept.metrics.watson` and the README).
- L1/L2 are torch's ``L1Loss``/``MSELoss`` as in the original, but check their input first (same NCHW shape,
  finite, in [0, 1]); ``validate=False`` skips the checks for the original's exact behaviour.

Fixed rather than reproduced: ``'gray'``/``'Gray'`` mean grey (the original silently used RGB), grey
conversion checks the channel count rather than the batch size, and modules move with ``.to(device)``.
"""

from __future__ import annotations

import torch.nn as nn

from percept import checks, registry


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
            from percept.metrics.ssim import original_ssim

            return original_ssim(reduction)
        if name in ("Watson-dct", "Watson-fft"):  # paper style: batch-pooled luminance, no floor (the original)
            return registry.get_metric(
                rec.name, style="paper", colorspace=space, reduction=reduction, deterministic=deterministic,
                pretrained=pretrained
            )
        if name == "Watson-vgg":
            return registry.get_metric(rec.name, colorspace=space, reduction=reduction, pretrained=pretrained)
        if name.startswith("Deeploss"):
            from percept.metrics.deep import original_deeploss

            return original_deeploss(name.split("-")[1], space, reduction)
        from percept.metrics.adaptive import original_adaptive

        if image_size is None:
            raise ValueError("Adaptive needs image_size, e.g. (3, 64, 64) (3 channels also for 'LA')")
        return original_adaptive(space, reduction, pretrained, image_size)


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


def get_loss_function(model: str, colorspace: str = "RGB", **kwargs) -> nn.Module:
    """Shortcut for ``LossProvider().get_loss_function(...)``."""
    return LossProvider().get_loss_function(model, colorspace, **kwargs)
