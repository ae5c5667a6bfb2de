"""The adaptive (Barron robust loss) metric against references only.

References: the golden outputs of the original Czolbe et al. code, the numbers in spec section 15, closed forms
of the partition function (Cauchy, pseudo-Huber, Gaussian), scipy quadrature, and a literal numpy/scipy
re-statement of the original's array manipulations (NCHW read as NHWC) and of the intended YUV-DCT.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import percept.functional as F
from percept import get_metric
from percept.compat import original_adaptive
from percept.metrics import adaptive as A

scipy_integrate = pytest.importorskip("scipy.integrate")
scipy_fft = pytest.importorskip("scipy.fft")
scipy_special = pytest.importorskip("scipy.special")


# ---------------------------------------------------------------------------------------------------
# reference helpers (numpy / scipy, independent of the module's code paths)
# ---------------------------------------------------------------------------------------------------


def _rho_ref(x, alpha):
    """Barron's rho with c = 1 written directly from the paper's formula (float64 numpy)."""
    b = abs(alpha - 2.0)
    return b / alpha * ((x * x / b + 1.0) ** (alpha / 2.0) - 1.0)


def _log_z_quad(alpha: float) -> float:
    if alpha == 0:
        integrand = lambda x: 1.0 / (0.5 * x * x + 1.0)  # noqa: E731
    else:
        integrand = lambda x: math.exp(-_rho_ref(x, alpha))  # noqa: E731
    value, _ = scipy_integrate.quad(integrand, 0.0, np.inf, epsabs=0.0, epsrel=1e-13, limit=500)
    return math.log(2.0 * value)


_K = (np.array(A.YUV_MATRIX) * A.SYUV_SCALE).T  # rgb row vector @ _K -> syuv row vector
_LOG_Z1 = math.log(2.0 * math.e * scipy_special.k1(1.0))  # Z(1) = int exp(1 - sqrt(1 + x^2)) dx = 2e K_1(1)


def _original_pipeline_ref(residual: np.ndarray) -> np.ndarray:
    """The library's transform_to_mat on an NCHW array that it believes is NHWC, in numpy/scipy."""
    n, width, height, channels = residual.shape  # really (N, 3, H, W)
    yuv = (residual.reshape(-1, 3) @ _K).reshape(residual.shape)
    stack = yuv.transpose(0, 3, 1, 2).reshape(-1, width, height)
    stack = scipy_fft.dctn(stack, axes=(1, 2), norm="ortho")
    return stack.reshape(-1, channels, width, height).transpose(0, 2, 3, 1).reshape(n, -1)


def _nchw_pipeline_ref(residual: np.ndarray) -> np.ndarray:
    if residual.shape[1] == 3:
        residual = np.einsum("nchw,ck->nkhw", residual, _K)
    return scipy_fft.dctn(residual, axes=(2, 3), norm="ortho").reshape(residual.shape[0], -1)


def _per_image_alpha1_ref(coeffs: np.ndarray) -> np.ndarray:
    """Per-image NLL with alpha = 1, c = 1 everywhere: sum(sqrt(x^2 + 1) - 1 + log Z(1))."""
    return (np.sqrt(coeffs**2 + 1.0) - 1.0 + _LOG_Z1).sum(axis=1)


