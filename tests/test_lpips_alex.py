"""LPIPS-alex and DPS-alex on the real ImageNet AlexNet (the offline ``alexnet_features.pth`` asset) against peer
implementations given the same trunk weights: the ``lpips`` 0.1.4 package (v0.1 / v0.0, lin / no-lin, scalar
and spatial map), torchmetrics' LPIPS network, and, for Sjögren et al.'s DPS methods, the spec's closed forms
(dps_analysis.md §2.2-2.3) evaluated on torchvision's own AlexNet module. Inputs are real images: the LPIPS
example patches, the E-LPIPS photographs and CelebA faces."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from percept import assets
from percept.io import read_image
from percept.metrics.deep import DPS, LPIPS, METHODS

lpips_pkg = pytest.importorskip("lpips")

ALEX = "weights/torchvision/alexnet_features.pth"
TAPS = (1, 4, 7, 9, 11)  # relu1 .. relu5 of torchvision's alexnet.features


@pytest.fixture(scope="module")
def alex_state(assets_dir) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet AlexNet ``features`` (keys ``0.weight`` ... ``10.bias``), checked by sha256."""
    return torch.load(assets.locate(ALEX), map_location="cpu", weights_only=True)


def _image(path, **kwargs) -> torch.Tensor:
    return read_image(path, colorspace="rgb", **kwargs)


@pytest.fixture(scope="module")
def pairs(assets_dir) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """name -> (input, reference) batches of real images in [0, 1]."""
    images = assets.data_dir("data/images")
    celeba = assets.data_dir("data/celeba_sample")
    if images is None or celeba is None:
        pytest.fail("data/images and data/celeba_sample are needed under PERCEPT_ASSETS")
    ex = {k: _image(images / "lpips_examples" / f"ex_{k}.png") for k in ("ref", "p0", "p1")}
    el = images / "elpips"
    photo = {k: _image(el / f"{k}.png") for k in ("adv_reference", "adv_anchor", "adv_vgg_sqz", "adv_teddy")}
    cat, dog = _image(el / "cat.png"), _image(el / "dog.png")
    faces = torch.cat([_image(celeba / f"{i:06d}.jpg") for i in range(1, 9)])
    return {
        "lpips_examples": (torch.cat([ex["p0"], ex["p1"]]), torch.cat([ex["ref"], ex["ref"]])),
        "elpips_photos": (
            torch.cat([photo["adv_anchor"], photo["adv_vgg_sqz"], photo["adv_teddy"]]),
            photo["adv_reference"].expand(3, -1, -1, -1),
        ),
        "cat_dog": (cat, dog),
        "celeba": (faces, faces.roll(1, dims=0)),
    }


