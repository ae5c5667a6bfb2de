"""CelebA for the VAE experiment (spec czolbe.md §11.3): 3x64x64 RGB faces in [0, 1].

Preprocessing as in the paper: each aligned 178x218 image (``img_align_celeba``) is cropped to the box
(25, 45, 153, 178) (128 wide x 133 high, deliberately not square) and resized to 64x64 with a
Lanczos ("ANTIALIAS") filter. ``python data/download_celeba.py`` does this once for all 202,599 images
and writes ``<data root>/celeba/64x64/000001.png`` ...; the paper's random 90/10 split then gives
182,339 training and 20,260 test images (seeded here; the original seed is unknown).

Offline (nothing preprocessed), the asset folder (``$PERCEPT_ASSETS``) provides, in order of preference:

- ``data/celeba_10k_half``: the first 10,000 aligned faces (000001-010000) at **half resolution**
  (89x109 JPEG). The paper's crop box is halved, (12.5, 22.5, 76.5, 89), and the crop resized to 64x64
  with the same Lanczos filter: the faces are those of the paper's preprocessing, but from a source
  with half the detail. Split 9,000 / 1,000 (seeded). ``info["data_source"]`` and every results file say
  "reduced CelebA: 10,000 faces at half resolution".
- ``data/celeba_sample``: 32 full-resolution aligned images, preprocessed as above and split 24 / 8.

A warning says which one is used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from percept.data import DatasetError, ImageSet, data_root, log, seeded_split

CROP_BOX = (25, 45, 153, 178)  # (left, upper, right, lower) in the 178x218 aligned image
HALF_CROP_BOX = tuple(v / 2 for v in CROP_BOX)  # the same box in the half-resolution 89x109 copy
HALF_DIR = "data/celeba_10k_half"
HALF_SIZE = (89, 109)
HALF_TEST_SIZE = 1_000
SIZE = 64
N_IMAGES = 202_599
TEST_FRACTION = 0.1
OFFLINE_TEST_SIZE = 8
FETCH_HINT = "python data/download_celeba.py"
_warned: set = set()


def preprocess(image: Image.Image, size: int = SIZE) -> Image.Image:
    """Aligned CelebA image (178x218) -> the paper's RGB crop, resized to ``size`` x ``size`` (the paper's 64)."""
    return image.convert("RGB").crop(CROP_BOX).resize((size, size), Image.LANCZOS)


def preprocess_half(image: Image.Image) -> Image.Image:
    """Half-resolution aligned CelebA image (89x109) -> the paper's 64x64 crop (the crop box halved)."""
    if image.size != HALF_SIZE:
        raise ValueError(f"expected a {HALF_SIZE[0]}x{HALF_SIZE[1]} half-resolution image, got {image.size}")
    return image.convert("RGB").resize((SIZE, SIZE), Image.LANCZOS, box=HALF_CROP_BOX)


_half_cache: dict = {}


