"""Metrics that draw random numbers on the host refuse to be captured into a CUDA graph.

A CUDA graph records device work only: a shift or transformation drawn on the host while capturing would be
replayed unchanged by every replay, so the metric would silently stop being random. The capture state is
simulated here (no GPU needed) by making :func:`percept.execution.graph_capturing` say yes.
"""

from __future__ import annotations

import pytest
import torch

import percept
from percept import checks, execution


@pytest.fixture
def capturing(monkeypatch):
    monkeypatch.setattr(execution, "graph_capturing", lambda device: True)


def test_graph_capturing_is_false_off_cuda():
    assert execution.graph_capturing(torch.device("cpu")) is False
    assert execution.graph_capturing(torch.device("meta")) is False


@pytest.mark.parametrize("name", ["watson-dct", "watson-dft"])
def test_watson_with_random_shift_refuses_capture(name, capturing):
    metric = percept.get_metric(name, colorspace="grey", deterministic=False, pretrained=False)
    x, y = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    with pytest.raises(RuntimeError, match="deterministic=False.*replayed unchanged.*deterministic=True"):
        metric(x, y)
    fixed = percept.get_metric(name, colorspace="grey", deterministic=True, pretrained=False)
    with checks.value_checks("off"):  # the value checks are skipped in a capture anyway
        assert torch.isfinite(fixed(x, y))


def test_elpips_refuses_capture_unless_it_draws_nothing(capturing):
    from percept.metrics.elpips import ELPIPS

    x, y = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    metric = ELPIPS(net="squeeze", pretrained=False, n=1)
    with torch.no_grad(), pytest.raises(RuntimeError, match="random transformations.*replayed unchanged"):
        metric(x, y)
    plain = ELPIPS(net="squeeze", pretrained=False, n=1, transforms=(), net_dropout=False)
    with torch.no_grad(), checks.value_checks("off"):
        assert torch.isfinite(plain(x, y)).all()


def test_value_checks_are_skipped_while_capturing(capturing):
    """The value check cannot read back inside a capture: it is skipped (the warm-up calls were checked)."""
    metric = percept.get_metric("l2")
    bad = torch.full((1, 3, 8, 8), 2.0)
    assert torch.isfinite(metric(bad, bad * 0))
    with pytest.raises(ValueError, match=r"expected \[0, 1\]"):  # the same call outside a capture is refused
        with pytest.MonkeyPatch.context() as m:
            m.setattr(execution, "graph_capturing", lambda device: False)
            metric(bad, bad * 0)
