"""The one-shot GPU script runs its whole code path on CPU (``--device cpu``) and writes its files."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_gpu_script_on_cpu(tmp_path):
    out = tmp_path / "bench_gpu"
    only = ("L2 (torch),watson-dft (shift),watson-dft,ssim [no value checks],ssim [sync value checks],"
            "ssim [CUDA graph]")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--device", "cpu", "--quick", "--repeats", "1",
         "--out", str(out), "--only", only + ",watson-dct,watson-dct [torch.compile]", "--compile", "aot_eager"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(out / "bench.csv") as f:
        rows = list(csv.DictReader(f))
    reference = (ROOT / "results" / "bench" / "bench.csv").read_text().splitlines()[0].split(",")
    assert list(rows[0]) == reference  # the columns of the CPU bench
    by = {(r["metric"], r["colorspace"]): r for r in rows}
    assert float(by[("L2 (torch)", "rgb")]["ratio_to_l2"]) == 1.0
    shifted = by[("watson-dft (shift)", "grey")]
    assert float(shifted["ms_per_iter"]) > 0 and shifted["time_target"] == "<= 12x L2"
    assert shifted["time_verdict"] in ("pass", "FAIL")
    unchecked = by[("ssim [no value checks]", "rgb")]  # the cost of the value checks' host sync, measured
    assert float(unchecked["ms_per_iter"]) > 0 and "value checks off" in unchecked["note"]
    synced = by[("ssim [sync value checks]", "rgb")]  # and what deferring them saves on a GPU
    assert float(synced["ms_per_iter"]) > 0 and "a host sync per call" in synced["note"]
    graphed = by[("ssim [CUDA graph]", "grey")]  # CUDA-only: a row that says why it was not timed
    assert graphed["ms_per_iter"] == "" and "CUDA graphs need a CUDA device, not cpu" in graphed["note"]
    assert graphed["peer"] == "ssim" and graphed["implementation"].startswith("torch.cuda.make_graphed_callables(")
    compiled = by[("watson-dct [torch.compile]", "rgb")]  # timed, with its 3-step parity against eager
    assert float(compiled["ms_per_iter"]) > 0 and "aot_eager" in compiled["note"]
    assert compiled["peer"] == "watson-dct" and float(compiled["max_abs_diff_vs_peer"]) < 1e-5
    with open(out / "parity.csv") as f:
        parity = list(csv.DictReader(f))
    assert {r["colorspace"] for r in parity} == {"rgb", "grey"}
    for r in parity:  # CPU against CPU here: identical, and autocast stays finite
        assert r["note"] == "" and float(r["value_rel_diff"]) == 0.0 and r["bf16_finite"] == "True"
    assert json.loads((out / "machine.json").read_text())["device"] == "cpu"


def test_host_issue_time_is_the_time_a_step_takes_to_be_issued():
    """The GPU diagnosis's host time: on CPU every step runs where it is issued, so a step that sleeps 20 ms
    takes at least 20 ms to issue; the kernel profile is CUDA-only."""
    import time

    import torch
    from scripts import load_script

    if str(ROOT / "benchmarks") not in sys.path:  # the script imports its sibling bench_losses
        sys.path.insert(0, str(ROOT / "benchmarks"))
    module = load_script("benchmarks/bench_gpu.py", "bench_gpu")
    assert 20 <= module._host_ms_per_step(lambda: time.sleep(0.02), torch.device("cpu"), repeats=3) < 200
    assert module._kernels_per_step(lambda: None, torch.device("cpu")) is None


def test_deferred_value_check_row_on_cpu():
    """parity.csv's value-check row: on CPU the default mode raises in the call itself (deferred is CUDA's)."""
    import torch
    from scripts import load_script

    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(ROOT / "benchmarks"))
    module = load_script("benchmarks/bench_gpu.py", "bench_gpu")
    assert module.deferred_value_check(torch.device("cpu")) == "pass: raised in the call"