def _pair(n, c, h, w, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(n, c, h, w, generator=g, dtype=torch.float64)
    inp = (target + 0.2 * torch.randn(n, c, h, w, generator=g, dtype=torch.float64)).clamp(0, 1)
    return inp.to(dtype), target.to(dtype)


# ---------------------------------------------------------------------------------------------------
# parity with the original code
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("colorspace", ["RGB", "LA"])
def test_golden_sum_and_grad(golden, golden_pairs, colorspace):
    ref = golden["czolbe"][f"Adaptive/{colorspace}"]
    inp, target = golden_pairs["rgb" if colorspace == "RGB" else "grey"]
    loss = original_adaptive(colorspace, "sum", True, (3, 64, 64))
    assert all(not p.requires_grad for p in loss.parameters())
    x = inp.clone().requires_grad_(True)
    total = loss(x, target)
    total.backward()
    assert total.item() == pytest.approx(ref["sum"].item(), rel=1e-5)
    grad_ref = ref["grad_of_sum"]
    assert x.grad.shape == grad_ref.shape
    assert ((x.grad - grad_ref).norm() / grad_ref.norm()).item() < 1e-5


@pytest.mark.parametrize("colorspace", ["RGB", "LA"])
def test_golden_elementwise_shape(golden_pairs, colorspace):
    inp, target = golden_pairs["rgb" if colorspace == "RGB" else "grey"]
    elementwise = original_adaptive(colorspace, "none", True, (3, 64, 64))(inp, target)
    assert elementwise.shape == (8, 3, 64, 64)
    assert torch.isfinite(elementwise).all()
    assert (elementwise < 0).any()  # an NLL, not a distance


def test_spec_section15_values():
    """Spec section 15: the original on analytic test images (N = 2), 'sum' = 307.599 (RGB), 799.052 (LA)."""
    n, c, i, j = torch.meshgrid(*(torch.arange(s, dtype=torch.float64) for s in (2, 3, 64, 64)), indexing="ij")
    target = 0.5 + 0.35 * torch.sin(0.37 * (i + 1) * (c + 1) + 0.23 * (j + 1) + 0.5 * n)
    inp = torch.clamp(target + 0.08 * torch.sin(1.3 * i - 0.7 * j + 2.1 * c + n), 0, 1)
    target, inp = target.float(), inp.float()
    rgb = original_adaptive("RGB", "sum", True, (3, 64, 64))(inp, target).item()
    la = original_adaptive("LA", "sum", True, (3, 64, 64))(inp[:, :1], target[:, :1]).item()
    assert rgb == pytest.approx(307.599, abs=1.5e-3)
    assert la == pytest.approx(799.052, abs=1.5e-3)


def test_original_layout_matches_numpy_restatement():
    """pretrained=False (alpha = c = 1): the NCHW-read-as-NHWC pipeline, restated with numpy and scipy.fft."""
    inp, target = _pair(2, 3, 8, 5, dtype=torch.float64)
    loss = original_adaptive("RGB", "none", False, (3, 8, 5))
    got = loss(inp, target).reshape(2, -1).sum(1)
    ref = _per_image_alpha1_ref(_original_pipeline_ref((inp - target).numpy()))
    np.testing.assert_allclose(got.detach().numpy(), ref, rtol=1e-12)
    # the original leaves untrained parameters trainable
    assert all(p.requires_grad for p in loss.parameters())


def test_original_greyscale_wrapper():
    luma = np.array([0.3, 0.59, 0.11])[None, :, None, None]  # the original's grey conversion
    fixed = original_adaptive("LA", "sum", False, (3, 8, 8))
    bug = original_adaptive("LA", "sum", False, (3, 8, 8), fix_greyscale=False)
    for n in (2, 3):
        inp, target = _pair(n, 1, 8, 8, dtype=torch.float64)
        ref = _per_image_alpha1_ref(_original_pipeline_ref(np.repeat((inp - target).numpy(), 3, axis=1))).sum()
        assert fixed(inp, target).item() == pytest.approx(ref, rel=1e-12)
        if n == 3:  # pitfall P8: the original tests the batch size, a batch of 3 grey images fails
            with pytest.raises(ValueError, match="P8"):
                bug(inp, target)
        else:
            assert bug(inp, target).item() == pytest.approx(ref, rel=1e-12)
    for n in (2, 3):
        inp, target = _pair(n, 3, 8, 8, dtype=torch.float64)
        residual = (inp - target).numpy()
        converted = _per_image_alpha1_ref(
            _original_pipeline_ref(np.repeat((residual * luma).sum(1, keepdims=True), 3, 1))
        )
        assert fixed(inp, target).item() == pytest.approx(converted.sum(), rel=1e-12)
        # with the bug, RGB input of batch size != 3 reaches the grey weights unconverted
        expected = converted.sum() if n == 3 else _per_image_alpha1_ref(_original_pipeline_ref(residual)).sum()
        assert bug(inp, target).item() == pytest.approx(expected, rel=1e-12)


def test_original_rejects_bad_sizes():
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        original_adaptive("RGB", "sum", False, (1, 64, 64))
    with pytest.raises(ValueError, match="64"):
        original_adaptive("RGB", "sum", True, (3, 32, 32))
    loss = original_adaptive("RGB", "sum", False, (3, 16, 16))
    with pytest.raises(ValueError, match="shape"):
        loss(*_pair(1, 3, 8, 8))


# ---------------------------------------------------------------------------------------------------
# the partition function and rho
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.001, 0.0137, 0.25, 0.5, 1.0, 1.37, 1.9, 1.999])
def test_log_partition_against_quadrature(alpha):
    got = A.log_partition(torch.tensor(alpha, dtype=torch.float64)).item()
    assert got == pytest.approx(_log_z_quad(alpha), abs=1e-9)


