"""E-LPIPS: the transformation ensemble against a per-image numpy reference, the network against an independent
torchvision implementation and percept's LPIPS, the reference implementation's README values, the shared
sampling of ``compare``, the stopping rule of ``estimate``, gradients and bad input."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import percept
from percept import assets, estimation
from percept.backbones import build_backbone
from percept.io import read_image
from percept.metrics.deep import LPIPS, read_lin_weights
from percept.metrics.elpips import (
    COLOR_MIN,
    ELPIPS,
    MIN_SCALED_SIZE,
    OFFSET_MAX,
    Transform,
    apply_transform,
    elpips_lin_state,
    merge_transforms,
    sample_transform,
    scale_levels_for,
    scale_probabilities,
    shared_dropout,
)


# ------------------------------------------------------------------------------------------- fixtures
def _images_dir(assets_dir):
    folder = assets.data_dir("data/images")
    if folder is None:
        pytest.skip("no data/images in the asset folder")
    return folder


@pytest.fixture(scope="module")
def squeeze_metric(assets_dir) -> ELPIPS:
    return ELPIPS(net="squeeze", reduction="none")


@pytest.fixture(scope="module")
def vgg_state() -> dict:
    torch.manual_seed(0)
    return build_backbone("vgg", weights="random").body.state_dict()


@pytest.fixture(scope="module")
def examples(assets_dir) -> dict:
    """The LPIPS example patches (64x64) and a 128x128 cat with a noisy and a blurred version."""
    folder = _images_dir(assets_dir)
    out = {k: read_image(folder / "lpips_examples" / f"ex_{k}.png", colorspace="rgb") for k in ("ref", "p0", "p1")}
    cat = read_image(folder / "elpips" / "cat.png", colorspace="rgb", resize=(128, 128))
    noise = torch.randn(cat.shape, generator=torch.Generator().manual_seed(1))
    out["cat"] = cat
    out["cat_noise"] = (cat + 0.05 * noise).clamp(0, 1)
    out["cat_blur"] = F.avg_pool2d(F.pad(cat, (1, 1, 1, 1), mode="replicate"), 3, 1)
    return out


# ----------------------------------------------------------------------------------------- the ensemble
def test_scale_probabilities_match_the_spec_table():
    expected = [0.6547, 0.1637, 0.0727, 0.0409, 0.0262, 0.0182, 0.0134, 0.0102]
    np.testing.assert_allclose(scale_probabilities(8).numpy(), expected, atol=6e-5)


def test_scale_levels_follow_image_size_and_never_downscale_below_64():
    assert [scale_levels_for(s, s) for s in (16, 63, 127, 128, 191, 192, 512, 4000)] == [1, 1, 1, 2, 2, 3, 8, 8]
    assert scale_levels_for(1000, 130) == 2  # the smaller side decides
    for h in range(16, 1100, 3):
        s = scale_levels_for(h, h)
        assert s == 1 or (h + 2 * (s - 1)) // s >= MIN_SCALED_SIZE


def test_sampled_downscaling_never_goes_below_the_minimum(squeeze_metric):
    g = torch.Generator().manual_seed(0)
    for h, w in ((127, 300), (128, 140), (200, 130), (520, 260)):
        levels = squeeze_metric.scale_levels_for(h, w)
        seen = set()
        for _ in range(300):
            t = squeeze_metric.sample(1, h, w, g)
            seen.add(t.scale)
            assert 1 <= t.scale <= levels
            assert min(t.output_size(h, w)) >= min(MIN_SCALED_SIZE, h, w) + OFFSET_MAX
        assert seen == set(range(1, levels + 1))
    x = torch.rand(1, 3, 130, 200)  # S = 2: a downscaled draw has (130 + 2) // 2 x (200 + 2) // 2 pixels (+7)
    t = Transform(1, scale=2, scale_offset=(1, 0), offsets=torch.tensor([[3, 4]]))
    assert apply_transform(x, t).shape[-2:] == (66 + OFFSET_MAX, 101 + OFFSET_MAX) == t.output_size(130, 200)


def test_scale_level_frequencies():
    g = torch.Generator().manual_seed(1)
    draws = [sample_transform(1, scale_levels=4, transforms=("scale",), generator=g).scale for _ in range(4000)]
    freq = np.bincount(draws, minlength=5)[1:] / len(draws)
    np.testing.assert_allclose(freq, scale_probabilities(4).numpy(), atol=0.025)


def test_per_image_parameters_are_stratified():
    g = torch.Generator().manual_seed(2)
    t = sample_transform(12, generator=g)
    assert sorted(np.bincount(t.flips.numpy(), minlength=4).tolist()) == [3, 3, 3, 3]
    perms = sorted(tuple(p) for p in t.permutations.tolist())
    assert perms == sorted(list(itertools.permutations(range(3))) * 2)
    assert t.offsets.min() >= 0 and t.offsets.max() <= OFFSET_MAX
    assert (t.colors >= COLOR_MIN).all() and (t.colors < 1).all()
    strata = ((t.colors - COLOR_MIN) / (1 - COLOR_MIN) * 12).floor().long()
    for c in range(3):  # Latin hypercube: one factor per stratum and channel
        assert sorted(strata[:, c].tolist()) == list(range(12))
    b = sample_transform(5, color_mode="brightness", generator=g)
    assert torch.equal(b.colors[:, 0], b.colors[:, 1]) and torch.equal(b.colors[:, 0], b.colors[:, 2])


def _reference_apply(x: np.ndarray, t: Transform) -> np.ndarray:
    """The ensemble applied image by image with numpy, in the order and conventions of the reference."""
    out = []
    for i in range(x.shape[0]):
        j = i % t.batch
        img = x[i]
        s = t.scale
        if s > 1:
            oy, ox = t.scale_offset
            h, w = img.shape[1:]
            fh, fw = (h + 2 * (s - 1)) // s * s, (w + 2 * (s - 1)) // s * s
            img = np.pad(img, ((0, 0), (oy, fh - h - oy), (ox, fw - w - ox)), mode="reflect")
            img = img.reshape(img.shape[0], fh // s, s, fw // s, s).mean(axis=(2, 4))
        if t.offsets is not None:
            oy, ox = t.offsets[j].tolist()
            img = np.pad(img, ((0, 0), (OFFSET_MAX - oy, oy), (OFFSET_MAX - ox, ox)), mode="reflect")
        if t.flips is not None:
            code = int(t.flips[j])
            if code in (0, 2):
                img = img[:, :, ::-1]
            if code in (1, 2):
                img = img[:, ::-1, :]
        if t.transpose:
            img = img.transpose(0, 2, 1)
        if t.permutations is not None:
            img = img[t.permutations[j].numpy()]
        if t.colors is not None:
            img = img * t.colors[j].numpy()[:, None, None]
        out.append(img)
    return np.stack(out)


@pytest.mark.parametrize("seed", range(6))
def test_apply_transform_matches_a_per_image_reference(seed):
    g = torch.Generator().manual_seed(seed)
    h, w = (130, 150) if seed % 2 else (40, 33)
    x = torch.rand(8, 3, h, w, dtype=torch.float64, generator=g)  # two stacked batches of 4 share the draws
    t = sample_transform(4, scale_levels=scale_levels_for(h, w), generator=g)
    if seed == 1:
        t = Transform(4, 2, (1, 1), t.offsets, t.flips, not t.transpose, t.permutations, t.colors)
    got = apply_transform(x, t)
    assert got.shape[-2:] == t.output_size(h, w)
    np.testing.assert_allclose(got.numpy(), _reference_apply(x.numpy(), t), rtol=0, atol=1e-12)


def test_partial_transform_sets_and_merging():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(3, 3, 20, 24, dtype=torch.float64, generator=g)
    for names in (("flip",), ("transpose",), ("permute", "color"), ("shift",), ()):
        t = sample_transform(3, transforms=names, generator=g)
        assert (t.offsets is None) == ("shift" not in names) and (t.colors is None) == ("color" not in names)
        np.testing.assert_allclose(apply_transform(x, t).numpy(), _reference_apply(x.numpy(), t), atol=1e-12)
    t1 = Transform(1, offsets=torch.tensor([[1, 2]]), flips=torch.tensor([0]))
    t2 = Transform(2, offsets=torch.tensor([[3, 4], [5, 6]]), flips=torch.tensor([1, 3]))
    merged = merge_transforms([t1, t2])
    assert merged.batch == 3 and merged.offsets.tolist() == [[1, 2], [3, 4], [5, 6]]
    with pytest.raises(ValueError):
        merge_transforms([t1, Transform(1, transpose=True, offsets=torch.tensor([[0, 0]]))])


def test_network_dropout_masks_are_shared_and_keep_99_percent():
    x = torch.ones(2 * 4, 16, 32, 32)
    out = shared_dropout(x, 2, 0.99, torch.Generator().manual_seed(0))
    a, b = out[:4], out[4:]
    assert torch.equal(a, b)  # the compared images share the mask
    assert not torch.equal(a[0], a[1])  # but not the images of a batch
    assert all(v == 0 or abs(v - 1 / 0.99) < 1e-6 for v in torch.unique(out).tolist())
    assert abs((a == 0).float().mean().item() - 0.01) < 0.003
    # inside the metric's passes (transformations off): every draw differs, identical images stay at 0;
    # outside them the backbone is the plain network
    m = ELPIPS(net="squeeze", pretrained=False, transforms=False, reduction="none")
    y, z = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        d = m.sample_distances((y, z), z, n=4, generator=torch.Generator().manual_seed(0))
        assert (d[:, 0].std(dim=0) > 0).all() and torch.equal(d[:, 1], torch.zeros_like(d[:, 1]))
        first, again = m.backbone(y), m.backbone(y)
    assert all(torch.equal(u, v) for u, v in zip(first, again))


# ------------------------------------------------------------------------------------- weights, configs
def test_linear_weight_files_are_read_strictly(assets_dir):
    for net, n_taps, total in (("vgg", 14, 4227), ("squeeze", 10, 2627)):
        state = elpips_lin_state(net, "elpips")
        assert len(state) == n_taps
        assert sum(v.numel() for v in state.values()) == total
        assert all(v.shape[0] == 1 and v.shape[2:] == (1, 1) and (v >= 0).all() for v in state.values())
    raw = np.load(assets.locate("weights/elpips/vgg_maxpool.npy"), allow_pickle=True).item()
    channels = (64, 128, 256, 512, 512)
    assert [w.numel() for w in read_lin_weights(raw, channels)] == list(channels)
    with pytest.raises(RuntimeError, match="missing"):
        read_lin_weights({k: v for k, v in raw.items() if not k.startswith("lin4")}, channels)
    with pytest.raises(RuntimeError, match="shape"):
        read_lin_weights(raw, (64, 128, 256, 512, 256))
    with pytest.raises(RuntimeError, match="unexpected"):
        read_lin_weights({**raw, "lin5.model.1.weight": raw["lin0.model.1.weight"]}, channels)
    with pytest.raises(ValueError, match="negative"):
        read_lin_weights({**raw, "lin0.model.1.weight": -raw["lin0.model.1.weight"] - 1}, channels)


def test_registry_builds_elpips_squeeze_with_n(assets_dir):
    m = percept.get_metric("elpips-squeeze", n=2, reduction="none")
    assert isinstance(m, ELPIPS) and m.n == 2 and m.net == "squeeze" and m.config == "elpips"
    assert m.higher_is_better is False
    assert len(m.lins) == 10 and all(not p.requires_grad for p in m.parameters())
    with pytest.raises(ValueError, match="n"):
        ELPIPS(net="squeeze", pretrained=False, n=0)


# ------------------------------------------------------------------------------------------------ parity
def test_deterministic_vgg_equals_percept_lpips(examples, vgg_state):
    """Transformations and dropout off: E-LPIPS-VGG's plain configuration is LPIPS-VGG with its weights."""
    x = torch.cat([examples["p0"], examples["p1"]])
    y = examples["ref"].expand(2, -1, -1, -1)
    ours = ELPIPS(net="vgg", config="lpips", deterministic=True, reduction="none", backbone_weights=vgg_state)
    ref = LPIPS(net="vgg", reduction="none", backbone_weights=vgg_state, lin_weights=elpips_lin_state("vgg"))
    with torch.no_grad():
        got, want = ours(x, y), ref(x, y)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    assert (got > 0).all()


