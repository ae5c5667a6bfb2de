"""L1, L2, PSNR, SSIM and MS-SSIM against references: torch.nn.functional, the golden outputs of the original
Czolbe et al. code, pytorch-msssim and torchmetrics; the functions of percept.functional and the modules over
them; double backward; and a deliberately wrong constant that the references catch."""

from __future__ import annotations

import importlib

import pytest
import pytorch_msssim
import torch
import torch.nn.functional as F
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

import percept
from percept import functional
from percept.compat import OriginalSSIM
from percept.functional import pixel
from percept.metrics.pixel import L1, L2, PSNR
from percept.metrics.ssim import MSSSIM, SSIM

#: the module percept.functional.ssim (the attribute of that name is the function ssim)
ssim = importlib.import_module("percept.functional.ssim")

KEYS = {"rgb": "RGB", "grey": "LA"}
#: how the batch goes through the formula: both must give the peers' values and gradients
STRATEGIES = ["chunked", "batched"]


def _rand_pair(shape, seed=0, dtype=torch.float32, noise=0.1):
    gen = torch.Generator().manual_seed(seed)
    target = torch.rand(shape, generator=gen, dtype=dtype)
    return (target + noise * torch.randn(shape, generator=gen, dtype=dtype)).clamp(0, 1), target


def _pm_ssim(x, y, **kw):
    """pytorch-msssim's per-image SSIM (valid windows, data range 1)."""
    return pytorch_msssim.ssim(x, y, data_range=1, size_average=False, **kw)


def _pm_window(x):
    """Our exact Gaussian in pytorch-msssim's (C, 1, 1, 11) layout (it rounds its own window to float32)."""
    return ssim.gaussian_window(x.dtype).view(1, 1, 1, -1).repeat(x.shape[1], 1, 1, 1)


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


# ---------------------------------------------------------------------------------------------- L1 / L2 / PSNR


@pytest.mark.parametrize("cls, ref", [(L1, F.l1_loss), (L2, F.mse_loss)])
def test_l1_l2_match_torch_functional(cls, ref):
    x, y = _rand_pair((4, 3, 16, 12))
    per_image = ref(x, y, reduction="none").mean(dim=(1, 2, 3))
    torch.testing.assert_close(cls(reduction="none")(x, y), per_image)
    torch.testing.assert_close(cls(reduction="mean")(x, y), ref(x, y, reduction="mean"))
    torch.testing.assert_close(cls(reduction="sum")(x, y), per_image.sum())
    grey = cls(colorspace="grey", reduction="none")
    torch.testing.assert_close(grey(x[:, :1], y[:, :1]), ref(x[:, :1], y[:, :1], reduction="none").mean(dim=(1, 2, 3)))


@pytest.mark.parametrize("name, cls", [("L1", L1), ("L2", L2)])
@pytest.mark.parametrize("space", ["rgb", "grey"])
def test_l1_l2_reproduce_original_sums(golden, golden_pairs, name, cls, space):
    """The original's nn.L1Loss/MSELoss(reduction='sum') = our per-image mean times C*H*W, summed."""
    ref = golden["czolbe"][f"{name}/{KEYS[space]}"]
    x, y = golden_pairs[space]
    x = x.clone().requires_grad_()
    total = cls(colorspace=space, reduction="none")(x, y).sum() * x[0].numel()
    assert abs(total.item() / ref["sum"].item() - 1) < 1e-5
    total.backward()
    torch.testing.assert_close(x.grad, ref["grad_of_sum"], rtol=1e-5, atol=1e-6)


def test_psnr_matches_torchmetrics():
    x, y = _rand_pair((4, 3, 16, 16))
    expected = peak_signal_noise_ratio(x, y, data_range=1.0, reduction="none", dim=(1, 2, 3))
    torch.testing.assert_close(PSNR(reduction="none")(x, y), expected)
    torch.testing.assert_close(PSNR(reduction="mean")(x, y), expected.mean())
    assert PSNR.higher_is_better and not L1.higher_is_better and not L2.higher_is_better


