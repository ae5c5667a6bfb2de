"""Reading and writing images as the tensors every metric takes: float (1, C, H, W) in [0, 1].

>>> from percept.io import read_image, read_pair  # doctest: +SKIP
>>> x = read_image("photo.png")                      # (1, 3, H, W) for colour files, (1, 1, H, W) for grey  # doctest: +SKIP
>>> x = read_image("photo.png", colorspace="grey")   # always 1 channel (BT.601 luma)  # doctest: +SKIP
>>> a, b = read_pair("a.png", "b.jpg", colorspace="rgb", resize=(256, 256))  # doctest: +SKIP

Conversions, decided once for the whole project:

- **Alpha** is dropped by default (``alpha="drop"``): the colour channels are used as stored. This is what
  the LPIPS and E-LPIPS reference scripts do (they read the first three channels), so distances match
  theirs. ``alpha="white"`` / ``"black"`` composite the image over that background instead, which is
  what a viewer shows for a transparent image.
- **Grey** files (modes 1, L, LA, 16-bit I;16) give one channel. ``colorspace="rgb"`` replicates it to
  three; ``colorspace="grey"`` turns colour files into grey with the BT.601 luma weights
  (:func:`percept.color.rgb_to_grey`, the weights of torchvision's ``Grayscale``).
- **Bit depth**: 8-bit data is divided by 255, 16-bit grey PNGs (``I;16``) by 65535 at full precision.
  Pillow reads 16-bit colour PNGs at 8-bit precision; they are still scaled to [0, 1] correctly.
- **Palette, CMYK and YCbCr** files are converted to RGB by Pillow (with the palette's transparency
  becoming alpha). JPEG EXIF orientation is applied, as image viewers and OpenCV do.
- **Size** is never changed unless asked: ``resize=(H, W)`` resamples with antialiased bicubic
  interpolation (clamped to [0, 1]).

Problems raise :class:`ImageReadError` (missing, unreadable, corrupt or truncated file) or
:class:`ImageSizeError` (two images of different sizes), each naming the file(s) involved.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

#: file name extensions treated as images when a folder is scanned (compared case-insensitively)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
ALPHA_MODES = ("drop", "white", "black")

_GREY_MODES = {"1", "L", "LA", "La"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
_ALPHA_PIL_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}


class ImageReadError(OSError):
    """A file is missing, unreadable, not an image, or corrupt/truncated. The message names the file."""


class ImageSizeError(ValueError):
    """Two images that must be compared have different sizes. The message names both files."""


class ImageTooLargeError(ImageReadError):
    """An image has more pixels than the limit (:data:`MAX_PIXELS`); the message says how to raise it."""


MAX_PIXELS_ENV = "PERCEPT_MAX_PIXELS"
#: largest image (height x width) read without being asked: 16.8 MP, e.g. 4096x4096. Two such images
#: take about 10 GB under the deep metrics; ``max_pixels=`` / ``--max-pixels`` / ``$PERCEPT_MAX_PIXELS``
#: change it (0: no limit).
MAX_PIXELS = int(os.environ.get(MAX_PIXELS_ENV) or 4096 * 4096)


PathLike = str | os.PathLike


def parse_size(text: str) -> tuple[int, int]:
    """``"256x192"`` (height x width) or ``"256"`` (square) -> ``(256, 192)``; raise ``ValueError`` otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX\u00d7,]\s*(\d+))?\s*", str(text))
    if not match:
        raise ValueError(f"bad size {text!r}: use HxW (height x width, e.g. 256x256) or a single number")
    h = int(match.group(1))
    w = int(match.group(2)) if match.group(2) else h
    if h < 1 or w < 1:
        raise ValueError(f"bad size {text!r}: height and width must be positive")
    return h, w


