"""The LPIPS paper's L2 and SSIM baselines (lpips_elpips.md A7): CIELAB as ``skimage.color.rgb2lab`` and the
SSIM of ``skimage.metrics.structural_similarity`` (7x7 uniform window), checked against scikit-image on the
offline photographs (LPIPS example patches, CelebA sample) and on a colour grid covering every branch."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import pytorch_msssim
import torch
from PIL import Image
from skimage.color import rgb2lab
from skimage.metrics import structural_similarity

import percept
from percept import color
from percept.functional.ssim import gaussian_window, ssim_skimage
from percept.metrics.ssim import SSIM, UniformSSIM


def _load(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).copy()


@pytest.fixture(scope="module")
def photos(assets_dir) -> list[np.ndarray]:
    """The three LPIPS example patches (64x64) and four CelebA photographs (218x178), uint8 HWC."""
    lpips = [assets_dir / "data" / "images" / "lpips_examples" / f"ex_{n}.png" for n in ("ref", "p0", "p1")]
    celeba = sorted((assets_dir / "data" / "celeba_sample").glob("*.jpg"))[:4]
    if not all(p.is_file() for p in lpips) or len(celeba) < 4:
        pytest.skip("offline images (data/images/lpips_examples, data/celeba_sample) not in the asset folder")
    return [_load(p) for p in lpips + celeba]


@pytest.fixture(scope="module")
def pairs(photos) -> list[tuple[np.ndarray, np.ndarray]]:
    """Image pairs of equal size: the LPIPS triplet (ref-p0, ref-p1), two CelebA pairs and noisy copies."""
    rng = np.random.default_rng(0)
    noisy = [np.clip(im + rng.normal(0, 12, im.shape), 0, 255).astype(np.uint8) for im in (photos[0], photos[3])]
    return [
        (photos[0], photos[1]),
        (photos[0], photos[2]),
        (photos[3], photos[4]),
        (photos[5], photos[6]),
        (photos[0], noisy[0]),
        (photos[3], noisy[1]),
    ]


def _tensor(im: np.ndarray, dtype=torch.float64) -> torch.Tensor:
    """uint8 HWC -> (1, C, H, W) in [0, 1]."""
    im = im[..., None] if im.ndim == 2 else im
    return torch.from_numpy(im).permute(2, 0, 1)[None].to(dtype) / 255


def _colour_grid() -> np.ndarray:
    """Every combination of 18 levels per channel (incl. the darkest values, where both the sRGB curve and
    the Lab f(t) are linear) as one uint8 image."""
    levels = [0, 1, 2, 3, 5, 8, 10, 11, 12, 20, 30, 45, 64, 100, 128, 180, 230, 255]
    grid = np.array(list(itertools.product(levels, repeat=3)), dtype=np.uint8)
    return grid.reshape(18 * 18, 18, 3)


# ------------------------------------------------------------------------------------------------------- CIELAB
def test_rgb_to_lab_equals_skimage_on_photographs_and_every_branch(photos):
    for im in photos + [_colour_grid()]:
        ref = rgb2lab(im)  # uint8 -> float64 in [0, 1], D65, 2 degree observer
        ours = color.rgb_to_lab(_tensor(im))[0].permute(1, 2, 0).numpy()
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-9)
        ours32 = color.rgb_to_lab(_tensor(im, torch.float32))
        assert ours32.dtype == torch.float32
        np.testing.assert_allclose(ours32[0].permute(1, 2, 0).numpy(), ref, rtol=0, atol=3e-4)  # L* in [0, 100]
    scaled = color.rgb_to_lab_scaled(_tensor(photos[0]))
    torch.testing.assert_close(scaled, color.rgb_to_lab(_tensor(photos[0])) / 100)


def test_rgb_to_lab_batches_and_has_finite_gradients():
    x = torch.rand(2, 3, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x[0, :, 0, 0] = 0.0  # black: the linear branches
    x[0, :, 0, 1] = color.SRGB_THRESHOLD  # exactly on the sRGB threshold
    lab = color.rgb_to_lab(x)
    for n in range(2):
        ref = rgb2lab(x[n].permute(1, 2, 0).numpy())
        np.testing.assert_allclose(lab[n].permute(1, 2, 0).numpy(), ref, rtol=0, atol=1e-9)
    ramp = torch.linspace(0, 1, 2001, dtype=torch.float64)  # every 0.0005: both sides of each threshold
    ramp = torch.stack([ramp, ramp.flip(0), ramp.roll(700)]).view(1, 3, 1, -1)
    ref = rgb2lab(ramp[0].permute(1, 2, 0).numpy())
    np.testing.assert_allclose(color.rgb_to_lab(ramp)[0].permute(1, 2, 0).numpy(), ref, rtol=0, atol=1e-9)
    x.requires_grad_(True)
    color.rgb_to_lab(x).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    y = torch.rand(1, 3, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 0.9 + 0.05
    y[0, :, 0, 0] = 0.01  # below both thresholds (sRGB linear segment, Lab linear f)
    assert torch.autograd.gradcheck(color.rgb_to_lab, (y.requires_grad_(True),))


def test_rgb_to_lab_rejects_grey():
    with pytest.raises(ValueError, match="grey images have no a\\*, b\\*"):
        color.rgb_to_lab(torch.rand(1, 1, 8, 8))


# ----------------------------------------------------------------------------------------------------- L2 in Lab
def test_l2_lab_is_the_lpips_repositorys_l2_baseline(pairs):
    """The LPIPS repo's ``l2(lab0, lab1, range=100.)`` is 0.5 * mean((lab0/100 - lab1/100)^2); ours is twice it."""
    metric = percept.get_metric("l2", colorspace="lab", reduction="none")
    for a, b in pairs:
        original_helper = 0.5 * np.mean((rgb2lab(a) / 100.0 - rgb2lab(b) / 100.0) ** 2)
        ours = metric(_tensor(a), _tensor(b))
        assert ours.shape == (1,)
        np.testing.assert_allclose(ours.item(), 2 * original_helper, rtol=1e-10)
        np.testing.assert_allclose(
            metric(_tensor(a, torch.float32), _tensor(b, torch.float32)).item(), 2 * original_helper, rtol=1e-4
        )
    # the RGB L2 is unchanged, and Lab gives another ranking-relevant value
    a, b = pairs[0]
    rgb = percept.get_metric("l2")(_tensor(a), _tensor(b)).item()
    np.testing.assert_allclose(rgb, np.mean((a / 255.0 - b / 255.0) ** 2), rtol=1e-10)


