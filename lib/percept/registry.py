"""Every metric of percept: one record per metric and the one function that builds them.

>>> import percept
>>> loss = percept.get_metric("watson-dft", colorspace="grey", reduction="none")   # an nn.Module
>>> percept.registry.record("watson-fft").original
('Watson-fft', 'watson-dft')

A :class:`MetricRecord` holds everything known about a metric outside its module: its name and aliases,
family, one-line description, the class that implements it (``"module:Class"``, imported only when the
metric is built, so ``import percept`` stays cheap), the options its name fixes (the backbone of an LPIPS
variant), whether it is random by default, how tuned weights are loaded and named, its name in the
original LossProvider, the options that make it behave as the original did in the papers' experiments,
its Adam learning rate for image optimisation and its VAE lambda. The training, evaluation, command-line,
benchmark and experiment code read these records instead of keeping their own tables.

:func:`get_metric` is the one constructor every consumer uses. Options it checks before the metric sees
them (see :data:`COMMON_OPTIONS`):

- an option the metric does not take raises :class:`MetricOptionError` (a ``ValueError``) naming the
  metric, the option and the options it takes. A common option that a metric does not have is accepted
  only at the value that already describes the metric: ``deterministic=True`` (it draws no random numbers),
  ``trainable=False`` (it has no trainable parameters), ``strategy="auto"`` (it has one implementation)
  and either value of ``pretrained`` (it has no learned weights to load or leave out);
- an option the name fixes (``net`` of ``lpips-vgg``) may be repeated, not changed;
- a metric that is not trainable comes back frozen (``requires_grad=False``) and in eval mode.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import torch
import torch.nn as nn

#: the common options: one default and one meaning for every metric that has them (README, "Options shared
#: by every metric"). ``deterministic`` defaults to True, except for a metric whose definition is random
#: (``MetricRecord.stochastic``: E-LPIPS, an expectation over random transformations), where it is False.
COMMON_OPTIONS: Mapping[str, object] = MappingProxyType(
    {
        "colorspace": "rgb",  # "rgb" (N, 3, H, W), "grey" (N, 1, H, W; alias "LA"), "lab" where offered
        "reduction": "mean",  # "mean", "sum" over the batch, "none": (N,)
        "pretrained": True,  # the published trained weights (and ImageNet backbone); False: initial values
        "deterministic": True,  # no random numbers are drawn in forward (False: the metric's random transforms)
        "trainable": False,  # parameters require grad, tuning dropout on in train mode; else frozen + eval
        "strategy": "auto",  # implementation chosen by device; "chunked"/"batched" force one
    }
)

#: values of a common option that hold for a metric without that option (see the module docstring)
_NEUTRAL: Mapping[str, tuple] = MappingProxyType(
    {"deterministic": (True,), "trainable": (False,), "pretrained": (True, False), "strategy": ("auto",)}
)
_WHY_NOT = {
    "deterministic": "it draws no random numbers, so only deterministic=True applies",
    "trainable": "it has no trainable parameters, so only trainable=False applies",
    "strategy": "it has one implementation, so only strategy='auto' applies",
}


class _ImageSize:
    """Placeholder in paper options for (H, W) of the images the metric will see."""

    def __repr__(self) -> str:
        return "<(H, W) of the images>"


#: stands for the (H, W) of ``image_shape`` in :attr:`MetricRecord.paper_options`
IMAGE_SIZE = _ImageSize()


@dataclass(frozen=True)
class MetricRecord:
    """What percept knows about one metric outside its module.

    Attributes:
        name: canonical registry name ("watson-dft").
        target: the implementing class as ``"module:Class"``.
        family: "pixel", "ssim", "watson", "adaptive", "lpips", "deeploss", "watson-vgg", "dps" or "elpips".
        description: one line for ``percept list``.
        fixed: constructor options fixed by the name (``{"net": "vgg"}``).
        aliases: other accepted names.
        stochastic: random by default (``deterministic`` defaults to False): E-LPIPS.
        colorspaces: the accepted ``colorspace`` values ("lab": RGB input compared in CIELAB).
        weights_option: the constructor option that loads weights from a file (tuned or other), if any.
        tuned_file: file name of 2AFC-tuned weights, ``{cs}`` = "rgb"/"gray" (the original's names); set
            for the metrics :mod:`percept.evaluate` can tune.
        original: its names in the original LossProvider of Czolbe et al.: the advertised one first, then
            the other spellings the original accepted (empty: not in the original).
        paper_options: options that make it behave as the original did in the papers' experiments
            (:data:`IMAGE_SIZE` stands for the images' (H, W)); used by ``style="paper"``.
        lr: Adam learning rate for optimising images with it (convergence experiment, czolbe.md §13: l2, ssim,
            deeploss, watson-dft; watson-dct, adaptive and lpips are our choice).
        vae_k: the VAE lambda = e^k of Czolbe et al.: ``{model: {code version: k}}`` (model "mnist"/"celeba",
            version "head" or "paper", spec §11).
        vae_k_ours: k chosen here for a loss without a paper lambda (None: none chosen).
        units: how its per-image value relates to the original LossProvider's ``reduction='sum'``: "image"
            (the original summed these values over the batch), "pixels" (ours is a mean over C*H*W, the
            original summed elements) or "batch-mean" (the original's 'sum' was a mean over the batch).
        identical: its value on identical images; None: a constant floor > 0 from epsilon terms (the same
            for every image of a size and never above the value on different images).
        min_size: smallest H and W its definition allows, where fixed (MS-SSIM: 161); None: the metric's
            own error says (it depends on options or backbone).
    """

    name: str
    target: str
    family: str
    description: str
    fixed: Mapping = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    stochastic: bool = False
    colorspaces: tuple[str, ...] = ("rgb", "grey")
    weights_option: str | None = None
    tuned_file: str | None = None
    original: tuple[str, ...] = ()
    paper_options: Mapping = field(default_factory=dict)
    lr: float | None = None
    vae_k: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    vae_k_ours: float | None = None
    units: str = "image"
    identical: float | None = 0.0
    min_size: int | None = None

    def cls(self) -> type[nn.Module]:
        """The implementing class (imports its module); :class:`MetricUnavailableError` if it cannot."""
        module, _, attr = self.target.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise MetricUnavailableError(f"metric {self.name!r} is not available in this installation ({err})") from err


_DPS_DOC = "deep perceptual similarity (Sjögren et al.) on {} features; method spatial/sort/mean/..."
_WATSON_PAPER = {"batch_luminance": True, "luminance_floor": 0.0}  # the original formula exactly (czolbe.md §11)


def _records(*records: MetricRecord) -> dict[str, MetricRecord]:
    return {r.name: r for r in records}


#: every metric, by canonical name, in the order ``percept list`` shows them
METRICS: dict[str, MetricRecord] = _records(
    MetricRecord("l1", "percept.metrics.pixel:L1", "pixel", "mean absolute error per image", aliases=("mae",),
                 original=("L1",), units="pixels", vae_k_ours=0.0, min_size=1),
    MetricRecord("l2", "percept.metrics.pixel:L2", "pixel", "mean squared error per image", aliases=("mse",),
                 colorspaces=("rgb", "grey", "lab"), original=("L2",), units="pixels", vae_k_ours=0.0, lr=1e-4,
                 min_size=1),
    MetricRecord("psnr", "percept.metrics.pixel:PSNR", "pixel",
                 "PSNR in dB, higher is more similar (identical images: 100 dB)", identical=100.0, min_size=1),
    MetricRecord("ssim", "percept.metrics.ssim:SSIM", "ssim", "1 - SSIM (11x11 Gaussian window, sigma 1.5)",
                 colorspaces=("rgb", "grey", "lab"), original=("SSIM",), paper_options={"padding": "zeros"},
                 units="batch-mean", lr=1e-4,
                 vae_k={"mnist": {"head": 9, "paper": 9}, "celeba": {"head": 13, "paper": 12}}),
    MetricRecord("ssim-skimage", "percept.metrics.ssim:UniformSSIM", "ssim",
                 "1 - SSIM as skimage's structural_similarity (7x7 uniform window): the LPIPS paper's SSIM baseline",
                 colorspaces=("rgb", "grey", "lab")),
    MetricRecord("ms-ssim", "percept.metrics.ssim:MSSSIM", "ssim", "1 - multi-scale SSIM (5 scales)",
                 aliases=("msssim",), min_size=161),
    MetricRecord("watson-dct", "percept.metrics.watson:WatsonDCT", "watson",
                 "Watson's model on 8x8 block DCT (Czolbe et al. 2020)", original=("Watson-dct", "watson"),
                 weights_option="weights", tuned_file="{cs}_watson_dct_trial0.pth", paper_options=_WATSON_PAPER,
                 lr=1e-3, identical=None),
    MetricRecord("watson-dft", "percept.metrics.watson:WatsonDFT", "watson",
                 "Watson's model on 8x8 block DFT, the paper's metric", aliases=("watson-fft", "watson"),
                 original=("Watson-fft", "watson-dft"), weights_option="weights",
                 tuned_file="{cs}_watson_fft_trial0.pth", paper_options=_WATSON_PAPER, lr=1e-3, identical=None,
                 vae_k={"mnist": {"head": 0, "paper": 1}, "celeba": {"head": 0, "paper": 1}}),
    MetricRecord("adaptive", "percept.metrics.adaptive:Adaptive", "adaptive",
                 "Barron's adaptive robust loss on YUV-DCT coefficients", original=("Adaptive",),
                 tuned_file="{cs}_adaptive_trial0.pth",
                 paper_options={"pretrained": False, "image_size": IMAGE_SIZE, "layout": "original"}, lr=1e-4,
                 identical=None, vae_k={"mnist": {"head": 0, "paper": 0}, "celeba": {"head": 3, "paper": 2}}),
    MetricRecord("lpips-alex", "percept.metrics.deep:LPIPS", "lpips", "LPIPS with AlexNet features",
                 fixed={"net": "alex"}, aliases=("lpips",), weights_option="lin_weights",
                 tuned_file="{cs}_lpips_alex.pth", lr=1e-4),
    MetricRecord("lpips-vgg", "percept.metrics.deep:LPIPS", "lpips", "LPIPS with VGG-16 features",
                 fixed={"net": "vgg"}, weights_option="lin_weights", tuned_file="{cs}_lpips_vgg.pth", lr=1e-4),
    MetricRecord("lpips-squeeze", "percept.metrics.deep:LPIPS", "lpips", "LPIPS with SqueezeNet 1.1 features",
                 fixed={"net": "squeeze"}, weights_option="lin_weights", tuned_file="{cs}_lpips_squeeze.pth",
                 lr=1e-4),
    MetricRecord("deeploss-vgg", "percept.metrics.deep:Deeploss", "deeploss",
                 "LPIPS-style loss retuned by Czolbe et al., VGG-16", fixed={"net": "vgg"}, original=("Deeploss-vgg",),
                 weights_option="lin_weights", tuned_file="{cs}_pnet_lin_vgg_trial0.pth", lr=1e-4,
                 vae_k={"mnist": {"head": 9, "paper": 9}, "celeba": {"head": 10, "paper": 10}}),
    MetricRecord("deeploss-squeeze", "percept.metrics.deep:Deeploss", "deeploss",
                 "LPIPS-style loss retuned by Czolbe et al., SqueezeNet", fixed={"net": "squeeze"},
                 original=("Deeploss-squeeze",), weights_option="lin_weights",
                 tuned_file="{cs}_pnet_lin_squeeze_trial0.pth", lr=1e-4,
                 vae_k={"mnist": {"head": 9, "paper": 9}, "celeba": {"head": 9, "paper": 9}}),
    MetricRecord("watson-vgg", "percept.metrics.watson_vgg:WatsonVGG", "watson-vgg",
                 "Watson-style masking on VGG-16 features (experimental; Czolbe et al.'s trained weights: an asset "
                 "to fetch; pretrained=False: initial values)", original=("Watson-vgg", "watson-deep"),
                 weights_option="weights", identical=None),
    MetricRecord("dps", "percept.metrics.deep:DPS", "dps",
                 "Sjögren et al.'s spatial / sort / mean variants on any torchvision network (net=..., default "
                 "AlexNet; Pihlgren et al.'s layers for other networks)", weights_option="lin_weights"),
    MetricRecord("dps-alex", "percept.metrics.deep:DPS", "dps", _DPS_DOC.format("AlexNet"), fixed={"net": "alex"},
                 weights_option="lin_weights"),
    MetricRecord("dps-vgg", "percept.metrics.deep:DPS", "dps", _DPS_DOC.format("VGG-16"), fixed={"net": "vgg"},
                 weights_option="lin_weights"),
    MetricRecord("dps-squeeze", "percept.metrics.deep:DPS", "dps", _DPS_DOC.format("SqueezeNet"),
                 fixed={"net": "squeeze"}, weights_option="lin_weights"),
    MetricRecord("elpips-vgg", "percept.metrics.elpips:ELPIPS", "elpips",
                 "E-LPIPS ensemble on VGG-16 (Kettunen et al.)",
                 fixed={"net": "vgg"}, aliases=("elpips",), stochastic=True, weights_option="lin_weights"),
    MetricRecord("elpips-squeeze", "percept.metrics.elpips:ELPIPS", "elpips", "E-LPIPS ensemble on SqueezeNet",
                 fixed={"net": "squeeze"}, stochastic=True, weights_option="lin_weights"),
)


# ------------------------------------------------------------------------------------------------ errors
class UnknownMetricError(KeyError):
    """An unknown metric name; the message lists the valid names and aliases."""

    exit_code = 2

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class MetricOptionError(ValueError):
    """An option the metric does not take, or a value of a fixed or common option it cannot have."""

    exit_code = 2


class MetricUnavailableError(RuntimeError):
    """The metric's module cannot be imported in this installation."""

    exit_code = 1


# ----------------------------------------------------------------------------------------------- lookup
def aliases() -> dict[str, str]:
    """alias -> canonical name, for every record."""
    return {a: r.name for r in METRICS.values() for a in r.aliases}


def canonical_name(name: str) -> str:
    """Resolve case, ``_`` and aliases; an unknown name raises :class:`UnknownMetricError` listing the valid ones."""
    key = str(name).strip().lower().replace("_", "-")
    key = aliases().get(key, key)
    if key not in METRICS:
        valid = ", ".join(sorted(METRICS))
        shown = ", ".join(f"{a} -> {b}" for a, b in sorted(aliases().items()))
        raise UnknownMetricError(f"unknown metric {name!r}. Valid names: {valid}. Aliases: {shown}")
    return key


def record(name: str) -> MetricRecord:
    """The record of metric ``name`` (any alias or case)."""
    return METRICS[canonical_name(name)]


def by_original(name: str) -> MetricRecord:
    """The record of a metric by its name in the original LossProvider (case-insensitive, e.g. "Watson-fft",
    "watson" = Watson-DCT as in the original); ``ValueError`` listing the original names otherwise."""
    key = str(name).lower()
    for rec in METRICS.values():
        if key in (n.lower() for n in rec.original):
            return rec
    names = ", ".join(r.original[0] for r in METRICS.values() if r.original)
    raise ValueError(f"unknown loss {name!r}; choose one of {names}")


def metric_class(name: str) -> type[nn.Module]:
    """The class implementing metric ``name``."""
    return record(name).cls()


def list_metrics() -> dict[str, str]:
    """Metric names with a one-line description each."""
    return {name: rec.description for name, rec in METRICS.items()}


def options(name: str) -> dict[str, object]:
    """The options metric ``name`` takes, with their defaults (the options its name fixes left out)."""
    rec = record(name)
    params = inspect.signature(rec.cls().__init__).parameters
    return {
        p.name: p.default
        for p in params.values()
        if p.name != "self" and p.name not in rec.fixed and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


def takes(name: str, option: str) -> bool:
    """Whether metric ``name`` has constructor option ``option`` (a neutral common option does not count)."""
    return option in options(name)


def is_stochastic(name: str, opts: Mapping | None = None) -> bool:
    """Whether metric ``name`` built with ``opts`` draws random numbers per call (by its record, or
    ``deterministic`` when given)."""
    rec = record(name)
    opts = opts or {}
    if "deterministic" in opts:
        return not opts["deterministic"]
    return rec.stochastic


def paper_options(name: str, image_shape: tuple[int, ...] | None = None) -> dict:
    """The record's paper options with :data:`IMAGE_SIZE` replaced by (H, W) of ``image_shape`` ((C, H, W))."""
    rec = record(name)
    out = {}
    for key, value in rec.paper_options.items():
        if value is IMAGE_SIZE:
            if image_shape is None:
                raise ValueError(f"metric {rec.name!r}: its paper options need image_shape=(C, H, W) (option {key})")
            value = tuple(int(s) for s in tuple(image_shape)[-2:])
        out[key] = value
    return out


def tuned_file(name: str, colorspace: str) -> str:
    """File name of 2AFC-tuned weights of ``name`` in ``colorspace`` ("rgb" or "grey"): the original's names."""
    from percept.checks import normalize_colorspace

    rec = record(name)
    if rec.tuned_file is None:
        tunable = ", ".join(r.name for r in METRICS.values() if r.tuned_file)
        raise ValueError(f"metric {rec.name!r} has no tunable parameters (tunable: {tunable})")
    space = normalize_colorspace(colorspace, lab=True)
    if space == "lab":
        raise ValueError(f"metric {rec.name!r}: tuned weights exist for colour spaces rgb and grey only, not lab")
    return rec.tuned_file.format(cs="rgb" if space == "rgb" else "gray")


def k_exponents() -> dict[str, dict[str, dict[str, float]]]:
    """The VAE lambda exponents of every record as ``{model: {version: {metric: k}}}``."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for rec in METRICS.values():
        for model, versions in rec.vae_k.items():
            for version, k in versions.items():
                out.setdefault(model, {}).setdefault(version, {})[rec.name] = k
    return out


# ------------------------------------------------------------------------------------------------ build
def _check_options(rec: MetricRecord, given: Mapping) -> dict:
    """The keyword arguments for the class: fixed options plus ``given``, checked (see the module docstring)."""
    takes_ = options(rec.name)
    kwargs = dict(rec.fixed)
    for option, value in given.items():
        if option in rec.fixed:
            if value != rec.fixed[option]:
                others = [r.name for r in METRICS.values() if r.target == rec.target and r.fixed.get(option) == value]
                hint = f"; use {others[0]!r}" if others else ""
                raise MetricOptionError(
                    f"metric {rec.name!r} fixes {option}={rec.fixed[option]!r}; got {option}={value!r}{hint}"
                )
        elif option in takes_:
            kwargs[option] = value
        elif option in _NEUTRAL and value in _NEUTRAL[option]:
            continue  # already true of this metric (e.g. deterministic=True for L2)
        else:
            why = f" ({_WHY_NOT[option]})" if option in _WHY_NOT else ""
            have = ", ".join(takes_) or "none"
            raise MetricOptionError(
                f"metric {rec.name!r} does not take option {option}={value!r}{why}; its options are: {have}"
            )
    return kwargs


def get_metric(
    name: str,
    *,
    style: str = "library",
    image_shape: tuple[int, int, int] | None = None,
    device: torch.device | str | None = None,
    **options,
) -> nn.Module:
    """Build metric ``name`` (see :func:`list_metrics`) as an ``nn.Module`` taking NCHW images in [0, 1].

    Args:
        name: registry name or alias, any case.
        style: "library" (the metric's defaults) or "paper": the record's :attr:`MetricRecord.paper_options`
            first (the original's behaviour in the papers' experiments), then ``options``.
        image_shape: (C, H, W) of the images, needed by paper options that depend on it (Adaptive).
        device: move the metric there.
        options: the metric's constructor options (see the module docstring and :data:`COMMON_OPTIONS`).

    Raises :class:`UnknownMetricError` (a ``KeyError``), :class:`MetricOptionError` (a ``ValueError``),
    :class:`MetricUnavailableError`, or the metric's own errors (``percept.assets.MissingAssetError`` when
    its weights are not on this machine, ``ValueError`` for a bad option value).
    """
    rec = record(name)
    if style not in ("library", "paper"):
        raise ValueError(f"unknown style {style!r}: use 'library' or 'paper'")
    given = (paper_options(rec.name, image_shape) if style == "paper" else {}) | dict(options)
    kwargs = _check_options(rec, given)
    metric = rec.cls()(**kwargs)
    if not kwargs.get("trainable", False):
        metric.requires_grad_(False)
        metric.eval()
    return metric.to(device) if device is not None else metric


__all__ = [
    "COMMON_OPTIONS",
    "IMAGE_SIZE",
    "METRICS",
    "MetricOptionError",
    "MetricRecord",
    "MetricUnavailableError",
    "UnknownMetricError",
    "aliases",
    "by_original",
    "canonical_name",
    "get_metric",
    "is_stochastic",
    "k_exponents",
    "list_metrics",
    "metric_class",
    "options",
    "paper_options",
    "record",
    "takes",
    "tuned_file",
]
