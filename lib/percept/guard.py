"""Safety for careless runs, shared by the ``percept`` command and every experiment driver.

- :func:`run_guarded`: a failure ends in one line on stderr naming the problem and the fix, with a
  non-zero exit status; the traceback only with ``--debug`` or ``PERCEPT_DEBUG=1``.
- :class:`RunLock`: a run folder is used by one run at a time (a lock file holding the owner's pid; a
  lock left by a killed process is taken over, a live owner gives :class:`RunLockedError`).
- :func:`atomic_output`: files are written to a temporary file in the same folder and renamed over the
  destination only on success, so a failing or killed run never leaves a truncated result behind.
- :func:`clean_stale_temps`: removes the temporary files that a killed run left in its folder.

>>> from percept.guard import RunLock, atomic_output
>>> with RunLock("run"):                            # a second run into "run" now stops with RunLockedError
...     with atomic_output("run/table.csv", "w") as f:   # renamed into place only when the block succeeds
...         _ = f.write("a,b")
>>> open("run/table.csv").read()
'a,b'
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("percept.guard")

DEBUG_ENV = "PERCEPT_DEBUG"
LOCK_NAME = ".percept-run.lock"
#: temporary files of :func:`atomic_output` (and of the trainer): ``.<name>.tmp<pid>``
_TEMP = re.compile(r"^\..+\.tmp(\d+)$")
_FULL_DISK = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


class RunError(Exception):
    """A problem the user can fix (bad flag, busy folder, existing results): one line, no traceback."""

    exit_code = 2


class RunLockedError(RunError):
    """Another live process is using the run folder."""


class OutputError(RunError):
    """A result file could not be written (full disk, permissions); the previous file is intact."""

    exit_code = 1


# --------------------------------------------------------------------------------------------------
# one-line errors
# --------------------------------------------------------------------------------------------------


def debug_requested(argv: list[str] | None = None) -> bool:
    """``--debug`` among ``argv`` or ``PERCEPT_DEBUG`` set to anything but ``""``/``"0"``."""
    return "--debug" in (argv or ()) or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def is_disk_full(err: BaseException | None) -> bool:
    """Whether ``err`` or an exception it was raised from is ENOSPC/EDQUOT (torch wraps them)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in _FULL_DISK:
            return True
        err = err.__cause__ or err.__context__
    return False


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exception types whose message is written for the user: shown without the type name."""
    found: list[type[BaseException]] = [RunError]
    for module, names in (
        ("percept.data", ("DatasetError",)),
        ("percept.assets", ("MissingAssetError", "ChecksumError")),
        ("percept.vae.checkpoint", ("CheckpointError", "CheckpointMismatch")),
        ("percept.io", ("ImageReadError", "ImageSizeError")),
    ):
        mod = sys.modules.get(module)  # only modules already in use can have raised
        for name in names:
            cls = getattr(mod, name, None) if mod is not None else None
            if isinstance(cls, type):
                found.append(cls)
    return tuple(found)


def _one_line(text: str) -> str:
    """A message on one line; for an error re-raised from a DataLoader worker, its original last line."""
    if "Original Traceback" in text:
        lines = [line for line in text.splitlines() if line.strip()]
        text = re.sub(r"^[\w.]+(Error|Exception): ", "", lines[-1].strip()) if lines else text
    return " ".join(text.split())


def describe_error(err: BaseException) -> tuple[int, str]:
    """(exit status, one-line message) for an exception that ends a command."""
    message = _one_line(str(err))
    if isinstance(err, _user_errors()):
        return int(getattr(err, "exit_code", 2)), message
    if is_disk_full(err):
        where = f" writing {err.filename}" if isinstance(err, OSError) and err.filename else ""
        return 1, f"no space left on the device{where}: free some space or write to another folder"
    if isinstance(err, OSError) and err.filename:
        return 1, f"{err.filename}: {err.strerror or message}"
    hint = f"run with --debug or {DEBUG_ENV}=1 for the traceback"
    return int(getattr(err, "exit_code", 1)), f"{type(err).__name__}: {message} ({hint})"


def run_guarded(fn: Callable[[], int | None], *, prog: str, debug: bool = False) -> int:
    """Run ``fn()`` and return its exit status; an exception becomes one line on stderr and a non-zero
    status (130 for Ctrl-C), or propagates with its traceback when ``debug`` or ``PERCEPT_DEBUG`` is set."""
    debug = debug or debug_requested()
    try:
        return int(fn() or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `percept pairs DIR | head`
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (silence the flush at exit)
        except OSError:
            pass
        return 141
    except Exception as err:
        if debug:
            raise
        code, message = describe_error(err)
        print(f"{prog}: error: {message}", file=sys.stderr)
        return code


def driver_main(main: Callable[[list[str]], int | None], argv: list[str] | None = None, *, prog: str) -> int:
    """:func:`run_guarded` for an experiment driver's ``main(argv)``; ``--debug`` in ``argv`` is handed on
    (declare it with :func:`add_debug_flag`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_guarded(lambda: main(argv), prog=prog, debug=debug_requested(argv))


def add_debug_flag(parser) -> None:
    parser.add_argument(
        "--debug", action="store_true", help=f"show the full traceback on errors (or set {DEBUG_ENV}=1)"
    )


def add_run_flags(parser, *, default_out: str, quick: str, out_help: str | None = None, device: str = "auto") -> None:
    """The flags every experiment driver shares: ``--out`` (None: the driver's default folder, named in the
    help as ``default_out``), ``--quick`` (help ``quick``), ``--seed`` (0), ``--device``, ``--no-progress`` and
    ``--debug``."""
    parser.add_argument("--out", type=Path, default=None, help=f"{out_help or 'output folder'} (default {default_out})")
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=device)
    parser.add_argument("--no-progress", action="store_true")
    add_debug_flag(parser)