def test_log_partition_closed_forms():
    values = A.log_partition(torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)).tolist()
    assert values[0] == pytest.approx(math.log(math.pi * math.sqrt(2.0)), abs=1e-9)  # Cauchy
    assert values[1] == pytest.approx(_LOG_Z1, abs=1e-10)  # pseudo-Huber: 2e K_1(1)
    assert values[2] == pytest.approx(0.5 * math.log(2.0 * math.pi), abs=1e-7)  # Gaussian (limit at 2)
    assert _log_z_quad(0.0) == pytest.approx(values[0], abs=1e-9)
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        A.log_partition(torch.tensor([2.5]))


@pytest.mark.parametrize("alpha", [0.05, 0.5, 1.0, 1.5, 1.9])
def test_log_partition_gradient(alpha):
    a = torch.tensor(alpha, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(A.log_partition(a), a)
    h = 1e-4
    fd = (_log_z_quad(alpha + h) - _log_z_quad(alpha - h)) / (2 * h)
    assert grad.item() == pytest.approx(fd, abs=2e-6)


def test_log_partition_float32_matches_float64():
    a = torch.linspace(0.001, 1.999, 101)
    np.testing.assert_allclose(A.log_partition(a).numpy(), A.log_partition(a.double()).numpy(), atol=1e-6)


def test_rho_special_cases():
    x = torch.linspace(-7, 7, 57, dtype=torch.float64)
    for c in (0.3, 1.0, 2.5):
        y = (x / c) ** 2
        torch.testing.assert_close(A.rho(x, 2.0, c), 0.5 * y, rtol=0, atol=0)
        torch.testing.assert_close(A.rho(x, 2.0 - 1e-7, c), 0.5 * y, rtol=1e-5, atol=1e-12)
        torch.testing.assert_close(A.rho(x, 1.0, c), torch.sqrt(y + 1) - 1, rtol=1e-13, atol=1e-15)
        torch.testing.assert_close(A.rho(x, 0.0, c), torch.log(0.5 * y + 1), rtol=1e-15, atol=1e-15)
        torch.testing.assert_close(A.rho(x, 1e-8, c), torch.log(0.5 * y + 1), rtol=1e-6, atol=1e-12)
        for alpha in (0.3, 1.6, -2.0):
            ref = torch.from_numpy(_rho_ref((x / c).numpy(), alpha))
            torch.testing.assert_close(A.rho(x, alpha, c), ref, rtol=1e-12, atol=1e-14)


def test_parameter_maps():
    zero = torch.zeros(3)
    torch.testing.assert_close(A.alpha_from_latent(zero), torch.ones(3))
    torch.testing.assert_close(A.scale_from_latent(zero), torch.ones(3))
    big = torch.tensor([-50.0, 50.0])
    torch.testing.assert_close(A.alpha_from_latent(big), torch.tensor([0.001, 1.999]))
    assert A.scale_from_latent(torch.tensor(-50.0)).item() == pytest.approx(1e-5, rel=1e-6)
    assert np.linalg.det(_K) == pytest.approx(1.0, abs=1e-9)  # sYUV is volume preserving


# ---------------------------------------------------------------------------------------------------
# the registry metric
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("colorspace", ["rgb", "grey"])
def test_registry_equals_original_per_image(golden_pairs, colorspace):
    inp, target = golden_pairs[colorspace]
    metric = A.Adaptive(colorspace=colorspace, reduction="none")
    original = original_adaptive("RGB" if colorspace == "rgb" else "LA", "none", True, (3, 64, 64))
    expected = original(inp, target).sum(dim=(1, 2, 3))
    got = metric(inp, target)
    assert got.shape == (8,)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-3)
    assert A.Adaptive(colorspace=colorspace, reduction="sum")(inp, target).item() == pytest.approx(
        expected.sum().item(), rel=1e-6
    )
    assert metric.alpha.shape == (3, 64, 64)
    assert 0.001 <= metric.alpha.min() and metric.alpha.max() <= 1.999


