"""LPIPS, Deeploss, Watson-VGG and DPS against the golden values, the lpips package and the papers' claims."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

import percept
from percept import assets
from percept.backbones import FeatureExtractor, build_backbone
from percept.compat import original_deeploss
from percept.metrics import deep
from percept.metrics.deep import DPS, LPIPS, METHODS, DeepDistance, Deeploss, WatsonVGG

lpips_pkg = pytest.importorskip("lpips")


def _random_state(net: str, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    return build_backbone(net, weights="random").body.state_dict()


def _reference_lpips(net: str, state: dict, **kwargs) -> nn.Module:
    """The lpips 0.1.4 package with the given trunk weights copied into its slices (no download)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = lpips_pkg.LPIPS(net=net, pnet_rand=True, verbose=False, **kwargs)
    for name, slice_ in ref.net.named_children():
        if name.startswith("slice"):
            for idx, module in slice_.named_children():
                module.load_state_dict({k.split(".", 1)[1]: v for k, v in state.items() if k.split(".")[0] == idx})
    return ref.eval()


# ---------------------------------------------------------------------------------------- golden parity
@pytest.mark.parametrize(
    "version, lin, key",
    [("0.1", True, "squeeze/v0.1/lin"), ("0.1", False, "squeeze/v0.1/nolin"), ("0.0", True, "squeeze/v0.0/lin")],
)
def test_lpips_squeeze_golden(golden, golden_pairs, version, lin, key):
    x, y = golden_pairs["rgb"]
    metric = LPIPS(net="squeeze", version=version, lin=lin, reduction="none")
    with torch.no_grad():
        got = metric(x, y)
    torch.testing.assert_close(got, golden["lpips"][key], atol=1e-5, rtol=1e-5)