def test_l2_lab_batch_and_gradient(pairs):
    (a, b), (c, d) = pairs[0], pairs[1]
    x = torch.cat([_tensor(a), _tensor(c)]).requires_grad_(True)
    y = torch.cat([_tensor(b), _tensor(d)])
    metric = percept.get_metric("l2", colorspace="lab", reduction="sum")
    value = metric(x, y)
    value.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    per_image = percept.get_metric("l2", colorspace="lab", reduction="none")(x.detach(), y)
    torch.testing.assert_close(value.detach(), per_image.sum())
    # both sides requiring a gradient (autograd, not the closed form)
    y = y.clone().requires_grad_(True)
    metric(x, y).backward()
    assert torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------ SSIM as in the published table
@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_ssim_skimage_equals_structural_similarity_on_rgb_0_255(pairs, dtype, atol):
    """The original's RGB DSSIM: ``compare_ssim(uint8 a, uint8 b, data_range=255, multichannel=True)``."""
    metric = percept.get_metric("ssim-skimage", reduction="none")
    for a, b in pairs:
        ref = structural_similarity(a.astype(np.float64), b.astype(np.float64), data_range=255, channel_axis=2)
        assert ref == pytest.approx(structural_similarity(a, b, channel_axis=2), abs=1e-12)  # uint8: range 255
        ours = 1 - metric(_tensor(a, dtype), _tensor(b, dtype))
        assert ours.dtype == dtype
        np.testing.assert_allclose(ours.item(), ref, rtol=0, atol=atol)


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_ssim_skimage_equals_structural_similarity_on_lab_range_100(pairs, dtype, atol):
    """The published table's default: ``compare_ssim(rgb2lab(a), rgb2lab(b), data_range=100., multichannel=True)``."""
    metric = percept.get_metric("ssim-skimage", colorspace="lab", reduction="none")
    for a, b in pairs:
        ref = structural_similarity(rgb2lab(a), rgb2lab(b), data_range=100, channel_axis=2)
        np.testing.assert_allclose(1 - metric(_tensor(a, dtype), _tensor(b, dtype)).item(), ref, rtol=0, atol=atol)


