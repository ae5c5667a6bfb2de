"""make gpu-kit assembles the folders a lent GPU machine needs, and refuses an incomplete asset folder."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KIT_ASSETS = ("weights/czolbe", "weights/lpips", "weights/torchvision", "weights/elpips", "data/celeba_sample")


def _stub_python(tmp_path) -> Path:
    stub = tmp_path / "python"  # stands for python: records the pip download instead of running it
    stub.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/pip_args\n')
    stub.chmod(0o755)
    return stub


def _run(tmp_path, assets, **env):
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_kit.sh")], capture_output=True, text=True,
                          env={**os.environ, "PERCEPT_ASSETS": str(assets), "KIT_ROOT": str(tmp_path / "repo"),
                               "PYTHON": str(_stub_python(tmp_path)), **env}, timeout=120)


def _fake_assets(root: Path) -> Path:
    for rel in KIT_ASSETS:
        (root / rel).mkdir(parents=True)
        (root / rel / "file.bin").write_bytes(b"x" * 10)
    (root / "data" / "mnist").mkdir(parents=True)  # not needed by the bench: not copied
    return root


def test_kit_copies_what_the_bench_reads_and_the_original_code(tmp_path):
    assets = _fake_assets(tmp_path / "assets")
    original = tmp_path / "orig"
    (original / "src" / "loss").mkdir(parents=True)
    (original / "src" / "loss" / "loss_provider.py").write_text("# the original's entry point\n")
    (tmp_path / "repo").mkdir()
    proc = _run(tmp_path, assets, ORIGINAL_REPO=str(original))
    assert proc.returncode == 0, proc.stderr
    kit = tmp_path / "repo" / ".gpu"
    for rel in KIT_ASSETS:
        assert (kit / "assets" / rel / "file.bin").is_file(), rel
    assert not (kit / "assets" / "data" / "mnist").exists()
    assert (kit / "orig" / "src" / "loss" / "loss_provider.py").is_file()
    pip_args = (tmp_path / "pip_args").read_text().split()
    assert pip_args[:2] == ["-m", "pip"] and "--no-deps" in pip_args
    for wheel in ("lpips==0.1.4", "pytorch-msssim==1.0.0", "torch-dct==0.1.6", "setuptools<81"):
        assert wheel in pip_args
    assert "MiB (a run carries at most 64 MiB)" in proc.stdout


def test_kit_refuses_missing_assets_and_a_wrong_original(tmp_path):
    assets = _fake_assets(tmp_path / "assets")
    (tmp_path / "repo").mkdir()
    wrong = _run(tmp_path, assets, ORIGINAL_REPO=str(tmp_path))
    assert wrong.returncode == 1 and "has no src/loss/loss_provider.py" in wrong.stderr
    (assets / "weights" / "czolbe" / "file.bin").unlink()
    (assets / "weights" / "czolbe").rmdir()
    missing = _run(tmp_path, assets)
    assert missing.returncode == 1 and "weights/czolbe is missing" in missing.stderr


def test_wheels_only_needs_no_assets(tmp_path):
    (tmp_path / "repo").mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PERCEPT_ASSETS"}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_kit.sh"), "wheels"], capture_output=True, text=True,
                          env={**env, "KIT_ROOT": str(tmp_path / "repo"), "PYTHON": str(_stub_python(tmp_path))},
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "lpips==0.1.4" in (tmp_path / "pip_args").read_text().split()
    assert not (tmp_path / "repo" / ".gpu").exists()
