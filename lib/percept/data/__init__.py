"""Dataset loaders. Every image loader returns an :class:`ImageSet`: float images in [0, 1], NCHW.

Where data is looked for (``root=None``):

1. downloaded data under :func:`data_root` (``$PERCEPT_DATA``, else the checkout's ``data/`` folder:
   ``data/mnist``, ``data/celeba``), written by ``python data/download_mnist.py`` /
   ``python data/download_celeba.py``;
2. otherwise the small offline copies in the asset folder (``$PERCEPT_ASSETS/data/...``): the MNIST test
   set and a 32-image CelebA sample. A loader that falls back to them logs a warning and says so in
   ``ImageSet.info["data_source"]`` so results can record what they were trained on.

A folder that exists but is empty, incomplete or corrupt raises :class:`DatasetError` naming what is
missing and the command that fetches it.

>>> from percept.data.mnist import load_mnist
>>> train = load_mnist("train")                  # doctest: +SKIP
>>> train.info["data_source"]                    # what the images are, for the results files  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

ENV_DATA = "PERCEPT_DATA"

log = logging.getLogger("percept.data")


class DatasetError(FileNotFoundError):
    """A dataset folder is missing, empty, incomplete or holds a corrupt file."""


def data_root() -> Path:
    """Folder that download scripts write to and loaders read from: ``$PERCEPT_DATA`` or ``<checkout>/data``.

    Each dataset has its own sub-folder (``mnist/``, ``celeba/``), git-ignored in the checkout.
    """
    if os.environ.get(ENV_DATA):
        return Path(os.environ[ENV_DATA]).expanduser()
    return Path(__file__).resolve().parents[3] / "data"


class ImageSet(Dataset):
    """A split of an image dataset; ``dataset[i]`` is a float tensor (C, H, W) in [0, 1].

    Images are held either as one uint8 tensor (N, C, H, W) in memory (``pixels``) or as a list of
    files read on access (``files`` plus ``read``, a function path -> uint8 tensor (C, H, W)).

    Attributes:
        indices: for each item, its index in the source file / the sorted file list (the paper's figure
            ids, e.g. MNIST test digit 1117, refer to these).
        labels: int64 tensor (N,) or None.
        info: what was loaded, including ``data_source`` (a sentence for results files).
    """

    def __init__(
        self,
        *,
        pixels: torch.Tensor | None = None,
        files: Sequence[Path] | None = None,
        read: Callable[[Path], torch.Tensor] | None = None,
        indices: Sequence[int] | torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        info: dict | None = None,
    ) -> None:
        if (pixels is None) == (files is None):
            raise ValueError("give exactly one of pixels (a uint8 tensor) or files (with read)")
        if pixels is not None and (pixels.dtype != torch.uint8 or pixels.dim() != 4):
            raise ValueError(f"pixels must be a uint8 NCHW tensor, got {pixels.dtype} {tuple(pixels.shape)}")
        if files is not None and read is None:
            raise ValueError("files need a read function")
        self.pixels = pixels
        self.files = list(files) if files is not None else None
        self.read = read
        n = len(pixels) if pixels is not None else len(self.files)
        self.indices = torch.as_tensor(list(range(n)) if indices is None else indices, dtype=torch.long)
        if len(self.indices) != n:
            raise ValueError(f"{len(self.indices)} indices for {n} images")
        self.labels = labels
        self.info = dict(info or {})

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> torch.Tensor:
        raw = self.pixels[i] if self.pixels is not None else self.read(self.files[i])
        return raw.float().div_(255.0)

    def images(self, which: Sequence[int] | None = None) -> torch.Tensor:
        """Stack the images at positions ``which`` (all when None) into (n, C, H, W) floats in [0, 1]."""
        which = range(len(self)) if which is None else which
        if self.pixels is not None:
            return self.pixels[torch.as_tensor(list(which), dtype=torch.long)].float().div_(255.0)
        return torch.stack([self[i] for i in which]) if len(which) else torch.empty(0)

    def position_of(self, index: int) -> int:
        """Position in this split of the item with source index ``index`` (raises ``KeyError`` if absent)."""
        hits = (self.indices == int(index)).nonzero()
        if len(hits) == 0:
            raise KeyError(f"source index {index} is not in this split ({self.info.get('split', '?')})")
        return int(hits[0])

    def subset(self, positions: Sequence[int] | slice) -> ImageSet:
        """A new ImageSet with the items at ``positions`` (e.g. ``range(256)`` for a quick run)."""
        pos = list(range(len(self)))[positions] if isinstance(positions, slice) else list(positions)
        t = torch.as_tensor(pos, dtype=torch.long)
        info = dict(self.info, size=len(pos))
        return ImageSet(
            pixels=self.pixels[t] if self.pixels is not None else None,
            files=[self.files[i] for i in pos] if self.files is not None else None,
            read=self.read,
            indices=self.indices[t],
            labels=self.labels[t] if self.labels is not None else None,
            info=info,
        )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self[0].shape) if len(self) else ()

    def __repr__(self) -> str:
        return f"ImageSet({len(self)} images, {self.info.get('data_source', '')!r})"


def seeded_split(n: int, n_test: int, seed: int, keep_in_test: Sequence[int] = ()) -> tuple[list[int], list[int]]:
    """Split ``range(n)`` into (train, test) index lists, both sorted; ``test`` has ``n_test`` items.

    The items ``keep_in_test`` are always in the test part (the paper's figure ids); the rest of the
    test part is drawn with ``torch.Generator().manual_seed(seed)``.
    """
    keep = sorted({int(i) for i in keep_in_test if 0 <= int(i) < n})
    if not 0 < n_test < n or len(keep) > n_test:
        raise ValueError(f"cannot split {n} items into a test part of {n_test} (keeping {len(keep)})")
    keep_set = set(keep)
    rest = [i for i in range(n) if i not in keep_set]
    perm = torch.randperm(len(rest), generator=torch.Generator().manual_seed(seed)).tolist()
    test = sorted(keep + [rest[p] for p in perm[: n_test - len(keep)]])
    test_set = set(test)
    return [i for i in range(n) if i not in test_set], test


__all__ = ["ImageSet", "DatasetError", "data_root", "seeded_split", "ENV_DATA"]
