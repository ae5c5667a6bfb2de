"""Execute notebooks in place: ``python -m percept.notebooks NB [NB ...]``.

    python -m percept.notebooks experiments/runtime/analysis.ipynb
    python -m percept.notebooks notebooks/*.ipynb experiments/*/analysis.ipynb    # make figures

Each notebook runs top to bottom with nbclient and is written back with its outputs. A notebook that
breaks is not written back (the file keeps its last good state); the failing cell's error is printed and
the exit status is 1 (the remaining notebooks still run).

- Kernel: always the Python running this module (the project's virtual environment), through a kernel
  spec created for the run in a temporary folder: a user-wide ``python3`` kernel pointing at another
  interpreter is never picked up.
- Working directory: the notebook's own folder, as in Jupyter, so a notebook behaves the same when run
  here and when opened interactively. Notebooks find the repository root by looking upwards for
  ``pyproject.toml`` and read results from ``$PERCEPT_RESULTS`` (default ``<repo>/results``) when set.
- Environment: inherited, so ``PERCEPT_QUICK=1`` (set by callers that want quick mode; notebooks may
  ignore it), ``PERCEPT_RESULTS`` and ``PERCEPT_ASSETS`` reach the kernel.
- Timeout: 600 s per cell (``--timeout``).

>>> from percept.notebooks import main
>>> main(["experiments/vae_mnist/analysis.ipynb"])         # 0 when every notebook ran  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

KERNEL_NAME = "percept-runner"
DEFAULT_TIMEOUT = 600


class NotebookError(RuntimeError):
    """A cell of a notebook raised; the message holds the cell's error."""


def _kernel_spec_dir(tmp: Path) -> Path:
    """A Jupyter data dir with one kernel spec: this interpreter with ipykernel."""
    spec = tmp / "kernels" / KERNEL_NAME
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": f"Python ({sys.executable})",
                "language": "python",
                "metadata": {"debugger": False},
            }
        )
    )
    return tmp


def execute(path: str | os.PathLike, *, timeout: int = DEFAULT_TIMEOUT, write: bool = True) -> float:
    """Run notebook ``path`` in its folder, write it back with outputs, return the seconds it took.

    Raises :class:`NotebookError` (with the failing cell's error) if a cell raises; the file is then
    left untouched.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    path = Path(path).resolve()
    nb = nbformat.read(path, as_version=4)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="percept-kernel-") as tmp:
        old = os.environ.get("JUPYTER_PATH")
        os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(_kernel_spec_dir(Path(tmp))), old]))
        os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # silence the debugger's frozen-module note
        try:
            client = NotebookClient(
                nb,
                timeout=timeout,
                kernel_name=KERNEL_NAME,
                resources={"metadata": {"path": str(path.parent)}},
            )
            if os.name == "posix":  # local sockets instead of unencrypted TCP on localhost
                from jupyter_client.manager import KernelManager

                client.km = KernelManager(kernel_name=KERNEL_NAME, transport="ipc", ip=str(Path(tmp) / "kernel"))
            client.execute()
        except (CellExecutionError, CellTimeoutError, DeadKernelError) as err:
            raise NotebookError(f"{path}: {err}") from None
        finally:
            if old is None:
                os.environ.pop("JUPYTER_PATH", None)
            else:
                os.environ["JUPYTER_PATH"] = old
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    if write:
        nbformat.write(nb, path)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m percept.notebooks", description=__doc__.split("\n")[0])
    parser.add_argument("notebooks", nargs="+", help="notebook files (.ipynb)")
    parser.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT, help="seconds per cell (default 600)")
    args = parser.parse_args(argv)
    failed = []
    for nb in args.notebooks:
        if not Path(nb).is_file():
            print(f"{nb}: no such notebook", file=sys.stderr)
            failed.append(nb)
            continue
        print(f"executing {nb} ...", flush=True)
        try:
            seconds = execute(nb, timeout=args.timeout)
        except NotebookError as err:
            print(f"FAILED {err}", file=sys.stderr)
            failed.append(nb)
            continue
        print(f"  done in {seconds:.0f} s: {nb}", flush=True)
    if failed:
        print(f"{len(failed)} of {len(args.notebooks)} notebook(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
