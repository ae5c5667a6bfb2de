"""``percept pairs``: the all-pairs and consecutive modes and ``-N`` of LPIPS's ``lpips_1dir_allpairs.py``.

Pairs are checked against lists written out by hand and distances against values computed here: L2 with
numpy, SSIM with ``percept.get_metric`` on images read with PIL (not through the command's reader).
"""

from __future__ import annotations

import csv
import io
import itertools

import numpy as np
import pytest
import torch
from PIL import Image

import percept
from percept import cli

#: written in this (unsorted) order, so that directory order and name order are likely to differ
NAMES = ["e.png", "b.png", "d.png", "a.png", "c.png"]
SORTED = sorted(NAMES)


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(16)
    d = tmp_path / "imgs"
    d.mkdir()
    for name in NAMES:
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / name)
    (d / "notes.txt").write_text("not an image")
    return d


def _pairs(capsys, folder, *extra, metric="l2"):
    code = cli.main(["pairs", str(folder), "-m", metric, *map(str, extra)])
    out, err = capsys.readouterr()
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    return [(r["file0"], r["file1"]) for r in rows], [float(r["distance"]) for r in rows]


def _array(path):
    return np.asarray(Image.open(path), dtype=np.float64) / 255


def _mse(a, b):
    return float(((_array(a) - _array(b)) ** 2).mean())


def test_default_is_all_pairs_in_name_order(capsys, folder):
    pairs, dists = _pairs(capsys, folder)
    assert pairs == list(itertools.combinations(SORTED, 2))  # 10 = 5*4/2, file0 < file1
    assert _pairs(capsys, folder, "--all-pairs") == (pairs, dists)
    for (a, b), d in zip(pairs, dists):
        assert d == pytest.approx(_mse(folder / a, folder / b), rel=1e-5)


def test_consecutive_pairs(capsys, folder):
    pairs, dists = _pairs(capsys, folder, "--consecutive")
    assert pairs == [("a.png", "b.png"), ("b.png", "c.png"), ("c.png", "d.png"), ("d.png", "e.png")]
    for (a, b), d in zip(pairs, dists):
        assert d == pytest.approx(_mse(folder / a, folder / b), rel=1e-5)


def test_first_n_limits_both_modes(capsys, folder):
    pairs, _ = _pairs(capsys, folder, "-N", 3)
    assert pairs == [("a.png", "b.png"), ("a.png", "c.png"), ("b.png", "c.png")]
    pairs, _ = _pairs(capsys, folder, "--consecutive", "-N", 3)
    assert pairs == [("a.png", "b.png"), ("b.png", "c.png")]
    pairs, _ = _pairs(capsys, folder, "--consecutive", "--first", 2)
    assert pairs == [("a.png", "b.png")]
    # more than there are: all of them, as the original's files[:N]
    assert _pairs(capsys, folder, "--consecutive", "-N", 99)[0] == list(zip(SORTED, SORTED[1:]))


def test_distances_equal_get_metric(capsys, folder):
    pairs, dists = _pairs(capsys, folder, "--consecutive", "-N", 4, "--batch-size", 2, metric="ssim")
    assert len(pairs) == 3
    metric = percept.get_metric("ssim", reduction="none")

    def tensor(name):
        return torch.from_numpy(_array(folder / name)).float().permute(2, 0, 1)[None]

    # file0 is the reference (the metric's target)
    expected = [float(metric(tensor(b), tensor(a))) for a, b in pairs]
    assert dists == pytest.approx(expected, rel=1e-5)
    assert len(set(np.round(dists, 6))) == 3  # the pairs really differ, so a wrong pair would show


@pytest.mark.parametrize("n", ["1", "0", "-3"])
def test_bad_n_is_a_one_line_usage_error(capsys, folder, n):
    code = cli.main(["pairs", str(folder), "-m", "l2", "-N", n])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "-N" in err and "at least 2" in err


def test_modes_are_exclusive(capsys, folder):
    with pytest.raises(SystemExit) as exc:
        cli.main(["pairs", str(folder), "--consecutive", "--all-pairs"])
    assert exc.value.code == 2
    capsys.readouterr()