def _lpips_package(state: dict, **kwargs) -> nn.Module:
    """lpips.LPIPS(net='alex', ...) with the given trunk weights copied into its slices (nothing downloaded)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = lpips_pkg.LPIPS(net="alex", pnet_rand=True, verbose=False, **kwargs)
    loaded = set()
    for name, slice_ in ref.net.named_children():
        if name.startswith("slice"):
            for idx, module in slice_.named_children():
                sub = {k.split(".", 1)[1]: v for k, v in state.items() if k.split(".")[0] == idx}
                if sub:
                    module.load_state_dict(sub, strict=True)
                    loaded.update(f"{idx}.{k}" for k in sub)
    assert loaded == set(state)  # every conv of the trunk came from the asset
    return ref.eval()


# ------------------------------------------------------------------------------------------------- LPIPS
@pytest.mark.parametrize(
    "version, lin, spatial",
    [("0.1", True, False), ("0.1", False, False), ("0.0", True, False), ("0.0", False, False),
     ("0.1", True, True), ("0.1", False, True), ("0.0", True, True)],
)  # fmt: skip
def test_lpips_alex_equals_the_lpips_package_on_real_images(alex_state, pairs, version, lin, spatial):
    ref = _lpips_package(alex_state, version=version, lpips=lin, spatial=spatial)
    ours = LPIPS(net="alex", version=version, lin=lin, spatial=spatial, reduction="none")  # ImageNet via the asset
    assert all(torch.equal(ours.backbone.body.state_dict()[k], v) for k, v in alex_state.items())
    for name, (x, y) in pairs.items():
        with torch.no_grad():
            want = ref(x, y, normalize=True)
            got = ours(x, y)
        want = want if spatial else want.flatten()
        assert got.shape == want.shape, name
        torch.testing.assert_close(got, want, atol=2e-6, rtol=2e-5, msg=lambda m, n=name: f"{n}: {m}")
        assert (want > 0).all() if not spatial else (want.flatten(1).mean(1) > 0).all()


def test_lpips_alex_default_and_alias_are_v01_lin(alex_state, pairs):
    import percept

    x, y = pairs["lpips_examples"]
    ref = _lpips_package(alex_state)
    with torch.no_grad():
        want = ref(x, y, normalize=True).flatten()
        for name in ("lpips-alex", "lpips"):
            torch.testing.assert_close(percept.get_metric(name, reduction="none")(x, y), want, atol=2e-6, rtol=2e-5)
    # the patches: p1 is the closer one to the reference for LPIPS-alex, p0 is distorted far more
    assert want[1] < want[0]


@pytest.mark.parametrize("spatial", [False, True])
def test_lpips_alex_equals_torchmetrics_on_real_images(alex_state, pairs, spatial):
    lp = pytest.importorskip("torchmetrics.functional.image.lpips")
    net = lp._NoTrainLpips(net="alex", spatial=spatial, pnet_rand=True)  # what LearnedPerceptualImagePatchSimilarity holds
    for slice_ in (m for n, m in net.net.named_children() if n.startswith("slice")):
        for idx, module in slice_.named_children():
            sub = {k.split(".", 1)[1]: v for k, v in alex_state.items() if k.split(".")[0] == idx}
            if sub:
                module.load_state_dict(sub, strict=True)
    ours = LPIPS(net="alex", spatial=spatial, reduction="none")
    for name, (x, y) in pairs.items():
        with torch.no_grad():
            want = net(x, y, normalize=True) if spatial else lp._lpips_update(x, y, net, normalize=True)
            got = ours(x, y)
        torch.testing.assert_close(got, want.reshape(got.shape), atol=2e-6, rtol=2e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_lpips_alex_gradients_match_the_package(alex_state, pairs):
    x, y = pairs["lpips_examples"]
    ref = _lpips_package(alex_state)
    ours = LPIPS(net="alex", reduction="sum")
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ref(xa, y, normalize=True).sum().backward()
    ours(xb, y).backward()
    rel = (xa.grad - xb.grad).norm() / xa.grad.norm()
    assert rel < 1e-4, rel


# --------------------------------------------------------------------------------------------------- DPS
def test_dps_alex_spatial_equals_the_lpips_package_baseline(alex_state, pairs):
    """Sjögren et al.'s parity guarantee (dps_analysis.md §2.5, §5.1): spatial + channel norm with the LPIPS
    layers is ``lpips.LPIPS(lpips=False)`` (v0.1 scaling), here with the real AlexNet."""
    ref = _lpips_package(alex_state, lpips=False)
    dps = DPS(net="alex", method="spatial", reduction="none")
    for name, (x, y) in pairs.items():
        with torch.no_grad():
            torch.testing.assert_close(
                dps(x, y), ref(x, y, normalize=True).flatten(), atol=2e-6, rtol=2e-5, msg=lambda m, n=name: f"{n}: {m}"
            )


def _torchvision_alexnet(state: dict) -> nn.Module:
    from torchvision.models import alexnet

    model = alexnet(weights=None).eval()
    model.features.load_state_dict(state, strict=True)
    return model


def _dps_reference(model: nn.Module, x: torch.Tensor, y: torch.Tensor, method: str, channel_norm: bool) -> torch.Tensor:
    """The spec's pipeline (dps_analysis.md §2.2) on torchvision's AlexNet: ImageNet normalisation, taps
    relu1..relu5, modifier, unit normalisation over channels with F.normalize (eps 1e-12, their code), squared
    difference summed over channels, mean over positions, sum over layers, spatial+X = spatial + X."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def taps(img):
        h, out = (img - mean) / std, []
        for i, layer in enumerate(model.features):
            h = layer(h)
            if i in TAPS:
                out.append(h.clone())
        return out

    def modified(f, how):
        n, c = f.shape[:2]
        if how == "spatial":
            g = f.reshape(n, c, -1)
        elif how == "sort":
            g = torch.sort(f.reshape(n, c, -1), dim=2).values
        else:  # mean, broadcast to every position: the position average of the difference is the same
            g = f.reshape(n, c, -1).mean(dim=2, keepdim=True)
        return F.normalize(g, p=2, dim=1, eps=1e-12) if channel_norm else g

    total = torch.zeros(x.shape[0], dtype=torch.float64)
    for how in method.split("+"):
        for a, b in zip(taps(x), taps(y)):
            total += (modified(a, how) - modified(b, how)).double().square().sum(dim=1).mean(dim=1)
    return total


