"""Untrusted files and careless use (issue 15): no code execution, no destroyed results, clear errors.

The fault-injection tests (kills, concurrent runs, full disk) are in ``test_faults.py``.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from percept import cli

ROOT = Path(__file__).resolve().parents[1]
pytest_plugins = ["pytester"]


def _save(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "imgs"
    d.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        _save(d / name, rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    return d


def _cli(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------ 1. no code from a weights file
class _Payload:
    """Unpickling this runs ``os.system`` (what a crafted weights file does)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _malicious_npy(path: Path, marker: Path, *, inside_dict: bool) -> Path:
    payload = _Payload(marker)
    if inside_dict:  # the published layout, with one value replaced by the payload
        obj = {"lin0.model.1.weight": np.ones((1, 1, 64, 1), np.float32), "lin1.model.1.weight": payload}
    else:
        obj = payload
    holder = np.empty((), dtype=object)
    holder[()] = obj
    np.save(path, holder, allow_pickle=True)
    return path


@pytest.mark.parametrize("inside_dict", [False, True])
def test_a_crafted_npy_cannot_run_code(tmp_path, inside_dict):
    from percept.assets import UnsafeFileError, read_npy_dict
    from percept.metrics.deep import read_lin_weights

    marker = tmp_path / "pwned"
    bad = _malicious_npy(tmp_path / "lin.npy", marker, inside_dict=inside_dict)
    with pytest.raises(UnsafeFileError, match="lin.npy"):
        read_npy_dict(bad)
    with pytest.raises(UnsafeFileError, match="lin.npy"):
        read_lin_weights(bad, [64, 128])
    assert not marker.exists()


def test_a_crafted_npy_through_the_cli_option_is_refused(tmp_path, folder, capsys):
    marker = tmp_path / "pwned"
    bad = _malicious_npy(tmp_path / "lin.npy", marker, inside_dict=True)
    code, out, err = _cli(capsys, "dist", folder / "a.png", folder / "b.png", "-m", "elpips-squeeze",
                          "-O", "pretrained=false", "-O", f"lin_weights={bad}")  # fmt: skip
    assert code != 0 and out == ""
    assert "lin.npy" in err and "Traceback" not in err
    assert not marker.exists()


def test_other_object_arrays_are_refused(tmp_path):
    from percept.assets import UnsafeFileError, read_npy_dict

    holder = np.empty((), dtype=object)
    holder[()] = {"lin0.model.1.weight": np.array(["a", "b"], dtype=object)}  # an object array inside
    np.save(tmp_path / "o.npy", holder, allow_pickle=True)
    with pytest.raises(UnsafeFileError):
        read_npy_dict(tmp_path / "o.npy")
    np.save(tmp_path / "plain.npy", np.ones(3, np.float32))  # not a dict
    with pytest.raises(UnsafeFileError, match="dict"):
        read_npy_dict(tmp_path / "plain.npy")
    (tmp_path / "empty.npy").write_bytes(b"")
    with pytest.raises(UnsafeFileError, match="empty.npy"):
        read_npy_dict(tmp_path / "empty.npy")


def test_the_published_elpips_files_read_as_numpy_reads_them(assets_dir):
    """The safe parser equals numpy's own (pickle-based) loader on the trusted, sha256-checked files."""
    from percept import assets
    from percept.assets import read_npy_dict

    for rel in ("weights/elpips/squeeze.npy", "weights/elpips/vgg_maxpool.npy"):
        path = assets.locate(rel)  # verified against the recorded sha256 first
        ours = read_npy_dict(path)
        theirs = np.load(path, allow_pickle=True).item()
        assert sorted(ours) == sorted(theirs)
        for key, value in theirs.items():
            assert ours[key].dtype == value.dtype and ours[key].shape == value.shape
            assert np.array_equal(ours[key], value)


def test_numpy_pickles_of_other_protocols_parse(tmp_path):
    from percept.assets import read_npy_dict

    state = {"lin0.model.1.weight": np.arange(6, dtype=np.float32).reshape(1, 1, 6, 1),
             "b": np.arange(4, dtype=">f8"), "c": np.asfortranarray(np.arange(6, dtype=np.int64).reshape(2, 3))}  # fmt: skip
    for protocol in (2, 4, 5):
        holder = np.empty((), dtype=object)
        holder[()] = state
        path = tmp_path / f"p{protocol}.npy"
        with open(path, "wb") as f:  # what np.save writes, with the pickle protocol of other numpy versions
            np.lib.format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": ()})
            pickle.dump(holder, f, protocol=protocol)
        got = read_npy_dict(path)
        for key, value in state.items():
            assert np.array_equal(got[key], value) and got[key].dtype == value.dtype, (protocol, key)


