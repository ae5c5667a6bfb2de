"""The contract of every registered metric, checked by looping over :data:`percept.registry.METRICS` (as
torchmetrics' metric tester does): a metric added to the registry is covered without editing this file.

Each check compares the metric with something independent of its own code: reductions with the per-image
values and with each image computed alone, gradients with central finite differences of the value in float64,
float32 with float64 and half precision, identical images with the value the record documents, bad input
with the error the README promises, options with the options the constructor really takes.

Offline, a metric whose defaults need weights this machine lacks (ImageNet VGG-16; Watson-VGG's trained file)
is checked on a random backbone (``backbone_weights="random"``), else with its initial values
(``pretrained=False``); :func:`test_defaults_build_or_say_what_is_missing` checks that the defaults then fail
with a clear message, and fails in CI, where every asset must be present.
"""

from __future__ import annotations

import inspect
import re

import pytest
import torch

from percept import registry
from percept.assets import MissingAssetError
from percept.checks import LAB_METRICS

NAMES = list(registry.METRICS)
FAMILIES = {"pixel", "ssim", "watson", "adaptive", "lpips", "deeploss", "watson-vgg", "dps", "elpips"}
#: tried in order until the metric builds here (see the module docstring)
SUBSTITUTES = ({}, {"backbone_weights": "random"}, {"pretrained": False})
N = 2

_SUBSTITUTE: dict[str, dict] = {}
_BUILT: dict[tuple, torch.nn.Module] = {}


def substitute(name: str) -> dict:
    """The options that let ``name`` build on this machine: {} (its defaults) or a substitute above."""
    if name not in _SUBSTITUTE:
        error = None
        for extra in SUBSTITUTES:
            if not all(registry.takes(name, k) for k in extra):
                continue
            try:
                _BUILT[(name, tuple(sorted(extra.items())))] = _seeded(name, **extra)
            except MissingAssetError as err:
                error = err
                continue
            _SUBSTITUTE[name] = extra
            break
        else:
            raise error  # conftest: a skip naming the missing file (a failure in CI)
    return _SUBSTITUTE[name]


def _seeded(name: str, **options) -> torch.nn.Module:
    torch.manual_seed(0)  # the same random backbone in every build (a substitute, or pretrained=False)
    return registry.get_metric(name, **options)


def build(name: str, fresh: bool = False, **options) -> torch.nn.Module:
    """Metric ``name`` with ``options`` (plus the offline substitute); cached unless ``fresh`` (to move it)."""
    options = substitute(name) | options
    key = (name, tuple(sorted(options.items())))
    if fresh:
        return _seeded(name, **options)
    if key not in _BUILT:
        _BUILT[key] = _seeded(name, **options)
    return _BUILT[key]


def repeatable(name: str) -> dict:
    """Options that make ``name`` deterministic (E-LPIPS's transformations off) for value comparisons."""
    return {"deterministic": True} if registry.record(name).stochastic else {}


def size(name: str) -> int:
    """Image side for the checks: small (32 px), or what the metric's definition needs (MS-SSIM's 161 px,
    the 64x64 images Adaptive's per-coefficient parameters were trained on)."""
    fixed = registry.options(name).get("image_size")
    if fixed is not None:
        return fixed if isinstance(fixed, int) else fixed[0]
    return max(32, registry.record(name).min_size or 0)


def images(name: str, channels: int = 3, seed: int = 0, dtype=torch.float32, lo: float = 0.0, hi: float = 1.0):
    """Two independent batches (N, channels, S, S) with values in [lo, hi]."""
    g = torch.Generator().manual_seed(seed)
    s = size(name)
    x = lo + (hi - lo) * torch.rand(N, channels, s, s, generator=g, dtype=torch.float64)
    y = lo + (hi - lo) * torch.rand(N, channels, s, s, generator=g, dtype=torch.float64)
    return x.to(dtype), y.to(dtype)


# ------------------------------------------------------------------------------------------- the records
def test_names_aliases_and_original_names_are_unique():
    names = list(registry.METRICS) + list(registry.aliases())
    assert len(names) == len(set(names))
    assert all(n == n.lower() and "_" not in n for n in names)
    for alias, name in registry.aliases().items():
        assert registry.canonical_name(alias.upper().replace("-", "_")) == name
    originals = [o.lower() for r in registry.METRICS.values() for o in r.original]
    assert len(originals) == len(set(originals))
    assert set(LAB_METRICS) == {n for n, r in registry.METRICS.items() if "lab" in r.colorspaces}
    with pytest.raises(KeyError, match="unknown metric 'no-such-metric'.*watson-dft"):
        registry.get_metric("no-such-metric")


