"""What 2AFC tuning trains in a metric, and the files the tuned parameters go to.

>>> from percept.evaluate import tuned_trunk_file, tuned_weight_file
>>> tuned_weight_file("watson-dft", "rgb")                 # the original LossProvider's file name
'rgb_watson_fft_trial0.pth'
>>> tuned_weight_file("lpips-alex", "grey", mode="tune")   # a trained trunk: linear layers ...
'gray_lpips_alex_tune.pth'
>>> tuned_trunk_file("lpips-alex", "grey", mode="tune")    # ... and the trunk apart
'gray_lpips_alex_tune_trunk.pth'

- file names: :func:`tuned_weight_file` (the original's names for the default variants; the options and the
  :data:`TUNE_MODES` mode name any other) and :func:`tuned_trunk_file`;
- the trainable parts of a metric: the LPIPS-style linear 1x1 layers (:func:`lin_layers`, clamped to >= 0
  by :func:`clamp_lin_weights_`) and a deep metric's trunk (:func:`metric_trunk`, :func:`unfreeze_trunk_`);
- their state dicts in the format the original LossProvider loads (:func:`tuned_state_dict`) and the trunk
  in torchvision's layout (:func:`trunk_state_dict`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn

from percept import registry
from percept.evaluate.harness import _space, metric_family

#: what is trained (LPIPS's variants, lpips_elpips.md A7): "lin" the linear layers on a frozen ImageNet
#: trunk; "tune" the trunk too, from ImageNet weights; "scratch" the trunk too, from a random initialisation
TUNE_MODES = ("lin", "tune", "scratch")


def tuned_weight_file(name: str, colorspace: str, *, mode: str = "lin", options: Mapping | None = None) -> str:
    """File name of tuned weights: the original's names (``rgb_watson_fft_trial0.pth``,
    ``gray_pnet_lin_vgg_trial0.pth``, ...: the registry record's); LPIPS gets ``rgb_lpips_alex.pth`` etc.; DPS
    ``rgb_dps_alex_<method>[_nonorm][_layers-1-4][_<option>-<value>].pth``.

    ``mode`` "tune" / "scratch" (a trained trunk, see :class:`TuneConfig`) appends ``_tune`` / ``_scratch``
    (the trunk goes to :func:`tuned_trunk_file`); ``options`` (the metric constructor options the weights were
    tuned with, :attr:`TuneConfig.metric_options`) name the variant."""
    key = registry.canonical_name(name)
    if mode not in TUNE_MODES:
        raise ValueError(f"unknown tuning mode {mode!r}: use one of {', '.join(TUNE_MODES)}")
    family = metric_family(key)
    options = dict(options or {})
    tail = "" if mode == "lin" else f"_{mode}"
    if family != "dps" and not (tail or options):
        return registry.tuned_file(key, colorspace)  # the default variant; raises for untunable metrics
    if _space(colorspace) == "lab":
        raise ValueError(f"metric {name!r}: tuned weights exist for colour spaces rgb and grey only, not lab")
    cs = "rgb" if _space(colorspace) == "rgb" else "gray"
    if family == "dps":
        return f"{cs}_dps_{_dps_variant_name(key, options)}{tail}.pth"
    extra = "".join(f"_{k}-{_option_text(v)}" for k, v in sorted(options.items()))
    if family == "deeploss":
        return f"{cs}_pnet_lin_{key.split('-', 1)[1]}{extra}{tail}_trial0.pth"
    if family == "lpips":
        return f"{cs}_lpips_{key.split('-', 1)[1]}{extra}{tail}.pth"
    if family in ("watson", "adaptive"):
        raise ValueError(f"metric {name!r}: only its default variant is tunable (mode 'lin', no options)")
    return registry.tuned_file(key, colorspace)  # raises: no tunable parameters


def tuned_trunk_file(name: str, colorspace: str, *, mode: str, options: Mapping | None = None) -> str:
    """File name of the trained trunk of a "tune" / "scratch" run (a torchvision-layout state dict of the
    kept layers, ``features.0.weight`` ...; loadable as ``backbone_weights``): the weight file's stem + ``_trunk``."""
    if mode == "lin":
        raise ValueError("mode 'lin' keeps the trunk frozen: there is no trained trunk file")
    return tuned_weight_file(name, colorspace, mode=mode, options=options).removesuffix(".pth") + "_trunk.pth"


def _option_text(value) -> str:
    if isinstance(value, (list, tuple)):
        return "-".join(str(v) for v in value)
    return str(value)


