"""experiments/convergence/run.py: the driver on a tiny problem, its MNIST reader and its statistics."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scripts import load_script

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def conv():
    return load_script("experiments/convergence/run.py", "convergence_run")


def _mnist_file(assets_dir: Path) -> Path:
    path = assets_dir / "data" / "mnist" / "t10k-images-idx3-ubyte.gz"
    if not path.is_file():
        pytest.skip("MNIST test set not in the asset folder")
    return path


def test_idx_reader_matches_the_data_package(conv, assets_dir):
    path = _mnist_file(assets_dir)
    images = conv.read_idx_images(path)
    assert images.shape == (10_000, 28, 28) and images.dtype == torch.uint8
    mnist = pytest.importorskip("percept.data.mnist")
    assert torch.equal(images, mnist.read_idx(path))


def test_idx_reader_rejects_corrupt_files(conv, tmp_path):
    (tmp_path / "bad").write_bytes(b"\x00\x00\x08\x03" + (2).to_bytes(4, "big") * 3 + b"\x00" * 5)
    with pytest.raises(ValueError, match="truncated"):
        conv.read_idx_images(tmp_path / "bad")


def test_load_digits(conv, assets_dir):
    _mnist_file(assets_dir)
    digits, source = conv.load_digits(5, first=3)
    assert digits.shape == (5, 1, 32, 32) and "3-7" in source
    assert float(digits[..., :2, :].abs().max()) == 0.0  # zero padding
    assert 0.0 <= float(digits.min()) and float(digits.max()) <= 1.0


def test_statistics(conv):
    values = np.array([[4.0, 2.0], [2.0, 1.5], [1.0, 1.0]])
    normed = conv.normalise(values, floor=np.array([0.0, 1.0]))
    np.testing.assert_allclose(normed, [[1, 1], [0.5, 0.5], [0.25, 0.0]])
    np.testing.assert_allclose(conv.trailing_mean(np.array([1.0, 3.0, 5.0, 7.0]), 2), [1, 2, 4, 6])
    assert conv.first_reaching(np.array([1.0, 0.6, 0.4, 0.05]), 0.5) == 2
    assert conv.first_reaching(np.array([1.0, 0.6]), 0.1) is None
    recorded = conv.record_iterations(2000, 2)
    assert recorded[0] == 0 and recorded[-1] == 2000 and len(recorded) == 1001 + 25  # + odd iterations < 50


def test_parse_defaults(conv):
    args = conv.parse_args([])
    assert args.iterations == 2000 and args.lr_scale == 50 and args.batch == 50
    assert args.losses == conv.LOSSES
    full = conv.parse_args(["--full", "--losses", "watson-fft,mse"])
    assert full.iterations == 100_000 and full.lr_scale == 1.0 and full.losses == ["watson-dft", "l2"]
    assert conv.PAPER_LR["watson-dft"] == 1e-3 and conv.PAPER_LR["l2"] == 1e-4  # spec §13
    with pytest.raises(SystemExit):
        conv.parse_args(["--losses", "nonsense"])


def test_tiny_run_writes_every_output(conv, assets_dir, tmp_path, capsys):
    _mnist_file(assets_dir)
    code = conv.main(["--losses", "l2,watson-dft", "--iterations", "12",
                      "--batch", "3", "--out", str(tmp_path), "--no-progress", "--record-every", "5"])
    assert code == 0
    for name in ("curves.csv", "summary.csv", "machine.json", "reconstructions.png", "reconstructions.npz"):
        assert (tmp_path / name).is_file(), name
    curves = list(csv.DictReader(open(tmp_path / "curves.csv")))
    l2 = [r for r in curves if r["loss"] == "l2"]
    assert [int(r["iteration"]) for r in l2] == list(range(13))  # the first 50 iterations are all recorded
    assert float(l2[0]["l2_norm_mean"]) == 1.0 and float(l2[0]["metric_norm_mean"]) == 1.0
    assert float(l2[-1]["l2_norm_mean"]) < 1.0  # Adam on L2 lowers L2
    # for the L2 loss the metric and the pixel L2 are the same quantity
    assert float(l2[-1]["metric_norm_mean"]) == pytest.approx(float(l2[-1]["l2_norm_mean"]), rel=1e-5)
    seconds = [float(r["seconds"]) for r in l2]
    assert seconds[0] == 0.0 and all(b >= a for a, b in zip(seconds, seconds[1:]))
    summary = {r["loss"]: r for r in csv.DictReader(open(tmp_path / "summary.csv"))}
    assert set(summary) == {"l2", "watson-dft"}
    assert float(summary["l2"]["lr"]) == pytest.approx(1e-4 * 50)
    assert float(summary["watson-dft"]["lr"]) == pytest.approx(1e-3 * 50)
    info = json.loads((tmp_path / "machine.json").read_text())
    assert info["run"]["iterations"] == 12 and "torch" in info and info["run"]["skipped"] == {}
    recon = np.load(tmp_path / "reconstructions.npz")
    assert set(recon.files) == {"target", "l2", "watson-dft"} and recon["target"].shape == (3, 32, 32)


def test_same_seed_same_numbers(conv, assets_dir, tmp_path):
    _mnist_file(assets_dir)
    rows = []
    for out in ("a", "b"):
        conv.main(["--losses", "watson-dct", "--iterations", "5", "--batch", "2", "--out", str(tmp_path / out),
                   "--no-progress"])
        rows.append([{k: v for k, v in r.items() if k != "seconds"}
                     for r in csv.DictReader(open(tmp_path / out / "curves.csv"))])
    assert rows[0] == rows[1]


def test_unavailable_loss_is_skipped(conv, assets_dir, tmp_path, monkeypatch):
    _mnist_file(assets_dir)
    from percept import registry

    monkeypatch.setitem(registry.METRICS, "future-metric",
                        registry.MetricRecord("future-metric", "percept.metrics.not_landed_yet:Future", "pixel", "not yet"))
    code = conv.main(["--losses", "l2,future-metric", "--lr", "future-metric=1e-3", "--iterations", "3",
                      "--batch", "2", "--out", str(tmp_path), "--no-progress"])
    assert code == 0
    info = json.loads((tmp_path / "machine.json").read_text())
    assert "future-metric" in info["run"]["skipped"]
