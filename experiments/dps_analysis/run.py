"""Sjögren et al. 2022's analysis of deep perceptual similarity (their ``analysis.py`` and ``feature_map.py``).

Which comparison of deep features survives large translations, rotations, black/white inversion and colour stains
(dps_analysis.md §2.4)? For every network x DPS method (spatial, mean, sort, spatial+mean, spatial+sort) x channel
normalisation (off / on), with the frozen ImageNet trunks and the LPIPS taps (AlexNet relu1-5, SqueezeNet 1.1
relu1/fire3/5/6/7/8/9, VGG-16 relu1_2 .. relu5_3), each test image X is compared with its transformed versions
X_<t> and with 7 reference images (solid black, blue, grey, green, red, white, uniform noise):

- translate / rotate / invert: a pair passes if d(X, X_<t>) <= d(X, ref) for every reference (the transformed
  image is at least as close as a flat colour or noise); the table counts passes / pairs;
- color_stain: passes if d(X, X_stain) < d(X, X_ref) (the same object on another background is closer than
  another object on the same background). The original paired consecutive files in directory order; here
  X_ref and X_stain are paired by name.

    python data/download_dps_images.py            # once: the paper's 90 images (verified by git blob id)
    python experiments/dps_analysis/run.py        # every network, method and normalisation: ~1 min on 1 core
    python experiments/dps_analysis/run.py --nets alex squeeze vgg --random-fallback   # VGG-16 on a random trunk
    python experiments/dps_analysis/run.py --feature-map 3ring color --feature-net alex   # feature_map.py -> PNG
    python experiments/dps_analysis/run.py --quick                                       # seconds (tests)

Images (``--images``): the paper's test images (``data/dps_images``, fetched by ``data/download_dps_images.py``;
every file checked against its git blob id in the authors' repository), or any folder in the same layout
(``ref/``, ``<category>/X.png`` and ``<category>/X_<t>.png``). Without them the driver generates STAND-IN images
of the same categories and counts from the offline photographs (E-LPIPS's dog, cat, teddy and house) and drawn
shapes and patterns; every output then says "stand-in", and its pass counts are not the paper's. Images are read
as the original did: PIL ``convert("RGB")`` (alpha dropped, not composited), no resizing.

Trunks: ImageNet weights (``--backbone-weights imagenet``). A network whose ImageNet weights are missing here
(VGG-16 offline) is skipped with the reason, or run on torchvision's random initialisation (seed ``--seed``) with
``--random-fallback``; the ``backbone`` column of every output says which trunk a row used. Each image goes
through each trunk once; every configuration's distances come from those taps with percept's DPS functions (the
``dps-*`` metrics' code; tests/test_dps_analysis.py checks the two agree).

``--feature-map IDS`` (the original ``feature_map.py``): the first category folder with images whose path holds
every id gives the image and its transformed versions (default ``3ring color``: color_stain/3ring with its _ref
and _stain); for each tapped layer a PNG shows every channel as a tile: the images side by side, the raw maps on
top and the channel-normalised maps below (each row scaled by that channel's maximum over the shown images).
The original showed them one channel at a time in a window (768x512, BOX resampling).

Writes ``--out`` (default results/dps_analysis/):
    results.csv     one row per (configuration, original, transformed): the original's columns (arch, method,
                    norm flag, orig, transformed, d_aug, d_ref x 7) with a header, and backbone, images
    passes.csv      passes / pairs per network, method, normalisation and category (+ the original's run name)
    passes.txt      the same as the original printed it: ``<category> <arch>_<method>[+spatial][_simple] <passes> <n>``
    machine.json    machine info, the image set (source, verified or not), trunks, options
    feature_maps/   <net>_<ids>_layer<k>.png (``--feature-map``)
``analysis.ipynb`` draws the pass table as a figure (passes.png).
"""

from __future__ import annotations

