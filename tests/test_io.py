"""percept.io: reading PNG/JPEG files into (1, C, H, W) tensors in [0, 1].

Values are checked against what Pillow decodes (or against the bytes written by hand), never against
percept.io itself.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from percept.io import (
    ImageReadError,
    ImageSizeError,
    list_images,
    parse_size,
    read_image,
    read_pair,
    save_image,
)


def _rng(seed=0):
    return np.random.default_rng(seed)


def _write_png16(path, array: np.ndarray, color_type: int) -> None:
    """A 16-bit PNG written byte by byte (Pillow cannot write 16-bit colour)."""
    h, w = array.shape[:2]
    raw = b"".join(b"\x00" + array[i].astype(">u2").tobytes() for i in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


def test_rgb_png_exact(tmp_path):
    array = _rng().integers(0, 256, (13, 17, 3), dtype=np.uint8)
    Image.fromarray(array).save(tmp_path / "a.png")
    x = read_image(tmp_path / "a.png")
    assert x.shape == (1, 3, 13, 17) and x.dtype == torch.float32
    np.testing.assert_allclose(x[0].permute(1, 2, 0).numpy(), array / 255.0, atol=1e-7)


def test_rgba_alpha_drop_and_composite(tmp_path):
    rgb = _rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    alpha = _rng(2).integers(0, 256, (8, 8, 1), dtype=np.uint8)
    Image.fromarray(np.concatenate([rgb, alpha], -1), "RGBA").save(tmp_path / "t.png")
    dropped = read_image(tmp_path / "t.png")
    np.testing.assert_allclose(dropped[0].permute(1, 2, 0).numpy(), rgb / 255.0, atol=1e-7)
    a = alpha / 255.0
    white = read_image(tmp_path / "t.png", alpha="white")[0].permute(1, 2, 0).numpy()
    black = read_image(tmp_path / "t.png", alpha="black")[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(white, rgb / 255.0 * a + (1 - a), atol=1e-6)
    np.testing.assert_allclose(black, rgb / 255.0 * a, atol=1e-6)
    with pytest.raises(ValueError, match="alpha"):
        read_image(tmp_path / "t.png", alpha="grey")


def test_grey_file_and_colorspace_conversions(tmp_path):
    grey = _rng(3).integers(0, 256, (9, 11), dtype=np.uint8)
    Image.fromarray(grey, "L").save(tmp_path / "g.png")
    x = read_image(tmp_path / "g.png")
    assert x.shape == (1, 1, 9, 11)
    np.testing.assert_allclose(x[0, 0].numpy(), grey / 255.0, atol=1e-7)
    rgb = read_image(tmp_path / "g.png", colorspace="rgb")
    assert rgb.shape == (1, 3, 9, 11) and torch.equal(rgb[:, 0], rgb[:, 2]) and torch.equal(rgb[:, 0], x[:, 0])
    # colour -> grey: BT.601 luma, as Pillow's convert("L") computes it (up to its rounding to 8 bits)
    colour = _rng(4).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    Image.fromarray(colour).save(tmp_path / "c.png")
    y = read_image(tmp_path / "c.png", colorspace="grey")
    assert y.shape == (1, 1, 9, 11)
    pil_luma = np.asarray(Image.fromarray(colour).convert("L")) / 255.0
    np.testing.assert_allclose(y[0, 0].numpy(), pil_luma, atol=0.6 / 255)
    assert read_image(tmp_path / "c.png", colorspace="LA").shape == (1, 1, 9, 11)


def test_grey_with_alpha(tmp_path):
    la = np.stack([np.full((4, 4), 200, np.uint8), np.full((4, 4), 0, np.uint8)], -1)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    assert read_image(tmp_path / "la.png").shape == (1, 1, 4, 4)
    np.testing.assert_allclose(read_image(tmp_path / "la.png").numpy(), 200 / 255, atol=1e-7)
    np.testing.assert_allclose(read_image(tmp_path / "la.png", alpha="white").numpy(), 1.0, atol=1e-7)


def test_sixteen_bit_grey_full_precision(tmp_path):
    array = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(array).save(tmp_path / "g16.png")
    x = read_image(tmp_path / "g16.png")
    assert x.shape == (1, 1, 64, 64)
    np.testing.assert_allclose(x[0, 0].double().numpy(), array / 65535.0, atol=1e-7)


def test_sixteen_bit_colour_scaled(tmp_path):
    array = np.zeros((4, 5, 3), np.uint16)
    array[..., 0], array[..., 1], array[..., 2] = 65535, 32768, 2570
    _write_png16(tmp_path / "c16.png", array, color_type=2)
    x = read_image(tmp_path / "c16.png")
    assert x.shape == (1, 3, 4, 5)
    np.testing.assert_allclose(x[0, :, 0, 0].numpy(), array[0, 0] / 65535.0, atol=1 / 255)
    rgba = np.concatenate([array, np.full((4, 5, 1), 65535, np.uint16)], -1)
    _write_png16(tmp_path / "c16a.png", rgba, color_type=6)
    np.testing.assert_allclose(read_image(tmp_path / "c16a.png").numpy(), x.numpy(), atol=1e-7)


def test_palette_with_transparency(tmp_path):
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.info["transparency"] = 0
    image.save(tmp_path / "p.png", transparency=0)
    x = read_image(tmp_path / "p.png")
    assert x.shape == (1, 3, 4, 4)
    np.testing.assert_allclose(x[0, :, 0, 0].numpy(), [1.0, 0.0, 0.0])


def test_jpeg_and_exif_orientation(tmp_path):
    array = _rng(5).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    Image.fromarray(array).save(tmp_path / "a.jpg", quality=95)
    x = read_image(tmp_path / "a.jpg")
    assert x.shape == (1, 3, 16, 24)
    np.testing.assert_allclose(x[0].permute(1, 2, 0).numpy(), np.asarray(Image.open(tmp_path / "a.jpg")) / 255.0,
                               atol=1e-7)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    Image.fromarray(array).save(tmp_path / "r.jpg", quality=95, exif=exif)
    assert read_image(tmp_path / "r.jpg").shape == (1, 3, 24, 16)


def test_errors_name_the_file(tmp_path):
    with pytest.raises(ImageReadError, match="missing.png: no such file"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "text.png").write_text("this is not an image")
    with pytest.raises(ImageReadError, match="text.png"):
        read_image(tmp_path / "text.png")
    Image.fromarray(_rng().integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="cut.png: corrupt or truncated"):
        read_image(tmp_path / "cut.png")
    with pytest.raises(ImageReadError, match="folder"):
        read_image(tmp_path)


def test_resize_only_when_asked(tmp_path):
    Image.fromarray(np.full((30, 40, 3), 128, np.uint8)).save(tmp_path / "a.png")
    assert read_image(tmp_path / "a.png").shape == (1, 3, 30, 40)
    x = read_image(tmp_path / "a.png", resize=(16, 24))
    assert x.shape == (1, 3, 16, 24)
    np.testing.assert_allclose(x.numpy(), 128 / 255, atol=1e-5)  # a constant image stays constant
    assert read_image(tmp_path / "a.png", resize="8x8").shape == (1, 3, 8, 8)
    noise = _rng(6).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "n.png")
    y = read_image(tmp_path / "n.png", resize=(64, 64))
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


def test_parse_size():
    assert parse_size("256x192") == (256, 192)
    assert parse_size("64") == (64, 64)
    assert parse_size(" 32 X 48 ") == (32, 48)
    for bad in ("", "x", "0x5", "12x", "a by b"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_read_pair_checks_sizes_and_channels(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((8, 16, 3), np.uint8)).save(tmp_path / "b.png")
    Image.fromarray(np.zeros((8, 8), np.uint8), "L").save(tmp_path / "g.png")
    with pytest.raises(ImageSizeError, match=r"a.png is 8x8.*b.png is 8x16"):
        read_pair(tmp_path / "a.png", tmp_path / "b.png")
    a, b = read_pair(tmp_path / "a.png", tmp_path / "b.png", resize=(8, 8))
    assert a.shape == b.shape == (1, 3, 8, 8)
    a, g = read_pair(tmp_path / "a.png", tmp_path / "g.png", colorspace=None)
    assert a.shape == g.shape == (1, 3, 8, 8)


def test_list_images_and_save(tmp_path):
    for name in ("b.PNG", "a.jpg", "c.jpeg"):
        save_image(torch.rand(1, 3, 4, 4), tmp_path / name)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "sub").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG", "c.jpeg"]
    with pytest.raises(ImageReadError, match="no such folder"):
        list_images(tmp_path / "nope")
    x = torch.rand(1, 1, 5, 6)
    save_image(x, tmp_path / "grey.png")
    assert np.asarray(Image.open(tmp_path / "grey.png")).shape == (5, 6)
    np.testing.assert_allclose(read_image(tmp_path / "grey.png").numpy(), x.numpy(), atol=0.5 / 255 + 1e-7)


def test_real_asset_images(assets_dir):
    folder = assets_dir / "data" / "images"
    if not (folder / "elpips" / "cat.png").is_file():
        pytest.skip("E-LPIPS example images not in the asset folder")
    x = read_image(folder / "elpips" / "adv_anchor.png")  # RGBA with partial transparency
    stored = np.asarray(Image.open(folder / "elpips" / "adv_anchor.png"))
    assert stored.shape[2] == 4 and x.shape == (1, 3, stored.shape[0], stored.shape[1])
    np.testing.assert_allclose(x[0].permute(1, 2, 0).numpy(), stored[..., :3] / 255.0, atol=1e-7)
    celeba = sorted((assets_dir / "data" / "celeba_sample").glob("*.jpg"))
    if celeba:
        assert read_image(celeba[0]).shape == (1, 3, 218, 178)
