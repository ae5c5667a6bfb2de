"""Input validation and reduction shared by every metric.

Every metric takes NCHW float tensors in [0, 1]. Bad input raises a ``ValueError`` or
``TypeError`` that says what was wrong and what was expected, never silent garbage.

Shape, dtype and size checks cost nothing. The value checks (NaN/inf and the [0, 1] range) read two
numbers back from the device: on a GPU that is one device-to-host synchronisation per call. A training
loop that has validated its data can turn them off, as torchmetrics' ``validate_args=False`` does::

    with percept.checks.value_checks(False):     # or percept.checks.set_value_checks(False),
        loss = metric(recon, x)                   # or PERCEPT_VALUE_CHECKS=0 in the environment

>>> import torch
>>> from percept.checks import check_pair
>>> check_pair(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8) * 255, name="l2")   # doctest: +ELLIPSIS
Traceback (most recent call last):
    ...
ValueError: l2: target values span [...], expected [0, 1] (0-255 images must be divided by 255)
"""

from __future__ import annotations

import contextlib
import math
import os

import torch

from percept.color import rgb_to_lab_scaled

_value_checks = os.environ.get("PERCEPT_VALUE_CHECKS", "1").strip().lower() not in ("0", "false", "no", "off")


def set_value_checks(enabled: bool) -> bool:
    """Turn the NaN/inf and range checks of every metric on or off; returns the previous setting."""
    global _value_checks
    previous, _value_checks = _value_checks, bool(enabled)
    return previous


@contextlib.contextmanager
def value_checks(enabled: bool):
    """Context manager form of :func:`set_value_checks` (restores the previous setting on exit)."""
    previous = set_value_checks(enabled)
    try:
        yield
    finally:
        set_value_checks(previous)

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
    if not _value_checks:
        return
    # one pass over each tensor and a single host sync: aminmax propagates NaN and inf
    stats = torch.stack([*torch.aminmax(input.detach()), *torch.aminmax(target.detach())]).tolist()
    for label, (lo, hi) in zip(("input", "target"), (stats[:2], stats[2:])):
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"{name}: {label} contains NaN or inf")
        if check_range and (lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE):
            hint = " (inputs in [-1, 1] must be mapped with (x + 1) / 2)" if lo < 0 else ""
            hint = hint or (" (0-255 images must be divided by 255)" if hi > 1.5 else "")
            raise ValueError(f"{name}: {label} values span [{lo:.4g}, {hi:.4g}], expected [0, 1]{hint}")


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