@pytest.mark.parametrize("name", NAMES)
def test_record_agrees_with_the_constructor(name):
    """The record's facts point at real constructor options, and every common option a metric has
    defaults to the one documented default (deterministic: False only for a stochastic record)."""
    rec = registry.METRICS[name]
    assert rec.name == name and rec.family in FAMILIES
    assert rec.description and "\n" not in rec.description
    params = registry.options(name)
    cls_params = set(inspect.signature(registry.metric_class(name).__init__).parameters)
    assert set(rec.fixed) <= cls_params
    assert {"colorspace", "reduction"} <= set(params)
    assert not {"style", "image_shape", "device"} & cls_params  # get_metric's own keywords
    for option, default in registry.COMMON_OPTIONS.items():
        if option in params:
            want = (not rec.stochastic) if option == "deterministic" else default
            assert params[option] == want, f"{name}: {option} defaults to {params[option]!r}, not {want!r}"
    assert rec.stochastic == (params.get("deterministic") is False)
    assert set(rec.paper_options) <= set(params)
    assert rec.weights_option is None or rec.weights_option in params
    assert set(rec.colorspaces) <= {"rgb", "grey", "lab"} and {"rgb", "grey"} <= set(rec.colorspaces)
    assert rec.units in ("image", "pixels", "batch-mean")
    if rec.tuned_file is not None:
        assert registry.tuned_file(name, "grey").startswith("gray_") and registry.tuned_file(name, "rgb") != (
            registry.tuned_file(name, "grey")
        )


