"""data/download_bapps.py on a locally built archive: resume, checksum, extraction, layout check."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from fakes import FakeResponse
from scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
bapps = load_script("data/download_bapps.py", "download_bapps")


def _jnd_archive(tmp_path: Path, complete: bool = True) -> bytes:
    src = tmp_path / "src" / "jnd" / "val"
    for subset in ("traditional", "cnn"):
        for part in ("p0", "p1", "same"):
            (src / subset / part).mkdir(parents=True)
            for i in range(3 if complete or part != "same" else 2):
                name = f"{i:06d}.npy" if part == "same" else f"{i:06d}.png"
                if part == "same":
                    np.save(src / subset / part / name, np.array([0.5]))
                else:
                    (src / subset / part / name).write_bytes(b"png")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(src.parent, arcname="jnd")
    return buffer.getvalue()



def _serve(monkeypatch, payload: bytes, log: list):
    def urlopen(request, timeout):
        rng = request.headers.get("Range")
        log.append(rng)
        if rng:
            start = int(rng.split("=")[1].rstrip("-"))
            return FakeResponse(payload[start:], 206)
        return FakeResponse(payload)

    monkeypatch.setattr(bapps.urllib.request, "urlopen", urlopen)


def test_resumes_extracts_and_verifies(tmp_path, monkeypatch):
    payload = _jnd_archive(tmp_path)
    root = tmp_path / "bapps"
    root.mkdir()
    (root / "jnd.tar.gz.partial").write_bytes(payload[:100])  # an interrupted earlier download
    log = []
    _serve(monkeypatch, payload, log)
    name, _, folder, subsets = bapps.ARCHIVES["jnd"]
    monkeypatch.setitem(bapps.ARCHIVES, "jnd", (name, hashlib.sha256(payload).hexdigest(), folder, subsets))
    bapps.main(["--root", str(root), "--parts", "jnd"])
    assert log == ["bytes=100-"]
    assert sorted(p.name for p in (root / "jnd" / "val" / "cnn" / "same").iterdir()) == [
        "000000.npy", "000001.npy", "000002.npy"]
    assert not (root / "jnd.tar.gz").exists()
    bapps.main(["--root", str(root), "--parts", "jnd"])  # second run: nothing to do
    assert len(log) == 1


def test_checksum_mismatch_is_refused(tmp_path, monkeypatch):
    payload = _jnd_archive(tmp_path)
    _serve(monkeypatch, payload, [])
    name, _, folder, subsets = bapps.ARCHIVES["jnd"]
    monkeypatch.setitem(bapps.ARCHIVES, "jnd", (name, "0" * 64, folder, subsets))
    with pytest.raises(SystemExit, match="sha256"):
        bapps.main(["--root", str(tmp_path / "bapps"), "--parts", "jnd"])
    assert (tmp_path / "bapps" / "jnd.tar.gz.corrupt").exists()


def test_incomplete_archive_is_reported(tmp_path, monkeypatch):
    payload = _jnd_archive(tmp_path, complete=False)
    _serve(monkeypatch, payload, [])
    digest = hashlib.sha256(payload).hexdigest()
    with pytest.raises(SystemExit, match="unequal file counts"):
        bapps.main(["--root", str(tmp_path / "bapps"), "--parts", "jnd", "--sha256", f"jnd={digest}"])


def test_an_archive_without_a_recorded_checksum_is_not_extracted(tmp_path, monkeypatch):
    """Issue 15: the JND archive used to be extracted unchecked. Until its sha256 is recorded from a trusted
    download, extraction needs a digest on the command line or an explicit --allow-unverified."""
    payload = _jnd_archive(tmp_path)
    _serve(monkeypatch, payload, [])
    name, _, folder, subsets = bapps.ARCHIVES["jnd"]
    monkeypatch.setitem(bapps.ARCHIVES, "jnd", (name, None, folder, subsets))
    root = tmp_path / "bapps"
    digest = hashlib.sha256(payload).hexdigest()
    with pytest.raises(SystemExit, match=f"no sha256 is recorded.*{digest}"):
        bapps.main(["--root", str(root), "--parts", "jnd"])
    assert not (root / "jnd").exists()
    with pytest.raises(SystemExit, match="sha256"):  # a wrong trusted digest: refused, archive moved aside
        bapps.main(["--root", str(root), "--parts", "jnd", "--keep-archives", "--sha256", "jnd=" + "0" * 64])
    assert not (root / "jnd").exists()
    bapps.main(["--root", str(root), "--parts", "jnd", "--sha256", f"jnd={digest}"])
    assert (root / "jnd" / "val" / "cnn" / "same").is_dir()


def test_the_jnd_checksum_constant_is_a_sha256_when_recorded():
    digest = bapps.JND_SHA256
    assert bapps.ARCHIVES["jnd"][1] == digest
    if digest is not None:
        assert len(digest) == 64 and int(digest, 16) >= 0
