"""MNIST for the VAE experiment (spec czolbe.md §11.2): 1x32x32 digits in [0, 1] (28x28 zero-padded by 2).

>>> from percept.data.mnist import load_mnist
>>> train, test = load_mnist("train"), load_mnist("test")

With downloaded data (``python data/download_mnist.py``: torchvision's layout, ``data/mnist/MNIST/raw``) the
splits are the paper's: the 60,000 training and 10,000 test digits.

Offline (nothing downloaded), the asset folder (``$PERCEPT_ASSETS``) provides:

- ``"recovered"`` protocol (used when available): the official 10,000 test digits and labels, the
  official training labels, and the 60,000 training digits **recovered** from a public PNG copy
  (``data/mnist_train_reconstructed``: 97.4% of pixels equal to the official file, none off by more
  than one grey level). This is the paper's 60,000 / 10,000 split on a near-copy of the training
  images; ``info["data_source"]`` and every results file say "recovered MNIST training set".
- ``"test-split"`` protocol (fallback): only the test set; its 10,000 digits are split into 9,000 for
  training and 1,000 held out (seeded), with the paper's figure digits (:data:`RECONSTRUCTION_IDS`,
  :data:`INTERPOLATION_PAIRS`) held out, so figures show the same digits either way.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F

from percept.data import DatasetError, ImageSet, data_root, log, seeded_split

FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
SIZES = {"train": 60_000, "test": 10_000}

#: test digits shown in the paper's reconstruction figure (indices into the 10,000 test digits)
RECONSTRUCTION_IDS = [i * 950 + 500 for i in range(10)]
#: test-digit pairs of the paper's two interpolation figures
INTERPOLATION_PAIRS = [(1117, 7031), (21, 6501)]
FIGURE_IDS = sorted(set(RECONSTRUCTION_IDS) | {i for pair in INTERPOLATION_PAIRS for i in pair})

OFFLINE_TEST_SIZE = 1_000
_warned: set = set()
FETCH_HINT = "python data/download_mnist.py"


def read_idx(path: Path) -> torch.Tensor:
    """Read an IDX file (optionally gzipped) into a uint8 tensor; raise :class:`DatasetError` if it is corrupt."""
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise DatasetError(f"{path} is corrupt ({err}); delete it and run {FETCH_HINT}") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DatasetError(f"{path} is not a uint8 IDX file (bad header); delete it and run {FETCH_HINT}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path} is truncated (header incomplete); delete it and run {FETCH_HINT}")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(torch.tensor(shape).prod()) if ndim else header
    if len(raw) != expected:
        raise DatasetError(
            f"{path} has {len(raw)} bytes but its header {shape} needs {expected}: the file is truncated or "
            f"corrupt; delete it and run {FETCH_HINT}"
        )
    return torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).reshape(shape)


def _find(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _candidate_dirs(root: Path) -> list[Path]:
    return [root, root / "MNIST" / "raw", root / "mnist", root / "mnist" / "MNIST" / "raw", root / "mnist" / "raw"]


def _split_dir(root: Path, split: str) -> Path | None:
    """The folder under ``root`` holding both files of ``split``, or None."""
    for folder in _candidate_dirs(root):
        if all(_find(folder, FILES[(split, kind)]) for kind in ("images", "labels")):
            return folder
    return None


def _read_split(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    images = read_idx(_find(folder, FILES[(split, "images")]))
    labels = read_idx(_find(folder, FILES[(split, "labels")])).long()
    if images.dim() != 3 or images.shape[1:] != (28, 28) or len(labels) != len(images):
        raise DatasetError(
            f"{folder}: MNIST {split} files have shapes {tuple(images.shape)} / {tuple(labels.shape)}, expected "
            f"(n, 28, 28) / (n,); delete them and run {FETCH_HINT}"
        )
    return images, labels


def _pad(images: torch.Tensor, pad: int) -> torch.Tensor:
    return F.pad(images.unsqueeze(1), (pad, pad, pad, pad))  # uint8 (N, 1, 28 + 2 pad, ...)


def _missing_message(root: Path, split: str) -> str:
    need = [FILES[(split, kind)] + "[.gz]" for kind in ("images", "labels")]
    present = sorted(p.name for d in _candidate_dirs(root) if d.is_dir() for p in d.iterdir() if p.is_file())
    have = f"it holds: {', '.join(present)}" if present else "it is empty"
    return (
        f"MNIST {split} split not found under {root}: need {' and '.join(need)} in {root}, {root / 'MNIST/raw'} or "
        f"{root / 'mnist/MNIST/raw'}; {have}. Fetch it with: {FETCH_HINT}"
    )


def _offline_test_files() -> Path:
    """The folder of the MNIST test set in the asset folder (checksummed)."""
    from percept.assets import ChecksumError, MissingAssetError, locate

    try:
        images = locate("data/mnist/t10k-images-idx3-ubyte.gz")
        labels = locate("data/mnist/t10k-labels-idx1-ubyte.gz")
    except (MissingAssetError, ChecksumError) as err:
        raise DatasetError(
            f"no MNIST data: nothing downloaded under {data_root()} (run {FETCH_HINT}) and no offline test set: {err}"
        ) from err
    if images.parent != labels.parent:
        raise DatasetError(f"MNIST test images and labels were found in different folders: {images}, {labels}")
    return images.parent


RECOVERED_TRAIN_IMAGES = "data/mnist_train_reconstructed/train-images-idx3-ubyte.gz"


def _recovered_files() -> dict | None:
    """Paths of the offline "recovered" protocol's files (checksummed), or None when any is missing."""
    from percept.assets import ChecksumError, MissingAssetError, locate

    try:
        return {
            ("train", "images"): locate(RECOVERED_TRAIN_IMAGES),
            ("train", "labels"): locate("data/mnist/train-labels-idx1-ubyte.gz"),
            ("test", "images"): locate("data/mnist/t10k-images-idx3-ubyte.gz"),
            ("test", "labels"): locate("data/mnist/t10k-labels-idx1-ubyte.gz"),
        }
    except MissingAssetError:
        return None
    except ChecksumError as err:
        raise DatasetError(f"offline MNIST files are corrupt: {err}") from err


