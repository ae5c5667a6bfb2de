"""BAPPS (Zhang et al. 2018): the 2AFC and JND human-judgement sets, read from the official folder layout.

Layout (``python data/download_bapps.py`` / ``make data-bapps`` writes it under ``data/bapps``)::

    <root>/2afc/{train,val}/<subset>/{ref,p0,p1,judge}/    judge: .npy of shape (1,), fraction choosing p1
    <root>/jnd/val/<subset>/{p0,p1,same}/                   same:  .npy of shape (1,), fraction saying "same"

Train subsets: traditional, cnn, mix. 2AFC val subsets: traditional, cnn, superres, deblur, color,
frameinterp. JND val subsets: traditional, cnn. Entries of the sub-folders are paired by **sorted file
name**, as in the reference loader; a name that differs between the sub-folders of one entry is an error.
(A root that holds ``dataset/2afc`` as in the LPIPS repository is accepted too.)

Resampling (the stored patches are 64x64 content upscaled to 256x256 by nearest neighbour, a few
252x252):

- ``"pil-bilinear"`` (default): PIL bilinear resize to 64x64, which is *antialiased* (PIL widens the
  bilinear kernel by the downscaling factor). This is what the reference LPIPS loader does
  (``torchvision.transforms.Resize(64)`` on a PIL image, which calls ``PIL.Image.resize(..., BILINEAR)``)
  and what the Czolbe et al. harness did (``transforms.Scale(64)``).
- ``"bilinear-noaa"``: bilinear without antialiasing (``F.interpolate(..., align_corners=False,
  antialias=False)``, the same sampling as ``skimage.transform.resize(order=1, anti_aliasing=False)``
  that the E-LPIPS loader uses). On the 256x256 files it recovers the 64x64 content exactly.
- ``"none"``: no resize (the patch must already have the requested size).

Items are float32 tensors (3, 64, 64) in [0, 1] (the percept convention; the reference maps to
[-1, 1] for LPIPS, which percept metrics do inside). Grey conversion is not done here: the evaluation
converts with BT.601 luma (:func:`percept.color.rgb_to_grey`) for the grey colour space.

No BAPPS with human judgements is available offline. :func:`make_synthetic_bapps` builds a folder in the
same layout from real photographs (the asset folder), synthetic distortions and *simulated* judges; such a
folder holds a marker file (:data:`SYNTHETIC_MARKER`) and :func:`is_synthetic` reports it, so scores
computed on it are never mistaken for BAPPS scores.

>>> from percept.data import bapps
>>> val = bapps.TwoAFCDataset("data/bapps", "val", "traditional")   # doctest: +SKIP
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from percept.data import DatasetError

log = logging.getLogger("percept.data.bapps")

SUBSETS_2AFC: dict[str, tuple[str, ...]] = {
    "train": ("traditional", "cnn", "mix"),
    "val": ("traditional", "cnn", "superres", "deblur", "color", "frameinterp"),
}
SUBSETS_JND: dict[str, tuple[str, ...]] = {"val": ("traditional", "cnn")}
PARTS_2AFC = ("ref", "p0", "p1", "judge")
PARTS_JND = ("p0", "p1", "same")
#: patch size of the reference evaluation and training
IMAGE_SIZE = 64
RESIZE_MODES = ("pil-bilinear", "bilinear-noaa", "none")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
SYNTHETIC_MARKER = "SYNTHETIC_NOT_BAPPS.txt"
FETCH_HINT = "download it with `make data-bapps` (python data/download_bapps.py) or pass --data DIR"


def default_root() -> Path:
    """``<checkout>/data/bapps``, where ``make data-bapps`` puts the dataset."""
    return Path(__file__).resolve().parents[3] / "data" / "bapps"


def resolve_root(root: str | Path | None) -> Path:
    """The folder that holds ``2afc/`` and/or ``jnd/`` (``root/dataset`` when that is where they are)."""
    root = Path(root).expanduser() if root is not None else default_root()
    if not (root / "2afc").is_dir() and not (root / "jnd").is_dir() and (root / "dataset").is_dir():
        root = root / "dataset"
    return root


def is_synthetic(root: str | Path | None) -> bool:
    """True when ``root`` was written by :func:`make_synthetic_bapps` (it is not BAPPS)."""
    return (resolve_root(root) / SYNTHETIC_MARKER).is_file()


# ------------------------------------------------------------------------------------------- reading
def resize_patch(image: Image.Image, size: int = IMAGE_SIZE, mode: str = "pil-bilinear") -> torch.Tensor:
    """PIL image -> float32 tensor (3, size, size) in [0, 1], resampled as ``mode`` (see module docstring)."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {mode!r}: use one of {', '.join(RESIZE_MODES)}")
    image = image.convert("RGB")
    if mode == "pil-bilinear" and image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    x = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)
    if mode == "bilinear-noaa" and tuple(x.shape[1:]) != (size, size):
        x = F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False, antialias=False)[0]
        x = x.clamp_(0, 1)
    if tuple(x.shape[1:]) != (size, size):
        raise ValueError(f"patch of size {tuple(x.shape[1:])} with resize mode 'none'; expected {size}x{size}")
    return x