def _offline_half() -> tuple[torch.Tensor, Path] | None:
    """The 10,000 half-resolution faces preprocessed to (10000, 3, 64, 64) uint8, or None when absent."""
    from percept.assets import data_dir

    folder = data_dir(HALF_DIR)
    if folder is None:
        return None
    if folder in _half_cache:
        return _half_cache[folder], folder
    files = sorted(folder.glob("*.jpg"))
    if not files:
        raise DatasetError(f"the offline CelebA folder {folder} has no *.jpg images")
    images = torch.empty(len(files), 3, SIZE, SIZE, dtype=torch.uint8)
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                images[i] = to_tensor(preprocess_half(im))
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
            raise DatasetError(f"{f} is corrupt or not a half-resolution CelebA face ({err})") from err
    _half_cache[folder] = images
    return images, folder


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB image -> uint8 tensor (3, H, W)."""
    return torch.from_numpy(np.array(image.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1).contiguous()


def read_png(path: Path) -> torch.Tensor:
    """Read one preprocessed 64x64 image as uint8 (3, 64, 64); a corrupt file raises :class:`DatasetError`."""
    try:
        with Image.open(path) as im:
            t = to_tensor(im)
    except (OSError, UnidentifiedImageError, SyntaxError) as err:
        raise DatasetError(f"{path} is corrupt ({err}); delete it and run {FETCH_HINT} again") from err
    if t.shape != (3, SIZE, SIZE):
        raise DatasetError(f"{path} is {tuple(t.shape)}, expected (3, 64, 64); rerun {FETCH_HINT}")
    return t


def processed_dir(root: str | Path | None = None) -> Path:
    """Folder of the preprocessed 64x64 PNGs: ``<root>/celeba/64x64`` (root defaults to :func:`data_root`)."""
    return (Path(root).expanduser() if root is not None else data_root()) / "celeba" / "64x64"


def _processed_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.png"))
    if not files:
        others = sorted(p.name for p in folder.iterdir())[:5] if folder.is_dir() else []
        what = f"it holds {len(list(folder.iterdir()))} other files ({', '.join(others)}, ...)" if others else "empty"
        raise DatasetError(
            f"CelebA folder {folder} has no preprocessed *.png images ({what}); expected the {N_IMAGES:,} 64x64 "
            f"crops written by: {FETCH_HINT}"
        )
    if len(files) != N_IMAGES:
        log.warning("CelebA: %s holds %d images, not %d (incomplete preprocessing?)", folder, len(files), N_IMAGES)
    return files


def _offline_sample(size: int = SIZE) -> tuple[torch.Tensor, Path]:
    from percept.assets import data_dir

    folder = data_dir("data/celeba_sample")
    if folder is None:
        raise DatasetError(
            f"no CelebA data: nothing preprocessed in {processed_dir()} (run {FETCH_HINT}) and no offline sample "
            "(set PERCEPT_ASSETS to the offline asset folder holding data/celeba_sample)"
        )
    files = sorted(folder.glob("*.jpg"))
    if not files:
        raise DatasetError(f"the offline CelebA sample folder {folder} has no *.jpg images")
    images = []
    for f in files:
        try:
            with Image.open(f) as im:
                images.append(to_tensor(preprocess(im, size)))
        except (OSError, UnidentifiedImageError, SyntaxError) as err:
            raise DatasetError(f"{f} is corrupt ({err})") from err
    return torch.stack(images), folder


def first_faces(n: int = 128, size: int = SIZE, root: str | Path | None = None) -> tuple[torch.Tensor, str]:
    """The first ``n`` faces as uint8 (n', 3, size, size) and a sentence saying where they came from.

    For measurements that need real faces rather than a training split (the benchmarks): the first ``n``
    preprocessed PNGs of :func:`processed_dir` (resized with Lanczos when ``size`` is not 64) when the
    dataset was downloaded, else the offline 32-image sample cropped with the paper's box and resized to
    ``size`` directly. n' = min(n, images available). No split, no shuffling.

    >>> pixels, source = first_faces(128, 64)      # (128, 3, 64, 64) with the dataset, (32, 3, 64, 64) without
    """
    folder = processed_dir(root)
    pngs = sorted(folder.glob("*.png"))[:n] if folder.is_dir() else []
    if pngs:
        images = []
        for f in pngs:
            try:
                with Image.open(f) as im:
                    im = im.convert("RGB")
                    images.append(to_tensor(im if size == SIZE else im.resize((size, size), Image.LANCZOS)))
            except (OSError, UnidentifiedImageError, SyntaxError) as err:
                raise DatasetError(f"{f} is corrupt ({err}); delete it and run {FETCH_HINT} again") from err
        pixels = torch.stack(images)
        source = f"CelebA (downloaded), the first {len(pngs)} preprocessed 64x64 images of {folder}"
    else:
        pixels, sample = _offline_sample(size)
        pixels = pixels[:n]
        source = f"offline CelebA sample: {len(pixels)} aligned images from {sample} (crop {CROP_BOX}, LANCZOS)"
    if size != SIZE:
        source += f", resized to {size}x{size}"
    return pixels, source


def load_celeba(
    split: str = "train",
    root: str | Path | None = None,
    *,
    offline: bool | None = None,
    test_fraction: float = TEST_FRACTION,
    split_seed: int = 0,
    offline_test_size: int = OFFLINE_TEST_SIZE,
    offline_source: str = "auto",
) -> ImageSet:
    """Load a CelebA split as an :class:`ImageSet` of (3, 64, 64) images in [0, 1].

    Args:
        split: "train" or "test".
        root: data root holding ``celeba/64x64/*.png`` (or that folder itself). None: :func:`percept.data.data_root`,
            falling back to the offline 32-image sample when nothing was preprocessed there.
        offline: True forces the offline sample, False requires the preprocessed dataset, None picks.
        test_fraction: held-out fraction of the full dataset (the paper's 10 %).
        split_seed: seed of the random split.
        offline_test_size: held-out images of the offline 32-image sample.
        offline_source: offline, "half" (the 10,000 half-resolution faces), "sample" (the 32 full-resolution
            images) or "auto" (half when the asset folder has it, else the sample).
    """
    if offline_source not in ("auto", "half", "sample"):
        raise ValueError(f"unknown offline_source {offline_source!r}: use 'auto', 'half' or 'sample'")
    if split not in ("train", "test"):
        raise ValueError(f"unknown CelebA split {split!r}: use 'train' or 'test'")
    folder = None
    if offline is not True:
        if root is not None:
            r = Path(root).expanduser()
            folder = r if r.name == "64x64" or (r.is_dir() and any(r.glob("*.png"))) else processed_dir(r)
        else:
            folder = processed_dir()
        if not folder.is_dir():
            if root is not None or offline is False:
                raise DatasetError(f"CelebA folder {folder} does not exist; create it with: {FETCH_HINT}")
            folder = None  # nothing downloaded: the offline sample
    if folder is not None:
        files = _processed_files(folder)
        n_test = max(1, int(round(len(files) * test_fraction)))
        if len(files) == N_IMAGES:
            n_test = 20_260  # the paper's split sizes: 182,339 / 20,260
        train_ids, test_ids = seeded_split(len(files), n_test, split_seed)
        ids = train_ids if split == "train" else test_ids
        info = {
            "dataset": "celeba",
            "split": split,
            "size": len(ids),
            "offline": False,
            "split_seed": split_seed,
            "data_source": f"CelebA aligned, {len(files):,} images preprocessed in {folder}, random split "
            f"{len(train_ids):,} / {len(test_ids):,} (seed {split_seed}); this is the {split} part",
            "folder": str(folder),
        }
        return ImageSet(files=[files[i] for i in ids], read=read_png, indices=ids, info=info)
    half = _offline_half() if offline_source != "sample" else None
    if half is None and offline_source == "half":
        raise DatasetError(f"no offline half-resolution CelebA folder ({HALF_DIR}) in the asset folder")
    if half is not None:
        pixels, folder = half
        what = (
            f"REDUCED CelebA: {len(pixels):,} aligned faces (000001-{len(pixels):06d}) at half resolution (89x109, "
            f"{folder}), cropped with the paper's box halved and resized to 64x64"
        )
        return _offline_set(pixels, folder, min(HALF_TEST_SIZE, len(pixels) // 10), split, split_seed,
                            "celeba-10k-half", what)
    pixels, folder = _offline_sample()
    what = f"the {len(pixels)}-image CelebA sample ({folder}), cropped and resized as in the paper"
    return _offline_set(pixels, folder, offline_test_size, split, split_seed, "sample", what)


def _offline_set(
    pixels: torch.Tensor, folder: Path, n_test: int, split: str, split_seed: int, protocol: str, what: str
) -> ImageSet:
    """The ``split`` part of an offline image tensor, split seeded, with its provenance in ``info``."""
    train_ids, test_ids = seeded_split(len(pixels), n_test, split_seed)
    ids = train_ids if split == "train" else test_ids
    source = (
        f"offline: {what}, split {len(train_ids):,} training / {len(test_ids):,} held-out (seed {split_seed}); this "
        f"is the {split} part. The paper trains on 182,339 full-resolution images (run {FETCH_HINT})."
    )
    if (protocol, split_seed) not in _warned:
        _warned.add((protocol, split_seed))
        log.warning("CelebA: no preprocessed dataset; using %s", source.split("; this is")[0])
    info = {
        "dataset": "celeba",
        "split": split,
        "size": len(ids),
        "offline": True,
        "protocol": protocol,
        "split_seed": split_seed,
        "data_source": source,
        "folder": str(folder),
    }
    t = torch.as_tensor(ids, dtype=torch.long)
    return ImageSet(pixels=pixels[t], indices=t, info=info)


__all__ = ["load_celeba", "first_faces", "preprocess", "read_png", "processed_dir", "CROP_BOX"]
