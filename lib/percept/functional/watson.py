"""Watson's perceptual model on 8x8 block DCT and DFT coefficients (Czolbe et al., NeurIPS 2020): the formula.

For one colour plane with target coefficients C0 and input coefficients C1 (blocks k, frequencies f):

1. base thresholds ``t = exp(log_thresholds)`` per frequency;
2. luminance masking ``T = t * ((dc0 + eps) / (mean(dc0) + eps)) ** alpha`` with dc0 the target's DC term of
   the block and the mean over the image's blocks (``batch_luminance``: over the whole batch, the original);
3. contrast masking ``M = (|C0| + eps) ** w * T ** (1 - w)`` and the threshold ``S = smax(T, M)`` with
   ``smax(a, b) = a * softmax(a, b)[0] + b * softmax(a, b)[1] = b + (a - b) * sigmoid(a - b)``
   (:func:`smooth_max`);
4. Minkowski pooling ``D = (sum_{k,f} [(|C0 - C1| / S + eps) ** beta + eps]) ** (1 / beta)``.

Watson-DFT compares the amplitudes of the block DFT this way and adds ``sum_{k,f} w_phase[f] * delta`` with
``delta`` the angle between the target and input coefficients, ``z0 = (re0 + eps, im0)`` and
``z1 = (re1 + eps, im1)``. RGB images are converted to YCbCr (full-range BT.601) and every plane has its own
parameters; the three distances are combined with ``channel_weights``. ``eps = 1e-10``.

How it is evaluated (the one code path of the formula):

- Watson-DCT stays in image layout (coefficient (u, v) of block (i, j) at pixel (8i + u, 8j + v)) and uses
  the DCT's linearity: the input enters only through the DCT of ``input - target``. The block DCT is two
  small matrix products; the block DFT is a batched FFT, which keeps flat blocks exactly flat (their phase
  is exactly 0 rather than rounding noise).
- Powers are ``exp(beta * log(x))``; ``M`` is formed in log space; the phase difference is the arccos of
  ``dot / (|z0| |z1|)`` computed as ``sign(dot) / sqrt(1 + (cross / dot) ** 2)`` (exactly 1 for identical
  coefficients, as the original's difference of two atan2 angles), times ``1 - 1e-7`` so that the arccos
  keeps a finite gradient.
- The luminance mean is taken from the target's colour-plane means (the DC term of a block is ``8 x`` (DCT)
  or ``1 x`` (DFT) its mean), which the random shift weights by how often each pixel appears.
- Fresh intermediates are updated in place (``x.log_()``, ``x.mul_(w)``, ...): without autograd (the fast
  path) each chunk-sized allocation costs memory traffic, about half the time of the elementwise part. Under
  autograd this is allowed for every operation used here except on the output of one that saves its output
  for backward (exp, sigmoid, rsqrt, reciprocal, copysign): those results are never modified. Autograd raises
  an error, never a wrong gradient, if that rule is broken, and the tests differentiate every path (input,
  target, parameters, second order).

The per-image functions (``_dct_per_image``, ``_dft_per_image``) are what :func:`watson_dct`,
:func:`watson_dft` and the metric modules (:mod:`percept.metrics.watson`) compute, through autograd. Given a
``grad_out`` tensor they also write the input gradient of the per-image values into it, in closed form from
the same intermediates (the frozen metrics' fast path, see :class:`percept.metrics._frozen.FrozenPerImage`);
the tests compare it with autograd through the formula.

>>> import torch, percept
>>> y = torch.rand(2, 3, 32, 32)
>>> x = (y + 0.05 * torch.randn_like(y)).clamp(0, 1)
>>> percept.functional.watson_dft(x, y, reduction="none").shape
torch.Size([2])
>>> percept.functional.watson_dct(y, y, reduction="none").tolist() == percept.functional.watson_dct(
...     y[:1], y[:1], reduction="none").tolist() * 2
True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

from percept import checks
from percept.color import YCBCR_MATRIX, YCBCR_OFFSET
from percept.execution import cached_constant, no_autocast, resolve_strategy
from percept.transforms import (
    FULL_DCT_MAX_SIDE,
    block_rdft,
    block_rdft_adjoint,
    dct_operator,
    image_block_dct,
    shift_images,
    shift_images_adjoint,
    shift_weights,
    shifted_dct_matrix,
)

__all__ = ["watson_dct", "watson_dft", "smooth_max", "WATSON_TABLE", "EPS", "BLOCK", "PHASE_CLAMP"]

EPS = 1e-10
BLOCK = 8
#: the phase's cosine is scaled by this factor (just below one: the arccos gradient stays finite)
PHASE_CLAMP = 1 - 1e-7
#: coefficients per block: 64 DCT coefficients, 8 x 5 onesided DFT coefficients
DCT_FREQUENCIES = BLOCK * BLOCK
DFT_FREQUENCIES = BLOCK * (BLOCK // 2 + 1)

#: Watson (1993) DCT base detection thresholds for 8x8 blocks (the DCTune defaults)
WATSON_TABLE = (
    (1.40, 1.01, 1.16, 1.66, 2.40, 3.43, 4.79, 6.56),
    (1.01, 1.45, 1.32, 1.52, 2.00, 2.71, 3.67, 4.93),
    (1.16, 1.32, 2.24, 2.59, 2.98, 3.64, 4.60, 5.88),
    (1.66, 1.52, 2.59, 3.77, 4.55, 5.30, 6.28, 7.60),
    (2.40, 2.00, 2.98, 4.55, 6.15, 7.46, 8.71, 10.17),
    (3.43, 2.71, 3.64, 5.30, 7.46, 9.62, 11.58, 13.51),
    (4.79, 3.67, 4.60, 6.28, 8.71, 11.58, 14.50, 17.29),
    (6.56, 4.93, 5.88, 7.60, 10.17, 13.51, 17.29, 21.15),
)

#: the onesided DFT coefficients of a real 8x8 block that are real: (0, 0), (0, 4), (4, 0), (4, 4)
REAL_DFT_COEFFICIENTS = tuple(u * (BLOCK // 2 + 1) + v for u in (0, 4) for v in (0, 4))


# --------------------------------------------------------------------------------------------------- public API


def watson_dct(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    log_thresholds: torch.Tensor | None = None,
    alpha: torch.Tensor | float = 0.649,
    w: torch.Tensor | float = 0.7,
    beta: torch.Tensor | float = 4.0,
    channel_weights: torch.Tensor | None = None,
    offsets: tuple[int, int] | None = None,
    batch_luminance: bool = False,
    luminance_floor: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Watson-DCT distance of ``input`` to the reference ``target`` (masking comes from the target).

    Args:
        input, target: (N, C, H, W) float tensors in [0, 1], C = 3 (RGB, compared in YCbCr) or 1 (grey),
            H and W multiples of 8. float16/bfloat16 are computed in float32, float64 in float64.
        log_thresholds: (C, 64) or (64,) natural logs of the base thresholds, coefficient ``u * 8 + v``;
            default: Watson's table (:data:`WATSON_TABLE`).
        alpha: luminance masking exponent, a float or (C,); default 0.649.
        w: contrast masking exponent in (0, 1), a float or (C,); default 0.7.
        beta: Minkowski pooling exponent, a float or (C,); default 4.
        channel_weights: (3,) weights of the Y, Cb, Cr distances (RGB only); default 1/3 each.
        offsets: shift the block grid: both images are translated by ``offsets - 4`` pixels per axis with
            replicated edges (each offset in 0..7; (4, 4) is no shift). The original's random shift draws
            them uniformly (:func:`percept.transforms.random_offsets`). None: no shift.
        batch_luminance: average the DC terms over the whole batch (the original) instead of each image.
        luminance_floor: floor the target's DC terms and their mean at the value of a block of this mean
            (e.g. 1/255) before luminance masking; 0 is the original formula.
        reduction: "mean" or "sum" over the batch, or "none" for the (N,) per-image distances.

    The defaults are the paper's initial (untrained) values; the trained weights of Czolbe et al. are those of
    ``percept.get_metric("watson-dct").functional_kwargs()``.

    >>> import torch
    >>> y = torch.rand(2, 1, 16, 16)
    >>> same, inverted = watson_dct(y, y, reduction="none"), watson_dct(1 - y, y, reduction="none")
    >>> bool((same < 0.02).all() and (inverted > 100 * same).all())   # identical images: the eps floor
    True
    """
    c = _check_input(input, target, "watson_dct")
    dtype = _compute_dtype(input)
    params = _Params(
        log_thresholds=torch.log(torch.tensor(WATSON_TABLE, dtype=torch.float64)).view(-1)
        if log_thresholds is None
        else log_thresholds,
        alpha=alpha,
        w=w,
        beta=beta,
        channel_weights=channel_weights,
    )
    return checks.reduce(
        _public_per_image(DCT, input, target, params, c, dtype, offsets, batch_luminance, luminance_floor, 0.0),
        checks.check_reduction(reduction),
    )