def _open(path: Path, max_pixels: int | None = None):
    """Open and fully decode ``path`` with Pillow; raise :class:`ImageReadError` naming the file.

    Only regular files are opened (a named pipe or device would block or never end), and the pixel count
    in the header is checked against ``max_pixels`` (default :data:`MAX_PIXELS`) before decoding."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not path.exists():
        raise ImageReadError(f"{path}: no such file")
    if path.is_dir():
        raise ImageReadError(f"{path}: is a folder, not an image file")
    if not path.is_file():
        raise ImageReadError(f"{path}: not a regular file (a pipe, socket or device); give an image file")
    limit = MAX_PIXELS if max_pixels is None else int(max_pixels)
    try:
        with warnings.catch_warnings():  # the size is checked here, against our own limit
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
        w, h = image.size
        if limit > 0 and w * h > limit:
            image.close()
            raise ImageTooLargeError(
                f"{path}: {h}x{w} pixels ({w * h / 1e6:.1f} MP) is over the limit of {limit / 1e6:.1f} MP, which "
                f"keeps memory bounded (decoding alone takes about {w * h * 24 / 1e9:.1f} GB); raise it with "
                f"--max-pixels {w * h} (max_pixels= in Python, {MAX_PIXELS_ENV} in the environment) or shrink "
                "the file first"
            )
        image.load()  # decode now: truncated or corrupt data fails here, not later
    except ImageTooLargeError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageTooLargeError(f"{path}: refused by Pillow as a decompression bomb ({err})") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not an image Pillow can read (expected PNG or JPEG)") from None
    except PermissionError:
        raise ImageReadError(f"{path}: permission denied") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:  # Pillow's errors for corrupt data
        raise ImageReadError(f"{path}: corrupt or truncated image ({err})") from None
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block must not make an otherwise fine image unreadable
        pass
    return image


def _to_array(image) -> tuple[np.ndarray, np.ndarray | None]:
    """Pillow image -> (colour array (H, W, C) float64 in [0, 1] with C in {1, 3}, alpha (H, W) or None)."""
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        data = np.asarray(image, dtype=np.float64) / 65535.0
        return np.clip(data, 0.0, 1.0)[..., None], None
    if mode == "F":
        return np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0)[..., None], None
    has_alpha = mode in _ALPHA_PIL_MODES or "transparency" in image.info
    if mode in _GREY_MODES:
        target = "LA" if has_alpha else "L"
    else:
        target = "RGBA" if has_alpha else "RGB"
    if mode != target:
        image = image.convert(target)
    data = np.asarray(image, dtype=np.float64) / 255.0
    if data.ndim == 2:
        data = data[..., None]
    if has_alpha:
        return data[..., :-1], data[..., -1]
    return data, None


def resize_image(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resample (N, C, H, W) images in [0, 1] to ``size`` = (H, W): antialiased bicubic, clamped to [0, 1]."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    out = F.interpolate(x, size=tuple(size), mode="bicubic", align_corners=False, antialias=True)
    return out.clamp_(0.0, 1.0)


def to_colorspace(x: torch.Tensor, colorspace: str | None) -> torch.Tensor:
    """Make (N, C, H, W) images 3-channel (``"rgb"``: grey is replicated) or 1-channel (``"grey"``: BT.601 luma).

    ``None`` leaves the channels as they are.
    """
    if colorspace is None:
        return x
    from percept.checks import normalize_colorspace
    from percept.color import rgb_to_grey

    space = normalize_colorspace(colorspace)
    c = x.shape[1]
    if space == "rgb":
        return x.expand(-1, 3, -1, -1).contiguous() if c == 1 else x
    return rgb_to_grey(x) if c == 3 else x


def read_image(
    path: PathLike,
    *,
    colorspace: str | None = None,
    alpha: str = "drop",
    resize: tuple[int, int] | str | None = None,
    dtype: torch.dtype = torch.float32,
    max_pixels: int | None = None,
) -> torch.Tensor:
    """Read a PNG/JPEG (anything Pillow reads) as a float tensor (1, C, H, W) in [0, 1].

    Args:
        path: the image file.
        colorspace: None keeps the file's own channels (1 for grey files, 3 for colour); ``"rgb"`` gives
            3 channels (grey replicated); ``"grey"`` (alias ``"LA"``, ``"gray"``) gives 1 channel (BT.601 luma).
        alpha: ``"drop"`` (default: use the stored colour, as the LPIPS / E-LPIPS scripts do), ``"white"`` or
            ``"black"`` (composite over that background).
        resize: None (default: never resize) or (H, W) / ``"HxW"``: antialiased bicubic resampling.
        dtype: floating dtype of the result.
        max_pixels: refuse files with more pixels (default :data:`MAX_PIXELS`; 0: no limit).

    Raises:
        ImageReadError: missing, unreadable or corrupt file, not a regular file, or over ``max_pixels``
            (:class:`ImageTooLargeError`); the message names it.
    """
    if alpha not in ALPHA_MODES:
        raise ValueError(f"unknown alpha handling {alpha!r}: use one of {', '.join(ALPHA_MODES)}")
    path = Path(path)
    colour, opacity = _to_array(_open(path, max_pixels))
    if opacity is not None and alpha != "drop":
        background = 1.0 if alpha == "white" else 0.0
        colour = colour * opacity[..., None] + background * (1.0 - opacity[..., None])
    x = torch.from_numpy(np.ascontiguousarray(colour.transpose(2, 0, 1))).unsqueeze(0).to(dtype)
    x = to_colorspace(x, colorspace)
    if resize is not None:
        x = resize_image(x, parse_size(resize) if isinstance(resize, str) else tuple(resize))
    return x


def image_size(path: PathLike) -> tuple[int, int]:
    """(H, W) of an image file without decoding the pixels (EXIF rotation not applied)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            w, h = image.size
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(f"{path}: not a readable image ({err})") from None
    return h, w


