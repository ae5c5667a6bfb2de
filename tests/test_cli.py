"""The ``percept`` command line: outputs, CSV files, error messages and exit codes.

Distances are checked against values computed here with numpy (L2 = mean squared error), not against
the command's own code path.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from percept import cli, registry


def _save(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


def _mse(a: Path, b: Path) -> float:
    x = np.asarray(Image.open(a), dtype=np.float64) / 255
    y = np.asarray(Image.open(b), dtype=np.float64) / 255
    return float(((x - y) ** 2).mean())


def _tensor(path: Path):
    import torch

    array = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    near = np.clip(base.astype(int) + rng.integers(-10, 11, base.shape), 0, 255).astype(np.uint8)
    far = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    return {
        "ref": _save(tmp_path / "ref.png", base),
        "near": _save(tmp_path / "near.png", near),
        "far": _save(tmp_path / "far.png", far),
        "big": _save(tmp_path / "big.png", rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)),
        "odd": _save(tmp_path / "odd.png", rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)),
        "grey": _save(tmp_path / "grey.png", base[..., 0]),
    }


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_dist_prints_the_distance(capsys, images):
    code, out, err = run(capsys, "dist", images["ref"], images["near"], "--metric", "l2")
    assert code == 0 and err == ""
    assert float(out) == pytest.approx(_mse(images["ref"], images["near"]), rel=1e-5)
    code, out, _ = run(capsys, "dist", images["ref"], images["far"], "-m", "mse")  # an alias
    assert code == 0 and float(out) == pytest.approx(_mse(images["ref"], images["far"]), rel=1e-5)


def test_dist_watson_default_metric_and_grey(capsys, images):
    code, out, _ = run(capsys, "dist", images["ref"], images["near"])  # watson-dft
    assert code == 0 and float(out) > 0
    code, out, _ = run(capsys, "dist", images["ref"], images["ref"])
    assert code == 0 and float(out) == pytest.approx(0.0, abs=1e-3)
    code, out, _ = run(capsys, "dist", images["grey"], images["ref"], "-m", "l2", "--colorspace", "rgb")
    assert code == 0
    g = np.asarray(Image.open(images["grey"]), dtype=np.float64)[..., None] / 255
    r = np.asarray(Image.open(images["ref"]), dtype=np.float64) / 255
    assert float(out) == pytest.approx(((g - r) ** 2).mean(), rel=1e-5)
    code, out, _ = run(capsys, "dist", images["ref"], images["near"], "-m", "ssim", "-c", "grey")
    assert code == 0 and 0 < float(out) < 1


def test_size_mismatch_needs_resize(capsys, images):
    code, out, err = run(capsys, "dist", images["ref"], images["big"], "-m", "l2")
    assert code == 1 and out == ""
    assert "ref.png is 16x16" in err and "big.png is 24x20" in err and "--resize" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    code, out, _ = run(capsys, "dist", images["ref"], images["big"], "-m", "l2", "--resize", "16x16")
    assert code == 0 and float(out) > 0


def test_watson_needs_multiples_of_eight(capsys, images):
    code, _, err = run(capsys, "dist", images["odd"], images["odd"], "-m", "watson-dft")
    assert code == 1 and "multiples of 8" in err and "odd.png" in err and "--resize" in err
    code, _, _ = run(capsys, "dist", images["odd"], images["odd"], "-m", "watson-dft", "--resize", "16")
    assert code == 0


def test_unreadable_files(capsys, images, tmp_path):
    code, _, err = run(capsys, "dist", images["ref"], tmp_path / "missing.png")
    assert code == 1 and "missing.png: no such file" in err
    (tmp_path / "broken.png").write_bytes(images["ref"].read_bytes()[:60])
    code, _, err = run(capsys, "dist", images["ref"], tmp_path / "broken.png", "-m", "l2")
    assert code == 1 and "broken.png" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(Exception, match="broken.png"):  # --debug: the exception itself
        cli.main(["dist", str(images["ref"]), str(tmp_path / "broken.png"), "--debug"])


def test_usage_errors_exit_2(capsys, images):
    code, _, err = run(capsys, "dist", images["ref"], images["near"], "-m", "no-such-metric")
    assert code == 2 and "unknown metric" in err and "watson-dft" in err
    code, _, err = run(capsys, "dist", images["ref"], images["near"], "-m", "l2", "-O", "bogus=1")
    assert code == 2 and "bogus" in err
    code, _, err = run(capsys, "dist", images["ref"], images["near"], "-m", "ssim", "-O", "trainable=true")
    assert code == 2 and "trainable" in err and "no trainable parameters" in err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["dist", str(images["ref"]), str(images["near"]), "--resize", "big"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        cli.main([])
    assert exit_info.value.code == 2
    capsys.readouterr()


def test_device_option(capsys, images, monkeypatch):
    code, out, err = run(capsys, "dist", images["ref"], images["near"], "-m", "l2", "--device", "cpu")
    assert code == 0 and float(out) == pytest.approx(_mse(images["ref"], images["near"]), rel=1e-5)
    code, out, err = run(capsys, "dist", images["ref"], images["near"], "-m", "l2", "--device", "tpu")
    assert code == 2 and out == "" and "bad --device 'tpu'" in err and "Traceback" not in err
    # a device this machine lacks is a runtime error (status 1), one line
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, out, err = run(capsys, "dist", images["ref"], images["near"], "-m", "l2", "--device", "cuda")
    assert code == 1 and out == "" and "CUDA is not available" in err and err.count("\n") == 1
    # auto: CUDA, else the CPU; the commands never pick MPS by themselves
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert cli.common._device("auto") == torch.device("cpu")


def test_metric_not_available(capsys, images, monkeypatch):
    monkeypatch.setitem(registry.METRICS, "future-metric",
                        registry.MetricRecord("future-metric", "percept.metrics.not_landed_yet:Future", "pixel",
                                              "a metric still being written"))
    code, _, err = run(capsys, "dist", images["ref"], images["near"], "-m", "future-metric")
    assert code == 1 and "not available in this installation" in err and "future-metric" in err


def test_dirs_csv(capsys, images, tmp_path):
    d0, d1 = tmp_path / "d0", tmp_path / "d1"
    d0.mkdir()
    d1.mkdir()
    for name, key0, key1 in (("a.png", "ref", "near"), ("b.png", "ref", "far")):
        (d0 / name).write_bytes(images[key0].read_bytes())
        (d1 / name).write_bytes(images[key1].read_bytes())
    (d0 / "only0.png").write_bytes(images["ref"].read_bytes())
    (d1 / "only1.png").write_bytes(images["ref"].read_bytes())
    (d1 / "README.txt").write_text("not an image")
    code, out, err = run(capsys, "dirs", d0, d1, "-m", "l2", "--batch-size", "1")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["file"] for r in rows] == ["a.png", "b.png"]
    assert float(rows[0]["distance"]) == pytest.approx(_mse(images["ref"], images["near"]), rel=1e-5)
    assert float(rows[1]["distance"]) == pytest.approx(_mse(images["ref"], images["far"]), rel=1e-5)
    assert "only0.png" in err and "only1.png" in err and "README" not in err
    # batched: same numbers, written to a file
    code, _, err = run(capsys, "dirs", d0, d1, "-m", "l2", "-o", tmp_path / "out" / "d.csv")
    assert code == 0 and "wrote 2" in err
    batched = list(csv.DictReader(open(tmp_path / "out" / "d.csv")))
    assert [float(r["distance"]) for r in batched] == pytest.approx([float(r["distance"]) for r in rows], rel=1e-6)


def test_dirs_corrupt_file(capsys, images, tmp_path):
    d0, d1 = tmp_path / "d0", tmp_path / "d1"
    d0.mkdir()
    d1.mkdir()
    for name in ("a.png", "b.png"):
        (d0 / name).write_bytes(images["ref"].read_bytes())
        (d1 / name).write_bytes(images["near"].read_bytes())
    (d1 / "a.png").write_bytes(b"garbage")
    code, _, err = run(capsys, "dirs", d0, d1, "-m", "l2")
    assert code == 1 and "a.png" in err
    code, out, err = run(capsys, "dirs", d0, d1, "-m", "l2", "--skip-errors")
    assert code == 1 and "skipped" in err
    assert [r["file"] for r in csv.DictReader(io.StringIO(out))] == ["b.png"]
    code, _, err = run(capsys, "dirs", d0, tmp_path / "nowhere", "-m", "l2")
    assert code == 1 and "nowhere" in err


def test_pairs_csv(capsys, images, tmp_path):
    folder = tmp_path / "set"
    folder.mkdir()
    for key in ("ref", "near", "far"):
        (folder / f"{key}.png").write_bytes(images[key].read_bytes())
    code, out, _ = run(capsys, "pairs", folder, "-m", "l2")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 3
    assert {(r["file0"], r["file1"]) for r in rows} == {("far.png", "near.png"), ("far.png", "ref.png"),
                                                      ("near.png", "ref.png")}
    for r in rows:
        expected = _mse(folder / r["file0"], folder / r["file1"])
        assert float(r["distance"]) == pytest.approx(expected, rel=1e-5)
    (folder / "big.png").write_bytes(images["big"].read_bytes())
    code, _, err = run(capsys, "pairs", folder, "-m", "l2")
    assert code == 1 and "big.png" in err and "--resize" in err


def test_compare(capsys, images):
    code, out, _ = run(capsys, "compare", images["ref"], images["far"], images["near"], "-m", "l2")
    assert code == 0
    assert "B is closer" in out
    assert f"{_mse(images['ref'], images['far']):.4f}"[:5] in out
    code, out, _ = run(capsys, "compare", images["ref"], images["near"], images["far"], "-m", "psnr")
    assert code == 0 and "A is closer" in out and "higher means closer" in out


def test_compare_stochastic_has_error_bar(capsys, images):
    argv = ["compare", images["ref"], images["near"], images["far"], "-m", "watson-dft", "-O", "deterministic=false",
            "--samples", "4"]
    code, out, _ = run(capsys, *argv)
    assert code == 0 and "±" in out and "4 shared samples" in out and "A is closer" in out
    code, again, _ = run(capsys, *argv)
    assert again == out  # seeded


def test_compare_stochastic_without_shared_draws_uses_shared_seeds(capsys, images, monkeypatch):
    """A stochastic metric without E-LPIPS's sample_distances is compared under shared seeds: sample k
    evaluates both images after seeding with --seed + k, as an independent loop does here."""
    import torch

    from percept.metrics.watson import WatsonDFT

    monkeypatch.setitem(registry.METRICS, "elpips-test",
                        registry.MetricRecord("elpips-test", "percept.metrics.watson:WatsonDFT", "elpips", "stand-in",
                                              fixed={"deterministic": False}, stochastic=True))
    code, out, err = run(capsys, "compare", images["ref"], images["near"], images["far"], "-m", "elpips-test",
                         "--samples", "3", "--seed", "5")
    assert code == 0 and "3 shared samples" in out and err == ""
    metric = WatsonDFT(deterministic=False, reduction="none").eval()
    ref, near, far = (_tensor(images[k]) for k in ("ref", "near", "far"))
    diffs = []
    for k in range(3):
        pair = []
        for img in (near, far):
            metric.generator = torch.Generator().manual_seed(5 + k)
            with torch.no_grad():
                pair.append(float(metric(img, ref)))
        diffs.append(pair[0] - pair[1])
    shown = float(re.search(r"d\(REF, A\) - d\(REF, B\) = (\S+) ±", out)[1])
    assert shown == pytest.approx(sum(diffs) / 3, rel=1e-6)


def test_list(capsys):
    code, out, _ = run(capsys, "list")
    assert code == 0
    for name in registry.METRICS:
        assert name in out
    assert "watson-fft = watson-dft" in out


def test_list_check(capsys, monkeypatch):
    monkeypatch.setattr(registry, "METRICS", {k: registry.METRICS[k] for k in ("l2", "watson-dft")} | {
        "future-metric": registry.MetricRecord("future-metric", "percept.metrics.not_landed_yet:Future", "pixel", "not yet")})
    code, out, _ = run(capsys, "list", "--check")
    assert code == 0
    assert out.count("-> ok") == 2 and "UNAVAILABLE" in out


def test_bench_is_not_a_command_and_says_where_it_went(capsys):
    """The benchmark harness lives in the checkout (benchmarks/), not in the installed package."""
    assert importlib.util.find_spec("percept.bench") is None
    assert cli.main(["bench", "--quick"]) == 2
    err = capsys.readouterr().err
    assert "make bench" in err and "benchmarks/bench.py" in err
    commands = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert "bench" not in commands.choices and "dist" in commands.choices


def test_python_dash_m_and_console_script(images):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "percept", "dist", str(images["ref"]), str(images["near"]),
                             "-m", "l2"], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout) == pytest.approx(_mse(images["ref"], images["near"]), rel=1e-5)
    result = subprocess.run([sys.executable, "-m", "percept", "dist", str(images["ref"])], capture_output=True,
                            text=True, env=env, timeout=120)
    assert result.returncode == 2 and "usage" in result.stderr
    script = Path(sys.executable).with_name("percept")
    if script.is_file():  # installed by `pip install -e .`
        result = subprocess.run([str(script), "--version"], capture_output=True, text=True, env=env, timeout=120)
        assert result.returncode == 0 and "percept" in result.stdout