# --------------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------------


def temp_path(path: str | os.PathLike) -> Path:
    """The temporary sibling that :func:`atomic_output` writes before renaming: ``.<name>.tmp<pid>``."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


@contextmanager
def atomic_output(path: str | os.PathLike, mode: str = "w", **open_kwargs) -> Iterator:
    """Open a temporary file beside ``path``; on success flush it to disk and rename it over ``path``.

    On any exception (or Ctrl-C) the temporary file is removed and ``path`` keeps its old content. A full
    disk becomes :class:`OutputError` naming ``path``.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(err, Exception) and is_disk_full(err):
            raise OutputError(
                f"could not write {path}: no space left on the device (the previous file, if any, is unchanged); "
                "free some space or write to another folder"
            ) from err
        raise


def clean_stale_temps(folder: str | os.PathLike, *, recursive: bool = False) -> list[Path]:
    """Remove temporary files (``.<name>.tmp<pid>``) that no live process of this machine writes: what a
    run killed during a save left behind. Returns the removed paths."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.rglob(".*.tmp*") if recursive else folder.glob(".*.tmp*"):
        match = _TEMP.match(path.name)
        if not match or not path.is_file():
            continue
        pid = int(match.group(1))
        if pid == os.getpid() or _alive(pid):
            continue
        try:
            size = path.stat().st_size
            path.unlink()
        except OSError:
            continue
        log.warning("removed %s (%.1f MB) left by an interrupted run", path, size / 1e6)
        removed.append(path)
    return removed


# --------------------------------------------------------------------------------------------------
# run-folder locks
# --------------------------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


class RunLock:
    """Exclusive use of a run folder by one process: ``with RunLock(folder): ...``.

    The lock file ``<folder>/.percept-run.lock`` holds the owner's pid, host, start time and command line.
    A second run raises :class:`RunLockedError` naming the owner; a lock whose owner (on this host) no
    longer exists, as after a kill, is taken over with a warning. The owner removes it when done.
    """

    def __init__(self, folder: str | os.PathLike, wait: float = 0.0):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.held = False
        self.wait = wait  # seconds to wait for a live owner to finish before giving up

    def _owner(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def acquire(self) -> RunLock:
        deadline = time.monotonic() + self.wait
        while True:
            try:
                return self._acquire_once()
            except RunLockedError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))

    def _acquire_once(self) -> RunLock:
        if self.folder.exists() and not self.folder.is_dir():
            raise RunError(f"{self.folder} is a file, not a folder: choose another output folder (--out)")
        self.folder.mkdir(parents=True, exist_ok=True)
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join(sys.argv),
        }
        tmp = temp_path(self.path)
        tmp.write_text(json.dumps(record) + "\n")
        try:
            for _ in range(5):
                try:
                    os.link(tmp, self.path)  # atomic: fails if a lock exists; the lock is never half-written
                    self.held = True
                    return self
                except FileExistsError:
                    owner = self._owner()
                    if owner is None:
                        continue  # released meanwhile
                    if self._stale(owner):
                        log.warning(
                            "%s: taking over the lock of process %s, which no longer runs", self.folder, owner.get("pid")
                        )
                        self.path.unlink(missing_ok=True)
                        continue
                    raise RunLockedError(
                        f"{self.folder} is in use by another run (pid {owner.get('pid', '?')} on "
                        f"{owner.get('host', '?')}, started {owner.get('started', '?')}): wait for it to finish or "
                        f"write to another folder (--out); if that run no longer exists, delete {self.path}"
                    ) from None
            raise RunLockedError(f"could not take the lock {self.path}: another run keeps taking it")
        finally:
            tmp.unlink(missing_ok=True)

    def _stale(self, owner: dict) -> bool:
        if not owner:  # unreadable: only stale once it is clearly old
            try:
                return time.time() - self.path.stat().st_mtime > 60
            except OSError:
                return True
        if owner.get("host") != socket.gethostname():
            return False  # cannot tell for another machine
        pid = int(owner.get("pid", 0) or 0)
        return pid != os.getpid() and not _alive(pid)

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        owner = self._owner()
        if owner and owner.get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


__all__ = [
    "RunError",
    "RunLockedError",
    "OutputError",
    "run_guarded",
    "driver_main",
    "add_debug_flag",
    "add_run_flags",
    "describe_error",
    "debug_requested",
    "is_disk_full",
    "atomic_output",
    "temp_path",
    "clean_stale_temps",
    "RunLock",
]