@pytest.mark.parametrize("channel_norm", [True, False])
@pytest.mark.parametrize("method", METHODS)
def test_dps_alex_methods_equal_the_spec_on_torchvision_alexnet(alex_state, pairs, method, channel_norm):
    model = _torchvision_alexnet(alex_state)
    dps = DPS(net="alex", method=method, channel_norm=channel_norm, reduction="none")
    for name in ("lpips_examples", "cat_dog", "celeba"):
        x, y = pairs[name]
        with torch.no_grad():
            want = _dps_reference(model, x, y, method, channel_norm).float()
            got = dps(x, y)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")
        assert (got > 0).all()
        with torch.no_grad():
            assert torch.equal(dps(x, x), torch.zeros(x.shape[0]))  # D(x, x) = 0 for every method


def test_dps_alex_sort_and_mean_ignore_where_features_are(alex_state, pairs):
    """Sort and mean are invariant to any permutation of feature-map positions (spec §5.3, to be tested on the
    feature maps), spatial is not; here on real AlexNet features of a photograph. The permutation is a 180-degree
    rotation made exact: AlexNet with every kernel rotated by 180 degrees, applied to the rotated image, computes
    the rotated feature maps when every strided stage tiles its input symmetrically (223 px: conv1 55, pool 27,
    pool 13 positions)."""
    rotated = {k: (v.flip(-1, -2) if v.dim() == 4 else v) for k, v in alex_state.items()}
    x = pairs["cat_dog"][0][..., 20:243, 100:323]
    assert x.shape[-2:] == (223, 223)
    for method in ("spatial", "sort", "mean"):
        plain = DPS(net="alex", method=method, reduction="none", backbone_weights=alex_state)
        turned = DPS(net="alex", method=method, reduction="none", backbone_weights=rotated)
        with torch.no_grad():
            before = plain.distance.features(x)[0]  # modified and channel-normalised, per layer
            after = turned.distance.features(x.flip(-1, -2))[0]
        for k, (a, b) in enumerate(zip(before, after)):
            if method == "spatial":  # the positions moved: compared position by position they differ
                torch.testing.assert_close(b, a.flip(-1, -2), atol=1e-5, rtol=1e-4)
                assert (b - a).abs().max() > 0.05, k
            else:  # nothing to see for sort and mean
                torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)


# -------------------------------------------------------------------------------------------- functional
def test_functional_lpips_and_dps_equal_the_lpips_package(alex_state, pairs):
    """percept.functional.lpips / dps on the real AlexNet against the lpips package (lin and no-lin), with
    their reductions and gradients; repeated calls reuse one cached module, left unchanged by the calls."""
    from percept.functional import deep as fd
    from percept.functional import dps, lpips

    x, y = pairs["celeba"]
    ref = _lpips_package(alex_state)
    base = _lpips_package(alex_state, lpips=False)
    with torch.no_grad():
        want = ref(x, y, normalize=True).flatten()
        torch.testing.assert_close(lpips(x, y, reduction="none"), want, atol=2e-6, rtol=2e-5)
        torch.testing.assert_close(lpips(x, y), want.mean(), atol=2e-6, rtol=2e-5)
        torch.testing.assert_close(lpips(x, y, "alex", "0.1", reduction="sum"), want.sum(), atol=2e-5, rtol=2e-5)
        spatial = _lpips_package(alex_state, spatial=True)(x, y, normalize=True)
        torch.testing.assert_close(lpips(x, y, spatial=True), spatial, atol=2e-6, rtol=2e-5)
        torch.testing.assert_close(dps(x, y, "alex", reduction="none"), base(x, y, normalize=True).flatten(),
                                   atol=2e-6, rtol=2e-5)
    xa, xb = x[:2].clone().requires_grad_(True), x[:2].clone().requires_grad_(True)
    ref(xa, y[:2], normalize=True).sum().backward()
    lpips(xb, y[:2], reduction="sum").backward()
    torch.testing.assert_close(xb.grad, xa.grad, atol=1e-6, rtol=1e-4)
    module = fd._metric("lpips", x, {"net": "alex", "version": "0.1"})
    assert module is fd._metric("lpips", x, {"version": "0.1", "net": "alex"})  # built once
    assert not any(p.requires_grad for p in module.parameters())
    with pytest.raises(ValueError, match="reduction"):
        lpips(x, y, reduction="max")
    with pytest.raises(TypeError, match="hashable"):
        lpips(x, y, backbone_weights=alex_state)