import argparse
import math
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import percept
from percept import assets
from percept.guard import RunLock, add_debug_flag, atomic_output, driver_main
from percept.metrics.deep import METHODS
from percept.metrics.deep_core import modify_features, normalize_channels, scale_input, squared_difference_mean
from percept.runinfo import machine_info, select_device, write_csv, write_json

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "results" / "dps_analysis"
DEFAULT_IMAGES = ROOT / "data" / "dps_images"
MANIFEST = Path(__file__).resolve().parent / "original_images.tsv"
NETS = ("alex", "squeeze", "vgg")
#: the original's loop order: no channel norm first; spatial, mean, spatial+mean, sort, spatial+sort
ORDER = ("spatial", "mean", "spatial+mean", "sort", "spatial+sort")
REFERENCES = ("black", "blue", "gray", "green", "red", "white", "random")
CATEGORIES = ("color_stain", "invert", "rotate", "translate")
RESULT_COLUMNS = (
    ["arch", "method", "norm", "orig", "transformed", "d_aug"]
    + [f"d_ref_{r}" for r in REFERENCES]
    + ["backbone", "images"]
)
PASS_COLUMNS = ["net", "arch", "backbone", "method", "channel_norm", "category", "passes", "pairs", "name", "images"]


# ============================================================================================== images
@dataclass
class Pair:
    """An original and one transformed version (``kind``: "pair" for translate/rotate/invert, "ref"/"stain" for
    color_stain); ``i``/``j`` index :attr:`ImageSet.tensors`."""

    category: str
    orig: str
    transformed: str
    kind: str
    i: int
    j: int


@dataclass
class ImageSet:
    """Every image once, (N, 3, H, W) in [0, 1], with the reference indices and the pairs to compare."""

    names: list[str] = field(default_factory=list)
    tensors: list[torch.Tensor] = field(default_factory=list)
    refs: dict[str, int] = field(default_factory=dict)
    pairs: list[Pair] = field(default_factory=list)
    source: str = ""
    label: str = ""  # "original" or "stand-in" (or "folder" for an unverified one)
    verification: dict = field(default_factory=dict)

    def add(self, name: str, x: torch.Tensor) -> int:
        self.names.append(name)
        self.tensors.append(x)
        return len(self.names) - 1

    def batch(self) -> torch.Tensor:
        shapes = {tuple(t.shape) for t in self.tensors}
        if len(shapes) != 1:
            raise ValueError(
                f"the images have different sizes {sorted(shapes)}: DPS compares equal sizes (no resizing)"
            )
        return torch.stack(self.tensors)


def to_tensor(image) -> torch.Tensor:
    """A PIL image as the original read it: ``convert("RGB")`` (alpha dropped), (3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255


def _verify(folder: Path) -> dict:
    """Compare a folder with the manifest of the paper's images: {"matched", "differ", "missing", "extra"}."""
    sys.path.insert(0, str(ROOT / "data"))
    try:
        from download_dps_images import git_blob_id, read_manifest
    finally:
        sys.path.pop(0)
    manifest = read_manifest(MANIFEST)
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    matched, differ = [], []
    for rel, (_, blob) in manifest.items():
        if rel in present:
            (matched if git_blob_id((folder / rel).read_bytes()) == blob else differ).append(rel)
    return {
        "matched": len(matched),
        "differ": differ,
        "missing": sorted(set(manifest) - present),
        "extra": sorted(present - set(manifest)),
    }


def load_folder(folder: Path) -> ImageSet:
    """An image folder in the original layout: ``ref/ref_<colour>.png`` (7) and ``<category>/X.* , X_<t>.*``."""
    from PIL import Image

    folder = Path(folder)
    if not (folder / "ref").is_dir():
        raise FileNotFoundError(f"{folder} has no ref/ folder (expected the layout of the original images/)")
    check = _verify(folder)
    original = check["matched"] == len(list(_manifest_paths())) and not (check["differ"] or check["extra"])
    shown = folder.resolve().relative_to(ROOT) if folder.resolve().is_relative_to(ROOT) else folder
    images = ImageSet(source=str(shown), label="original" if original else "folder", verification=check)

    def load(path: Path) -> torch.Tensor:
        with Image.open(path) as im:
            return to_tensor(im)

    for path in sorted((folder / "ref").iterdir()):
        if path.is_file():
            images.refs[path.stem.removeprefix("ref_")] = images.add(f"ref/{path.name}", load(path))
    if sorted(images.refs) != sorted(REFERENCES):
        raise ValueError(
            f"{folder / 'ref'}: expected the references {', '.join(REFERENCES)}, got {sorted(images.refs)}"
        )
    for category in sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name != "ref"):
        files = sorted(p for p in (folder / category).iterdir() if p.is_file())
        originals = [p for p in files if "_" not in p.stem]
        for orig in originals:
            i = images.add(f"{category}/{orig.name}", load(orig))
            for other in files:
                if other.stem.startswith(orig.stem + "_"):
                    suffix = other.stem[len(orig.stem) + 1 :]
                    kind = suffix if category == "color_stain" else "pair"
                    j = images.add(f"{category}/{other.name}", load(other))
                    images.pairs.append(Pair(category, images.names[i], images.names[j], kind, i, j))
    _check_color_stain(images)
    return images