def test_psnr_identical_images_are_capped():
    x, _ = _rand_pair((2, 3, 8, 8))
    x = x.clone().requires_grad_()
    value = PSNR(reduction="none")(x, x.detach())
    assert torch.allclose(value, torch.full((2,), -10 * torch.log10(torch.tensor(pixel.PSNR_MSE_FLOOR))))
    assert value[0].item() == pytest.approx(100.0)
    value.sum().backward()
    assert torch.isfinite(x.grad).all()
    # float16 cannot hold the floor; the MSE is computed in float32
    assert torch.isfinite(PSNR()(x.detach().half(), x.detach().half()))


# ---------------------------------------------------------------------------------------------- SSIM, zeros padding


@pytest.mark.parametrize("space", ["rgb", "grey"])
def test_original_ssim_reproduces_golden(golden, golden_pairs, space):
    ref = golden["czolbe"][f"SSIM/{KEYS[space]}"]
    x, y = golden_pairs[space]
    x = x.clone().requires_grad_()
    loss = OriginalSSIM("sum")(x, y)
    assert loss.dim() == 0
    assert abs(loss.item() / ref["sum"].item() - 1) < 1e-4
    loss.backward()
    # The golden gradient is float32 output of the original's 2-D convolutions: the E[x^2] - mu^2 cancellation
    # leaves it about 1.2e-4 (relative norm) and up to 3.3e-7 (absolute; max |grad| is 9e-4) away from the exact
    # float64 gradient, so 1e-4 is below the reference's own precision. The float64 test below checks the same
    # definition against pytorch-msssim to 1e-9.
    assert _rel(x.grad, ref["grad_of_sum"]) < 3e-4
    torch.testing.assert_close(x.grad, ref["grad_of_sum"], rtol=1e-3, atol=5e-7)
    # 'mean' behaves like the original's 'sum' (a mean); 'none' gives 1 - the per-image mean
    per_image = OriginalSSIM("none")(x.detach(), y)
    assert per_image.shape == (x.shape[0],)
    torch.testing.assert_close(per_image.mean(), loss.detach())
    torch.testing.assert_close(OriginalSSIM("mean")(x.detach(), y), loss.detach())


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("space", ["rgb", "grey"])
def test_ssim_zeros_reproduces_golden_in_both_strategies(golden, golden_pairs, monkeypatch, space, strategy):
    """The original's loss is 1 - the batch mean of per-image SSIM with zero padding: SSIM(padding="zeros"),
    one image per chunk ("chunked") or the whole batch at once ("batched")."""
    monkeypatch.setattr(ssim, "_CHUNK_ELEMENTS", 1)
    ref = golden["czolbe"][f"SSIM/{KEYS[space]}"]
    x, y = golden_pairs[space]
    x = x.clone().requires_grad_()
    loss = SSIM(colorspace=space, padding="zeros", strategy=strategy)(x, y)
    assert abs(loss.item() / ref["sum"].item() - 1) < 1e-4
    loss.backward()
    assert _rel(x.grad, ref["grad_of_sum"]) < 3e-4  # see test_original_ssim_reproduces_golden for the tolerance


