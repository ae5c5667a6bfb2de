"""Input validation and reduction shared by every metric.

Every metric takes NCHW float tensors in [0, 1]. Bad input raises a ``ValueError`` or
``TypeError`` that says what was wrong and what was expected, never silent garbage.

Shape, dtype and size checks cost nothing. The value checks (NaN/inf and the [0, 1] range) need two
numbers from the device. On CPU they are read at once. On a GPU, reading them at once would stop the host
until the device catches up, once per call, so by default (mode ``"auto"``) only the first call of each
metric is checked that way; later calls compute the numbers on the device, copy them to pinned host memory
without waiting, and a later call (of any metric) reads them once the copy has landed, raising the error
there and naming the call that got the bad input (:func:`flush_value_checks` waits for the outstanding
ones, e.g. at the end of an epoch). The modes, for :func:`set_value_checks`, :func:`value_checks` or the
environment variable ``PERCEPT_VALUE_CHECKS``:

- ``"auto"`` (default; ``True``): immediate on CPU and other devices, deferred after the first call on CUDA;
- ``"sync"``: immediate on every call (the error comes from the call itself; one host sync per call on a GPU);
- ``"deferred"``: deferred after each metric's first call on every device (on CPU: read at the next call);
- ``"off"`` (``False``, ``0``): no value checks, as torchmetrics' ``validate_args=False``::

    with percept.checks.value_checks(False):     # or percept.checks.set_value_checks("off"),
        loss = metric(recon, x)                   # or PERCEPT_VALUE_CHECKS=0 in the environment

The functional Adaptive's checks of its ``alpha`` and ``scale`` follow the same mode (:func:`check_values`).

>>> import torch
>>> from percept.checks import check_pair
>>> check_pair(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8) * 255, name="l2")   # doctest: +ELLIPSIS
Traceback (most recent call last):
    ...
ValueError: l2: target values span [...], expected [0, 1] (0-255 images must be divided by 255)
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import warnings
from collections.abc import Callable
from typing import NamedTuple

import torch

from percept import execution
from percept.color import rgb_to_lab_scaled

#: the value-check modes (see the module docstring)
VALUE_CHECK_MODES = ("auto", "sync", "deferred", "off")
_MODE_ALIASES = {"1": "auto", "true": "auto", "yes": "auto", "on": "auto", "": "auto",
                 "0": "off", "false": "off", "no": "off", "none": "off"}


def _parse_mode(mode) -> str:
    if isinstance(mode, bool):
        return "auto" if mode else "off"
    name = str(mode).strip().lower()
    name = _MODE_ALIASES.get(name, name)
    if name not in VALUE_CHECK_MODES:
        raise ValueError(f"unknown value-check mode {mode!r}: use one of {', '.join(VALUE_CHECK_MODES)} (or True/False)")
    return name


def _mode_from_environment() -> str:
    value = os.environ.get("PERCEPT_VALUE_CHECKS", "auto")
    try:
        return _parse_mode(value)
    except ValueError as err:
        warnings.warn(f"PERCEPT_VALUE_CHECKS: {err}; using 'auto'", stacklevel=2)
        return "auto"


_mode = _mode_from_environment()


def set_value_checks(mode: bool | str) -> str:
    """Set how every metric checks for NaN/inf and the [0, 1] range: ``"auto"`` (or True), ``"sync"``,
    ``"deferred"`` or ``"off"`` (or False); see the module docstring. Returns the previous mode."""
    global _mode
    previous, _mode = _mode, _parse_mode(mode)
    return previous


def get_value_checks() -> str:
    """The current value-check mode (one of :data:`VALUE_CHECK_MODES`)."""
    return _mode


@contextlib.contextmanager
def value_checks(mode: bool | str):
    """Context manager form of :func:`set_value_checks` (restores the previous mode on exit)."""
    previous = set_value_checks(mode)
    try:
        yield
    finally:
        set_value_checks(previous)


class _Pending(NamedTuple):
    stats: torch.Tensor  # the numbers to judge, on the host once ``ready`` is None or done
    ready: object  # a torch.cuda.Event recorded after the copy, or None (CPU: nothing to wait for)
    judge: Callable[[list[float], str], None]  # raises on bad numbers; the str ends its message
    call: int


#: deferred checks not read yet, oldest first; past this many the oldest is waited for
MAX_PENDING = 16
_pending: collections.deque = collections.deque()
_checked_at_once: set[str] = set()  # metrics whose first call was checked immediately
_calls = 0  # value-checked calls so far (named in a deferred error)


def _defer(stats: torch.Tensor, judge: Callable[[list[float], str], None], call: int) -> None:
    if stats.device.type == "cuda":
        host = torch.empty(stats.shape, dtype=stats.dtype, pin_memory=True)
        host.copy_(stats, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record(torch.cuda.current_stream(stats.device))
        stats = host
    else:
        ready = None
    _pending.append(_Pending(stats, ready, judge, call))
    while len(_pending) > MAX_PENDING:
        _resolve(_pending.popleft(), wait=True)


def _resolve(item: _Pending, wait: bool) -> None:
    if item.ready is not None and wait:
        item.ready.synchronize()
    since = _calls - item.call
    when = f"{since} call(s) before this one" if since else "the latest call"
    item.judge(item.stats.tolist(),
               f", in an earlier call (value-checked call {item.call}, {when}; after a metric's first call "
               "the check is read later, so as not to stop the GPU: set_value_checks('sync') raises in the "
               "call itself)")


def _drain(wait: bool = False) -> None:
    """Read the deferred checks whose copy has landed (all of them with ``wait``), oldest first."""
    while _pending:
        item = _pending[0]
        if not wait and item.ready is not None and not item.ready.query():
            return
        _pending.popleft()
        _resolve(item, wait)


def flush_value_checks() -> None:
    """Wait for the deferred value checks still outstanding and raise the first failure (if any)."""
    _drain(wait=True)


def _raise_if_bad(stats: list[float], name: str, check_range: bool, where: str = "") -> None:
    for label, (lo, hi) in zip(("input", "target"), (stats[:2], stats[2:])):
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"{name}: {label} contains NaN or inf{where}")
        if check_range and (lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE):
            hint = " (inputs in [-1, 1] must be mapped with (x + 1) / 2)" if lo < 0 else ""
            hint = hint or (" (0-255 images must be divided by 255)" if hi > 1.5 else "")
            raise ValueError(f"{name}: {label} values span [{lo:.4g}, {hi:.4g}], expected [0, 1]{hint}{where}")


#: values this far outside [0, 1] are still accepted (rounding in resizes, float16, ...)
RANGE_TOLERANCE = 1e-3

REDUCTIONS = ("sum", "mean", "none")

_GREY_NAMES = {"grey", "gray", "la", "l", "greyscale", "grayscale", "grey-scale", "gray-scale"}
_RGB_NAMES = {"rgb", "color", "colour"}


_LAB_NAMES = {"lab", "cielab", "l*a*b*"}
#: the metrics that offer ``colorspace="lab"`` (the LPIPS paper's L2 and SSIM baselines)
LAB_METRICS = ("l2", "ssim", "ssim-skimage")


def normalize_colorspace(colorspace: str, *, lab: bool = False) -> str:
    """Map the accepted spellings to ``"rgb"`` or ``"grey"`` (and ``"lab"`` where ``lab`` is True).

    ``"LA"`` (the original's name) and ``"gray"`` both mean grey. The original code silently
    treated ``"gray"`` as RGB; here it means what it says. ``"lab"`` (RGB input, compared in CIELAB) is
    accepted only by the metrics that pass ``lab=True`` (:data:`LAB_METRICS`); the others reject it.
    """
    name = str(colorspace).lower()
    if name in _GREY_NAMES:
        return "grey"
    if name in _RGB_NAMES:
        return "rgb"
    if name in _LAB_NAMES:
        if lab:
            return "lab"
        raise ValueError(
            f"colorspace {colorspace!r} is offered only by {', '.join(LAB_METRICS)} (the LPIPS paper's Lab "
            "baselines); use 'rgb' (3 channels) or 'grey' (1 channel, alias 'LA') here"
        )
    hint = ", or 'lab' (RGB input compared in CIELAB)" if lab else ""
    raise ValueError(
        f"unknown colorspace {colorspace!r}: use 'rgb' (3 channels) or 'grey' (1 channel, alias 'LA'){hint}"
    )


def channels_of(colorspace: str) -> int:
    """Input channels of a colorspace: 3 for "rgb" and "lab" (RGB input converted inside), 1 for "grey"."""
    return 1 if normalize_colorspace(colorspace, lab=True) == "grey" else 3


def check_lab_input(input: torch.Tensor, target: torch.Tensor, name: str = "metric") -> None:
    """``colorspace="lab"`` takes RGB: raise a clear error for any other channel count (e.g. grey images)."""
    for label, x in (("input", input), ("target", target)):
        if isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[1] != 3:
            raise ValueError(
                f"{name}: colorspace 'lab' converts RGB images to CIELAB and needs 3 channels, but {label} has "
                f"{x.shape[1]} (shape {tuple(x.shape)}); grey images have no a*, b*: use colorspace='grey'"
            )


def check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}: use one of {', '.join(REDUCTIONS)}")
    return reduction


def check_pair(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    channels: int | None = None,
    min_size: int = 1,
    multiple_of: int | None = None,
    check_range: bool = True,
    name: str = "metric",
) -> None:
    """Validate an (input, target) pair of NCHW image batches in [0, 1].

    Args:
        input, target: float tensors of the same shape (N, C, H, W).
        channels: required C (3 for RGB, 1 for grey), or None for any.
        min_size: smallest allowed H and W.
        multiple_of: H and W must be multiples of this (block transforms), or None.
        check_range: reject values outside [0, 1] beyond ``RANGE_TOLERANCE``.
        name: metric name used in messages.
    """
    for label, x in (("input", input), ("target", target)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name}: {label} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(
                f"{name}: {label} has dtype {x.dtype}; expected a float tensor in [0, 1] "
                "(convert uint8 images with x.float() / 255)"
            )
        if x.dim() != 4:
            raise ValueError(f"{name}: {label} must be a 4-D NCHW batch, got shape {tuple(x.shape)}")
    if input.shape != target.shape:
        raise ValueError(f"{name}: input and target shapes differ: {tuple(input.shape)} vs {tuple(target.shape)}")
    n, c, h, w = input.shape
    if n == 0:
        raise ValueError(f"{name}: empty batch")
    if channels is not None and c != channels:
        space = "RGB" if channels == 3 else "grey"
        raise ValueError(
            f"{name}: expected {channels} channel(s) for colorspace {space}, got {c} (shape {tuple(input.shape)}); "
            "pick the matching colorspace ('rgb' for 3 channels, 'grey' for 1)"
        )
    if h < min_size or w < min_size:
        raise ValueError(f"{name}: images of {h}x{w} are too small; at least {min_size}x{min_size} is needed")
    if multiple_of is not None and (h % multiple_of or w % multiple_of):
        raise ValueError(
            f"{name}: height and width must be multiples of {multiple_of}, got {h}x{w}; "
            f"crop or pad the images (e.g. to {h - h % multiple_of}x{w - w % multiple_of})"
        )
    _check_values(input, target, name, check_range)


def _check_values(input: torch.Tensor, target: torch.Tensor, name: str, check_range: bool) -> None:
    def stats() -> torch.Tensor:  # one pass over each tensor: aminmax propagates NaN and inf
        return torch.stack([*torch.aminmax(input.detach()), *torch.aminmax(target.detach())])

    def judge(values: list[float], where: str) -> None:
        _raise_if_bad(values, name, check_range, where)

    check_values(name, input.device, stats, judge)


def check_values(
    key: str,
    device: torch.device,
    stats: Callable[[], torch.Tensor],
    judge: Callable[[list[float], str], None],
) -> None:
    """Judge numbers computed on ``device`` as the value-check mode says: at once, later, or not at all.

    ``stats()`` computes a small tensor on the device (skipped in mode "off"); ``judge(values, where)``
    raises a ``ValueError`` for bad values, ending its message with ``where`` (empty when judged at once,
    else which earlier call it was). ``key`` names the check: its first call is judged at once in every mode.
    """
    global _calls
    mode = _mode
    if mode == "off":
        return
    if execution.graph_capturing(device):
        return  # nothing can be read back inside a CUDA graph capture (the warm-up calls are checked)
    deferred = mode == "deferred" or (mode == "auto" and device.type == "cuda")
    deferred = deferred and not torch.compiler.is_compiling()  # traced: read at once, a graph break as before
    _calls += 1
    if _pending:
        _drain()
    values = stats()
    if deferred and key in _checked_at_once:
        _defer(values, judge, _calls)
        return
    judge(values.tolist(), "")
    _checked_at_once.add(key)


def metric_options(colorspace: str, reduction: str, *, lab: bool = False) -> tuple[str, int, str]:
    """The constructor prologue of a metric module: ``(colorspace, channels, reduction)``, checked.

    ``colorspace`` normalised by :func:`normalize_colorspace` (``lab`` says whether "lab" is offered),
    ``channels`` the input channels it takes (:func:`channels_of`), ``reduction`` one of :data:`REDUCTIONS`.
    """
    space = normalize_colorspace(colorspace, lab=lab)
    return space, channels_of(space), check_reduction(reduction)


def prepare_pair(
    input: torch.Tensor,
    target: torch.Tensor,
    colorspace: str | None,
    *,
    lab: bool = False,
    min_size: int = 1,
    name: str = "metric",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check an (input, target) pair for ``colorspace`` and return it, in CIELAB / 100 for ``"lab"``.

    ``colorspace``: None (any channel count), "rgb" (3 channels), "grey" (1 channel, alias "LA") or, where
    ``lab`` is True, "lab" (RGB input converted by :func:`percept.color.rgb_to_lab_scaled` after the checks).
    The checks are :func:`check_pair`'s: NCHW floats in [0, 1] of the same shape, H and W >= ``min_size``.
    """
    space = None if colorspace is None else normalize_colorspace(colorspace, lab=lab)
    if space == "lab":
        check_lab_input(input, target, name=name)
    channels = None if space is None else channels_of(space)
    check_pair(input, target, channels=channels, min_size=min_size, name=name)
    if space == "lab":
        return rgb_to_lab_scaled(input), rgb_to_lab_scaled(target)
    return input, target


def compute_dtype(module: torch.nn.Module) -> torch.dtype | None:
    """The floating dtype of ``module``'s parameters or buffers (what it computes in), or None."""
    for t in module.parameters():
        if t.is_floating_point():
            return t.dtype
    for t in module.buffers():
        if t.is_floating_point():
            return t.dtype
    return None


def to_compute_dtype(module: torch.nn.Module, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Cast float inputs of any precision (float64, float16, bfloat16) to the module's dtype, so that a
    network metric computes in its own precision instead of failing inside a convolution. Differentiable."""
    dtype = compute_dtype(module)
    if dtype is None:
        return tensors
    return tuple(t if t.dtype == dtype else t.to(dtype) for t in tensors)


def reduce(per_image: torch.Tensor, reduction: str) -> torch.Tensor:
    """Reduce per-image distances of shape (N,) to a scalar ("sum", "mean") or keep them ("none")."""
    if reduction == "sum":
        return per_image.sum()
    if reduction == "mean":
        return per_image.mean()
    if reduction == "none":
        return per_image
    raise ValueError(f"unknown reduction {reduction!r}: use one of {', '.join(REDUCTIONS)}")
