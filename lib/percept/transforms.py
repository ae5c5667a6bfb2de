"""Block transforms and random shifts for the Watson metrics.

The image is cut into non-overlapping ``b x b`` blocks (row-major block order, as ``nn.Unfold``
orders them). The block DCT is one matrix product with a fixed ``b*b x b*b`` operator; the block DFT
is a batched FFT over all blocks at once. Nothing loops over blocks or images. The adjoints
(gradients) of the block DFT and of the random shift are here too, for the Watson metrics'
closed-form gradients; each is tested against autograd.

>>> import torch
>>> from percept.transforms import block_dct, to_blocks
>>> x = torch.rand(2, 1, 16, 24)
>>> to_blocks(x).shape                 # (N, C, blocks, 8 * 8), row-major block order
torch.Size([2, 1, 6, 64])
>>> block_dct(x).shape                 # each block's 64 DCT coefficients
torch.Size([2, 1, 6, 64])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from percept.color import YCBCR_MATRIX, rgb_to_ycbcr
from percept.execution import cached_constant


def to_blocks(x: torch.Tensor, b: int = 8) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, K, b*b) with K = (H/b)(W/b) blocks in row-major order."""
    n, c, h, w = x.shape
    x = x.reshape(n, c, h // b, b, w // b, b).permute(0, 1, 2, 4, 3, 5)
    return x.reshape(n, c, (h // b) * (w // b), b * b)


def dct_matrix(b: int = 8, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Orthonormal DCT-II matrix A (b x b): A[u, a] = sqrt(2/b) c_u cos((2a+1) u pi / 2b), c_0 = 1/sqrt(2)."""
    u = torch.arange(b, dtype=torch.float64).view(-1, 1)
    a = torch.arange(b, dtype=torch.float64).view(1, -1)
    m = math.sqrt(2.0 / b) * torch.cos((2 * a + 1) * u * math.pi / (2 * b))
    m[0] /= math.sqrt(2.0)
    return m.to(dtype)


@cached_constant(8)
def _block_dct_operator(b: int) -> torch.Tensor:
    a = dct_matrix(b)
    # coefficient (u, v) of block X is sum_{a,b} A[u,a] X[a,b] A[v,b]: the Kronecker product of A with itself
    return torch.kron(a, a).T.contiguous()


@cached_constant(64)
def _on_device(builder, b: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return builder(b).to(device=device, dtype=dtype)


def _operator(cache_fn, b: int, like: torch.Tensor) -> torch.Tensor:
    """A cached constant (never modify it) in ``like``'s floating dtype (float32 for others) and device."""
    dtype = like.dtype if like.dtype in (torch.float64, torch.float32) else torch.float32
    return _on_device(cache_fn, b, dtype, like.device)


def dct_operator(b: int, like: torch.Tensor) -> torch.Tensor:
    """The cached DCT-II matrix of :func:`dct_matrix` in ``like``'s dtype and device (do not modify it)."""
    return _operator(dct_matrix, b, like)


def block_dct(x: torch.Tensor, b: int = 8) -> torch.Tensor:
    """Orthonormal 2-D DCT-II of every b x b block: (N, C, H, W) -> (N, C, K, b*b), coefficient u*b+v.

    The DC coefficient is ``b * mean(block)``.
    """
    return to_blocks(x, b) @ _operator(_block_dct_operator, b, x)


def image_block_dct(x: torch.Tensor, a, adjoint: bool = False) -> torch.Tensor:
    """``A @ block @ A.T`` for every b x b block of (n, C, H, W), kept in image layout (two small products);
    ``adjoint``: ``A.T @ block @ A``, the inverse transform (and the gradient map of the forward one). ``a``:
    the (b, b) DCT matrix (:func:`dct_operator`), or a pair ``(M_h, M_w)`` of whole-side matrices
    (:func:`shifted_dct_matrix`): ``M_h @ x @ M_w.T`` (two products; adjoint ``M_h.T @ x @ M_w``)."""
    if isinstance(a, tuple):
        mh, mw = a
        return torch.matmul(mh.T, x @ mw) if adjoint else torch.matmul(mh, x @ mw.T)
    n, c, h, w = x.shape
    b = a.shape[0]
    left, right = (a.T, a) if adjoint else (a, a.T)
    rows = (x.reshape(-1, b) @ right).view(n, c, h // b, b, w)
    return torch.matmul(left, rows).view(n, c, h, w)


#: the largest side for which whole-side DCT matrices are used (by the batched strategy): their products cost
#: side / 8 times the flops of the 8 x 8 ones, nothing on a GPU at these sizes, and save the shift's copies
FULL_DCT_MAX_SIDE = 256


@cached_constant(128)
def shifted_dct_matrix(size: int, offset: int, dtype: torch.dtype, device: torch.device, b: int = 8) -> torch.Tensor:
    """(size, size) ``M`` with ``M @ v`` = the b-point DCT of every block of ``v`` after the translation of
    :func:`shift_images` with ``max_shift=b`` (by ``offset - b // 2`` samples, replicated ends; offset ``b // 2``:
    no shift).

    ``M = blockdiag(A, ..., A) @ S`` with ``S`` the shift's 0/1 selection matrix: each tap of the block DCT
    moves to the sample it reads, and taps reading the same replicated end sample add up (float64, then cast).
    A cached constant: do not modify it."""
    blocks = torch.block_diag(*[dct_matrix(b)] * (size // b))
    source = (torch.arange(size) + offset - b // 2).clamp(0, size - 1)
    folded = torch.zeros(size, size, dtype=torch.float64).index_add_(1, source, blocks)
    return folded.to(dtype=dtype, device=device)


def block_rdft(
    x: torch.Tensor, b: int = 8, *, ycbcr: bool = False, offsets: tuple[int, int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Onesided 2-D DFT of every b x b block, divided by b*b.

    Returns (real, imag), each (N, C, K, b * (b//2+1)) and contiguous, with coefficient index
    u*(b//2+1)+v: ``torch.fft.rfft2(block) / b**2``, bit for bit. The DC term equals the block mean.
    A true FFT rather than a matrix product: on flat blocks it returns exact zeros where a product
    leaves rounding noise, and the phase of those coefficients (Watson-DFT) would otherwise be noise.
    ``ycbcr=True`` transforms the YCbCr planes of an RGB input (:func:`rgb_to_ycbcr`); ``offsets``
    transforms the blocks of ``shift_images(x, offsets, b)`` (without autograd, the shift and the
    reordering into blocks are one gather).
    """
    n, c, h, w = x.shape
    scale = 1.0 / (b * b)
    if x.requires_grad and torch.is_grad_enabled():
        x = rgb_to_ycbcr(x) if ycbcr else x
        x = x if offsets is None else shift_images(x, offsets, b)
        blocks = to_blocks(x, b).reshape(n, c, -1, b, b) * scale
        spectrum = torch.fft.rfft2(blocks).reshape(n, c, blocks.shape[2], -1)
        planes = torch.view_as_real(spectrum).movedim(-1, 0).contiguous()
        return planes[0], planes[1]
    # without autograd: colour, then one gather into block order (shift included); the 1/b^2 is
    # applied while the real and imaginary parts are separated (bit for bit the same, one pass fewer)
    source = rgb_to_ycbcr(x) if ycbcr else x
    blocks = torch.empty(n, c, (h // b) * (w // b), b, b, dtype=x.dtype, device=x.device)
    if offsets is None:  # (a strided copy is faster than the gather when there is no shift)
        in_image_order = blocks.view(n, c, h // b, w // b, b, b).permute(0, 1, 2, 4, 3, 5)
        in_image_order.copy_(source.reshape(n, c, h // b, b, w // b, b))
    else:
        order = _block_order(h, w, b, offsets, x.device)
        torch.index_select(source.reshape(n * c, h * w), 1, order, out=blocks.view(n * c, h * w))
    spectrum = torch.fft.rfft2(blocks).reshape(n, c, blocks.shape[2], -1)
    planes = torch.empty(2, *spectrum.shape, dtype=x.dtype, device=x.device)
    torch.mul(torch.view_as_real(spectrum).movedim(-1, 0), scale, out=planes)
    return planes[0], planes[1]


@cached_constant(64)
def _block_order(h: int, w: int, b: int, offsets: tuple[int, int] | None, device: torch.device) -> torch.Tensor:
    """For each position of the block-ordered (shifted) image, the index of its source pixel in (H*W)."""
    rows, cols = torch.arange(h), torch.arange(w)
    if offsets is not None:  # shift_images: shifted pixel (i, j) is source pixel (clamp(i + dy), clamp(j + dx))
        rows = (rows + offsets[0] - b // 2).clamp(0, h - 1)
        cols = (cols + offsets[1] - b // 2).clamp(0, w - 1)
    source = rows[:, None] * w + cols[None, :]
    return source.view(h // b, b, w // b, b).permute(0, 2, 1, 3).reshape(-1).to(device)


def _ycbcr_transposed(_: int) -> torch.Tensor:
    return torch.tensor(YCBCR_MATRIX, dtype=torch.float64).T.contiguous()


@cached_constant(8)
def _rdft_adjoint_operator(b: int) -> torch.Tensor:
    basis = torch.eye(b * b, dtype=torch.float64).view(-1, b, b)
    spectrum = torch.fft.rfft2(basis).reshape(b * b, -1) / (b * b)  # (pixel, coefficient)
    return torch.cat([spectrum.real, spectrum.imag], dim=1).T.contiguous()  # (2 * coefficients, pixels)


def from_blocks(x: torch.Tensor, h: int, w: int, b: int = 8) -> torch.Tensor:
    """Inverse of :func:`to_blocks`: (N, C, K, b*b) -> (N, C, H, W)."""
    n, c = x.shape[:2]
    x = x.reshape(n, c, h // b, w // b, b, b).permute(0, 1, 2, 4, 3, 5)
    return x.reshape(n, c, h, w)


def block_rdft_adjoint(
    grad: torch.Tensor,
    h: int,
    w: int,
    b: int = 8,
    *,
    ycbcr: bool = False,
    offsets: tuple[int, int] | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Gradient w.r.t. the image of a function of :func:`block_rdft`'s output (same ``b``, ``ycbcr``
    and ``offsets``).

    ``grad`` is (N, C, K, 2F): the gradients w.r.t. the F real parts, then w.r.t. the F imaginary
    parts of each block's coefficients. Returns (N, C, H, W), written into ``out`` when given. The
    transform is linear, so this is one product with the transposed (real-valued) transform matrix,
    then the transposed colour matrix, then the transposed gather (edge pixels replicated by the
    shift collect several gradients); gradients need no exact zeros.
    """
    n, c = grad.shape[:2]
    blocks = grad @ _operator(_rdft_adjoint_operator, b, grad)  # (N, C, K, b*b)
    if ycbcr:
        blocks = torch.matmul(_operator(_ycbcr_transposed, 3, blocks), blocks.view(n, c, -1))
    if offsets is None:
        in_image_order = blocks.view(n, c, h // b, w // b, b, b).permute(0, 1, 2, 4, 3, 5)
        if out is None:
            return in_image_order.reshape(n, c, h, w)
        out.view(n, c, h // b, b, w // b, b).copy_(in_image_order)
        return out
    direct = out is not None and out.is_contiguous() and out.dtype == blocks.dtype
    result = out if direct else blocks.new_empty(n, c, h, w)
    flat = result.view(n * c, h * w).zero_()
    flat.index_add_(1, _block_order(h, w, b, offsets, grad.device), blocks.reshape(n * c, h * w))
    if out is not None and result is not out:
        out.copy_(result)
    return result


def random_offsets(max_shift: int = 8, generator: torch.Generator | None = None) -> tuple[int, int]:
    """A crop offset per axis, uniform in {0, ..., max_shift - 1}, for :func:`shift_images`."""
    top, left = torch.randint(0, max_shift, (2,), generator=generator).tolist()
    return top, left


def shift_images(x: torch.Tensor, offsets: tuple[int, int], max_shift: int = 8) -> torch.Tensor:
    """Translate images by ``offsets - max_shift // 2`` pixels per axis, replicating the edges.

    The images are replicate-padded by ``max_shift // 2`` pixels and cropped back to H x W at
    ``offsets``; offsets (4, 4) with ``max_shift=8`` leave them unchanged. Without autograd the result
    is written directly (one copy; the padded image is never built).
    """
    pad = max_shift // 2
    top, left = offsets
    h, w = x.shape[-2:]
    if x.requires_grad and torch.is_grad_enabled():
        return F.pad(x, (pad, pad, pad, pad), mode="replicate")[..., top : top + h, left : left + w]
    dy, dx = top - pad, left - pad
    i0, i1, j0, j1 = max(0, -dy), min(h, h - dy), max(0, -dx), min(w, w - dx)  # rows/cols copied 1:1
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    out[..., i0:i1, j0:j1] = x[..., i0 + dy : i1 + dy, j0 + dx : j1 + dx]
    if i0 > 0:  # replicated first / last row
        out[..., :i0, j0:j1] = x[..., :1, j0 + dx : j1 + dx]
    if i1 < h:
        out[..., i1:, j0:j1] = x[..., h - 1 :, j0 + dx : j1 + dx]
    if j0 > 0:  # replicated first / last column, corners included
        out[..., :j0] = out[..., j0 : j0 + 1]
    if j1 < w:
        out[..., j1:] = out[..., j1 - 1 : j1]
    return out


def shift_images_adjoint(
    grad: torch.Tensor, offsets: tuple[int, int], max_shift: int = 8, out: torch.Tensor | None = None
) -> torch.Tensor:
    """The gradient w.r.t. the images of a function of :func:`shift_images`'s output.

    ``grad`` (N, C, H, W) is the gradient w.r.t. the shifted images. Shifted pixel (i, j) is source pixel
    (clamp(i + dy), clamp(j + dx)) with (dy, dx) = offsets - max_shift // 2, so the result is ``grad``
    moved by (dy, dx), with the rows and columns that were clamped summed into the edge row or column
    they replicate. Slices and small sums only (torch's replication-pad backward is ~15x slower).
    Written into ``out`` (not overlapping ``grad``) when given.
    """
    pad = max_shift // 2
    h, w = grad.shape[-2:]
    dy, dx = offsets[0] - pad, offsets[1] - pad
    out = torch.empty_like(grad) if out is None else out
    i0, i1, j0, j1 = max(0, -dy), min(h, h - dy), max(0, -dx), min(w, w - dx)  # 1:1 part of grad
    r0, r1, c0, c1 = i0 + dy, i1 + dy, j0 + dx, j1 + dx  # where it lands
    out[..., r0:r1, c0:c1] = grad[..., i0:i1, j0:j1]
    if r0 > 0:  # source rows and columns that no shifted pixel reads
        out[..., :r0, :] = 0
    if r1 < h:
        out[..., r1:, :] = 0
    if c0 > 0:
        out[..., r0:r1, :c0] = 0
    if c1 < w:
        out[..., r0:r1, c1:] = 0
    # clamped rows / columns of grad, and the row or column of the source they replicate
    rows = (slice(0, i0), 0) if dy < 0 else (slice(i1, h), h - 1) if dy > 0 else None
    cols = (slice(0, j0), 0) if dx < 0 else (slice(j1, w), w - 1) if dx > 0 else None
    if rows is not None:
        out[..., rows[1], c0:c1] += grad[..., rows[0], j0:j1].sum(dim=-2)
    if cols is not None:
        out[..., r0:r1, cols[1]] += grad[..., i0:i1, cols[0]].sum(dim=-1)
    if rows is not None and cols is not None:
        out[..., rows[1], cols[1]] += grad[..., rows[0], cols[0]].sum(dim=(-2, -1))
    return out


def shift_weights(size: int, offset: int, max_shift: int = 8, like: torch.Tensor | None = None) -> torch.Tensor:
    """How often each of ``size`` source rows (or columns) appears after :func:`shift_images` along one axis."""
    source = (torch.arange(size) + offset - max_shift // 2).clamp(0, size - 1)
    counts = torch.bincount(source, minlength=size)
    return counts if like is None else counts.to(device=like.device, dtype=like.dtype)


def random_shift(
    input: torch.Tensor, target: torch.Tensor, max_shift: int = 8, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Translate both images by the same random offset (-4..+3 px for 8x8 blocks), replicating edges.

    One offset serves the whole batch and both images (the behaviour of the original), so the block
    grid moves relative to the image content from call to call. Each tensor is padded on its own,
    so the target never joins the input's autograd graph.
    """
    offsets = random_offsets(max_shift, generator)
    return shift_images(input, offsets, max_shift), shift_images(target, offsets, max_shift)