def _manifest_paths():
    for line in MANIFEST.read_text().splitlines():
        if line and not line.startswith("#"):
            yield line.split("\t")[0]


def _check_color_stain(images: ImageSet) -> None:
    by_orig: dict[str, set] = {}
    for p in images.pairs:
        if p.category == "color_stain":
            by_orig.setdefault(p.orig, set()).add(p.kind)
    bad = {k: sorted(v) for k, v in by_orig.items() if v != {"ref", "stain"}}
    if bad:
        raise ValueError(f"color_stain needs exactly X_ref and X_stain per original X; got {bad}")


# ---------------------------------------------------------------------------------------- stand-in images
SIZE = 96
DARK_RED = (100, 25, 25)
ANGLES = (22, 45, 67, 90, 180)


def _photo(name: str, box: tuple[int, int, int, int], size: int):
    """A square crop (left, top, right, bottom) of an offline E-LPIPS photograph, resized to ``size``."""
    from PIL import Image

    root = assets.data_dir("data/images")
    if root is None:
        raise assets.MissingAssetError(
            "stand-in images need the offline photographs data/images/elpips/*.png (set PERCEPT_ASSETS), or pass "
            "--images with the paper's images (python data/download_dps_images.py)"
        )
    with Image.open(root / "elpips" / f"{name}.png") as im:
        return im.convert("RGB").crop(box).resize((size, size), Image.BICUBIC)


def _canvas(colour=(255, 255, 255)):
    from PIL import Image

    return Image.new("RGB", (SIZE, SIZE), colour)


def _rings(im, x: int, y: int, r: int = 9) -> None:
    from PIL import ImageDraw

    draw = ImageDraw.Draw(im)
    for dx, dy, c in ((0, 0, (230, 30, 30)), (2 * r + 4, 0, (30, 60, 230)), (0, 2 * r + 4, (30, 180, 50))):
        draw.ellipse((x + dx, y + dy, x + dx + 2 * r, y + dy + 2 * r), fill=c, outline=(0, 0, 0), width=3)