def _resolve(base: Path, *, explicit: bool, offline: bool | None) -> tuple[str, object]:
    """("full", {split: folder}) for the paper's splits, or ("offline", folder of the test set)."""
    train_dir, test_dir = _split_dir(base, "train"), _split_dir(base, "test")
    if offline is not True and train_dir and test_dir:
        return "full", {"train": train_dir, "test": test_dir}
    if offline is False:
        raise DatasetError(_missing_message(base, "test" if train_dir else "train"))
    if explicit:
        if test_dir is None:
            raise DatasetError(_missing_message(base, "test"))
        return "offline", test_dir
    started = [d for d in (base / "MNIST" / "raw", base / "mnist" / "MNIST" / "raw") if d.is_dir() and any(d.iterdir())]
    if started and offline is None:  # a download was started here but is incomplete: say so, do not fall back
        raise DatasetError(_missing_message(base, "train" if test_dir else "test") + " (an incomplete download?)")
    return "offline", test_dir or _offline_test_files()


def load_mnist(
    split: str = "train",
    root: str | Path | None = None,
    *,
    offline: bool | None = None,
    pad: int = 2,
    offline_test_size: int = OFFLINE_TEST_SIZE,
    split_seed: int = 0,
    recovered: bool = True,
) -> ImageSet:
    """Load an MNIST split as an :class:`ImageSet` of (1, 28 + 2*pad, 28 + 2*pad) images in [0, 1].

    Args:
        split: "train" or "test".
        root: a folder with the four IDX files (gzipped or not), directly or in torchvision's ``MNIST/raw``
            layout. None: the downloaded copy under :func:`percept.data.data_root`, else the offline test set.
        offline: True forces the offline protocol (9,000 / 1,000 split of the test set found at ``root`` or
            in the asset folder); False requires the full dataset; None picks automatically.
        pad: zero padding on each side (2 gives the paper's 32x32).
        offline_test_size: held-out digits in the offline protocol.
        split_seed: seed of the offline split (independent of any training seed).
        recovered: offline, use the recovered 60,000 training digits when the asset folder has them (the
            "recovered" protocol); False forces the 9,000 / 1,000 split of the test set.
    """
    if split not in ("train", "test"):
        raise ValueError(f"unknown MNIST split {split!r}: use 'train' or 'test'")
    base = Path(root).expanduser() if root is not None else data_root()
    protocol, folder = _resolve(base, explicit=root is not None, offline=offline)
    if protocol == "full":
        images, labels = _read_split(folder[split], split)
        if len(images) != SIZES[split]:
            log.warning("MNIST %s split in %s has %d digits, not %d", split, folder[split], len(images), SIZES[split])
        info = {
            "dataset": "mnist",
            "split": split,
            "size": len(images),
            "offline": False,
            "data_source": f"MNIST {split} split ({len(images):,} digits) from {folder[split]}",
            "folder": str(folder[split]),
        }
        return ImageSet(pixels=_pad(images, pad), labels=labels, info=info)
    files = _recovered_files() if recovered and root is None else None
    if files is not None:
        images = read_idx(files[(split, "images")])
        labels = read_idx(files[(split, "labels")]).long()
        if images.shape != (SIZES[split], 28, 28) or labels.shape != (SIZES[split],):
            raise DatasetError(f"offline MNIST {split} files have shapes {tuple(images.shape)} / {tuple(labels.shape)}")
        what = (
            "the RECOVERED MNIST training set: 60,000 digits recovered from a public PNG copy (97.4% of pixels "
            "equal to the official file, none off by more than one grey level; official labels)"
            if split == "train"
            else "the official MNIST test set (10,000 digits)"
        )
        source = (
            f"offline, recovered protocol: {what}, from {files[(split, 'images')].parent}. The paper's 60,000 / "
            f"10,000 split; the training images are not byte-identical to the download ({FETCH_HINT})."
        )
        info = {
            "dataset": "mnist",
            "split": split,
            "size": len(images),
            "offline": True,
            "protocol": "recovered",
            "data_source": source,
            "folder": str(files[(split, "images")].parent),
        }
        return ImageSet(pixels=_pad(images, pad), labels=labels, info=info)
    images, labels = _read_split(folder, "test")
    train_ids, test_ids = seeded_split(len(images), offline_test_size, split_seed, keep_in_test=FIGURE_IDS)
    ids = train_ids if split == "train" else test_ids
    source = (
        f"offline: the MNIST test set ({len(images):,} digits, {folder}) split into {len(train_ids):,} training and "
        f"{len(test_ids):,} held-out test digits (split seed {split_seed}); this is the {split} part. The paper trains "
        f"on the 60,000 training digits, which are not available offline (run {FETCH_HINT})."
    )
    if (str(base), split_seed) not in _warned:
        _warned.add((str(base), split_seed))
        log.warning("MNIST: no downloaded training set under %s; using %s", base, source.split("; this is")[0])
    t = torch.as_tensor(ids, dtype=torch.long)
    info = {
        "dataset": "mnist",
        "split": split,
        "size": len(ids),
        "offline": True,
        "protocol": "test-split",
        "data_source": source,
        "folder": str(folder),
        "split_seed": split_seed,
        "offline_train_size": len(train_ids),
        "offline_test_size": len(test_ids),
    }
    return ImageSet(pixels=_pad(images[t], pad), labels=labels[t], indices=t, info=info)


__all__ = ["load_mnist", "read_idx", "RECONSTRUCTION_IDS", "INTERPOLATION_PAIRS", "FIGURE_IDS"]
