"""Deep-feature metrics: LPIPS, Deeploss and the deep perceptual similarity (DPS) methods.

One mechanism (:class:`percept.metrics.deep_core.DeepDistance`) gives LPIPS (Zhang et al. 2018), Czolbe et
al.'s Deeploss and the five DPS methods of Sjögren et al. 2022:

    input scaling -> backbone taps -> [modify: spatial / sort / mean] -> [channel normalisation]
    -> squared difference -> [learned non-negative per-channel weights | channel sum]
    -> mean over positions (or an upsampled spatial map) -> sum over layers (and branches)

Every metric takes NCHW float tensors in [0, 1] (the LPIPS [-1, 1] mapping happens inside) and returns one
value per image, reduced by ``reduction``; lower means more similar (``higher_is_better = False``).
``spatial=True`` (LPIPS, DPS with method "spatial") returns the (N, 1, H, W) distance map instead and
ignores ``reduction``.

>>> import torch
>>> from percept.metrics.deep import DPS, LPIPS
>>> x, y = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)    # (N, 3, H, W) in [0, 1]
>>> lpips = LPIPS(net="alex", pretrained=False, reduction="none")  # random AlexNet, linear weights 1
>>> lpips(x, y).shape, bool(lpips(x, x).abs().max() < 1e-6)
(torch.Size([2]), True)
>>> LPIPS(net="squeeze", pretrained=False, spatial=True)(x, y).shape
torch.Size([2, 1, 64, 64])
>>> dps = DPS(net="alex", method="spatial+sort", pretrained=False, reduction="none")
>>> bool((dps(x, y) > dps(x, x)).all())
True
>>> published = LPIPS(net="vgg")                                   # the published weights  # doctest: +SKIP

The shared core (input scaling, NaN-safe channel normalisation, strict loading of linear weights, the batched
pair pass and the target cache, with the fixes of the reference implementations' known flaws and the speed
measures) is :mod:`percept.metrics.deep_core`; Watson-VGG is :mod:`percept.metrics.watson_vgg`. Their public
names are re-exported here, so ``from percept.metrics.deep import WatsonVGG, DeepDistance, ...`` keeps working.

Images smaller than the backbone's receptive field (AlexNet 31 px, VGG-16 16 px, SqueezeNet 17 px for the
LPIPS taps; ``metric.backbone.min_size`` in general) raise a ``ValueError`` naming the minimum size.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn

from percept import assets, checks
from percept.backbones import FeatureExtractor, canonical_arch, lpips_net
from percept.metrics.deep_core import (
    EPS,
    LPIPS_SCALE,
    LPIPS_SHIFT,
    DeepDistance,
    DeepFeatures,
    InputScaling,
    backbone_for,
    modify_features,
    normalize_channels,
    prepare_pair,
    read_lin_weights,
    scale_input,
    squared_difference_mean,
)
from percept.metrics.watson_vgg import WatsonVGG

__all__ = [
    "EPS",
    "LPIPS_SHIFT",
    "LPIPS_SCALE",
    "METHODS",
    "scale_input",
    "InputScaling",
    "normalize_channels",
    "squared_difference_mean",
    "modify_features",
    "read_lin_weights",
    "backbone_for",
    "prepare_pair",
    "DeepFeatures",
    "DeepDistance",
    "LPIPS",
    "Deeploss",
    "WatsonVGG",
    "DPS",
]

#: the DPS comparison methods of Sjögren et al.
METHODS = ("spatial", "sort", "mean", "spatial+sort", "spatial+mean")


class _DeepMetric(nn.Module):
    """Input checks, grey handling, reduction; subclasses set ``self.distance`` (a DeepDistance)."""

    higher_is_better = False
    name = "deep"

    def _setup(self, colorspace: str, reduction: str) -> None:
        self.colorspace = checks.normalize_colorspace(colorspace)
        self.reduction = checks.check_reduction(reduction)

    @property
    def backbone(self) -> FeatureExtractor:
        return self.distance.backbone

    def clear_cache(self) -> None:
        """Forget cached target features (``cache_target=True``)."""
        self.distance.clear_cache()

    def _build(self, backbone: FeatureExtractor, lin_weights=None, **options) -> None:
        """``self.distance``: a :class:`DeepDistance` on ``backbone`` with ``options``, its linear weights loaded
        from ``lin_weights`` when given; then eval mode."""
        self.distance = DeepDistance(backbone, **options)
        if lin_weights is not None:
            self.distance.load_lin_weights(lin_weights)
        self.eval()

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """input, target: (N, C, H, W) in [0, 1], C = 3 (rgb) or 1 (grey), H, W >= ``backbone.min_size``.

        Returns a scalar ("sum", "mean"), shape (N,) ("none"), or the (N, 1, H, W) map when built with
        ``spatial=True``.
        """
        input, target = prepare_pair(self, input, target, self.backbone.min_size)
        if getattr(self, "spatial", False):
            return self.distance(input, target, spatial=True)
        return checks.reduce(self.distance(input, target), self.reduction)


# --------------------------------------------------------------------------------------------- LPIPS
class LPIPS(_DeepMetric):
    """LPIPS (Zhang et al. 2018), as the ``lpips`` 0.1.4 package computes it, for [0, 1] inputs.

    d = sum_l mean_hw sum_c w_lc (f^_0 - f^_1)^2 with f^ the channel-normalised backbone taps.

    Args:
        net: "alex" (AlexNet), "vgg" (VGG-16) or "squeeze" (SqueezeNet 1.1).
        version: "0.1" (default; ImageNet input scaling) or "0.0" (the first release: unscaled [-1, 1]
            input to the trunk, its own linear weights). "v0.1"/"v0.0" are accepted.
        lin: use the learned linear weights (True) or the uncalibrated baseline, a plain channel sum
            (False; the paper's "net" rows; twice the package's old ``PNet`` value).
        spatial: return the (N, 1, H, W) map (per-layer maps upsampled bilinearly and summed); its mean
            is only approximately the scalar distance.
        pretrained: ImageNet backbone and the published linear weights (``weights/lpips/v{version}/``:
            from the asset folder, torchmetrics or the lpips package). False: random backbone and linear
            weights 1. A missing file raises :class:`percept.assets.MissingAssetError`.
        trainable: linear weights require grad; dropout (p = 0.5) on the squared differences in train mode.
        backbone_weights: override the backbone: "imagenet", "random", a checkpoint path or a state dict.
        lin_weights: override the linear weights: a checkpoint path or a state dict (LPIPS key layout).
        cache_target: reuse the target's features while the same target tensor is passed again.
        colorspace: "rgb" or "grey" (1 channel, replicated to 3).
        reduction: "mean", "sum" or "none" (shape (N,)).
    """

    name = "lpips"

    def __init__(
        self,
        *,
        net: str = "alex",
        version: str = "0.1",
        lin: bool = True,
        spatial: bool = False,
        colorspace: str = "rgb",
        reduction: str = "mean",
        pretrained: bool = True,
        trainable: bool = False,
        backbone_weights: str | os.PathLike | Mapping | None = None,
        lin_weights: str | os.PathLike | Mapping | None = None,
        cache_target: bool = False,
    ):
        super().__init__()
        self._setup(colorspace, reduction)
        self.net = lpips_net(net)
        self.version = str(version).lstrip("v")
        if self.version not in ("0.1", "0.0"):
            raise ValueError(f"unknown LPIPS version {version!r}: use '0.1' or '0.0'")
        self.name = f"lpips-{self.net}"
        self.spatial = spatial
        self.lin = lin
        if lin_weights is None and lin and pretrained:
            lin_weights = assets.locate(f"weights/lpips/v{self.version}/{self.net}.pth")
        self._build(
            backbone_for(self.net, backbone_weights, pretrained),
            lin_weights if lin else None,
            scaling="lpips" if self.version == "0.1" else "raw",
            lin=lin,
            trainable=trainable,
            cache_target=cache_target,
        )

    def extra_repr(self) -> str:
        return (
            f"net={self.net!r}, version={self.version!r}, lin={self.lin}, spatial={self.spatial}, "
            f"colorspace={self.colorspace!r}, reduction={self.reduction!r}"
        )


# ------------------------------------------------------------------------------------------ Deeploss
class Deeploss(_DeepMetric):
    """Deeploss-VGG / Deeploss-Squeeze of Czolbe et al. 2020: LPIPS-style metrics with their own trained
    linear weights (``weights/czolbe/{rgb,gray}_pnet_lin_{vgg,squeeze}_trial0.pth``).

    Faithful to their LossProvider: LPIPS's shift/scale is applied to the [0, 1] input directly (no
    2x - 1), and grey input (1 channel) is replicated to 3 channels before that scaling. Their grey weights
    were trained with grey computed after the scaling (pitfall P9); the provider's order is kept because
    it is what users of the provider got. Differences from the original: NaN-safe channel normalisation,
    a registered backbone, and the grey check on the channel count (their wrapper checked the batch size).

    Args: as :class:`LPIPS` (net "vgg" or "squeeze"), without version/lin/spatial.
    """

    name = "deeploss"

    def __init__(
        self,
        *,
        net: str = "vgg",
        colorspace: str = "rgb",
        reduction: str = "mean",
        pretrained: bool = True,
        trainable: bool = False,
        backbone_weights: str | os.PathLike | Mapping | None = None,
        lin_weights: str | os.PathLike | Mapping | None = None,
        cache_target: bool = False,
    ):
        super().__init__()
        self._setup(colorspace, reduction)
        self.net = lpips_net(net, ("vgg", "squeeze"), metric="Deeploss")
        self.name = f"deeploss-{self.net}"
        if lin_weights is None and pretrained:
            space = "rgb" if self.colorspace == "rgb" else "gray"
            lin_weights = assets.locate(f"weights/czolbe/{space}_pnet_lin_{self.net}_trial0.pth")
        self._build(
            backbone_for(self.net, backbone_weights, pretrained),
            lin_weights,
            scaling="czolbe",
            lin=True,
            trainable=trainable,
            cache_target=cache_target,
        )

    def extra_repr(self) -> str:
        return f"net={self.net!r}, colorspace={self.colorspace!r}, reduction={self.reduction!r}"


# ----------------------------------------------------------------------------------------------- DPS
class DPS(_DeepMetric):
    """The deep perceptual similarity methods of Sjögren et al. 2022 (uncalibrated, frozen backbone).

    Per layer, the feature maps are modified ("spatial": unchanged; "sort": each channel's values sorted
    over positions; "mean": each channel's spatial mean), optionally unit-normalised along channels,
    compared by the squared difference summed over channels, and averaged over positions; layers are
    summed. "spatial+sort" / "spatial+mean" add the two terms with weight 1. "spatial" with
    ``channel_norm=True`` is LPIPS without linear layers (``LPIPS(lin=False)``); "sort" and "mean" are
    invariant to any permutation of feature-map positions (approximately to translations of the image).

    Args:
        net: "alex", "vgg", "squeeze", or any torchvision classification model (Pihlgren et al.'s
            loss-network study), with ``layers``.
        method: one of :data:`METHODS`.
        channel_norm: unit-normalise along channels after the modifier (the default of the paper).
        layers: tap indices (see :mod:`percept.backbones`); default the LPIPS taps for alex/vgg/squeeze,
            Pihlgren et al.'s four layers for their other networks.
        spatial: return the (N, 1, H, W) distance map (method "spatial" only).
        pretrained: ImageNet backbone (False: random). backbone_weights overrides it.
        lin: learned non-negative per-channel weights (one 1x1 conv per layer and per branch, branch-major,
            as the (a) code's ``DistanceMetric(weights=True)``) instead of the plain channel sum; they start
            at 1 (equal to the channel sum) unless ``lin_weights`` gives them. Implied by ``lin_weights`` and ``trainable``.
        trainable: the linear weights require grad and dropout (p = 0.5, on the squared differences) is
            active in training mode (2AFC tuning, :mod:`percept.evaluate`).
        lin_weights: a checkpoint path or state dict in the LPIPS key layout (``lin{k}.model.1.weight``,
            k over branches then layers), as :func:`percept.evaluate.tune_2afc` writes them.
        cache_target, colorspace, reduction: as :class:`LPIPS`.

    Input scaling is ImageNet normalisation (as LPIPS v0.1).
    """

    name = "dps"

    def __init__(
        self,
        *,
        net: str = "alex",
        method: str = "spatial",
        channel_norm: bool = True,
        layers: Sequence[int] | None = None,
        spatial: bool = False,
        colorspace: str = "rgb",
        reduction: str = "mean",
        pretrained: bool = True,
        backbone_weights: str | os.PathLike | Mapping | None = None,
        lin: bool = False,
        trainable: bool = False,
        lin_weights: str | os.PathLike | Mapping | None = None,
        cache_target: bool = False,
    ):
        super().__init__()
        self._setup(colorspace, reduction)
        if method not in METHODS:
            raise ValueError(f"unknown DPS method {method!r}: use one of {', '.join(METHODS)}")
        if spatial and method != "spatial":
            raise ValueError(f"spatial=True needs method='spatial' (got {method!r}): sort/mean have no positions")
        self.method = method
        self.channel_norm = channel_norm
        self.spatial = spatial
        arch = canonical_arch(net)
        self.name = f"dps-{arch}"
        self._build(
            backbone_for(arch, backbone_weights, pretrained, layers),
            scaling="lpips",
            branches=tuple(method.split("+")),
            channel_norm=channel_norm,
            lin=lin or trainable or lin_weights is not None,  # trainable: the linear layers are what trains
            trainable=trainable,
            cache_target=cache_target,
        )
        self.lin = self.distance.lins is not None
        if lin_weights is not None:
            self.distance.load_lin_weights(lin_weights)
        self.eval()

    def extra_repr(self) -> str:
        return (
            f"method={self.method!r}, channel_norm={self.channel_norm}, lin={self.lin}, spatial={self.spatial}, "
            f"colorspace={self.colorspace!r}, reduction={self.reduction!r}"
        )
