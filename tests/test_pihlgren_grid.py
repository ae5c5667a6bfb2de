"""experiments/pihlgren_grid/run.py: the paper's 14 x 4 grid, cell metrics against plain torchvision
computations, clear errors for architectures that cannot be built, and a resumable quick run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

#: spec dps_analysis.md §3.1 (the repository's layers_in_experiments), typed in here independently
SPEC_GRID = {
    "alexnet": (1, 4, 7, 11),
    "vgg11": (1, 4, 9, 19),
    "vgg16": (3, 8, 15, 29),
    "vgg16_bn": (5, 12, 22, 42),
    "vgg19": (3, 8, 17, 35),
    "densenet121": (2, 4, 6, 10),
    "resnet18": (2, 4, 5, 7),
    "resnet50": (2, 4, 5, 7),
    "resnext50_32x4d": (2, 4, 5, 7),
    "googlenet": (0, 5, 8, 15),
    "inception_v3": (2, 7, 9, 14),
    "squeezenet1_1": (1, 3, 7, 12),
    "efficientnet_b0": (0, 1, 4, 7),
    "efficientnet_b7": (0, 1, 4, 7),
}
#: channel counts of those layers (spec §3.1)
SPEC_CHANNELS = {"alexnet": (64, 192, 384, 256), "resnet18": (64, 64, 128, 512), "squeezenet1_1": (64, 128, 256, 512),
                 "googlenet": (64, 256, 512, 1024), "inception_v3": (64, 256, 288, 768),
                 "efficientnet_b0": (32, 16, 80, 320), "densenet121": (64, 256, 512, 1024)}


@pytest.fixture(scope="module")
def grid():
    return load_script("experiments/pihlgren_grid/run.py", "pihlgren_grid_run", reuse=True)


@pytest.fixture(scope="module")
def pairs():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 64, 64, generator=g)
    y = (x + 0.1 * torch.randn(3, 3, 64, 64, generator=g)).clamp(0, 1)
    return x, y


# ------------------------------------------------------------------------------------------ the grid
def test_default_grid_is_the_papers_14_by_4(grid):
    cells = grid.plan_cells(list(grid.ARCHS), None)
    assert len(cells) == 56
    got = {}
    for arch, k, pos in cells:
        got.setdefault(arch, []).append((k, pos))
    assert {a: tuple(k for k, _ in v) for a, v in got.items()} == SPEC_GRID
    assert all([p for _, p in v] == [1, 2, 3, 4] for v in got.values())
    assert list(got) == list(SPEC_GRID)  # the paper's order


@pytest.mark.parametrize("arch", sorted(SPEC_CHANNELS))
def test_layers_have_the_specs_channels(grid, arch):
    from percept.backbones import build_backbone

    cells = [k for a, k, _ in grid.plan_cells([arch], None)]
    assert build_backbone(arch, cells, weights="random").channels == SPEC_CHANNELS[arch]


def test_unbuildable_architectures_are_clear_errors(grid):
    with pytest.raises(grid.RunError, match="cannot build"):
        grid.plan_cells(["alexnet", "notanet"], None)
    with pytest.raises(grid.RunError, match="transformer"):
        grid.plan_cells(["vit_b_16"], None)
    with pytest.raises(grid.RunError, match="not one of the paper's 14"):
        grid.plan_cells(["mobilenet_v2"], None)
    assert grid.plan_cells(["mobilenet_v2"], [3, 6]) == [("mobilenet_v2", 3, None), ("mobilenet_v2", 6, None)]
    with pytest.raises(grid.RunError, match="do not exist"):
        grid.plan_cells(["alexnet"], [4, 13])


def test_cli_rejects_bad_architecture_before_any_work(grid, tmp_path):
    with pytest.raises(grid.RunError, match="cannot build"):
        grid.main(["--quick", "--archs", "resnet18", "resnet9000", "--out", str(tmp_path / "g")])
    assert not (tmp_path / "g").exists()


# ----------------------------------------------------------------------- cell metrics, plain computation
def _children(model):
    return list(model.features.children()) if hasattr(model, "features") else list(model.children())


def _plain_distance(model, k, x, y, channel_norm):
    trunk = torch.nn.Sequential(*_children(model)[: k + 1])
    a, b = trunk((x - MEAN) / STD), trunk((y - MEAN) / STD)
    if channel_norm:
        a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    return (a - b).square().sum(dim=1).mean(dim=(1, 2))


@pytest.mark.parametrize("norm", ["raw", "channel"])
@pytest.mark.parametrize("layer", [2, 5])
def test_random_cell_metric_equals_torchvision_resnet18(grid, pairs, norm, layer):
    x, y = pairs
    torch.manual_seed(7)
    model = torchvision.models.resnet18(weights=None).eval()  # the same seed gives the same random network
    with torch.no_grad():
        want = _plain_distance(model, layer, x, y, norm == "channel")
        got = grid.cell_metric("resnet18", layer, norm, "random", seed=7)(x, y)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("norm", ["raw", "channel"])
def test_imagenet_cell_metric_equals_torchvision_alexnet(grid, pairs, assets_dir, norm):
    path = assets_dir / "weights" / "torchvision" / "alexnet_features.pth"
    if not path.is_file():
        pytest.skip("ImageNet AlexNet features not in the asset folder")
    model = torchvision.models.alexnet(weights=None).eval()
    model.features.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    x, y = pairs
    with torch.no_grad():
        for layer in (4, 11):
            want = _plain_distance(model, layer, x, y, norm == "channel")
            got = grid.cell_metric("alexnet", layer, norm, "imagenet", seed=0)(x, y)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-8)


def test_weights_resolution(grid):
    assert grid.resolve_weights("alexnet", "auto") == "imagenet"  # in the offline asset folder
    assert grid.resolve_weights("alexnet", "random") == "random"
    if grid.resolve_weights("vgg16", "auto") == "random":  # no VGG-16 weights here
        with pytest.raises(grid.assets.MissingAssetError):
            grid.resolve_weights("vgg16", "imagenet")
    assert grid.imagenet_top1("alexnet") == pytest.approx(56.522)


# ------------------------------------------------------------------------------------------ quick run
def _rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_quick_run_is_row_by_row_and_resumable(grid, tmp_path, capsys):
    out = tmp_path / "grid"
    argv = ["--quick", "--archs", "alexnet", "resnet18", "--layers", "4", "--out", str(out), "--no-progress",
            "--limit", "8"]
    assert grid.main(argv) == 0
    metric, loss = _rows(out / "metric.csv"), _rows(out / "loss.csv")
    assert [(r["arch"], r["layer"], r["weights"]) for r in metric] == [("alexnet", "4", "imagenet"),
                                                                       ("resnet18", "4", "random")]
    assert all(r["data"] == "SYNTHETIC (not BAPPS)" and r["norm"] == "channel" for r in metric)
    assert metric[0]["layer_name"] == "relu2" and metric[0]["position"] == "2" and metric[1]["layer_name"] == "layer1"
    assert metric[0]["imagenet_top1"] == "56.522000" and metric[1]["imagenet_top1"] == ""
    assert all(0 <= float(r["2afc_mean"]) <= 1 and 0 <= float(r["jnd_pooled"]) <= 1 for r in metric)
    assert [r["arch"] for r in loss] == ["bicubic", "l2", "alexnet", "resnet18"]
    assert all(r["data"] == "REDUCED CelebA (10k half-res)" for r in loss)
    assert [r["norm"] for r in loss[2:]] == ["raw", "raw"]
    info = json.loads((out / "run.json").read_text())
    assert info["weights"] == {"alexnet": "imagenet", "resnet18": "random"} and "torch" in info["machine"]
    capsys.readouterr()

    # a rerun computes nothing; a removed row is computed again, the others kept as they were
    assert grid.main(argv) == 0
    assert "0 new metric rows, 0 new loss rows" in capsys.readouterr().out
    with open(out / "metric.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(metric[0]), lineterminator="\n")
        w.writeheader()
        w.writerow(metric[0])
    assert grid.main(argv + ["--studies", "metric"]) == 0
    again = _rows(out / "metric.csv")
    assert again[0] == metric[0] and again[1]["arch"] == "resnet18"
    assert again[1]["2afc_mean"] == metric[1]["2afc_mean"]  # same seed, same random network, same data

    # the raw-feature metric is an extra row per cell; another protocol is refused
    assert grid.main(argv + ["--studies", "metric", "--metric-norms", "raw"]) == 0
    assert sorted(r["norm"] for r in _rows(out / "metric.csv")) == ["channel", "channel", "raw", "raw"]
    with pytest.raises(grid.RunError, match="another protocol"):
        grid.main(argv + ["--studies", "loss", "--loss-steps", "2"])


def test_full_run_without_bapps_needs_synthetic(grid, tmp_path):
    with pytest.raises(grid.RunError, match="no BAPPS"):
        grid.main(["--archs", "alexnet", "--studies", "metric", "--data", str(tmp_path / "none"),
                   "--out", str(tmp_path / "g")])
