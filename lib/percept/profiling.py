"""Time and peak memory of a training step, optionally in a fresh process (used by ``make bench`` and the runtime
experiment; the benchmark harness itself lives in ``benchmarks/`` of the checkout).

>>> import percept, torch  # doctest: +SKIP
>>> from percept.profiling import TrainingStep, measure_steps, time_step  # doctest: +SKIP
>>> target = torch.rand(16, 3, 64, 64)  # doctest: +SKIP
>>> step = TrainingStep(percept.get_metric("watson-dft", reduction="sum"), target)  # sigmoid(param) -> target, SGD  # doctest: +SKIP
>>> row = measure_steps(step, "cpu", first_step_s=time_step(step, "cpu"), iterations=5, repeats=3)  # doctest: +SKIP
>>> row["ms_per_iter_mean"], row["peak_mib"]                     # milliseconds per step, MiB above the start  # doctest: +SKIP

**One step** (:class:`TrainingStep`) is one training iteration of the runtime experiment of Czolbe et al.
(spec czolbe.md §12): ``x = sigmoid(param)``, ``loss(x, target).backward()``, an SGD step on ``param``.
CUDA is synchronised around every timed region.

**Memory** (:class:`PeakMemory`) is the peak extra memory of the enclosed code above what the process held
at entry. CUDA: ``max_memory_allocated()`` minus ``memory_allocated()`` at entry (live tensor memory). CPU
with ``live=True``: the same quantity for the CPU allocator, from the profiler's memory timeline (every
allocation and free, in order: exact and repeatable, but slow). CPU otherwise (Linux): the peak resident
set size (VmHWM, reset at entry) minus the resident set size at entry, meaningful only in a fresh process,
which :func:`run_isolated` provides.
"""

from __future__ import annotations

import ctypes
import gc
import math
import multiprocessing as mp
import os
import re
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

#: the optimiser step size of the runtime experiment (the paper's)
LR = 1e-4


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued work (CUDA); nothing on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------------- timing
class TrainingStep:
    """One training iteration of the runtime protocol: ``loss(sigmoid(param), target)``, backward, SGD step.

    ``param`` has ``target``'s shape, drawn from ``torch.randn`` with a generator seeded ``seed`` and moved to
    ``target``'s device; ``loss`` maps (x, target) with x in [0, 1] to a scalar (reduction "sum").
    Calling the step returns the loss value (detached).
    """

    def __init__(self, loss: nn.Module | Callable, target: torch.Tensor, *, seed: int = 0, lr: float = LR):
        self.loss = loss
        self.target = target
        gen = torch.Generator().manual_seed(seed)
        self.param = torch.randn(target.shape, generator=gen).to(target.device).requires_grad_(True)
        self.opt = torch.optim.SGD([self.param], lr=lr)

    def __call__(self) -> torch.Tensor:
        self.opt.zero_grad()
        loss = self.loss(torch.sigmoid(self.param), self.target)
        loss.backward()
        self.opt.step()
        return loss.detach()


def time_step(step: Callable[[], object], device: torch.device | str) -> float:
    """Seconds one call of ``step`` takes (the device synchronised before and after)."""
    synchronize(device)
    t0 = time.perf_counter()
    step()
    synchronize(device)
    return time.perf_counter() - t0


def measure_steps(
    step: Callable[[], torch.Tensor],
    device: torch.device | str,
    *,
    first_step_s: float,
    warmup: int = 3,
    iterations: int = 20,
    repeats: int = 3,
    budget_s: float | None = None,
) -> dict:
    """Time ``repeats`` x ``iterations`` calls of ``step`` after warm-up, and their peak memory.

    ``first_step_s``: the time of a first warm-up call already made (:func:`time_step`), which counts as one
    of the ``warmup`` calls. ``budget_s`` caps the timed work on slow steps: further warm-up calls run while
    they take at most a quarter of the budget, and ``iterations`` is lowered (to no less than 1) so that
    ``repeats`` x ``iterations`` calls take about ``budget_s``. Peak memory (:class:`PeakMemory`, covering
    the timed calls) is meaningful in a fresh process only (:func:`run_isolated`).

    Returns warmup, iterations, repeats (the numbers actually run), ms_per_iter_mean, ms_per_iter_std (over
    repeats; NaN for one), mem_method, peak_mib (None where unmeasurable) and last_loss (the last call's value).
    """
    t_step = first_step_s
    n_warm = 1 + max(0, warmup - 1 if budget_s is None else min(warmup - 1, int(0.25 * budget_s / t_step)))
    for _ in range(n_warm - 1):
        t_step = time_step(step, device)
    n_iter = iterations
    if budget_s is not None:
        n_iter = max(1, min(iterations, int(budget_s / (repeats * max(t_step, 1e-9)))))
    times: list[float] = []
    last = None
    with PeakMemory(torch.device(device)) as mem:  # after warm-up: "peak above the memory held right before"
        for _ in range(repeats):
            synchronize(device)
            t0 = time.perf_counter()
            for _ in range(n_iter):
                last = step()
            synchronize(device)
            times.append((time.perf_counter() - t0) / n_iter)
    ms = [t * 1e3 for t in times]
    return {
        "warmup": n_warm,
        "iterations": n_iter,
        "repeats": len(ms),
        "ms_per_iter_mean": statistics.fmean(ms),
        "ms_per_iter_std": statistics.stdev(ms) if len(ms) > 1 else float("nan"),
        "mem_method": mem.method,
        "peak_mib": None if mem.bytes is None else mem.bytes / 2**20,
        "last_loss": float(last) if last is not None else math.nan,
    }


