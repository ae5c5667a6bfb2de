"""Fewer operations per training step (a GPU step is launch-bound), never different values.

Frozen Watson and Adaptive metrics keep their parameter-derived constants between calls
(``percept.metrics._frozen.cached_constants``); cached constant tensors are built outside inference mode
(``percept.execution.cached_constant``); the batched Watson-DCT folds its random shift into whole-side DCT
matrices (``percept.transforms.shifted_dct_matrix``).
"""

from __future__ import annotations

import pytest
import torch

import percept

CASES = [
    ("watson-dct", "rgb", {"deterministic": False}),
    ("watson-dct", "grey", {"deterministic": True}),
    ("watson-dft", "rgb", {"deterministic": False}),
    ("watson-dft", "grey", {"deterministic": True}),
    ("adaptive", "rgb", {}),
    ("adaptive", "grey", {}),
]


def _images(space, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (n, 3 if space == "rgb" else 1, 64, 64)
    return torch.rand(shape, generator=g), torch.rand(shape, generator=g)


def _metric(name, space, options, **extra):
    return percept.get_metric(name, colorspace=space, reduction="none", **options, **extra)


def _call(metric, x, y):
    """The metric's values, with its random shift (if any) drawn from the same seed every time."""
    if hasattr(metric, "generator"):
        metric.generator = torch.Generator().manual_seed(5)
    return metric(x, y)


def _entry(metric):
    return metric.__dict__.get("_constants_entry")


def _tensors(value):
    return [t for t in (value if isinstance(value, tuple) else (value,)) if isinstance(t, torch.Tensor)]


@pytest.mark.parametrize("name,space,options", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
@pytest.mark.parametrize("strategy", ["batched", "chunked"])
def test_training_steps_leave_the_kept_constants_untouched(name, space, options, strategy):
    """The formula must not write into the kept tensors (they were fresh in every call before)."""
    metric = _metric(name, space, options, strategy=strategy)
    x, y = _images(space)
    first = _call(metric, x, y)
    kept = [t.clone() for t in _tensors(_entry(metric)[1])]
    assert kept, "a frozen metric keeps its constants"
    for seed in (1, 2):  # training steps (closed-form gradient) on other images, then an autograd call
        xs, ys = _images(space, seed=seed)
        xs.requires_grad_(True)
        metric(xs, ys).sum().backward()
    ys.requires_grad_(True)
    metric(xs, ys).sum().backward()
    after = _tensors(_entry(metric)[1])
    assert all(torch.equal(a, b) for a, b in zip(kept, after))
    assert torch.equal(_call(metric, x, y), first)


@pytest.mark.parametrize("name,space,options", CASES[::2], ids=[f"{c[0]}-{c[1]}" for c in CASES[::2]])
def test_new_parameters_are_seen(name, space, options):
    """load_state_dict, an in-place edit under no_grad and a dtype change all give a fresh metric's values."""
    metric = _metric(name, space, options)
    x, y = _images(space)
    metric(x, y)  # fills the cache
    other = _metric(name, space, options)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    metric.load_state_dict(other.state_dict())
    assert torch.equal(_call(metric, x, y), _call(other, x, y))

    with torch.no_grad():
        for p in metric.parameters():
            p.mul_(0.9)
    fresh = _metric(name, space, options)
    fresh.load_state_dict(metric.state_dict())
    assert torch.equal(_call(metric, x, y), _call(fresh, x, y))

    metric.double(), fresh.double()
    wide = _call(metric, x.double(), y.double())
    assert wide.dtype == torch.float64 and torch.equal(wide, _call(fresh, x.double(), y.double()))


@pytest.mark.parametrize("name", ["watson-dct", "adaptive"])
def test_trainable_metric_is_never_served_kept_constants(name):
    """Tuning a metric (2AFC): the parameters get gradients, and each step's update changes the values."""
    metric = percept.get_metric(name, colorspace="rgb", trainable=True, reduction="sum")
    metric.eval()  # no dropout: the values depend on the parameters only
    x, y = _images("rgb")
    with torch.no_grad():
        before = metric(x, y)  # a no-grad evaluation may keep the constants ...
    loss = metric(x, y)
    loss.backward()
    grads = [p.grad for p in metric.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    torch.optim.SGD(metric.parameters(), lr=1e-2).step()
    with torch.no_grad():
        assert not torch.equal(metric(x, y), before)  # ... and sees the optimiser's update


def test_constants_made_under_inference_mode_serve_a_later_autograd_step():
    metric = percept.get_metric("adaptive", colorspace="rgb")
    x, y = _images("rgb")
    with torch.inference_mode():
        metric(x, y)
    y.requires_grad_(True)  # a target with a gradient: autograd through the kept constants
    metric(x, y).backward()
    assert y.grad is not None and torch.isfinite(y.grad).all()


def test_the_cache_removes_the_constants_operations(monkeypatch):
    """What the cache saves in one training step (tests/test_opcount.py's budgets rely on it)."""
    from opcount import count_ops, training_step

    import percept.metrics.adaptive as adaptive_module

    metric = percept.get_metric("adaptive", colorspace="rgb", strategy="batched")
    step = training_step(metric, (4, 3, 64, 64))
    step()
    kept = sum(count_ops(step).values())
    monkeypatch.setattr(adaptive_module, "cached_constants", lambda owner, params, key, compute: compute())
    recomputed = sum(count_ops(step).values())
    assert recomputed - kept >= 25, (kept, recomputed)


_INFERENCE_FIRST = r"""
import torch, percept
from percept import functional as F

g = torch.Generator().manual_seed(0)
rgb = lambda: torch.rand(2, 3, 64, 64, generator=g)
grey = lambda: torch.rand(2, 1, 64, 64, generator=g)
calls = {
    "watson_dct": lambda x, y: F.watson_dct(x, y, offsets=(2, 5)),
    "watson_dft": lambda x, y: F.watson_dft(x, y, offsets=(6, 1)),
    "watson_dct_grey": lambda x, y: F.watson_dct(x[:, :1], y[:, :1], offsets=(2, 5)),
    "adaptive": lambda x, y: F.adaptive(x, y),
    "ssim": lambda x, y: F.ssim(x, y),
    "ssim_lab": lambda x, y: percept.get_metric("ssim", colorspace="lab")(x, y),
    "lpips_squeeze": lambda x, y: F.lpips(x, y, net="squeeze"),
    "metric_watson_dft": lambda x, y: percept.get_metric("watson-dft", deterministic=False)(x, y),
}
for name, call in calls.items():  # the first use of every cached constant: under inference mode
    with torch.inference_mode():
        call(rgb(), rgb())
for name, call in calls.items():  # then a training step through the same constants
    x = rgb().requires_grad_(True)
    call(x, rgb()).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all(), name
print("ok", len(calls))
"""


def test_constants_first_built_under_inference_mode_serve_training():
    """Cached constants (DCT and colour matrices, shift weights, filters, the functional API's modules) first
    built inside ``torch.inference_mode()``, e.g. by an evaluation before training, must not be inference
    tensors: autograd cannot save those. A fresh process, so that no other test has filled the caches."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root / "lib")}
    proc = subprocess.run([sys.executable, "-c", _INFERENCE_FIRST], capture_output=True, text=True, env=env,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ok 8")


@pytest.mark.parametrize("space", ["rgb", "grey"])
def test_whole_side_dct_equals_the_blocks_on_shifted_copies(space):
    """The batched strategy's Watson-DCT (block DCT and shift folded into whole-side matrices) against the 8 x 8
    products on shifted copies, for offsets at both ends and none, values and input gradients (float64)."""
    from percept.functional import watson as formula

    metric = percept.get_metric("watson-dct", colorspace=space)
    masking = formula._mask(metric.formula_parameters(torch.float64), formula.DCT)
    c = 3 if space == "rgb" else 1
    g = torch.Generator().manual_seed(3)
    x, y = torch.rand(2, c, 48, 64, generator=g, dtype=torch.float64), torch.rand(2, c, 48, 64, generator=g, dtype=torch.float64)
    for offsets in [None, (0, 0), (7, 7), (0, 7), (7, 1), (4, 4), (2, 5)]:
        mean_dc = formula._mean_dc(y, offsets, formula.DCT.dc_scale, False)
        results = []
        for full in (False, True):
            grad = torch.empty_like(x)
            values = formula._dct_per_image(x, y, masking, mean_dc, offsets, grad_out=grad, full=full)
            results.append((values, grad))
        (v0, g0), (v1, g1) = results
        assert torch.allclose(v1, v0, rtol=1e-12, atol=0), offsets
        assert ((g1 - g0).norm() / g0.norm()) < 1e-12, offsets


def test_the_batched_shift_costs_no_operations_of_its_own():
    """With the shift folded into the DCT matrices, Watson-DCT's random shift adds only its draw and the
    shift-weighted luminance mean to a training step (the shifted copies and their adjoint cost 11)."""
    from opcount import count_ops, training_step

    counts = []
    for deterministic in (True, False):
        metric = percept.get_metric("watson-dct", colorspace="rgb", strategy="batched", deterministic=deterministic)
        metric.generator = torch.Generator().manual_seed(0)
        step = training_step(metric, (4, 3, 64, 64))
        step()
        metric.generator = torch.Generator().manual_seed(0)  # the same offsets as the step that filled the caches
        counts.append(sum(count_ops(step).values()))
    assert counts[1] - counts[0] <= 3, counts