@pytest.mark.parametrize("method", ["matmul", "conv"])
def test_zeros_padding_equals_pytorch_msssim_on_zero_padded_images_float64(golden_pairs, method):
    """Zero padding of 5 then 'valid' windows is the original's same-size map: values and gradients in float64."""
    x, y = (t[:4].double() for t in golden_pairs["rgb"])
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = ssim._ssim_per_image(x1, y, "zeros", method)
    ref = _pm_ssim(F.pad(x2, (5,) * 4), F.pad(y, (5,) * 4), win=_pm_window(x))
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    ours.sum().backward()
    ref.sum().backward()
    assert _rel(x1.grad, x2.grad) < 1e-9


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("padding", ssim.PADDINGS)
@pytest.mark.parametrize("method", ["matmul", "conv"])
def test_chunks_match_pytorch_msssim_gradients_float64(golden_pairs, monkeypatch, padding, method, strategy):
    """Chunks of one image ("chunked": terms recomputed in the backward) or the whole batch ("batched": terms
    kept), both filters, every padding: values and input/target gradients vs pytorch-msssim on the padded
    images (its 'valid' map over an image padded by 5 is our same-size map)."""
    monkeypatch.setattr(ssim, "_CHUNK_ELEMENTS", 1)
    x, y = (t[:3].double() for t in golden_pairs["rgb"])
    ours_in, ref_in = [(x.clone().requires_grad_(), y.clone().requires_grad_()) for _ in range(2)]
    ours = ssim._ssim_per_image(*ours_in, padding, method, strategy)
    pad = {
        "valid": lambda t: t,
        "zeros": lambda t: F.pad(t, (5,) * 4),
        "reflect": lambda t: F.pad(t, (5,) * 4, mode="reflect"),
    }
    ref = _pm_ssim(pad[padding](ref_in[0]), pad[padding](ref_in[1]), win=_pm_window(x))
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    weights = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)  # a different upstream gradient per image
    (ours * weights).sum().backward()
    (ref * weights).sum().backward()
    for a, b in zip(ours_in, ref_in):
        assert _rel(a.grad, b.grad) < 1e-9


def test_original_ssim_ignores_colorspace_and_size():
    x, y = _rand_pair((2, 2, 8, 9))  # two channels, smaller than the window: the original accepts both
    ref = 1 - _pm_ssim(F.pad(x, (5,) * 4), F.pad(y, (5,) * 4))
    torch.testing.assert_close(OriginalSSIM("none")(x, y), ref, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="reduction"):
        OriginalSSIM("elementwise")


# ---------------------------------------------------------------------------------------------- SSIM, valid / reflect


@pytest.mark.parametrize("space", ["rgb", "grey"])
def test_ssim_valid_matches_pytorch_msssim_on_real_images(golden_pairs, space):
    x, y = golden_pairs[space]
    ref = 1 - _pm_ssim(x, y)
    torch.testing.assert_close(SSIM(colorspace=space, reduction="none")(x, y), ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(SSIM(colorspace=space)(x, y), ref.mean(), rtol=0, atol=1e-5)
    torch.testing.assert_close(SSIM(colorspace=space, reduction="sum")(x, y), ref.sum(), rtol=0, atol=1e-4)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("method", ["matmul", "conv"])
@pytest.mark.parametrize("shape", [(3, 3, 32, 40), (2, 1, 11, 23)])
def test_ssim_valid_matches_pytorch_msssim_on_random_images(method, shape, strategy):
    x, y = _rand_pair(shape, seed=1, noise=0.3)
    ours = ssim._ssim_per_image(x, y, "valid", method, strategy)
    torch.testing.assert_close(ours, _pm_ssim(x, y), rtol=0, atol=1e-5)
    xd, yd = x.double(), y.double()
    torch.testing.assert_close(
        ssim._ssim_per_image(xd, yd, "valid", method, strategy),
        _pm_ssim(xd, yd, win=_pm_window(xd)),
        rtol=0,
        atol=1e-12,
    )


def test_ssim_large_images_take_the_convolution_path():
    x, y = _rand_pair((1, 3, 230, 210), seed=2)
    assert 230 + 210 > ssim._MATMUL_MAX_H_PLUS_W
    torch.testing.assert_close(SSIM(reduction="none")(x, y), 1 - _pm_ssim(x, y), rtol=0, atol=1e-5)


@pytest.mark.parametrize("precision", ["high", "medium"])
def test_reduced_precision_matmul_falls_back_to_convolutions(precision):
    """With TF32/bfloat16 matrix products allowed, the statistics come from the (float32) convolutions."""
    x, y = _rand_pair((2, 3, 32, 32), seed=11, noise=0.05)
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        assert ssim._pick_method(x) == "conv"
        value = SSIM(reduction="none", strategy="batched")(x, y)
    finally:
        torch.set_float32_matmul_precision(saved)
    assert ssim._pick_method(x) == "matmul"
    torch.testing.assert_close(value, 1 - _pm_ssim(x, y), rtol=0, atol=1e-5)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("method", ["matmul", "conv"])
def test_ssim_reflect_matches_torchmetrics(golden_pairs, method, strategy):
    """torchmetrics reflects 5 pixels and keeps the same-size map: our padding='reflect'."""
    x, y = golden_pairs["rgb"]
    expected = structural_similarity_index_measure(x.double(), y.double(), data_range=1.0, reduction="none")
    ours = ssim._ssim_per_image(x.double(), y.double(), "reflect", method, strategy)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-12)
    # float32: both sides carry float32 cancellation noise (torchmetrics uses a 2-D kernel)
    expected32 = structural_similarity_index_measure(x, y, data_range=1.0, reduction="none")
    metric = SSIM(padding="reflect", reduction="none", strategy=strategy)
    torch.testing.assert_close(metric(x, y), 1 - expected32, rtol=0, atol=1e-4)


