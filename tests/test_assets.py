"""percept.assets: lookup order, checksums and the error a user sees when something is missing."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch
from fakes import FakeResponse

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

    monkeypatch.setattr(assets.urllib.request, "urlopen", lambda url, timeout: FakeResponse(good[:-1] + b"x"))
    with pytest.raises(assets.ChecksumError):
        assets.fetch(RELPATH, progress=False)
    assert not (isolated / "cache" / RELPATH).exists()
    monkeypatch.setattr(assets.urllib.request, "urlopen", lambda url, timeout: FakeResponse(good))
    assert assets.fetch(RELPATH, progress=False) == isolated / "cache" / RELPATH


def test_unknown_asset_lists_the_known_ones():
    with pytest.raises(KeyError, match="known assets"):
        assets.locate("weights/nope.pth")


# ------------------------------------------------------------------------------ derived ImageNet AlexNet
ALEX = "weights/torchvision/alexnet_features.pth"


def test_offline_alexnet_features_are_accepted_by_their_own_checksum(assets_dir, monkeypatch, tmp_path):
    monkeypatch.setenv(assets.ENV_CACHE, str(tmp_path / "empty-cache"))
    path = assets.locate(ALEX)
    assert path == assets_dir / ALEX
    # the digest the asset README publishes for the offline copy
    assert assets.file_sha256(path) == "2cdc3ada1b15785eebc8e8471d92914f2f09a71639048f013e7108dac6f47933"
    entry = assets.ASSETS[ALEX]
    assert entry.derive == "features" and entry.url.endswith("/alexnet-owt-7be5be79.pth")
    # torchvision's full file, the one a download is checked against before the features are taken out
    assert entry.source_sha256 == assets.ASSETS["weights/torchvision/alexnet-owt-7be5be79.pth"].sha256
    assert entry.source_sha256.startswith("7be5be79")



def _full_alexnet_bytes(assets_dir, tmp_path, perturb: float = 0.0) -> bytes:
    """A full-model AlexNet checkpoint (``features.*`` and a small stand-in classifier) around the offline
    features; ``perturb`` shifts one weight so the features are not bit-identical to the offline copy."""
    features = torch.load(assets_dir / ALEX, weights_only=True)
    full = {f"features.{k}": v.clone() for k, v in features.items()}
    full["features.0.weight"][0, 0, 0, 0] += perturb
    full["classifier.1.weight"] = torch.zeros(4, 9)
    path = tmp_path / "full.pth"
    torch.save(full, path)
    return path.read_bytes()


def test_derived_alexnet_download_must_be_the_official_file(isolated, assets_dir, monkeypatch):
    """A file served at torchvision's address whose sha256 is not the official one is refused before anything
    is derived, even when its features are exactly the offline ones."""
    payload = _full_alexnet_bytes(assets_dir, isolated)
    monkeypatch.setattr(assets.urllib.request, "urlopen", lambda url, timeout: FakeResponse(payload))
    with pytest.raises(assets.ChecksumError, match="7be5be79"):
        assets.fetch(ALEX, progress=False)
    assert not (isolated / "cache" / ALEX).exists()


@pytest.mark.parametrize("perturb", [0.0, 1e-3])
def test_fetch_derives_features_from_a_verified_source_and_records_it(isolated, assets_dir, monkeypatch, perturb):
    """The download path of a derived asset: the upstream file is checked against its sha256, the features are
    saved with a record of their tensor digest, and that record makes the file verifiable later, whether or
    not the values equal the offline copy's (perturb != 0); any later change to the file is caught."""
    payload = _full_alexnet_bytes(assets_dir, isolated, perturb)
    official = assets.ASSETS[ALEX]
    entry = assets.Asset(
        ALEX,
        official.url,
        official.sha256,
        content_sha256=official.content_sha256,
        derive="features",
        source_sha256=hashlib.sha256(payload).hexdigest(),  # this test's stand-in for the official file
    )
    monkeypatch.setitem(assets.ASSETS, ALEX, entry)
    monkeypatch.setattr(assets.urllib.request, "urlopen", lambda url, timeout: FakeResponse(payload))
    path = assets.fetch(ALEX, progress=False)
    assert path == isolated / "cache" / ALEX
    state = torch.load(path, weights_only=True)
    assert set(state) == set(torch.load(assets_dir / ALEX, weights_only=True))  # no "features." prefix left
    record = json.loads((path.parent / (path.name + ".source.json")).read_text())
    assert record["source_sha256"] == entry.source_sha256
    assert record["content_sha256"] == assets.state_dict_digest(state)
    assets._verified.clear()
    assert assets.locate(ALEX) == path
    if perturb == 0:  # bit-identical values: the offline copy's tensor digest also vouches for it
        assert record["content_sha256"] == official.content_sha256
    torch.save({**state, "3.bias": state["3.bias"] + 1e-4}, path)
    assets._verified.clear()
    with pytest.raises(assets.ChecksumError):
        assets.locate(ALEX)
    # a record that names another upstream file does not vouch for anything
    torch.save(state, path)
    record["source_sha256"] = "0" * 64
    (path.parent / (path.name + ".source.json")).write_text(json.dumps(record))
    assets._verified.clear()
    if perturb:
        with pytest.raises(assets.ChecksumError):
            assets.locate(ALEX)
    else:
        assert assets.locate(ALEX) == path  # still the offline copy's tensors