def load_patch(path: str | Path, size: int = IMAGE_SIZE, mode: str = "pil-bilinear") -> torch.Tensor:
    """Read an image file as a (3, size, size) float tensor in [0, 1]."""
    try:
        with Image.open(path) as image:
            return resize_patch(image, size, mode)
    except (OSError, ValueError) as err:
        raise DatasetError(f"cannot read BAPPS patch {path}: {err}") from err


def load_fraction(path: str | Path) -> float:
    """Read a judge / same file: a .npy array of one value in [0, 1]."""
    try:
        value = np.load(path, allow_pickle=False).reshape(-1)
    except (OSError, ValueError, EOFError) as err:  # EOFError: an empty or truncated file
        raise DatasetError(f"cannot read {path}: {err or 'empty or truncated file'}") from err
    if value.size != 1 or not (0.0 <= float(value[0]) <= 1.0):
        raise DatasetError(f"{path} should hold one fraction in [0, 1], got {value[:4]}")
    return float(value[0])


def _listing(folder: Path, extensions: Sequence[str]) -> list[Path]:
    if not folder.is_dir():
        raise DatasetError(f"BAPPS folder {folder} does not exist; {FETCH_HINT}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in extensions)
    if not files:
        raise DatasetError(f"BAPPS folder {folder} holds no {'/'.join(extensions)} files; {FETCH_HINT}")
    return files


def _paired_files(folder: Path, parts: Sequence[str], label_part: str) -> dict[str, list[Path]]:
    """Sorted file lists of each sub-folder, checked for equal length and equal names."""
    files = {part: _listing(folder / part, (".npy",) if part == label_part else IMAGE_EXTENSIONS) for part in parts}
    counts = {part: len(v) for part, v in files.items()}
    if len(set(counts.values())) != 1:
        raise DatasetError(f"{folder}: sub-folders hold different numbers of files {counts}; {FETCH_HINT}")
    stems = [[p.stem for p in v] for v in files.values()]
    for i, names in enumerate(zip(*stems)):
        if len(set(names)) != 1:
            raise DatasetError(f"{folder}: entry {i} has different names in {tuple(parts)}: {names}")
    return files


class _BAPPSSubset(Dataset):
    parts: tuple[str, ...] = ()
    label: str = ""

    def __init__(
        self,
        root: str | Path | None,
        kind: str,
        split: str,
        subset: str,
        *,
        size: int = IMAGE_SIZE,
        resize: str = "pil-bilinear",
        limit: int | None = None,
    ) -> None:
        if resize not in RESIZE_MODES:
            raise ValueError(f"unknown resize mode {resize!r}: use one of {', '.join(RESIZE_MODES)}")
        self.root = resolve_root(root)
        self.split, self.subset, self.size, self.resize = split, subset, size, resize
        self.folder = self.root / kind / split / subset
        self.files = _paired_files(self.folder, self.parts, self.label)
        n = len(self.files[self.label])
        self.n = n if limit is None else min(n, int(limit))
        self.synthetic = is_synthetic(self.root)

    @property
    def name(self) -> str:
        return f"{self.split}/{self.subset}"

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.n:
            raise IndexError(i)
        item = {p: load_patch(self.files[p][i], self.size, self.resize) for p in self.parts if p != self.label}
        item[self.label] = torch.tensor(load_fraction(self.files[self.label][i]), dtype=torch.float32)
        item["index"] = i
        return item

    def labels(self) -> np.ndarray:
        """All judge / same values (without reading images), float64 (n,)."""
        return np.array([load_fraction(p) for p in self.files[self.label][: self.n]])

    def __repr__(self) -> str:
        tag = ", SYNTHETIC (not BAPPS)" if self.synthetic else ""
        return f"{type(self).__name__}({self.name}, {self.n} items, resize={self.resize!r}{tag})"


class TwoAFCDataset(_BAPPSSubset):
    """One 2AFC subset: items ``{"ref", "p0", "p1"}`` (3, 64, 64) in [0, 1], ``"judge"`` (fraction of
    humans who chose p1 as closer to ref), ``"index"`` (position in sorted order)."""

    parts = PARTS_2AFC
    label = "judge"

    def __init__(self, root: str | Path | None, split: str = "val", subset: str = "traditional", **kwargs) -> None:
        super().__init__(root, "2afc", split, subset, **kwargs)


class JNDDataset(_BAPPSSubset):
    """One JND subset: items ``{"p0", "p1"}`` (3, 64, 64) in [0, 1], ``"same"`` (fraction of humans who
    said the two patches are the same), ``"index"``."""

    parts = PARTS_JND
    label = "same"

    def __init__(self, root: str | Path | None, subset: str = "traditional", split: str = "val", **kwargs) -> None:
        super().__init__(root, "jnd", split, subset, **kwargs)


def twoafc_train_set(
    root: str | Path | None, subsets: Sequence[str] = SUBSETS_2AFC["train"], **kwargs
) -> ConcatDataset:
    """The training sets concatenated (the reference trains on traditional + cnn + mix together)."""
    return ConcatDataset([TwoAFCDataset(root, "train", s, **kwargs) for s in subsets])


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    workers: int = 0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> DataLoader:
    """A DataLoader in sorted order (evaluation) or shuffled with ``generator`` (training)."""
    pin = device is not None and torch.device(device).type == "cuda"
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        generator=generator,
        pin_memory=pin,
        persistent_workers=False,
    )