def test_torchmetrics_default_differs_from_valid_only_at_the_border(golden_pairs):
    """Cropping torchmetrics' full SSIM map to the valid positions gives pytorch-msssim's value."""
    x, y = (t.double() for t in golden_pairs["rgb"])
    _, full = structural_similarity_index_measure(x, y, data_range=1.0, reduction="none", return_full_image=True)
    cropped = full[..., 5:-5, 5:-5].mean(dim=(1, 2, 3))
    torch.testing.assert_close(SSIM(reduction="none")(x, y), 1 - cropped, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------- MS-SSIM


def _ms_inputs(golden_pairs, space, size):
    x, y = golden_pairs[space]
    up = [F.interpolate(t[:2], size=size, mode="bilinear", align_corners=False).clamp(0, 1) for t in (x, y)]
    return up[0], up[1]


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("space", ["rgb", "grey"])
@pytest.mark.parametrize("size", [(192, 192), (161, 175)])
def test_ms_ssim_matches_pytorch_msssim(golden_pairs, space, size, strategy):
    x, y = _ms_inputs(golden_pairs, space, size)
    ref = pytorch_msssim.ms_ssim(x, y, data_range=1, size_average=False)
    metric = MSSSIM(colorspace=space, reduction="none", strategy=strategy)
    torch.testing.assert_close(metric(x, y), 1 - ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(ssim.ms_ssim(x, y, strategy=strategy, reduction="none"), ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_ms_ssim_chunks_match_pytorch_msssim_gradients(golden_pairs, monkeypatch, strategy):
    """One image per chunk at every scale ("chunked") or the whole batch ("batched"), float64: values and
    gradients vs autograd through pytorch-msssim."""
    monkeypatch.setattr(ssim, "_MS_CHUNK_ELEMENTS", 1)
    x, y = (t.double() for t in _ms_inputs(golden_pairs, "rgb", (161, 170)))
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = ssim._ms_ssim_per_image(x1, y, strategy=strategy)
    ref = pytorch_msssim.ms_ssim(x2, y, data_range=1, size_average=False, win=_pm_window(x))
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    (ours * torch.tensor([1.0, -3.0], dtype=torch.float64)).sum().backward()
    (ref * torch.tensor([1.0, -3.0], dtype=torch.float64)).sum().backward()
    assert _rel(x1.grad, x2.grad) < 1e-9


def test_ms_ssim_negative_contrast_is_clipped_like_pytorch_msssim():
    """Anti-correlated images: negative cs means at some scale give 0 there (relu), with a finite gradient."""
    y, _ = _rand_pair((1, 1, 176, 176), seed=3)
    x = (1 - y).clone().requires_grad_()
    ref = pytorch_msssim.ms_ssim(x.detach(), y, data_range=1, size_average=False)
    ours = MSSSIM(colorspace="grey", reduction="none")(x, y)
    torch.testing.assert_close(ours, 1 - ref, rtol=0, atol=1e-5)
    ours.sum().backward()
    assert torch.isfinite(x.grad).all()


# ---------------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("padding", ssim.PADDINGS)
@pytest.mark.parametrize("method", ["matmul", "conv"])
def test_ssim_gradcheck(monkeypatch, padding, method, strategy):
    monkeypatch.setattr(ssim, "_CHUNK_ELEMENTS", 1)  # "chunked": one image per chunk
    x, y = _rand_pair((2, 1, 16, 16), seed=4, dtype=torch.float64, noise=0.2)
    x, y = x.requires_grad_(), y.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: ssim._ssim_per_image(a, b, padding, method, strategy), (x, y))


@pytest.mark.parametrize("padding", ["valid", "zeros"])
def test_ssim_gradcheck_target_only(padding):
    """The fused backward filters back only the maps the inputs that need a gradient use: target alone here."""
    x, y = _rand_pair((2, 2, 13, 12), seed=9, dtype=torch.float64, noise=0.2)
    assert torch.autograd.gradcheck(lambda b: ssim._ssim_per_image(x, b, padding, "matmul"), (y.requires_grad_(),))


@pytest.mark.parametrize("fn", [functional.l1, functional.l2, functional.psnr])
def test_pixel_gradcheck_and_gradgradcheck(fn):
    """First and second derivatives, w.r.t. input and target (the closed form recomputed differentiably)."""
    x, y = _rand_pair((2, 3, 4, 4), seed=5, dtype=torch.float64, noise=0.2)
    y = (y + 0.01 * (x == y)).clamp(0, 1)  # L1 is not differentiable where input == target
    x, y = x.requires_grad_(), y.requires_grad_()
    per_image = lambda a, b: fn(a, b, reduction="none")  # noqa: E731
    assert torch.autograd.gradcheck(per_image, (x, y))
    assert torch.autograd.gradgradcheck(per_image, (x, y))
    assert torch.autograd.gradgradcheck(lambda a: fn(a, y.detach(), reduction="sum"), (x,))


@pytest.mark.parametrize("padding", ssim.PADDINGS)
@pytest.mark.parametrize("method", ["matmul", "conv"])
def test_ssim_gradgradcheck(padding, method):
    """Double backward through the fused SSIM (the same formula through autograd), float64, small."""
    x, y = _rand_pair((2, 1, 12, 13), seed=12, dtype=torch.float64, noise=0.2)
    x, y = x.requires_grad_(), y.requires_grad_()
    per_image = lambda a, b: ssim._ssim_per_image(a, b, padding, method, "batched")  # noqa: E731
    assert torch.autograd.gradgradcheck(per_image, (x, y), fast_mode=True)


def test_ms_ssim_gradgradcheck_fast_mode():
    x, y = _rand_pair((1, 1, 161, 161), seed=13, dtype=torch.float64, noise=0.05)
    assert torch.autograd.gradgradcheck(lambda a: ssim._ms_ssim_per_image(a, y), (x.requires_grad_(),), fast_mode=True)


def test_second_derivative_of_ssim_matches_autograd_through_pytorch_msssim():
    """A Hessian-vector product of SSIM (double backward, as gradient penalties use it) against autograd through
    pytorch-msssim's code on the same images."""
    x, y = _rand_pair((2, 3, 16, 16), seed=14, dtype=torch.float64, noise=0.2)
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(15), dtype=torch.float64)
    hvps = []
    for fn in (lambda a: ssim._ssim_per_image(a, y, "valid"), lambda a: _pm_ssim(a, y, win=_pm_window(a))):
        a = x.clone().requires_grad_()
        (grad,) = torch.autograd.grad(fn(a).sum(), a, create_graph=True)
        (hvp,) = torch.autograd.grad((grad * v).sum(), a)
        hvps.append(hvp)
    assert _rel(*hvps) < 1e-9


def test_ms_ssim_gradcheck_fast_mode():
    x, y = _rand_pair((1, 1, 161, 161), seed=6, dtype=torch.float64, noise=0.05)
    x = x.requires_grad_()
    assert torch.autograd.gradcheck(lambda a: ssim._ms_ssim_per_image(a, y), (x,), fast_mode=True)


@pytest.mark.parametrize(
    "metric",
    [L1(), L2(), PSNR(), SSIM(), SSIM(padding="zeros"), SSIM(padding="reflect"), MSSSIM(), OriginalSSIM("sum")],
    ids=lambda m: f"{type(m).__name__}-{getattr(m, 'padding', '')}",
)
def test_gradients_finite_at_identity(metric):
    size = 161 if isinstance(metric, MSSSIM) else 24
    x, _ = _rand_pair((2, 3, size, size), seed=7)
    x1 = x.clone().requires_grad_()
    value = metric(x1, x)
    expected = 100.0 if isinstance(metric, PSNR) else 0.0
    assert value.item() == pytest.approx(expected, abs=1e-5)
    value.backward()
    assert torch.isfinite(x1.grad).all()
    assert x1.grad.abs().max().item() < 1e-3


# ---------------------------------------------------------------------------------------------- dtypes


def test_ssim_under_bfloat16_autocast_computes_in_float32(golden_pairs):
    x, y = golden_pairs["rgb"]
    metric = SSIM(reduction="none")
    x1 = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = metric(x1, y)
        ms_value = MSSSIM()(*_ms_inputs(golden_pairs, "rgb", (176, 176)))
    assert value.dtype == torch.float32 and torch.isfinite(ms_value)
    torch.testing.assert_close(value, 1 - _pm_ssim(x, y), rtol=0, atol=1e-5)
    value.sum().backward()
    assert torch.isfinite(x1.grad).all()


def test_inference_mode_and_no_grad(golden_pairs):
    x, y = golden_pairs["rgb"]
    with torch.inference_mode():
        value = SSIM(reduction="none")(x, y)
    with torch.no_grad():
        ms_value = MSSSIM(reduction="none")(*_ms_inputs(golden_pairs, "rgb", (161, 161)))
    torch.testing.assert_close(value, 1 - _pm_ssim(x, y), rtol=0, atol=1e-5)
    ms_ref = pytorch_msssim.ms_ssim(*_ms_inputs(golden_pairs, "rgb", (161, 161)), data_range=1, size_average=False)
    torch.testing.assert_close(ms_value, 1 - ms_ref, rtol=0, atol=1e-5)


def test_ssim_half_inputs_give_float32():
    x, y = _rand_pair((2, 3, 16, 16), seed=8)
    xb, yb = x.bfloat16(), y.bfloat16()
    value = SSIM(reduction="none")(xb, yb)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, 1 - _pm_ssim(xb.float(), yb.float()), rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "metric, x, y, error, match",
    [
        (SSIM(), torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 15), ValueError, "shapes differ"),
        (SSIM(), torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16), ValueError, "expected 3 channel"),
        (SSIM(colorspace="LA"), torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16), ValueError, "expected 1 channel"),
        (SSIM(), torch.randint(0, 255, (1, 3, 16, 16)), torch.rand(1, 3, 16, 16), TypeError, "float"),
        (SSIM(), torch.full((1, 3, 16, 16), float("nan")), torch.rand(1, 3, 16, 16), ValueError, "NaN"),
        (SSIM(), torch.rand(1, 3, 16, 16) * 255, torch.rand(1, 3, 16, 16), ValueError, "255"),
        (SSIM(), torch.rand(1, 3, 16, 16) * 2 - 1, torch.rand(1, 3, 16, 16), ValueError, r"\[-1, 1\]"),
        (SSIM(), torch.rand(1, 3, 10, 16), torch.rand(1, 3, 10, 16), ValueError, "too small.*11x11"),
        (SSIM(), torch.rand(3, 16, 16), torch.rand(3, 16, 16), ValueError, "4-D"),
        (MSSSIM(), torch.rand(1, 3, 160, 200), torch.rand(1, 3, 160, 200), ValueError, "161x161"),
        (L2(), torch.rand(1, 3, 4, 4), torch.rand(1, 1, 4, 4), ValueError, "shapes differ"),
        (L1(), [[0.0]], torch.rand(1, 3, 4, 4), TypeError, "torch.Tensor"),
    ],
)
def test_bad_inputs_raise_helpful_errors(metric, x, y, error, match):
    with pytest.raises(error, match=match):
        metric(x, y)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: SSIM(padding="same"), "padding"),
        (lambda: SSIM(reduction="avg"), "reduction"),
        (lambda: MSSSIM(colorspace="cmyk"), "colorspace"),
        (lambda: L1(reduction="elementwise_mean"), "reduction"),
        (lambda: SSIM(strategy="gpu"), "strategy"),
        (lambda: MSSSIM(strategy="fast"), "strategy"),
        (lambda: ssim.ssim(torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16), strategy="cuda"), "strategy"),
        (lambda: ssim.ms_ssim(torch.rand(1, 1, 161, 161), torch.rand(1, 1, 161, 161), strategy="x"), "strategy"),
    ],
)
def test_bad_options_raise(build, match):
    with pytest.raises(ValueError, match=match):
        build()


