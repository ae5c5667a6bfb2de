"""Operation counts of an SSIM / MS-SSIM training step in the GPU configuration (strategy="batched").

A GPU step of these metrics is launch-bound, so the number of ATen operations (counted on CPU, see
``tests/opcount.py``) stands in for the GPU time: in the "batched" strategy it must not grow with the batch
and must stay within the peer's count, pytorch-msssim measured in the same harness (it runs the whole
batch through grouped convolutions, 83 CUDA kernels per SSIM step). The "chunked" strategy (CPU) is
checked to be what grows, so that the batched count is not the count of a path that was never taken.
Steps are counted after one warm-up step (the filter constants are built once per size and device), with
the filter method a GPU would pick for the size.
"""

from __future__ import annotations

import importlib

import pytest
import pytorch_msssim
from opcount import count_ops, training_step

from percept.metrics.ssim import MSSSIM, SSIM

#: the module percept.functional.ssim (the attribute of that name is the function ssim)
ssim = importlib.import_module("percept.functional.ssim")

#: ours may use at most this multiple of pytorch-msssim's operations (a training loop's launches)
PEER_BUDGET = 1.0
#: operations of one batched training step (sigmoid, input checks, loss, backward) on 64x64 / 161x161 images:
#: the counts reached by the pair-wise terms (the step had 51 and 233 before); they must not grow again
SSIM_STEP_BUDGET = 35
MS_SSIM_STEP_BUDGET = 183


def _steady_ops(metric, shape) -> int:
    step = training_step(metric, shape)
    step()  # warm-up: constants built on first use
    return sum(count_ops(step).values())


def _peer_ssim(x, y):
    return 1 - pytorch_msssim.ssim(x, y, data_range=1, size_average=False)


def _peer_ms_ssim(x, y):
    return 1 - pytorch_msssim.ms_ssim(x, y, data_range=1, size_average=False)


@pytest.fixture
def gpu_methods(monkeypatch):
    """Pick the filter method (banded matmul or convolutions) by the GPU's size limit, as on a GPU."""
    monkeypatch.setattr(ssim, "_MATMUL_MAX_H_PLUS_W", ssim._MATMUL_MAX_H_PLUS_W_GPU)


@pytest.mark.parametrize("padding", ssim.PADDINGS)
def test_ssim_batched_step_ops_do_not_grow_and_stay_within_the_peer(gpu_methods, padding):
    metric = SSIM(padding=padding, reduction="none", strategy="batched")
    small, large = (_steady_ops(metric, (n, 3, 64, 64)) for n in (4, 64))
    peer = _steady_ops(_peer_ssim, (4, 3, 64, 64))
    assert small == large, f"batched SSIM: {small} ops at batch 4, {large} at batch 64"
    assert large <= PEER_BUDGET * peer, f"batched SSIM: {large} ops, pytorch-msssim {peer}"
    assert large <= SSIM_STEP_BUDGET, f"batched SSIM: {large} ops, budget {SSIM_STEP_BUDGET}"
    # the chunked strategy (CPU) really splits the batch: its count grows
    assert _steady_ops(SSIM(padding=padding, reduction="none", strategy="chunked"), (64, 3, 64, 64)) > 2 * large


def test_ms_ssim_batched_step_ops_do_not_grow_and_stay_within_the_peer(gpu_methods):
    metric = MSSSIM(reduction="none", strategy="batched")
    small, large = (_steady_ops(metric, (n, 3, 161, 161)) for n in (2, 16))
    peer = _steady_ops(_peer_ms_ssim, (2, 3, 161, 161))
    assert small == large, f"batched MS-SSIM: {small} ops at batch 2, {large} at batch 16"
    assert large <= PEER_BUDGET * peer, f"batched MS-SSIM: {large} ops, pytorch-msssim {peer}"
    assert large <= MS_SSIM_STEP_BUDGET, f"batched MS-SSIM: {large} ops, budget {MS_SSIM_STEP_BUDGET}"
    assert _steady_ops(MSSSIM(reduction="none", strategy="chunked"), (16, 3, 161, 161)) > large


def test_auto_strategy_is_chunked_on_cpu():
    """On CPU "auto" takes the chunked path: the same count as strategy="chunked"."""
    shape = (64, 1, 64, 64)
    auto = _steady_ops(SSIM(colorspace="grey", reduction="none"), shape)
    assert auto == _steady_ops(SSIM(colorspace="grey", reduction="none", strategy="chunked"), shape)
    assert auto > _steady_ops(SSIM(colorspace="grey", reduction="none", strategy="batched"), shape)
