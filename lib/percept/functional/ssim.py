"""SSIM and MS-SSIM (Wang et al. 2004, 2003) as plain functions: similarities per image, reduced by ``reduction``.

Every Gaussian variant uses an 11x11 window with sigma 1.5, C1 = 0.01^2 and C2 = 0.03^2 (data range 1), and
averages the SSIM map over channels and positions, so the value of an image is the mean over C, H, W.
What happens at the image border is the ``padding`` option of :func:`ssim`:

- ``"valid"`` (default): no padding, the map covers only the positions where the window fits, an
  (H-10) x (W-10) map. This is the standard definition: Wang et al.'s MATLAB ``ssim_index`` (``filter2(...,
  'valid')``) and ``pytorch_msssim.ssim(x, y, data_range=1)``.
- ``"zeros"``: zero padding of 5, an H x W map. This is the ORIGINAL Czolbe et al. code (copied from
  pytorch-ssim); :class:`percept.compat.OriginalSSIM` uses it and reproduces their reference values.
- ``"reflect"``: reflection padding of 5 (edge not repeated), an H x W map. This is what
  ``torchmetrics.functional.structural_similarity_index_measure`` computes with its default Gaussian window
  (torchmetrics also clamps the local variances at 0, which only matters for rounding-level negatives).

:func:`ms_ssim` follows ``pytorch_msssim.ms_ssim(x, y, data_range=1)``: 5 scales with weights
(0.0448, 0.2856, 0.3001, 0.2363, 0.1333), "valid" windows, 2x2 average pooling between scales (a zero row or
column is padded on both sides of an odd size, counted in the average), contrast-structure terms of the first
four scales and the full SSIM of the last one clipped at 0 (relu) before the weighted product, per channel,
then averaged over channels.

How it is computed: the Gaussian is separable and linear, so the four local statistics (mu_y, mu_x, E[xy],
E[x^2 + y^2]) are stacked and filtered in one call per direction: for small images (CPU: up to about
128x128, other devices: H + W <= 512) as matrix products with banded filter matrices (which also encode the
padding, built once per size and device), otherwise as depthwise 1-D convolutions, channels-last. The
luminance and contrast-structure terms are computed as (numerator, denominator) pairs, a few operations on
stacked maps. One autograd function computes the mean of the SSIM map (or of the contrast-structure map, for
MS-SSIM's finer scales) with a hand-written backward: the closed-form derivatives of the map w.r.t. the
statistics, filtered back with the adjoint filter. A backward pass that builds a graph (``create_graph=True``,
double backward) differentiates the same forward formula with autograd instead. MS-SSIM is five calls of it
joined by pooling and the weighted product (autograd). How the batch goes through is the ``strategy`` option
(:mod:`percept.execution`):

- "chunked" (the default on CPU): chunks of about 65k input values (MS-SSIM: 512k) that the backward
  recomputes instead of storing, so the working memory is bounded by the chunk and stays in the CPU caches.
  On 2 CPU cores a forward and backward pass on 128x3x64x64 is about 3.5x faster than pytorch-msssim
  (grey: 9x) and needs about 1.5x the input batch of extra memory (pytorch-msssim: about 35x).
- "batched" (the default on GPUs): the whole batch is one chunk whose terms are kept for the backward, so a
  training step is a fixed number of large operations (35 for an SSIM training step, pytorch-msssim 91; see
  ``tests/test_opcount_ssim.py``), whatever the batch size.

Everything is evaluated in the input dtype, at least float32: float16/bfloat16 inputs (and autocast) are
computed in float32, and the result is float32.

The LPIPS paper's SSIM baseline (its 2AFC table's "SSIM" row) is a different SSIM: scikit-image's
``structural_similarity`` with its defaults, a 7x7 **uniform** window, sample covariances (factor 49/48) and
the map's 3-pixel border cropped, on 8-bit RGB (data range 255) or on CIELAB (data range 100). That is
:func:`ssim_skimage`; it runs through autograd (a few pooling calls), not through the fused Gaussian path above.
``colorspace="lab"`` (RGB input compared in CIELAB divided by 100, :func:`percept.color.rgb_to_lab`) is offered
by :func:`ssim` and :func:`ssim_skimage`; for the Gaussian SSIM it only converts the input before the same path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from percept import checks, execution

WINDOW_SIZE = 11
#: side of the uniform window of :func:`ssim_skimage` (scikit-image's default ``win_size``)
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


def check_padding(padding: str) -> str:
    """Return ``padding`` if it is one of :data:`PADDINGS`, else raise a ``ValueError``."""
    if padding not in PADDINGS:
        raise ValueError(f"unknown padding {padding!r}: use one of {', '.join(PADDINGS)}")
    return padding


@execution.cached_constant(64)
def _filter_constants(size: tuple[int, int], padding: str, method: str, dtype: torch.dtype, device: torch.device):
    """The filter's constant tensors, built once per (size, padding, method, dtype, device) and reused."""
    window = gaussian_window(dtype, device)
    if method == "matmul":
        return _filter_matrix(size[0], padding, window), _filter_matrix(size[1], padding, window)
    return window.view(1, 1, WINDOW_SIZE, 1), window.view(1, 1, 1, WINDOW_SIZE)


