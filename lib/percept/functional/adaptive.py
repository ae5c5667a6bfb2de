"""Barron's general adaptive robust loss on YUV-DCT coefficients, as Czolbe et al. (2020) used it: the formula.

The metric is the negative log-likelihood (NLL) of the residual ``input - target`` under Barron's
distribution (J. T. Barron, "A General and Adaptive Robust Loss Function", CVPR 2019), with one shape
parameter ``alpha`` and one scale ``c`` per transform coefficient::

    rho(x, alpha, c) = |alpha - 2| / alpha * (((x / c)^2 / |alpha - 2| + 1)^(alpha / 2) - 1)
    nll(x, alpha, c) = rho(x, alpha, c) + log(c) + log Z(alpha)

``rho`` is the Cauchy loss ``log(x^2 / 2c^2 + 1)`` at ``alpha = 0``, the pseudo-Huber loss
``sqrt((x/c)^2 + 1) - 1`` at ``alpha = 1`` and tends to ``x^2 / 2c^2`` as ``alpha -> 2``.
``Z(alpha) = integral of exp(-rho(x, alpha, 1)) dx`` is the partition function. Barron's library reads
``log Z`` from a shipped spline table; here it is computed numerically (see :func:`log_partition`).

The metric's parameters (as in the original, alpha in (0.001, 1.999), scale in (1e-5, inf))::

    alpha = 0.001 + 1.998 * sigmoid(latent_alpha)            (latent 0 -> alpha = 1)
    c     = 1e-5 + (1 - 1e-5) * softplus(latent_scale + log(e - 1))   (latent 0 -> c = 1)

The layout quirk (spec pitfall P12): the original passes NCHW tensors to a library that expects NHWC. A batch
``(N, 3, H, W)`` is read as ``N`` images of width 3, height ``H`` and ``W`` channels, so

1. the "RGB -> YUV" matrix is applied to triples of consecutive values in memory order (horizontal
   neighbours of one colour channel; the triples run across row ends), and
2. the orthonormal 2-D DCT-II runs over the (channel, row) plane of each image column.

The trained weights were fitted in that layout; ``layout="original"`` keeps it so the weights mean what they
meant. ``layout="nchw"`` is the intended model: per-pixel YUV, then a 2-D DCT over (H, W) of each channel.

The per-image function (:func:`bind`) is what :func:`adaptive` and the metric modules
(:mod:`percept.metrics.adaptive`) compute through autograd; given a ``grad_out`` tensor it also writes the
input gradient into it in closed form, ``d rho / d x = x / c^2 * (1 + x^2 / (c^2 b))^(alpha/2 - 1)`` mapped back by the
transposed transform (the frozen metric's fast path, :class:`percept.metrics._frozen.FrozenPerImage`).

>>> import torch, percept
>>> y = torch.rand(2, 3, 8, 8)
>>> d = percept.functional.adaptive(y, y, reduction="none")   # alpha = c = 1: the NLL of a zero residual
>>> torch.allclose(d, torch.full((2,), 3 * 8 * 8 * float(log_partition(1.0))))
True
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from percept import checks
from percept.execution import cached_constant, no_autocast

__all__ = [
    "adaptive",
    "rho",
    "nll",
    "log_partition",
    "alpha_from_latent",
    "scale_from_latent",
    "rgb_to_syuv",
    "dct_matrix",
]

#: the parameter ranges Czolbe et al. passed to ``AdaptiveImageLossFunction``
ALPHA_LO, ALPHA_HI = 0.001, 1.999
SCALE_LO, SCALE_INIT = 1e-5, 1.0

#: YUV as in ``tf.image.rgb_to_yuv`` (rows Y, U, V; columns R, G, B) ...
YUV_MATRIX = (
    (0.299, 0.587, 0.114),
    (-0.14714119, -0.28886916, 0.43601035),
    (0.61497538, -0.51496512, -0.10001026),
)
#: ... scaled by this factor so that the transform has determinant 1 (Barron's volume-preserving "sYUV",
#: which keeps the NLL a proper log-likelihood of the RGB residual)
SYUV_SCALE = 1.580227820074

#: float32 machine epsilon: |alpha| and |alpha - 2| are clamped to it before dividing (as Barron does)
_EPS = float(np.finfo(np.float32).eps)

LAYOUTS = ("original", "nchw")


# --------------------------------------------------------------------------------------------------- public API


def adaptive(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    alpha: torch.Tensor | float = 1.0,
    scale: torch.Tensor | float = 1.0,
    layout: str = "original",
    reduction: str = "mean",
) -> torch.Tensor:
    """Barron's adaptive robust loss: the NLL of the residual's sYUV-DCT coefficients, summed per image.

    Args:
        input, target: (N, C, H, W) float tensors in [0, 1], C = 3 (RGB) or 1 (grey). float16/bfloat16 are
            computed in float32, float64 in float64.
        alpha: shape parameters in [0, 2] (clamped to float32 eps from 0 and 2, as Barron does), one per
            coefficient, (C', H, W) or anything that broadcasts to it; C' = 3 in the original layout (grey
            residuals are expanded to 3 identical channels, as in the original), C in the "nchw" layout.
            Default 1 (pseudo-Huber), the original's initialisation.
        scale: scales c > 0, same shape rules; default 1.
        layout: "original" (the original's NCHW-read-as-NHWC transform, which the trained weights need) or
            "nchw" (per-pixel sYUV, then a 2-D DCT over (H, W) of each channel); see the module docstring.
        reduction: "mean" or "sum" over the batch, or "none" for the (N,) per-image values.

    Returns the sum over the image of ``rho + log c + log Z(alpha)`` (reduced over the batch): an NLL, so it can
    be negative and identical images give ``sum(log c + log Z(alpha))``, not 0. The trained weights of Czolbe
    et al. are those of ``percept.get_metric("adaptive").functional_kwargs()``.

    >>> import torch
    >>> y = torch.rand(1, 1, 8, 8)
    >>> bool(adaptive((y + 0.2).clamp(0, 1), y) > adaptive(y, y))
    True
    """
    checks.check_pair(input, target, name="adaptive")
    checks.check_reduction(reduction)
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}: use 'original' or 'nchw'")
    n, c, h, w = input.shape
    if c not in (1, 3):
        raise ValueError(f"adaptive: expected 3 (RGB) or 1 (grey) channels, got {c} (shape {tuple(input.shape)})")
    dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
    shape = (3 if layout == "original" else c, h, w)
    alpha, scale = (_full(name, v, shape, dtype, input.device) for name, v in (("alpha", alpha), ("scale", scale)))
    checks.check_values("adaptive parameters", input.device,
                        lambda: torch.stack([alpha.min(), alpha.max(), scale.min()]), _judge_parameters)
    with no_autocast(input.device.type):
        per_image = bind(barron_constants(alpha, scale), layout)(input, target, slice(None))
    return checks.reduce(per_image, reduction)


def _judge_parameters(values: list[float], where: str) -> None:
    lo, hi, smallest = values
    if not (0 <= lo and hi <= 2):
        raise ValueError(f"adaptive: alpha must lie in [0, 2], got values in [{lo:.4g}, {hi:.4g}]{where}")
    if not smallest > 0:
        raise ValueError(f"adaptive: scale must be > 0, got a minimum of {smallest:.4g}{where}")


def _full(name: str, value, shape: tuple[int, ...], dtype: torch.dtype, device) -> torch.Tensor:
    t = torch.as_tensor(value).to(dtype=dtype, device=device)
    try:
        return t.expand(shape)
    except RuntimeError:
        raise ValueError(f"adaptive: {name} has shape {tuple(t.shape)}; expected {shape} (or one that broadcasts to it)") from None


# --------------------------------------------------------------------------------------------------- the formula


class BarronConstants(NamedTuple):
    """Parameter-derived tensors of the NLL for alpha in (0, 2), each (C', H, W); differentiable in alpha, c.

    With ``L = log1p(x^2 * u)``: ``rho = b_over_a * expm1(half_a * L)`` and
    ``d rho / d x = x * grad_scale * exp((half_a - 1) * L)``.
    """

    u: torch.Tensor  # 1 / (c^2 b), b = |alpha - 2|
    half_a: torch.Tensor  # alpha / 2
    b_over_a: torch.Tensor  # b / alpha
    grad_scale: torch.Tensor  # 1 / c^2
    offset: torch.Tensor  # log c + log Z(alpha): the elementwise NLL of a zero residual
    constant: torch.Tensor  # () the sum of ``offset``: the NLL of an image with zero residual


def barron_constants(alpha: torch.Tensor, scale: torch.Tensor) -> BarronConstants:
    """:class:`BarronConstants` of shape parameters ``alpha`` in [0, 2] and scales ``scale`` > 0 (same shape);
    |alpha| and |alpha - 2| are clamped to float32 eps, as Barron does."""
    b = (2 - alpha).clamp_min(_EPS)
    a = alpha.clamp_min(_EPS)
    scale_sq = torch.square(scale)
    offset = torch.log(scale) + _log_partition(alpha)
    return BarronConstants(
        u=torch.reciprocal(scale_sq * b),
        half_a=a * 0.5,
        b_over_a=b / a,
        grad_scale=torch.reciprocal(scale_sq),
        offset=offset,
        constant=offset.sum(),
    )


def _rho_terms(x: torch.Tensor, u: torch.Tensor, half_a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L, expm1(a/2 * L))`` with ``L = log1p(x^2 u)``: ``rho = b/a * expm1(a/2 * L)``, with ``expm1`` and
    ``log1p`` so that small residuals keep their precision."""
    log_term = torch.log1p(torch.square(x) * u)
    return log_term, torch.expm1(log_term * half_a)


def nll_map(coefficients: torch.Tensor, k: BarronConstants) -> torch.Tensor:
    """The elementwise NLL ``rho + log c + log Z(alpha)`` of transform coefficients (N, C', H, W)."""
    return k.b_over_a * _rho_terms(coefficients, k.u, k.half_a)[1] + k.offset


def bind(k: BarronConstants, layout: str) -> Callable:
    """The per-image NLL as a function ``(x, y, part, grad_out) -> values (n,)`` of images (n, C, H, W) that also
    writes the input gradient of the values into ``grad_out`` when it is given (the protocol of
    :class:`percept.metrics._frozen.FrozenPerImage`); computed in the constants' dtype. The gradient is
    ``d rho / d X = X / c^2 * exp((a/2 - 1) L)`` mapped back by the transposed transform."""

    def per_image(x, y, part, grad_out=None):
        if grad_out is not None and torch.is_grad_enabled():
            raise RuntimeError("the closed-form gradient is for the no-grad fast path; use autograd instead")
        dtype = k.u.dtype
        coef = coefficients(x.to(dtype) - y.to(dtype), layout)
        log_term, rho_unweighted = _rho_terms(coef, k.u, k.half_a)
        n = coef.shape[0]
        values = rho_unweighted.reshape(n, -1) @ k.b_over_a.reshape(-1) + k.constant
        if grad_out is not None:  # (no autograd: in place)
            grad = log_term.mul_(k.half_a - 1).exp_().mul_(coef).mul_(k.grad_scale)
            coefficients_adjoint(grad, layout, x.shape[1], out=grad_out)
        return values

    return per_image


# --------------------------------------------------------------------------------------------------- rho and Z


def rho(x: torch.Tensor, alpha: torch.Tensor | float, scale: torch.Tensor | float) -> torch.Tensor:
    """Barron's general robust loss ``rho(x, alpha, c)``, elementwise with broadcasting.

    Exact special cases at ``alpha == 0`` (``log(x^2/2c^2 + 1)``) and ``alpha == 2`` (``x^2/2c^2``); elsewhere
    ``b/a * ((y/b + 1)^(a/2) - 1)`` with ``y = (x/c)^2``, ``b = |a - 2|``, evaluated as
    ``b/a * expm1(a/2 * log1p(y/b))`` so that small residuals keep their precision. Any real ``alpha``
    works (negative values give the Geman-McClure-like losses); ``scale`` must be positive.
    Differentiable in ``x``, ``alpha`` and ``scale``; the gradient in ``x`` is 0 at ``x = 0``.
    """
    alpha = torch.as_tensor(alpha, dtype=x.dtype, device=x.device)
    scale = torch.as_tensor(scale, dtype=x.dtype, device=x.device)
    y = (x / scale) ** 2
    b = (alpha - 2).abs().clamp_min(_EPS)
    a = torch.where(alpha >= 0, 1.0, -1.0).to(alpha) * alpha.abs().clamp_min(_EPS)
    general = (b / a) * _rho_terms(x, torch.reciprocal(scale**2 * b), 0.5 * a)[1]
    return torch.where(alpha == 0, torch.log1p(0.5 * y), torch.where(alpha == 2, 0.5 * y, general))


def nll(x: torch.Tensor, alpha: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Elementwise negative log-likelihood ``rho(x, alpha, c) + log(c) + log Z(alpha)`` (alpha in [0, 2])."""
    alpha = torch.as_tensor(alpha, dtype=x.dtype, device=x.device)
    scale = torch.as_tensor(scale, dtype=x.dtype, device=x.device)
    return rho(x, alpha, scale) + torch.log(scale) + _log_partition(alpha)


# The partition function Z(alpha) = int exp(-rho(x, alpha, 1)) dx for alpha in (0, 2).
#
# Substituting x = sqrt(b) sinh(u) (b = 2 - alpha) gives 1 + x^2/b = cosh(u)^2 and
#     Z(alpha) = sqrt(b) * int_R exp(-(b/alpha) expm1(alpha L(u)) + L(u)) du,   L(u) = log cosh u.
# The integrand is even and analytic in a strip around the real axis; it decays like cosh(u)^(alpha - 1)
# for small alpha and double-exponentially once alpha |u| is large, so the trapezoidal rule converges
# geometrically: step 0.1 on [0, 40] is exact to ~1e-13 (checked against scipy.integrate.quad in the tests).
# d log Z / d alpha comes from differentiating under the integral sign (no finite differences).
#
# log Z is smooth inside (0, 2) but not analytic at the ends: near 2 its derivative diverges like
# log(2 - alpha), near 0 its higher derivatives grow quickly. So the table is uniform in
# t = log(alpha / (2 - alpha)), which grades the nodes geometrically towards both ends, and covers
# alpha in [1e-9, 2 - 1e-9]. Cubic Hermite interpolation with exact slopes then has a maximum error of
# about 1e-10 in log Z over the whole range (2e-9 with 513 nodes, 7e-12 with 2049). Each interval's cubic is
# stored by its four polynomial coefficients, so an evaluation is one lookup and three multiply-adds.

_TABLE_ALPHA_MIN = 1e-9
_TABLE_NODES = 1025
_QUAD_STEP, _QUAD_END = 0.1, 40.0


def _phi(y: np.ndarray) -> np.ndarray:
    """y e^y - expm1(y) = sum_{k>=2} (k-1) y^k / k!, accurate for small |y| too."""
    small = np.abs(y) < 0.05
    ys = np.where(small, y, 0.0)
    series = sum(ys**k * ((k - 1) / math.factorial(k)) for k in range(2, 10))
    yl = np.where(small, 0.0, y)
    return np.where(small, series, yl * np.exp(yl) - np.expm1(yl))


def _log_partition_quadrature(alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log Z(alpha) and d log Z / d alpha in float64 for alpha in (0, 2), by the trapezoidal rule."""
    a = np.maximum(np.asarray(alpha, dtype=np.float64), 1e-12)[:, None]
    b = 2.0 - a
    u = np.arange(0.0, _QUAD_END + _QUAD_STEP / 2, _QUAD_STEP)
    weights = np.full(u.shape, 2.0 * _QUAD_STEP)
    weights[0] = _QUAD_STEP  # the even integrand counted once at u = 0
    log_cosh = (u + np.log1p(np.exp(-2.0 * u)) - math.log(2.0))[None, :]
    e = np.expm1(a * log_cosh)
    g = weights * np.exp(-(b / a) * e + log_cosh)
    total = g.sum(-1)
    # d/da of (b/a) expm1(a L) with b = 2 - a
    dq = -e / a + (b / a**2) * _phi(a * log_cosh)
    value = 0.5 * np.log(b[:, 0]) + np.log(total)
    slope = -0.5 / b[:, 0] - (g * dq).sum(-1) / total
    return value, slope


@functools.lru_cache(maxsize=1)
def _partition_table() -> tuple[float, float, np.ndarray]:
    """(t0, dt, cubics): on the uniform grid in t = logit(alpha / 2), the cubic Hermite interpolant of
    log Z with its exact slopes, as (nodes - 1, 4) coefficients of ``c0 + c1 s + c2 s^2 + c3 s^3``, s in [0, 1]."""
    t_lo = math.log(_TABLE_ALPHA_MIN / (2.0 - _TABLE_ALPHA_MIN))
    t = np.linspace(t_lo, -t_lo, _TABLE_NODES)
    alpha = 2.0 / (1.0 + np.exp(-t))
    value, slope = _log_partition_quadrature(alpha)
    dt = float(t[1] - t[0])
    m = slope * alpha * (2.0 - alpha) / 2.0 * dt  # d log Z / ds on each interval
    v0, v1, m0, m1 = value[:-1], value[1:], m[:-1], m[1:]
    cubics = np.stack([v0, m0, 3 * (v1 - v0) - 2 * m0 - m1, 2 * (v0 - v1) + m0 + m1], axis=-1)
    return float(t[0]), dt, cubics


@cached_constant(16)
def _table_on(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(_partition_table()[2], dtype=dtype, device=device)


def _log_partition(alpha: torch.Tensor) -> torch.Tensor:
    """log Z(alpha) without input checks (alpha is clamped into the table's range [1e-9, 2 - 1e-9])."""
    work = torch.float32 if alpha.device.type == "mps" else torch.float64
    a = alpha.to(work).clamp(_TABLE_ALPHA_MIN, 2.0 - _TABLE_ALPHA_MIN)
    t0, dt, _ = _partition_table()
    pos = (torch.logit(a * 0.5) - t0) / dt
    i = pos.detach().clamp(0, _TABLE_NODES - 2).long()
    s = pos - i
    c0, c1, c2, c3 = _table_on(work, a.device)[i].unbind(-1)
    out = torch.addcmul(c0, torch.addcmul(c1, torch.addcmul(c2, c3, s), s), s)
    return out.to(alpha.dtype)


def log_partition(alpha: torch.Tensor | float) -> torch.Tensor:
    """log Z(alpha), the log partition function of Barron's distribution with scale 1, for alpha in [0, 2].

    ``Z(alpha) = integral exp(-rho(x, alpha, 1)) dx``; ``Z(0) = pi sqrt(2)`` (Cauchy), ``Z(1) = 2e K_1(1)``,
    ``Z(2) = sqrt(2 pi)`` (Gaussian). Computed numerically, no shipped table: on first use a table of 1025
    values and exact slopes is built in float64 by quadrature (about 0.1 s), then cubic Hermite
    interpolation in ``t = log(alpha / (2 - alpha))`` gives log Z within about 1.2e-10 everywhere, and a
    gradient in ``alpha`` within 5e-7 (relative) on [0.001, 1.999], the metric's range. Within 1e-9 of the
    ends the value at ``1e-9`` or ``2 - 1e-9`` is returned, with zero gradient (1e-9 resp. 5e-9 from the
    limits; the true slope diverges at alpha = 2).
    """
    alpha = torch.as_tensor(alpha)
    if not alpha.is_floating_point():
        alpha = alpha.to(torch.get_default_dtype())
    lo, hi = alpha.detach().aminmax() if alpha.numel() else (alpha.new_zeros(()), alpha.new_zeros(()))
    if lo < 0 or hi > 2 or torch.isnan(alpha).any():
        raise ValueError(
            f"log_partition is defined for alpha in [0, 2], got values in [{lo.item():.4g}, {hi.item():.4g}]"
        )
    return _log_partition(alpha)


def alpha_from_latent(latent: torch.Tensor, lo: float = ALPHA_LO, hi: float = ALPHA_HI) -> torch.Tensor:
    """Shape parameter ``lo + (hi - lo) * sigmoid(latent)``: latent 0 gives the midpoint (1 for the defaults)."""
    return torch.sigmoid(latent) * (hi - lo) + lo


def scale_from_latent(latent: torch.Tensor, lo: float = SCALE_LO, ref: float = SCALE_INIT) -> torch.Tensor:
    """Scale ``lo + (ref - lo) * softplus(latent + log(e - 1))``: latent 0 gives ``ref``."""
    return (ref - lo) * F.softplus(latent + math.log(math.expm1(1.0))) + lo


# --------------------------------------------------------------------------------------------------- transforms


def rgb_to_syuv(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Volume-preserving YUV (``SYUV_SCALE * YUV_MATRIX``) applied along dimension ``dim`` (of size 3)."""
    if x.shape[dim] != 3:
        raise ValueError(f"rgb_to_syuv needs size 3 along dim {dim}, got shape {tuple(x.shape)}")
    return torch.movedim(torch.movedim(x, dim, -1) @ _syuv(x.dtype, x.device).T, -1, dim)


@cached_constant(32)
def _syuv(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The sYUV matrix (rows Y, U, V; columns R, G, B); a cached constant (do not modify)."""
    return (torch.tensor(YUV_MATRIX, dtype=torch.float64) * SYUV_SCALE).to(dtype=dtype, device=device)


@cached_constant(32)
def _dct_matrix_cached(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.to(dtype=dtype, device=device)


def dct_matrix(n: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
    """The orthonormal DCT-II matrix ``D`` (n, n): ``X = D @ x`` transforms along the first axis of ``x``."""
    return _dct_matrix_cached(int(n), dtype, torch.device(device))


def coefficients(residual: torch.Tensor, layout: str) -> torch.Tensor:
    """Transform coefficients (N, C', H, W) of a residual (N, C, H, W) in ``layout`` ("original": C' = 3, a grey
    residual is expanded to 3 identical channels; "nchw": C' = C), aligned with the per-coefficient parameters."""
    if layout == "original":
        if residual.shape[1] == 1:
            residual = residual.expand(-1, 3, -1, -1)
        return _coefficients_original(residual)
    return _coefficients_nchw(residual)


def coefficients_adjoint(
    grad: torch.Tensor, layout: str, channels: int, out: torch.Tensor | None = None
) -> torch.Tensor:
    """The gradient w.r.t. the residual (N, ``channels``, H, W) of a function of :func:`coefficients`, given its
    gradient w.r.t. the coefficients; written into ``out`` (any float dtype, contiguous) when given."""
    if layout == "original":
        return _coefficients_original_adjoint(grad, channels, out)
    return _coefficients_nchw_adjoint(grad, out)


def _coefficients_original(residual: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) residual -> (N, 3, H, W) coefficients in the original's (NHWC-misread) layout.

    Element ``[n, k, g, w]`` is DCT coefficient (k, g) over the (channel, row) plane of column ``w`` of the
    sYUV-mixed residual; its flat index ``k*H*W + g*W + w`` is the index of its parameters in the weights.
    """
    n, c, h, w = residual.shape
    mixed = residual.reshape(n, -1, 3) @ _syuv(residual.dtype, residual.device).T  # triples in memory order
    over_channels = torch.matmul(dct_matrix(c, residual.dtype, residual.device), mixed.view(n, c, h * w))
    return torch.matmul(dct_matrix(h, residual.dtype, residual.device), over_channels.view(n, c, h, w))


def _coefficients_original_adjoint(grad: torch.Tensor, channels: int, out: torch.Tensor | None = None) -> torch.Tensor:
    n, c, h, w = grad.shape
    over_rows = torch.matmul(dct_matrix(h, grad.dtype, grad.device).T, grad)
    mixed = torch.matmul(dct_matrix(c, grad.dtype, grad.device).T, over_rows.reshape(n, c, h * w))
    direct = out if out is not None and out.dtype == grad.dtype else None
    if channels == 1:
        residual = (mixed.view(n, -1, 3) @ _syuv(grad.dtype, grad.device)).view(n, c, h, w)
        residual = torch.sum(residual, dim=1, keepdim=True, out=direct)
    else:
        flat = None if direct is None else direct.view(n, -1, 3)
        residual = torch.matmul(mixed.view(n, -1, 3), _syuv(grad.dtype, grad.device), out=flat).view(n, c, h, w)
    return _into(residual, out)


def _coefficients_nchw(residual: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) residual -> per-channel 2-D DCT over (H, W); 3 channels are first mapped to sYUV."""
    n, c, h, w = residual.shape
    if c == 3:
        residual = torch.matmul(_syuv(residual.dtype, residual.device), residual.reshape(n, c, h * w)).view(n, c, h, w)
    d_h, d_w = dct_matrix(h, residual.dtype, residual.device), dct_matrix(w, residual.dtype, residual.device)
    return d_h @ residual @ d_w.T


def _coefficients_nchw_adjoint(grad: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    n, c, h, w = grad.shape
    d_h, d_w = dct_matrix(h, grad.dtype, grad.device), dct_matrix(w, grad.dtype, grad.device)
    residual = d_h.T @ grad @ d_w
    if c == 3:
        residual = torch.matmul(_syuv(grad.dtype, grad.device).T, residual.reshape(n, c, h * w)).view(n, c, h, w)
    return _into(residual, out)


def _into(result: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """``result`` written into ``out`` (unless it already is ``out``'s storage), or ``result`` if no ``out``."""
    if out is None:
        return result
    if result.data_ptr() != out.data_ptr():
        out.copy_(result.view(out.shape))
    return out