def test_ssim_skimage_grey_batch_and_sizes(pairs):
    """Grey images, a batch of several pairs, odd and non-square sizes down to the 7x7 window."""
    metric = percept.get_metric("ssim-skimage", colorspace="grey", reduction="none")
    a, b = pairs[2]
    grey_a = (a.astype(np.float64) @ np.array(color.LUMA_BT601)) / 255
    grey_b = (b.astype(np.float64) @ np.array(color.LUMA_BT601)) / 255
    crops = [(slice(0, 218), slice(0, 178)), (slice(10, 17), slice(20, 27)), (slice(3, 40), slice(50, 61))]
    for rows, cols in crops:
        x, y = grey_a[rows, cols], grey_b[rows, cols]
        ref = structural_similarity(x, y, data_range=1)
        ours = 1 - metric(torch.from_numpy(x.copy())[None, None], torch.from_numpy(y.copy())[None, None])
        np.testing.assert_allclose(ours.item(), ref, rtol=0, atol=1e-10)
    batch_x = torch.stack([_tensor(p[0])[0] for p in pairs[:2]])
    batch_y = torch.stack([_tensor(p[1])[0] for p in pairs[:2]])
    refs = [structural_similarity(p[0], p[1], channel_axis=2) for p in pairs[:2]]
    ours = 1 - percept.get_metric("ssim-skimage", reduction="none")(batch_x, batch_y)
    np.testing.assert_allclose(ours.numpy(), refs, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="at least 7x7"):
        metric(torch.rand(1, 1, 6, 9), torch.rand(1, 1, 6, 9))


def test_ssim_skimage_reductions_and_the_functional_form(pairs):
    (a, b), (c, d) = pairs[0], pairs[1]
    x, y = torch.cat([_tensor(a), _tensor(c)]), torch.cat([_tensor(b), _tensor(d)])
    none = UniformSSIM(reduction="none")(x, y)
    torch.testing.assert_close(UniformSSIM(reduction="sum")(x, y), none.sum())
    torch.testing.assert_close(UniformSSIM()(x, y), none.mean())
    torch.testing.assert_close(ssim_skimage(x, y, reduction="none"), 1 - none)
    assert UniformSSIM()(x, x).item() == pytest.approx(0.0, abs=1e-12)


def test_ssim_skimage_is_differentiable(pairs):
    a, b = pairs[4]
    for space in ("rgb", "lab"):
        x = _tensor(a, torch.float32).requires_grad_(True)
        loss = percept.get_metric("ssim-skimage", colorspace=space)(x, _tensor(b, torch.float32))
        loss.backward()
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 9, 10, dtype=torch.float64, generator=gen) * 0.9 + 0.05
    y = torch.rand(2, 3, 9, 10, dtype=torch.float64, generator=gen) * 0.9 + 0.05
    for space in ("rgb", "lab"):
        metric = UniformSSIM(colorspace=space, reduction="none")
        assert torch.autograd.gradcheck(metric, (x.clone().requires_grad_(True), y.clone().requires_grad_(True)))


# -------------------------------------------------------------------------- Gaussian SSIM in Lab (same code path)
def test_gaussian_ssim_lab_equals_pytorch_msssim_on_lab_over_100(pairs):
    metric = SSIM(colorspace="lab", reduction="none")
    # our exact float64 Gaussian in pytorch-msssim's layout (its own window is rounded to float32)
    window = gaussian_window(torch.float64).view(1, 1, 1, -1).repeat(3, 1, 1, 1)
    for a, b in pairs:
        lab_a = torch.from_numpy(rgb2lab(a) / 100).permute(2, 0, 1)[None]
        lab_b = torch.from_numpy(rgb2lab(b) / 100).permute(2, 0, 1)[None]
        ref = pytorch_msssim.ssim(lab_a, lab_b, data_range=1, size_average=False, win=window)
        np.testing.assert_allclose(1 - metric(_tensor(a), _tensor(b)).item(), ref.item(), rtol=0, atol=1e-10)


# ------------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("name", ["l2", "ssim", "ssim-skimage"])
def test_lab_on_grey_input_says_why(name):
    metric = percept.get_metric(name, colorspace="lab")
    with pytest.raises(ValueError, match="colorspace 'lab' converts RGB.*use colorspace='grey'"):
        metric(torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16))


@pytest.mark.parametrize("name", ["l1", "psnr", "ms-ssim", "watson-dft", "adaptive"])
def test_lab_is_refused_by_the_metrics_without_a_lab_baseline(name):
    with pytest.raises(ValueError, match="offered only by l2, ssim, ssim-skimage"):
        percept.get_metric(name, colorspace="lab")


def test_registry_lists_the_skimage_ssim():
    assert "ssim-skimage" in percept.list_metrics()
    assert isinstance(percept.get_metric("ssim-skimage", colorspace="Lab"), UniformSSIM)
    with pytest.raises(ValueError, match="or 'lab'"):
        percept.get_metric("ssim-skimage", colorspace="hsv")
