"""Every example in the library's docstrings runs (doctest). Examples that need data, weights or a long run are
marked ``# doctest: +SKIP`` in place, so that a reader sees which lines are illustrations only."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest
import torch

import percept


def _modules_with_examples() -> list[str]:
    names = ["percept"] + [m.name for m in pkgutil.walk_packages(percept.__path__, "percept.")]
    out = []
    for name in names:
        if name.endswith("__main__"):
            continue
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin and ">>>" in open(spec.origin, encoding="utf-8").read():
            out.append(name)
    return sorted(out)


MODULES = _modules_with_examples()


def test_the_examples_are_found():
    assert "percept.functional.pixel" in MODULES and "percept.registry" in MODULES


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples_run(module, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                # examples that write files ("results/x/...") write them here
    torch.manual_seed(0)
    result = doctest.testmod(importlib.import_module(module), extraglobs={"torch": torch}, verbose=False,
                             optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {module} failed (see above)"
