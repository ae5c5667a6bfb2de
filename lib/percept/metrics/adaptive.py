"""Barron's general adaptive robust loss on YUV-DCT coefficients, as Czolbe et al. (2020) used it.

The metric is the negative log-likelihood (NLL) of the residual ``input - target`` under Barron's
distribution (J. T. Barron, "A General and Adaptive Robust Loss Function", CVPR 2019), with one shape
parameter ``alpha`` and one scale ``c`` per transform coefficient::

    rho(x, alpha, c) = |alpha - 2| / alpha * (((x / c)^2 / |alpha - 2| + 1)^(alpha / 2) - 1)
    nll(x, alpha, c) = rho(x, alpha, c) + log(c) + log Z(alpha)

``rho`` is the Cauchy loss ``log(x^2 / 2c^2 + 1)`` at ``alpha = 0``, the pseudo-Huber loss
``sqrt((x/c)^2 + 1) - 1`` at ``alpha = 1`` and tends to ``x^2 / 2c^2`` as ``alpha -> 2``.
``Z(alpha) = integral of exp(-rho(x, alpha, 1)) dx`` is the partition function. Barron's library reads
``log Z`` from a shipped spline table; here it is computed numerically (see :func:`log_partition`).

Parameters (as in the original, alpha in (0.001, 1.999), scale in (1e-5, inf))::

    alpha = 0.001 + 1.998 * sigmoid(latent_alpha)            (latent 0 -> alpha = 1)
    c     = 1e-5 + (1 - 1e-5) * softplus(latent_scale + log(e - 1))   (latent 0 -> c = 1)

Two things live here:

* :class:`Adaptive`, the registry metric (``percept.get_metric("adaptive")``): per-image value = the sum of
  the elementwise NLL over the image. It is an NLL, so it can be negative, and it is not 0 for
  identical images (it is then ``sum(log c + log Z(alpha))``, a constant of the weights).
* :func:`original_adaptive`, a faithful reproduction of the Czolbe et al. ``LossProvider`` Adaptive loss
  (``RobustLoss`` wrapping ``robust_loss_pytorch.AdaptiveImageLossFunction``), bugs included.

The layout quirk (spec pitfall P12): the original passes NCHW tensors to a library that expects NHWC. A batch
``(N, 3, H, W)`` is read as ``N`` images of width 3, height ``H`` and ``W`` channels, so

1. the "RGB -> YUV" matrix is applied to triples of consecutive values in memory order (horizontal
   neighbours of one colour channel; the triples run across row ends), and
2. the orthonormal 2-D DCT-II runs over the (channel, row) plane of each image column.

The trained weights were fitted in that layout; ``layout="original"`` keeps it so the weights mean what they
meant. ``layout="nchw"`` is the intended model: per-pixel YUV, then a 2-D DCT over (H, W) of each channel.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from percept import checks
from percept.assets import locate
from percept.execution import check_strategy
from percept.metrics._frozen import FrozenPerImage, images_per_chunk

__all__ = [
    "Adaptive",
    "OriginalAdaptive",
    "original_adaptive",
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


# --------------------------------------------------------------------------------------------------
# the loss rho and the log partition function
# --------------------------------------------------------------------------------------------------


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
    general = (b / a) * torch.expm1(0.5 * a * torch.log1p(y / b))
    return torch.where(alpha == 0, torch.log1p(0.5 * y), torch.where(alpha == 2, 0.5 * y, general))


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
# about 1e-10 in log Z over the whole range (2e-9 with 513 nodes, 7e-12 with 2049).

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
def _partition_table() -> tuple[float, float, np.ndarray, np.ndarray]:
    """(t0, dt, values, slopes): log Z and d log Z/dt on a uniform grid in t = logit(alpha / 2)."""
    t_lo = math.log(_TABLE_ALPHA_MIN / (2.0 - _TABLE_ALPHA_MIN))
    t = np.linspace(t_lo, -t_lo, _TABLE_NODES)
    alpha = 2.0 / (1.0 + np.exp(-t))
    value, slope = _log_partition_quadrature(alpha)
    return float(t[0]), float(t[1] - t[0]), value, slope * alpha * (2.0 - alpha) / 2.0


_table_tensors: dict[tuple[torch.dtype, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}


def _table_on(dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    key = (dtype, device)
    if key not in _table_tensors:
        _, _, value, slope = _partition_table()
        _table_tensors[key] = (
            torch.as_tensor(value, dtype=dtype, device=device),
            torch.as_tensor(slope, dtype=dtype, device=device),
        )
    return _table_tensors[key]


def _log_partition(alpha: torch.Tensor) -> torch.Tensor:
    """log Z(alpha) without input checks (alpha is clamped into the table's range [1e-9, 2 - 1e-9])."""
    work = torch.float32 if alpha.device.type == "mps" else torch.float64
    a = alpha.to(work).clamp(_TABLE_ALPHA_MIN, 2.0 - _TABLE_ALPHA_MIN)
    t0, dt, _, _ = _partition_table()
    value, slope = _table_on(work, a.device)
    pos = (torch.log(a) - torch.log(2.0 - a) - t0) / dt
    i = pos.detach().floor().clamp(0, _TABLE_NODES - 2).long()
    s = pos - i
    s2, s3 = s * s, s * s * s
    h00 = 2 * s3 - 3 * s2 + 1
    h10 = s3 - 2 * s2 + s
    h01 = -2 * s3 + 3 * s2
    h11 = s3 - s2
    out = h00 * value[i] + h10 * dt * slope[i] + h01 * value[i + 1] + h11 * dt * slope[i + 1]
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


def nll(x: torch.Tensor, alpha: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Elementwise negative log-likelihood ``rho(x, alpha, c) + log(c) + log Z(alpha)`` (alpha in (0, 2))."""
    alpha = torch.as_tensor(alpha, dtype=x.dtype, device=x.device)
    scale = torch.as_tensor(scale, dtype=x.dtype, device=x.device)
    return rho(x, alpha, scale) + torch.log(scale) + _log_partition(alpha)


def alpha_from_latent(latent: torch.Tensor, lo: float = ALPHA_LO, hi: float = ALPHA_HI) -> torch.Tensor:
    """Shape parameter ``lo + (hi - lo) * sigmoid(latent)``: latent 0 gives the midpoint (1 for the defaults)."""
    return torch.sigmoid(latent) * (hi - lo) + lo


def scale_from_latent(latent: torch.Tensor, lo: float = SCALE_LO, ref: float = SCALE_INIT) -> torch.Tensor:
    """Scale ``lo + (ref - lo) * softplus(latent + log(e - 1))``: latent 0 gives ``ref``."""
    return (ref - lo) * F.softplus(latent + math.log(math.expm1(1.0))) + lo


# --------------------------------------------------------------------------------------------------
# transforms
# --------------------------------------------------------------------------------------------------


def rgb_to_syuv(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Volume-preserving YUV (``SYUV_SCALE * YUV_MATRIX``) applied along dimension ``dim`` (of size 3)."""
    if x.shape[dim] != 3:
        raise ValueError(f"rgb_to_syuv needs size 3 along dim {dim}, got shape {tuple(x.shape)}")
    m = torch.tensor(YUV_MATRIX, dtype=x.dtype, device=x.device) * SYUV_SCALE
    return torch.movedim(torch.tensordot(torch.movedim(x, dim, -1), m, dims=([-1], [1])), -1, dim)


@functools.lru_cache(maxsize=32)
def _dct_matrix_cached(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.to(dtype=dtype, device=device)


def dct_matrix(n: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
    """The orthonormal DCT-II matrix ``D`` (n, n): ``X = D @ x`` transforms along the first axis of ``x``."""
    return _dct_matrix_cached(int(n), dtype, torch.device(device))


def _coefficients_original(residual: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) residual -> (N, 3, H, W) coefficients in the original's (NHWC-misread) layout.

    Element ``[n, k, g, w]`` is DCT coefficient (k, g) over the (channel, row) plane of column ``w`` of the
    sYUV-mixed residual; its flat index ``k*H*W + g*W + w`` is the index of its parameters in the weights.
    """
    n, c, h, w = residual.shape
    mixed = rgb_to_syuv(residual.reshape(n, -1, 3), dim=-1).reshape(n, c, h, w)
    d_c = dct_matrix(c, residual.dtype, residual.device)
    d_h = dct_matrix(h, residual.dtype, residual.device)
    return torch.einsum("kc,gh,nchw->nkgw", d_c, d_h, mixed)


def _coefficients_original_adjoint(grad: torch.Tensor, channels: int) -> torch.Tensor:
    """The gradient w.r.t. the residual (N, ``channels``, H, W) of a function of :func:`_coefficients_original`."""
    n, c, h, w = grad.shape
    d_c = dct_matrix(c, grad.dtype, grad.device)
    d_h = dct_matrix(h, grad.dtype, grad.device)
    mixed = torch.einsum("kc,gh,nkgw->nchw", d_c, d_h, grad)
    m = torch.tensor(YUV_MATRIX, dtype=grad.dtype, device=grad.device) * SYUV_SCALE
    residual = (mixed.reshape(n, -1, 3) @ m).reshape(n, c, h, w)
    return residual.sum(dim=1, keepdim=True) if channels == 1 else residual


def _coefficients_nchw_adjoint(grad: torch.Tensor) -> torch.Tensor:
    """The gradient w.r.t. the residual of a function of :func:`_coefficients_nchw`."""
    d_h = dct_matrix(grad.shape[2], grad.dtype, grad.device)
    d_w = dct_matrix(grad.shape[3], grad.dtype, grad.device)
    residual = torch.einsum("gh,ncgv,vw->nchw", d_h, grad, d_w)
    if residual.shape[1] == 3:
        m = torch.tensor(YUV_MATRIX, dtype=grad.dtype, device=grad.device) * SYUV_SCALE
        residual = torch.einsum("ij,nihw->njhw", m, residual)
    return residual


def _coefficients_nchw(residual: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) residual -> per-channel 2-D DCT over (H, W); 3 channels are first mapped to sYUV."""
    if residual.shape[1] == 3:
        residual = rgb_to_syuv(residual, dim=1)
    d_h = dct_matrix(residual.shape[2], residual.dtype, residual.device)
    d_w = dct_matrix(residual.shape[3], residual.dtype, residual.device)
    return torch.einsum("gh,nchw,vw->ncgv", d_h, residual, d_w)


# --------------------------------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------------------------------

#: the shipped weights fit only this size (3 * 64 * 64 = 12288 coefficients)
PRETRAINED_SIZE = (64, 64)


def load_czolbe_weights(colorspace: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The trained ``(latent_alpha, latent_scale)`` of Czolbe et al., each flat of length 12288.

    ``colorspace`` "rgb" reads ``rgb_adaptive_trial0.pth``, "grey" reads ``gray_adaptive_trial0.pth``
    (trained on grey images expanded to 3 identical channels). The files' keys carry a leading "." that the
    original provider strips; flat index ``c*4096 + h*64 + w`` belongs to coefficient ``[c, h, w]`` of the
    original layout (see :func:`_coefficients_original`).
    """
    name = "rgb" if checks.normalize_colorspace(colorspace) == "rgb" else "gray"
    path = locate(f"weights/czolbe/{name}_adaptive_trial0.pth")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k[1:] if k.startswith(".") else k: v for k, v in state.items()}
    prefix = "robust_loss.adaptive_lossfun."
    try:
        alpha, scale = state[prefix + "latent_alpha"], state[prefix + "latent_scale"]
    except KeyError as err:
        raise KeyError(f"{path} lacks {err}; keys are {sorted(state)}") from None
    return alpha.reshape(-1).float(), scale.reshape(-1).float()


def _size_pair(image_size) -> tuple[int, int]:
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    size = tuple(int(s) for s in image_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"image_size must be (H, W) with positive sizes, got {image_size!r}")
    return size


# --------------------------------------------------------------------------------------------------
# the registry metric
# --------------------------------------------------------------------------------------------------


class Adaptive(nn.Module):
    """Barron's adaptive robust loss (NLL) on YUV-DCT coefficients of the residual, per image.

    Args:
        colorspace: "rgb" (input (N, 3, H, W)) or "grey" (alias "LA", "gray"; input (N, 1, H, W)).
        reduction: "mean", "sum" (over the batch) or "none" (shape (N,)).
        pretrained: load the Czolbe et al. weights (64x64 images, ``layout="original"`` only). False gives
            alpha = 1 and c = 1 for every coefficient (the library's initialisation).
        trainable: make ``latent_alpha`` and ``latent_scale`` trainable (``requires_grad=True``);
            otherwise they are frozen.
        image_size: (H, W) (or an int) the per-coefficient parameters are built for; input must match it.
        layout: "original" reproduces the trained weights' layout (the original's NCHW-read-as-NHWC mix-up:
            sYUV over triples of horizontal neighbours, 2-D DCT over the (channel, row) plane of each column),
            so the pretrained weights mean what they meant. "nchw" is the intended model: per-pixel sYUV,
            then a 2-D DCT over (H, W) of each channel; only with ``pretrained=False``.

    Grey images: with ``layout="original"`` the grey residual is expanded to 3 identical channels, exactly
    what the original's GreyscaleWrapper fed the grey weights in training (3 * H * W parameters). With
    ``layout="nchw"`` a grey image is modelled as what it is, one channel (1 * H * W parameters, no colour
    transform): expanding would add U and V coefficients that are identically zero, whose NLL is a constant
    that, when trained, drives their scales to the lower bound.

    Returns the sum over the image of the elementwise NLL ``rho + log c + log Z(alpha)``, reduced over the
    batch. It is a negative log-likelihood: it can be negative, and identical images give the constant
    ``sum(log c + log Z(alpha))`` rather than 0. Lower is more similar. Inputs are NCHW floats in [0, 1].
    """

    higher_is_better = False

    def __init__(
        self,
        *,
        colorspace: str = "rgb",
        reduction: str = "mean",
        pretrained: bool = True,
        trainable: bool = False,
        image_size: tuple[int, int] | int = PRETRAINED_SIZE,
        layout: str = "original",
        strategy: str = "auto",
    ) -> None:
        super().__init__()
        #: "auto" (chunks on CPU, the whole batch at once on other devices), "chunked" or "batched"
        self.strategy = check_strategy(strategy)
        self.colorspace = checks.normalize_colorspace(colorspace)
        self.reduction = checks.check_reduction(reduction)
        self.channels = 3 if self.colorspace == "rgb" else 1
        self.image_size = _size_pair(image_size)
        if layout not in ("original", "nchw"):
            raise ValueError(f"unknown layout {layout!r}: use 'original' or 'nchw'")
        self.layout = layout
        if pretrained and layout != "original":
            raise ValueError(
                "the pretrained Adaptive weights were trained in the original (NCHW-read-as-NHWC) layout; "
                "layout='nchw' needs pretrained=False"
            )
        if pretrained and self.image_size != PRETRAINED_SIZE:
            raise ValueError(
                f"the pretrained Adaptive weights fit only {PRETRAINED_SIZE[0]}x{PRETRAINED_SIZE[1]} images, "
                f"got image_size={self.image_size}; use pretrained=False for other sizes"
            )
        h, w = self.image_size
        shape = (3 if layout == "original" else self.channels, h, w)
        if pretrained:
            latent_alpha, latent_scale = (v.reshape(shape) for v in load_czolbe_weights(self.colorspace))
        else:
            latent_alpha, latent_scale = torch.zeros(shape), torch.zeros(shape)
        self.latent_alpha = nn.Parameter(latent_alpha.clone(), requires_grad=trainable)
        self.latent_scale = nn.Parameter(latent_scale.clone(), requires_grad=trainable)

    @property
    def alpha(self) -> torch.Tensor:
        """Shape parameters, one per coefficient, in (0.001, 1.999); shape (C, H, W)."""
        return alpha_from_latent(self.latent_alpha)

    @property
    def scale(self) -> torch.Tensor:
        """Scale parameters c, one per coefficient, > 1e-5; shape (C, H, W)."""
        return scale_from_latent(self.latent_scale)

    def extra_repr(self) -> str:
        return (
            f"colorspace={self.colorspace!r}, reduction={self.reduction!r}, image_size={self.image_size}, "
            f"layout={self.layout!r}"
        )

    def coefficients(self, residual: torch.Tensor) -> torch.Tensor:
        """Transform coefficients of an (N, C, H, W) residual, aligned with the parameters (N, C', H, W)."""
        if self.layout == "original":
            if residual.shape[1] == 1:
                residual = residual.expand(-1, 3, -1, -1)
            return _coefficients_original(residual)
        return _coefficients_nchw(residual)

    def elementwise(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The elementwise NLL map (N, C', H, W) (C' = 3 in the original layout, even for grey)."""
        self._check(input, target)
        x = self.coefficients(input - target)
        alpha = alpha_from_latent(self.latent_alpha.to(x.dtype))
        scale = scale_from_latent(self.latent_scale.to(x.dtype))
        return nll(x, alpha, scale)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """input, target: (N, C, H, W) in [0, 1]. Returns a scalar, or (N,) for reduction 'none'.

        A frozen metric against a target that needs no gradient computes the input gradient in closed
        form, a chunk of images at a time (see :class:`~percept.metrics._frozen.FrozenPerImage`);
        otherwise autograd runs through :meth:`elementwise`. Both give the same numbers.
        """
        graph = torch.is_grad_enabled() and (
            target.requires_grad or self.latent_alpha.requires_grad or self.latent_scale.requires_grad
        )
        if graph:
            per_image = self.elementwise(input, target).sum(dim=(1, 2, 3))
        else:
            self._check(input, target)
            want_grad = input.requires_grad and torch.is_grad_enabled()
            with torch.no_grad():
                consts = self._frozen_constants(input.dtype)
            # chunks of at most 2^18 coefficients and a quarter of the batch's size (grey images have
            # three coefficients per pixel in the original layout)
            budget = min(1 << 18, input.numel() // 4)
            per_chunk = images_per_chunk(
                self.strategy, input.device, input.shape[0], math.prod(self.latent_alpha.shape), budget
            )
            chunk_fn = functools.partial(self._frozen_chunk, consts)
            per_image = FrozenPerImage.apply(input, target, chunk_fn, per_chunk, want_grad)
        return checks.reduce(per_image, self.reduction)

    def _check(self, input: torch.Tensor, target: torch.Tensor) -> None:
        checks.check_pair(input, target, channels=self.channels, name="adaptive")
        if tuple(input.shape[2:]) != self.image_size:
            h, w = input.shape[2:]
            raise ValueError(
                f"adaptive: this metric has one (alpha, scale) per coefficient of a {self.image_size[0]}x"
                f"{self.image_size[1]} image, got {h}x{w} images; crop/resize to {self.image_size[0]}x"
                f"{self.image_size[1]}, or build it with image_size=({h}, {w}) and pretrained=False "
                "(the shipped weights fit only 64x64)"
            )

    def _frozen_chunk(self, consts: dict, x: torch.Tensor, y: torch.Tensor, part: slice, grad_out: torch.Tensor | None):
        """Per-image NLL of a chunk; its input gradient is written into ``grad_out`` when given.

        With ``L = log1p((X / c)^2 / b)``: ``rho = b/a * expm1(a/2 * L)`` and
        ``d rho / d X = X / c^2 * exp((a/2 - 1) * L)``, then the transposed transform.
        """
        dtype = consts["dtype"]
        coef = self.coefficients(x.to(dtype) - y.to(dtype))
        log_term = torch.mul(coef, consts["inv_scale"]).square_().mul_(consts["inv_b"]).log1p_()
        values = torch.mul(log_term, consts["half_a"]).expm1_().mul_(consts["b_over_a"]).sum(dim=(1, 2, 3))
        values += consts["constant"]
        if grad_out is not None:
            grad = log_term.mul_(consts["half_a_minus_1"]).exp_().mul_(coef).mul_(consts["inv_scale_sq"])
            if self.layout == "original":
                grad = _coefficients_original_adjoint(grad, x.shape[1])
            else:
                grad = _coefficients_nchw_adjoint(grad)
            grad_out.copy_(grad)
        return values

    def _frozen_constants(self, dtype: torch.dtype) -> dict:
        dtype = torch.float64 if dtype == torch.float64 else torch.float32
        alpha = alpha_from_latent(self.latent_alpha.to(dtype))
        scale = scale_from_latent(self.latent_scale.to(dtype))
        b = (alpha - 2).abs().clamp_min(_EPS)
        a = alpha.clamp_min(_EPS)
        return {
            "dtype": dtype,
            "inv_scale": 1 / scale,
            "inv_scale_sq": scale.square().reciprocal(),
            "inv_b": 1 / b,
            "half_a": a / 2,
            "half_a_minus_1": a / 2 - 1,
            "b_over_a": b / a,
            "constant": (torch.log(scale) + _log_partition(alpha)).sum(),
        }


# --------------------------------------------------------------------------------------------------
# the original LossProvider module
# --------------------------------------------------------------------------------------------------


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
        x = _coefficients_original(residual)
        alpha = alpha_from_latent(params.latent_alpha.to(x.dtype)).reshape(self.image_size)
        scale = scale_from_latent(params.latent_scale.to(x.dtype)).reshape(self.image_size)
        return nll(x, alpha, scale)

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