# ---------------------------------------------------------------------------------------------- registry


def test_registry_builds_the_metrics():
    metric = percept.get_metric("ssim")
    assert isinstance(metric, SSIM) and metric.padding == "valid" and metric.reduction == "mean"
    assert isinstance(percept.get_metric("ms-ssim"), MSSSIM)
    assert isinstance(percept.get_metric("msssim", colorspace="LA"), MSSSIM)
    l2 = percept.get_metric("l2", pretrained=True, deterministic=True, trainable=False, reduction="sum")
    assert isinstance(l2, L2) and l2.reduction == "sum"
    assert isinstance(percept.get_metric("mae"), L1)
    psnr = percept.get_metric("psnr")
    assert isinstance(psnr, PSNR) and psnr.higher_is_better
    grey = percept.get_metric("ssim", colorspace="LA", padding="zeros")
    assert grey.channels == 1 and grey.padding == "zeros"
    for name in ("l1", "l2", "psnr", "ssim", "ms-ssim"):
        assert list(percept.get_metric(name).parameters()) == []
    assert "higher is more similar" in percept.list_metrics()["psnr"]
    with pytest.raises(ValueError, match="padding"):
        percept.get_metric("l1", padding="zeros")


@pytest.mark.parametrize(
    "cls, plain",
    [(L1, lambda a, b: (a - b).abs().mean(dim=(1, 2, 3))), (L2, lambda a, b: ((a - b) ** 2).mean(dim=(1, 2, 3)))],
)
def test_l1_l2_closed_form_gradient_equals_plain_autograd(cls, plain, backward_twice):
    """The closed-form gradients (input and target) against autograd through the plain formula."""
    torch.manual_seed(0)
    y = torch.rand(4, 3, 8, 8, dtype=torch.float64)
    x = (y + 0.1 * torch.randn_like(y)).clamp(0, 1)
    x[1] = y[1]
    metric = cls(reduction="none")
    upstream = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    results = []
    for fn in (metric, plain):
        for target_needs_grad in (False, True):
            a, b = x.clone().requires_grad_(), y.clone().requires_grad_(target_needs_grad)
            d = fn(a, b)
            (d * upstream).sum().backward()
            results.append((d.detach(), a.grad, b.grad))
    for d, ga, _ in results[:2]:
        torch.testing.assert_close(d, results[2][0], rtol=1e-12, atol=0)
        torch.testing.assert_close(ga, results[2][1], rtol=1e-12, atol=0)
        assert torch.equal(ga[1], torch.zeros_like(ga[1]))
    torch.testing.assert_close(results[1][2], results[3][2], rtol=1e-12, atol=0)
    torch.testing.assert_close(*backward_twice(metric, x, y))


