"""Every notebook runs top to bottom in quick mode (``PERCEPT_QUICK=1``), so a broken notebook fails CI.

Notebooks only read ``results/``. They run on a copy of it (``PERCEPT_RESULTS`` points there, so figures
they save do not touch the checkout), and once more against an empty results folder, where they must show
a note instead of raising. Notebooks are executed in memory and never written back (``make figures`` is
what refreshes their stored outputs).

A notebook that takes more than a few seconds in quick mode belongs in :data:`SLOW` (or sets
``"percept": {"slow": true}`` in its metadata); ``pytest -m "not slow"`` then skips it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(ROOT.glob("notebooks/*.ipynb")) + sorted(ROOT.glob("experiments/*/analysis.ipynb"))
#: notebooks (relative paths) that take more than ~10 s in quick mode
SLOW = {"notebooks/quickstart.ipynb"}
#: notebooks that read nothing from results/ (not run against an empty results folder)
NO_RESULTS = {"notebooks/quickstart.ipynb"}
TIMEOUT = 300  # seconds per cell
#: files above this size (checkpoints of runs in progress) are not copied into the test's results folder
MAX_COPIED_BYTES = 20 * 2**20


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _is_slow(path: Path) -> bool:
    if _rel(path) in SLOW:
        return True
    try:
        return bool(json.loads(path.read_text()).get("metadata", {}).get("percept", {}).get("slow"))
    except (OSError, ValueError):
        return False


def _params(paths):
    return [pytest.param(p, id=_rel(p), marks=[pytest.mark.slow] if _is_slow(p) else []) for p in paths]


def _execute(path: Path) -> None:
    """Run ``path`` in its own folder with the project's interpreter; raise on the first failing cell."""
    if importlib.util.find_spec("percept.notebooks") is not None:
        from percept.notebooks import execute

        execute(path, timeout=TIMEOUT, write=False)
        return
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=TIMEOUT, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()


def _large_files(folder: str, names: list[str]) -> set[str]:
    skip = set()
    for name in names:
        path = Path(folder) / name
        if name == "checkpoints" or (path.is_file() and path.stat().st_size > MAX_COPIED_BYTES):
            skip.add(name)
    return skip


@pytest.fixture
def quick_env(monkeypatch):
    monkeypatch.setenv("PERCEPT_QUICK", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")


def test_notebooks_found():
    assert any(_rel(p) == "notebooks/quickstart.ipynb" for p in NOTEBOOKS)


@pytest.mark.parametrize("notebook", _params(NOTEBOOKS))
def test_notebook_runs(notebook, quick_env, monkeypatch, tmp_path):
    results = tmp_path / "results"
    if (ROOT / "results").is_dir():
        shutil.copytree(ROOT / "results", results, ignore=_large_files)
    else:
        results.mkdir()
    monkeypatch.setenv("PERCEPT_RESULTS", str(results))
    _execute(notebook)


@pytest.mark.parametrize("notebook", _params([p for p in NOTEBOOKS if _rel(p) not in NO_RESULTS]))
def test_notebook_without_results_shows_a_note(notebook, quick_env, monkeypatch, tmp_path):
    monkeypatch.setenv("PERCEPT_RESULTS", str(tmp_path / "empty-results"))
    _execute(notebook)


def _partial_vae_mnist(results: Path) -> None:
    """Results of VAE runs whose ``--eval-metrics`` did not cover every trained loss: one model scored with two
    metrics only (its other cells empty), and a metric nobody trained with."""
    import pandas as pd

    table = pd.read_csv(results / "vae_mnist" / "cross_metric.csv", index_col="trained_with")
    last = table.index[-1]
    table.loc[last, [c for c in table.columns if c not in ("l2", "ssim")]] = float("nan")
    table["l1"] = float("nan")
    table.loc[table.index[0], "l1"] = 0.1
    table.to_csv(results / "vae_mnist" / "cross_metric.csv")


@pytest.mark.skipif(not (ROOT / "results" / "vae_mnist" / "cross_metric.csv").is_file(), reason="no vae_mnist results")
def test_vae_mnist_notebook_on_partial_results(quick_env, monkeypatch, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(ROOT / "results" / "vae_mnist", results / "vae_mnist", ignore=_large_files)
    _partial_vae_mnist(results)
    monkeypatch.setenv("PERCEPT_RESULTS", str(results))
    _execute(ROOT / "experiments" / "vae_mnist" / "analysis.ipynb")
