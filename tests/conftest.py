"""Shared fixtures: the offline asset folder and the golden outputs of the original implementations.

Tests read real weights and data through ``PERCEPT_ASSETS``. When it is unset, the ``shared/assets``
folder beside the checkout is used if it exists (the layout of this workplace and of CI).

A test that needs a downloadable weight file missing on this machine (``MissingAssetError``) is skipped
with that reason, or fails in CI (``CI`` set), where the asset folder must be complete.

The golden values (outputs of the original implementations, see ``tests/golden/README.md``) live in
the repository. ``PERCEPT_GOLDEN`` overrides them: a folder holding the ``.pt`` files, or the path of
``reference_values.pt`` (the other files are then read from the same folder).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
_SHARED = ROOT.parent / "shared"

if not os.environ.get("PERCEPT_ASSETS") and (_SHARED / "assets").is_dir():
    os.environ["PERCEPT_ASSETS"] = str(_SHARED / "assets")

_GOLDEN_OVERRIDE = Path(os.environ["PERCEPT_GOLDEN"]) if os.environ.get("PERCEPT_GOLDEN") else None
if _GOLDEN_OVERRIDE is None:
    GOLDEN_DIR = ROOT / "tests" / "golden"
elif _GOLDEN_OVERRIDE.suffix == ".pt":
    GOLDEN_DIR = _GOLDEN_OVERRIDE.parent
else:
    GOLDEN_DIR = _GOLDEN_OVERRIDE
GOLDEN = _GOLDEN_OVERRIDE if _GOLDEN_OVERRIDE is not None and _GOLDEN_OVERRIDE.suffix == ".pt" else GOLDEN_DIR / "reference_values.pt"
GOLDEN_MNIST = GOLDEN_DIR / "mnist_black_background.pt"

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def _missing(message: str):
    """Fail in CI (the folders must be there); skip elsewhere with the reason."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _missing_weights(err: Exception):
    """A test needed a downloadable weight file that is not on this machine: skip with one clear reason
    outside CI, fail loudly in CI (where the asset folder must be complete)."""
    match = re.search(r"missing asset (\S+?)\. ", str(err))
    what = match.group(1) if match else " ".join(str(err).split())[:200]
    _missing(f"needs downloadable weights not on this machine ({what}): run `make assets` or set PERCEPT_ASSETS")


def _is_missing_asset(err: BaseException) -> bool:
    from percept.assets import MissingAssetError

    return isinstance(err, MissingAssetError)


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem):
    try:
        return (yield)
    except Exception as err:
        if _is_missing_asset(err):
            _missing_weights(err)
        raise


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef, request):
    try:
        return (yield)
    except Exception as err:
        if _is_missing_asset(err):
            _missing_weights(err)
        raise


@pytest.fixture(scope="session")
def assets_dir() -> Path:
    path = os.environ.get("PERCEPT_ASSETS")
    if not path or not Path(path).is_dir():
        from percept.assets import cache_dir

        if (cache_dir() / "weights").is_dir():
            return cache_dir()
        _missing("no asset folder: set PERCEPT_ASSETS to the offline folder or run `make assets`")
    return Path(path)


@pytest.fixture(scope="session")
def golden() -> dict:
    if not GOLDEN.is_file():
        _missing(f"golden reference values not found at {GOLDEN} (set PERCEPT_GOLDEN)")
    return torch.load(GOLDEN, weights_only=False)


@pytest.fixture(scope="session")
def golden_mnist() -> dict:
    """The original Watson losses on 8 MNIST digits (black background) against three kinds of input."""
    if not GOLDEN_MNIST.is_file():
        _missing(f"golden MNIST values not found at {GOLDEN_MNIST} (set PERCEPT_GOLDEN)")
    return torch.load(GOLDEN_MNIST, weights_only=False)


@pytest.fixture(scope="session")
def golden_pairs(golden) -> dict:
    """{'rgb': (input, target), 'grey': (input, target)}: 8 real 64x64 pairs, float32 in [0, 1]."""
    return {
        "rgb": (golden["rgb_input"], golden["rgb_target"]),
        "grey": (golden["grey_input"], golden["grey_target"]),
    }


def _autograd_then_closed_form(metric, x, y, upstream, before_each=None):
    """Values and input gradients of ``metric`` through autograd (the target needs a gradient), then
    through its closed-form path (a constant target): ``((d_ref, g_ref), (d, g))``."""
    results = []
    for target_needs_grad in (True, False):
        if before_each is not None:
            before_each()
        xg = x.clone().requires_grad_(True)
        d = metric(xg, y.clone().requires_grad_(target_needs_grad))
        (d * upstream).sum().backward()
        results.append((d.detach(), xg.grad))
    return results


def _backward_twice(metric, x, y):
    """Input gradients of two backward passes through one evaluation (retain_graph)."""
    xg = x.clone().requires_grad_(True)
    d = metric(xg, y)
    (first,) = torch.autograd.grad(d.sum(), xg, retain_graph=True)
    (second,) = torch.autograd.grad(d.sum(), xg)
    return first, second


@pytest.fixture(scope="session")
def autograd_then_closed_form():
    return _autograd_then_closed_form


@pytest.fixture(scope="session")
def backward_twice():
    return _backward_twice
