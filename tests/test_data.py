"""Dataset loaders (percept.data.mnist, percept.data.celeba) and the download scripts in data/.

References: torchvision's own IDX reader on the same MNIST file, and PIL applied directly with the
spec's crop box (25, 45, 153, 178) and a 64x64 Lanczos resize for CelebA.
"""

from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from percept.data import DatasetError, ImageSet, seeded_split
from percept.data.celeba import load_celeba
from percept.data.mnist import FIGURE_IDS, INTERPOLATION_PAIRS, RECONSTRUCTION_IDS, load_mnist, read_idx

ROOT = Path(__file__).resolve().parents[1]


def _write_idx(path: Path, array: np.ndarray, gz: bool = False) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


def _fake_mnist(folder: Path, n_train: int = 30, n_test: int = 20, gz: bool = False) -> dict:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, a in arrays.items():
        _write_idx(folder / (name + (".gz" if gz else "")), a, gz)
    return arrays


# --------------------------------------------------------------------------------------------------
# MNIST
# --------------------------------------------------------------------------------------------------


def test_offline_mnist_recovered_training_set(assets_dir, tmp_path, monkeypatch):
    """Offline default: the recovered 60,000 training digits and the official test set, labelled as such."""
    monkeypatch.setenv("PERCEPT_DATA", str(tmp_path))  # nothing downloaded there
    train, test = load_mnist("train"), load_mnist("test")
    assert (len(train), len(test)) == (60_000, 10_000)
    assert "RECOVERED" in train.info["data_source"] and train.info["protocol"] == "recovered"
    assert "official MNIST test set" in test.info["data_source"]
    # official statistics of the 28x28 training digits (mean 0.1307, std 0.3081), within a grey level
    digits = train.pixels[:, :, 2:30, 2:30].float() / 255
    assert abs(digits.mean().item() - 0.1307) < 1 / 255 and abs(digits.std().item() - 0.3081) < 1 / 255
    counts = torch.bincount(train.labels, minlength=10)  # the official label counts
    assert counts.tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def test_offline_mnist_split(assets_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PERCEPT_DATA", str(tmp_path))  # nothing downloaded there
    train, test = load_mnist("train", recovered=False), load_mnist("test", recovered=False)
    assert (len(train), len(test)) == (9_000, 1_000)
    assert train[0].shape == (1, 32, 32) and train[0].dtype == torch.float32
    assert set(train.indices.tolist()).isdisjoint(test.indices.tolist())
    assert sorted(train.indices.tolist() + test.indices.tolist()) == list(range(10_000))
    assert set(FIGURE_IDS) <= set(test.indices.tolist())  # the paper's figure digits are held out
    for info in (train.info, test.info):
        assert info["offline"] is True and "offline" in info["data_source"] and "60,000" in info["data_source"]
    # same split every time; another split seed gives another split (with the figure digits kept)
    assert torch.equal(load_mnist("test", recovered=False).indices, test.indices)
    other = load_mnist("test", split_seed=1, recovered=False)
    assert not torch.equal(other.indices, test.indices) and set(FIGURE_IDS) <= set(other.indices.tolist())


def test_mnist_pixels_match_torchvisions_reader(assets_dir, tmp_path):
    from torchvision.datasets.mnist import read_image_file, read_label_file

    raw = tmp_path / "t10k-images-idx3-ubyte"
    raw.write_bytes(gzip.decompress((assets_dir / "data/mnist/t10k-images-idx3-ubyte.gz").read_bytes()))
    labels = tmp_path / "t10k-labels-idx1-ubyte"
    labels.write_bytes(gzip.decompress((assets_dir / "data/mnist/t10k-labels-idx1-ubyte.gz").read_bytes()))
    reference, reference_labels = read_image_file(str(raw)), read_label_file(str(labels))
    test = load_mnist("test", offline=True)
    x = test.images()
    assert x.min() == 0 and x.max() == 1
    # zero padding of 2 pixels: 28x28 digits in a 32x32 frame
    assert x[:, :, :2].abs().sum() == 0 and x[:, :, -2:].abs().sum() == 0
    assert x[:, :, :, :2].abs().sum() == 0 and x[:, :, :, -2:].abs().sum() == 0
    expected = reference[test.indices].float() / 255
    torch.testing.assert_close(x[:, 0, 2:30, 2:30], expected, rtol=0, atol=0)
    assert torch.equal(test.labels, reference_labels[test.indices])
    assert reference_labels[RECONSTRUCTION_IDS[0]] == test.labels[test.position_of(RECONSTRUCTION_IDS[0])]
    assert all(test.position_of(a) >= 0 for pair in INTERPOLATION_PAIRS for a in pair)


@pytest.mark.parametrize("gz", [False, True])
def test_downloaded_mnist_layout_gives_the_full_splits(tmp_path, gz):
    arrays = _fake_mnist(tmp_path / "MNIST" / "raw", gz=gz)
    train, test = load_mnist("train", root=tmp_path), load_mnist("test", root=tmp_path)
    assert (len(train), len(test)) == (30, 20)
    assert train.info["offline"] is False and "offline" not in train.info["data_source"]
    expected = torch.from_numpy(arrays["train-images-idx3-ubyte"].astype(np.float32)) / 255
    torch.testing.assert_close(train.images()[:, 0, 2:30, 2:30], expected, rtol=0, atol=0)
    assert torch.equal(test.labels, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"]).long())
    # the default data root is used when PERCEPT_DATA points at it
    env = dict(os.environ, PERCEPT_DATA=str(tmp_path))
    code = "from percept.data.mnist import load_mnist; print(len(load_mnist('train')))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "30"


def test_empty_mnist_folder_names_what_is_missing(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_mnist("train", root=tmp_path)
    msg = str(err.value)
    assert "t10k-images-idx3-ubyte" in msg and "empty" in msg and "download_mnist.py" in msg


def test_incomplete_download_is_reported_not_silently_replaced(tmp_path, monkeypatch):
    arrays = _fake_mnist(tmp_path / "MNIST" / "raw")
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").unlink()
    monkeypatch.setenv("PERCEPT_DATA", str(tmp_path))
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte.*incomplete download"):
        load_mnist("train")
    assert len(arrays) == 4


def test_corrupt_mnist_files(tmp_path):
    folder = tmp_path / "MNIST" / "raw"
    _fake_mnist(folder, gz=True)
    path = folder / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:100])  # truncated gzip
    with pytest.raises(DatasetError, match="corrupt"):
        load_mnist("test", root=tmp_path)
    raw = tmp_path / "short-idx3-ubyte"
    _write_idx(raw, np.zeros((3, 28, 28)))
    raw.write_bytes(raw.read_bytes()[:-10])
    with pytest.raises(DatasetError, match="truncated"):
        read_idx(raw)
    raw.write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(DatasetError, match="bad header"):
        read_idx(raw)


def test_seeded_split_and_subsets():
    train, test = seeded_split(100, 10, seed=3, keep_in_test=[5, 99])
    assert len(test) == 10 and {5, 99} <= set(test) and not set(train) & set(test)
    assert seeded_split(100, 10, seed=3, keep_in_test=[5, 99]) == (train, test)
    with pytest.raises(ValueError):
        seeded_split(10, 10, seed=0)
    s = ImageSet(pixels=torch.arange(5 * 4, dtype=torch.uint8).reshape(5, 1, 2, 2), indices=[10, 11, 12, 13, 14])
    sub = s.subset([4, 0])
    assert sub.indices.tolist() == [14, 10] and sub.position_of(10) == 1
    with pytest.raises(KeyError):
        sub.position_of(12)


# --------------------------------------------------------------------------------------------------
# CelebA
# --------------------------------------------------------------------------------------------------


def _reference_crop(path: Path) -> torch.Tensor:
    with Image.open(path) as im:
        out = im.convert("RGB").crop((25, 45, 153, 178)).resize((64, 64), Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(out).copy()).permute(2, 0, 1).float() / 255


def test_offline_celeba_sample(assets_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PERCEPT_DATA", str(tmp_path))
    train, test = load_celeba("train", offline_source="sample"), load_celeba("test", offline_source="sample")
    assert (len(train), len(test)) == (24, 8)
    assert train[0].shape == (3, 64, 64) and 0 <= train[0].min() and train[0].max() <= 1
    assert "32-image CelebA sample" in test.info["data_source"] and test.info["offline"]
    files = sorted((assets_dir / "data" / "celeba_sample").glob("*.jpg"))
    for pos in (0, 7):
        ref = _reference_crop(files[int(test.indices[pos])])
        torch.testing.assert_close(test[pos], ref, rtol=0, atol=0)


def test_offline_celeba_half_resolution_faces(assets_dir, tmp_path, monkeypatch):
    """The 10,000 half-resolution faces with the paper's crop box halved give the paper's 64x64 crops:
    checked against the full-resolution sample images (the same faces 000001-000032) preprocessed with
    the paper's own box."""
    monkeypatch.setenv("PERCEPT_DATA", str(tmp_path))
    train, test = load_celeba("train"), load_celeba("test")
    assert (len(train), len(test)) == (9_000, 1_000)
    assert "REDUCED CelebA" in test.info["data_source"] and test.info["protocol"] == "celeba-10k-half"
    assert set(train.indices.tolist()).isdisjoint(test.indices.tolist())
    full = sorted((assets_dir / "data" / "celeba_sample").glob("*.jpg"))
    position = {int(i): p for p, i in enumerate(train.indices.tolist())}
    diffs = [
        (train[position[k]] - _reference_crop(full[k])).abs().mean().item() for k in range(32) if k in position
    ][:8]
    assert len(diffs) >= 4 and max(diffs) < 0.03  # the same crop, from half the detail


def test_preprocessed_celeba_folder(tmp_path):
    folder = tmp_path / "celeba" / "64x64"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(20):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"{i + 1:06d}.png")
    train, test = load_celeba("train", root=tmp_path), load_celeba("test", root=tmp_path)
    assert (len(train), len(test)) == (18, 2) and not train.info["offline"]
    with Image.open(folder / f"{int(test.indices[0]) + 1:06d}.png") as im:
        ref = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(test[0], ref, rtol=0, atol=0)
    # a corrupt image is named when it is read
    victim = int(train.indices[0]) + 1
    (folder / f"{victim:06d}.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DatasetError, match=f"{victim:06d}.png is corrupt"):
        train[0]


def test_empty_celeba_folder(tmp_path):
    (tmp_path / "celeba" / "64x64").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"no preprocessed \*\.png.*download_celeba.py"):
        load_celeba("train", root=tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        load_celeba("train", root=tmp_path / "nowhere")


# --------------------------------------------------------------------------------------------------
# download scripts
# --------------------------------------------------------------------------------------------------


def _script(name: str, *args: str, **env) -> subprocess.CompletedProcess:
    environ = dict(os.environ, **env)
    return subprocess.run(
        [sys.executable, str(ROOT / "data" / name), *args], capture_output=True, text=True, timeout=120, env=environ
    )


def test_download_mnist_fails_clearly_offline(tmp_path):
    # a port nothing listens on: fails at once, like a machine without network
    proc = _script("download_mnist.py", "--root", str(tmp_path), "--mirror", "http://127.0.0.1:9/", "--timeout", "5")
    assert proc.returncode == 1
    assert "could not download MNIST" in proc.stderr and "PERCEPT_ASSETS" in proc.stderr


def test_download_celeba_fails_clearly_offline(tmp_path):
    proc = _script("download_celeba.py", "--root", str(tmp_path), "--url", "http://127.0.0.1:9/img_align_celeba.zip")
    assert proc.returncode == 1
    assert "Connection refused" in proc.stderr or "127.0.0.1" in proc.stderr
    assert "celeba_sample" in proc.stderr


def test_download_celeba_preprocesses_a_local_source_resumably(assets_dir, tmp_path):
    sample = assets_dir / "data" / "celeba_sample"
    proc = _script("download_celeba.py", "--root", str(tmp_path), "--source", str(sample), "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    files = sorted((tmp_path / "celeba" / "64x64").glob("*.png"))
    assert len(files) == 32
    again = _script("download_celeba.py", "--root", str(tmp_path), "--source", str(sample), "--workers", "1")
    assert again.returncode == 0 and "32 already preprocessed" in again.stdout
    test = load_celeba("test", root=tmp_path)
    assert len(test) == 3 and "32 images preprocessed" in test.info["data_source"]  # 10 % of 32
    offline = load_celeba("test", offline=True, offline_source="sample")
    # the preprocessed PNGs equal the in-memory preprocessing of the same JPEGs
    by_name = {p.stem: p for p in files}
    jpgs = sorted(sample.glob("*.jpg"))
    name = jpgs[int(offline.indices[0])].stem
    png = by_name[name]
    with Image.open(png) as im:
        stored = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(stored, offline[0], rtol=0, atol=0)
