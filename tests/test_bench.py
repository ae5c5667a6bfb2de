"""``make bench`` (benchmarks/bench.py): its quick run, the equal-values checks against the peers, and the helpers
the runtime experiment shares (benchmarks/bench_losses.py, percept.profiling). Nothing here checks a timing."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from percept import profiling

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench  # noqa: E402
import bench_losses  # noqa: E402


@pytest.fixture(scope="module")
def quick_bench(assets_dir):
    return bench.run(quick=True, deep=False, progress=False)


def test_ssim_equals_pytorch_msssim(quick_bench):
    df = quick_bench
    rows = df[(df.metric == "ssim") & (df.peer == "pytorch_msssim.ssim")]
    assert set(rows.colorspace) == {"rgb", "grey"}
    assert (rows.max_abs_diff_vs_peer <= 1e-5).all(), rows[["colorspace", "max_abs_diff_vs_peer"]]


def test_other_peers_equal_values(quick_bench):
    df = quick_bench
    reflect = df[df.metric == "ssim (reflect)"]
    assert (reflect.peer == "torchmetrics.ssim").all()
    assert (reflect.max_abs_diff_vs_peer <= 1e-5).all()
    ms = df[df.metric == "ms-ssim"]
    assert (ms.max_abs_diff_vs_peer <= 1e-4).all()


def test_table_is_complete(quick_bench):
    df = quick_bench
    for col in ("metric", "colorspace", "shape", "ms_per_iter", "ratio_to_l2", "peer", "speedup_vs_peer",
                "max_abs_diff_vs_peer", "peak_mem_x_input", "original_x_l2", "time_target", "time_verdict",
                "mem_verdict"):  # fmt: skip
        assert col in df.columns, col
    l2 = df[df.metric == "L2 (torch)"]
    assert len(l2) == 3 and l2.ratio_to_l2.round(6).eq(1.0).all()
    measured = df[df.note.fillna("") == ""]
    assert measured.ms_per_iter.map(lambda v: math.isfinite(v) and v > 0).all()
    # the figures for the original are anchors, shown beside the Watson and SSIM rows
    assert df[df.metric == "watson-dft (shift)"].original_x_l2.eq(35.0).all()
    # every targeted row says pass, FAIL or n/a; the verdict is printed, never asserted
    assert set(df[df.time_target != ""].time_verdict) <= {"pass", "FAIL", "n/a"}
    assert len(df[df.time_target != ""]) == 10  # 8 Watson rows and 2 SSIM rows
    assert set(df[df.group == "percept"].mem_verdict) <= {"pass", "FAIL", "n/a"}
    text = bench.format_table(df)
    assert "watson-dft" in text and "pytorch_msssim.ssim" in text


def test_memory_is_measured_in_a_fresh_process(quick_bench):
    df = quick_bench
    if not profiling.peak_rss_available():
        pytest.skip("no /proc peak-RSS reset on this system")
    measured = df[df.note.fillna("") == ""]
    assert measured.peak_mem_x_input.notna().all()
    assert (measured.peak_mem_x_input >= 0).all()


def test_run_isolated_returns_and_reports_errors():
    assert profiling.run_isolated(math.factorial, 5) == 120
    with pytest.raises(RuntimeError, match="ValueError"):
        profiling.run_isolated(math.factorial, -1)


def test_peak_memory_sees_an_allocation():
    if not profiling.peak_rss_available():
        pytest.skip("no /proc peak-RSS reset on this system")
    with profiling.PeakMemory(torch.device("cpu")) as mem:
        x = torch.ones(64, 2**20)  # 256 MiB, touched
        del x
    assert mem.method == "peak_rss_delta"
    assert 200 * 2**20 < mem.bytes < 400 * 2**20


def test_peak_memory_live_counts_tensor_allocations_exactly():
    x = torch.ones(2**20)
    with profiling.PeakMemory(torch.device("cpu"), live=True) as mem:
        y = x * 2  # 4 MiB, alive at the end
        z = torch.empty(2**21)  # 8 MiB, freed inside
        del z
    assert mem.method == "cpu_live_tensor_bytes"
    assert mem.bytes == 12 * 2**20
    del y


def test_celeba_batch(assets_dir):
    rgb, source = bench_losses.celeba_batch(40, 64, "rgb")
    grey, _ = bench_losses.celeba_batch(40, 64, "grey")
    assert rgb.shape == (40, 3, 64, 64) and grey.shape == (40, 1, 64, 64)
    assert 0 <= rgb.min() and rgb.max() <= 1
    assert "tiled" in source or "downloaded" in source
    expected = (rgb * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    torch.testing.assert_close(grey, expected)
    small, _ = bench_losses.celeba_batch(2, 32, "rgb")
    assert small.shape == (2, 3, 32, 32)
    if source.startswith("offline"):  # the paper's crop, resized straight to the requested size (PIL's Lanczos)
        first = sorted((assets_dir / "data" / "celeba_sample").glob("*.jpg"))[0]
        with Image.open(first) as im:
            face = im.convert("RGB").crop((25, 45, 153, 178)).resize((32, 32), Image.LANCZOS)
        expected = torch.from_numpy(np.asarray(face, dtype=np.float32) / 255).permute(2, 0, 1)
        torch.testing.assert_close(small[0], expected, rtol=0, atol=1e-7)
        assert rgb.shape[0] == 40 and torch.equal(rgb[32:], rgb[:8])  # 32 faces, tiled


def test_training_step_is_one_sgd_step_of_the_runtime_protocol():
    """loss(sigmoid(param), target), backward, SGD: against the gradient of sum((sigmoid(p) - t)^2) by hand."""
    target = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    step = profiling.TrainingStep(torch.nn.MSELoss(reduction="sum"), target, seed=3, lr=0.5)
    p0 = torch.randn(target.shape, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(step.param.detach(), p0, rtol=0, atol=0)
    loss = step()
    s = torch.sigmoid(p0)
    assert loss.item() == pytest.approx(((s - target) ** 2).sum().item(), rel=1e-6)
    torch.testing.assert_close(step.param.detach(), p0 - 0.5 * 2 * (s - target) * s * (1 - s))


def test_measure_steps_runs_the_protocol_it_reports():
    calls = []

    def step():
        calls.append(1)
        return torch.tensor(float(len(calls)))

    row = profiling.measure_steps(step, "cpu", first_step_s=0.0, warmup=3, iterations=4, repeats=2)
    assert (row["warmup"], row["iterations"], row["repeats"]) == (3, 4, 2)
    assert len(calls) == 2 + 4 * 2 and row["last_loss"] == 10.0  # the first warm-up call was made by the caller
    calls.clear()
    # a 10 s step against a 4 s budget: no further warm-up, one iteration per repeat
    row = profiling.measure_steps(step, "cpu", first_step_s=10.0, warmup=3, iterations=20, repeats=3, budget_s=4.0)
    assert (row["warmup"], row["iterations"], row["repeats"]) == (1, 1, 3) and len(calls) == 3
    calls.clear()
    # a 1 s first step: warm-up continues while it takes at most a quarter of the budget (one more call)
    row = profiling.measure_steps(step, "cpu", first_step_s=1.0, warmup=3, iterations=20, repeats=3, budget_s=4.0)
    assert row["warmup"] == 2 and row["iterations"] == 20 and len(calls) == 1 + 60