@execution.cached_constant(16)
def _term_constants(dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(C1 / 2, C1) and (C2 / 2, C2), shape (2, 1, 1, 1, 1), the constants of the halved (numerator, denominator)
    pairs of :func:`_local_terms`, and a 0-d zero (the addend of :func:`_value_map`'s ``addcdiv``)."""
    c1, c2 = (torch.tensor([c / 2, c], dtype=dtype, device=device).view(2, 1, 1, 1, 1) for c in (C1, C2))
    return c1, c2, torch.zeros((), dtype=dtype, device=device)


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

    Stacks of maps are (K, N, C, H, W) tensors. "matmul": the stack is multiplied by banded (H', H) and (W', W)
    matrices that include the padding. "conv": the stack is laid out as (N, K*C, H, W), channels-last (much
    faster for depthwise convolutions on CPU), filtered by two depthwise 1-D convolutions and copied back; the
    adjoint is the transposed convolutions (and the reflection fold). The filtered stack is contiguous,
    (K, N, C, H', W'), H' = H - 10 for "valid" padding, H otherwise.
    """

    def __init__(self, size: tuple[int, int], padding: str, method: str, dtype: torch.dtype, device) -> None:
        self.padding, self.method = padding, method
        first, second = _filter_constants(tuple(size), padding, method, dtype, torch.device(device))
        self.c1, self.c2, self.zero = _term_constants(dtype, torch.device(device))
        if method == "matmul":
            self.mat_h, self.mat_w = first, second
        else:
            self.kernel_h, self.kernel_w = first, second
            self.pad = _RADIUS if padding == "zeros" else 0

    def __call__(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """Filter the K maps (N, C, H, W) into a (K, N, C, H', W') stack; ``maps`` is emptied (freed early)."""
        if self.method == "matmul":
            stack = torch.stack(maps)
            maps.clear()
            half = stack @ self.mat_w.mT
            del stack
            return self.mat_h @ half
        (n, c, h, w), k = maps[0].shape, len(maps)
        # (N, H, W, K, C) in memory: the channels-last layout of (N, K*C, H, W), written by the one stack
        stack = torch.stack([m.permute(0, 2, 3, 1) for m in maps], dim=3).view(n, h, w, k * c).permute(0, 3, 1, 2)
        maps.clear()
        if self.padding == "reflect":
            stack = F.pad(stack, (_RADIUS,) * 4, mode="reflect")
        half = F.conv2d(stack, self.kernel_h.expand(k * c, -1, -1, -1), padding=(self.pad, 0), groups=k * c)
        del stack
        out = F.conv2d(half, self.kernel_w.expand(k * c, -1, -1, -1), padding=(0, self.pad), groups=k * c)
        # back to a contiguous (K, N, C, H', W') stack: the terms' elementwise operations vectorise on it
        return out.view(n, k, c, *out.shape[-2:]).transpose(0, 1).contiguous()

    def adjoint(self, stack: torch.Tensor) -> torch.Tensor:
        """The adjoint (transpose) of :meth:`__call__`: a (K, N, C, H', W') stack -> (K, N, C, H, W)."""
        if self.method == "matmul":
            return self.mat_h.mT @ (stack @ self.mat_w)
        k, n, c, h, w = stack.shape
        # one copy into the channels-last layout of (N, K*C, H', W'): (N, H', W', K, C) in memory
        flat = stack.permute(1, 3, 4, 0, 2).contiguous().view(n, h, w, k * c).permute(0, 3, 1, 2)
        half = F.conv_transpose2d(flat, self.kernel_w.expand(k * c, -1, -1, -1), padding=(0, self.pad), groups=k * c)
        del flat
        out = F.conv_transpose2d(half, self.kernel_h.expand(k * c, -1, -1, -1), padding=(self.pad, 0), groups=k * c)
        if self.padding == "reflect":
            out = _reflect_pad_adjoint(out, _RADIUS)
        return out.view(n, k, c, *out.shape[-2:]).transpose(0, 1)


def _local_terms(x: torch.Tensor, y: torch.Tensor, filt: _GaussianFilter, luminance: bool):
    """The local statistics and the SSIM terms as (numerator / 2, denominator) pairs, each map (N, C, H', W').

    SSIM = lum_num cs_num / (lum_den cs_den) with lum_num = 2 mu_x mu_y + C1, lum_den = mu_x^2 + mu_y^2 + C1,
    cs_num = 2 sigma_xy + C2, cs_den = sigma_x^2 + sigma_y^2 + C2, where sigma_xy = E[xy] - mu_x mu_y and
    sigma_x^2 + sigma_y^2 = E[x^2 + y^2] - mu_x^2 - mu_y^2. Returns ``stats`` (4, ...) = (mu_y, mu_x, E[xy],
    E[x^2 + y^2]) from one stacked filter call, ``lum`` (2, ...) = (lum_num / 2, lum_den) (None for the
    contrast-structure map alone, ``luminance`` False) and ``cs`` (2, ...) = (cs_num / 2, cs_den). The halved
    numerators are exact (a power of two) and make every term one vectorised operation on a pair.
    """
    stats = filt([y, x, x * y, torch.addcmul(x * x, y, y)])
    mu_y, mu_x = stats[0], stats[1]
    products = mu_x * stats[:2]  # (mu_x mu_y, mu_x^2)
    products[1].addcmul_(mu_y, mu_y)  # (mu_x mu_y, mu_x^2 + mu_y^2)
    cs = (stats[2:] - products).add_(filt.c2)
    lum = products + filt.c1 if luminance else None
    return stats, lum, cs


def _value_map(lum: torch.Tensor | None, cs: torch.Tensor, filt: _GaussianFilter) -> torch.Tensor:
    """The SSIM map (with ``lum``) or the contrast-structure map cs_num / cs_den (MS-SSIM's finer scales),
    from the halved pairs of :func:`_local_terms` (the factors 4 and 2 are exact)."""
    if lum is None:
        return torch.addcdiv(filt.zero, cs[0], cs[1], value=2)
    fraction = lum * cs  # (numerator / 4, denominator)
    return torch.addcdiv(filt.zero, fraction[0], fraction[1], value=4)


def _chunk_forward(x, y, filt: _GaussianFilter, luminance: bool):
    """``stats, lum, cs, value`` of one chunk (see :func:`_local_terms`, :func:`_value_map`)."""
    stats, lum, cs = _local_terms(x, y, filt, luminance)
    return stats, lum, cs, _value_map(lum, cs, filt)


def _chunk_size(x: torch.Tensor, elements: int) -> int:
    """Images per chunk: about ``elements`` input values, at least one image."""
    return max(1, elements // x[0].numel())


def _chunk_backward(stats, lum, cs, value, grad, x, y, filt: _GaussianFilter, need_x: bool, need_y: bool):
    """dL/dx, dL/dy (None where not needed) of L = sum grad * mean of ``value`` (over (H', W') for a grad of
    shape (N, C), over (C, H', W') for a grad of shape (N,)).

    Closed form: with g = 2 grad / (count averaged) * value (per position), p = g / cs_num, q = g / cs_den and,
    for the full SSIM, t = g / lum_num - p, u = q - g / lum_den (else t = -p, u = q): dL/dmu_x = mu_y t + mu_x u,
    dL/dE[x^2 + y^2] = -q / 2, dL/dE[xy] = p. Filtered back with the adjoint filter A (only the maps that the
    inputs needing a gradient use), then dL/dx = A(dL/dmu_x) - x A(q) + y A(p) (the 2 of d(x^2)/dx cancels
    the 1/2). On the halved pairs of :func:`_local_terms`: (g / 2) / cs = (p, q / 2) and
    (g / 2) / lum - (p, q / 2) = (t, -u / 2), exact.
    """
    half_scale = grad * (grad.numel() / value.numel())
    half_g = value * half_scale.view(half_scale.shape + (1,) * (value.dim() - half_scale.dim()))
    maps = value.new_empty((2 + need_x + need_y, *value.shape))  # the adjoint's input: p, q/2, dL/dmu_x, dL/dmu_y
    pq = torch.div(half_g, cs, out=maps[:2])  # (p, q / 2)
    d = pq.neg() if lum is None else torch.div(half_g, lum).sub_(pq)  # (t, -u / 2)
    del half_g
    mu_y, mu_x = stats[0], stats[1]
    if need_x:
        torch.mul(mu_y, d[0], out=maps[2]).addcmul_(mu_x, d[1], value=-2)
    if need_y:
        torch.mul(mu_x, d[0], out=maps[-1]).addcmul_(mu_y, d[1], value=-2)
    del d
    back = filt.adjoint(maps)  # A(p), A(q) / 2, then A(dL/dmu_x) and/or A(dL/dmu_y)
    del maps
    grad_x = torch.addcmul(back[2], x, back[1], value=-2).addcmul_(y, back[0]) if need_x else None
    grad_y = torch.addcmul(back[-1], y, back[1], value=-2).addcmul_(x, back[0]) if need_y else None
    return grad_x, grad_y


class _FusedSSIM(torch.autograd.Function):
    """Per-image mean of the SSIM map (or of the contrast-structure map), (N,), or per image and channel, (N, C),
    with a hand-written backward.

    The batch goes through in chunks of ``step`` images. With one chunk (the "batched" strategy, or a small
    batch) the terms are kept for the backward; with several ("chunked") only the inputs are kept and the
    backward recomputes each chunk's terms, so the extra memory stays near one input batch. The backward is
    :func:`_chunk_backward` (the closed-form derivatives filtered back with the adjoint filter): the same
    values as autograd (checked against pytorch-msssim's gradients and by gradcheck) in fewer operations.
    A backward pass that builds a graph (double backward) differentiates :func:`_chunk_forward` with autograd.
    """

    @staticmethod
    def forward(ctx, x, y, padding: str, method: str, step: int, luminance: bool, per_channel: bool):
        filt = _GaussianFilter(x.shape[-2:], padding, method, x.dtype, x.device)
        dims = (2, 3) if per_channel else (1, 2, 3)
        ctx.filt, ctx.step, ctx.luminance, ctx.dims = filt, step, luminance, dims
        if step >= x.shape[0]:
            stats, lum, cs, value = _chunk_forward(x, y, filt, luminance)
            ctx.save_for_backward(x, y, value, stats, cs, *(() if lum is None else (lum,)))
            return value.mean(dim=dims)
        ctx.save_for_backward(x, y)
        out = [_chunk_forward(xc, yc, filt, luminance)[-1].mean(dim=dims) for xc, yc in zip(x.split(step), y.split(step))]
        return torch.cat(out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, y, *kept = ctx.saved_tensors
        filt, step, luminance = ctx.filt, ctx.step, ctx.luminance
        need_x, need_y = ctx.needs_input_grad[:2]
        unused = (None,) * 5
        with execution.no_autocast(x.device.type):
            if torch.is_grad_enabled():  # create_graph=True: the same formula through autograd (double backward)
                inputs = [t for t, need in ((x, need_x), (y, need_y)) if need]
                means = _chunk_forward(x, y, filt, luminance)[-1].mean(dim=ctx.dims)
                grads = iter(torch.autograd.grad(means, inputs, grad, create_graph=True))
                return (next(grads) if need_x else None), (next(grads) if need_y else None), *unused
            if kept:  # one chunk, its terms kept by the forward pass
                value, stats, cs, *lum = kept
                lum = lum[0] if lum else None
                return *_chunk_backward(stats, lum, cs, value, grad, x, y, filt, need_x, need_y), *unused
            grad_x = torch.empty_like(x) if need_x else None
            grad_y = torch.empty_like(y) if need_y else None
            for start in range(0, x.shape[0], step):
                chunk = slice(start, start + step)
                xc, yc = x[chunk], y[chunk]
                stats, lum, cs, value = _chunk_forward(xc, yc, filt, luminance)
                gx, gy = _chunk_backward(stats, lum, cs, value, grad[chunk], xc, yc, filt, need_x, need_y)
                if need_x:
                    grad_x[chunk] = gx
                if need_y:
                    grad_y[chunk] = gy
        return grad_x, grad_y, *unused


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 for float64 input, else float32 (half precision is computed in float32)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _means(x, y, padding: str, luminance: bool, per_channel: bool, strategy: str, chunk_elements: int, method=None):
    """(N,) or, ``per_channel``, (N, C) means of the SSIM map (``luminance``) or of the contrast-structure map.

    ``strategy`` "chunked": chunks of about ``chunk_elements`` input values; "batched": the whole batch in one
    chunk; "auto": by device (:func:`percept.execution.resolve_strategy`).
    """
    step = x.shape[0] if execution.resolve_strategy(strategy, x.device) == "batched" else _chunk_size(x, chunk_elements)
    # a statement of its own: under torch.compile reading the matmul precision breaks the graph, and a break
    # inside the call below would hold a fresh bound method that the resumed code is guarded on (a
    # recompilation in every call)
    method = method or _pick_method(x)
    return _FusedSSIM.apply(x, y, padding, method, step, luminance, per_channel)


def _ssim_per_image(
    x: torch.Tensor, y: torch.Tensor, padding: str, method: str | None = None, strategy: str = "auto"
) -> torch.Tensor:
    """(N,) SSIM per image (mean of the map over C, H, W), no input checks: the core of :func:`ssim`.

    ``method``: "matmul" (banded matrices), "conv" (depthwise convolutions) or None (pick by device and size).
    """
    dtype = _compute_dtype(x)
    with execution.no_autocast(x.device.type):
        return _means(x.to(dtype), y.to(dtype), padding, True, False, strategy, _CHUNK_ELEMENTS, method)


def _ms_ssim_per_image(
    x: torch.Tensor, y: torch.Tensor, method: str | None = None, strategy: str = "auto"
) -> torch.Tensor:
    """(N,) MS-SSIM per image, no input checks (smaller side must be >= MS_SSIM_MIN_SIZE).

    Each scale is one :class:`_FusedSSIM` call (chunked or batched as ``strategy`` says); the pooling and the
    weighted product run through autograd.
    """
    dtype = _compute_dtype(x)
    with execution.no_autocast(x.device.type):
        x, y = x.to(dtype), y.to(dtype)
        product = None
        last = len(MS_SSIM_WEIGHTS) - 1
        for level, weight in enumerate(MS_SSIM_WEIGHTS):
            if level:
                pad = (x.shape[-2] % 2, x.shape[-1] % 2)
                x = F.avg_pool2d(x, kernel_size=2, padding=pad)
                y = F.avg_pool2d(y, kernel_size=2, padding=pad)
            # contrast-structure only, the full SSIM at the coarsest scale
            value = _means(x, y, "valid", level == last, True, strategy, _MS_CHUNK_ELEMENTS, method)
            term = value.relu() ** weight  # (N, C); as pytorch-msssim, cs <= 0 zeroes the product
            product = term if product is None else product * term
        return product.mean(dim=1)


def _skimage_ssim_per_image(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N,) SSIM with the 7x7 uniform window (see :func:`ssim_skimage`), no input checks."""
    dtype = _compute_dtype(x)
    with execution.no_autocast(x.device.type):
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


def ssim(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    colorspace: str | None = None,
    padding: str = "valid",
    reduction: str = "mean",
    strategy: str = "auto",
) -> torch.Tensor:
    """SSIM similarity with the 11x11 Gaussian window, per image in [-1, 1] (1 for identical images), reduced.

    input, target: (N, C, H, W) floats in [0, 1], H, W >= 11. ``colorspace``: None (any C), "rgb", "grey" or
    "lab" (RGB input compared in CIELAB / 100). ``padding``: "valid" (= pytorch-msssim), "zeros" (= the original
    Czolbe et al. code) or "reflect" (= torchmetrics), see the module docstring. ``reduction``: "mean" or "sum"
    over the images (a scalar), or "none" (shape (N,)). ``strategy``: "auto", "chunked" or "batched" (how the
    batch goes through, :mod:`percept.execution`; not what is computed). Float16/bfloat16 give float32.
    Differentiable, also twice (``create_graph=True``).

    >>> x = torch.linspace(0, 1, 16 * 16).view(1, 1, 16, 16)
    >>> ssim(x, x)
    tensor(1.)
    >>> ssim(x, 1 - x, reduction="none").shape
    torch.Size([1])
    """
    check_padding(padding)
    execution.check_strategy(strategy)
    checks.check_reduction(reduction)
    input, target = checks.prepare_pair(input, target, colorspace, lab=True, min_size=WINDOW_SIZE, name="ssim")
    return checks.reduce(_ssim_per_image(input, target, padding, strategy=strategy), reduction)


def ms_ssim(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    colorspace: str | None = None,
    reduction: str = "mean",
    strategy: str = "auto",
) -> torch.Tensor:
    """MS-SSIM similarity per image in [0, 1] (1 for identical images), reduced; = ``pytorch_msssim.ms_ssim``.

    input, target: (N, C, H, W) floats in [0, 1] with H, W >= 161 (:data:`MS_SSIM_MIN_SIZE`, else
    ``ValueError``). ``colorspace``: None (any C), "rgb" or "grey". ``reduction``: "mean", "sum" or "none"
    ((N,)). ``strategy``: "auto", "chunked" or "batched" (:mod:`percept.execution`). Where a scale's
    contrast-structure mean is <= 0 its term is clipped to 0 (relu, as pytorch-msssim).

    >>> x = torch.linspace(0, 1, 161 * 161).view(1, 1, 161, 161)
    >>> ms_ssim(x, x)
    tensor(1.)
    """
    execution.check_strategy(strategy)
    checks.check_reduction(reduction)
    input, target = checks.prepare_pair(input, target, colorspace, min_size=WINDOW_SIZE, name="ms-ssim")
    h, w = input.shape[-2:]
    if min(h, w) < MS_SSIM_MIN_SIZE:
        raise ValueError(
            f"ms-ssim: images of {h}x{w} are too small; MS-SSIM needs at least {MS_SSIM_MIN_SIZE}x{MS_SSIM_MIN_SIZE} "
            f"so that the coarsest of its {len(MS_SSIM_WEIGHTS)} scales (4 halvings) still fits the "
            f"{WINDOW_SIZE}x{WINDOW_SIZE} window (the same limit as pytorch-msssim); use 'ssim' for smaller images"
        )
    return checks.reduce(_ms_ssim_per_image(input, target, strategy=strategy), reduction)


def ssim_skimage(
    input: torch.Tensor, target: torch.Tensor, *, colorspace: str | None = None, reduction: str = "mean"
) -> torch.Tensor:
    """SSIM per image as ``skimage.metrics.structural_similarity`` with its defaults, reduced.

    A 7x7 uniform window, sample covariances (``use_sample_covariance=True``: variances and covariance times
    49/48), C1 = (0.01 R)^2, C2 = (0.03 R)^2 with data range R = 1, the map over the positions where the
    window fits (skimage filters the whole image and crops a 3-pixel border: the same positions), averaged
    over them and over the channels (skimage's ``channel_axis``). skimage's value on 0-255 images with
    ``data_range=255`` is the same (SSIM is invariant to a common scaling of images and range); with
    ``colorspace="lab"`` it is skimage's on ``rgb2lab`` images with ``data_range=100``: the LPIPS paper's SSIM
    baseline. input, target: (N, C, H, W) floats in [0, 1], H, W >= 7; ``colorspace``: None (any C), "rgb",
    "grey" or "lab"; ``reduction``: "mean", "sum" or "none" ((N,)). Differentiable (autograd).

    >>> x = torch.linspace(0, 1, 8 * 8).view(1, 1, 8, 8)
    >>> ssim_skimage(x, x)
    tensor(1.)
    """
    checks.check_reduction(reduction)
    input, target = checks.prepare_pair(
        input, target, colorspace, lab=True, min_size=UNIFORM_WINDOW_SIZE, name="ssim-skimage"
    )
    return checks.reduce(_skimage_ssim_per_image(input, target), reduction)
