"""percept.assets: lookup order, checksums and the error a user sees when something is missing."""

from __future__ import annotations

import hashlib
import shutil

import pytest
import torch

from percept import assets

RELPATH = "weights/czolbe/gray_watson_fft_trial0.pth"


def test_offline_folder_is_found_and_verified(assets_dir, monkeypatch, tmp_path):
    monkeypatch.setenv(assets.ENV_CACHE, str(tmp_path / "empty-cache"))
    path = assets.locate(RELPATH)
    assert path == assets_dir / RELPATH
    # the table's checksum is the one the asset README publishes for this file
    assert hashlib.sha256(path.read_bytes()).hexdigest() == assets.ASSETS[RELPATH].sha256


def test_every_offline_file_matches_the_table(assets_dir):
    present = [r for r in assets.ASSETS if (assets_dir / r).is_file()]
    assert len(present) >= 20
    for relpath in present:
        assets.verify(assets_dir / relpath, assets.ASSETS[relpath])


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """No offline folder, an empty cache, and no package copies."""
    monkeypatch.delenv(assets.ENV_ASSETS, raising=False)
    monkeypatch.setenv(assets.ENV_CACHE, str(tmp_path / "cache"))
    monkeypatch.setattr(assets, "_package_file", lambda spec: None)
    return tmp_path


def test_missing_file_names_the_file_the_folders_and_the_command(isolated):
    with pytest.raises(assets.MissingAssetError) as err:
        assets.locate(RELPATH)
    message = str(err.value)
    assert RELPATH in message
    assert str(isolated / "cache" / RELPATH) in message
    assert f"python -m percept.assets fetch {RELPATH}" in message and "make assets" in message


def test_checksum_mismatch_is_rejected(isolated, assets_dir):
    cached = isolated / "cache" / RELPATH
    cached.parent.mkdir(parents=True)
    data = bytearray((assets_dir / RELPATH).read_bytes())
    data[-10] ^= 0xFF  # one corrupted byte
    cached.write_bytes(bytes(data))
    with pytest.raises(assets.ChecksumError, match="does not match its checksum"):
        assets.locate(RELPATH)


def test_truncated_checkpoint_is_rejected_by_content_digest(isolated, assets_dir):
    relpath = "weights/torchvision/squeezenet1_1_features.pth"
    cached = isolated / "cache" / relpath
    cached.parent.mkdir(parents=True)
    cached.write_bytes((assets_dir / relpath).read_bytes()[:1000])
    with pytest.raises(assets.ChecksumError):
        assets.locate(relpath)


def test_derived_checkpoint_is_accepted_by_content_not_bytes(isolated, assets_dir):
    """A features-only checkpoint re-saved by this torch version still verifies."""
    relpath = "weights/torchvision/squeezenet1_1_features.pth"
    state = torch.load(assets_dir / relpath, weights_only=True)
    cached = isolated / "cache" / relpath
    cached.parent.mkdir(parents=True)
    torch.save(state, cached)
    assert cached.read_bytes() != (assets_dir / relpath).read_bytes()
    assert assets.locate(relpath) == cached
    state["0.weight"] = state["0.weight"] + 1e-3
    torch.save(state, cached)
    with pytest.raises(assets.ChecksumError):
        assets.locate(relpath)


def test_cache_is_used_when_no_offline_folder(isolated, assets_dir):
    cached = isolated / "cache" / RELPATH
    cached.parent.mkdir(parents=True)
    shutil.copy(assets_dir / RELPATH, cached)
    assert assets.locate(RELPATH) == cached


def test_lpips_weights_come_from_the_torchmetrics_package(monkeypatch, tmp_path):
    monkeypatch.delenv(assets.ENV_ASSETS, raising=False)
    monkeypatch.setenv(assets.ENV_CACHE, str(tmp_path))
    path = assets.locate("weights/lpips/v0.1/squeeze.pth")
    assert "torchmetrics" in str(path)


def test_fetch_offline_fails_clearly(isolated, monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(assets.urllib.request, "urlopen", no_network)
    with pytest.raises(assets.MissingAssetError, match="could not download"):
        assets.fetch(RELPATH, progress=False)
    assert not (isolated / "cache" / RELPATH).exists()


def test_fetch_verifies_what_it_downloads(isolated, assets_dir, monkeypatch):
    """fetch() keeps a correct download and refuses a corrupted one (served from a local file)."""
    good = (assets_dir / RELPATH).read_bytes()

    class Response:
        def __init__(self, payload):
            self.payload, self.headers = payload, {"Content-Length": str(len(payload))}

        def read(self, n):
            chunk, self.payload = self.payload[:n], self.payload[n:]
            return chunk

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(assets.urllib.request, "urlopen", lambda url, timeout: Response(good[:-1] + b"x"))
    with pytest.raises(assets.ChecksumError):
        assets.fetch(RELPATH, progress=False)
    assert not (isolated / "cache" / RELPATH).exists()
    monkeypatch.setattr(assets.urllib.request, "urlopen", lambda url, timeout: Response(good))
    assert assets.fetch(RELPATH, progress=False) == isolated / "cache" / RELPATH


def test_unknown_asset_lists_the_known_ones():
    with pytest.raises(KeyError, match="known assets"):
        assets.locate("weights/nope.pth")
