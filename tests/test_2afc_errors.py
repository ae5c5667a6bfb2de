"""``experiments/2afc_errors/run.py``: the 2AFC triplets where a metric contradicts the human majority.

The selection and the counts are compared with plain Python loops written here from the definition; the
driver's outputs (on a SYNTHETIC BAPPS-layout folder) are checked against each other, against the metric
recomputed here on the saved patches, and against the patch files.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scripts import load_script

from percept.data import bapps

ROOT = Path(__file__).resolve().parents[1]


def _driver():
    return load_script("experiments/2afc_errors/run.py", "afc_errors_run")


def _plain_cases(d0, d1, h, k):
    found = []
    for i in range(len(h)):
        if h[i] == 0.5 or d0[i] == d1[i]:
            continue
        humans_p1 = h[i] > 0.5
        metric_p1 = d1[i] < d0[i]
        if humans_p1 != metric_p1:
            margin = abs(d0[i] - d1[i]) / (d0[i] + d1[i]) if d0[i] + d1[i] > 0 else 0.0
            found.append((-abs(h[i] - 0.5), -margin, i))
    return [i for *_, i in sorted(found)[:k]]


def test_error_cases_selection_equals_the_definition():
    driver = _driver()
    rng = np.random.default_rng(0)
    for trial in range(20):
        n = 200
        h = rng.choice([0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0], n)
        d0 = rng.choice([0.1, 0.2, 0.3, 0.5], n) if trial % 2 else rng.random(n)
        d1 = rng.choice([0.1, 0.2, 0.3, 0.5], n) if trial % 2 else rng.random(n)
        d1[:10] = d0[:10]  # ties are not errors
        for k in (1, 7, 500):
            assert driver.error_cases(d0, d1, h, k) == _plain_cases(d0, d1, h, k)


def test_summary_counts():
    driver = _driver()
    h = np.array([0.0, 0.2, 0.5, 0.8, 1.0, 0.6, 0.4])
    d0 = np.array([0.1, 0.5, 0.3, 0.2, 0.7, 0.4, 0.3])
    d1 = np.array([0.2, 0.1, 0.1, 0.9, 0.3, 0.4, 0.2])
    row = driver.summary_row("m", "rgb", "cnn", d0, d1, h)
    # majority: all but index 2; contradicted: 1 (humans p0, metric p1), 3 (humans p1, metric p0), 6; 5 is a tie
    assert (row["majority"], row["contradicts"]) == (6, 3)
    assert row["contradict_rate"] == pytest.approx(0.5)
    scores = [(1 - hh) if a < b else (hh if b < a else 0.5) for a, b, hh in zip(d0, d1, h)]
    assert row["score"] == pytest.approx(np.mean(scores))


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("errors")
    code = _driver().main(["--quick", "--metrics", "l2", "watson-dft", "--subsets", "traditional", "cnn",
                           "--cases", "3", "--out", str(out), "--no-progress"])
    assert code == 0
    return out


def _rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_driver_outputs_are_consistent(quick_run):
    info = json.loads((quick_run / "run.json").read_text())
    assert info["synthetic"] is True and (quick_run / bapps.SYNTHETIC_MARKER).is_file()
    assert sorted(info["metrics"]) == ["l2/rgb", "watson-dft/rgb"]
    cases = _rows(quick_run / "cases.csv")
    summary = _rows(quick_run / "summary.csv")
    assert {(r["metric"], r["subset"]) for r in summary} == {(m, s) for m in ("l2", "watson-dft")
                                                             for s in ("traditional", "cnn")}
    dist = np.load(quick_run / "distances.npz")
    patches = np.load(quick_run / "cases.npz")
    root = Path(info["data"])
    by_group = {}
    for c in cases:
        key = f"{c['metric']}|{c['colorspace']}|{c['subset']}"
        i, j = int(c["index"]), int(c["patch"])
        d0, d1, h = dist[key + "|d0"][i], dist[key + "|d1"][i], dist[f"judge|{c['subset']}"][i]
        assert float(c["d0"]) == pytest.approx(d0) and float(c["d1"]) == pytest.approx(d1)
        assert c["human_choice"] == ("p1" if h > 0.5 else "p0") != c["metric_choice"] == ("p0" if d0 < d1 else "p1")
        data = bapps.TwoAFCDataset(root, "val", c["subset"])
        for part in ("ref", "p0", "p1"):
            want = bapps.load_patch(data.files[part][i])
            got = torch.from_numpy(patches[part][j]).permute(2, 0, 1).float() / 255
            assert (got - want).abs().max() <= 0.5 / 255 + 1e-6
        by_group.setdefault(key, []).append(i)
    for key, indices in by_group.items():
        subset = key.split("|")[2]
        want = _plain_cases(dist[key + "|d0"], dist[key + "|d1"], dist[f"judge|{subset}"], 3)
        assert indices == want
    for r in summary:
        assert int(r["triplets"]) == 24 and 0 <= float(r["score"]) <= 1


def test_l2_distances_recomputed_on_the_patches(quick_run):
    """The saved d0, d1 of l2 equal the mean squared error of the saved patches (up to 8-bit rounding)."""
    cases = [c for c in _rows(quick_run / "cases.csv") if c["metric"] == "l2"]
    patches = np.load(quick_run / "cases.npz")
    assert cases
    for c in cases:
        j = int(c["patch"])
        ref, p0, p1 = (patches[p][j].astype(np.float64) / 255 for p in ("ref", "p0", "p1"))
        assert float(c["d0"]) == pytest.approx(np.mean((p0 - ref) ** 2), rel=0.02, abs=2e-4)
        assert float(c["d1"]) == pytest.approx(np.mean((p1 - ref) ** 2), rel=0.02, abs=2e-4)


def test_driver_without_data_says_how_to_get_it(tmp_path, capsys):
    code = _driver().main(["--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")])
    assert code != 0
    assert "make data-bapps" in capsys.readouterr().err