# ------------------------------------------------------------------------------------------------- memory
def _proc_status_kib(field_name: str) -> int | None:
    try:
        match = re.search(rf"^{field_name}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _trim_heap() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # "5": reset the peak resident set size (VmHWM) to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def peak_rss_available() -> bool:
    """Whether this system lets :class:`PeakMemory` read and reset the peak resident set size (Linux)."""
    return bool(_proc_status_kib("VmHWM")) and _reset_peak_rss()


class PeakMemory:
    """Context manager: the peak extra memory of the enclosed code, in bytes (``.bytes``; ``.method`` says how).

    ``.method`` is "cuda_max_memory_allocated", "cpu_live_tensor_bytes" (``live=True``), "peak_rss_delta" or
    "unavailable" (then ``.bytes`` is None). See the module docstring for what each measures.
    """

    def __init__(self, device: torch.device | str, live: bool = False):
        self.device = torch.device(device)
        self.live = live
        self.bytes: float | None = None
        self.method = ""
        self._profiler = None

    def __enter__(self) -> PeakMemory:
        _trim_heap()
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            self.method = "cuda_max_memory_allocated"
        elif self.live:
            from torch.profiler import ProfilerActivity, profile

            self._profiler = profile(
                activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
            )
            self._stderr = _silence_stderr()  # the profiler's C++ side logs start/stop lines on every run
            self._profiler.__enter__()
            self.method = "cpu_live_tensor_bytes"
        else:
            self._base = _proc_status_kib("VmRSS")
            self._ok = self._base is not None and _reset_peak_rss()
            self.method = "peak_rss_delta" if self._ok else "unavailable"
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            self.bytes = float(torch.cuda.max_memory_allocated(self.device) - self._base)
        elif self._profiler is not None:
            try:
                self._profiler.__exit__(*exc)
                self.bytes = _peak_live_bytes(self._profiler)
            finally:
                _restore_stderr(self._stderr)
        elif self._ok:
            peak = _proc_status_kib("VmHWM")
            self.bytes = None if peak is None else float(max(0, peak - self._base) * 1024)


def _silence_stderr() -> int | None:
    """Point file descriptor 2 at /dev/null; returns the saved descriptor (None where that fails)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        return saved
    except OSError:
        return None


def _restore_stderr(saved: int | None) -> None:
    if saved is not None:
        os.dup2(saved, 2)
        os.close(saved)


def _peak_live_bytes(profiler) -> float:
    """Peak of allocations minus frees over a profiled region (blocks allocated before it are not counted)."""
    from torch.profiler._memory_profiler import Action

    live = peak = 0
    for _, action, _, size in profiler._memory_profile().timeline:
        if action == Action.CREATE:
            live += size
        elif action == Action.DESTROY:
            live -= size
        peak = max(peak, live)
    return float(peak)


# ----------------------------------------------------------------------------------------- fresh process
_CONTEXT = None


def _mp_context(first: Callable):
    """A forkserver context whose server has imported torch, this module and ``first``'s module (fast, clean
    children); spawn where there is no forkserver."""
    global _CONTEXT
    if _CONTEXT is None:
        if "forkserver" in mp.get_all_start_methods():
            _CONTEXT = mp.get_context("forkserver")
            # imported once by the server instead of by every child (torchvision alone takes seconds); a module
            # the server cannot import (a script's sibling) is imported by each child instead
            modules = [__name__, "torchvision", "PIL.Image", "percept.compat", getattr(first, "__module__", None)]
            _CONTEXT.set_forkserver_preload([m for m in dict.fromkeys(modules) if m and m != "__main__"])
        else:
            _CONTEXT = mp.get_context("spawn")
    return _CONTEXT


def _child_main(conn, fn, args, kwargs) -> None:
    gc.freeze()  # what the server imported is never garbage: keeps gc.collect() in the child fast
    try:
        conn.send(("ok", fn(*args, **kwargs)))
    except BaseException as err:  # report everything, the parent decides
        conn.send(("error", f"{type(err).__name__}: {err}", traceback.format_exc()))
    finally:
        conn.close()


def run_isolated(fn: Callable, *args, timeout: float | None = None, **kwargs):
    """Run ``fn(*args, **kwargs)`` in a fresh process; return its result or raise ``RuntimeError``.

    ``fn`` must be importable (a module-level function) and its result picklable. A crash of the child
    (a segfault, the OOM killer) and ``timeout`` (seconds) raise ``RuntimeError`` too.
    """
    ctx = _mp_context(fn)
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_main, args=(send, fn, args, kwargs), daemon=True)
    proc.start()
    send.close()
    deadline = None if timeout is None else time.monotonic() + timeout
    message = None
    try:
        while message is None:
            if recv.poll(0.1):
                message = recv.recv()
            elif not proc.is_alive():
                if recv.poll(0.5):
                    message = recv.recv()
                else:
                    message = ("error", f"worker process died with exit code {proc.exitcode}", "")
            elif deadline is not None and time.monotonic() > deadline:
                proc.kill()
                message = ("error", f"worker timed out after {timeout:.0f} s", "")
    except EOFError:
        message = ("error", f"worker process died with exit code {proc.exitcode}", "")
    finally:
        proc.join(5)
        recv.close()
    if message[0] == "ok":
        return message[1]
    raise RuntimeError(message[1]) from None


__all__ = [
    "LR", "synchronize", "TrainingStep", "time_step", "measure_steps", "PeakMemory", "peak_rss_available",
    "run_isolated",
]  # fmt: skip
