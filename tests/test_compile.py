"""Metrics under ``torch.compile``: the values and gradients of eager mode, and no recompilation per call.

A user who compiles a training step compiles the loss with it. Two things must hold: the compiled metric
computes what the eager one does (random shifts and E-LPIPS draws included, under the same seed), and
repeated calls on the same shapes reuse what was compiled. A metric whose traced code holds per-call host
values (a random offset, a fresh object) compiles again in every call until torch gives up at its
recompilation limit (8), each compilation costing seconds to minutes with the default backend.
``aot_eager`` traces and partitions like the default backend without generating code, so the check is fast.
"""

from __future__ import annotations

import pytest
import torch

import percept

dynamo = pytest.importorskip("torch._dynamo")

CASES = [
    ("l2", {}, 32), ("ssim", {}, 32), ("ms-ssim", {}, 176),
    ("watson-dct", {}, 32), ("watson-dct", {"deterministic": False}, 32),
    ("watson-dft", {}, 32), ("watson-dft", {"deterministic": False}, 32),
    ("watson-dct", {"deterministic": False, "strategy": "batched"}, 32),
    ("adaptive", {"pretrained": False, "image_size": 32}, 32),
    ("lpips-squeeze", {"backbone_weights": "random"}, 32),
    ("elpips-squeeze", {"backbone_weights": "random", "n": 2}, 32),
]
CALLS = 6


def _run(metric, x0, y):
    torch.manual_seed(0)  # the same random shifts and draws in both modes
    values, grads, graphs = [], [], []
    for _ in range(CALLS):
        x = x0.clone().requires_grad_(True)
        value = metric(x, y)
        value.backward()
        values.append(value.detach())
        grads.append(x.grad)
        graphs.append(dynamo.utils.counters["stats"]["unique_graphs"])
    return torch.stack(values), torch.stack(grads), graphs


@pytest.mark.parametrize("name,options,size", CASES,
                         ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in o.items())}" for n, o, _ in CASES])
def test_compiled_metric_matches_eager_and_compiles_once(name, options, size):
    dynamo.reset()
    dynamo.utils.counters.clear()
    metric = percept.get_metric(name, reduction="sum", **options)
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(2, 3, size, size, generator=g)
    y = (x0 + 0.1 * torch.rand(2, 3, size, size, generator=g)).clamp(0, 1)
    eager_values, eager_grads, _ = _run(metric, x0, y)
    values, grads, graphs = _run(torch.compile(metric, backend="aot_eager"), x0, y)
    torch.testing.assert_close(values, eager_values, rtol=1e-5, atol=1e-7)
    # rounding: the traced backward may group float32 sums differently (MS-SSIM: 1e-5 of the largest gradient)
    torch.testing.assert_close(grads, eager_grads, rtol=1e-4, atol=1e-4 * eager_grads.abs().max().item())
    # every graph exists after the first two calls; later calls only reuse them
    assert graphs[1] == graphs[-1], f"graphs per call: {graphs} (recompiled in later calls)"