# --------------------------------------------------------------------------------------------- building
@pytest.mark.parametrize("name", NAMES)
def test_defaults_build_or_say_what_is_missing(name):
    """``get_metric(name)`` builds frozen and in eval mode; where weights are missing here, the error names
    the file, where it looked and how to fetch it (and the offline substitute builds)."""
    try:
        metric = registry.get_metric(name)
    except MissingAssetError as err:  # e.g. ImageNet VGG-16, which no offline copy provides (CI included)
        message = str(err)
        assert re.search(r"\.(pth|npy)\b", message) and "Looked in" in message, message
        assert "fetch" in message or "make assets" in message, message
        metric = build(name)
        assert substitute(name), f"{name}: defaults fail with a missing asset, yet no substitute was needed"
    assert not metric.training
    assert not any(p.requires_grad for p in metric.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_options_a_metric_does_not_take_raise(name):
    rec = registry.METRICS[name]
    takes = registry.options(name)
    with pytest.raises(registry.MetricOptionError, match=rf"{name}.*no_such_option.*options are: .*colorspace"):
        registry.get_metric(name, no_such_option=1)
    assert issubclass(registry.MetricOptionError, ValueError)
    wrong = {"deterministic": False, "trainable": True, "strategy": "batched"}
    for option, value in wrong.items():
        if option not in takes:
            with pytest.raises(ValueError, match=rf"{name}.*{option}"):
                registry.get_metric(name, **{option: value})
    for option, value in rec.fixed.items():
        with pytest.raises(ValueError, match=rf"{name}.*fixes {option}"):
            registry.get_metric(name, **{option: f"not-{value}"})
    # the values that already describe a metric without the option are accepted, together
    neutral = {k: v for k, v in {"deterministic": True, "trainable": False, "strategy": "auto"}.items() if k not in takes}
    if neutral:
        metric = build(name, **neutral)
        x, y = images(name)
        with torch.no_grad():
            assert metric(x, y).shape == ()


@pytest.mark.parametrize("name", NAMES)
def test_trainable_and_frozen(name):
    assert not any(p.requires_grad for p in build(name).parameters())
    if registry.takes(name, "trainable"):
        tuned = build(name, trainable=True, fresh=True)
        assert any(p.requires_grad for p in tuned.parameters())


@pytest.mark.parametrize("name", [n for n in NAMES if registry.METRICS[n].paper_options])
def test_paper_style_builds(name):
    c = 3
    metric = build(name, style="paper", image_shape=(c, size(name), size(name)), reduction="none")
    x, y = images(name)
    with torch.no_grad():
        assert torch.isfinite(metric(x, y)).all()
    if registry.IMAGE_SIZE in registry.METRICS[name].paper_options.values():
        with pytest.raises(ValueError, match="image_shape"):
            registry.get_metric(name, style="paper")


# ------------------------------------------------------------------------------------------ the values
@pytest.mark.parametrize("name", NAMES)
def test_reductions_and_per_image_values(name):
    """none: (N,), each image's value computed alone; mean and sum: scalars over those values."""
    opts = repeatable(name)
    x, y = images(name)
    with torch.no_grad():
        per_image = build(name, reduction="none", **opts)(x, y)
        mean = build(name, reduction="mean", **opts)(x, y)
        total = build(name, reduction="sum", **opts)(x, y)
        alone = torch.cat([build(name, reduction="none", **opts)(x[i : i + 1], y[i : i + 1]) for i in range(N)])
    assert per_image.shape == (N,) and mean.shape == () and total.shape == ()
    assert per_image.dtype.is_floating_point and torch.isfinite(per_image).all()
    torch.testing.assert_close(alone, per_image, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(mean, per_image.mean(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(total, per_image.sum(), rtol=1e-5, atol=1e-7)
    assert not torch.allclose(per_image[0], per_image[1])  # two different pairs: not a constant


@pytest.mark.parametrize("name", NAMES)
def test_identical_images(name):
    """d(x, x) is the record's value (0 for most; PSNR 100 dB); where the record says None, a floor from
    epsilon terms: the same for any image and below d(x, y). Stochastic metrics as built by default."""
    rec = registry.METRICS[name]
    metric = build(name, reduction="none")
    x, y = images(name)
    with torch.no_grad():
        torch.manual_seed(0)
        same_x, same_y, different = metric(x, x), metric(y, y), metric(x, y)
    if rec.identical is not None:
        torch.testing.assert_close(same_x, torch.full_like(same_x, rec.identical), rtol=0, atol=1e-5)
    else:
        torch.testing.assert_close(same_x, same_y, rtol=1e-5, atol=0)
        assert (same_x > 0).all() and (same_x < different).all()


@pytest.mark.parametrize("name", NAMES)
def test_randomness_is_what_the_record_says(name):
    rec = registry.METRICS[name]
    metric = build(name, reduction="none")
    x, y = images(name)
    with torch.no_grad():
        torch.manual_seed(1)
        first = metric(x, y)
        torch.manual_seed(1)
        again = metric(x, y)
        second = metric(x, y)
    assert torch.equal(first, again)  # seeded: the same draws
    assert torch.equal(first, second) != rec.stochastic
    assert registry.is_stochastic(name) == rec.stochastic
    if rec.stochastic:
        det = build(name, reduction="none", deterministic=True)
        with torch.no_grad():
            assert torch.equal(det(x, y), det(x, y))


@pytest.mark.parametrize("name", NAMES)
def test_gradients_are_finite_and_match_finite_differences(name):
    """The input gradient (autograd or a closed form) equals the central difference of the value along the
    gradient's own direction, in float64; float32 gives the same gradient."""
    metric64 = build(name, reduction="sum", fresh=True, **repeatable(name)).to(torch.float64)
    x, y = images(name, dtype=torch.float64, lo=0.25, hi=0.75)
    xg = x.clone().requires_grad_(True)
    metric64(xg, y).backward()
    grad = xg.grad
    assert grad.dtype == torch.float64 and torch.isfinite(grad).all() and grad.abs().max() > 0
    v = grad / grad.abs().max()
    h = 1e-8
    with torch.no_grad():
        fd = (metric64(x + h * v, y) - metric64(x - h * v, y)) / (2 * h)
    assert abs(float((grad * v).sum()) / float(fd) - 1) < 1e-4, (float((grad * v).sum()), float(fd))

    x32 = x.float().requires_grad_(True)
    build(name, reduction="sum", **repeatable(name))(x32, y.float()).backward()
    assert x32.grad.dtype == torch.float32 and torch.isfinite(x32.grad).all()
    cosine = torch.nn.functional.cosine_similarity(x32.grad.double().flatten(), grad.flatten(), dim=0)
    assert cosine > 0.999, f"{name}: float32 and float64 gradients differ (cosine {float(cosine):.5f})"


@pytest.mark.parametrize("name", NAMES)
def test_input_dtypes(name):
    """float64 and half-precision inputs give the float32 value of the same (rounded) numbers: the metric
    computes in float32 or in the input's dtype; the input gradient has the input's dtype."""
    metric = build(name, reduction="none", **repeatable(name))
    x, y = images(name)
    for dtype, rtol in ((torch.float64, 1e-5), (torch.float16, 2e-2), (torch.bfloat16, 5e-2)):
        xd, yd = x.to(dtype).requires_grad_(True), y.to(dtype)
        d = metric(xd, yd)
        with torch.no_grad():
            want = metric(xd.detach().float(), yd.float())
        assert d.dtype in (dtype, torch.float32, torch.float64) and torch.isfinite(d).all()
        torch.testing.assert_close(d.detach().float(), want, rtol=rtol, atol=1e-6)
        d.sum().backward()
        assert xd.grad.dtype == dtype and torch.isfinite(xd.grad.float()).all()


@pytest.mark.parametrize("name", NAMES)
def test_module_moves_with_to(name):
    """``.to(float64)`` computes in float64 (the same value); ``.to(device)`` moves every buffer."""
    opts = repeatable(name)
    x, y = images(name)
    with torch.no_grad():
        want = build(name, reduction="none", **opts)(x, y)
        metric = build(name, reduction="none", fresh=True, **opts)
        assert metric.to("cpu") is metric
        metric = metric.to(torch.float64)
        d = metric(x.double(), y.double())
    assert d.dtype == torch.float64
    torch.testing.assert_close(d.float(), want, rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
@pytest.mark.parametrize("name", NAMES)
def test_cuda_equals_cpu(name):
    opts = repeatable(name)
    x, y = images(name)
    with torch.no_grad():
        want = build(name, reduction="none", **opts)(x, y)
        got = build(name, reduction="none", fresh=True, **opts).to("cuda")(x.cuda(), y.cuda())
    assert got.device.type == "cuda"
    torch.testing.assert_close(got.cpu(), want, rtol=1e-3, atol=1e-5)


# ------------------------------------------------------------------------------------------- the input
@pytest.mark.parametrize("name", NAMES)
def test_colorspaces(name):
    """Every declared colorspace builds and takes its channels ("grey": (N, 1, H, W)); "lab" elsewhere raises."""
    rec = registry.METRICS[name]
    for space in rec.colorspaces:
        x, y = images(name, channels=1 if space == "grey" else 3)
        with torch.no_grad():
            d = build(name, colorspace=space, reduction="none", **repeatable(name))(x, y)
        assert d.shape == (N,) and torch.isfinite(d).all()
    if "lab" not in rec.colorspaces:
        with pytest.raises(ValueError, match="lab"):
            registry.get_metric(name, colorspace="lab", **substitute(name))


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_raises_clearly(name):
    rec = registry.METRICS[name]
    x, y = images(name)
    grey = build(name, colorspace="grey", reduction="none")
    metric = build(name, reduction="none")
    cases = [
        (metric, x[0], y[0], ValueError, "4-D"),
        (metric, x[:, :1], y[:, :1], ValueError, "channel"),
        (grey, x, y, ValueError, "channel"),
        (metric, x * 2, y, ValueError, r"\[0, 1\]"),
        (metric, x - 0.5, y, ValueError, r"\[0, 1\]"),
        (metric, x, y + 1, ValueError, r"\[0, 1\]"),
        (metric, (x * 255).to(torch.uint8), (y * 255).to(torch.uint8), TypeError, "dtype"),
        (metric, x.clone().fill_(float("nan")), y, ValueError, "NaN"),
        (metric, x, y.clone().fill_(float("inf")), ValueError, "inf"),
        (metric, x, y[:1], ValueError, "differ"),
        (metric, x.tolist(), y, TypeError, "Tensor"),
    ]
    with torch.no_grad():
        for m, a, b, error, match in cases:
            with pytest.raises(error, match=match):
                m(a, b)
        tiny = x[..., :2, :2], y[..., :2, :2]
        if rec.min_size == 1:
            assert torch.isfinite(metric(*tiny)).all()
        else:
            with pytest.raises(ValueError, match="2x2"):
                metric(*tiny)


# ---------------------------------------------------------------------------------------------- E-LPIPS
def test_elpips_deterministic_keeps_its_network():
    """deterministic=True turns the randomness off and keeps E-LPIPS's network; the plain LPIPS network of the
    E-LPIPS package is its own option (config="lpips")."""
    for name in [n for n in NAMES if registry.METRICS[n].family == "elpips"]:
        default = build(name)
        det = build(name, deterministic=True)
        lp = build(name, deterministic=True, config="lpips")
        assert det.config == default.config == "elpips" and lp.config == "lpips"
        assert len(det.lins) == len(default.lins) and len(lp.lins) < len(det.lins)
        assert default.stochastic and not det.stochastic