def test_lpips_squeeze_spatial_map_golden(golden, golden_pairs):
    x, y = golden_pairs["rgb"]
    metric = LPIPS(net="squeeze", spatial=True)
    with torch.no_grad():
        got = metric(x, y)
    assert got.shape == (8, 1, 64, 64)
    torch.testing.assert_close(got, golden["lpips"]["squeeze/v0.1/lin/spatial_map"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("space, pair", [("RGB", "rgb"), ("LA", "grey")])
def test_deeploss_squeeze_golden(golden, golden_pairs, space, pair):
    x, y = golden_pairs[pair]
    ref = golden["czolbe"][f"Deeploss-squeeze/{space}"]
    metric = Deeploss(net="squeeze", colorspace=space, reduction="none")
    with torch.no_grad():
        torch.testing.assert_close(metric(x, y), ref["none"].flatten(), atol=1e-4, rtol=1e-4)
    none = original_deeploss("squeeze", space, "none")
    with torch.no_grad():
        got = none(x, y)
    assert got.shape == (8, 1, 1, 1)
    torch.testing.assert_close(got, ref["none"], atol=1e-4, rtol=1e-4)
    summed = original_deeploss("squeeze", space, "sum")
    xg = x.clone().requires_grad_(True)
    total = summed(xg, y)
    assert total.dim() == 0
    torch.testing.assert_close(total, ref["sum"].reshape(()), atol=1e-4, rtol=1e-4)
    total.backward()
    rel = (xg.grad - ref["grad_of_sum"]).norm() / ref["grad_of_sum"].norm()
    assert rel < 1e-4, rel
    assert not any(p.requires_grad for p in summed.parameters())


# ------------------------------------------------------------------------------- lpips package parity
@pytest.mark.parametrize(
    "net, version, lin, spatial",
    [
        ("alex", "0.1", True, False),
        ("alex", "0.1", False, False),
        ("alex", "0.0", True, False),
        ("alex", "0.1", True, True),
        ("vgg", "0.1", True, False),
        ("vgg", "0.1", False, True),
    ],
)
def test_lpips_package_parity(net, version, lin, spatial):
    state = _random_state(net)
    ref = _reference_lpips(net, state, version=version, lpips=lin, spatial=spatial)
    if lin:  # the package's own linear weights must be the ones we load
        ours_lin = torch.load(
            assets.locate(f"weights/lpips/v{version}/{net}.pth"), map_location="cpu", weights_only=True
        )
        for k, v in ours_lin.items():
            assert torch.equal(ref.state_dict()[k], v)
    metric = LPIPS(net=net, version=version, lin=lin, spatial=spatial, backbone_weights=state, reduction="none")
    torch.manual_seed(1)
    x, y = torch.rand(3, 3, 48, 40), torch.rand(3, 3, 48, 40)
    with torch.no_grad():
        want = ref(x, y, normalize=True)
        got = metric(x, y)
    torch.testing.assert_close(got, want if spatial else want.flatten(), atol=1e-5, rtol=1e-5)


def test_lpips_properties():
    metric = LPIPS(net="squeeze", reduction="none")
    torch.manual_seed(0)
    x, y = torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        dxy, dyx, dxx = metric(x, y), metric(y, x), metric(x, x)
    assert (dxy > 0).all()
    torch.testing.assert_close(dxy, dyx, atol=1e-6, rtol=1e-6)
    assert torch.equal(dxx, torch.zeros(4))
    assert LPIPS.higher_is_better is False
    # reductions
    m_sum = LPIPS(net="squeeze", reduction="sum")
    with torch.no_grad():
        torch.testing.assert_close(m_sum(x, y), dxy.sum())


# -------------------------------------------------------------------------------------- gradients, NaN
def test_normalize_channels_nan_free_at_zero():
    f = torch.zeros(1, 4, 2, 2, requires_grad=True)
    deep.normalize_channels(f).square().sum().backward()
    assert torch.isfinite(f.grad).all()
    g = torch.zeros(1, 4, 2, 2, requires_grad=True)
    (lpips_pkg.normalize_tensor(g) - 1).square().sum().backward()
    assert torch.isnan(g.grad).any()  # the reference's flaw
    h = torch.zeros(1, 4, 2, 2, requires_grad=True)
    (deep.normalize_channels(h) - 1).square().sum().backward()
    assert torch.isfinite(h.grad).all()


def test_fused_functions_gradcheck():
    torch.manual_seed(0)
    f = torch.randn(2, 5, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(deep.normalize_channels, (f,))
    torch.testing.assert_close(deep.normalize_channels(f), f / f.norm(dim=1, keepdim=True))
    u = torch.randn(2, 5, 3, 4, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 5, 3, 4, dtype=torch.float64, requires_grad=True)
    w = torch.rand(1, 5, 1, 1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(deep.squared_difference_mean, (u, v, w))
    assert torch.autograd.gradcheck(lambda a, b: deep.squared_difference_mean(a, b), (u, v))
    want = ((u - v).square() * w).sum(1).mean((1, 2))
    torch.testing.assert_close(deep.squared_difference_mean(u, v, w), want)
    assert torch.autograd.gradcheck(deep.squared_difference_mean, (u[..., 0], v[..., 0], w))  # (N, C, P) inputs


def test_fused_functions_double_backward():
    """The fused backward passes are differentiable again (a gradient penalty through a deep loss)."""
    torch.manual_seed(0)
    f = torch.randn(2, 5, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(deep.normalize_channels, (f,))
    u = torch.randn(2, 5, 3, 4, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 5, 3, 4, dtype=torch.float64, requires_grad=True)
    w = torch.rand(1, 5, 1, 1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(deep.squared_difference_mean, (u, v, w))
    assert torch.autograd.gradgradcheck(lambda a, b: deep.squared_difference_mean(a, b), (u, v))
    from percept.backbones import StemConv2d

    stem = StemConv2d.from_conv(nn.Conv2d(3, 4, 5, stride=2, padding=2).double())
    x = torch.rand(2, 3, 11, 9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(stem, (x,))


@pytest.mark.parametrize("net", ["alex", "squeeze"])
def test_gradient_penalty_through_lpips_equals_the_lpips_package(net):
    """d/dx ||d LPIPS(x, y) / dx||^2 (double backward through the fused backward passes and the stem
    convolution) equals the lpips package's, which is plain autograd, given the same weights."""
    state = _random_state(net)
    ref = _reference_lpips(net, state).double()
    metric = LPIPS(net=net, backbone_weights=state, reduction="sum").double()
    torch.manual_seed(2)
    x0, y = torch.rand(2, 3, 64, 64, dtype=torch.float64), torch.rand(2, 3, 64, 64, dtype=torch.float64)

    def penalty_gradient(distance):
        x = x0.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(distance(x).sum(), x, create_graph=True)
        (gg,) = torch.autograd.grad(g.square().sum(), x)
        return g.detach(), gg

    g_ours, gg_ours = penalty_gradient(lambda x: metric(x, y))
    g_ref, gg_ref = penalty_gradient(lambda x: ref(x, y, normalize=True))
    # eps inside the square root (ours) or added to the norm (lpips): a difference of ~1e-10 relative to the
    # features, so the comparison is relative to each tensor's largest element
    for ours, want in ((g_ours, g_ref), (gg_ours, gg_ref)):
        scale = want.abs().max().item()
        assert scale > 0
        torch.testing.assert_close(ours, want, rtol=0, atol=1e-6 * scale)


def test_gradients_finite_at_identity_and_zero_features():
    torch.manual_seed(0)
    metric = LPIPS(net="squeeze", pretrained=False)
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    metric(x, x.detach().clone()).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().max() == 0
    # kill the first conv: every tapped feature vector of layer 0 is exactly zero
    with torch.no_grad():
        metric.backbone.body[0].bias.fill_(-1e4)
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    y = torch.rand(2, 3, 32, 32)
    metric(x, y).backward()
    assert torch.isfinite(x.grad).all()
    black = torch.zeros(1, 3, 32, 32, requires_grad=True)
    LPIPS(net="squeeze", pretrained=False)(black, torch.ones(1, 3, 32, 32)).backward()
    assert torch.isfinite(black.grad).all()


def test_gradcheck_float64():
    torch.manual_seed(0)
    metric = LPIPS(net="squeeze", pretrained=False, reduction="sum").double()
    assert all(p.dtype == torch.float64 for p in metric.parameters())  # .to() moves the backbone (P11)
    y = torch.rand(1, 3, 20, 20, dtype=torch.float64)
    x = (y + 0.1 * torch.randn_like(y)).clamp(0.05, 0.95).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: metric(a, y), (x,), eps=1e-6, atol=1e-5, fast_mode=True)
    dps = DPS(net="squeeze", method="spatial+sort", pretrained=False, reduction="sum").double()
    assert torch.autograd.gradcheck(lambda a: dps(a, y), (x,), eps=1e-6, atol=1e-5, fast_mode=True)


# ------------------------------------------------------------------------------ weights and modes
def test_strict_linear_weight_loading():
    good = torch.load(assets.locate("weights/lpips/v0.1/squeeze.pth"), map_location="cpu", weights_only=True)
    LPIPS(net="squeeze", pretrained=False, lin_weights=good)
    # the use_dropout=False layout (model.0) that the reference silently ignored is loaded too
    m0 = LPIPS(
        net="squeeze", pretrained=False, lin_weights={k.replace("model.1", "model.0"): v for k, v in good.items()}
    )
    torch.testing.assert_close(m0.distance.lins[3].weight, good["lin3.model.1.weight"])
    partial = {k: v for k, v in good.items() if not k.startswith("lin6")}
    with pytest.raises(RuntimeError, match="missing"):
        LPIPS(net="squeeze", pretrained=False, lin_weights=partial)
    with pytest.raises(RuntimeError, match="unexpected"):
        LPIPS(net="squeeze", pretrained=False, lin_weights={**good, "net.slice1.0.weight": torch.zeros(1)})
    alex = torch.load(assets.locate("weights/lpips/v0.1/alex.pth"), map_location="cpu", weights_only=True)
    with pytest.raises(RuntimeError):
        LPIPS(net="squeeze", pretrained=False, lin_weights=alex)


def test_pretrained_missing_weights_raise(tmp_path, monkeypatch):
    monkeypatch.setenv("PERCEPT_ASSETS", str(tmp_path))
    monkeypatch.setenv("PERCEPT_CACHE", str(tmp_path))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(assets.MissingAssetError):
        LPIPS(net="alex")  # no ImageNet AlexNet in these folders: never silently random
    with pytest.raises(assets.MissingAssetError):
        Deeploss(net="squeeze")
    with pytest.raises(assets.MissingAssetError, match="watson_vgg"):
        WatsonVGG()


def test_dropout_only_when_trainable_and_training():
    torch.manual_seed(0)
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    frozen = LPIPS(net="squeeze", pretrained=False, reduction="none").train()
    assert not any(p.requires_grad for p in frozen.parameters())
    assert torch.equal(frozen(x, y), frozen(x, y))
    trainable = LPIPS(net="squeeze", pretrained=False, trainable=True, reduction="none")
    lin_params = [p for p in trainable.parameters() if p.requires_grad]
    assert len(lin_params) == 7 and all(p.shape[0] == 1 for p in lin_params)
    assert torch.equal(trainable(x, y), trainable(x, y))  # constructed in eval mode
    trainable.train()
    assert not trainable.backbone.training
    assert not torch.equal(trainable(x, y), trainable(x, y))
    trainable(x, y).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lin_params)
    trainable.eval().zero_grad()
    trainable(x, y).sum().backward()  # the fused path gives the linear weights' gradient too
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lin_params)


def test_state_dict_and_device_move():
    metric = LPIPS(net="squeeze", pretrained=False)
    keys = metric.state_dict().keys()
    assert any(k.startswith("distance.backbone.body.") for k in keys)
    assert "distance.lins.0.weight" in keys
    metric.to(torch.float64)
    assert all(t.dtype == torch.float64 for t in metric.state_dict().values() if t.is_floating_point())


def test_target_cache():
    torch.manual_seed(0)
    state = _random_state("squeeze")
    plain = LPIPS(net="squeeze", pretrained=False, backbone_weights=state, reduction="none")
    cached = LPIPS(net="squeeze", pretrained=False, backbone_weights=state, reduction="none", cache_target=True)
    seen = []
    cached.backbone.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    y = torch.rand(3, 3, 32, 32)
    for _ in range(3):
        x = torch.rand(3, 3, 32, 32)
        torch.testing.assert_close(cached(x, y), plain(x, y))
    assert seen == [3, 3, 3, 3]  # target once, then only the inputs
    y.mul_(0.5)  # in-place change: the cache notices
    torch.testing.assert_close(cached(x, y), plain(x, y))
    seen.clear()
    plain.backbone.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    with torch.no_grad():
        plain(x, y)
    assert seen == [6]  # input and target in one batched pass


# ---------------------------------------------------------------------------------------------- DPS
def test_dps_spatial_equals_lpips_baseline():
    state = _random_state("alex")
    x, y = torch.rand(2, 3, 40, 40), torch.rand(2, 3, 40, 40)
    dps = DPS(net="alex", method="spatial", channel_norm=True, backbone_weights=state, reduction="none")
    base = LPIPS(net="alex", lin=False, backbone_weights=state, reduction="none")
    ref = _reference_lpips("alex", state, lpips=False)
    with torch.no_grad():
        torch.testing.assert_close(dps(x, y), base(x, y), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(dps(x, y), ref(x, y, normalize=True).flatten(), atol=1e-5, rtol=1e-5)


def _pointwise_distance(branches, channel_norm=True) -> DeepDistance:
    torch.manual_seed(0)
    children = [("0", nn.Conv2d(3, 8, 1)), ("1", nn.ReLU()), ("2", nn.Conv2d(8, 16, 1)), ("3", nn.ReLU())]
    return DeepDistance(
        FeatureExtractor(children, (1, 3), name="pointwise"), branches=branches, channel_norm=channel_norm
    )


@pytest.mark.parametrize("channel_norm", [True, False])
def test_sort_and_mean_invariant_to_permuting_positions(channel_norm):
    # a pointwise backbone: permuting the pixels permutes every feature map's positions exactly
    torch.manual_seed(1)
    x, y = torch.rand(2, 3, 12, 12), torch.rand(2, 3, 12, 12)
    perm = torch.randperm(144)
    xp = x.flatten(2)[..., perm].view_as(x)
    with torch.no_grad():
        for branch in ("sort", "mean"):
            dist = _pointwise_distance((branch,), channel_norm)
            torch.testing.assert_close(dist(xp, y), dist(x, y), atol=1e-6, rtol=1e-5)
        spatial = _pointwise_distance(("spatial",), channel_norm)
        assert (spatial(xp, y) - spatial(x, y)).abs().max() > 1e-3
        combo = _pointwise_distance(("spatial", "sort"), channel_norm)
        parts = _pointwise_distance(("spatial",), channel_norm)(x, y) + _pointwise_distance(("sort",), channel_norm)(
            x, y
        )
        torch.testing.assert_close(combo(x, y), parts)


def test_modifiers_closed_forms():
    f = torch.tensor([[[[3.0, 1.0], [2.0, 0.0]], [[0.0, 4.0], [1.0, 1.0]]]])  # (1, 2, 2, 2)
    torch.testing.assert_close(deep.modify_features(f, "sort"), torch.tensor([[[0.0, 1, 2, 3], [0, 1, 1, 4]]]))
    torch.testing.assert_close(deep.modify_features(f, "mean"), torch.tensor([[[1.5], [1.5]]]))
    # mean with channel norm: || n(m(x)) - n(m(y)) ||^2 per layer
    x, y = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)
    dist = _pointwise_distance(("mean",))
    with torch.no_grad():
        want = sum(
            (nn.functional.normalize(a.mean((2, 3)), dim=1) - nn.functional.normalize(b.mean((2, 3)), dim=1))
            .square()
            .sum()
            for a, b in zip(dist.backbone(deep.scale_input(x, "lpips")), dist.backbone(deep.scale_input(y, "lpips")))
        )
        torch.testing.assert_close(dist(x, y), want.view(1))


def _load_rgb(path, size) -> torch.Tensor:
    from PIL import Image

    im = Image.open(path).convert("RGB").resize(size, Image.BICUBIC)
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float().div(255)[None]


@pytest.fixture(scope="module")
def sjogren_images():
    """Real photographs, a translated object on a plain background and Sjögren et al.'s reference set."""
    root = assets.data_dir("data/images")
    if root is None:
        pytest.fail("data/images not found under PERCEPT_ASSETS")
    dog = _load_rgb(root / "elpips" / "dog.png", (160, 100))
    cat = _load_rgb(root / "elpips" / "cat.png", (160, 100))
    obj = _load_rgb(root / "elpips" / "dog.png", (64, 40))[..., 12:52]  # 40x40 dog face

    def on_white(top, left):
        canvas = torch.ones(1, 3, 96, 96)
        canvas[..., top : top + 40, left : left + 40] = obj
        return canvas

    colours = [(0, 0, 0), (0, 0, 1), (0.5, 0.5, 0.5), (0, 1, 0), (1, 0, 0), (1, 1, 1)]
    refs = [torch.tensor(c, dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, 96, 96) for c in colours]
    refs.append(torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(0)))
    orig = dog[..., 2:98, 32:128]
    return {
        "orig": orig,
        "shift8": dog[..., 2:98, 40:136],
        "unrelated": cat[..., 2:98, 32:128],
        "rot90": torch.rot90(orig, 1, (2, 3)),
        "rot180": torch.rot90(orig, 2, (2, 3)),
        "obj": on_white(4, 4),
        "obj_moved": on_white(52, 52),
        "refs": torch.cat(refs),
    }


@pytest.mark.parametrize("channel_norm", [True, False])
def test_sjogren_translation_and_rotation(sjogren_images, channel_norm):
    """Sjögren et al. 2022: the spatial comparison (LPIPS-style) is hurt by translations and rotations,
    sort and mean are robust to them, and combining spatial with sort or mean mitigates the flaw.
    SqueezeNet 1.1 with real ImageNet weights, on real photographs."""
    im = sjogren_images
    ratios = {}
    passes = {}
    state = build_backbone("squeeze").body.state_dict()
    for method in METHODS:
        dps = DPS(net="squeeze", method=method, channel_norm=channel_norm, backbone_weights=state, reduction="none")
        with torch.no_grad():

            def d(a, b, dps=dps):
                return dps(a, b).item()

            unrelated = d(im["orig"], im["unrelated"])
            ratios[method] = {k: d(im["orig"], im[k]) / unrelated for k in ("shift8", "rot90", "rot180")}
            # their pass criterion: the transformed image is at least as close as every reference image
            refs = dps(im["obj"].expand(7, -1, -1, -1), im["refs"])
            passes[method] = d(im["obj"], im["obj_moved"]) <= refs.min().item()
    assert not passes["spatial"]  # a large translation looks further than a flat colour or noise
    assert passes["sort"] and passes["mean"]
    for t in ("shift8", "rot90", "rot180"):
        for robust in ("sort", "mean"):
            assert ratios[robust][t] < 0.8 * ratios["spatial"][t], (robust, t, ratios)
        for combo in ("spatial+sort", "spatial+mean"):
            assert ratios[combo][t] < ratios["spatial"][t], (combo, t, ratios)


def test_dps_any_torchvision_backbone():
    dps = DPS(net="resnet18", method="spatial+mean", pretrained=False, reduction="none")
    assert dps.backbone.channels == (64, 64, 128, 512)
    x, y = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        d = dps(x, y)
    assert d.shape == (2,) and (d > 0).all()
    custom = DPS(net="efficientnet_b0", layers=(1, 3), method="sort", channel_norm=False, pretrained=False)
    assert custom.backbone.channels == (16, 40)


# -------------------------------------------------------------------------------------------- Watson-VGG
def _watson_vgg_reference(trunk: nn.Sequential, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Czolbe et al.'s Watson-VGG formula written out with its initial values (t = 1, w = 0.2, beta = 1),
    including their epsilon-outside normalisation, on the same trunk."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    eps = 1e-10

    def taps(img):
        h = (img - shift) / scale
        out = []
        for i, module in enumerate(trunk):
            h = module(h)
            if i in (3, 8, 15, 22, 29):
                out.append(h / (h.square().sum(1, keepdim=True).sqrt() + eps))
        return out

    total = 0
    for c0, c1 in zip(taps(y), taps(x)):
        t = torch.ones_like(c0)
        w = 0.2
        m = (c0.abs() + eps) ** w * t ** (1 - w)
        soft = torch.softmax(torch.stack([t, m], -1), -1)
        s = t * soft[..., 0] + m * soft[..., 1]
        total = total + ((((c0 - c1) / s).abs() + eps) + eps).sum((1, 2, 3)) / (c0.shape[2] * c0.shape[3])
    return total


def test_watson_vgg_initial_values():
    torch.manual_seed(0)
    metric = WatsonVGG(pretrained=False, reduction="none")
    assert torch.equal(metric.beta, torch.tensor(1.0))
    torch.testing.assert_close(torch.sigmoid(metric.w_tild), torch.full((5,), 0.2))
    assert all(torch.equal(t, torch.zeros_like(t)) for t in metric.t_tild)
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    trunk = nn.Sequential(*[metric.backbone.body[i] for i in range(30)])
    with torch.no_grad():
        torch.testing.assert_close(metric(x, y), _watson_vgg_reference(trunk, x, y), rtol=1e-5, atol=1e-5)
        floor = metric(x, x)
    assert (floor > 0).all() and (floor < 1e-3).all()  # the epsilon floor
    xg = x.clone().requires_grad_(True)
    metric(xg, x).sum().backward()
    assert torch.isfinite(xg.grad).all()


def test_watson_vgg_loads_original_layout():
    torch.manual_seed(0)
    base = WatsonVGG(pretrained=False)
    state = {"shift": torch.zeros(1, 3, 1, 1), "scale": torch.ones(1, 3, 1, 1), "beta": torch.tensor(0.8)}
    slices = [range(0, 4), range(4, 9), range(9, 16), range(16, 23), range(23, 30)]
    for s, idxs in enumerate(slices, start=1):
        for i in idxs:
            for name, v in base.backbone.body[i].state_dict().items():
                state[f"vgg.slice{s}.{i}.{name}"] = v
    for k, c in enumerate(base.backbone.channels):
        state[f"t{k}_tild"] = torch.full((c,), 0.1 * k)
        state[f"w{k}_tild"] = torch.tensor(-1.0 + k)
    loaded = WatsonVGG(weights=state)
    assert torch.equal(loaded.backbone.body[0].weight, base.backbone.body[0].weight)
    assert loaded.beta.item() == pytest.approx(0.8)
    torch.testing.assert_close(loaded.w_tild, torch.tensor([-1.0, 0.0, 1.0, 2.0, 3.0]))
    with pytest.raises(RuntimeError, match="Watson-VGG"):
        WatsonVGG(weights={k: v for k, v in state.items() if k != "beta"})


def test_watson_vgg_pretrained_loads_the_published_file_as_an_asset(tmp_path, monkeypatch):
    """pretrained=True reads weights/czolbe/<space>_watson_vgg_trial0.pth through the asset lookup (checked by its
    git blob id) and takes the trunk and the parameters from it. The published file is not available offline,
    so a file in its layout stands in, registered with its own blob id."""
    torch.manual_seed(0)
    base = WatsonVGG(pretrained=False)
    state = {"shift": torch.zeros(1, 3, 1, 1), "scale": torch.ones(1, 3, 1, 1), "beta": torch.tensor(0.9)}
    slices = [range(0, 4), range(4, 9), range(9, 16), range(16, 23), range(23, 30)]
    for s, idxs in enumerate(slices, start=1):
        for i in idxs:
            for name, v in base.backbone.body[i].state_dict().items():
                state[f"vgg.slice{s}.{i}.{name}"] = v
    for k, c in enumerate(base.backbone.channels):
        state[f"t{k}_tild"] = torch.full((c,), 0.05 * k)
        state[f"w{k}_tild"] = torch.tensor(0.5 * k)
    relpath = "weights/czolbe/gray_watson_vgg_trial0.pth"
    path = tmp_path / relpath
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    monkeypatch.setenv("PERCEPT_ASSETS", str(tmp_path))
    with pytest.raises(assets.ChecksumError, match="git blob"):  # the real entry: not the published bytes
        WatsonVGG(colorspace="grey")
    entry = assets.Asset(relpath, assets.ASSETS[relpath].url, git_sha1=assets.git_blob_sha1(path))
    monkeypatch.setitem(assets.ASSETS, relpath, entry)
    metric = WatsonVGG(colorspace="grey", reduction="none")
    assert metric.beta.item() == pytest.approx(0.9)
    assert torch.equal(metric.backbone.body[28].weight, base.backbone.body[28].weight)
    torch.testing.assert_close(metric.t_tild[3], torch.full((512,), 0.15))
    x, y = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        direct = WatsonVGG(colorspace="grey", weights=path, reduction="none")  # the same file passed by path
        assert torch.equal(metric(x, y), direct(x, y))


# ------------------------------------------------------------------------------------ one feature core
def test_watson_vgg_and_elpips_features_are_deep_distance_features():
    """Watson-VGG and E-LPIPS run their backbones through the same feature core as LPIPS: for the same trunk
    (E-LPIPS: in NCHW, as it runs) they give exactly DeepDistance's features (E-LPIPS's network dropout stays
    inside its own passes)."""
    from percept.metrics.elpips import ELPIPS

    vgg, squeeze = _random_state("vgg"), _random_state("squeeze")
    x = torch.rand(2, 3, 40, 40)
    pairs = [
        (WatsonVGG(pretrained=False, backbone_weights=vgg), DeepDistance(build_backbone("vgg", weights=vgg), scaling="czolbe")),
        (
            ELPIPS(net="squeeze", config="lpips", deterministic=True, torchvision_pooling=True, pretrained=False,
                   backbone_weights=squeeze),
            DeepDistance(build_backbone("squeeze", weights=squeeze, channels_last=False), scaling="lpips"),
        ),
        (  # E-LPIPS's own layout, random (transformations and dropout on): the input as tap -1, floor pooling
            ELPIPS(net="squeeze", pretrained=False, backbone_weights=squeeze),
            DeepDistance(
                build_backbone(
                    "squeeze", (-1, 1, 3, 4, 6, 7, 9, 10, 11, 12), weights=squeeze, pooling="floor", channels_last=False
                ),
                scaling="lpips",
            ),
        ),
    ]
    with torch.no_grad():
        for metric, core in pairs:
            got, want = metric.features(x), core.features(x)
            assert len(got) == len(want) == 1 and len(got[0]) == len(want[0]) == len(core.backbone.layers)
            for a, b in zip(got[0], want[0]):
                assert torch.equal(a, b)
    # tap -1 is the scaled image itself
    scaled = deep.scale_input(x, "lpips")
    torch.testing.assert_close(want[0][0], scaled / scaled.norm(dim=1, keepdim=True))


def _layout(module: nn.Module) -> tuple:
    classes = [(name, type(m)) for name, m in module.named_modules()]
    tensors = [(k, v.stride(), v.data_ptr()) for k, v in module.state_dict(keep_vars=True).items()]
    return classes, tensors


def test_metric_forward_changes_no_state():
    """LPIPS, Watson-VGG and E-LPIPS as training losses: the forward and backward passes leave every module,
    parameter and buffer (memory format included) as built."""
    from percept.metrics.elpips import ELPIPS

    torch.manual_seed(0)
    metrics = [
        LPIPS(net="alex", pretrained=False),
        WatsonVGG(pretrained=False),
        ELPIPS(net="squeeze", pretrained=False, n=2),
    ]
    y = torch.rand(2, 3, 48, 48)
    for metric in metrics:
        before = _layout(metric)
        x = torch.rand(2, 3, 48, 48, requires_grad=True)
        metric(x, y).backward()
        with torch.no_grad():
            metric(x, y)
        assert _layout(metric) == before, type(metric).__name__


# --------------------------------------------------------------------------------------------- bad input
def test_bad_input():
    metric = LPIPS(net="alex", pretrained=False)
    with pytest.raises(ValueError, match="31x31"):
        metric(torch.rand(1, 3, 24, 24), torch.rand(1, 3, 24, 24))
    with pytest.raises(ValueError, match="channel"):
        metric(torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metric(torch.rand(1, 3, 32, 32) * 2 - 1, torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="shapes differ"):
        metric(torch.rand(1, 3, 32, 32), torch.rand(2, 3, 32, 32))
    with pytest.raises(TypeError):
        metric(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="17x17"):
        DPS(net="squeeze", pretrained=False)(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="method"):
        DPS(net="alex", method="max", pretrained=False)
    with pytest.raises(ValueError, match="spatial"):
        DPS(net="alex", method="sort", spatial=True, pretrained=False)
    with pytest.raises(ValueError, match="version"):
        LPIPS(net="alex", version="0.2", pretrained=False)
    with pytest.raises(ValueError, match="net"):
        LPIPS(net="resnet18", pretrained=False)


def test_grey_colorspace_checks_channels_not_batch():
    torch.manual_seed(0)
    state = _random_state("squeeze")
    grey = Deeploss(
        net="squeeze",
        colorspace="LA",
        backbone_weights=state,
        reduction="none",
        lin_weights=assets.locate("weights/czolbe/gray_pnet_lin_squeeze_trial0.pth"),
    )
    rgb = Deeploss(
        net="squeeze",
        colorspace="rgb",
        backbone_weights=state,
        reduction="none",
        lin_weights=assets.locate("weights/czolbe/gray_pnet_lin_squeeze_trial0.pth"),
    )
    x, y = torch.rand(3, 1, 32, 32), torch.rand(3, 1, 32, 32)  # batch of 3: the original's P8 crash
    with torch.no_grad():
        torch.testing.assert_close(grey(x, y), rgb(x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)))
    with pytest.raises(ValueError, match="channel"):
        grey(torch.rand(3, 3, 32, 32), torch.rand(3, 3, 32, 32))


def test_registry_names():
    m = percept.get_metric("lpips-squeeze", pretrained=False, reduction="none")
    assert isinstance(m, LPIPS) and m.net == "squeeze"
    d = percept.get_metric("dps-vgg", method="mean", channel_norm=False, pretrained=False)
    assert isinstance(d, DPS) and d.method == "mean" and d.backbone.name == "vgg16"
    w = percept.get_metric("watson-vgg", pretrained=False)
    assert isinstance(w, WatsonVGG)
    dl = percept.get_metric("deeploss-squeeze", colorspace="LA")
    assert isinstance(dl, Deeploss) and dl.colorspace == "grey"
