"""experiments/dps_analysis/run.py: Sjögren et al.'s analysis.py (pass tables) and feature_map.py (PNG).

The paper's test images are not redistributed (data/download_dps_images.py fetches them), so the driver runs here
on its generated STAND-IN images. Checked: the pass rules and the color_stain pairing on hand-made distances; the
driver's distances against the dps-* metrics on the same image pairs; the feature-map grid against a plain
computation; the image verification by git blob id.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scripts import load_script

import percept

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run():
    return load_script("experiments/dps_analysis/run.py", "run_dps_analysis")


@pytest.fixture(scope="module")
def quick(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("dps_analysis")
    assert run.main(["--quick", "--stand-in", "--out", str(out)]) == 0
    return out


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_quick_run_writes_the_tables_of_every_configuration(quick):
    passes = _rows(quick / "passes.csv")
    # AlexNet x 5 methods x 2 normalisations x 4 categories, with the paper's pair counts
    assert len(passes) == 40
    assert {(r["category"], r["pairs"]) for r in passes} == {
        ("translate", "5"),
        ("rotate", "30"),
        ("invert", "11"),
        ("color_stain", "5"),
    }
    assert all(0 <= int(r["passes"]) <= int(r["pairs"]) for r in passes)
    assert {r["images"] for r in passes} == {"stand-in"} and {r["backbone"] for r in passes} == {"imagenet"}
    assert {r["arch"] for r in passes} == {"alexnet"}
    # the original's printed lines, in its loop order (no channel norm first; spatial, mean, mean+spatial, ...)
    lines = (quick / "passes.txt").read_text().split("\n")
    assert lines[0] == f"color_stain alexnet_spatial_simple {passes[0]['passes']} 5"
    names = list(dict.fromkeys(line.split()[1] for line in lines if line))
    assert names[:3] == ["alexnet_spatial_simple", "alexnet_mean_simple", "alexnet_mean+spatial_simple"]
    assert names[-1] == "alexnet_sort+spatial"
    results = _rows(quick / "results.csv")
    assert len(results) == 10 * (5 + 30 + 11 + 10)
    assert list(results[0])[:8] == [
        "arch",
        "method",
        "norm",
        "orig",
        "transformed",
        "d_aug",
        "d_ref_black",
        "d_ref_blue",
    ]
    info = json.loads((quick / "machine.json").read_text())
    assert info["run"]["images"]["label"] == "stand-in" and info["run"]["trunks"]["alex"]["weights"] == "imagenet"
    assert info["run"]["images"]["pairs"] == {"color_stain": 10, "invert": 11, "rotate": 30, "translate": 5}
    assert "torch" in info


def test_the_paper_s_finding_on_a_large_translation(quick):
    """Spatial comparison fails the large translations (a flat colour or noise looks closer), sort and mean pass
    them (dps_analysis.md §2.4), on the stand-in images with the real AlexNet."""
    table = {(r["method"], r["channel_norm"], r["category"]): int(r["passes"]) for r in _rows(quick / "passes.csv")}
    for norm in ("True", "False"):
        assert table[("spatial", norm, "translate")] == 0
        assert table[("sort", norm, "translate")] == 5 and table[("mean", norm, "translate")] == 5


def test_driver_distances_equal_the_dps_metrics(run, quick):
    """Every configuration's distances (taps once per image, then percept's DPS functions) equal the dps-alex
    metric evaluated on the same image pairs."""
    images = run.stand_in_images(0)
    index = {name: k for k, name in enumerate(images.names)}
    rows = _rows(quick / "results.csv")
    by_config: dict[tuple, list] = {}
    for r in rows:
        by_config.setdefault((r["method"], r["norm"] == "yes_channel_norm"), []).append(r)
    assert len(by_config) == 10
    for (method, norm), config_rows in by_config.items():
        metric = percept.get_metric("dps-alex", method=method, channel_norm=norm, reduction="none")
        picked = config_rows[::7]  # every category, a few pairs each
        x = torch.stack([images.tensors[index[r["orig"]]] for r in picked])
        y = torch.stack([images.tensors[index[r["transformed"]]] for r in picked])
        white = images.tensors[images.refs["white"]].expand_as(x)
        with torch.no_grad():
            want = metric(x, y).double().numpy()
            want_white = metric(x, white).double().numpy()
        np.testing.assert_allclose([float(r["d_aug"]) for r in picked], want, rtol=2e-5, atol=1e-7)
        np.testing.assert_allclose([float(r["d_ref_white"]) for r in picked], want_white, rtol=2e-5, atol=1e-7)


def test_pass_rules_and_stain_pairing_by_hand(run):
    """One layer of 1x1 'features' with the mean method and no normalisation: d(i, j) = (v_i - v_j)^2."""
    images = run.ImageSet(label="test")
    values = {}

    def add(name, v):
        values[name] = v
        return images.add(name, torch.zeros(3, 1, 1))

    for k, ref in enumerate(run.REFERENCES):
        images.refs[ref] = add(f"ref/ref_{ref}.png", 10.0 + k)  # d(X=0, refs) >= 100
    x = add("translate/a.png", 0.0)
    for name, v in (("translate/a_1.png", 9.0), ("translate/a_2.png", 10.0), ("translate/a_3.png", 11.0)):
        images.pairs.append(run.Pair("translate", "translate/a.png", name, "pair", x, add(name, v)))
    s = add("color_stain/s.png", 0.0)
    t = add("color_stain/t.png", 0.0)
    for orig, i, d_ref, d_stain in (("color_stain/s.png", s, 2.0, 1.0), ("color_stain/t.png", t, 1.0, 1.0)):
        # listed stain first: the pairing is by name, not by order
        images.pairs.append(run.Pair("color_stain", orig, orig + "_stain", "stain", i, add(orig + "_stain", d_stain)))
        images.pairs.append(run.Pair("color_stain", orig, orig + "_ref", "ref", i, add(orig + "_ref", d_ref)))
    taps = [torch.tensor([values[n] for n in images.names]).view(-1, 1, 1, 1)]
    rows, stats = run.analyse(images, taps, "toy", "none", "mean", False)
    got = {r["category"]: (r["passes"], r["pairs"]) for r in stats}
    # translate: 81 and 100 are <= min over refs (100): pass; 121 > 100: fail. stain: 1 < 4 passes, 1 < 1 does not
    assert got == {"translate": (2, 3), "color_stain": (1, 2)}
    assert [float(r["d_aug"]) for r in rows[:3]] == [81.0, 100.0, 121.0]
    assert float(rows[0]["d_ref_random"]) == 16.0**2
    assert run.passes_pair(1.0, [1.0, 2.0]) and not run.passes_pair(1.0 + 1e-9, [1.0, 2.0])
    assert run.run_name("alexnet", "spatial+mean", False) == "alexnet_mean+spatial_simple"
    assert run.run_name("vgg16", "sort", True) == "vgg16_sort"


def test_feature_map_grid_by_hand(run):
    # 2 images, 2 channels, 1x2 maps; scale 1: each tile is [raw row; gap; normalised row], rows scaled by max
    tap = torch.tensor([[[[3.0, 0.0]], [[4.0, 1.0]]], [[[0.0, 6.0]], [[0.0, 0.0]]]])  # (K=2, C=2, 1, 2)
    grid = run.feature_map_grid(tap, scale=1, columns=2).astype(np.float64) / 255
    norm = F.normalize(tap, dim=1)
    # tile of channel 0 (maps 2 px wide, 2 px gaps): raw 3 0 | 0 6 over max 6; normalised 0.6 0 | 0 1 over max 1
    np.testing.assert_allclose(grid[0, [0, 1, 4, 5]], np.array([3, 0, 0, 6]) / 6, atol=1 / 255)
    np.testing.assert_allclose(grid[3, [0, 1, 4, 5]], [norm[0, 0, 0, 0], 0, 0, 1], atol=1 / 255)
    assert (grid[1:3, :6] == 128 / 255).all() and (grid[:, 2:4] == 128 / 255).all()  # grey gaps inside a tile
    # tile of channel 1 (to the right after a 6 px white gap): raw 4 1 | 0 0 over 4; normalised 0.8 1 | 0 0
    x0 = 6 + 6
    assert (grid[:, 6:12] == 1).all()
    np.testing.assert_allclose(grid[0, [x0, x0 + 1, x0 + 4, x0 + 5]], [1, 0.25, 0, 0], atol=1 / 255)
    np.testing.assert_allclose(grid[3, [x0, x0 + 1]], [0.8, 1.0], atol=1 / 255)
    assert grid.shape == (4, 2 * 6 + 6)


def test_feature_map_png_shows_the_image_and_its_versions(run, tmp_path):
    images = run.stand_in_images(0)
    chosen = run.find_feature_images(images, ["3ring", "color"])
    assert [images.names[k] for k in chosen] == [
        "color_stain/3ring.png",
        "color_stain/3ring_ref.png",
        "color_stain/3ring_stain.png",
    ]
    (path,) = run.write_feature_maps(images, ["3ring", "color"], "alex", "imagenet", tmp_path, "cpu", [0])
    from PIL import Image

    with Image.open(path) as im:
        png = np.asarray(im)
    assert path.name == "alexnet_3ring-color_layer0.png" and png.ndim == 2
    # the grid below the caption equals feature_map_grid of AlexNet relu1 on those images
    metric = percept.get_metric("dps-alex")
    with torch.no_grad():
        tap = metric.backbone(
            percept.metrics.deep.scale_input(torch.stack([images.tensors[k] for k in chosen]), "lpips")
        )
    grid = run.feature_map_grid(tap[0])
    assert png.shape[1] == grid.shape[1] and np.array_equal(png[-grid.shape[0] :], grid)
    with pytest.raises(ValueError, match="no image path"):
        run.find_feature_images(images, ["nothing-like-this"])


def test_image_folders_are_read_and_verified(run, tmp_path):
    from PIL import Image

    dl = load_script("data/download_dps_images.py", "download_dps_images")
    assert dl.git_blob_id(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"  # `git hash-object`
    assert len(dl.read_manifest()) == 90
    folder = tmp_path / "images"
    (folder / "ref").mkdir(parents=True)
    (folder / "color_stain").mkdir()
    for k, ref in enumerate(run.REFERENCES):
        Image.new("RGB", (32, 32), (k * 30, 0, 0)).save(folder / "ref" / f"ref_{ref}.png")
    for name, colour in (("x", (0, 0, 0, 255)), ("x_ref", (9, 9, 9, 120)), ("x_stain", (200, 0, 0, 255))):
        Image.new("RGBA", (32, 32), colour).save(folder / "color_stain" / f"{name}.png")
    images = run.load_folder(folder)
    assert images.label == "folder" and images.verification["matched"] == 0  # not the paper's images
    assert [(p.kind, p.transformed) for p in images.pairs] == [
        ("ref", "color_stain/x_ref.png"),
        ("stain", "color_stain/x_stain.png"),
    ]
    x_ref = images.tensors[images.names.index("color_stain/x_ref.png")]
    assert torch.allclose(x_ref, torch.full_like(x_ref, 9 / 255))  # alpha dropped, not composited (as PIL RGB)
    (folder / "color_stain" / "x_stain.png").unlink()
    with pytest.raises(ValueError, match="X_ref and X_stain"):
        run.load_folder(folder)
    # the downloader refuses a file that is not the original
    source = tmp_path / "fake"
    first = next(iter(dl.read_manifest()))
    (source / first).parent.mkdir(parents=True)
    (source / first).write_bytes(b"not an image")
    with pytest.raises(SystemExit, match="git blob id"):
        dl.fetch_images(tmp_path / "dest", source)
