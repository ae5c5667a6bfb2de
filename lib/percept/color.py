"""Colour conversions used by the metrics: RGB -> YCbCr (full-range BT.601, as in JPEG), grey and CIELAB.

>>> import torch
>>> from percept.color import rgb_to_grey, rgb_to_ycbcr
>>> rgb_to_ycbcr(torch.ones(1, 3, 1, 1)).flatten()         # white: Y = 1, Cb = Cr = 0.5
tensor([1.0000, 0.5000, 0.5000])
>>> rgb_to_grey(torch.ones(1, 3, 2, 2)).shape
torch.Size([1, 1, 2, 2])
"""

from __future__ import annotations

import torch

from percept.execution import cached_constant

#: rows are Y, Cb, Cr; columns are R, G, B (full-range BT.601 / JPEG)
YCBCR_MATRIX = (
    (0.299, 0.587, 0.114),
    (-0.1687, -0.3313, 0.5),
    (0.5, -0.4187, -0.0813),
)
YCBCR_OFFSET = (0.0, 0.5, 0.5)

#: ITU-R BT.601 luma weights (what the golden grey images and torchvision's Grayscale use)
LUMA_BT601 = (0.299, 0.587, 0.114)
#: the rounded weights of the original Watson/Deeploss code's greyscale conversion
LUMA_ROUNDED = (0.3, 0.59, 0.11)


def rgb_to_ycbcr(x: torch.Tensor, *, scale: float = 1.0, out: torch.Tensor | None = None) -> torch.Tensor:
    """(N, 3, ...) RGB in [0, 1] -> (N, 3, ...) YCbCr with Y in [0, 1] and Cb, Cr centred on 0.5.

    Evaluated plane by plane as ``((m0 * R + m1 * G) + m2 * B) + offset``, the order of operations of the
    original Watson code, with every intermediate rounded as there: on flat image regions the
    Watson-DFT phase term depends on rounding at this level. Equal pixels give equal outputs.
    ``scale`` multiplies the result; a power of two is folded into the coefficients, which leaves
    every rounding step unchanged (the result is bit for bit the unscaled one times ``scale``).
    ``out`` (no autograd) may be any strided tensor of the input's shape, e.g. a view in block order.
    """
    if x.requires_grad and torch.is_grad_enabled():  # autograd does not record out= operations
        r, g, b = x[:, 0], x[:, 1], x[:, 2]
        planes = [
            m[0] * scale * r + m[1] * scale * g + m[2] * scale * b + o * scale
            for m, o in zip(YCBCR_MATRIX, YCBCR_OFFSET)
        ]
        return torch.stack(planes, dim=1) if out is None else out.copy_(torch.stack(planes, dim=1))
    # the same operations for the three output planes at once: column j of the matrix times input plane j
    shape = (1, 3) + (1,) * (x.dim() - 2)
    coefficients = _scaled_coefficients(scale, x.dtype, x.device)  # (4, 3): the matrix columns, then offsets
    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    torch.mul(x[:, 0:1], coefficients[0].view(shape), out=out)
    product = torch.mul(x[:, 1:2], coefficients[1].view(shape))
    out.add_(product)
    out.add_(torch.mul(x[:, 2:3], coefficients[2].view(shape), out=product))
    return out.add_(coefficients[3].view(shape))


@cached_constant(32)
def _scaled_coefficients(scale: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    columns = [[row[j] * scale for row in YCBCR_MATRIX] for j in range(3)]
    return torch.tensor(columns + [[o * scale for o in YCBCR_OFFSET]], dtype=dtype, device=device)


def rgb_to_grey(x: torch.Tensor, weights: tuple[float, float, float] = LUMA_BT601) -> torch.Tensor:
    """(N, 3, H, W) RGB -> (N, 1, H, W) grey as a weighted sum of the channels."""
    if x.shape[1] != 3:
        raise ValueError(f"rgb_to_grey expects 3 channels, got shape {tuple(x.shape)}")
    w = torch.tensor(weights, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def grey_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) -> (N, 3, H, W) by repeating the channel."""
    if x.shape[1] != 1:
        raise ValueError(f"grey_to_rgb expects 1 channel, got shape {tuple(x.shape)}")
    return x.expand(-1, 3, -1, -1)


# ------------------------------------------------------------------------------------------------- CIELAB
#: linear sRGB -> CIE XYZ; rows X, Y, Z, columns R, G, B (the sRGB specification's matrix, D65; the one
#: ``skimage.color.rgb2lab`` uses, which the LPIPS repository's Lab baselines call)
XYZ_FROM_RGB = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
#: CIE XYZ of the reference white: illuminant D65, 2-degree observer (skimage's default)
WHITE_D65 = (0.95047, 1.0, 1.08883)
#: sRGB transfer function: linear segment below this encoded value, then a 2.4 power
SRGB_THRESHOLD = 0.04045
#: CIELAB f(t): cube root above this (rounded (6/29)^3), linear 7.787 t + 16/116 below (skimage's constants)
LAB_THRESHOLD = 0.008856
LAB_SLOPE = 7.787
#: the range of L*: the LPIPS baselines compare Lab images divided by it (L2) or with data_range = it (SSIM)
LAB_RANGE = 100.0


def rgb_to_lab(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) sRGB in [0, 1] -> (N, 3, H, W) CIELAB (D65, 2-degree observer), differentiable.

    L* is in [0, 100], a* and b* roughly in [-86, 98] and [-108, 95]: the values of
    ``skimage.color.rgb2lab`` (its default illuminant and observer), which the LPIPS repository's L2 and SSIM
    baselines apply to 8-bit images. Steps: sRGB decoding (``c / 12.92`` up to 0.04045, else
    ``((c + 0.055) / 1.055) ** 2.4``), the sRGB -> XYZ matrix, division by the D65 white, then
    ``L = 116 f(Y) - 16``, ``a = 500 (f(X) - f(Y))``, ``b = 200 (f(Y) - f(Z))`` with f the cube root above
    0.008856 and ``7.787 t + 16/116`` below. Computed in the input dtype, at least float32. The gradient is
    finite everywhere (each branch is evaluated only on its own side of the threshold).
    """
    if x.dim() < 2 or x.shape[1] != 3:
        raise ValueError(
            f"rgb_to_lab expects RGB with 3 channels in dimension 1, got shape {tuple(x.shape)}; "
            "grey images have no a*, b* channels"
        )
    dtype = torch.promote_types(x.dtype, torch.float32)
    x = x.to(dtype)
    # sRGB decoding; clamping keeps the unused branch finite (and its gradient zero, not NaN)
    power = ((x.clamp_min(SRGB_THRESHOLD) + 0.055) / 1.055) ** 2.4
    linear = torch.where(x > SRGB_THRESHOLD, power, x / 12.92)
    # XYZ relative to the white point: the matrix rows divided by the white's X, Y, Z
    matrix = torch.tensor(XYZ_FROM_RGB, dtype=torch.float64) / torch.tensor(WHITE_D65, dtype=torch.float64)[:, None]
    t = torch.einsum("ij,nj...->ni...", matrix.to(dtype=dtype, device=x.device), linear)
    f = torch.where(t > LAB_THRESHOLD, t.clamp_min(LAB_THRESHOLD) ** (1 / 3), LAB_SLOPE * t + 16 / 116)
    fx, fy, fz = f.unbind(1)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=1)


def rgb_to_lab_scaled(x: torch.Tensor) -> torch.Tensor:
    """:func:`rgb_to_lab` divided by :data:`LAB_RANGE` (L* in [0, 1]): how the Lab baselines compare images."""
    return rgb_to_lab(x) / LAB_RANGE