# ------------------------------------------------------------- 2. results are not destroyed early
def test_a_failing_run_leaves_an_existing_csv_untouched(tmp_path, folder, capsys):
    out = tmp_path / "old.csv"
    out.write_text("file0,file1,distance\na.png,b.png,0.5\n")
    (folder / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")  # the third image is corrupt
    code, _, err = _cli(capsys, "pairs", folder, "-m", "l2", "-o", out)
    assert code == 1 and "c.png" in err
    assert out.read_text() == "file0,file1,distance\na.png,b.png,0.5\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_output_may_not_be_an_input_image(folder, capsys):
    before = (folder / "a.png").read_bytes()
    code, _, err = _cli(capsys, "pairs", folder, "-m", "l2", "-o", folder / "a.png")
    assert code == 2 and "input" in err
    assert (folder / "a.png").read_bytes() == before
    code, _, err = _cli(capsys, "dirs", folder, folder, "-m", "l2", "-o", folder / ".." / folder.name / "b.png")
    assert code == 2 and "input" in err


def test_a_successful_run_replaces_the_csv(tmp_path, folder, capsys):
    out = tmp_path / "d.csv"
    out.write_text("stale\n")
    code, _, _ = _cli(capsys, "pairs", folder, "-m", "l2", "-o", out)
    assert code == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "file0,file1,distance" and len(lines) == 4


# --------------------------------------------------------------------------------- 6. resources
def test_a_named_pipe_is_refused_without_blocking(tmp_path, folder):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    # in a child process: the old code blocked forever in open()
    proc = subprocess.run(
        [sys.executable, "-m", "percept", "dist", str(folder / "a.png"), str(fifo), "-m", "l2"],
        capture_output=True, text=True, timeout=60, env=os.environ | {"PYTHONPATH": str(ROOT / "lib")},
    )  # fmt: skip
    assert proc.returncode == 1
    assert "pipe.png" in proc.stderr and "regular file" in proc.stderr and "Traceback" not in proc.stderr


def test_a_huge_png_is_refused_before_decoding(tmp_path, folder, capsys):
    from percept.io import ImageTooLargeError, read_image

    big = tmp_path / "big.png"
    Image.new("L", (12000, 9000)).save(big)  # 108 MP, a few hundred KB on disk
    assert big.stat().st_size < 2_000_000
    with pytest.raises(ImageTooLargeError, match="max-pixels"):
        read_image(big)
    code, out, err = _cli(capsys, "dist", big, big, "-m", "l2")
    assert code == 1 and "big.png" in err and "--max-pixels" in err
    small = folder / "a.png"
    with pytest.raises(ImageTooLargeError):
        read_image(small, max_pixels=100)
    assert read_image(small, max_pixels=256).shape == (1, 3, 16, 16)  # raised limit: read as usual
    code, out, _ = _cli(capsys, "dist", small, folder / "b.png", "-m", "l2", "--max-pixels", "100")
    assert code == 1


# ------------------------------------------------------------------- 7. legacy LossProvider L1/L2
@pytest.mark.parametrize("name,peer", [("L2", torch.nn.MSELoss), ("L1", torch.nn.L1Loss)])
def test_loss_provider_pixel_losses_validate_and_keep_the_numbers(name, peer):
    from percept import LossProvider

    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(4, 3, 8, 8, generator=gen), torch.rand(4, 3, 8, 8, generator=gen)
    for reduction in ("sum", "none"):
        loss = LossProvider().get_loss_function(name, "RGB", reduction=reduction)
        assert torch.equal(loss(x, y), peer(reduction=reduction)(x, y))  # the original's numbers
    loss = LossProvider().get_loss_function(name, "RGB", reduction="sum")
    nan = x.clone()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        loss(nan, y)
    with pytest.raises(ValueError, match=r"\(x \+ 1\) / 2"):
        loss(x * 2 - 1, y)
    with pytest.raises(ValueError, match="shapes differ"):
        loss(x[:1], y)  # the original broadcast (1, ...) against (4, ...)
    legacy = LossProvider().get_loss_function(name, "RGB", reduction="sum", validate=False)
    with pytest.warns(UserWarning, match="broadcasting"):  # torch's own warning: the original's behaviour
        assert torch.equal(legacy(x[:1], y), peer(reduction="sum")(x[:1].expand_as(y), y))
    assert torch.isnan(legacy(nan, y))


# ----------------------------------------------------------------------- 5. deep metrics' dtypes
@pytest.mark.parametrize("name", ["lpips-squeeze", "deeploss-squeeze", "dps-squeeze", "elpips-squeeze"])
def test_deep_metrics_accept_every_float_dtype(name):
    from percept import get_metric

    torch.manual_seed(0)
    options = {"deterministic": True} if name.startswith("elpips") else {}
    metric = get_metric(name, pretrained=False, reduction="none", **options)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.rand(1, 3, 64, 64, generator=gen), torch.rand(1, 3, 64, 64, generator=gen)
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        xd = x.to(dtype).requires_grad_(True)
        d = metric(xd, y.to(dtype))  # before: RuntimeError "Input type (double) and bias type (float)"
        assert d.dtype == torch.float32  # computed in the metric's dtype
        with torch.no_grad():  # the peer: the float32 path on the same (rounded) values
            peer = metric(x.to(dtype).float(), y.to(dtype).float())
        assert torch.allclose(d.detach(), peer, rtol=1e-6, atol=1e-7)
        d.sum().backward()
        assert xd.grad is not None and xd.grad.dtype == dtype and torch.isfinite(xd.grad.float()).all()


# ---------------------------------------------------------------------------- 5. 2AFC data errors
def test_an_empty_judge_file_names_the_file(tmp_path):
    from percept.data import DatasetError
    from percept.data.bapps import load_fraction

    (tmp_path / "000001.npy").write_bytes(b"")
    with pytest.raises(DatasetError, match="000001.npy"):
        load_fraction(tmp_path / "000001.npy")
    holder = np.empty((), dtype=object)
    holder[()] = [0.5]
    np.save(tmp_path / "000002.npy", holder, allow_pickle=True)  # a pickle is not read
    with pytest.raises(DatasetError, match="000002.npy"):
        load_fraction(tmp_path / "000002.npy")


def _run_2afc(*argv):
    return subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "2afc" / "run.py"), *map(str, argv)],
        capture_output=True, text=True, timeout=300, env=os.environ | {"PYTHONPATH": str(ROOT / "lib")},
    )  # fmt: skip