def watson_dft(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    log_thresholds: torch.Tensor | float = 0.0,
    alpha: torch.Tensor | float = 0.1,
    w: torch.Tensor | float = 0.2,
    beta: torch.Tensor | float = 1.0,
    phase_weights: torch.Tensor | None = None,
    channel_weights: torch.Tensor | None = None,
    offsets: tuple[int, int] | None = None,
    batch_luminance: bool = False,
    luminance_floor: float = 0.0,
    phase_eps: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Watson-DFT distance (the paper's metric): amplitude masking as :func:`watson_dct`, plus the phase term.

    Args:
        input, target: (N, C, H, W) float tensors in [0, 1], C = 3 (RGB, compared in YCbCr) or 1 (grey),
            H and W multiples of 8.
        log_thresholds: (C, 40), (40,) or a float: logs of the base thresholds of the onesided 8 x 5 block
            DFT, coefficient ``u * 5 + v``; default 0 (thresholds 1).
        alpha, w, beta: as :func:`watson_dct`; defaults 0.1, 0.2, 1.
        phase_weights: (C, 40) or (40,) non-negative weights of the phase differences; default exp(-2) except
            for the four purely real coefficients (0,0), (0,4), (4,0), (4,4), whose weight is 0 (the original
            at inference).
        channel_weights, offsets, batch_luminance, luminance_floor, reduction: as :func:`watson_dct`.
        phase_eps: weight each phase difference by ``|z1|^2 / (|z1|^2 + phase_eps^2)`` (z1 the input's
            coefficient): bounds the gradient of flat inputs at about ``1 / phase_eps``; 0 is the original.

    >>> import torch
    >>> y = torch.rand(3, 3, 32, 32)
    >>> d = watson_dft((y + 0.1).clamp(0, 1), y, reduction="none")
    >>> d.shape, bool((d > 0).all())
    (torch.Size([3]), True)
    """
    c = _check_input(input, target, "watson_dft")
    if not phase_eps >= 0:
        raise ValueError(f"phase_eps must be >= 0, got {phase_eps}")
    dtype = _compute_dtype(input)
    if phase_weights is None:
        phase_weights = torch.full((DFT_FREQUENCIES,), math.exp(-2.0), dtype=torch.float64)
        phase_weights[list(REAL_DFT_COEFFICIENTS)] = 0.0
    params = _Params(log_thresholds, alpha, w, beta, channel_weights, phase_weights)
    return checks.reduce(
        _public_per_image(DFT, input, target, params, c, dtype, offsets, batch_luminance, luminance_floor, phase_eps),
        checks.check_reduction(reduction),
    )


def _check_input(input: torch.Tensor, target: torch.Tensor, name: str) -> int:
    checks.check_pair(input, target, min_size=BLOCK, multiple_of=BLOCK, name=name)
    c = input.shape[1]
    if c not in (1, 3):
        raise ValueError(f"{name}: expected 3 (RGB) or 1 (grey) channels, got {c} (shape {tuple(input.shape)})")
    return c


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 for float64 input, else float32 (eps = 1e-10 and the powers need at least float32)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _public_per_image(transform, input, target, params, c, dtype, offsets, batch_luminance, floor, phase_eps):
    if offsets is not None:
        offsets = tuple(int(o) for o in offsets)
        if len(offsets) != 2 or not all(0 <= o < BLOCK for o in offsets):
            raise ValueError(f"offsets must be two integers in 0..{BLOCK - 1}, got {offsets}")
    if floor < 0:
        raise ValueError(f"luminance_floor must be >= 0, got {floor}")
    params = params.broadcast(c, transform.frequencies, dtype, input.device)
    with no_autocast(input.device.type):
        formula = bind(transform, target, params, offsets=offsets, batch_luminance=batch_luminance,
                       luminance_floor=floor, phase_eps=phase_eps,
                       full_dct=resolve_strategy("auto", input.device) == "batched")  # fmt: skip
        return formula(input, target, slice(None))


# --------------------------------------------------------------------------------------------------- parameters


class _Params(NamedTuple):
    """The model's parameters in natural units, per colour plane (C = 3: Y, Cb, Cr; C = 1: grey)."""

    log_thresholds: torch.Tensor  # (C, F) log base thresholds
    alpha: torch.Tensor  # (C,) luminance masking exponent
    w: torch.Tensor  # (C,) contrast masking exponent
    beta: torch.Tensor  # (C,) Minkowski exponent
    channel_weights: torch.Tensor | None = None  # (C,) weights of the planes' distances (None: 1 / C each)
    phase_weights: torch.Tensor | None = None  # (C, F) Watson-DFT's phase weights

    def broadcast(self, channels: int, frequencies: int, dtype: torch.dtype, device: torch.device) -> _Params:
        """Every parameter as a tensor of ``dtype`` and its full shape (C,) or (C, F); a clear error otherwise."""

        def full(name, value, shape):
            if value is None and name == "channel_weights":
                return torch.full(shape, 1.0 / channels, dtype=dtype, device=device)
            if value is None:
                raise ValueError(f"{name} must be a float or a tensor, got None")
            t = torch.as_tensor(value).to(dtype=dtype, device=device)
            try:
                return t.expand(shape)
            except RuntimeError:
                raise ValueError(
                    f"{name} has shape {tuple(t.shape)}; expected {shape} (or a shape that broadcasts to it)"
                ) from None

        per_channel, per_frequency = (channels,), (channels, frequencies)
        if self.channel_weights is not None and channels == 1:
            raise ValueError("channel_weights apply to RGB input (3 channels), got grey input")
        return _Params(
            full("log_thresholds", self.log_thresholds, per_frequency),
            full("alpha", self.alpha, per_channel),
            full("w", self.w, per_channel),
            full("beta", self.beta, per_channel),
            full("channel_weights", self.channel_weights, per_channel),
            None if self.phase_weights is None else full("phase_weights", self.phase_weights, per_frequency),
        )


class _Masking(NamedTuple):
    """Parameter-derived tensors of one evaluation, shaped to broadcast over the coefficients
    ((n, C, Hb, 8, Wb, 8) for the DCT, (n, C, K, 40) for the DFT); differentiable in the parameters."""

    log_t: torch.Tensor  # log base thresholds
    w: torch.Tensor
    one_m_w: torch.Tensor  # 1 - w
    alpha: torch.Tensor  # (C,)
    beta: torch.Tensor  # (C,)
    channel_weights: torch.Tensor  # (C,)
    phase_weights: torch.Tensor | None  # (1, C, 40)


class _Transform(NamedTuple):
    name: str
    frequencies: int
    frequency_view: tuple[int, ...]  # the coefficient axes after (n, C) that the thresholds broadcast over
    dc_scale: float  # the DC coefficient of a block is this times its mean
    per_image: Callable


def _mask(params: _Params, transform: _Transform) -> _Masking:
    c = params.alpha.shape[0]
    freq = (1, c, *transform.frequency_view)
    channel = (1, c) + (1,) * len(transform.frequency_view)
    one_m_w = 1 - params.w
    return _Masking(
        log_t=params.log_thresholds.view(freq),
        w=params.w.view(channel),
        one_m_w=one_m_w.view(channel),
        alpha=params.alpha,
        beta=params.beta,
        channel_weights=params.channel_weights,
        phase_weights=None if params.phase_weights is None else params.phase_weights.view(1, c, -1),
    )


# --------------------------------------------------------------------------------------------------- the formula


def bind(
    transform: _Transform,
    target: torch.Tensor,
    params: _Params | _Masking,
    *,
    offsets: tuple[int, int] | None = None,
    batch_luminance: bool = False,
    luminance_floor: float = 0.0,
    phase_eps: float = 0.0,
    dropout: float = 0.0,
    full_dct: bool = False,
) -> Callable:
    """The per-image formula of ``transform`` (:data:`DCT` or :data:`DFT`) against ``target``, as a function
    ``(x, y, part, grad_out) -> values (n,)`` of the images ``part`` of the batch that also writes the input
    gradient of the values into ``grad_out`` (n, C, H, W) when it is given (the protocol of
    :class:`percept.metrics._frozen.FrozenPerImage`).

    ``params`` are full-shaped tensors in the compute dtype (:meth:`_Params.broadcast`), or the masking
    tensors derived from them for ``transform`` (:func:`_mask`: a frozen metric keeps them). The luminance mean
    is computed here from the whole ``target``, so a chunk's values do not depend on the chunking. Called
    with ``grad_out=None`` under autograd it is the plain formula (gradients for inputs, targets and
    parameters); ``dropout`` (2AFC tuning) drops pooled terms and phase differences with this probability.
    ``full_dct`` (the batched strategy): Watson-DCT's block transform and shift as whole-side matrix products.
    """
    dtype = params.alpha.dtype
    mean_dc = _mean_dc(target.to(dtype), offsets, transform.dc_scale, batch_luminance)
    masking = params if isinstance(params, _Masking) else _mask(params, transform)
    floor = transform.dc_scale * luminance_floor
    options = {"phase_eps": phase_eps} if transform is DFT else {"full": full_dct}
    if phase_eps and transform is not DFT:
        raise ValueError(f"phase_eps applies to Watson-DFT's phase term; Watson-{transform.name.upper()} has none")

    def formula(x, y, part, grad_out=None):
        if grad_out is not None and torch.is_grad_enabled():
            raise RuntimeError("the closed-form gradient is for the no-grad fast path; use autograd instead")
        md = mean_dc if mean_dc.shape[0] == 1 else mean_dc[part]
        return transform.per_image(
            x.to(dtype), y.to(dtype), masking, md, offsets, floor=floor, dropout=dropout, grad_out=grad_out, **options
        )

    return formula


def _mean_dc(target: torch.Tensor, offsets, dc_scale: float, batch: bool) -> torch.Tensor:
    """Mean DC term of each image's colour planes (N, C), or of the batch (1, C): the DC term of a block is
    ``dc_scale`` times its mean, so this is ``dc_scale`` times the (shift-weighted) plane mean of the YCbCr
    target."""
    n, c, h, w = target.shape
    if offsets is None:
        sums = target.sum(dim=(2, 3))
    else:  # the sums over the shifted target: replicated edge rows and columns count several times
        rows, cols = (_shift_weights(size, o, target.dtype, target.device) for size, o in zip((h, w), offsets))
        sums = torch.matmul(target, cols) @ rows
    scale = dc_scale / (h * w)
    if c == 3:  # the scale folded into the (cached) YCbCr matrix and offset
        matrix = _constant(tuple(tuple(v * scale for v in row) for row in YCBCR_MATRIX), target.dtype, target.device)
        offset = _constant(tuple(v * dc_scale for v in YCBCR_OFFSET), target.dtype, target.device)
        mean_dc = torch.addmm(offset, sums, matrix.T)
    else:
        mean_dc = sums * scale
    return mean_dc.mean(dim=0, keepdim=True) if batch else mean_dc


def _log_luminance(dc: torch.Tensor, mean_dc: torch.Tensor, alpha: torch.Tensor, floor: float) -> torch.Tensor:
    """``alpha * log((dc + eps) / (mean + eps))`` per block: dc (n, C, ...) (the blocks' DC terms), mean_dc
    (n or 1, C). The floor applies to each block's DC term and to the mean (images without dark blocks are
    untouched)."""
    blocks = (1,) * (dc.dim() - 2)
    dc, mean = dc + EPS, mean_dc.view(*mean_dc.shape, *blocks) + EPS
    if floor > 0:  # (on the fresh sums, so that no view of the coefficients is kept for autograd)
        dc, mean = dc.clamp_min(floor + EPS), mean.clamp_min(floor + EPS)
    return torch.log(dc / mean) * alpha.view(1, -1, *blocks)


def smooth_max(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise ``a * s_a + b * s_b`` with ``(s_a, s_b) = softmax(a, b)``, i.e. ``b + (a - b) sigmoid(a - b)``
    (``a`` and ``b`` are not modified; differentiable)."""
    return _smooth_max_from_gap(a - b, b)


def _smooth_max_from_gap(gap: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``b + gap * sigmoid(gap)``, i.e. ``smooth_max(b + gap, b)``, computed in ``gap``'s storage."""
    return gap.mul_(torch.sigmoid(gap)).add_(b)


def _inverse_threshold(c0_abs: torch.Tensor, log_lum: torch.Tensor, k: _Masking) -> torch.Tensor:
    """``1 / S`` from the target's |coefficients| and the log luminance factor of each block (broadcast).

    ``T = t * exp(log_lum)``; ``M = (|c0| + eps) ** w * T ** (1 - w)`` in log space; ``S = smooth_max(T, M)``.
    ``log T`` is formed once at full shape: broadcasting over both frequencies and blocks is slow on CPU."""
    log_thresh = torch.add(k.log_t, log_lum)
    m = torch.add(c0_abs, EPS).log_().mul_(k.w).addcmul_(log_thresh, k.one_m_w).exp_()
    gap = torch.exp(log_thresh) - m if log_thresh.requires_grad else log_thresh.exp_().sub_(m)  # autograd keeps log T
    return _smooth_max_from_gap(gap, m).reciprocal_()  # 1 / smax(T, M)


def _minkowski(diff, inv_s, beta, dropout, want_grad):
    """Minkowski pooling ``(sum (|diff| / S + eps) ** beta + eps) ** (1 / beta)`` over the axes after (n, C).

    Returns ``(dist (n, C), None)``, or with ``want_grad`` ``(dist, (d dist / d diff) as an elementwise factor
    and a per-plane one)``: ``ratio ** (beta - 1) / S * sign(diff)`` and ``dist / total`` (``diff`` is
    overwritten then: no autograd).
    """
    ratio = diff.abs().mul_(inv_s).add_(EPS)
    terms = torch.log(ratio).mul_(beta.view(1, -1, *([1] * (ratio.dim() - 2)))).exp_()
    if dropout:
        terms = F.dropout(terms, dropout)
    total = terms.sum(dim=tuple(range(2, terms.dim()))) + math.prod(terms.shape[2:]) * EPS
    dist = total.pow(torch.reciprocal(beta))
    if not want_grad:
        return dist, None
    return dist, (terms.div_(ratio).mul_(inv_s).mul_(diff.sign_()), dist / total)


def _dct_per_image(x, y, k: _Masking, mean_dc, offsets, *, floor=0.0, dropout=0.0, grad_out=None, full=False):
    """Watson-DCT of images x, y (n, C, H, W) (see :func:`bind`): values (n,); their gradient w.r.t. ``x`` is
    written into ``grad_out`` when given. ``d D / d C1 = D / total * ratio ** (beta - 1) / S * sign(C1 - C0)``, mapped back by
    the transposed DCT, colour transform and shift.

    ``full`` (the batched strategy, sides up to ``FULL_DCT_MAX_SIDE``): the block DCT as one product with
    whole-side matrices that also hold the shift (:func:`percept.transforms.shifted_dct_matrix`), so that
    neither the shifted copies nor the shift's adjoint cost operations; otherwise 8 x 8 products on shifted
    copies (fewer flops: the CPU's choice)."""
    n, c, h, w = x.shape
    full = full and max(h, w) <= FULL_DCT_MAX_SIDE
    if full:
        oy, ox = offsets if offsets is not None else (BLOCK // 2, BLOCK // 2)
        mats = (shifted_dct_matrix(h, oy, x.dtype, x.device), shifted_dct_matrix(w, ox, x.dtype, x.device))
    elif offsets is not None:
        x, y = shift_images(x, offsets, BLOCK), shift_images(y, offsets, BLOCK)
    layout = (n, c, h // BLOCK, BLOCK, w // BLOCK, BLOCK)  # coefficient (u, v) of block (i, j) at (8i+u, 8j+v)
    a = mats if full else dct_operator(BLOCK, x)
    colour = _ycbcr(x.dtype, x.device)[0] if c == 3 else None

    c0 = image_block_dct(y if colour is None else _mix(y, colour), a).view(layout)
    if colour is not None:  # the colour offset moves the DC terms (8 x the block mean) of Cb and Cr only
        dc_offset = _constant(tuple(BLOCK * v for v in YCBCR_OFFSET[1:]), x.dtype, x.device)
        c0[:, 1:, :, 0, :, 0].add_(dc_offset.view(1, 2, 1, 1))
    log_lum = _log_luminance(c0[:, :, :, 0, :, 0], mean_dc, k.alpha, floor)  # (n, C, Hb, Wb)
    inv_s = _inverse_threshold(c0.abs_(), log_lum[:, :, :, None, :, None], k)
    del c0
    # the DCT is linear: the DCT of the (colour-transformed) difference is C1 - C0
    coef = image_block_dct(x - y if colour is None else _mix(x - y, colour), a).view(layout)
    del x, y  # (the shifted copies, if any: memory)
    if dropout:  # draw the dropout mask in block order (N, C, K, 64), as the original
        coef, inv_s = _block_order(coef), _block_order(inv_s)
    dist, grad = _minkowski(coef, inv_s, k.beta, dropout, grad_out is not None)
    values = dist @ k.channel_weights
    if grad_out is None:
        return values
    elementwise, per_plane = grad
    del coef, inv_s, grad
    g = image_block_dct(elementwise.view(n, c, h, w), a, adjoint=True)
    del elementwise
    scale = per_plane * k.channel_weights  # (n, C): d value / d dist times dist / total
    out = grad_out if (offsets is None or full) and grad_out.dtype == g.dtype else None
    if colour is None:
        g = torch.mul(g, scale.view(n, c, 1, 1), out=out)
    else:  # the transposed colour matrix with the per-image, per-plane scale folded in
        flat = None if out is None else out.view(n, c, h * w)
        g = torch.matmul(colour.T * scale[:, None, :], g.view(n, c, h * w), out=flat).view(n, c, h, w)
    if offsets is not None and not full:
        g = shift_images_adjoint(g, offsets, BLOCK, out=grad_out if grad_out.dtype == g.dtype else None)
    if g.data_ptr() != grad_out.data_ptr():
        grad_out.copy_(g)
    return values


def _dft_per_image(x, y, k: _Masking, mean_dc, offsets, *, floor=0.0, phase_eps=0.0, dropout=0.0, grad_out=None):
    """Watson-DFT of images x, y (n, C, H, W) (see :func:`bind`): values (n,); their gradient w.r.t. ``x`` is
    written into ``grad_out`` when given.

    Amplitudes ``a = |(re + eps, im + eps)|``. The phase difference is the angle between ``z0 = (re0 + eps,
    im0)`` and ``z1 = (re1 + eps, im1)``: ``arccos(k cos)`` with ``cos = sign(dot) / sqrt(1 + q^2)``,
    ``q = cross / dot`` (0/0, a zero coefficient, counts as q = 0: angle 0) and ``k`` = :data:`PHASE_CLAMP`.
    """
    n, c, h, w = x.shape
    ycbcr = c == 3
    # target side: amplitudes and 1 / S. The colour transform is elementwise, so flat blocks stay exactly flat
    re0, im0 = block_rdft(y, ycbcr=ycbcr, offsets=offsets)  # (n, C, K, 40) each
    re0e = re0.add_(EPS)
    a0 = torch.add(im0, EPS).square_().addcmul_(re0e, re0e).sqrt_()
    log_lum = _log_luminance(a0[..., 0], mean_dc, k.alpha, floor)
    inv_s = _inverse_threshold(a0, log_lum.unsqueeze(-1), k)

    # amplitude term
    re1, im1 = block_rdft(x, ycbcr=ycbcr, offsets=offsets)
    re1e, im1e = re1.add_(EPS), im1 + EPS
    a1 = torch.square(im1e).addcmul_(re1e, re1e).sqrt_()
    d_amp, amp_grad = _minkowski(a1 - a0, inv_s, k.beta, dropout, grad_out is not None)
    if grad_out is not None:  # (no autograd: in place)
        # d d_amp / d a1 = d_amp / total * ratio ** (beta - 1) / S * sign(a1 - a0), and
        # d a1 / d re1 = (re1 + eps) / a1, d a1 / d im1 = (im1 + eps) / a1
        elementwise, per_plane = amp_grad
        g_amp = elementwise.div_(a1).mul_((per_plane * k.channel_weights)[:, :, None, None])
    del a0, a1, inv_s, amp_grad  # (intermediates are freed as soon as possible: memory)

    # phase term: cross from two rounded products, so that it is exactly 0 for z0 == z1
    dot = torch.mul(re0e, re1e).addcmul_(im0, im1)
    cross = torch.mul(im0, re1e).sub_(re0e * im1)
    del re0, re0e, im0
    q2 = torch.div(cross, dot).square_().nan_to_num_(nan=0.0)  # 0/0 (a zero coefficient): angle 0
    kc = torch.div(_constant(PHASE_CLAMP, q2.dtype, q2.device), torch.add(q2, 1).sqrt_()).copysign_(dot)
    del dot
    delta = torch.arccos(kc)
    del kc
    pe2 = phase_eps**2
    if pe2:  # fade the phase of near-zero input coefficients: gate |z1|^2 / (|z1|^2 + phase_eps^2)
        s1_pe = torch.square(im1).addcmul_(re1e, re1e).add_(pe2)
        delta_gated = delta * torch.sub(s1_pe, pe2).div_(s1_pe)
    else:
        delta_gated = delta
    if dropout:
        delta_gated = F.dropout(delta_gated, dropout)
    dist = d_amp + (delta_gated.sum(dim=2) * k.phase_weights).sum(dim=-1)
    values = dist @ k.channel_weights
    if grad_out is None:
        return values

    # (no autograd from here: intermediates are updated in place)
    # d delta / d re1 = g im1, d delta / d im1 = -g (re1 + eps), where with k = PHASE_CLAMP
    # g = k sin(phi0 - phi1) / (|z1|^2 sqrt(1 - k^2 cos^2)) = k sign(cross) / (|z1|^2 sqrt(1 + (1 - k^2) / q^2))
    phase_scale = (k.phase_weights * k.channel_weights[:, None]).unsqueeze(2)  # (1, C, 1, 40)
    g_phase = q2.reciprocal_().mul_(1 - PHASE_CLAMP**2).add_(1).rsqrt_().copysign_(cross).mul_(phase_scale * PHASE_CLAMP)
    f = re1.shape[-1]
    coef_grad = torch.empty(*re1.shape[:-1], 2 * f, dtype=re1.dtype, device=re1.device)  # (re, im) parts
    if pe2:
        # the gate times g has |z1|^2 + phase_eps^2 in its denominator; the gate's own derivative adds
        # h * (re1 + eps, im1) with h = delta * 2 phase_eps^2 / (|z1|^2 + phase_eps^2)^2
        g_phase = g_phase.div_(s1_pe).nan_to_num_(nan=0.0)  # nan: z0 or z1 exactly 0 (no phase)
        h_gate = delta.mul_(phase_scale * (2 * pe2)).div_(s1_pe.square_())
        torch.addcmul(g_amp * re1e, g_phase, im1, out=coef_grad[..., :f]).addcmul_(h_gate, re1e)
        torch.addcmul(g_amp.mul_(im1e), g_phase, re1e, value=-1, out=coef_grad[..., f:]).addcmul_(h_gate, im1)
    else:
        g_phase = g_phase.div_(torch.square(im1).addcmul_(re1e, re1e)).nan_to_num_(nan=0.0)  # nan: z0 or z1 is 0
        torch.addcmul(g_amp * re1e, g_phase, im1, out=coef_grad[..., :f])
        torch.addcmul(g_amp.mul_(im1e), g_phase, re1e, value=-1, out=coef_grad[..., f:])
    block_rdft_adjoint(coef_grad, h, w, ycbcr=ycbcr, offsets=offsets, out=grad_out)
    return values


DCT = _Transform("dct", DCT_FREQUENCIES, (1, BLOCK, 1, BLOCK), float(BLOCK), _dct_per_image)
DFT = _Transform("dft", DFT_FREQUENCIES, (1, DFT_FREQUENCIES), 1.0, _dft_per_image)


# --------------------------------------------------------------------------------------------------- helpers


def _ycbcr(dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The YCbCr matrix (3, 3) and offset (3,) in ``dtype`` on ``device`` (cached constants: do not modify)."""
    return _constant(YCBCR_MATRIX, dtype, device), _constant(YCBCR_OFFSET, dtype, device)


@cached_constant(64)
def _constant(values: tuple | float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``torch.tensor(values)`` in ``dtype`` on ``device``, cached (never modify it)."""
    return torch.tensor(values, dtype=dtype, device=device)


@cached_constant(256)
def _shift_weights(size: int, offset: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """How often each source row (column) appears after the shift (a cached constant: do not modify)."""
    return shift_weights(size, offset, BLOCK).to(dtype=dtype, device=device)


def _mix(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Per-pixel colour transform ``out[:, i] = sum_j matrix[i, j] x[:, j]`` of (n, 3, H, W)."""
    n, c, h, w = x.shape
    return torch.matmul(matrix, x.reshape(n, c, h * w)).view(n, c, h, w)


def _block_order(x: torch.Tensor) -> torch.Tensor:
    """(n, C, Hb, 8, Wb, 8) image layout -> (n, C, K, 64) blocks in row-major order (a copy)."""
    n, c, hb, _, wb, _ = x.shape
    return x.permute(0, 1, 2, 4, 3, 5).reshape(n, c, hb * wb, BLOCK * BLOCK)