@pytest.mark.parametrize("size, torchvision_pooling", [((64, 64), False), ((72, 90), True)])
def test_deterministic_squeeze_equals_percept_lpips(examples, size, torchvision_pooling):
    """ImageNet SqueezeNet; at 64x64 the reference's floor pooling and torchvision's ceil mode agree."""
    x = F.interpolate(torch.cat([examples["p0"], examples["p1"]]), size=size, mode="bilinear", align_corners=False)
    y = F.interpolate(examples["ref"], size=size, mode="bilinear", align_corners=False).expand(2, -1, -1, -1)
    ours = ELPIPS(net="squeeze", config="lpips", deterministic=True, reduction="none",
                  torchvision_pooling=torchvision_pooling)
    ref = LPIPS(net="squeeze", reduction="none", lin_weights=elpips_lin_state("squeeze"))
    with torch.no_grad():
        torch.testing.assert_close(ours(x, y), ref(x, y), rtol=1e-5, atol=1e-7)


def test_functional_elpips(examples):
    """percept.functional.elpips: deterministic, LPIPS-squeeze with the E-LPIPS weights (as above); random,
    zero at identity and reproducible through its generator."""
    from percept.functional import elpips

    x = torch.cat([examples["p0"], examples["p1"]])
    y = examples["ref"].expand(2, -1, -1, -1)
    ref = LPIPS(net="squeeze", reduction="none", lin_weights=elpips_lin_state("squeeze"))
    with torch.no_grad():
        want = ref(x, y)
        torch.testing.assert_close(elpips(x, y, "squeeze", config="lpips", deterministic=True, reduction="none"), want, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(elpips(x, y, "squeeze", config="lpips", deterministic=True), want.mean(), rtol=1e-5, atol=1e-7)
        a = elpips(x, y, "squeeze", n=3, generator=torch.Generator().manual_seed(0), reduction="none")
        b = elpips(x, y, "squeeze", n=3, generator=torch.Generator().manual_seed(0), reduction="none")
        assert torch.equal(a, b) and a.shape == (2,) and (a > 0).all()
        assert torch.equal(elpips(x, x, "squeeze", n=2, reduction="sum"), torch.tensor(0.0))


def test_lpips_squeeze_reproduces_the_reference_readme(assets_dir):
    """The reference's README: LPIPS-SqueezeNet (its weights) on the adversarial example gives d(anchor, ref)
    = 0.02187 and d(adversarial, ref) = 0.02114, i.e. it is fooled; E-LPIPS is not."""
    folder = _images_dir(assets_dir) / "elpips"
    ref, anchor, adv = (read_image(folder / f"adv_{k}.png", colorspace="rgb") for k in ("reference", "anchor", "vgg_sqz"))
    lp = ELPIPS(net="squeeze", config="lpips", deterministic=True)
    with torch.no_grad():
        d = lp.sample_distances((anchor, adv), ref, n=1)[0, :, 0]
        e = ELPIPS(net="squeeze", n=1).sample_distances((anchor, adv), ref, n=4, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(d.numpy(), [0.02187, 0.02114], atol=6e-6)
    assert (e[:, 0, 0] < e[:, 1, 0]).all()  # every shared E-LPIPS draw ranks the anchor closer


def _peer_distance(net: str, state: dict, lin: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The E-LPIPS network without randomness, written independently on torchvision's modules: the scaled input
    and every conv ReLU (VGG, average pooling) or conv1 + every Fire module (SqueezeNet, floor pooling) as
    taps, f / (||f|| + 1e-10), squared differences, spatial mean, linear weights, sum."""
    import torchvision
    from torchvision.models.vgg import cfgs, make_layers

    feats = make_layers(cfgs["D"]) if net == "vgg" else torchvision.models.squeezenet1_1().features
    if net == "vgg":
        feats = feats[:30]  # the final pool is unused
    feats.load_state_dict(state, strict=True)
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def taps(z):
        z = ((2 * z - 1) - shift) / scale
        out = [z]
        for i, m in enumerate(feats):
            if isinstance(m, nn.MaxPool2d):
                z = F.avg_pool2d(z, 2, 2) if net == "vgg" else F.max_pool2d(z, 3, 2, ceil_mode=False)
            else:
                z = m(z)
            if isinstance(m, nn.ReLU) or type(m).__name__ == "Fire":
                out.append(z)
            if (net == "vgg" and i == 29) or (net == "squeeze" and i == 12):
                break
        return out

    with torch.no_grad():
        total = 0
        for k, (a, b) in enumerate(zip(taps(x), taps(y))):
            na = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            nb = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            w = lin[f"lin{k}.model.1.weight"].view(1, -1, 1, 1)
            total = total + ((na - nb) ** 2 * w).sum(1).mean(dim=(1, 2))
    return total


@pytest.mark.parametrize("net", ["vgg", "squeeze"])
def test_elpips_network_without_randomness_matches_a_peer(examples, vgg_state, net):
    state = vgg_state if net == "vgg" else build_backbone("squeeze").body.state_dict()
    lin = elpips_lin_state(net, "elpips")
    x, y = examples["cat_noise"][..., :96, :80], examples["cat"][..., :96, :80]
    ours = ELPIPS(net=net, config="elpips", deterministic=True, reduction="none", backbone_weights=state)
    with torch.no_grad():
        got = ours(x, y)
    want = _peer_distance(net, state, lin, x, y)
    torch.testing.assert_close(got, want, rtol=2e-5, atol=1e-7)


# ------------------------------------------------------------------------------------- metric behaviour
def test_identity_symmetry_and_seeds(squeeze_metric, examples):
    x, y = examples["p0"], examples["ref"]
    with torch.no_grad():
        same = squeeze_metric.sample_distances(x, x, n=3, generator=torch.Generator().manual_seed(0))
        d_xy = squeeze_metric.sample_distances(x, y, n=3, generator=torch.Generator().manual_seed(5))
        d_yx = squeeze_metric.sample_distances(y, x, n=3, generator=torch.Generator().manual_seed(5))
        d_other = squeeze_metric.sample_distances(x, y, n=3, generator=torch.Generator().manual_seed(6))
    assert torch.equal(same, torch.zeros_like(same))
    torch.testing.assert_close(d_xy, d_yx, rtol=1e-6, atol=0)
    assert not torch.allclose(d_xy, d_other)
    assert (d_xy > 0).all() and d_xy.std() > 0


def test_grouped_draws_equal_one_draw_per_pass(examples):
    """Draws evaluated together in one batch give the same distances as one draw per backbone pass."""
    x, y = examples["cat_noise"], examples["cat"]
    together = ELPIPS(net="squeeze", net_dropout=False, reduction="none")
    alone = ELPIPS(net="squeeze", net_dropout=False, reduction="none", max_batch_pixels=1)
    with torch.no_grad():
        a = together.sample_distances(x, y, n=6, generator=torch.Generator().manual_seed(3))
        b = alone.sample_distances(x, y, n=6, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)


def test_forward_averages_n_draws_and_reduces(examples):
    x = torch.cat([examples["p0"], examples["p1"]])
    y = examples["ref"].expand(2, -1, -1, -1)
    m = ELPIPS(net="squeeze", n=3, reduction="none", generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        d = m(x, y)
        samples = m.sample_distances(x, y, generator=torch.Generator().manual_seed(4))
    assert d.shape == (2,) and samples.shape == (3, 1, 2)
    torch.testing.assert_close(d, samples[:, 0].mean(0))
    m.reduction = "sum"
    m.generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        torch.testing.assert_close(m(x, y), d.sum())


def test_gradients_are_finite(examples):
    m = ELPIPS(net="squeeze", n=2, generator=torch.Generator().manual_seed(0))
    x = examples["p0"][..., :48, :48].clone().requires_grad_(True)
    black = torch.zeros(1, 3, 48, 48, requires_grad=True)
    loss = m(x, examples["ref"][..., :48, :48]) + m(x, x.detach()) + m(black, torch.zeros(1, 3, 48, 48))
    loss.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert torch.isfinite(black.grad).all()
    t = ELPIPS(net="squeeze", trainable=True, n=1)
    t.train()
    t(x.detach(), examples["ref"][..., :48, :48]).backward()
    assert all(torch.isfinite(p.grad).all() for p in t.lins)
    assert not any(p.requires_grad for p in t.backbone.parameters()) and not t.backbone.training


def test_bad_input_is_rejected():
    m = ELPIPS(net="squeeze", pretrained=False)
    ok = torch.rand(1, 3, 32, 32)
    with pytest.raises(ValueError, match="channel"):
        m(torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        m(ok * 255, ok)
    with pytest.raises(ValueError, match="NaN"):
        m(ok.clone().fill_(float("nan")), ok)
    with pytest.raises(ValueError, match="differ"):
        m(ok, torch.rand(1, 3, 32, 40))
    with pytest.raises(TypeError):
        m((ok * 255).to(torch.uint8), ok)
    with pytest.raises(ValueError, match="4-D"):
        m(ok[0], ok[0])
    small = m.min_size - 1
    with pytest.raises(ValueError, match="too small"):
        m(torch.rand(1, 3, small, 64), torch.rand(1, 3, small, 64))
    grey = ELPIPS(net="squeeze", pretrained=False, colorspace="grey", n=2)
    assert grey(torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)).shape == ()
    with pytest.raises(ValueError):
        ELPIPS(net="alex", pretrained=False)
    with pytest.raises(ValueError):
        ELPIPS(net="squeeze", pretrained=False, transforms=("rotate",))
    with pytest.raises(ValueError):
        ELPIPS(net="squeeze", pretrained=False, deterministic=True, transforms=("flip",))


# ----------------------------------------------------------------------------------- compare, estimate
def test_compare_shares_draws_and_has_lower_variance(squeeze_metric, examples):
    """The difference d(ref, a) - d(ref, b) under shared draws varies less than the difference of two
    independent estimates (fixed seeds; an F ratio of 2 is significant at about 5 % for 24 + 24 samples)."""
    ref, a, b = examples["cat"], examples["cat_noise"], examples["cat_blur"]
    r = estimation.compare(ref, a, b, metric=squeeze_metric, samples=24, seed=0)
    assert r.n == 24 and r.samples.shape == (24, 2, 1)
    shared = r.samples[:, 0, 0] - r.samples[:, 1, 0]
    with torch.no_grad():
        da = squeeze_metric.sample_distances(a, ref, n=24, generator=torch.Generator().manual_seed(1))[:, 0, 0]
        db = squeeze_metric.sample_distances(b, ref, n=24, generator=torch.Generator().manual_seed(2))[:, 0, 0]
    independent = (da - db).double()
    assert shared.var() * 2 < independent.var()
    assert r.diff == pytest.approx(float(shared.mean()))
    assert r.stderr == pytest.approx(float(shared.std() / math.sqrt(24)))
    d_a, d_b, diff, stderr = r
    assert d_a > d_b and r.closer == "b" and diff > 2 * stderr
    again = estimation.compare(ref, a, b, metric=squeeze_metric, samples=24, seed=0)
    assert again.diff == r.diff  # the seed reproduces the draws


def test_compare_on_batches_returns_tensors(squeeze_metric, examples):
    ref = examples["ref"].expand(2, -1, -1, -1)
    a, b = torch.cat([examples["p0"], examples["p1"]]), torch.cat([examples["p1"], examples["p0"]])
    r = estimation.compare(ref, a, b, metric=squeeze_metric, samples=3, seed=1)
    assert r.d_a.shape == (2,) and r.stderr.shape == (2,) and r.samples.shape == (3, 2, 2)
    torch.testing.assert_close(r.diff, r.d_a - r.d_b)
    assert r.diff[0] * r.diff[1] < 0  # swapped pairs
    assert r.closer.tolist() == (r.diff < 0).tolist()


def test_estimate_stops_when_both_bounds_are_met(squeeze_metric, examples):
    x, y = examples["cat_noise"][0], examples["cat"][0]
    loose = estimation.estimate(x, y, metric=squeeze_metric, abs_err=0.05, rel_err=0.5, seed=0, progress=False)
    assert loose.converged and loose.n == 10
    assert 1.96 * loose.stderr < 0.05 and 1.96 * loose.stderr < 0.5 * loose.mean
    mean, stderr, n = loose
    assert n == 10 and mean == pytest.approx(float(loose.samples.mean()))
    tight = estimation.estimate(x, y, metric=squeeze_metric, abs_err=1e-9, rel_err=0.5, max_samples=25, seed=0,
                            progress=False)
    assert not tight.converged and tight.n == 25
    zero = estimation.estimate(x, x, metric=squeeze_metric, progress=False)
    assert zero.converged and zero.mean == 0 and zero.n == 10
    with pytest.raises(ValueError, match="one image pair"):
        estimation.estimate(examples["ref"].expand(2, -1, -1, -1), examples["ref"].expand(2, -1, -1, -1),
                        metric=squeeze_metric, progress=False)


class _Scripted(nn.Module):
    """A stand-in metric whose successive samples are given in advance."""

    def __init__(self, values):
        super().__init__()
        self.values = iter(values)

    def sample_distances(self, images, reference, *, n, generator=None):
        k = reference.shape[0]
        return torch.tensor([next(self.values) for _ in range(k)], dtype=torch.float64).view(1, 1, k)


def _first_stop(values, abs_err, rel_err, batch, min_samples):
    """The reference's rule, checked after every batch: 1.96 * std(ddof=1) / sqrt(n) < both bounds."""
    for n in range(batch, len(values) + 1, batch):
        if n >= min_samples:
            v = np.asarray(values[:n])
            half = 1.96 * v.std(ddof=1) / math.sqrt(n)
            if half < abs_err and half < rel_err * v.mean():
                return n
    return None


@pytest.mark.parametrize("abs_err, rel_err", [(0.2, 10.0), (10.0, 0.05), (0.3, 0.1), (1e-9, 1.0)])
def test_estimate_applies_the_stopping_rule(abs_err, rel_err):
    g = np.random.default_rng(0)
    values = list(np.abs(1.0 + 0.5 * g.standard_normal(400)))
    x = torch.rand(3, 16, 16)
    got = estimation.estimate(x, x, metric=_Scripted(values), abs_err=abs_err, rel_err=rel_err, max_samples=400,
                          batch=5, progress=False)
    stop = _first_stop(values, abs_err, rel_err, batch=5, min_samples=10)
    assert got.converged == (stop is not None)
    assert got.n == (stop or 400)
    assert got.mean == pytest.approx(np.mean(values[: got.n]))
    assert got.stderr == pytest.approx(np.std(values[: got.n], ddof=1) / math.sqrt(got.n))