def _dps_variant_name(key: str, options: Mapping) -> str:
    """``alex_sort``, ``resnet18_spatial-mean_nonorm_layers-2-4``: a DPS metric's network and options."""
    options = dict(options)
    net = str(options.pop("net", key.split("-", 1)[1]))
    net = {"alexnet": "alex", "vgg16": "vgg", "squeezenet1_1": "squeeze"}.get(net, net)
    parts = [net, str(options.pop("method", "spatial")).replace("+", "-")]
    if not options.pop("channel_norm", True):
        parts.append("nonorm")
    layers = options.pop("layers", None)
    if layers is not None:
        parts.append(f"layers-{_option_text(layers)}")
    parts += [f"{k}-{_option_text(v)}" for k, v in sorted(options.items())]
    return "_".join(parts)


def lin_layers(metric: nn.Module) -> list[nn.Conv2d]:
    """The LPIPS-style linear 1x1 layers of a deep metric (``metric.distance.lins``), else []."""
    distance = getattr(metric, "distance", None)
    lins = getattr(distance, "lins", None)
    return list(lins) if lins is not None else []


@torch.no_grad()
def clamp_lin_weights_(metric: nn.Module) -> None:
    """Clamp the linear layers' weights to >= 0 (only those: a frozen trunk's 1x1 convs are left alone)."""
    for conv in lin_layers(metric):
        conv.weight.clamp_(min=0)


def tuned_state_dict(metric: nn.Module, name: str) -> dict:
    """The tuned parameters in the format the original LossProvider loads.

    Watson: ``original_state_dict()`` (``t_tild``, ``alpha``, ... or ``ly.``/``lcb.``/``lcr.`` keys and
    ``w_tild`` for RGB); LPIPS / Deeploss / DPS: ``lin{i}.model.1.weight`` of shape (1, C, 1, 1) (DPS: i runs
    over the branches, then the layers); Adaptive: ``.robust_loss.adaptive_lossfun.latent_alpha`` /
    ``latent_scale`` of shape (1, 3*H*W). A trained trunk is saved apart (:func:`trunk_state_dict`).
    """
    family = metric_family(name)
    if family == "watson":
        return {k: v.detach().cpu().clone() for k, v in metric.original_state_dict().items()}
    if family in ("lpips", "deeploss", "dps"):
        return {f"lin{i}.model.1.weight": c.weight.detach().cpu().clone() for i, c in enumerate(lin_layers(metric))}
    if family == "adaptive":
        if getattr(metric, "layout", "original") != "original":
            raise ValueError("only Adaptive(layout='original') has the original weight format")
        prefix = ".robust_loss.adaptive_lossfun."
        return {
            prefix + "latent_alpha": metric.latent_alpha.detach().cpu().reshape(1, -1).clone(),
            prefix + "latent_scale": metric.latent_scale.detach().cpu().reshape(1, -1).clone(),
        }
    raise ValueError(f"metric {name!r} has no tunable parameters")


def metric_trunk(metric: nn.Module):
    """The feature extractor of a deep metric (``metric.distance.backbone``); ValueError for other metrics."""
    trunk = getattr(getattr(metric, "distance", None), "backbone", None)
    if trunk is None or not hasattr(trunk, "body"):
        raise ValueError(f"{type(metric).__name__} has no trunk (a deep-feature backbone) to train")
    return trunk


def unfreeze_trunk_(metric: nn.Module) -> None:
    """Let the trunk of a deep metric train ("tune" / "scratch"): its parameters require grad and it follows
    ``.train()`` (batch-norm statistics update, as in the references; AlexNet, VGG and SqueezeNet have none)."""
    trunk = metric_trunk(metric)
    trunk.frozen = False
    trunk.requires_grad_(True)


def trunk_state_dict(metric: nn.Module) -> dict:
    """The trunk's kept layers as a torchvision-layout state dict (``features.0.weight``, ...; the keys of the
    full model), loadable as ``backbone_weights`` by LPIPS / Deeploss / DPS (and torchvision, non-strictly)."""
    trunk = metric_trunk(metric)
    out = {}
    for key, value in trunk.body.state_dict().items():
        index, rest = key.split(".", 1)
        out[f"{trunk.prefixes[int(index)]}.{rest}"] = value.detach().cpu().contiguous().clone()
    return out


__all__ = [
    "TUNE_MODES",
    "tuned_weight_file",
    "tuned_trunk_file",
    "lin_layers",
    "clamp_lin_weights_",
    "tuned_state_dict",
    "metric_trunk",
    "unfreeze_trunk_",
    "trunk_state_dict",
]
