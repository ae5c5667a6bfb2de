"""SSIM and MS-SSIM (Wang et al. 2004, 2003) as distances: ``1 - SSIM`` and ``1 - MS-SSIM``.

Every variant uses an 11x11 Gaussian window with sigma 1.5, C1 = 0.01^2 and C2 = 0.03^2 (data range 1), and
averages the SSIM map over channels and positions, so the value of an image is the mean over C, H, W.
What happens at the image border is the ``padding`` option of :class:`SSIM`:

- ``"valid"`` (default): no padding, the map covers only the positions where the window fits, an
  (H-10) x (W-10) map. This is the standard definition: Wang et al.'s MATLAB ``ssim_index`` (``filter2(...,
  'valid')``) and ``pytorch_msssim.ssim(x, y, data_range=1)``.
- ``"zeros"``: zero padding of 5, an H x W map. This is the ORIGINAL Czolbe et al. code (copied from
  pytorch-ssim) and :func:`original_ssim` uses it; it reproduces their reference values.
- ``"reflect"``: reflection padding of 5 (edge not repeated), an H x W map. This is what
  ``torchmetrics.functional.structural_similarity_index_measure`` computes with its default Gaussian window
  (torchmetrics also clamps the local variances at 0, which only matters for rounding-level negatives).

MS-SSIM follows ``pytorch_msssim.ms_ssim(x, y, data_range=1)``: 5 scales with weights
(0.0448, 0.2856, 0.3001, 0.2363, 0.1333), "valid" windows, 2x2 average pooling between scales (a zero row or
column is padded on both sides of an odd size, counted in the average), contrast-structure terms of the first
four scales and the full SSIM of the last one clipped at 0 (relu) before the weighted product, per channel,
then averaged over channels.

How it is computed: the Gaussian is separable and linear, so the four local statistics (mu_x, mu_y,
E[x^2 + y^2], E[xy]) are stacked and filtered in one call per direction: for small images (CPU: up to about
128x128, other devices: H + W <= 512) as matrix products with banded filter matrices (which also encode the
padding, built once per size and device), otherwise as depthwise 1-D convolutions, channels-last. One
autograd function computes the per-channel mean of the SSIM map (or of the contrast-structure map, for
MS-SSIM's finer scales) with a hand-written backward: the closed-form derivatives of the map w.r.t. the
statistics, filtered back with the adjoint filter. MS-SSIM is five calls of it joined by pooling and the
weighted product (autograd). How the batch goes through is the ``strategy`` option (:mod:`percept.execution`):

- "chunked" (the default on CPU): chunks of about 65k input values (MS-SSIM: 512k) that the backward
  recomputes instead of storing, so the working memory is bounded by the chunk and stays in the CPU caches.
  On 2 CPU cores a forward and backward pass on 128x3x64x64 is about 3.5x faster than pytorch-msssim
  (grey: 9x) and needs about 1.5x the input batch of extra memory (pytorch-msssim: about 35x).
- "batched" (the default on GPUs): the whole batch is one chunk whose terms are kept for the backward, so a
  training step is a fixed number of large operations (about 50 for SSIM, pytorch-msssim about 90; see
  ``tests/test_opcount_ssim.py``), whatever the batch size.

Everything is evaluated in the input dtype, at least float32: float16/bfloat16 inputs (and autocast) are
computed in float32, and the result is float32.

The LPIPS paper's SSIM baseline (its 2AFC table's "SSIM" row) is a different SSIM: scikit-image's
``structural_similarity`` with its defaults, a 7x7 **uniform** window, sample covariances (factor 49/48) and
the map's 3-pixel border cropped, on 8-bit RGB (data range 255) or on CIELAB (data range 100). That is
:class:`UniformSSIM`, registry name ``"ssim-skimage"``; it runs through autograd (a few pooling calls), not
through the fused Gaussian path above. ``colorspace="lab"`` (RGB input compared in CIELAB divided by 100,
:func:`percept.color.rgb_to_lab`) is offered by both :class:`SSIM` and :class:`UniformSSIM`; for the
Gaussian SSIM it only converts the input before the same code path.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from percept import checks, execution
from percept.color import rgb_to_lab_scaled

WINDOW_SIZE = 11
#: side of the uniform window of :class:`UniformSSIM` (scikit-image's default ``win_size``)
UNIFORM_WINDOW_SIZE = 7
WINDOW_SIGMA = 1.5
C1 = 0.01**2
C2 = 0.03**2
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
#: smallest side MS-SSIM accepts: after 4 halvings (rounding up) the coarsest scale must still fit the window
MS_SSIM_MIN_SIZE = (WINDOW_SIZE - 1) * 2 ** (len(MS_SSIM_WEIGHTS) - 1) + 1  # 161, as in pytorch-msssim
PADDINGS = ("valid", "zeros", "reflect")

_RADIUS = WINDOW_SIZE // 2
#: on CPU the banded-matrix filter is used while H + W is at most this (measured crossover); convolutions beyond
_MATMUL_MAX_H_PLUS_W = 256
#: the same on other devices (GPUs): below it the banded matmul, beyond it the depthwise convolutions
_MATMUL_MAX_H_PLUS_W_GPU = 512
#: input values per chunk of SSIM and MS-SSIM in the "chunked" strategy (bounds their working memory; small
#: chunks also stay in the CPU caches); the "batched" strategy runs the whole batch as one chunk
_CHUNK_ELEMENTS = 2**16
_MS_CHUNK_ELEMENTS = 2**19


def gaussian_window(dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """The normalised 1-D Gaussian, shape (11,), sigma 1.5; the 2-D window is its outer product."""
    coords = torch.arange(WINDOW_SIZE, dtype=torch.float64, device=device) - _RADIUS
    g = torch.exp(-(coords**2) / (2 * WINDOW_SIGMA**2))
    return (g / g.sum()).to(dtype)


def _check_padding(padding: str) -> str:
    if padding not in PADDINGS:
        raise ValueError(f"unknown padding {padding!r}: use one of {', '.join(PADDINGS)}")
    return padding


@functools.lru_cache(maxsize=64)
def _filter_constants(size: tuple[int, int], padding: str, method: str, dtype: torch.dtype, device: torch.device):
    """The filter's constant tensors, built once per (size, padding, method, dtype, device) and reused.

    Built outside inference mode and without grad, so a cached constant can be used by a later autograd step.
    """
    with torch.inference_mode(False), torch.no_grad():
        window = gaussian_window(dtype, device)
        if method == "matmul":
            return _filter_matrix(size[0], padding, window), _filter_matrix(size[1], padding, window)
        return window.view(1, 1, WINDOW_SIZE, 1), window.view(1, 1, 1, WINDOW_SIZE)


def _filter_matrix(size: int, padding: str, window: torch.Tensor) -> torch.Tensor:
    """Matrix M of shape (out, size) with ``M @ v`` = 1-D Gaussian filtering of ``v`` under ``padding``.

    out = size - 10 for "valid", size otherwise. Zero padding drops the taps outside the image (their columns
    match no pixel below); reflection folds them back in (index -1 -> 1, size -> size - 2).
    """
    out = size - 2 * _RADIUS if padding == "valid" else size
    taps = torch.arange(WINDOW_SIZE, device=window.device)
    cols = torch.arange(out, device=window.device)[:, None] + taps  # (out, 11) positions in the padded signal
    weights = window.expand(out, WINDOW_SIZE)
    if padding != "valid":
        cols = cols - _RADIUS
    if padding == "reflect":
        cols = cols.abs()
        cols = torch.where(cols > size - 1, 2 * (size - 1) - cols, cols)
    # dense one-hot sum (no scatter_add: deterministic everywhere); only used for small sizes
    onehot = cols[..., None] == torch.arange(size, device=window.device)
    return (weights[..., None] * onehot).sum(dim=1)


def _reflect_pad_adjoint(grad: torch.Tensor, r: int) -> torch.Tensor:
    """Adjoint of ``F.pad(x, (r, r, r, r), mode="reflect")``: fold the border rows and columns back in."""
    out = grad[..., r:-r, :].clone()
    out[..., 1 : r + 1, :] += grad[..., :r, :].flip(-2)
    out[..., -r - 1 : -1, :] += grad[..., -r:, :].flip(-2)
    folded = out[..., r:-r].clone()
    folded[..., 1 : r + 1] += out[..., :r].flip(-1)
    folded[..., -r - 1 : -1] += out[..., -r:].flip(-1)
    return folded


def _pick_method(x: torch.Tensor) -> str:
    """Banded matmul for small images (dense matrices grow with the square of the side), else convolutions.

    On CPU the matmul was measured faster up to about 128x128 (H + W <= ``_MATMUL_MAX_H_PLUS_W``); on a GPU
    it is also fewer and larger kernels, up to ``_MATMUL_MAX_H_PLUS_W_GPU``. Where float32 matrix products
    may run in reduced precision (``torch.set_float32_matmul_precision("high")``, TF32 on GPUs) the
    convolutions are used: the variances E[x^2] - mu^2 cancel, and need the full float32 statistics.
    """
    if torch.get_float32_matmul_precision() != "highest":
        return "conv"
    h, w = x.shape[-2:]
    limit = _MATMUL_MAX_H_PLUS_W if x.device.type == "cpu" else _MATMUL_MAX_H_PLUS_W_GPU
    return "matmul" if h + w <= limit else "conv"


class _GaussianFilter:
    """Separable 11x11 Gaussian filtering of K maps (N, C, H, W) at once, and its adjoint (for backward passes).

    "matmul": the maps are stacked to (K, N, C, H, W) and multiplied by banded (H', H) and (W', W) matrices
    that include the padding. "conv": the maps are concatenated to (N, K*C, H, W), channels-last, and filtered
    by two depthwise 1-D convolutions; the adjoint is the transposed convolutions (and the reflection fold).
    Output maps are (N, C, H', W'), H' = H - 10 for "valid" padding, H otherwise.
    """

    def __init__(self, size: tuple[int, int], padding: str, method: str, dtype: torch.dtype, device) -> None:
        self.padding, self.method = padding, method
        first, second = _filter_constants(tuple(size), padding, method, dtype, torch.device(device))
        if method == "matmul":
            self.mat_h, self.mat_w = first, second
        else:
            self.kernel_h, self.kernel_w = first, second
            self.pad = _RADIUS if padding == "zeros" else 0

    def __call__(self, maps: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Filter the K maps; ``maps`` is emptied (its tensors are freed as soon as they are stacked)."""
        channels = maps[0].shape[1]
        if self.method == "matmul":
            stack = torch.stack(maps)
            maps.clear()
            half = stack @ self.mat_w.mT
            del stack
            return (self.mat_h @ half).unbind(0)
        stack = torch.cat(maps, dim=1).contiguous(memory_format=torch.channels_last)
        maps.clear()
        if self.padding == "reflect":
            stack = F.pad(stack, (_RADIUS,) * 4, mode="reflect")
        k = stack.shape[1]
        half = F.conv2d(stack, self.kernel_h.expand(k, -1, -1, -1), padding=(self.pad, 0), groups=k)
        del stack
        return F.conv2d(half, self.kernel_w.expand(k, -1, -1, -1), padding=(0, self.pad), groups=k).split(channels, 1)

    def adjoint(self, maps: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """The adjoint (transpose) of :meth:`__call__`, (N, C, H', W') maps -> (N, C, H, W); empties ``maps``."""
        channels = maps[0].shape[1]
        if self.method == "matmul":
            stack = torch.stack(maps)
            maps.clear()
            half = stack @ self.mat_w
            del stack
            return (self.mat_h.mT @ half).unbind(0)
        stack = torch.cat(maps, dim=1).contiguous(memory_format=torch.channels_last)
        maps.clear()
        k = stack.shape[1]
        half = F.conv_transpose2d(stack, self.kernel_w.expand(k, -1, -1, -1), padding=(0, self.pad), groups=k)
        del stack
        out = F.conv_transpose2d(half, self.kernel_h.expand(k, -1, -1, -1), padding=(self.pad, 0), groups=k)
        if self.padding == "reflect":
            out = _reflect_pad_adjoint(out, _RADIUS)
        return out.split(channels, dim=1)


def _local_terms(x: torch.Tensor, y: torch.Tensor, filt: _GaussianFilter) -> tuple[torch.Tensor, ...]:
    """mu_x, mu_y and the luminance and contrast-structure numerators and denominators, each (N, C, H', W').

    SSIM = lum_num cs_num / (lum_den cs_den) with lum_num = 2 mu_x mu_y + C1, lum_den = mu_x^2 + mu_y^2 + C1,
    cs_num = 2 sigma_xy + C2, cs_den = sigma_x^2 + sigma_y^2 + C2, where sigma_xy = E[xy] - mu_x mu_y and
    sigma_x^2 + sigma_y^2 = E[x^2 + y^2] - mu_x^2 - mu_y^2. The four local statistics mu_x, mu_y,
    E[x^2 + y^2] and E[xy] come from one stacked filter call.
    """
    mu_x, mu_y, e_sq, e_xy = filt([x, y, torch.addcmul(x * x, y, y), x * y])
    mu_xy = mu_x * mu_y
    mu_sq = torch.addcmul(mu_x * mu_x, mu_y, mu_y)
    return mu_x, mu_y, mu_xy * 2 + C1, mu_sq + C1, (e_xy - mu_xy) * 2 + C2, (e_sq - mu_sq) + C2


def _value_map(terms: tuple[torch.Tensor, ...], luminance: bool) -> torch.Tensor:
    """The SSIM map (``luminance``) or the contrast-structure map cs_num / cs_den (MS-SSIM's finer scales)."""
    _, _, lum_num, lum_den, cs_num, cs_den = terms
    if luminance:
        return (lum_num * cs_num) / (lum_den * cs_den)
    return cs_num / cs_den


def _chunk_size(x: torch.Tensor, elements: int) -> int:
    """Images per chunk: about ``elements`` input values, at least one image."""
    return max(1, elements // x[0].numel())


def _chunk_backward(terms, value, grad, x, y, filt, luminance, need_x, need_y):
    """dL/dx, dL/dy (None where not needed) of L = sum_{n,c} grad[n, c] * mean over (H', W') of ``value``.

    Closed form: with g = 2 grad / (H' W') * value (per position), p = g / cs_num, q = g / cs_den and, for
    the full SSIM, t = g / lum_num - p, u = q - g / lum_den (else t = -p, u = q): dL/dmu_x = mu_y t + mu_x u,
    dL/dE[x^2 + y^2] = -q / 2, dL/dE[xy] = p. Filtered back with the adjoint filter (only the maps that the
    inputs needing a gradient use), then dL/dx = A(dL/dmu_x) - x A(q) + y A(p) (the 2 of d(x^2)/dx cancels
    the 1/2).
    """
    mu_x, mu_y, lum_num, lum_den, cs_num, cs_den = terms
    g = value * (grad * (2 / value[0, 0].numel()))[..., None, None]
    p, q = g / cs_num, g / cs_den
    if luminance:
        t, u = g / lum_num - p, q - g / lum_den
    else:
        t, u = p.neg(), q
    del g
    maps = [q, p]
    if need_x:
        maps.append(torch.addcmul(mu_y * t, mu_x, u))
    if need_y:
        maps.append(torch.addcmul(mu_x * t, mu_y, u))
    del p, q, t, u
    back = filt.adjoint(maps)  # A(q), A(p), then A(dL/dmu_x) and/or A(dL/dmu_y)
    grad_x = torch.addcmul(back[2], x, back[0], value=-1).addcmul_(y, back[1]) if need_x else None
    grad_y = torch.addcmul(back[-1], y, back[0], value=-1).addcmul_(x, back[1]) if need_y else None
    return grad_x, grad_y


class _FusedSSIM(torch.autograd.Function):
    """Per-image, per-channel mean of the SSIM map (or of the contrast-structure map), (N, C), with a
    hand-written backward.

    The batch goes through in chunks of ``step`` images. With one chunk (the "batched" strategy, or a small
    batch) the local terms are kept for the backward; with several ("chunked") only the inputs are kept and
    the backward recomputes each chunk's terms, so the extra memory stays near one input batch. The backward
    is :func:`_chunk_backward` (the closed-form derivatives filtered back with the adjoint filter): the same
    values as autograd (checked against pytorch-msssim's gradients and by gradcheck) in fewer operations.
    First-order only (no double backward).
    """

    @staticmethod
    def forward(ctx, x, y, padding: str, method: str, step: int, luminance: bool) -> torch.Tensor:
        filt = _GaussianFilter(x.shape[-2:], padding, method, x.dtype, x.device)
        ctx.filt, ctx.step, ctx.luminance = filt, step, luminance
        if step >= x.shape[0]:
            terms = _local_terms(x, y, filt)
            value = _value_map(terms, luminance)
            ctx.save_for_backward(x, y, value, *terms)
            return value.mean(dim=(2, 3))
        ctx.save_for_backward(x, y)
        out = [
            _value_map(_local_terms(xc, yc, filt), luminance).mean(dim=(2, 3))
            for xc, yc in zip(x.split(step), y.split(step))
        ]
        return torch.cat(out)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, y, *kept = ctx.saved_tensors
        filt, step, luminance = ctx.filt, ctx.step, ctx.luminance
        need_x, need_y = ctx.needs_input_grad[:2]
        with _no_autocast(x.device.type):
            if kept:  # one chunk, its terms kept by the forward pass
                value, *terms = kept
                grad_x, grad_y = _chunk_backward(terms, value, grad, x, y, filt, luminance, need_x, need_y)
                return grad_x, grad_y, None, None, None, None
            grad_x = torch.empty_like(x) if need_x else None
            grad_y = torch.empty_like(y) if need_y else None
            for start in range(0, x.shape[0], step):
                chunk = slice(start, start + step)
                xc, yc = x[chunk], y[chunk]
                terms = _local_terms(xc, yc, filt)
                value = _value_map(terms, luminance)
                gx, gy = _chunk_backward(terms, value, grad[chunk], xc, yc, filt, luminance, need_x, need_y)
                if need_x:
                    grad_x[chunk] = gx
                if need_y:
                    grad_y[chunk] = gy
        return grad_x, grad_y, None, None, None, None


def _no_autocast(device_type: str):
    """Turn autocast off (bfloat16 statistics would cancel catastrophically in E[x^2] - mu^2)."""
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except (TypeError, RuntimeError):  # older signature or a device type autocast does not know
        enabled = torch.is_autocast_enabled()
    return torch.autocast(device_type=device_type, enabled=False) if enabled else contextlib.nullcontext()


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def _channel_means(x, y, padding: str, luminance: bool, strategy: str, chunk_elements: int, method=None):
    """(N, C) means of the SSIM map (``luminance``) or of the contrast-structure map, in the compute dtype.

    ``strategy`` "chunked": chunks of about ``chunk_elements`` input values; "batched": the whole batch in one
    chunk; "auto": by device (:func:`percept.execution.resolve_strategy`).
    """
    step = x.shape[0] if execution.resolve_strategy(strategy, x.device) == "batched" else _chunk_size(x, chunk_elements)
    return _FusedSSIM.apply(x, y, padding, method or _pick_method(x), step, luminance)


def _ssim_per_image(
    x: torch.Tensor, y: torch.Tensor, padding: str, method: str | None = None, strategy: str = "auto"
) -> torch.Tensor:
    """(N,) SSIM per image (mean of the map over C, H, W), no input checks.

    ``method``: "matmul" (banded matrices), "conv" (depthwise convolutions) or None (pick by device and size).
    """
    dtype = _compute_dtype(x)
    with _no_autocast(x.device.type):
        x, y = x.to(dtype), y.to(dtype)
        return _channel_means(x, y, padding, True, strategy, _CHUNK_ELEMENTS, method).mean(dim=1)


def _ms_ssim_per_image(
    x: torch.Tensor, y: torch.Tensor, method: str | None = None, strategy: str = "auto"
) -> torch.Tensor:
    """(N,) MS-SSIM per image, no input checks (smaller side must be >= MS_SSIM_MIN_SIZE).

    Each scale is one :class:`_FusedSSIM` call (chunked or batched as ``strategy`` says); the pooling and the
    weighted product run through autograd.
    """
    dtype = _compute_dtype(x)
    with _no_autocast(x.device.type):
        x, y = x.to(dtype), y.to(dtype)
        product = None
        last = len(MS_SSIM_WEIGHTS) - 1
        for level, weight in enumerate(MS_SSIM_WEIGHTS):
            if level:
                pad = (x.shape[-2] % 2, x.shape[-1] % 2)
                x = F.avg_pool2d(x, kernel_size=2, padding=pad)
                y = F.avg_pool2d(y, kernel_size=2, padding=pad)
            # contrast-structure only, the full SSIM at the coarsest scale
            value = _channel_means(x, y, "valid", level == last, strategy, _MS_CHUNK_ELEMENTS, method)
            term = value.relu() ** weight  # (N, C); as pytorch-msssim, cs <= 0 zeroes the product
            product = term if product is None else product * term
        return product.mean(dim=1)


def ssim(input: torch.Tensor, target: torch.Tensor, *, padding: str = "valid", strategy: str = "auto") -> torch.Tensor:
    """SSIM similarity per image, shape (N,), in [-1, 1] (1 for identical images).

    input, target: (N, C, H, W) floats in [0, 1], any C, H and W >= 11. ``padding`` as in the module docstring;
    ``strategy``: "auto", "chunked" or "batched" (see :mod:`percept.execution`).
    """
    _check_padding(padding)
    execution.check_strategy(strategy)
    checks.check_pair(input, target, min_size=WINDOW_SIZE, name="ssim")
    return _ssim_per_image(input, target, padding, strategy=strategy)


def ms_ssim(input: torch.Tensor, target: torch.Tensor, *, strategy: str = "auto") -> torch.Tensor:
    """MS-SSIM similarity per image, shape (N,), in [0, 1]; input, target (N, C, H, W) in [0, 1], H, W >= 161.

    ``strategy``: "auto", "chunked" or "batched" (see :mod:`percept.execution`).
    """
    execution.check_strategy(strategy)
    _check_ms_pair(input, target, channels=None)
    return _ms_ssim_per_image(input, target, strategy=strategy)


def _check_ms_pair(input: torch.Tensor, target: torch.Tensor, channels: int | None) -> None:
    checks.check_pair(input, target, channels=channels, min_size=WINDOW_SIZE, name="ms-ssim")
    h, w = input.shape[-2:]
    if min(h, w) < MS_SSIM_MIN_SIZE:
        raise ValueError(
            f"ms-ssim: images of {h}x{w} are too small; MS-SSIM needs at least {MS_SSIM_MIN_SIZE}x{MS_SSIM_MIN_SIZE} "
            f"so that the coarsest of its {len(MS_SSIM_WEIGHTS)} scales (4 halvings) still fits the "
            f"{WINDOW_SIZE}x{WINDOW_SIZE} window (the same limit as pytorch-msssim); use 'ssim' for smaller images"
        )


def _checked(module: nn.Module, input: torch.Tensor, target: torch.Tensor, min_size: int, name: str):
    """Validate an SSIM module's input pair; in Lab, convert both to scaled CIELAB (the checks first)."""
    if module.colorspace == "lab":
        checks.check_lab_input(input, target, name=name)
    checks.check_pair(input, target, channels=module.channels, min_size=min_size, name=name)
    if module.colorspace == "lab":
        return rgb_to_lab_scaled(input), rgb_to_lab_scaled(target)
    return input, target


class SSIM(nn.Module):
    """``1 - SSIM`` per image: a distance in [0, 2], 0 for identical images.

    Args:
        colorspace: "rgb" (3 channels), "grey" (1 channel, alias "LA") or "lab" (RGB input, compared in
            CIELAB divided by 100: the Gaussian SSIM of ``skimage.color.rgb2lab`` images with data range 100).
        reduction: "mean", "sum" or "none" over the per-image values.
        padding: "valid" (default; = pytorch-msssim and Wang et al.'s reference), "zeros" (= the original
            Czolbe et al. / pytorch-ssim code) or "reflect" (= torchmetrics); see the module docstring.
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
        self.colorspace = checks.normalize_colorspace(colorspace, lab=True)
        self.channels = checks.channels_of(self.colorspace)
        self.reduction = checks.check_reduction(reduction)
        self.padding = _check_padding(padding)
        self.strategy = execution.check_strategy(strategy)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        input, target = _checked(self, input, target, WINDOW_SIZE, "ssim")
        return checks.reduce(1 - _ssim_per_image(input, target, self.padding, strategy=self.strategy), self.reduction)

    def extra_repr(self) -> str:
        return (
            f"colorspace={self.colorspace!r}, reduction={self.reduction!r}, padding={self.padding!r}, "
            f"strategy={self.strategy!r}"
        )


def uniform_ssim(input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SSIM per image, shape (N,), as ``skimage.metrics.structural_similarity`` with its defaults.

    A 7x7 uniform window, sample covariances (``use_sample_covariance=True``: variances and covariance times
    49/48), C1 = (0.01 R)^2, C2 = (0.03 R)^2 with data range R = 1, the map over the positions where the
    window fits (skimage filters the whole image and crops a 3-pixel border: the same positions), averaged
    over them and over the channels (skimage's ``channel_axis``). input, target: (N, C, H, W) floats, any C,
    H, W >= 7, on the data range 1 (e.g. [0, 1]; skimage's value on 0-255 with ``data_range=255`` is the same,
    SSIM being invariant to a common scaling of images and range). Differentiable (autograd).
    """
    checks.check_pair(input, target, min_size=UNIFORM_WINDOW_SIZE, check_range=False, name="ssim-skimage")
    return _uniform_ssim_per_image(input, target)


def _uniform_ssim_per_image(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N,) SSIM with the 7x7 uniform window (see :func:`uniform_ssim`), no input checks."""
    dtype = _compute_dtype(x)
    with _no_autocast(x.device.type):
        x, y = x.to(dtype), y.to(dtype)
        # (co)variances do not change under a common shift: centring each image pair and channel on its mean
        # first keeps E[x^2] - mu_x^2 from cancelling in float32 (10x closer to skimage's float64 values)
        shift = ((x + y) / 2).mean(dim=(2, 3), keepdim=True).detach()
        x, y = x - shift, y - shift
        k = UNIFORM_WINDOW_SIZE
        # the five local means in two separable pooling calls (the 2-D 7x7 avg_pool2d is less accurate in
        # float32): mu_x, mu_y, E[x^2], E[y^2], E[xy] of the shifted images
        stats = torch.cat([x, y, x * x, y * y, x * y], dim=1)
        stats = F.avg_pool2d(F.avg_pool2d(stats, (k, 1), stride=1), (1, k), stride=1)
        mu_x, mu_y, e_xx, e_yy, e_xy = stats.split(x.shape[1], dim=1)
        sample = k * k / (k * k - 1)  # unbiased (sample) variances, as skimage by default
        var_x, var_y = sample * (e_xx - mu_x * mu_x), sample * (e_yy - mu_y * mu_y)
        cov = sample * (e_xy - mu_x * mu_y)
        mu_x, mu_y = mu_x + shift, mu_y + shift
        value = ((2 * mu_x * mu_y + C1) * (2 * cov + C2)) / ((mu_x * mu_x + mu_y * mu_y + C1) * (var_x + var_y + C2))
        return value.mean(dim=(1, 2, 3))


class UniformSSIM(nn.Module):
    """``1 - SSIM`` per image with scikit-image's default SSIM: the LPIPS paper's SSIM baseline.

    The SSIM is :func:`uniform_ssim` (7x7 uniform window, sample covariances, border cropped), i.e.
    ``skimage.metrics.structural_similarity(a, b, data_range=255, channel_axis=-1)`` of the 8-bit images
    ``a = 255 input``, ``b = 255 target`` (colorspace "rgb" or "grey"), or of ``rgb2lab`` images with
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
        self.colorspace = checks.normalize_colorspace(colorspace, lab=True)
        self.channels = checks.channels_of(self.colorspace)
        self.reduction = checks.check_reduction(reduction)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        input, target = _checked(self, input, target, UNIFORM_WINDOW_SIZE, "ssim-skimage")
        return checks.reduce(1 - _uniform_ssim_per_image(input, target), self.reduction)

    def extra_repr(self) -> str:
        return f"colorspace={self.colorspace!r}, reduction={self.reduction!r}"


class MSSSIM(nn.Module):
    """``1 - MS-SSIM`` per image: a distance in [0, 1], 0 for identical images.

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
        self.colorspace = checks.normalize_colorspace(colorspace)
        self.channels = checks.channels_of(self.colorspace)
        self.reduction = checks.check_reduction(reduction)
        self.strategy = execution.check_strategy(strategy)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_ms_pair(input, target, channels=self.channels)
        return checks.reduce(1 - _ms_ssim_per_image(input, target, strategy=self.strategy), self.reduction)

    def extra_repr(self) -> str:
        return f"colorspace={self.colorspace!r}, reduction={self.reduction!r}, strategy={self.strategy!r}"


class OriginalSSIM(nn.Module):
    """The SSIM loss of the original Czolbe et al. LossProvider: the same values up to float32 rounding.

    Zero padding of 5 (``SSIM(padding="zeros")``), any channel count (the original ignores the colorspace),
    any image size. ``reduction``: "sum" and "mean" both give 1 - mean SSIM over the whole batch, a scalar
    (the original's quirk: its 'sum' is a mean); "none" gives (N,), 1 - the per-image mean.
    """

    higher_is_better = False

    def __init__(self, reduction: str = "sum") -> None:
        super().__init__()
        self.reduction = checks.check_reduction(reduction)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        checks.check_pair(input, target, name="ssim (original)")
        per_image = 1 - _ssim_per_image(input, target, "zeros")
        return per_image if self.reduction == "none" else per_image.mean()

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


def original_ssim(reduction: str) -> nn.Module:
    """The original LossProvider's SSIM loss for ``reduction`` ('sum', 'mean' or 'none'); see :class:`OriginalSSIM`."""
    return OriginalSSIM(reduction=reduction)