def check_same_size(paths: Iterable[PathLike], images: Iterable[torch.Tensor]) -> None:
    """Raise :class:`ImageSizeError` naming the files unless all images have the same height and width."""
    paths, images = list(paths), list(images)
    sizes = [tuple(x.shape[-2:]) for x in images]
    if len(set(sizes)) > 1:
        listing = ", ".join(f"{p} is {h}x{w}" for p, (h, w) in zip(paths, sizes))
        raise ImageSizeError(f"images differ in size: {listing} (HxW); pass a common size with --resize HxW")


def read_pair(
    a: PathLike,
    b: PathLike,
    *,
    colorspace: str | None = "rgb",
    alpha: str = "drop",
    resize: tuple[int, int] | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read two images for a comparison: same channel count, and the same size (else :class:`ImageSizeError`).

    With ``colorspace=None`` a grey and a colour file are both made 3-channel.
    """
    x, y = (read_image(p, colorspace=colorspace, alpha=alpha, resize=resize) for p in (a, b))
    if x.shape[1] != y.shape[1]:
        x, y = to_colorspace(x, "rgb"), to_colorspace(y, "rgb")
    check_same_size((a, b), (x, y))
    return x, y


def list_images(folder: PathLike) -> list[Path]:
    """Image files (by extension, see :data:`IMAGE_EXTENSIONS`) directly inside ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.exists():
        raise ImageReadError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise ImageReadError(f"{folder}: not a folder")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def save_image(x: torch.Tensor, path: PathLike) -> Path:
    """Write (C, H, W) or (1, C, H, W) floats in [0, 1] (C = 1 or 3) as an 8-bit image (format from the suffix)."""
    from PIL import Image

    if x.dim() == 4:
        if x.shape[0] != 1:
            raise ValueError(f"save_image writes one image; got a batch of shape {tuple(x.shape)}")
        x = x[0]
    if x.dim() != 3 or x.shape[0] not in (1, 3):
        raise ValueError(f"save_image expects (C, H, W) with C = 1 or 3, got shape {tuple(x.shape)}")
    array = (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy().transpose(1, 2, 0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array[..., 0] if array.shape[2] == 1 else array).save(path)
    return path


__all__ = [
    "read_image",
    "read_pair",
    "image_size",
    "list_images",
    "save_image",
    "resize_image",
    "to_colorspace",
    "parse_size",
    "check_same_size",
    "ImageReadError",
    "ImageSizeError",
    "ImageTooLargeError",
    "IMAGE_EXTENSIONS",
    "MAX_PIXELS",
]
