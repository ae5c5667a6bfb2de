"""percept.functional.watson_dct / watson_dft: the one formula of the Watson metrics.

References: the golden outputs of the original code (``tests/golden``) and the values of specs/czolbe.md §15;
then the formula's own derivatives (gradcheck / gradgradcheck against finite differences), and the metric
modules' fast path (closed-form gradient, chunks, random shift) against autograd through this function.
"""

from __future__ import annotations

import pytest
import torch
from test_watson import SPEC_VALUES, _spec_images

import percept
from percept import LossProvider
from percept.functional import watson_dct, watson_dft
from percept.metrics.watson import WatsonDCT, WatsonDFT
from percept.transforms import random_offsets

FUNCTIONS = {"Watson-dct": watson_dct, "Watson-fft": watson_dft, "watson-dct": watson_dct, "watson-dft": watson_dft}
CLASSES = {watson_dct: WatsonDCT, watson_dft: WatsonDFT}


def _rel(a, b):
    return ((a - b).abs() / b.abs()).max().item()


def _pair(n=2, c=3, h=16, w=16, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.rand(n, c, h, w, generator=g, dtype=torch.float64) * 0.8 + 0.1
    x = (y + 0.05 * torch.randn(y.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    return x.to(dtype), y.to(dtype)


# --------------------------------------------------------------------------------------------------- references


@pytest.mark.parametrize("name", ["Watson-dct", "Watson-fft"])
@pytest.mark.parametrize("space", ["RGB", "LA"])
def test_functional_with_the_trained_weights_equals_the_original(golden, name, space):
    """The original's values and gradients on the 8 golden pairs (its batch-pooled luminance)."""
    ref = golden["czolbe"][f"{name}/{space}"]
    key = "rgb" if space == "RGB" else "grey"
    x, y = golden[f"{key}_input"].clone().requires_grad_(True), golden[f"{key}_target"]
    kwargs = LossProvider().get_loss_function(name, space, reduction="none", deterministic=True).functional_kwargs()
    assert kwargs["batch_luminance"] is True and kwargs["luminance_floor"] == 0
    d = FUNCTIONS[name](x, y, **kwargs)
    assert _rel(d, ref["none"]) < 1e-4
    d.sum().backward()
    for k in range(6):  # the well-conditioned pairs, along the distortion (see test_watson.py)
        direction = (x - y)[k].detach()
        ours, theirs = (x.grad[k] * direction).sum(), (ref["grad_of_sum"][k] * direction).sum()
        assert abs(ours - theirs) / abs(theirs) < 1e-4


@pytest.mark.parametrize("name", ["Watson-dct", "Watson-fft"])
@pytest.mark.parametrize("space", ["RGB", "LA"])
def test_per_image_luminance_equals_the_original_on_each_pair_alone(golden, name, space):
    ref = golden["czolbe"][f"{name}/{space}"]["sum_each_alone"]
    key = "rgb" if space == "RGB" else "grey"
    kwargs = percept.get_metric(name.lower(), colorspace=key, reduction="none").functional_kwargs()
    assert _rel(FUNCTIONS[name](golden[f"{key}_input"], golden[f"{key}_target"], **kwargs), ref) < 1e-4


@pytest.mark.parametrize("name,space,pretrained,expected", [v for v in SPEC_VALUES if not v[2]])
def test_defaults_are_the_papers_initial_values(name, space, pretrained, expected):
    """specs/czolbe.md §15: the original with its untrained parameters (batch-pooled luminance)."""
    x, y = _spec_images(3 if space == "RGB" else 1)
    d = FUNCTIONS[name](x, y, batch_luminance=True, reduction="none")
    assert torch.allclose(d, torch.tensor(expected), rtol=2e-5)


def test_reductions_and_input_errors():
    x, y = _pair(3, 3, 16, 16, torch.float32)
    per_image = watson_dft(x, y, reduction="none")
    assert per_image.shape == (3,)
    torch.testing.assert_close(watson_dft(x, y, reduction="sum"), per_image.sum())
    torch.testing.assert_close(watson_dft(x, y), per_image.mean())
    with pytest.raises(ValueError, match="multiples of 8"):
        watson_dct(x[..., :12], y[..., :12])
    with pytest.raises(ValueError, match="channels"):
        watson_dct(x[:, :2], y[:, :2])
    with pytest.raises(ValueError, match="offsets"):
        watson_dct(x, y, offsets=(8, 0))
    with pytest.raises(ValueError, match="alpha"):
        watson_dct(x, y, alpha=torch.ones(2))
    with pytest.raises(ValueError, match="channel_weights"):
        watson_dct(x[:, :1], y[:, :1], channel_weights=torch.ones(1))
    with pytest.raises(ValueError, match="phase_eps"):
        watson_dft(x, y, phase_eps=-1.0)
    with pytest.raises(ValueError, match="beta must be"):
        watson_dft(x, y, beta=None)
    with pytest.raises(ValueError, match="reduction"):
        watson_dft(x, y, reduction="max")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        watson_dft(x * 3, y)


def test_offsets_translate_both_images_with_replicated_edges():
    x, y = _pair(2, 3, 32, 32)
    pad = torch.nn.functional.pad
    xs = pad(x, (4, 4, 4, 4), mode="replicate")[..., 1:33, 6:38]
    ys = pad(y, (4, 4, 4, 4), mode="replicate")[..., 1:33, 6:38]
    for fn in (watson_dct, watson_dft):
        torch.testing.assert_close(fn(x, y, offsets=(1, 6), reduction="none"), fn(xs, ys, reduction="none"))
        torch.testing.assert_close(fn(x, y, offsets=(4, 4), reduction="none"), fn(x, y, reduction="none"))


# --------------------------------------------------------------------------------------------------- derivatives

#: options of the formula to differentiate: the random shift, batch luminance, the floor, phase_eps
OPTIONS = [
    {},
    {"offsets": (2, 5)},
    {"batch_luminance": True, "luminance_floor": 0.3},
]


@pytest.mark.parametrize("fn", [watson_dct, watson_dft], ids=["dct", "dft"])
@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("options", OPTIONS, ids=["plain", "shift", "batch-floor"])
def test_gradcheck_and_gradgradcheck_in_float64(fn, channels, options):
    """First and second derivatives w.r.t. input, target and parameters against finite differences (the
    fast mode of gradcheck: random directions)."""
    x, y = _pair(2, channels, 16, 8)
    extra = {"phase_eps": 0.05} if fn is watson_dft and "offsets" in options else {}
    alpha = torch.full((channels,), 0.4, dtype=torch.float64)
    beta = torch.full((channels,), 2.5 if fn is watson_dct else 1.5, dtype=torch.float64)

    def f(a, b, al, be):
        return fn(a, b, alpha=al, beta=be, reduction="sum", **options, **extra)

    inputs = tuple(t.clone().requires_grad_(True) for t in (x, y, alpha, beta))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, fast_mode=True)
    assert torch.autograd.gradgradcheck(f, inputs, eps=1e-6, atol=1e-4, rtol=1e-3, fast_mode=True)


@pytest.mark.parametrize("cls", [WatsonDCT, WatsonDFT])
@pytest.mark.parametrize("deterministic", [True, False])
def test_the_fast_path_gradient_is_differentiable(cls, deterministic):
    """Double backward through a frozen metric (a gradient penalty through a perceptual loss): the fast path's
    gradient has a graph, and its derivatives are those of the formula (gradgradchecked above)."""
    x, y = _pair(3, 3, 16, 16, seed=1)
    metric = cls(colorspace="rgb", reduction="sum", deterministic=deterministic).double()
    offsets = None if deterministic else random_offsets(8, torch.Generator().manual_seed(7))
    kwargs = metric.functional_kwargs() | {"offsets": offsets, "reduction": "sum"}
    fn = watson_dct if cls is WatsonDCT else watson_dft

    def penalty(through_metric):
        xg = x.clone().requires_grad_(True)
        metric.generator = torch.Generator().manual_seed(7)
        d = metric(xg, y) if through_metric else fn(xg, y, **kwargs)
        (g,) = torch.autograd.grad(d, xg, create_graph=True)
        (gg,) = torch.autograd.grad(g.square().sum(), xg)
        return g.detach(), gg

    (g_fast, gg_fast), (g_ref, gg_ref) = penalty(True), penalty(False)
    torch.testing.assert_close(g_fast, g_ref, rtol=1e-9, atol=1e-12 * g_ref.abs().max().item())
    torch.testing.assert_close(gg_fast, gg_ref, rtol=1e-9, atol=1e-12 * gg_ref.abs().max().item())


# --------------------------------------------------------------------------------------------------- the modules


FAST_PATH_OPTIONS = {
    "default": {},
    "shift": {"deterministic": False},
    "batch-floor": {"batch_luminance": True, "luminance_floor": 1 / 255},
    "shift-phase-eps": {"phase_eps": 2e-3, "deterministic": False},
}
FAST_PATH_CASES = [
    pytest.param(cls, options, id=f"{cls.__name__}-{label}")
    for cls in (WatsonDCT, WatsonDFT)
    for label, options in FAST_PATH_OPTIONS.items()
    if cls is WatsonDFT or "phase_eps" not in options
]


@pytest.mark.parametrize("cls,options", FAST_PATH_CASES)
@pytest.mark.parametrize("space", ["rgb", "grey"])
@pytest.mark.parametrize("strategy", ["chunked", "batched"])
def test_the_module_fast_path_equals_autograd_through_the_functional(cls, options, space, strategy):
    """Values and input gradients of the frozen module (closed-form gradient, chunks of two images, the shift
    applied inside the chunks) against autograd through percept.functional, in float64."""
    c = 3 if space == "rgb" else 1
    x, y = _pair(5, c, 32, 40, seed=2)
    x[1] = y[1]  # identical pair: zero gradient (but for phase_eps, whose gate moves with |z1|)
    x[2, :, :8] = y[2, :, :8]  # identical blocks
    y[3, :, 8:16, 8:16] = 0.5  # a flat target block
    metric = cls(colorspace=space, reduction="none", strategy=strategy, **options).double()
    metric.chunk_pixels = 2 * c * 32 * 40
    metric.generator = torch.Generator().manual_seed(3)
    offsets = None if metric.deterministic else random_offsets(8, torch.Generator().manual_seed(3))
    fn = watson_dct if cls is WatsonDCT else watson_dft
    upstream = torch.linspace(0.5, 2.0, 5, dtype=torch.float64)

    xg = x.clone().requires_grad_(True)
    d = metric(xg, y)
    assert type(d.grad_fn).__name__ == "FrozenPerImageBackward"
    (d * upstream).sum().backward()
    xr = x.clone().requires_grad_(True)
    d_ref = fn(xr, y, **metric.functional_kwargs(), offsets=offsets)
    (d_ref * upstream).sum().backward()

    torch.testing.assert_close(d, d_ref, rtol=1e-10, atol=0)
    torch.testing.assert_close(xg.grad, xr.grad, rtol=1e-7, atol=1e-9 * xr.grad.abs().max().item())
    if "phase_eps" not in options:
        assert torch.equal(xg.grad[1], torch.zeros_like(xg.grad[1]))


@pytest.mark.parametrize("cls", [WatsonDCT, WatsonDFT])
def test_functional_equals_module_in_float32_and_under_autocast(golden, cls):
    x, y = golden["rgb_input"][:4], golden["rgb_target"][:4]
    metric = cls(colorspace="rgb", reduction="none")
    fn = watson_dct if cls is WatsonDCT else watson_dft
    torch.testing.assert_close(metric(x, y), fn(x, y, **metric.functional_kwargs()), rtol=1e-6, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = fn(x.bfloat16(), y.bfloat16(), **metric.functional_kwargs())
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, metric(x.bfloat16(), y.bfloat16()), rtol=1e-6, atol=0)


def test_trainable_module_gets_parameter_gradients_through_the_functional(golden):
    """A trainable metric in eval mode (dropout off) is the functional with its parameters: the same
    parameter gradients."""
    x, y = golden["rgb_input"][:3], golden["rgb_target"][:3]
    metric = WatsonDFT(colorspace="rgb", reduction="sum", trainable=True).eval()
    metric(x, y).backward()
    grads = {name: p.grad.clone() for name, p in metric.named_parameters()}
    metric.zero_grad()
    watson_dft(x, y, **metric.functional_kwargs()).backward()
    for name, p in metric.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], rtol=1e-5, atol=1e-6 * grads[name].abs().max().item())
