"""The deep-feature metrics as plain functions: :func:`lpips`, :func:`deeploss`, :func:`dps`, :func:`elpips`.

>>> import torch
>>> from percept.functional import lpips
>>> x, y = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
>>> d = lpips(x, y)                                  # x, y: (N, 3, H, W) in [0, 1]; the batch mean
>>> lpips(x, y, net="squeeze", reduction="none").shape
torch.Size([2])
>>> lpips(x, y, spatial=True).shape                  # a distance map
torch.Size([2, 1, 64, 64])

As torchmetrics' functional LPIPS, each function builds its frozen metric module (:mod:`percept.metrics.deep`,
:mod:`percept.metrics.elpips`) once per (options, device) and keeps it in a small cache, so a call costs one
backbone pass, not a weight load. One cached module serves every caller: the modules change no state in their
forward pass (the target cache is off). ``options`` are the module's own (``colorspace``, ``lin``,
``spatial``, ``pretrained``, ``backbone_weights`` as a path, ...); they must be hashable (a state dict is not:
build the module for that). Gradients flow to ``input`` and ``target``; the networks' parameters stay
frozen. Missing weights raise :class:`percept.assets.MissingAssetError` naming the file and how to fetch it.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from percept import checks
from percept.execution import cached_constant

__all__ = ["lpips", "deeploss", "dps", "elpips", "clear_cache"]


@cached_constant(8)
def _module(kind: str, device: torch.device, options: tuple[tuple[str, object], ...]) -> nn.Module:
    from percept.metrics.deep import DPS, LPIPS, Deeploss
    from percept.metrics.elpips import ELPIPS

    cls = {"lpips": LPIPS, "deeploss": Deeploss, "dps": DPS, "elpips": ELPIPS}[kind]
    metric = cls(reduction="none", **dict(options)).to(device).eval()
    metric.requires_grad_(False)
    return metric


def _metric(kind: str, input: torch.Tensor, options: dict) -> nn.Module:
    """The cached ``kind`` module with ``options`` on ``input``'s device."""
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
    if "reduction" in options:
        raise TypeError("pass reduction as its own argument")
    key = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in options.items()))
    try:
        hash(key)
    except TypeError:
        raise TypeError(
            f"{kind}(): options must be hashable to cache the metric, got {sorted(options)}; build the module "
            f"(percept.get_metric) for state-dict weights"
        ) from None
    return _module(kind, input.device, key)


def clear_cache() -> None:
    """Drop the cached metric modules (and the memory they hold)."""
    _module.cache_clear()


def lpips(
    input: torch.Tensor, target: torch.Tensor, net: str = "alex", version: str = "0.1", *, reduction: str = "mean",
    **options,
) -> torch.Tensor:
    """LPIPS (Zhang et al. 2018) with its published weights: :class:`percept.metrics.deep.LPIPS`.

    Args:
        input, target: (N, C, H, W) in [0, 1], C = 3 (1 with ``colorspace="grey"``), H, W at least the
            backbone's receptive field (AlexNet 31 px, VGG-16 16 px, SqueezeNet 17 px).
        net: "alex", "vgg" or "squeeze"; version: "0.1" or "0.0".
        reduction: "mean", "sum" or "none" (shape (N,)); ignored with ``spatial=True`` ((N, 1, H, W) map).
        options: further LPIPS options, e.g. ``lin=False`` (the uncalibrated channel sum), ``spatial=True``.
    """
    reduction = checks.check_reduction(reduction)
    d = _metric("lpips", input, dict(options, net=net, version=version))(input, target)
    return d if options.get("spatial") else checks.reduce(d, reduction)


def deeploss(
    input: torch.Tensor, target: torch.Tensor, net: str = "vgg", *, reduction: str = "mean", **options
) -> torch.Tensor:
    """Czolbe et al.'s Deeploss-VGG / -Squeeze with their trained weights (:class:`percept.metrics.deep.Deeploss`);
    input, target (N, C, H, W) in [0, 1]; ``net`` "vgg" or "squeeze"; reduction and options as :func:`lpips`."""
    reduction = checks.check_reduction(reduction)
    return checks.reduce(_metric("deeploss", input, dict(options, net=net))(input, target), reduction)


def dps(
    input: torch.Tensor, target: torch.Tensor, net: str = "alex", method: str = "spatial", *, reduction: str = "mean",
    **options,
) -> torch.Tensor:
    """Sjögren et al.'s deep perceptual similarity on an ImageNet backbone (:class:`percept.metrics.deep.DPS`).

    Args:
        input, target: (N, C, H, W) in [0, 1].
        net: "alex", "vgg", "squeeze" or a torchvision classification model (with ``layers=``).
        method: "spatial", "sort", "mean", "spatial+sort" or "spatial+mean".
        reduction: as :func:`lpips`.
        options: further DPS options, e.g. ``channel_norm=False``, ``layers=(2, 4, 5, 7)``.
    """
    reduction = checks.check_reduction(reduction)
    d = _metric("dps", input, dict(options, net=net, method=method))(input, target)
    return d if options.get("spatial") else checks.reduce(d, reduction)


def elpips(
    input: torch.Tensor,
    target: torch.Tensor,
    net: str = "vgg",
    *,
    n: int = 1,
    generator: torch.Generator | None = None,
    reduction: str = "mean",
    **options,
) -> torch.Tensor:
    """E-LPIPS (Kettunen et al. 2019, :class:`percept.metrics.elpips.ELPIPS`): the mean over ``n`` random draws of
    the transformation ensemble and the network dropout, each shared by input and target.

    Args:
        input, target: (N, C, H, W) in [0, 1].
        net: "vgg" or "squeeze".
        n: draws averaged per call; generator: RNG of the draws (CPU or the input's device; None: torch's).
        reduction: as :func:`lpips`.
        options: further ELPIPS options, e.g. ``deterministic=True`` (the E-LPIPS package's plain LPIPS).
    """
    reduction = checks.check_reduction(reduction)
    metric = _metric("elpips", input, dict(options, net=net))
    d = metric.sample_distances(input, target, n=n, generator=generator)[:, 0].mean(dim=0)
    return checks.reduce(d, reduction)
