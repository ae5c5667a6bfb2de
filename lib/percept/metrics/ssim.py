"""SSIM, MS-SSIM and scikit-image's SSIM as ``nn.Module`` distances: ``1 - SSIM`` and ``1 - MS-SSIM`` per image.

Thin wrappers over :mod:`percept.functional.ssim`, where the window, the three paddings ("valid" = pytorch-msssim,
"zeros" = the original Czolbe et al. code, "reflect" = torchmetrics), MS-SSIM, the fused backward and the
execution strategies ("chunked" on CPU, "batched" on GPUs: :mod:`percept.execution`) are documented. The
original LossProvider's SSIM (its 'sum' is a batch mean) is :class:`percept.compat.OriginalSSIM`.

>>> import torch
>>> from percept.metrics.ssim import SSIM
>>> x = torch.rand(2, 3, 32, 32)
>>> SSIM(reduction="none")(x, x)                   # 1 - SSIM: 0 for identical images
tensor([0., 0.])
"""

from __future__ import annotations

import torch
import torch.nn as nn

from percept import checks, execution
from percept.functional.ssim import check_padding, ms_ssim, ssim, ssim_skimage

__all__ = ["SSIM", "MSSSIM", "UniformSSIM"]


class SSIM(nn.Module):
    """``1 - SSIM`` per image: a distance in [0, 2], 0 for identical images (:func:`percept.functional.ssim`).

    Args:
        colorspace: "rgb" (3 channels), "grey" (1 channel, alias "LA") or "lab" (RGB input, compared in
            CIELAB divided by 100: the Gaussian SSIM of ``skimage.color.rgb2lab`` images with data range 100).
        reduction: "mean", "sum" or "none" over the per-image values.
        padding: "valid" (default; = pytorch-msssim and Wang et al.'s reference), "zeros" (= the original
            Czolbe et al. / pytorch-ssim code) or "reflect" (= torchmetrics).
        strategy: "auto" (default: "chunked" on CPU, "batched" elsewhere), "chunked" or "batched"; how the
            batch goes through the same formula (see :mod:`percept.execution`), not what it computes.

    ``forward(input, target)``: (N, C, H, W) floats in [0, 1], H, W >= 11; returns a scalar or (N,).
    Float16/bfloat16 inputs (and autocast) are computed and returned in float32.
    """

    higher_is_better = False

    def __init__(
        self, *, colorspace: str = "rgb", reduction: str = "mean", padding: str = "valid", strategy: str = "auto"
    ) -> None:
        super().__init__()
        self.colorspace, self.channels, self.reduction = checks.metric_options(colorspace, reduction, lab=True)
        self.padding = check_padding(padding)
        self.strategy = execution.check_strategy(strategy)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        similarity = ssim(
            input, target, colorspace=self.colorspace, padding=self.padding, strategy=self.strategy, reduction="none"
        )
        return checks.reduce(1 - similarity, self.reduction)

    def extra_repr(self) -> str:
        return (
            f"colorspace={self.colorspace!r}, reduction={self.reduction!r}, padding={self.padding!r}, "
            f"strategy={self.strategy!r}"
        )


class UniformSSIM(nn.Module):
    """``1 - SSIM`` per image with scikit-image's default SSIM: the LPIPS paper's SSIM baseline.

    The SSIM is :func:`percept.functional.ssim_skimage` (7x7 uniform window, sample covariances, border
    cropped), i.e. ``skimage.metrics.structural_similarity(a, b, data_range=255, channel_axis=-1)`` of the 8-bit
    images ``a = 255 input``, ``b = 255 target`` (colorspace "rgb" or "grey"), or of ``rgb2lab`` images with
    ``data_range=100`` (colorspace "lab", the published table's default). The LPIPS repository's DSSIM is
    ``(1 - SSIM) / 2``, half of this value (same ranking, same 2AFC and JND scores), computed on images
    truncated to uint8.

    Args:
        colorspace: "rgb" (3 channels), "grey" (1 channel, alias "LA") or "lab" (RGB input, compared in
            CIELAB / 100).
        reduction: "mean", "sum" or "none" over the per-image values.

    ``forward(input, target)``: (N, C, H, W) floats in [0, 1], H, W >= 7; returns a scalar or (N,), a
    distance in [0, 2]. Float16/bfloat16 inputs are computed and returned in float32.
    """

    higher_is_better = False

    def __init__(self, *, colorspace: str = "rgb", reduction: str = "mean") -> None:
        super().__init__()
        self.colorspace, self.channels, self.reduction = checks.metric_options(colorspace, reduction, lab=True)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        similarity = ssim_skimage(input, target, colorspace=self.colorspace, reduction="none")
        return checks.reduce(1 - similarity, self.reduction)

    def extra_repr(self) -> str:
        return f"colorspace={self.colorspace!r}, reduction={self.reduction!r}"


class MSSSIM(nn.Module):
    """``1 - MS-SSIM`` per image: a distance in [0, 1], 0 for identical images (:func:`percept.functional.ms_ssim`).

    Equals ``1 - pytorch_msssim.ms_ssim(input, target, data_range=1, size_average=False)``. Where a scale's
    contrast-structure mean is <= 0 its term is clipped to 0 (relu, as pytorch-msssim), so that channel's
    MS-SSIM is 0.

    Args:
        colorspace: "rgb" (3 channels) or "grey" (1 channel, alias "LA").
        reduction: "mean", "sum" or "none" over the per-image values.
        strategy: "auto" (default: "chunked" on CPU, "batched" elsewhere), "chunked" or "batched" (see
            :mod:`percept.execution`).

    ``forward(input, target)``: (N, C, H, W) floats in [0, 1] with H, W >= 161 (``MS_SSIM_MIN_SIZE``, else
    ``ValueError``); returns a scalar or (N,).
    """

    higher_is_better = False

    def __init__(self, *, colorspace: str = "rgb", reduction: str = "mean", strategy: str = "auto") -> None:
        super().__init__()
        self.colorspace, self.channels, self.reduction = checks.metric_options(colorspace, reduction)
        self.strategy = execution.check_strategy(strategy)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        similarity = ms_ssim(input, target, colorspace=self.colorspace, strategy=self.strategy, reduction="none")
        return checks.reduce(1 - similarity, self.reduction)

    def extra_repr(self) -> str:
        return f"colorspace={self.colorspace!r}, reduction={self.reduction!r}, strategy={self.strategy!r}"
