"""experiments/super_resolution: Pihlgren et al.'s raw-feature loss against a plain torchvision computation,
the network, the scores, and the driver's quick run."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def sr():
    return load_script("experiments/super_resolution/sr.py", "percept_experiments_sr", reuse=True)


@pytest.fixture(scope="module")
def driver():
    return load_script("experiments/super_resolution/run.py", "super_resolution_run", reuse=True)


@pytest.fixture(scope="module")
def pairs():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(3, 3, 64, 64, generator=g)
    y = (x + 0.15 * torch.randn(3, 3, 64, 64, generator=g)).clamp(0, 1)
    return x, y


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(5)
    return torchvision.models.resnet18(weights=None).eval()


@pytest.fixture(scope="module")
def alexnet(assets_dir):
    path = assets_dir / "weights" / "torchvision" / "alexnet_features.pth"
    if not path.is_file():
        pytest.skip("ImageNet AlexNet features not in the asset folder")
    model = torchvision.models.alexnet(weights=None).eval()
    model.features.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model


def _trunk(model: torch.nn.Module, k: int) -> torch.nn.Module:
    children = list(model.features.children()) if hasattr(model, "features") else list(model.children())
    return torch.nn.Sequential(*children[: k + 1])


# ------------------------------------------------------------------------------ the raw-feature loss
@pytest.mark.parametrize("layer", [2, 4, 5])
def test_feature_loss_is_the_mse_of_raw_features_of_unnormalised_images(sr, resnet18, pairs, layer):
    x, y = pairs
    loss = sr.FeatureLoss("resnet18", layer, weights=resnet18.state_dict(), reduction="none")
    with torch.no_grad():
        trunk = _trunk(resnet18, layer)
        want = (trunk(x) - trunk(y)).square().mean(dim=(1, 2, 3))  # [0, 1] images straight into the network
        got = loss(x, y)
    torch.testing.assert_close(got, want, rtol=2e-5, atol=1e-7)


def test_feature_loss_on_the_imagenet_alexnet(sr, alexnet, pairs):
    x, y = pairs
    trunk = _trunk(alexnet, 4)  # relu2
    with torch.no_grad():
        raw = (trunk(x) - trunk(y)).square().mean(dim=(1, 2, 3))
        normed = (trunk((x - MEAN) / STD) - trunk((y - MEAN) / STD)).square().mean(dim=(1, 2, 3))
        torch.testing.assert_close(sr.FeatureLoss("alexnet", 4, reduction="none")(x, y), raw, rtol=2e-5, atol=1e-7)
        torch.testing.assert_close(
            sr.FeatureLoss("alexnet", 4, input_norm="imagenet", reduction="none")(x, y), normed, rtol=2e-5, atol=1e-7
        )
        # reductions: batch mean (the default) and sum
        torch.testing.assert_close(sr.FeatureLoss("alexnet", 4)(x, y), raw.mean(), rtol=2e-5, atol=1e-7)
        torch.testing.assert_close(sr.FeatureLoss("alexnet", 4, reduction="sum")(x, y), raw.sum(), rtol=2e-5, atol=1e-7)


def test_feature_loss_with_channel_normalisation(sr, resnet18, pairs):
    x, y = pairs
    loss = sr.FeatureLoss("resnet18", 4, weights=resnet18.state_dict(), channel_norm=True, reduction="none")
    with torch.no_grad():
        trunk = _trunk(resnet18, 4)
        a, b = F.normalize(trunk(x), dim=1), F.normalize(trunk(y), dim=1)
        want = (a - b).square().sum(dim=1).mean(dim=(1, 2))
        torch.testing.assert_close(loss(x, y), want, rtol=1e-4, atol=1e-7)


def test_feature_loss_gradient_matches_the_plain_computation(sr, resnet18, pairs):
    x, y = pairs
    loss = sr.FeatureLoss("resnet18", 4, weights=resnet18.state_dict())
    a = x.clone().requires_grad_(True)
    loss(a, y).backward()
    b = x.clone().requires_grad_(True)
    trunk = _trunk(resnet18, 4)
    (trunk(b) - trunk(y)).square().mean(dim=(1, 2, 3)).mean().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-9)


def test_build_loss_names_and_errors(sr):
    assert isinstance(sr.build_loss("feature-resnet18:4@random"), sr.FeatureLoss)
    assert type(sr.build_loss("l2")).__name__ == "L2"
    with pytest.raises(ValueError, match="feature-<arch>:<layer>"):
        sr.build_loss("feature-alexnet")
    with pytest.raises(KeyError, match="unknown metric"):
        sr.build_loss("not-a-metric")
    with pytest.raises(ValueError, match="similarity"):
        sr.build_loss("psnr")
    with pytest.raises(ValueError, match="unknown backbone"):
        sr.build_loss("feature-notanet:3@random")
    with pytest.raises(ValueError, match="input_norm"):
        sr.FeatureLoss("resnet18", 4, weights="random", input_norm="lpips")


# ------------------------------------------------------------------------------------ network, data
def test_untrained_network_is_bicubic_interpolation(sr):
    lr = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    for factor in (2, 4):
        net = sr.SRNet(factor)
        want = F.interpolate(lr, scale_factor=factor, mode="bicubic", align_corners=False).clamp(0, 1)
        with torch.no_grad():
            torch.testing.assert_close(net(lr), want)
        assert net(lr).shape == (2, 3, 16 * factor, 16 * factor)


def test_downscale_checks_and_shapes(sr):
    hr = torch.rand(2, 3, 64, 64)
    assert sr.downscale(hr, 4).shape == (2, 3, 16, 16)
    flat = torch.full((1, 3, 64, 64), 0.3)
    torch.testing.assert_close(sr.downscale(flat, 2), torch.full((1, 3, 32, 32), 0.3))
    with pytest.raises(ValueError, match="factor"):
        sr.downscale(hr, 3)
    with pytest.raises(ValueError, match="multiple"):
        sr.downscale(torch.rand(1, 3, 62, 62), 4)


def test_scores_equal_plain_formulas(sr, pairs):
    skm = pytest.importorskip("skimage.metrics")
    x, y = pairs
    s = sr.Evaluator().scores(x, y)
    mse = (x - y).double().square().mean(dim=(1, 2, 3))
    np.testing.assert_allclose(s["psnr"].numpy(), (10 * torch.log10(1 / mse)).numpy(), rtol=1e-5)
    luma = lambda t: (0.299 * t[:, 0] + 0.587 * t[:, 1] + 0.114 * t[:, 2]).double().numpy()  # noqa: E731
    want = [skm.structural_similarity(a, b, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                      use_sample_covariance=False) for a, b in zip(luma(x), luma(y))]
    np.testing.assert_allclose(s["ssim"].numpy(), want, atol=2e-4)
    assert s["lpips_alex"].shape == (3,) and float(s["lpips_alex"].min()) > 0
    assert s["lpips_squeeze"].shape == (3,) and float(s["lpips_squeeze"].min()) > 0
    same = sr.Evaluator().scores(x, x)
    assert float(same["lpips_squeeze"].abs().max()) < 1e-6 and float(same["ssim"].min()) > 0.9999


def test_total_variation(sr):
    a = 0.1
    board = 0.5 + a * (-1.0) ** (torch.arange(8).view(-1, 1) + torch.arange(6).view(1, -1))
    y = board.expand(2, 3, 8, 6)
    assert float(sr.total_variation(y)) == pytest.approx(2 * (2 * a) ** 2)
    img = torch.rand(1, 3, 9, 7, generator=torch.Generator().manual_seed(0)).numpy()
    want = np.mean(np.diff(img, axis=2) ** 2) + np.mean(np.diff(img, axis=3) ** 2)
    assert float(sr.total_variation(torch.from_numpy(img))) == pytest.approx(want, rel=1e-6)


def test_tv_weight_smooths_the_output(sr):
    g = torch.Generator().manual_seed(0)
    hr = (torch.rand(64, 3, 32, 32, generator=g) * 255).to(torch.uint8)

    def nothing(output, target):
        return 0 * output.sum()

    config = sr.TrainConfig(factor=2, steps=30, batch_size=8, eval_every=100, tv_weight=10.0)
    model, _ = sr.train_sr(nothing, hr[:56], hr[56:], config)
    lr = sr.downscale(sr.to_float(hr[56:]), 2)
    with torch.no_grad():
        assert float(sr.total_variation(model(lr))) < 0.9 * float(sr.total_variation(sr.bicubic_upscale(lr, 2)))


def test_summarise(sr):
    out = sr.summarise({"psnr": torch.tensor([1.0, 2.0, 3.0, 6.0])})
    assert out["psnr"] == 3.0
    assert math.isclose(out["psnr_se"], np.std([1, 2, 3, 6], ddof=1) / 2)


# --------------------------------------------------------------------------------------------- driver
def test_quick_run_writes_labelled_results(driver, tmp_path, capsys, monkeypatch):
    out = tmp_path / "sr"
    argv = ["--quick", "--out", str(out), "--losses", "l2", "feature-resnet18:4@random+tv=0.5", "--steps", "4",
            "--eval-every", "2", "--no-progress"]
    trained_tv = []  # the TV weight each training actually received, in --losses order
    real_train = driver.sr.train_sr

    def spy(loss_fn, train, val, config, **kwargs):
        trained_tv.append(config.tv_weight)
        return real_train(loss_fn, train, val, config, **kwargs)

    monkeypatch.setattr(driver.sr, "train_sr", spy)
    assert driver.main(argv) == 0
    assert trained_tv == [0.0, 0.5]
    with open(out / "summary.csv") as f:
        rows = {r["loss"]: r for r in csv.DictReader(f)}
    feature = "feature-resnet18:4@random+tv=0.5"
    assert set(rows) == {"bicubic", "l2", feature}
    assert rows[feature]["weights"] == "random" and rows["l2"]["weights"] == "n/a"
    assert float(rows[feature]["tv_weight"]) == 0.5 and float(rows["l2"]["tv_weight"]) == 0.0
    assert all(r["data"] == "REDUCED CelebA (10k half-res)" for r in rows.values())
    assert all(r["n_test"] == "32" for r in rows.values())
    with open(out / "curves.csv") as f:
        curves = list(csv.DictReader(f))
    assert [r["step"] for r in curves if r["loss"] == "l2"] == ["0", "2", "4"]
    assert all(float(r["val_lpips_squeeze"]) > 0 for r in curves)
    info = json.loads((out / "run.json").read_text())
    assert info["data"] == "REDUCED CelebA (10k half-res)" and "torch" in info["machine"]
    with np.load(out / "examples.npz") as f:
        assert f["hr"].shape == (8, 3, 64, 64) and f["lr"].shape == (8, 3, 16, 16)
        assert f["out:l2"].dtype == np.uint8
    with np.load(out / "per_image.npz") as f:
        assert f["l2|psnr"].shape == (32,) and f[f"{feature}|lpips_squeeze"].shape == (32,)
        # the summary is the mean of the per-image scores
        assert float(rows["l2"]["psnr"]) == pytest.approx(float(f["l2|psnr"].mean()), abs=1e-5)
    assert (out / "examples.png").is_file()
    # a rerun of one loss replaces its row and keeps the others
    assert driver.main(["--quick", "--out", str(out), "--losses", "l2", "--steps", "4", "--eval-every", "2",
                        "--no-progress"]) == 0
    with open(out / "summary.csv") as f:
        assert sorted(r["loss"] for r in csv.DictReader(f)) == ["bicubic", feature, "l2"]
    # another protocol into the same folder is refused
    with pytest.raises(driver.RunError, match="another protocol"):
        driver.main(["--quick", "--out", str(out), "--losses", "l2", "--steps", "6", "--no-progress"])


def test_tv_suffix(driver):
    assert driver.split_tv("feature-alexnet:1+tv=1", 0.0) == ("feature-alexnet:1", 1.0)
    assert driver.split_tv("lpips-alex", 0.25) == ("lpips-alex", 0.25)
    assert driver.split_tv("l2+tv=1e-2", 0.0) == ("l2", 0.01)
    with pytest.raises(driver.RunError, match="TV weight"):
        driver.split_tv("l2+tv=-1", 0.0)
    with pytest.raises(driver.RunError, match="bad TV weight"):
        driver.split_tv("l2+tv=1e", 0.0)


def test_bad_loss_stops_before_training(driver, tmp_path):
    with pytest.raises(driver.RunError, match="unknown metric"):
        driver.main(["--quick", "--out", str(tmp_path / "x"), "--losses", "l2", "nope"])
    assert not (tmp_path / "x").exists()