# ---------------------------------------------------------------------------------------------- functional


def test_functional_equals_modules(golden_pairs):
    """The modules are thin wrappers: the same numbers as percept.functional for every option they pass on."""
    x, y = golden_pairs["rgb"]
    xg, yg = golden_pairs["grey"]
    xm, ym = _ms_inputs(golden_pairs, "rgb", (161, 161))
    for reduction in ("none", "mean", "sum"):
        for cls, fn in ((L1, functional.l1), (L2, functional.l2), (PSNR, functional.psnr)):
            assert torch.equal(cls(reduction=reduction)(x, y), fn(x, y, reduction=reduction))
            grey = cls(colorspace="LA", reduction=reduction)(xg, yg)
            assert torch.equal(grey, fn(xg, yg, colorspace="grey", reduction=reduction))
        assert torch.equal(L2(colorspace="lab", reduction=reduction)(x, y), functional.l2(x, y, colorspace="lab",
                                                                                         reduction=reduction))
    for padding in ssim.PADDINGS:
        for space, (a, b) in (("rgb", (x, y)), ("grey", (xg, yg)), ("lab", (x, y))):
            module = SSIM(colorspace=space, padding=padding, reduction="none")(a, b)
            assert torch.equal(module, 1 - functional.ssim(a, b, colorspace=space, padding=padding, reduction="none"))
    assert torch.equal(SSIM(reduction="sum")(x, y), (1 - functional.ssim(x, y, reduction="none")).sum())
    assert torch.equal(MSSSIM(reduction="none")(xm, ym), 1 - functional.ms_ssim(xm, ym, reduction="none"))
    from percept.metrics.ssim import UniformSSIM

    for space in ("rgb", "lab"):
        module = UniformSSIM(colorspace=space, reduction="none")(x, y)
        assert torch.equal(module, 1 - functional.ssim_skimage(x, y, colorspace=space, reduction="none"))
    # reductions of the functions: over the images
    per_image = functional.ssim(x, y, reduction="none")
    assert per_image.shape == (x.shape[0],)
    torch.testing.assert_close(functional.ssim(x, y), per_image.mean(), rtol=0, atol=0)
    torch.testing.assert_close(functional.ssim(x, y, reduction="sum"), per_image.sum(), rtol=0, atol=0)
    # any channel count without a colorspace; the colorspace checks it
    two = functional.ssim(x[:, :2], y[:, :2], reduction="none")
    torch.testing.assert_close(two, _pm_ssim(x[:, :2], y[:, :2]), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="expected 3 channel"):
        functional.l1(xg, yg, colorspace="rgb")
    with pytest.raises(ValueError, match="only by"):
        functional.psnr(x, y, colorspace="lab")
    with pytest.raises(ValueError, match="reduction"):
        functional.l2(x, y, reduction="elementwise_mean")