# ------------------------------------------------------------------------------------------- writing
def _to_pil(x: torch.Tensor | np.ndarray, upscale: int) -> Image.Image:
    """(3, H, W) float in [0, 1] or uint8 -> PIL image, upscaled by nearest neighbour (as BAPPS stores)."""
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.dtype != np.uint8:
        a = np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)
    if a.ndim == 3 and a.shape[0] in (1, 3):
        a = a.transpose(1, 2, 0)
    if a.ndim == 3 and a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    image = Image.fromarray(a, "RGB")
    if upscale != 1:
        image = image.resize((image.width * upscale, image.height * upscale), Image.Resampling.NEAREST)
    return image


def _write_subset(folder: Path, images: dict, label: str, values: Sequence[float], upscale: int) -> Path:
    n = len(values)
    for part, batch in images.items():
        if len(batch) != n:
            raise ValueError(f"{len(batch)} {part} images for {n} {label} values")
    for part in (*images, label):
        (folder / part).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        for part, batch in images.items():
            _to_pil(batch[i], upscale).save(folder / part / f"{i:06d}.png")
        np.save(folder / label / f"{i:06d}.npy", np.array([float(values[i])], dtype=np.float32))
    return folder


def write_2afc_subset(folder: str | Path, ref, p0, p1, judge: Sequence[float], *, upscale: int = 4) -> Path:
    """Write triplets in the official layout ``folder/{ref,p0,p1,judge}/NNNNNN.{png,npy}``.

    ``ref``, ``p0``, ``p1``: sequences of (3, H, W) images (float in [0, 1] or uint8); ``judge``: the
    fraction of judges who chose p1. Images are stored upscaled by ``upscale`` with nearest neighbour
    (BAPPS stores its 64x64 patches as 256x256).
    """
    return _write_subset(Path(folder), {"ref": ref, "p0": p0, "p1": p1}, "judge", judge, upscale)


