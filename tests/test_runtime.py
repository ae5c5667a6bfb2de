"""The runtime experiment end to end: ``experiments/runtime/run.py --quick`` into a temporary folder, its CSVs and
machine info, ``--summary``, and ``analysis.ipynb`` executed on those CSVs. Nothing here checks a timing."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = ROOT / "experiments" / "runtime"


def _driver():
    return load_script(EXPERIMENT / "run.py", "runtime_run")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, assets_dir):
    results = tmp_path_factory.mktemp("results")
    out = results / "runtime"
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    proc = subprocess.run(
        [sys.executable, str(EXPERIMENT / "run.py"), "--quick", "--device", "cpu", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return results, out


def test_runtime_csv_has_every_requested_loss(quick_run):
    _, out = quick_run
    run = _driver()
    df = pd.read_csv(out / "runtime.csv")
    assert list(df.columns) == run.RUNTIME_COLUMNS
    expected = {(k, cs) for k in run.PAPER + run.EXTRA + run.PEERS for cs in ("rgb", "grey")
                if cs == "rgb" or run.CANDIDATES[k].grey}  # fmt: skip
    assert set(zip(df.metric, df.colorspace)) == expected
    assert len(df) == len(expected)
    # every loss is measured, or skipped/failed with a reason
    assert set(df.status) <= {"ok", "skipped", "failed"}
    for r in df[df.status != "ok"].itertuples():
        assert isinstance(r.note, str) and r.note.strip(), f"{r.metric} [{r.colorspace}] {r.status} without a reason"
    ok = df[df.status == "ok"]
    assert (ok.ms_per_iter_mean > 0).all() and ok.ms_per_iter_mean.map(math.isfinite).all()
    assert (ok.iterations >= 1).all() and (ok.repeats >= 1).all()
    assert (ok.batch == 4).all() and (ok.height == 64).all()
    # CPU memory: the column name says how it was measured; none on CUDA
    assert ok.cuda_peak_mib.isna().all()
    if sys.platform.startswith("linux"):
        assert (ok.peak_rss_delta_mib >= 0).all()
    # the families that exist in the library must be measured, not skipped
    for key in ("L1", "L2", "SSIM", "Watson-DCT", "Watson-DFT", "ssim", "pytorch_msssim.ssim", "torchmetrics.ssim"):
        for cs in ("rgb", "grey"):
            row = df[(df.metric == key) & (df.colorspace == cs)].iloc[0]
            assert row.status == "ok", f"{key} [{cs}]: {row.note}"
    # MS-SSIM cannot run on 64 px images: skipped with the reason
    ms = df[df.metric == "ms-ssim"]
    assert (ms.status == "skipped").all() and ms.note.str.contains("161").all()
    # ratio to L2 and the peer comparison are filled in
    assert ok[ok.metric == "L2"].ratio_to_l2.round(6).eq(1.0).all()
    peers = ok[ok.group == "peer"]
    assert peers.compares_to.notna().all()
    assert peers.ours_over_peer_time.gt(0).all()


def test_runtime_peer_values_match(quick_run):
    """Peers are compared with the percept metric that computes the same thing: equal values."""
    _, out = quick_run
    df = pd.read_csv(out / "runtime.csv")
    for peer, tol in (("pytorch_msssim.ssim", 1e-5), ("torchmetrics.ssim", 1e-5)):
        rows = df[df.metric == peer]
        assert (rows.status == "ok").all()
        assert (rows.max_abs_diff <= tol).all(), rows[["colorspace", "max_abs_diff"]]
    for r in df[(df.group == "peer") & (df.status == "ok") & df.metric.str.contains("lpips")].itertuples():
        assert r.max_abs_diff <= 1e-4, (r.metric, r.max_abs_diff)  # same backbone and linear weights


def test_scaling_csv(quick_run):
    _, out = quick_run
    run = _driver()
    df = pd.read_csv(out / "scaling.csv")
    assert list(df.columns) == run.SCALING_COLUMNS
    expected = {(m, s, b) for m in run.SCALING for s in (32, 64) for b in (1, 4)}
    assert set(zip(df.metric, df["size"], df.batch)) == expected
    ok = df[df.status == "ok"]
    assert set(zip(ok.metric, ok["size"], ok.batch)) >= {p for p in expected if p[0] != "lpips-squeeze"}
    assert (ok.pixels_per_batch == ok.batch * ok["size"] ** 2).all()
    assert ((ok.ms_per_image - ok.ms_per_iter_mean / ok.batch).abs() < 1e-9).all()


def test_machine_json(quick_run):
    _, out = quick_run
    info = json.loads((out / "machine.json").read_text())
    for key in (
        "torch",
        "device",
        "device_name",
        "cpu_model",
        "torch_threads",
        "date",
        "git_commit",
        "weights",
        "data_source",
        "protocol",
    ):
        assert key in info, key
    assert "celeba" in info["data_source"].lower()
    assert info["protocol"]["quick"] is True
    assert any("watson" in w for w in info["weights"].values())


def test_summary_prints_table(quick_run):
    _, out = quick_run
    proc = subprocess.run([sys.executable, str(EXPERIMENT / "run.py"), "--summary", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Watson-DFT" in proc.stdout and "Figures:" in proc.stdout
    assert "pytorch_msssim.ssim" in proc.stdout


def test_notebook_runs_on_the_csvs(quick_run, tmp_path):
    results, out = quick_run
    notebook = tmp_path / "analysis.ipynb"
    shutil.copy(EXPERIMENT / "analysis.ipynb", notebook)  # executed in place: never touch the committed one
    env = dict(os.environ, PERCEPT_RESULTS=str(results), PERCEPT_QUICK="1")
    proc = subprocess.run([sys.executable, "-m", "percept.notebooks", str(notebook)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    for name in ("runtime_barplot.png", "peers.png", "scaling.png"):
        assert (out / name).stat().st_size > 1000, name


def test_notebook_runner_reports_a_broken_notebook(tmp_path):
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    bad = tmp_path / "bad.ipynb"
    nbformat.write(new_notebook(cells=[new_code_cell("x = 1"), new_code_cell("raise ValueError('broken on purpose')")]),
                   bad)  # fmt: skip
    before = bad.read_text()
    proc = subprocess.run([sys.executable, "-m", "percept.notebooks", str(bad)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode != 0
    assert "broken on purpose" in proc.stderr
    assert bad.read_text() == before  # a failed notebook is not written back


def test_update_replaces_only_the_remeasured_rows():
    """``--update`` (re-measuring some losses, e.g. after their weights changed) keeps every other row and
    recomputes the derived columns over the merged table: ratios against the kept L2 row, peers against the
    re-measured percept row."""
    drv = _driver()
    old = pd.DataFrame(
        [
            {"metric": "L2", "group": "paper", "colorspace": "rgb", "ms_per_iter_mean": 2.0, "weights": "none"},
            {"metric": "lpips-alex", "group": "percept", "colorspace": "rgb", "ms_per_iter_mean": 10.0,
             "weights": "backbone: random alexnet"},
            {"metric": "lpips-squeeze", "group": "percept", "colorspace": "rgb", "ms_per_iter_mean": 30.0,
             "weights": "backbone: ImageNet squeezenet1_1"},
            {"metric": "lpips.alex", "group": "peer", "colorspace": "rgb", "ms_per_iter_mean": 20.0,
             "compares_to": "lpips-alex", "weights": "backbone: random alexnet"},
        ]
    )  # fmt: skip
    old = drv.derived_columns(old.reindex(columns=drv.RUNTIME_COLUMNS))
    new = pd.DataFrame(
        [
            {"metric": "lpips-alex", "group": "percept", "colorspace": "rgb", "ms_per_iter_mean": 8.0,
             "weights": "backbone: ImageNet alexnet"},
            {"metric": "lpips.alex", "group": "peer", "colorspace": "rgb", "ms_per_iter_mean": 16.0,
             "compares_to": "lpips-alex", "weights": "backbone: ImageNet alexnet"},
        ]
    ).reindex(columns=drv.RUNTIME_COLUMNS)  # fmt: skip
    merged = drv.merge_update(old, new)
    assert list(merged.metric) == ["L2", "lpips-alex", "lpips-squeeze", "lpips.alex"]  # order kept
    by = merged.set_index("metric")
    assert by.loc["lpips-alex", "ms_per_iter_mean"] == 8.0 and "ImageNet" in by.loc["lpips-alex", "weights"]
    assert by.loc["lpips-squeeze", "ms_per_iter_mean"] == 30.0  # untouched
    assert by.loc["lpips-alex", "ratio_to_l2"] == 4.0  # against the kept L2 row
    assert by.loc["lpips.alex", "ours_over_peer_time"] == 0.5
    assert by.loc["lpips.alex", "s_per_500_iter"] == 8.0