@pytest.mark.parametrize("colorspace", ["rgb", "grey"])
def test_registry_nchw_layout_matches_scipy(colorspace):
    c = 3 if colorspace == "rgb" else 1
    inp, target = _pair(3, c, 6, 10, dtype=torch.float64)
    metric = A.Adaptive(colorspace=colorspace, reduction="none", pretrained=False, image_size=(6, 10), layout="nchw")
    ref = _per_image_alpha1_ref(_nchw_pipeline_ref((inp - target).numpy()))
    np.testing.assert_allclose(metric(inp, target).numpy(), ref, rtol=1e-12)
    assert metric.latent_alpha.shape == (c, 6, 10)


def test_registry_untrained_original_layout_matches_numpy():
    inp, target = _pair(2, 1, 8, 8, dtype=torch.float64)
    metric = A.Adaptive(colorspace="grey", reduction="none", pretrained=False, image_size=8)
    ref = _per_image_alpha1_ref(_original_pipeline_ref(np.repeat((inp - target).numpy(), 3, axis=1)))
    np.testing.assert_allclose(metric(inp, target).numpy(), ref, rtol=1e-12)
    torch.testing.assert_close(metric.alpha, torch.ones(3, 8, 8))
    torch.testing.assert_close(metric.scale, torch.ones(3, 8, 8))


def test_registry_errors():
    rgb, grey = A.Adaptive(colorspace="rgb"), A.Adaptive(colorspace="grey")
    x3, y3 = _pair(2, 3, 64, 64)
    x1, y1 = _pair(2, 1, 64, 64)
    with pytest.raises(ValueError, match="channel"):
        grey(x3, y3)
    with pytest.raises(ValueError, match="channel"):
        rgb(x1, y1)
    with pytest.raises(ValueError, match="64x64"):
        rgb(*_pair(2, 3, 32, 32))
    with pytest.raises(ValueError, match="pretrained=False"):
        A.Adaptive(image_size=(32, 32))
    with pytest.raises(ValueError, match="nchw"):
        A.Adaptive(layout="nchw")
    with pytest.raises(ValueError, match="layout"):
        A.Adaptive(layout="nhwc", pretrained=False)
    with pytest.raises(ValueError, match="reduction"):
        A.Adaptive(reduction="max")
    small = A.Adaptive(pretrained=False, image_size=(16, 16))
    with pytest.raises(ValueError, match="16x16"):
        small(x3, y3)


def test_get_metric_builds():
    metric = get_metric("adaptive", colorspace="LA", reduction="sum", deterministic=True)
    assert isinstance(metric, A.Adaptive) and isinstance(metric, torch.nn.Module)
    assert metric.colorspace == "grey" and metric.reduction == "sum"
    assert A.Adaptive.higher_is_better is False
    assert all(not p.requires_grad for p in metric.parameters())
    trainable = get_metric("adaptive", trainable=True)
    assert all(p.requires_grad for p in trainable.parameters())
    assert {name for name, _ in trainable.named_parameters()} == {"latent_alpha", "latent_scale"}


# ---------------------------------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("colorspace", ["rgb", "grey"])
def test_gradient_finite_and_zero_at_identity(colorspace):
    c = 3 if colorspace == "rgb" else 1
    _, target = _pair(2, c, 64, 64)
    metric = A.Adaptive(colorspace=colorspace, reduction="sum")
    x = target.clone().requires_grad_(True)
    value = metric(x, target)
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(x.grad).all() and x.grad.abs().max() == 0
    # identical images give the NLL of a zero residual: sum(log c + log Z(alpha)), not 0
    floor = (torch.log(metric.scale) + A.log_partition(metric.alpha.double()).float()).sum() * 2
    assert value.item() == pytest.approx(floor.item(), rel=1e-5)
    original = original_adaptive("RGB" if c == 3 else "LA", "sum", True, (3, 64, 64))
    x = target.clone().requires_grad_(True)
    original(x, target).backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize(
    "layout,colorspace", [("original", "rgb"), ("original", "grey"), ("nchw", "rgb"), ("nchw", "grey")]
)
def test_gradcheck_input(layout, colorspace):
    c = 3 if colorspace == "rgb" else 1
    inp, target = _pair(2, c, 4, 3, dtype=torch.float64, seed=3)
    metric = A.Adaptive(colorspace=colorspace, reduction="sum", pretrained=False, image_size=(4, 3), layout=layout)
    with torch.no_grad():  # a non-trivial shape/scale field
        metric.latent_alpha.copy_(torch.linspace(-3, 3, metric.latent_alpha.numel()).reshape(metric.latent_alpha.shape))
        metric.latent_scale.copy_(torch.linspace(-2, 1, metric.latent_scale.numel()).reshape(metric.latent_scale.shape))
    metric = metric.double()
    assert torch.autograd.gradcheck(lambda x: metric(x, target), (inp.requires_grad_(True),))


