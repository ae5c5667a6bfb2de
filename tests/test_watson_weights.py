"""``experiments/watson_weights/run.py``: Czolbe et al.'s ``inspect_weights`` tables of the Watson parameters.

Compared with the spec's Appendix A (the HEAD weight files decoded without torch, czolbe.md: alpha, w, beta,
channel weights, t and the phase weights), its parameter counts (§17.4) and the initial values (§3, §4).
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest
from scripts import load_script

ROOT = Path(__file__).resolve().parents[1]


def _driver():
    return load_script("experiments/watson_weights/run.py", "watson_weights_run")


@pytest.fixture(scope="module")
def tables(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("watson_weights")
    assert _driver().main(["--out", str(out)]) == 0
    return out


def _rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def _scalar(tables, source, metric, colorspace, channel) -> dict:
    (row,) = [r for r in _rows(tables / "scalars.csv") if (r["source"], r["metric"], r["colorspace"], r["channel"])
              == (source, metric, colorspace, channel)]
    return row


def _cell(tables, source, metric, colorspace, channel, parameter, u, v) -> float:
    for r in _rows(tables / "matrices.csv"):
        if (r["source"], r["metric"], r["colorspace"], r["channel"], r["parameter"], r["u"], r["v"]) == (
                source, metric, colorspace, channel, parameter, str(u), str(v)):
            return float(r["value"])
    raise KeyError((source, metric, colorspace, channel, parameter, u, v))


def test_parameter_counts_are_the_papers(tables):
    counts = {(r["metric"], r["colorspace"]): (int(r["stored"]), int(r["learnable"]))
              for r in _rows(tables / "counts.csv")}
    # czolbe.md §17.4 / inspect_weights: stored 132 / 84 / 411 / 267; learnable 67 / 83 / 204 / 252
    assert counts == {("watson-dct", "grey"): (132, 67), ("watson-dft", "grey"): (84, 83),
                      ("watson-dct", "rgb"): (411, 204), ("watson-dft", "rgb"): (267, 252)}


# alpha, w, beta, channel weight of the HEAD weight files (czolbe.md §9 and Appendix A)
APPENDIX_A = [
    ("watson-dct", "grey", "grey", 0.2314, 0.4303, 0.9651, 1.0),
    ("watson-dft", "grey", "grey", -0.1352, 0.2057, 0.6145, 1.0),
    ("watson-dct", "rgb", "Y", 0.7861, 0.5174, 2.0984, 0.174),
    ("watson-dct", "rgb", "Cb", 0.0350, 0.5506, 2.1605, 0.384),
    ("watson-dct", "rgb", "Cr", 0.9505, 0.4863, 2.2910, 0.442),
    ("watson-dft", "rgb", "Y", 0.1710, 0.2626, 0.6120, 0.351),
    ("watson-dft", "rgb", "Cb", -0.8673, 0.0461, 0.5922, 0.301),
    ("watson-dft", "rgb", "Cr", 1.5135, 0.0468, 0.5863, 0.348),
]


@pytest.mark.parametrize("metric, cs, channel, alpha, w, beta, weight", APPENDIX_A)
def test_scalars_equal_appendix_a(tables, metric, cs, channel, alpha, w, beta, weight):
    row = _scalar(tables, "trained", metric, cs, channel)
    assert float(row["alpha"]) == pytest.approx(alpha, abs=6e-5)
    assert float(row["w"]) == pytest.approx(w, abs=6e-5)
    assert float(row["beta"]) == pytest.approx(beta, abs=6e-5)
    assert float(row["channel_weight"]) == pytest.approx(weight, abs=6e-4)


@pytest.mark.parametrize(
    "metric, cs, channel, parameter, u, v, value",
    [
        ("watson-dct", "grey", "grey", "t", 0, 0, 0.629),
        ("watson-dct", "grey", "grey", "t", 2, 2, 9.687),
        ("watson-dct", "grey", "grey", "t", 7, 0, 0.239),
        ("watson-dct", "rgb", "Y", "t", 7, 7, 16.163),
        ("watson-dct", "rgb", "Cr", "t", 7, 7, 27.909),
        ("watson-dft", "grey", "grey", "t", 3, 0, 92.041),
        ("watson-dft", "grey", "grey", "t", 0, 3, 68.774),
        ("watson-dft", "grey", "grey", "t", 4, 4, 0.035),
        ("watson-dft", "rgb", "Cb", "t", 0, 0, 0.063),
        ("watson-dft", "grey", "grey", "w_phase", 3, 4, 0.0109),
        ("watson-dft", "rgb", "Cb", "w_phase", 3, 4, 0.0602),
        ("watson-dft", "rgb", "Y", "w_phase", 0, 1, 0.0023),
    ],
)
def test_matrices_equal_appendix_a(tables, metric, cs, channel, parameter, u, v, value):
    places = 0.5e-3 if parameter == "t" else 0.5e-4
    assert _cell(tables, "trained", metric, cs, channel, parameter, u, v) == pytest.approx(value, abs=places)


def test_phase_weights_of_real_coefficients_are_zero_and_their_stored_values_kept(tables):
    for u, v in ((0, 0), (0, 4), (4, 0), (4, 4)):
        assert _cell(tables, "trained", "watson-dft", "grey", "grey", "w_phase", u, v) == 0.0
        assert _cell(tables, "trained", "watson-dft", "rgb", "Cr", "w_phase", u, v) == 0.0
    row = _scalar(tables, "trained", "watson-dft", "grey", "grey")
    stored = [float(row[f"w_phase_stored_{k}"]) for k in ("00", "04", "40", "44")]
    assert stored == pytest.approx([1.232, 0.087, 0.161, 0.065], abs=6e-4)  # Appendix A


def test_initial_values(tables):
    first_row = [_cell(tables, "initial", "watson-dct", "grey", "grey", "t", 0, v) for v in range(8)]
    assert first_row == pytest.approx([1.40, 1.01, 1.16, 1.66, 2.40, 3.43, 4.79, 6.56], abs=1e-5)
    assert _cell(tables, "initial", "watson-dct", "rgb", "Cb", "t", 7, 7) == pytest.approx(21.15, abs=1e-5)
    dct = _scalar(tables, "initial", "watson-dct", "rgb", "Y")
    assert (float(dct["alpha"]), float(dct["w"]), float(dct["beta"])) == pytest.approx((0.649, 0.7, 4.0))
    assert float(dct["channel_weight"]) == pytest.approx(1 / 3)
    dft = _scalar(tables, "initial", "watson-dft", "grey", "grey")
    assert (float(dft["alpha"]), float(dft["w"]), float(dft["beta"])) == pytest.approx((0.1, 0.2, 1.0))
    assert _cell(tables, "initial", "watson-dft", "grey", "grey", "t", 5, 3) == pytest.approx(1.0)
    assert _cell(tables, "initial", "watson-dft", "grey", "grey", "w_phase", 2, 1) == pytest.approx(math.exp(-2))
    assert _cell(tables, "initial", "watson-dft", "grey", "grey", "w_phase", 4, 4) == 0.0


def test_tuned_weights_folder(tables, tmp_path, assets_dir, capsys):
    weights = tmp_path / "weights"
    weights.mkdir()
    for name in ("gray_watson_fft_trial0.pth", "rgb_watson_fft_trial0.pth"):
        shutil.copy(assets_dir / "weights" / "czolbe" / name, weights / name)
    out = tmp_path / "out"
    assert _driver().main(["--weights", str(weights), "--out", str(out), "--metrics", "watson-dft"]) == 0
    got = [r for r in _rows(out / "matrices.csv")]
    want = [r for r in _rows(tables / "matrices.csv") if r["metric"] == "watson-dft"]
    assert got == want
    info = json.loads((out / "run.json").read_text())
    assert info["weights"]["watson-dft/rgb"].endswith("weights/rgb_watson_fft_trial0.pth")
    capsys.readouterr()
    assert _driver().main(["--weights", str(weights), "--out", str(out)]) == 1  # no DCT files there
    assert "gray_watson_dct_trial0.pth" in capsys.readouterr().err