def _yinyang(size: int = 80, bg=(255, 255, 255)):
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (SIZE, SIZE), bg)
    draw = ImageDraw.Draw(im)
    o, r = (SIZE - size) // 2, size // 2
    c = (o + r, o + r)
    draw.ellipse((o, o, o + size, o + size), fill=(0, 0, 0))
    draw.pieslice((o, o, o + size, o + size), -90, 90, fill=(255, 255, 255))
    draw.ellipse((c[0] - r // 2, o, c[0] + r // 2, o + r), fill=(255, 255, 255))
    draw.ellipse((c[0] - r // 2, o + r, c[0] + r // 2, o + size), fill=(0, 0, 0))
    d = r // 6
    draw.ellipse((c[0] - d, o + r // 2 - d, c[0] + d, o + r // 2 + d), fill=(0, 0, 0))
    draw.ellipse((c[0] - d, o + 3 * r // 2 - d, c[0] + d, o + 3 * r // 2 + d), fill=(255, 255, 255))
    draw.ellipse((o, o, o + size, o + size), outline=(0, 0, 0), width=2)
    return im


def _pattern(kind: str) -> np.ndarray:
    """(96, 96) bool black/white test pattern."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    if kind == "blacksquare":
        return ((x % 32) >= 8) & ((x % 32) < 24) & ((y % 32) >= 8) & ((y % 32) < 24)
    if kind == "chessboard":
        return ((x // 12 + y // 12) % 2) == 0
    if kind == "dots":
        yy = y % 14
        xx = (x + 7 * ((y // 14) % 2)) % 14
        return (xx - 7) ** 2 + (yy - 7) ** 2 < 16
    if kind == "waves":
        return np.sin(x / 5 + 2 * np.sin(y / 9)) > 0
    if kind == "stripes":
        return ((x + y) // 8) % 2 == 0
    if kind == "grid":
        return ((x % 16) < 3) | ((y % 16) < 3)
    if kind == "diamonds":
        return ((np.abs(x % 24 - 12) + np.abs(y % 24 - 12)) // 4) % 2 == 0
    if kind == "sunburst":
        return (np.floor((np.arctan2(y - 48, x - 48) + np.pi) / (np.pi / 12)) % 2) == 0
    if kind == "rings":
        return (np.floor(np.hypot(x - 48, y - 48) / 6) % 2) == 0
    if kind == "maze":
        rng = np.random.default_rng(3)
        cells = rng.random((12, 12)) < 0.5
        return np.kron(cells, np.ones((8, 8), dtype=bool))
    raise ValueError(kind)


def stand_in_images(seed: int = 0) -> ImageSet:
    """STAND-IN images in the original categories and counts (7 references; translate 5, rotate 6 x 5 angles,
    invert 11, color_stain 5 triples), built from the offline photographs and drawn shapes; 96x96 RGB."""
    from PIL import Image, ImageDraw

    images = ImageSet(source="generated by experiments/dps_analysis/run.py:stand_in_images", label="stand-in")
    flat = {"black": (0, 0, 0), "blue": (0, 0, 255), "gray": (127, 128, 127), "green": (0, 255, 0)}
    flat |= {"red": (255, 0, 0), "white": (255, 255, 255)}
    for name in REFERENCES:
        if name == "random":
            noise = np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
            im = Image.fromarray(noise)
        else:
            im = _canvas(flat[name])
        images.refs[name] = images.add(f"ref/ref_{name}.png", to_tensor(im))

    def group(category: str, orig: str, original, others: dict[str, object]) -> None:
        i = images.add(f"{category}/{orig}.png", to_tensor(original))
        for suffix, im in others.items():
            kind = suffix if category == "color_stain" else "pair"
            j = images.add(f"{category}/{orig}_{suffix}.png", to_tensor(im))
            images.pairs.append(Pair(category, images.names[i], images.names[j], kind, i, j))

    dog = _photo("dog", (80, 60, 240, 220), 40)
    cat = _photo("cat", (110, 40, 290, 220), 40)
    teddy = _photo("adv_teddy", (60, 60, 300, 300), 40)
    house = _photo("adv_reference", (60, 60, 300, 300), 40)

    def placed(obj, at, bg=(255, 255, 255)):
        im = _canvas(bg)
        im.paste(obj, at)
        return im

    # translate: an object moved by about half the image on a plain background
    def rings_at(x, y, bg=(255, 255, 255)):
        im = _canvas(bg)
        _rings(im, x, y)
        return im

    def blob_at(x, y):
        im = _canvas()
        ImageDraw.Draw(im).ellipse((x, y, x + 34, y + 24), fill=(0, 0, 0))
        return im

    group("translate", "3ring", rings_at(4, 4), {"translate": rings_at(50, 50)})
    group("translate", "blob", blob_at(6, 10), {"translate": blob_at(52, 60)})
    group("translate", "dog", placed(dog, (4, 4)), {"translate": placed(dog, (52, 52))})
    green = (40, 170, 80)
    group("translate", "cat", placed(cat, (6, 50), green), {"translate": placed(cat, (50, 6), green)})
    group("translate", "house", placed(house, (50, 4)), {"translate": placed(house, (6, 52))})

    # rotate: the content rotated about the centre by 22, 45, 67, 90 and 180 degrees
    def rotations(name: str, im, fill) -> None:
        group("rotate", name, im, {str(a): im.rotate(a, Image.BICUBIC, fillcolor=fill) for a in ANGLES})

    for name, photo in (("dog", dog), ("cat", cat), ("teddy", teddy)):
        big = photo.resize((64, 64), Image.BICUBIC)
        rotations(name, placed(big, (16, 16), DARK_RED), DARK_RED)
    bands = _canvas()
    draw = ImageDraw.Draw(bands)
    for k, c in enumerate(((255, 0, 0), (0, 200, 0), (0, 0, 255))):
        draw.rectangle((12 + 24 * k, 20, 12 + 24 * (k + 1) - 1, 75), fill=c)
    rotations("bands", bands, (255, 255, 255))
    rotations("3ring", rings_at(24, 24), (255, 255, 255))
    rotations("yinyang", _yinyang(), (255, 255, 255))

    # invert: black/white patterns and their inversions
    for kind in ("blacksquare", "chessboard", "dots", "waves", "stripes", "grid", "diamonds", "sunburst", "rings"):
        im = Image.fromarray(np.where(_pattern(kind), 0, 255).astype(np.uint8)).convert("RGB")
        group("invert", kind, im, {"invert": Image.eval(im, lambda v: 255 - v)})
    maze = Image.fromarray(np.where(_pattern("maze"), 0, 255).astype(np.uint8)).convert("RGB")
    group("invert", "maze", maze, {"invert": Image.eval(maze, lambda v: 255 - v)})
    yy = _yinyang()
    group("invert", "yinyang", yy, {"invert": Image.eval(yy, lambda v: 255 - v)})

    # color_stain: X_stain = the same object on another background, X_ref = another object on the same background
    red, blue = (220, 30, 40), (30, 150, 220)
    yellow = Image.new("RGB", (40, 40), (250, 230, 0))
    noise = Image.fromarray(np.random.default_rng(seed + 1).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    at = (50, 50)
    group("color_stain", "dog", placed(dog, at, red), {"ref": placed(yellow, at, red), "stain": placed(dog, at)})
    group(
        "color_stain",
        "cat",
        placed(cat, (6, 50), blue),
        {"ref": placed(noise, (6, 50), blue), "stain": placed(cat, (6, 50))},
    )
    group("color_stain", "3ring", rings_at(30, 30), {"ref": placed(dog, (28, 28)), "stain": rings_at(30, 30, green)})
    group(
        "color_stain",
        "teddy",
        placed(teddy, (28, 28), green),
        {"ref": placed(house, (28, 28), green), "stain": placed(teddy, (28, 28))},
    )
    disc = _canvas()
    ImageDraw.Draw(disc).ellipse((8, 8, 88, 88), fill=(0, 0, 0))
    group("color_stain", "yinyang", _yinyang(), {"ref": disc, "stain": _yinyang(bg=(60, 70, 200))})
    return images


# ============================================================================================ distances
def net_taps(net: str, images: torch.Tensor, *, weights: str, device, batch: int = 16) -> tuple[list, object]:
    """LPIPS taps of every image through the ``dps-<net>`` metric's trunk (ImageNet-normalised input), each
    (N, C_l, H_l, W_l) float32 on ``device``; and the metric."""
    metric = percept.get_metric(f"dps-{net}", backbone_weights=weights, reduction="none").to(device).eval()
    parts = []
    with torch.no_grad():
        for chunk in images.split(batch):
            parts.append(metric.backbone(scale_input(chunk.to(device), "lpips")))
    return [torch.cat([p[k] for p in parts]).contiguous() for k in range(len(parts[0]))], metric


def dps_distances(taps: list[torch.Tensor], i, j, method: str, channel_norm: bool, *, chunk: int = 32) -> np.ndarray:
    """DPS distances d(image i, image j) for index arrays i, j, from precomputed taps: per branch of ``method``
    the modifier and optional channel normalisation (once per image), then the squared difference summed over
    channels and averaged over positions (pairs in chunks of ``chunk``); summed over layers and branches. The
    functions are percept.metrics.deep_core's, as the dps-* metrics use them."""
    i, j = torch.as_tensor(i), torch.as_tensor(j)
    total = torch.zeros(len(i), dtype=torch.float64)
    for branch in method.split("+"):
        for f in taps:
            g = modify_features(f, branch)
            if channel_norm:
                g = normalize_channels(g)
            for s in range(0, len(i), chunk):
                a, b = g[i[s : s + chunk]], g[j[s : s + chunk]]
                total[s : s + chunk] += squared_difference_mean(a, b).double().cpu()
    return total.numpy()


def passes_pair(d_aug: float, d_refs) -> bool:
    """The original's criterion: no reference is closer to the original than the transformed image."""
    return not any(d_aug > r for r in d_refs)


def run_name(arch: str, method: str, channel_norm: bool) -> str:
    """The original's printed name: ``alexnet_mean+spatial_simple`` for spatial+mean without channel norm."""
    base = method.split("+")[-1]
    return f"{arch}_{base}" + ("+spatial" if "+" in method else "") + ("" if channel_norm else "_simple")


def analyse(images: ImageSet, taps: list, arch: str, backbone: str, method: str, channel_norm: bool):
    """(rows of results.csv, rows of passes.csv) of one configuration."""
    refs = [images.refs[r] for r in REFERENCES]
    pairs = images.pairs
    i = [p.i for p in pairs for _ in range(len(refs) + 1)]
    j = [k for p in pairs for k in [p.j] + refs]
    d = dps_distances(taps, i, j, method, channel_norm).reshape(len(pairs), len(refs) + 1)
    rows, stats = [], {}
    stain: dict[str, dict[str, float]] = {}
    for p, dist in zip(pairs, d):
        rows.append(
            dict(
                zip(
                    RESULT_COLUMNS,
                    [
                        arch,
                        method,
                        "yes_channel_norm" if channel_norm else "no_channel_norm",
                        p.orig,
                        p.transformed,
                        *dist.tolist(),
                        backbone,
                        images.label,
                    ],
                )
            )
        )
        if p.category == "color_stain":
            stain.setdefault(p.orig, {})[p.kind] = float(dist[0])
        else:
            n, k = stats.get(p.category, (0, 0))
            stats[p.category] = (n + passes_pair(dist[0], dist[1:]), k + 1)
    if stain:
        stats["color_stain"] = (sum(v["stain"] < v["ref"] for v in stain.values()), len(stain))
    summary = [
        {
            "arch": arch,
            "backbone": backbone,
            "method": method,
            "channel_norm": channel_norm,
            "category": c,
            "passes": int(stats[c][0]),
            "pairs": int(stats[c][1]),
            "name": run_name(arch, method, channel_norm),
            "images": images.label,
        }
        for c in sorted(stats)
    ]
    return rows, summary


# ========================================================================================= feature maps
def find_feature_images(images: ImageSet, ids: list[str]) -> list[int]:
    """The original's choice: in the first category folder (sorted) with a match, every image whose path holds
    all ``ids``; the original first, then its transformed versions."""
    by_category: dict[str, list[int]] = {}
    for k, name in enumerate(images.names):
        category = name.split("/")[0]
        if category != "ref" and all(s in name for s in ids):
            by_category.setdefault(category, []).append(k)
    if not by_category:
        raise ValueError(f"no image path holds all of {ids}")
    found = by_category[sorted(by_category)[0]]
    return sorted(found, key=lambda k: ("_" in Path(images.names[k]).stem, images.names[k]))


def feature_map_grid(tap: torch.Tensor, *, scale: int | None = None, columns: int | None = None) -> np.ndarray:
    """uint8 (H, W) grid of every channel of one layer, for K images: tap (K, C, h, w).

    Tile c: the K maps of channel c side by side, raw on top and channel-normalised (F.normalize over channels)
    below, each of the two rows divided by its maximum (black 0, white the maximum); nearest-neighbour upscaled
    by ``scale`` (default: to about 48 px), 2 px grey gaps inside a tile and 6 px between tiles.
    """
    k, c, h, w = tap.shape
    scale = scale or max(1, round(48 / max(h, w)))
    norm = F.normalize(tap.double(), dim=1)
    raw = tap.double()

    def row(x):  # (K, h, w) -> (h*scale, K*(w*scale+2)-2)
        peak = float(x.max())
        x = x / peak if peak > 0 else x
        x = x.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
        gap = torch.full((x.shape[1], 2), 0.5, dtype=x.dtype)
        parts = []
        for m in x:
            parts += [m, gap]
        return torch.cat(parts[:-1], dim=1)

    tiles = []
    for ch in range(c):
        top, bottom = row(raw[:, ch]), row(norm[:, ch])
        gap = torch.full((2, top.shape[1]), 0.5, dtype=top.dtype)
        tiles.append(torch.cat([top, gap, bottom]))
    th, tw = tiles[0].shape
    columns = columns or max(1, round(math.sqrt(c * th / tw * 1.5)))
    rows = math.ceil(c / columns)
    grid = torch.full((rows * (th + 6) - 6, columns * (tw + 6) - 6), 1.0, dtype=torch.float64)
    for n, tile in enumerate(tiles):
        r, q = divmod(n, columns)
        grid[r * (th + 6) : r * (th + 6) + th, q * (tw + 6) : q * (tw + 6) + tw] = tile
    return (grid.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def write_feature_maps(
    images: ImageSet, ids: list[str], net: str, weights: str, out: Path, device, layers: list[int] | None = None
) -> list[Path]:
    """``feature_map.py`` as PNG files: one per tapped layer (``layers``: positions among the taps)."""
    from PIL import Image, ImageDraw

    chosen = find_feature_images(images, ids)
    batch = torch.stack([images.tensors[k] for k in chosen])
    taps, metric = net_taps(net, batch, weights=weights, device=device)
    folder = out / "feature_maps"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for pos in layers if layers is not None else range(len(taps)):
        if not 0 <= pos < len(taps):
            raise ValueError(f"--feature-layers {pos}: {metric.backbone.name} has taps 0..{len(taps) - 1}")
        grid = feature_map_grid(taps[pos].cpu())
        names = ", ".join(images.names[k] for k in chosen)
        title = (
            f"{metric.backbone.name} ({weights}) tap {pos} = {metric.backbone.layer_names[pos]}, "
            f"{taps[pos].shape[1]} channels in order, row by row. Each tile, left to right: {names}; top: raw maps, "
            "bottom: channel-normalised maps (each row scaled by its maximum)"
        )
        lines = textwrap.wrap(title, width=max(40, grid.shape[1] // 6))
        header = 4 + 12 * len(lines)
        canvas = Image.new("L", (grid.shape[1], grid.shape[0] + header), 255)
        canvas.paste(Image.fromarray(grid), (0, header))
        draw = ImageDraw.Draw(canvas)
        for n, line in enumerate(lines):
            draw.text((2, 2 + 12 * n), line, fill=0)
        stem = "-".join(ids)
        path = folder / f"{metric.backbone.name}_{stem}_layer{pos}.png"
        with atomic_output(path, "wb") as f:
            canvas.save(f, format="PNG")
        written.append(path)
    return written


# =============================================================================================== driver
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--images",
        type=Path,
        default=None,
        help=f"image folder in the original layout (default {DEFAULT_IMAGES.relative_to(ROOT)} if present)",
    )
    p.add_argument("--stand-in", action="store_true", help="use the generated stand-in images even if --images exist")
    p.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    p.add_argument("--methods", nargs="+", default=list(ORDER), choices=list(METHODS))
    p.add_argument(
        "--channel-norm",
        nargs="+",
        default=["off", "on"],
        choices=["off", "on"],
        help="the original ran both, without normalisation first",
    )
    p.add_argument("--backbone-weights", default="imagenet", choices=["imagenet", "random"])
    p.add_argument(
        "--random-fallback",
        action="store_true",
        help="run a network whose ImageNet weights are missing on a random trunk (labelled), not skip it",
    )
    p.add_argument("--out", type=Path, default=None, help=f"default {DEFAULT_OUT.relative_to(ROOT)}")
    p.add_argument("--quick", action="store_true", help="AlexNet only, into a quick/ folder (seconds)")
    p.add_argument("--seed", type=int, default=0, help="random trunks and the stand-in noise images")
    p.add_argument("--device", default="cpu")
    f = p.add_argument_group("feature maps (feature_map.py)")
    f.add_argument(
        "--feature-map",
        nargs="+",
        default=None,
        metavar="ID",
        help="draw the feature maps of the image whose path holds every ID (original default: 3ring color)",
    )
    f.add_argument("--feature-net", default="alex", choices=list(NETS))
    f.add_argument("--feature-layers", nargs="+", type=int, default=None, help="tap positions (default all)")
    add_debug_flag(p)
    return p


def load_images(args) -> ImageSet:
    folder = args.images if args.images is not None else (DEFAULT_IMAGES if DEFAULT_IMAGES.is_dir() else None)
    if args.stand_in or folder is None:
        return stand_in_images(args.seed)
    return load_folder(folder)


def main(argv: list[str] | None = None) -> int:
    """Run the analysis; a failure is one line on stderr (``--debug`` or PERCEPT_DEBUG=1: the traceback)."""
    return driver_main(_main, argv, prog="experiments/dps_analysis/run.py")


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(argv)
    if args.quick:
        args.nets = ["alex"]
    out = args.out or (DEFAULT_OUT / "quick" if args.quick else DEFAULT_OUT)
    with RunLock(out):
        return _run(args, out)


def _trunk(net: str, args) -> tuple[str | None, str | None]:
    """(weights to use, why skipped)."""
    if args.backbone_weights == "random":
        return "random", None
    from percept.backbones import canonical_arch, imagenet_checkpoint

    try:
        imagenet_checkpoint(canonical_arch(net))
        return "imagenet", None
    except assets.MissingAssetError as err:
        if args.random_fallback:
            return "random", None
        return None, str(err).splitlines()[0][:300]


def _run(args, out: Path) -> int:
    device = select_device(args.device)
    torch.manual_seed(args.seed)
    images = load_images(args)
    if args.feature_map:
        weights, why = _trunk(args.feature_net, args)
        if weights is None:
            raise SystemExit(f"error: {why} (or --random-fallback)")
        for path in write_feature_maps(
            images, args.feature_map, args.feature_net, weights, out, device, args.feature_layers
        ):
            print(f"wrote {path}")
        return 0
    if images.label != "original":
        print(
            "=" * 100 + f"\n{images.label.upper()} IMAGES ({images.source}): not the paper's verified test images;"
            " the pass counts below are not the paper's.\n" + "=" * 100
        )
    batch = images.batch()
    t0, cpu0 = time.time(), time.process_time()
    results, summary, trunks, skipped, lines = [], [], {}, {}, []
    taps_by_net = {}
    for net in args.nets:
        weights, why = _trunk(net, args)
        if weights is None:
            skipped[net] = why
            print(f"skipped {net}: {why}")
            continue
        torch.manual_seed(args.seed)
        taps, metric = net_taps(net, batch, weights=weights, device=device)
        taps_by_net[net] = (taps, metric.backbone.name, weights)
        trunks[net] = {
            "arch": metric.backbone.name,
            "weights": weights,
            "layers": list(metric.backbone.layers),
            "layer_names": list(metric.backbone.layer_names),
            "channels": list(metric.backbone.channels),
        }
    norms = [n == "on" for n in args.channel_norm]
    methods = [m for m in ORDER if m in args.methods] + [m for m in args.methods if m not in ORDER]
    for norm in norms:  # the original's loop order
        for base in ("spatial", "mean", "sort"):
            for net, (taps, arch, weights) in taps_by_net.items():
                for method in (base, f"spatial+{base}") if base != "spatial" else (base,):
                    if method not in methods:
                        continue
                    rows, stats = analyse(images, taps, arch, weights, method, norm)
                    results += rows
                    for s in stats:
                        summary.append({"net": net, **s})
                        lines.append(f"{s['category']} {s['name']} {s['passes']} {s['pairs']}")
                        print(lines[-1])
    if not summary:
        raise SystemExit("error: no network could be run (see the skipped reasons above)")
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "results.csv", results, RESULT_COLUMNS)
    write_csv(out / "passes.csv", summary, PASS_COLUMNS)
    with atomic_output(out / "passes.txt", "w") as f:
        f.write("\n".join(lines) + "\n")
    info = machine_info(device)
    info["run"] = {
        "command": " ".join(["python experiments/dps_analysis/run.py", *args.argv]),
        "quick": args.quick,
        "images": {
            "label": images.label,
            "source": images.source,
            "count": len(images.names),
            "pairs": {c: sum(p.category == c for p in images.pairs) for c in CATEGORIES},
            "verification": images.verification,
        },
        "trunks": trunks,
        "skipped": skipped,
        "methods": methods,
        "channel_norm": args.channel_norm,
        "seed": args.seed,
        "seconds": round(time.time() - t0, 1),
        "cpu_seconds": round(time.process_time() - cpu0, 1),
    }
    write_json(out / "machine.json", info)
    print(
        f"wrote {out}/ (results.csv, passes.csv, passes.txt, machine.json)"
        + ("" if images.label == "original" else f" on {images.label.upper()} images")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
