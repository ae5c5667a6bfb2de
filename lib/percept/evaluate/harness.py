"""Percept metrics as the BAPPS harness uses them: :class:`HarnessMetric` and :func:`build_metric`.

>>> from percept.evaluate import build_metric, metric_family
>>> m = build_metric("psnr")                       # a similarity: negated, so lower means closer
>>> x = torch.rand(2, 3, 64, 64)                   # RGB patches in [0, 1]
>>> m(x, x.flip(0)).shape                          # one distance per image pair
torch.Size([2])
>>> metric_family("watson-dft"), metric_family("l2")
('watson', None)

Harness semantics for percept metrics (:class:`HarnessMetric`):

- patches are RGB in [0, 1]; evaluation calls ``metric(input=p0|p1, target=ref)`` (the reference is the
  masking target) and JND ``metric(input=p1, target=p0)``, with the metric's per-image output
  (``reduction="none"``), ``deterministic=True``;
- the grey colour space converts both patches with BT.601 luma (:func:`percept.color.rgb_to_grey`,
  0.299 R + 0.587 G + 0.114 B) to one channel; the original harness used (0.3, 0.59, 0.11) for Watson and,
  for Deeploss, converted after the input normalisation;
- similarities (``higher_is_better``, e.g. PSNR) are negated so that lower always means more similar;
- Watson metrics use percept's per-image luminance masking unless ``batch_luminance=True``, which
  restores the original's mean over the batch (then the batch size matters: the original evaluated in
  unshuffled batches of 128);
- the Czolbe et al. harness mapped Watson inputs with ``(x + 1) / 2`` although its data were already in
  [0, 1] (czolbe.md P3); that mapping is **not** applied here: patches go to every metric in [0, 1].
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from percept import registry
from percept.color import rgb_to_grey

#: samples per distance when E-LPIPS is evaluated on 2AFC (the E-LPIPS paper's protocol)
ELPIPS_SAMPLES = 50


def metric_family(name: str) -> str | None:
    """ "watson", "lpips", "deeploss", "dps", "adaptive" (the tunable families, by the registry record) or None."""
    rec = registry.record(name)
    return rec.family if rec.tuned_file is not None or rec.family == "dps" else None


def _space(colorspace: str) -> str:
    from percept.checks import normalize_colorspace

    return normalize_colorspace(colorspace, lab=True)  # "lab": RGB patches, the metric converts (l2, ssim)


def weight_options(name: str, path: str | Path) -> dict:
    """Constructor option that loads weights from ``path`` for metric ``name`` (the record's ``weights_option``)."""
    rec = registry.record(name)
    if rec.weights_option is None:
        raise ValueError(
            f"metric {rec.name!r} has no option to load weights from a file; tuned weights cannot replace its "
            "shipped ones"
        )
    return {rec.weights_option: str(path)}


class HarnessMetric(nn.Module):
    """A percept metric as the 2AFC harness uses it: RGB patches (N, 3, H, W) in [0, 1] in, (N,) out.

    Converts to grey (BT.601) for ``colorspace="grey"`` (``"lab"``: RGB goes to the metric, which converts it
    to CIELAB itself: l2, ssim, ssim-skimage) and negates similarities, so that lower always
    means "closer to the target". ``metric`` must be built with ``reduction="none"``.
    """

    def __init__(self, metric: nn.Module, name: str, colorspace: str) -> None:
        super().__init__()
        self.metric = metric
        self.name = registry.canonical_name(name)
        self.colorspace = _space(colorspace)
        self.sign = -1.0 if getattr(metric, "higher_is_better", False) else 1.0

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.colorspace == "grey":
            input, target = rgb_to_grey(input), rgb_to_grey(target)
        d = self.metric(input, target)
        if d.numel() != input.shape[0]:
            raise ValueError(f"{self.name}: expected one distance per image, got shape {tuple(d.shape)}")
        d = d.reshape(input.shape[0])
        return -d if self.sign < 0 else d

    def pair(self, p0: torch.Tensor, p1: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(d(p0, target), d(p1, target)), each (N,), for 2AFC.

        A stochastic metric that compares several images under shared draws (E-LPIPS's ``sample_distances``)
        evaluates p0 and p1 under the **same** random transformation and dropout masks in each draw, and
        averages its ``n`` draws: the correlated sampling of the E-LPIPS 2AFC protocol (spec D4), so the
        comparison of d0 and d1 is not drowned in independent noise (identical patches tie exactly). Any
        other metric scores p0 and p1 as one batch of 2N against the target repeated."""
        sample = getattr(self.metric, "sample_distances", None)
        if sample is not None and getattr(self.metric, "stochastic", False):
            if self.colorspace == "grey":
                p0, p1, target = rgb_to_grey(p0), rgb_to_grey(p1), rgb_to_grey(target)
            d = sample((p0, p1), target).mean(dim=0)  # (n, 2, N) -> (2, N)
            d0, d1 = d[0], d[1]
            return (-d0, -d1) if self.sign < 0 else (d0, d1)
        n = p0.shape[0]
        d = self(torch.cat([p0, p1]), torch.cat([target, target]))
        return d[:n], d[n:]

    def extra_repr(self) -> str:
        return f"name={self.name!r}, colorspace={self.colorspace!r}, sign={self.sign:+.0f}"


def build_metric(
    name: str,
    colorspace: str = "rgb",
    *,
    weights: str | Path | None = None,
    batch_luminance: bool = False,
    pretrained: bool = True,
    trainable: bool = False,
    backbone_weights: str | None = None,
    device: torch.device | str = "cpu",
    probe_size: int | None = 64,
    **options,
) -> HarnessMetric:
    """Build registry metric ``name`` for the harness (``reduction="none"``, ``deterministic=True``).

    E-LPIPS is the exception: it is evaluated as its ensemble, ``ELPIPS_SAMPLES`` draws per distance.

    Args:
        weights: a file of tuned weights in the original format (see
            :func:`percept.evaluate.weights.tuned_state_dict`), loaded instead of the shipped ones.
        batch_luminance: Watson only: the original's batch-pooled luminance masking.
        backbone_weights: metrics with a backbone only (others ignore it): "imagenet", "random" or a checkpoint
            (default: as ``pretrained``).
        probe_size: run the metric once on two random patches of this size, so that a metric that cannot
            take them fails here rather than mid-run (None: skip).
        options: further constructor options of the metric.
    """
    key = registry.canonical_name(name)
    family = metric_family(key)
    opts = dict(colorspace=_space(colorspace), reduction="none", deterministic=True, pretrained=pretrained,
                trainable=trainable)
    if family == "watson":
        opts["batch_luminance"] = batch_luminance
    if registry.record(key).stochastic:
        # E-LPIPS is its random ensemble: the spec's 2AFC protocol averages 50 samples per distance
        opts.update(deterministic=False, n=ELPIPS_SAMPLES)
    if backbone_weights is not None and registry.takes(key, "backbone_weights"):
        opts["backbone_weights"] = backbone_weights
    if weights is not None:
        opts.update(weight_options(key, weights))
    opts.update(options)
    harness = HarnessMetric(registry.get_metric(key, device=device, **opts), key, colorspace)
    if not trainable:
        harness.eval()
    if probe_size:
        g = torch.Generator().manual_seed(0)
        x = torch.rand(2, 3, probe_size, probe_size, generator=g).to(device)
        with torch.no_grad():
            harness(x, x.flip(0))
    return harness


__all__ = ["ELPIPS_SAMPLES", "metric_family", "weight_options", "HarnessMetric", "build_metric"]
