"""How a metric runs on a device: the one strategy switch shared by the metrics that have fast paths.

The formula of a metric is written once; how a batch goes through it depends on the device:

- ``"chunked"``: a few images at a time, so that one chunk's intermediates stay in the CPU caches and
  the working memory is bounded by the chunk (the best choice on a few CPU cores);
- ``"batched"``: the whole batch in one pass of a few large kernels (GPUs are launch-bound: the number
  of kernels per step matters more than their size);
- ``"auto"`` (the default): ``"chunked"`` on CPU, ``"batched"`` on every other device.

>>> from percept.execution import resolve_strategy
>>> resolve_strategy("auto", "cpu"), resolve_strategy("auto", "cuda")
('chunked', 'batched')
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable

import torch

STRATEGIES = ("auto", "chunked", "batched")


def check_strategy(strategy: str) -> str:
    """Return ``strategy`` if it is one of :data:`STRATEGIES`, else raise a ``ValueError``."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    return strategy


def resolve_strategy(strategy: str, device: torch.device | str) -> str:
    """``"chunked"`` or ``"batched"`` for ``strategy`` on ``device`` (see the module docstring)."""
    check_strategy(strategy)
    if strategy != "auto":
        return strategy
    return "chunked" if torch.device(device).type == "cpu" else "batched"


def graph_capturing(device: torch.device) -> bool:
    """Whether the work queued for ``device`` is being recorded into a CUDA graph now (never off CUDA)."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def refuse_host_draws_in_capture(device: torch.device, what: str, instead: str) -> None:
    """Raise a ``RuntimeError`` if ``device``'s work is being captured into a CUDA graph.

    For metrics that draw random numbers on the host in every call (Watson's random shift, E-LPIPS's
    transformations): the draw made while capturing would be part of the graph, and every replay would
    repeat it, silently, instead of drawing anew. ``what`` names the metric, ``instead`` says what to use.
    """
    if graph_capturing(device):
        raise RuntimeError(
            f"{what} draws its randomness on the host in every call; inside a CUDA graph the draw made during "
            f"capture would be replayed unchanged in every replay. {instead}"
        )


def no_autocast(device_type: str):
    """A context that turns autocast off for ``device_type`` where it is on, and does nothing otherwise.

    The Watson, Adaptive and SSIM formulas compute in float32 (float16 would overflow the masking powers;
    bfloat16 statistics cancel in E[x^2] - mu^2). Entering ``torch.autocast`` costs host time in every
    call, so it is entered only when autocast is on; a device type that autocast does not know (``"meta"``)
    has nothing to turn off.
    """
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except TypeError:  # a torch whose is_autocast_enabled takes no device type
        enabled = torch.is_autocast_enabled()
    except RuntimeError:  # a device type autocast does not know
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, enabled=False) if enabled else contextlib.nullcontext()


def cached_constant(maxsize: int = 64) -> Callable[[Callable], Callable]:
    """``functools.lru_cache`` for the builders of constant tensors (and frozen modules) that formulas reuse.

    The value is built outside inference mode and without grad: a constant first needed under
    ``torch.inference_mode()`` must still serve a later step that autograd records (an inference tensor
    cannot be saved for backward). Never modify a returned tensor in place.
    """

    def decorate(build: Callable) -> Callable:
        @functools.lru_cache(maxsize=maxsize)
        @functools.wraps(build)
        def cached(*args, **kwargs):
            with torch.inference_mode(False), torch.no_grad():
                return build(*args, **kwargs)

        return cached

    return decorate