def test_functions_are_exported_and_documented():
    for name in ("l1", "l2", "psnr", "ssim", "ms_ssim", "ssim_skimage"):
        fn = getattr(percept.functional, name)
        assert name in percept.functional.__all__ and ">>>" in fn.__doc__ and "(N, C, H, W)" in fn.__doc__


@pytest.mark.parametrize("module", ["percept.functional.pixel", "percept.functional.ssim", "percept.functional"])
def test_functional_doctests(module):
    import doctest

    result = doctest.testmod(importlib.import_module(module), extraglobs={"torch": torch}, verbose=False)
    assert result.attempted > 0 and result.failed == 0, result


# ---------------------------------------------------------------------------------------------- deliberate bugs


@pytest.mark.parametrize(
    "constant, value", [("C2", 0.02**2), ("C1", 0.02**2), ("WINDOW_SIGMA", 1.4)], ids=["C2", "C1", "sigma"]
)
def test_a_wrong_constant_is_caught_by_the_peer(golden_pairs, monkeypatch, constant, value):
    """A plausible slip in the formula's constants (C2 = (0.02)^2, C1 likewise, sigma = 1.4) moves the values
    away from pytorch-msssim by far more than the tolerance the parity tests use (1e-5)."""
    x, y = golden_pairs["rgb"]
    ref = _pm_ssim(x, y)
    torch.testing.assert_close(ssim._ssim_per_image(x, y, "valid"), ref, rtol=0, atol=1e-5)
    ssim._filter_constants.cache_clear()
    ssim._term_constants.cache_clear()
    monkeypatch.setattr(ssim, constant, value)
    try:
        wrong = ssim._ssim_per_image(x, y, "valid")
    finally:
        ssim._filter_constants.cache_clear()
        ssim._term_constants.cache_clear()
    assert (wrong - ref).abs().max().item() > 1e-4
