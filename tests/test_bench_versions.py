"""The side-by-side version benchmark (the CPU no-regression check) runs and compares what it should."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_versions  # noqa: E402


def test_two_libraries_are_timed_side_by_side(tmp_path):
    out = tmp_path / "versions"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_versions.py"), "--base", str(ROOT / "lib"), "--quick",
         "--rounds", "2", "--only", "l2 grey,watson-dft (shift) grey", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert "round 2/2 done" in proc.stderr, proc.stderr[-2000:]
    rows = list(csv.DictReader(open(out / "versions.csv")))
    assert [r["case"] for r in rows] == ["l2 grey", "watson-dft (shift) grey"]
    for r in rows:
        assert r["rounds"] == "2" and float(r["base_ms_min"]) > 0 and float(r["head_ms_min"]) > 0
        ratio = float(r["head_ms_min"]) / float(r["base_ms_min"])
        assert abs(float(r["head_over_base_min"]) - ratio) < 1e-2
        ratio = float(r["head_step_ms_p10"]) / float(r["base_step_ms_p10"])
        assert abs(float(r["head_over_base_step_p10"]) - ratio) < 1e-2
        assert int(r["steps"]) >= 2  # at least one timed step per round
        assert r["verdict"] == ("pass" if float(r["head_over_base_step_p10"]) <= bench_versions.TOLERANCE else "FAIL")
    assert proc.returncode == (0 if all(r["verdict"] == "pass" for r in rows) else 1)
    meta = json.loads((out / "versions.json").read_text())
    assert meta["rounds"] == 2 and meta["quick"] is True


def test_quantile_interpolates_between_sorted_values():
    assert bench_versions.quantile([3.0, 1.0, 2.0], 0.0) == 1.0
    assert bench_versions.quantile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert bench_versions.quantile([3.0, 1.0, 2.0], 1.0) == 3.0
    assert bench_versions.quantile([0.0, 10.0], 0.1) == pytest.approx(1.0)
    assert bench_versions.quantile([5.0], 0.1) == 5.0


def test_verdict_uses_a_low_percentile_of_the_pooled_steps():
    fast, slow = [10.0] * 20, [30.0] * 20
    # "a": one round of base is noisy throughout, one of head has a burst of slow steps: neither moves p10
    # "b": head is 10% slower in every step (the tolerance: pass); "c": 12% slower (FAIL)
    base = {"a": [fast, slow], "b": [fast, fast], "c": [fast]}
    head = {"a": [[10.5] * 20, [10.5] * 10 + [40.0] * 10], "b": [[11.0] * 20, [11.0] * 20], "c": [[11.2] * 20]}
    by = {r["case"]: r for r in bench_versions.compare(base, head)}
    assert by["a"]["head_over_base_step_p10"] == "1.050" and by["a"]["verdict"] == "pass"
    assert by["b"]["head_over_base_step_p10"] == "1.100" and by["b"]["verdict"] == "pass"
    assert by["c"]["head_over_base_step_p10"] == "1.120" and by["c"]["verdict"] == "FAIL"
    # the round means are reported beside it: fastest round and median round
    assert by["a"]["head_over_base_min"] == "1.050"
    assert by["a"]["head_over_base_median"] == f"{((10.5 + 25.25) / 2) / 20.0:.3f}"
    assert by["a"]["steps"] == 40 and by["a"]["rounds"] == 2


def test_the_verdict_follows_most_steps_not_the_fastest_few():
    base = {"x": [[10.0] * 100]}
    mostly = {"x": [[10.0] * 5 + [12.0] * 95]}  # 95% of head's steps 20% slower: a regression
    assert bench_versions.compare(base, mostly)[0]["verdict"] == "FAIL"
    tail = {"x": [[10.0] * 70 + [12.0] * 30]}  # a slow tail (noise only adds time): p10 equal
    assert bench_versions.compare(base, tail)[0]["verdict"] == "pass"


def test_a_base_that_is_neither_a_folder_nor_a_revision_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="neither a folder holding percept/ nor a git revision"):
        bench_versions.base_lib("no-such-revision-xyz", tmp_path)


def test_host_proxy_cases_are_tiny_and_in_the_gpu_configuration():
    cases = bench_versions.host_proxy_cases([list(c) for c in bench_versions.CASES])
    labels = [c[0] for c in cases]
    assert "ms-ssim rgb 192px" not in labels and len(cases) == len(bench_versions.CASES) - 1
    for label, name, options, _space, batch, size in cases:
        assert (batch, size) == (bench_versions.HOST_PROXY_BATCH, bench_versions.HOST_PROXY_SIZE)
        assert options.get("strategy") == (None if name == "l2" else "batched"), label
    by = {c[0]: c for c in cases}
    assert by["adaptive rgb"][2] == {"strategy": "batched", "pretrained": False, "image_size": 16}
    assert by["watson-dct (shift) grey"][2] == {"deterministic": False, "strategy": "batched"}
    assert bench_versions.CASES[2][2] == {"deterministic": True}  # the module's cases are left as they were


def test_host_proxy_runs_every_kind_of_case(tmp_path):
    """Each metric builds and is timed at the proxy's size and options (Adaptive untrained at 16x16)."""
    out = tmp_path / "host"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_versions.py"), "--base", str(ROOT / "lib"), "--quick",
         "--host-proxy", "--rounds", "1", "--only", "ssim rgb,watson-dct (shift) grey,adaptive rgb",
         "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert "round 1/1 done" in proc.stderr, proc.stderr[-2000:]
    rows = list(csv.DictReader(open(out / "versions.csv")))
    assert [r["case"] for r in rows] == ["ssim rgb", "adaptive rgb", "watson-dct (shift) grey"]  # the CASES order
    assert all(float(r["head_ms_min"]) > 0 for r in rows)
    meta = json.loads((out / "versions.json").read_text())
    assert meta["host_proxy"] is True and meta["threads"] == 1 and meta["shape"] == "2xCx16x16"
