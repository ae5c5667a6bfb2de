"""The NaN/inf and [0, 1] checks: immediate, deferred (the GPU default after a metric's first call) or off.

The deferred mode is exercised on CPU through ``set_value_checks("deferred")``, which runs the same
bookkeeping as a GPU's default mode with nothing to wait for; the CUDA test runs where a GPU is present.
"""

from __future__ import annotations

import collections

import pytest
import torch

import percept
from percept import checks


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch):
    """Each test starts with no outstanding deferred checks, no metric seen and the default mode."""
    monkeypatch.setattr(checks, "_pending", collections.deque())
    monkeypatch.setattr(checks, "_checked_at_once", set())
    monkeypatch.setattr(checks, "_calls", 0)
    monkeypatch.setattr(checks, "_mode", "auto")


def _pair(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 16, 16, generator=g)
    bad = x.clone()
    bad[-1, 1, 2, 3] = float("nan")
    return x, bad


def test_auto_on_cpu_raises_in_the_call_itself():
    metric = percept.get_metric("l2")
    x, bad = _pair()
    for _ in range(3):  # not only the first call
        metric(x, x)
        with pytest.raises(ValueError, match=r"l2: input contains NaN or inf$"):
            metric(bad, x)
    assert not checks._pending


def test_deferred_checks_the_first_call_at_once_and_later_calls_at_the_next_call():
    metric, other = percept.get_metric("l2"), percept.get_metric("l1")
    x, bad = _pair()
    with checks.value_checks("deferred"):
        with pytest.raises(ValueError, match=r"l2: target contains NaN or inf$"):  # first call: at once
            metric(x, bad)
        metric(x, x)  # the first call that passes; from now on l2 is deferred
        assert torch.isnan(metric(bad, x))  # returns: its check is read later
        assert len(checks._pending) == 1
        # the next call of any metric raises it, naming the metric and the call that got the input
        with pytest.raises(ValueError, match=r"l2: input contains NaN or inf, in an earlier call "
                                             r"\(value-checked call 3, 1 call\(s\) before this one"):
            other(x, x)
        assert not checks._pending
        other(x, x)  # resolved once: raised once


def test_deferred_range_error_keeps_its_hint_and_flush_reads_what_is_outstanding():
    metric = percept.get_metric("ssim")
    x, _ = _pair()
    with checks.value_checks("deferred"):
        metric(x, x)
        metric(x * 255, x)
        with pytest.raises(ValueError, match=r"ssim: input values span \[.*\], expected \[0, 1\] "
                                             r"\(0-255 images must be divided by 255\), in an earlier call "
                                             r"\(value-checked call 2, the latest call"):
            checks.flush_value_checks()
        metric(x * 2 - 1, x)
        with pytest.raises(ValueError, match=r"mapped with \(x \+ 1\) / 2"):
            metric(x, x)
        checks.flush_value_checks()  # nothing left: no error


def test_deferred_good_calls_never_raise_and_the_queue_stays_bounded():
    metric = percept.get_metric("watson-dct")
    x, bad = _pair()
    with checks.value_checks("deferred"):
        metric(x, x)
        for _ in range(3 * checks.MAX_PENDING):
            checks._defer(torch.tensor([0.0, 1.0, 0.0, 1.0]), _fine, 0)  # never read until forced
            assert len(checks._pending) <= checks.MAX_PENDING
        checks.flush_value_checks()
        # a bad input left outstanding is read when the queue overflows, at the latest
        metric(bad, x)
        fakes = [checks._Pending(torch.tensor([0.0, 1.0, 0.0, 1.0]), _NeverReady(), _fine, 0)
                 for _ in range(checks.MAX_PENDING - 1)]
        checks._pending.extend(fakes)
        with pytest.raises(ValueError, match="WatsonDCT: input contains NaN"):
            checks._defer(torch.tensor([0.0, 1.0, 0.0, 1.0]), _fine, 0)


def _fine(values, where):
    """The judge of a check that always passes."""


class _NeverReady:
    """A stand-in for a CUDA event whose copy has not landed: only an explicit wait reads it."""

    def query(self) -> bool:
        return False

    def synchronize(self) -> None:
        pass


def test_an_event_not_ready_is_not_waited_for():
    metric = percept.get_metric("l2")
    x, _ = _pair()
    with checks.value_checks("deferred"):
        metric(x, x)
        bad = checks._Pending(torch.tensor([float("nan"), 1.0, 0.0, 1.0]), _NeverReady(),
                              lambda values, where: checks._raise_if_bad(values, "l2", True, where), 1)
        checks._pending.append(bad)
        metric(x, x)  # the copy has not landed: no wait, no error yet
        assert len(checks._pending) == 2
        with pytest.raises(ValueError, match="NaN"):
            checks.flush_value_checks()


def test_off_skips_the_value_checks_but_not_the_shape_checks():
    metric = percept.get_metric("l2")
    x, bad = _pair()
    for off in (False, "off", "0"):
        with checks.value_checks(off):
            assert torch.isnan(metric(bad, x))
            with pytest.raises(ValueError, match="shape"):
                metric(x, x[:1])
        assert checks.get_value_checks() == "auto"
    assert not checks._pending


def test_modes_and_their_spellings():
    assert checks.set_value_checks(True) == "auto"
    assert checks.set_value_checks("SYNC") == "auto"
    assert checks.get_value_checks() == "sync"
    assert checks.set_value_checks(False) == "sync"
    assert checks.get_value_checks() == "off"
    with pytest.raises(ValueError, match="unknown value-check mode 'later'"):
        checks.set_value_checks("later")
    assert checks.get_value_checks() == "off"


def test_environment_variable(monkeypatch):
    for value, mode in (("0", "off"), ("sync", "sync"), ("deferred", "deferred"), ("1", "auto")):
        monkeypatch.setenv("PERCEPT_VALUE_CHECKS", value)
        assert checks._mode_from_environment() == mode
    monkeypatch.setenv("PERCEPT_VALUE_CHECKS", "sometimes")
    with pytest.warns(UserWarning, match="PERCEPT_VALUE_CHECKS.*'sometimes'.*using 'auto'"):
        assert checks._mode_from_environment() == "auto"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_on_cuda_defers_after_the_first_call():
    metric = percept.get_metric("l2")
    x, bad = (t.cuda() for t in _pair())
    with pytest.raises(ValueError, match=r"input contains NaN or inf$"):
        metric(bad, x)
    metric(x, x)
    metric(bad, x)  # deferred
    assert len(checks._pending) == 1 and checks._pending[0].stats.is_pinned()
    with pytest.raises(ValueError, match="in an earlier call"):
        checks.flush_value_checks()
    with checks.value_checks("sync"):
        with pytest.raises(ValueError, match=r"input contains NaN or inf$"):
            metric(bad, x)


def test_functional_adaptive_parameters_follow_the_mode():
    """The functional Adaptive's alpha/scale checks are value checks too: deferred after the first call."""
    import percept.functional as F

    x, _ = _pair()
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 2\], got values in \[3, 3\]$"):
        F.adaptive(x, x, alpha=3.0, scale=1.0)
    with checks.value_checks("deferred"):
        F.adaptive(x, x, alpha=1.0, scale=1.0)
        F.adaptive(x, x, alpha=1.0, scale=0.0)  # returns; read at the next call
        with pytest.raises(ValueError, match=r"scale must be > 0, got a minimum of 0, in an earlier call"):
            F.adaptive(x, x, alpha=1.0, scale=1.0)
    with checks.value_checks("off"):
        F.adaptive(x, x, alpha=3.0, scale=1.0)  # not checked
