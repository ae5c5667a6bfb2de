"""No metric reads a number back from the device during a training step (a GPU would stall on it).

Checked without a GPU on PyTorch's ``meta`` device, whose tensors have shapes but no data: any host read
(``.item()``, ``.tolist()``, ``bool(t)``, ``.cpu()``) raises there. Every metric runs two training steps
(sigmoid, loss, backward) in its GPU configuration (``strategy="batched"``) with the value checks off, and
one step with the value checks deferred (the GPU default after a metric's first call).
"""

from __future__ import annotations

import collections

import pytest
import torch

import percept
from percept import checks

CASES = [
    ("l1", {}), ("l2", {}), ("ssim", {}), ("ms-ssim", {}),
    ("watson-dct", {"deterministic": True}), ("watson-dct", {"deterministic": False}),
    ("watson-dft", {"deterministic": True}), ("watson-dft", {"deterministic": False}),
    ("adaptive", {}),
    ("lpips-squeeze", {"backbone_weights": "random"}), ("deeploss-squeeze", {"backbone_weights": "random"}),
    ("dps-squeeze", {"backbone_weights": "random"}), ("elpips-squeeze", {"backbone_weights": "random"}),
]
BATCHED = ("ssim", "ms-ssim", "watson", "adaptive")


class _Everything:
    """Stands for the set of metrics already checked once: every call is a later call."""

    def __contains__(self, name) -> bool:
        return True

    def add(self, name) -> None:
        pass


def _metric_and_step(name, options, space):
    if name.startswith(BATCHED):
        options = {**options, "strategy": "batched"}
    metric = percept.get_metric(name, colorspace=space, **options).to("meta")
    size = 192 if name == "ms-ssim" else 64
    shape = (4, 3 if space == "rgb" else 1, size, size)
    logits = torch.randn(shape, device="meta", requires_grad=True)
    target = torch.rand(shape, device="meta")

    def step():
        metric(torch.sigmoid(logits), target).sum().backward()

    return step


@pytest.fixture(autouse=True)
def fresh_checks(monkeypatch):
    monkeypatch.setattr(checks, "_pending", collections.deque())
    monkeypatch.setattr(checks, "_checked_at_once", _Everything())
    # On CUDA a later check reads an earlier one's numbers only once their copy to pinned host memory has
    # landed (no device read); meta tensors have no numbers to copy, so the reading is left out here.
    monkeypatch.setattr(checks, "_drain", lambda wait=False: None)


@pytest.mark.parametrize("name,options", CASES, ids=[f"{n}{'-shift' if o.get('deterministic') is False else ''}"
                                                    for n, o in CASES])
@pytest.mark.parametrize("space", ["rgb", "grey"])
def test_training_step_reads_nothing_back(name, options, space):
    step = _metric_and_step(name, options, space)
    with checks.value_checks("off"):
        step()
        step()  # a second step: the one that uses what the first cached
    with checks.value_checks("deferred"):
        step()  # the check's numbers stay on the device, for a later call to read
    assert len(checks._pending) == 1
    checks._pending.clear()


def test_the_meta_device_catches_a_host_read():
    """The detector works: the immediate value check reads two numbers back and fails on meta tensors."""
    step = _metric_and_step("l2", {}, "rgb")
    with checks.value_checks("sync"), pytest.raises((RuntimeError, NotImplementedError), match="meta"):
        step()


@pytest.mark.parametrize("name", ["adaptive", "watson_dct", "watson_dft", "ssim", "ms_ssim"])
def test_functional_training_step_reads_nothing_back(name):
    """The functional forms in a training loop: no read-back once each check has run once."""
    import percept.functional as F

    kwargs = percept.get_metric("adaptive").functional_kwargs() if name == "adaptive" else {}
    size = 192 if name == "ms_ssim" else 64
    logits = torch.randn(2, 3, size, size, device="meta", requires_grad=True)
    target = torch.rand(2, 3, size, size, device="meta")
    fn = getattr(F, name)
    with checks.value_checks("deferred"):
        fn(torch.sigmoid(logits), target, **kwargs).sum().backward()
    assert 1 <= len(checks._pending) <= 2  # the images' check, and Adaptive's parameters