def test_imagenet_alexnet_is_found_offline(assets_dir):
    import percept
    from percept.backbones import imagenet_checkpoint

    assert imagenet_checkpoint("alex") == assets_dir / ALEX
    metric = percept.get_metric("lpips-alex")
    body = metric.backbone.body.state_dict()
    offline = torch.load(assets_dir / ALEX, weights_only=True)
    assert all(torch.equal(body[k], offline[k]) for k in offline)


# ------------------------------------------------------------------------------- Watson-VGG (git blob id)
def test_git_blob_id_of_a_known_upstream_file(assets_dir):
    """git_blob_sha1 reproduces the blob ids of Czolbe et al.'s repository tree (master 3729dd1) for files
    that are available here, the same kind of id that pins the Watson-VGG downloads."""
    upstream = {
        "weights/czolbe/rgb_watson_fft_trial0.pth": "e7ec185a488722a46cff2f9c1f57332659e175b4",
        "weights/czolbe/gray_pnet_lin_vgg_trial0.pth": "588570571e53eada9ef8d25b9dcdc35e872e941d",
        RELPATH: "fc738f1e6f5d48a302295d11938315da5a8c452e",
    }
    for relpath, blob in upstream.items():
        assert assets.git_blob_sha1(assets_dir / relpath) == blob


def test_watson_vgg_weights_are_registered_with_their_upstream_address():
    for space, blob in (("rgb", "ad6123a84f603e15cf54bb121bb7eb26f25cbb8f"), ("gray", "b4c4cc3e28f69e267e0b38e425a6ee65fe4a1afd")):
        entry = assets.ASSETS[f"weights/czolbe/{space}_watson_vgg_trial0.pth"]
        assert entry.url.endswith(f"PerceptualSimilarity/master/src/loss/weights/{space}_watson_vgg_trial0.pth")
        assert entry.git_sha1 == blob and entry.sha256 is None


def test_fetch_checks_a_download_against_its_git_blob_id(isolated, assets_dir, monkeypatch):
    relpath = "weights/czolbe/rgb_watson_vgg_trial0.pth"
    good = (assets_dir / RELPATH).read_bytes()  # a stand-in payload whose blob id this test knows
    entry = assets.Asset(relpath, assets.ASSETS[relpath].url, git_sha1="fc738f1e6f5d48a302295d11938315da5a8c452e")
    monkeypatch.setitem(assets.ASSETS, relpath, entry)
    monkeypatch.setattr(assets.urllib.request, "urlopen", lambda url, timeout: FakeResponse(good[:-1] + b"x"))
    with pytest.raises(assets.ChecksumError, match="git blob"):
        assets.fetch(relpath, progress=False)
    assert not (isolated / "cache" / relpath).exists()
    monkeypatch.setattr(assets.urllib.request, "urlopen", lambda url, timeout: FakeResponse(good))
    assert assets.fetch(relpath, progress=False) == isolated / "cache" / relpath
    # the real entry refuses that file: it is not Watson-VGG
    monkeypatch.setitem(assets.ASSETS, relpath, assets._entries()[relpath])
    assets._verified.clear()
    with pytest.raises(assets.ChecksumError):
        assets.locate(relpath)