def test_gradcheck_trainable_parameters():
    inp, target = _pair(2, 3, 4, 4, dtype=torch.float64, seed=5)
    metric = A.Adaptive(reduction="mean", pretrained=False, trainable=True, image_size=4).double()
    la = torch.linspace(-4, 4, 48, dtype=torch.float64).reshape(3, 4, 4).requires_grad_(True)
    ls = torch.linspace(-1, 2, 48, dtype=torch.float64).reshape(3, 4, 4).requires_grad_(True)

    def f(latent_alpha, latent_scale):
        params = {"latent_alpha": latent_alpha, "latent_scale": latent_scale}
        return torch.func.functional_call(metric, params, (inp, target))

    assert torch.autograd.gradcheck(f, (la, ls))


@pytest.mark.parametrize(
    "layout,colorspace,pretrained",
    [("original", "rgb", True), ("original", "grey", True), ("nchw", "rgb", False), ("nchw", "grey", False)],
)
def test_closed_form_path_equals_autograd_in_float64(
    layout, colorspace, pretrained, autograd_then_closed_form, backward_twice
):
    """The frozen metric's chunked, hand-written gradient against autograd through ``elementwise``."""
    torch.manual_seed(0)
    c = 3 if colorspace == "rgb" else 1
    size = 64 if pretrained else 16
    metric = A.Adaptive(colorspace=colorspace, layout=layout, pretrained=pretrained, image_size=size, reduction="none")
    if not pretrained:
        with torch.no_grad():
            metric.latent_alpha.normal_()
            metric.latent_scale.normal_()
    metric = metric.double()
    y = torch.rand(9, c, size, size, dtype=torch.float64)
    x = (y + 0.05 * torch.randn_like(y)).clamp(0, 1)
    x[1] = y[1]
    upstream = torch.linspace(0.5, 2.0, 9, dtype=torch.float64)
    (d_ref, g_ref), (d, g) = autograd_then_closed_form(metric, x, y, upstream)
    torch.testing.assert_close(d, d_ref, rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(g, g_ref, rtol=1e-8, atol=1e-12 * g_ref.abs().max().item())
    assert torch.equal(g[1], torch.zeros_like(g[1]))
    # a second backward pass (retain_graph) gives the same gradient again
    torch.testing.assert_close(*backward_twice(metric, x, y))


# ---------------------------------------------------------------------------------------------------
# percept.functional.adaptive: the one formula (the module and OriginalAdaptive wrap it)
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("colorspace", ["RGB", "LA"])
def test_functional_with_the_trained_weights_equals_the_original(golden, golden_pairs, colorspace):
    ref = golden["czolbe"][f"Adaptive/{colorspace}"]
    inp, target = golden_pairs["rgb" if colorspace == "RGB" else "grey"]
    kwargs = A.Adaptive(colorspace=colorspace).functional_kwargs() | {"reduction": "sum"}
    x = inp.clone().requires_grad_(True)
    total = F.adaptive(x, target, **kwargs)
    total.backward()
    assert total.item() == pytest.approx(ref["sum"].item(), rel=1e-5)
    assert ((x.grad - ref["grad_of_sum"]).norm() / ref["grad_of_sum"].norm()).item() < 1e-5


@pytest.mark.parametrize("layout", ["original", "nchw"])
@pytest.mark.parametrize("channels", [3, 1])
def test_functional_defaults_are_alpha_and_scale_one(layout, channels):
    """alpha = c = 1 (the original's initialisation) against the numpy/scipy restatements above."""
    inp, target = _pair(2, channels, 8, 6, dtype=torch.float64)
    residual = (inp - target).numpy()
    if layout == "original":
        ref = _per_image_alpha1_ref(_original_pipeline_ref(np.repeat(residual, 3 // channels, axis=1)))
    else:
        ref = _per_image_alpha1_ref(_nchw_pipeline_ref(residual))
    np.testing.assert_allclose(F.adaptive(inp, target, layout=layout, reduction="none").numpy(), ref, rtol=1e-12)


def test_functional_input_errors():
    x, y = _pair(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 2\]"):
        F.adaptive(x, y, alpha=2.5)
    with pytest.raises(ValueError, match="scale must be > 0"):
        F.adaptive(x, y, scale=torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="alpha has shape"):
        F.adaptive(x, y, alpha=torch.ones(2, 4, 4))
    with pytest.raises(ValueError, match="layout"):
        F.adaptive(x, y, layout="nhwc")
    with pytest.raises(ValueError, match="channels"):
        F.adaptive(x[:, :2], y[:, :2])
    with pytest.raises(ValueError, match="reduction"):
        F.adaptive(x, y, reduction="max")


@pytest.mark.parametrize("layout,channels", [("original", 3), ("original", 1), ("nchw", 3), ("nchw", 1)])
def test_functional_gradcheck_and_gradgradcheck(layout, channels):
    """First and second derivatives w.r.t. input, target, alpha and scale against finite differences."""
    inp, target = _pair(2, channels, 4, 3, dtype=torch.float64, seed=7)
    c = 3 if layout == "original" else channels
    alpha = torch.linspace(0.05, 1.95, c * 12, dtype=torch.float64).reshape(c, 4, 3)
    scale = torch.linspace(0.3, 2.0, c * 12, dtype=torch.float64).reshape(c, 4, 3)

    def f(x, y, a, s):
        return F.adaptive(x, y, alpha=a, scale=s, layout=layout, reduction="sum")

    inputs = tuple(t.clone().requires_grad_(True) for t in (inp, target, alpha, scale))
    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)


@pytest.mark.parametrize(
    "layout,colorspace,pretrained",
    [("original", "rgb", True), ("original", "grey", True), ("nchw", "rgb", False), ("nchw", "grey", False)],
)
@pytest.mark.parametrize("strategy", ["chunked", "batched"])
def test_module_fast_path_equals_autograd_through_the_functional(layout, colorspace, pretrained, strategy):
    """The frozen module's closed-form gradient (chunks) against autograd through percept.functional.adaptive;
    and its gradient is differentiable (double backward) with the functional's second derivatives."""
    torch.manual_seed(1)
    c = 3 if colorspace == "rgb" else 1
    size = 64 if pretrained else 12
    metric = A.Adaptive(colorspace=colorspace, layout=layout, pretrained=pretrained, image_size=size,
                        reduction="none", strategy=strategy)
    if not pretrained:
        with torch.no_grad():
            metric.latent_alpha.normal_()
            metric.latent_scale.normal_()
    metric = metric.double()
    y = torch.rand(9, c, size, size, dtype=torch.float64)
    x = (y + 0.05 * torch.randn_like(y)).clamp(0, 1)
    upstream = torch.linspace(0.5, 2.0, 9, dtype=torch.float64)
    results = []
    for fn in (metric, lambda a, b: F.adaptive(a, b, **metric.functional_kwargs())):
        xg = x.clone().requires_grad_(True)
        d = fn(xg, y)
        (g,) = torch.autograd.grad((d * upstream).sum(), xg, create_graph=True)
        (gg,) = torch.autograd.grad(g.square().sum(), xg)
        results.append((d.detach(), g.detach(), gg))
    (d, g, gg), (d_ref, g_ref, gg_ref) = results
    torch.testing.assert_close(d, d_ref, rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(g, g_ref, rtol=1e-8, atol=1e-12 * g_ref.abs().max().item())
    torch.testing.assert_close(gg, gg_ref, rtol=1e-8, atol=1e-12 * gg_ref.abs().max().item())


@pytest.mark.parametrize("strategy", ["chunked", "batched"])
def test_adaptive_under_bfloat16_autocast_computes_in_float32(strategy):
    """Autocast would run the DCT's matrix products in bfloat16; the metric turns it off for its formula."""
    metric = get_metric("adaptive", reduction="none", strategy=strategy)
    g = torch.Generator().manual_seed(3)
    x, y = torch.rand(4, 3, 64, 64, generator=g), torch.rand(4, 3, 64, 64, generator=g)
    expected = metric(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = metric(x, y)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)