def test_2afc_driver_reports_a_malformed_folder_in_one_line(tmp_path):
    root = tmp_path / "bapps"
    for part in ("ref", "p0", "p1", "judge"):
        (root / "2afc" / "val" / "traditional" / part).mkdir(parents=True)
    for part in ("ref", "p0", "p1"):
        _save(root / "2afc" / "val" / "traditional" / part / "000000.png", np.zeros((64, 64, 3), np.uint8))
    (root / "2afc" / "val" / "traditional" / "judge" / "000000.npy").write_bytes(b"")  # empty judge file
    proc = _run_2afc("--data", root, "--subsets", "traditional", "--jnd-subsets", "--metrics", "l2",
                     "--colorspaces", "rgb", "--out", tmp_path / "out", "--workers", "0", "--no-progress")  # fmt: skip
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "000000.npy" in errors[0]


# --------------------------------------------------------- 10. tests that need downloadable weights
MISSING_WEIGHTS_TEST = """
import pytest
from percept.assets import MissingAssetError, locate

@pytest.fixture
def weights():
    return locate("weights/torchvision/vgg16-397923af.pth")

def test_uses_weights(weights):
    pass

def test_builds_a_metric():
    raise MissingAssetError("missing asset weights/lpips/v0.1/vgg.pth. Looked in: nowhere")

def test_expects_the_error():
    with pytest.raises(MissingAssetError):
        raise MissingAssetError("missing asset x. Looked in: nowhere")
"""


@pytest.mark.parametrize("ci", [False, True])
def test_missing_downloadable_weights_skip_outside_ci_and_fail_in_ci(pytester, monkeypatch, ci):
    pytester.makeconftest((ROOT / "tests" / "conftest.py").read_text())
    pytester.makepyfile(test_weights=MISSING_WEIGHTS_TEST)
    empty = pytester.mkdir("assets")
    monkeypatch.setenv("PERCEPT_ASSETS", str(empty))
    monkeypatch.setenv("PERCEPT_CACHE", str(pytester.mkdir("cache")))
    monkeypatch.setenv("PYTHONPATH", str(ROOT / "lib"))
    if ci:
        monkeypatch.setenv("CI", "1")
    else:
        monkeypatch.delenv("CI", raising=False)
    result = pytester.runpytest_subprocess("-rs", "-p", "no:cacheprovider")
    if ci:
        result.assert_outcomes(failed=1, errors=1, passed=1)
    else:
        result.assert_outcomes(skipped=2, passed=1)
        for relpath in ("weights/lpips/v0.1/vgg.pth", "weights/torchvision/vgg16-397923af.pth"):
            result.stdout.fnmatch_lines([f"SKIPPED*needs downloadable weights not on this machine ({relpath})*"])
