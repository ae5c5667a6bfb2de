"""Frozen Watson and Adaptive metrics keep their parameter-derived constants between calls
(``percept.metrics._frozen.cached_constants``): fewer operations per training step, never stale values."""

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