def write_jnd_subset(folder: str | Path, p0, p1, same: Sequence[float], *, upscale: int = 4) -> Path:
    """Write pairs in the official layout ``folder/{p0,p1,same}/NNNNNN.{png,npy}``."""
    return _write_subset(Path(folder), {"p0": p0, "p1": p1}, "same", same, upscale)


# ----------------------------------------------------------------------------------- synthetic data
def source_images(min_size: int = IMAGE_SIZE) -> list[torch.Tensor]:
    """Real photographs from the asset folder (``data/images``, ``data/celeba_sample``) as (3, H, W) floats.

    Raises :class:`DatasetError` when the asset folder has none.
    """
    from percept.assets import data_dir

    paths: list[Path] = []
    for rel in ("data/images", "data/celeba_sample"):
        folder = data_dir(rel)
        if folder is not None:
            paths += sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    images = []
    for p in paths:
        with Image.open(p) as im:
            x = torch.from_numpy(np.array(im.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1).float() / 255
        if min(x.shape[1:]) >= min_size:
            images.append(x)
    if not images:
        raise DatasetError(
            "no photographs found for synthetic BAPPS-format data (looked for data/images and data/celeba_sample "
            "in the asset folder); set PERCEPT_ASSETS to the offline asset folder"
        )
    return images


def _crop(images: list[torch.Tensor], size: int, g: torch.Generator) -> torch.Tensor:
    x = images[int(torch.randint(len(images), (1,), generator=g))]
    top = int(torch.randint(x.shape[1] - size + 1, (1,), generator=g))
    left = int(torch.randint(x.shape[2] - size + 1, (1,), generator=g))
    return x[:, top : top + size, left : left + size].clone()


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma <= 0:
        return x
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    y = F.pad(x[None], (r, r, r, r), mode="replicate")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
    y = F.conv2d(y, k.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)
    return y[0]


def _jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    buffer = io.BytesIO()
    _to_pil(x, 1).save(buffer, format="JPEG", quality=quality)
    with Image.open(buffer) as im:
        return torch.from_numpy(np.array(im.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1).float() / 255


#: synthetic distortion families, each a function of (image, level in [0, 1], noise generator)
DISTORTIONS = ("noise", "blur", "jpeg", "contrast", "colour")


def distort(x: torch.Tensor, kind: str, level: float, g: torch.Generator) -> torch.Tensor:
    """One synthetic distortion of a (3, H, W) image in [0, 1] at ``level`` in [0, 1] (0: unchanged)."""
    if level <= 0:
        return x.clone()
    if kind == "noise":
        y = x + 0.25 * level * torch.randn(x.shape, generator=g)
    elif kind == "blur":
        y = _gaussian_blur(x, 2.5 * level)
    elif kind == "jpeg":
        y = _jpeg(x, max(1, int(round(60 * (1 - level)))) + 1)
    elif kind == "contrast":
        y = (x - x.mean()) * (1 - 0.7 * level) + x.mean()
    elif kind == "colour":
        shift = torch.randn(3, 1, 1, generator=g)
        y = x + 0.25 * level * shift / shift.norm()
    else:
        raise ValueError(f"unknown distortion {kind!r}: use one of {', '.join(DISTORTIONS)}")
    return y.clamp(0, 1)


def make_synthetic_bapps(
    root: str | Path,
    *,
    n_val: int = 24,
    n_train: int = 24,
    n_jnd: int = 24,
    val_subsets: Sequence[str] = SUBSETS_2AFC["val"],
    train_subsets: Sequence[str] = SUBSETS_2AFC["train"],
    jnd_subsets: Sequence[str] = SUBSETS_JND["val"],
    judges_val: int = 5,
    judges_train: int = 2,
    judges_jnd: int = 3,
    size: int = IMAGE_SIZE,
    upscale: int = 4,
    seed: int = 0,
) -> Path:
    """Write a SYNTHETIC folder in the BAPPS layout (marked with :data:`SYNTHETIC_MARKER`).

    Reference patches are random ``size`` x ``size`` crops of real photographs from the asset folder.
    Each of p0 and p1 gets one distortion from :data:`DISTORTIONS` at a random level in [0, 1]; the
    simulated judges choose p1 with probability ``sigmoid(8 * (level0 - level1))`` and the stored judge is
    the fraction of ``judges_*`` such draws. JND pairs are (reference, distorted at a level in [0, 0.5]),
    with "same" the fraction of ``judges_jnd`` who would not notice (probability ``exp(-10 * level)``).
    ``truth.json`` beside each subset's folders holds the levels and kinds. These numbers say nothing
    about human perception: they exercise the code path on a folder that is not BAPPS.
    """
    root = Path(root)
    mark_synthetic(root, f"make_synthetic_bapps(seed={seed}): crops of the asset photographs, simulated judges")
    g = torch.Generator().manual_seed(seed)
    images = source_images(size)

    def draw_levels(n):
        return torch.rand(n, generator=g).tolist()

    def draw_kind():
        return DISTORTIONS[int(torch.randint(len(DISTORTIONS), (1,), generator=g))]

    def twoafc(split, subset, n, judges):
        refs, p0s, p1s, judge, truth = [], [], [], [], []
        for _ in range(n):
            ref = _crop(images, size, g)
            (l0, l1), (k0, k1) = draw_levels(2), (draw_kind(), draw_kind())
            q = 1 / (1 + math.exp(-8 * (l0 - l1)))
            votes = int((torch.rand(judges, generator=g) < q).sum())
            refs.append(ref)
            p0s.append(distort(ref, k0, l0, g))
            p1s.append(distort(ref, k1, l1, g))
            judge.append(votes / judges)
            truth.append({"kind0": k0, "level0": l0, "kind1": k1, "level1": l1})
        folder = write_2afc_subset(root / "2afc" / split / subset, refs, p0s, p1s, judge, upscale=upscale)
        (folder / "truth.json").write_text(json.dumps(truth))

    for subset in val_subsets:
        twoafc("val", subset, n_val, judges_val)
    for subset in train_subsets:
        twoafc("train", subset, n_train, judges_train)
    for subset in jnd_subsets:
        p0s, p1s, same, truth = [], [], [], []
        for _ in range(n_jnd):
            ref = _crop(images, size, g)
            level, kind = 0.5 * draw_levels(1)[0], draw_kind()
            votes = int((torch.rand(judges_jnd, generator=g) < math.exp(-10 * level)).sum())
            p0s.append(ref)
            p1s.append(distort(ref, kind, level, g))
            same.append(votes / judges_jnd)
            truth.append({"kind": kind, "level": level})
        folder = write_jnd_subset(root / "jnd" / "val" / subset, p0s, p1s, same, upscale=upscale)
        (folder / "truth.json").write_text(json.dumps(truth))
    return root


def mark_synthetic(root: str | Path, how: str) -> Path:
    """Write the marker that labels a BAPPS-layout folder as synthetic (not human judgements)."""
    path = Path(root) / SYNTHETIC_MARKER
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "SYNTHETIC DATA - NOT BAPPS. This folder has the BAPPS layout, but its patches, distortions and\n"
        "judge/same values were generated by software; scores computed on it say nothing about agreement\n"
        f"with human judgements.\nBuilt by: {how}\n"
    )
    return path


__all__ = [
    "SUBSETS_2AFC",
    "SUBSETS_JND",
    "IMAGE_SIZE",
    "RESIZE_MODES",
    "SYNTHETIC_MARKER",
    "DISTORTIONS",
    "default_root",
    "resolve_root",
    "is_synthetic",
    "resize_patch",
    "load_patch",
    "load_fraction",
    "TwoAFCDataset",
    "JNDDataset",
    "twoafc_train_set",
    "make_loader",
    "write_2afc_subset",
    "write_jnd_subset",
    "source_images",
    "distort",
    "make_synthetic_bapps",
    "mark_synthetic",
]
