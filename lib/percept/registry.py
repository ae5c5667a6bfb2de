"""Metric name -> factory. ``get_metric("watson-dft")`` builds an ``nn.Module``.

Each entry names the class that implements it as ``"module:Class"`` plus fixed keyword arguments
(for example the backbone of an LPIPS variant), so importing :mod:`percept` stays cheap and a
metric's heavy dependencies load only when it is built.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field

import torch.nn as nn

#: options every metric understands or, where they make no sense for it, ignores
COMMON_OPTIONS = ("colorspace", "reduction", "deterministic", "pretrained", "trainable")


@dataclass(frozen=True)
class Entry:
    target: str  # "percept.metrics.watson:WatsonDFT"
    description: str
    fixed: dict = field(default_factory=dict)


_DPS_DOC = "deep perceptual similarity (Sjögren et al.) on {} features; method spatial/sort/mean/..."

METRICS: dict[str, Entry] = {
    "l1": Entry("percept.metrics.pixel:L1", "mean absolute error per image"),
    "l2": Entry("percept.metrics.pixel:L2", "mean squared error per image"),
    "psnr": Entry("percept.metrics.pixel:PSNR", "PSNR in dB, higher is more similar (identical images: 100 dB)"),
    "ssim": Entry("percept.metrics.ssim:SSIM", "1 - SSIM (11x11 Gaussian window, sigma 1.5)"),
    "ssim-skimage": Entry(
        "percept.metrics.ssim:UniformSSIM",
        "1 - SSIM as skimage's structural_similarity (7x7 uniform window): the LPIPS paper's SSIM baseline",
    ),
    "ms-ssim": Entry("percept.metrics.ssim:MSSSIM", "1 - multi-scale SSIM (5 scales)"),
    "watson-dct": Entry("percept.metrics.watson:WatsonDCT", "Watson's model on 8x8 block DCT (Czolbe et al. 2020)"),
    "watson-dft": Entry("percept.metrics.watson:WatsonDFT", "Watson's model on 8x8 block DFT, the paper's metric"),
    "adaptive": Entry("percept.metrics.adaptive:Adaptive", "Barron's adaptive robust loss on YUV-DCT coefficients"),
    "lpips-alex": Entry("percept.metrics.deep:LPIPS", "LPIPS with AlexNet features", {"net": "alex"}),
    "lpips-vgg": Entry("percept.metrics.deep:LPIPS", "LPIPS with VGG-16 features", {"net": "vgg"}),
    "lpips-squeeze": Entry("percept.metrics.deep:LPIPS", "LPIPS with SqueezeNet 1.1 features", {"net": "squeeze"}),
    "deeploss-vgg": Entry("percept.metrics.deep:Deeploss", "LPIPS-style loss retuned by Czolbe et al., VGG-16",
                          {"net": "vgg"}),
    "deeploss-squeeze": Entry("percept.metrics.deep:Deeploss", "LPIPS-style loss retuned by Czolbe et al., SqueezeNet",
                              {"net": "squeeze"}),
    "watson-vgg": Entry(
        "percept.metrics.deep:WatsonVGG",
        "Watson-style masking on VGG-16 features (experimental; Czolbe et al.'s trained weights: an asset to fetch)",
    ),
    "dps-alex": Entry("percept.metrics.deep:DPS", _DPS_DOC.format("AlexNet"), {"net": "alex"}),
    "dps-vgg": Entry("percept.metrics.deep:DPS", _DPS_DOC.format("VGG-16"), {"net": "vgg"}),
    "dps-squeeze": Entry("percept.metrics.deep:DPS", _DPS_DOC.format("SqueezeNet"), {"net": "squeeze"}),
    "elpips-vgg": Entry("percept.metrics.elpips:ELPIPS", "E-LPIPS ensemble on VGG-16 (Kettunen et al.)",
                        {"net": "vgg"}),
    "elpips-squeeze": Entry("percept.metrics.elpips:ELPIPS", "E-LPIPS ensemble on SqueezeNet", {"net": "squeeze"}),
}

ALIASES: dict[str, str] = {
    "watson-fft": "watson-dft",
    "watson": "watson-dft",
    "mse": "l2",
    "mae": "l1",
    "msssim": "ms-ssim",
    "lpips": "lpips-alex",
    "elpips": "elpips-vgg",
}


def canonical_name(name: str) -> str:
    """Resolve case and aliases; raise ``KeyError`` listing the valid names for an unknown one."""
    key = str(name).strip().lower().replace("_", "-")
    key = ALIASES.get(key, key)
    if key not in METRICS:
        valid = ", ".join(sorted(METRICS))
        aliases = ", ".join(f"{a} -> {b}" for a, b in sorted(ALIASES.items()))
        raise KeyError(f"unknown metric {name!r}. Valid names: {valid}. Aliases: {aliases}")
    return key


def metric_class(name: str) -> type[nn.Module]:
    entry = METRICS[canonical_name(name)]
    module, cls = entry.target.split(":")
    return getattr(importlib.import_module(module), cls)


def get_metric(name: str, **options) -> nn.Module:
    """Build metric ``name`` (see :func:`list_metrics`) as an ``nn.Module``.

    Common options (``colorspace``, ``reduction``, ``deterministic``, ``pretrained``, ``trainable``)
    are passed to metrics that use them and ignored by the others (an L2 loss has no weights to
    load), so one loop can build every metric with the same options. Any other option must be one the
    metric accepts, else ``TypeError`` lists the valid ones.
    """
    key = canonical_name(name)
    entry = METRICS[key]
    cls = metric_class(key)
    params = inspect.signature(cls.__init__).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = dict(entry.fixed)
    for option, value in options.items():
        if option in params or accepts_any:
            kwargs[option] = value
        elif option not in COMMON_OPTIONS:
            valid = sorted(p for p in params if p != "self" and p not in entry.fixed)
            raise TypeError(f"metric {key!r} has no option {option!r}; its options are: {', '.join(valid)}")
    return cls(**kwargs)


def list_metrics() -> dict[str, str]:
    """Metric names with a one-line description each."""
    return {name: entry.description for name, entry in METRICS.items()}
