"""Block transforms, colour conversion and shifts used by the Watson metrics, against torch's own
FFT and autograd."""

from __future__ import annotations

import pytest
import torch

from percept.color import YCBCR_MATRIX, YCBCR_OFFSET, rgb_to_ycbcr
from percept.transforms import (
    block_dct,
    block_rdft,
    block_rdft_adjoint,
    dct_operator,
    shift_images,
    shift_images_adjoint,
    shift_weights,
    to_blocks,
)


def _reference_ycbcr(x):
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    return torch.stack([m[0] * r + m[1] * g + m[2] * b + o for m, o in zip(YCBCR_MATRIX, YCBCR_OFFSET)], dim=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ycbcr_in_place_and_scaled_are_bit_for_bit_the_plain_formula(dtype):
    torch.manual_seed(0)
    x = torch.rand(3, 3, 16, 24, dtype=dtype)
    ref = _reference_ycbcr(x)
    assert torch.equal(rgb_to_ycbcr(x), ref)
    assert torch.equal(rgb_to_ycbcr(x, scale=1 / 64), ref / 64)  # a power of two changes no rounding
    out = torch.empty(3, 3, 24, 16, dtype=dtype).transpose(-1, -2)  # a strided destination
    assert torch.equal(rgb_to_ycbcr(x, out=out), ref)
    xg = x.clone().requires_grad_(True)  # the autograd branch computes the same values
    assert torch.equal(rgb_to_ycbcr(xg), ref)


@pytest.mark.parametrize("ycbcr", [False, True])
def test_block_rdft_equals_torch_fft_of_the_blocks_bit_for_bit(ycbcr):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 16, 24)
    x[:, :, :8, :8] = 0.25  # a flat block: exact zeros away from DC
    planes = _reference_ycbcr(x) if ycbcr else x
    spectrum = torch.fft.rfft2(to_blocks(planes).reshape(2, 3, -1, 8, 8)) / 64
    re, im = block_rdft(x, ycbcr=ycbcr)
    assert re.is_contiguous() and im.is_contiguous()
    assert torch.equal(re, spectrum.real.reshape(2, 3, -1, 40))
    assert torch.equal(im, spectrum.imag.reshape(2, 3, -1, 40))
    assert torch.count_nonzero(re[:, :, 0, 1:]) == 0 and torch.count_nonzero(im[:, :, 0]) == 0


@pytest.mark.parametrize("ycbcr", [False, True])
def test_block_rdft_adjoint_is_the_gradient(ycbcr):
    torch.manual_seed(1)
    x = torch.rand(2, 3, 16, 24, dtype=torch.float64, requires_grad=True)
    g_re, g_im = torch.randn(2, 2, 3, 6, 40, dtype=torch.float64)
    re, im = block_rdft(x, ycbcr=ycbcr)
    ((re * g_re).sum() + (im * g_im).sum()).backward()
    ours = block_rdft_adjoint(torch.cat([g_re, g_im], dim=-1), 16, 24, ycbcr=ycbcr)
    torch.testing.assert_close(ours, x.grad, rtol=1e-12, atol=1e-14)
    out = torch.empty(2, 3, 16, 24, dtype=torch.float64)
    block_rdft_adjoint(torch.cat([g_re, g_im], dim=-1), 16, 24, ycbcr=ycbcr, out=out)
    assert torch.equal(out, ours)


def test_dct_operator_is_cached_and_matches_block_dct():
    x = torch.rand(1, 1, 8, 8, dtype=torch.float64)
    a = dct_operator(8, x)
    assert a is dct_operator(8, x) and a.dtype == torch.float64
    torch.testing.assert_close((a @ x[0, 0] @ a.T).reshape(-1), block_dct(x)[0, 0, 0])


def test_shift_adjoint_and_weights():
    torch.manual_seed(2)
    x = torch.rand(2, 3, 16, 24, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 3, 16, 24, dtype=torch.float64)
    for offsets in [(top, left) for top in range(8) for left in range(8)]:
        x.grad = None
        (shift_images(x, offsets) * g).sum().backward()
        torch.testing.assert_close(shift_images_adjoint(g, offsets), x.grad, rtol=1e-12, atol=1e-12)
        out = torch.full_like(g, float("nan"))  # every element must be written
        shift_images_adjoint(g, offsets, out=out)
        torch.testing.assert_close(out, x.grad, rtol=1e-12, atol=1e-12)
        # the weights give the mean of the shifted image without building it
        rows, cols = shift_weights(16, offsets[0], like=x), shift_weights(24, offsets[1], like=x)
        mean = torch.einsum("nchw,h,w->nc", x.detach(), rows, cols) / (16 * 24)
        torch.testing.assert_close(mean, shift_images(x.detach(), offsets).mean(dim=(2, 3)))


def test_shift_without_autograd_equals_pad_and_crop():
    x = torch.rand(2, 3, 16, 24)
    for offsets in [(top, left) for top in range(8) for left in range(8)]:
        padded = torch.nn.functional.pad(x, (4, 4, 4, 4), mode="replicate")
        expected = padded[..., offsets[0] : offsets[0] + 16, offsets[1] : offsets[1] + 24]
        assert torch.equal(shift_images(x, offsets), expected)


@pytest.mark.parametrize("ycbcr", [False, True])
def test_block_rdft_with_shift_equals_the_shifted_images_and_its_adjoint_is_the_gradient(ycbcr):
    torch.manual_seed(3)
    x = torch.rand(2, 3, 16, 24, dtype=torch.float64)
    g = torch.randn(2, 3, 6, 80, dtype=torch.float64)
    for offsets in [(0, 7), (4, 4), (7, 0), (2, 5), (6, 1)]:
        shifted = shift_images(x, offsets)
        for a, e in zip(block_rdft(x, ycbcr=ycbcr, offsets=offsets), block_rdft(shifted, ycbcr=ycbcr)):
            assert torch.equal(a, e)
        xg = x.clone().requires_grad_(True)
        re, im = block_rdft(xg, ycbcr=ycbcr, offsets=offsets)  # the autograd branch
        ((re * g[..., :40]).sum() + (im * g[..., 40:]).sum()).backward()
        ours = block_rdft_adjoint(g, 16, 24, ycbcr=ycbcr, offsets=offsets)
        torch.testing.assert_close(ours, xg.grad, rtol=1e-12, atol=1e-13)
