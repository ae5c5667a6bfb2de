"""Watson-VGG (Czolbe et al. 2020): Watson-style contrast masking on channel-normalised VGG-16 features,
:class:`WatsonVGG`, built on the shared feature core of the deep metrics
(:class:`percept.metrics.deep_core.DeepFeatures`).

>>> import torch
>>> from percept.metrics.watson_vgg import WatsonVGG
>>> metric = WatsonVGG(pretrained=False, reduction="none")   # initial t, w, beta on a random VGG-16 trunk
>>> x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)  # (N, 3, H, W) in [0, 1]
>>> with torch.no_grad():
...     d, floor = metric(x, y), metric(y, y)
>>> d.shape, bool((d > floor).all())                          # d(y, y) is a small positive floor
(torch.Size([2]), True)
>>> trained = WatsonVGG()                                     # Czolbe et al.'s weights (59 MB asset)  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from percept import assets, checks
from percept.backbones import load_checkpoint
from percept.metrics.deep_core import EPS, DeepFeatures, backbone_for, prepare_pair
from percept.metrics.watson import smooth_max

__all__ = ["WatsonVGG"]


class WatsonVGG(DeepFeatures):
    """Watson-style contrast masking on channel-normalised VGG-16 features (Czolbe et al., "Watson-VGG";
    explored during their development, not the paper's metric).

    With c0 = features of the target (the reference: masking comes from it) and c1 of the input, per layer
    l (relu1_2 ... relu5_3): t_l = exp(t~_l) per channel, w_l = sigmoid(w~_l),
    S_l = smax(t_l, (|c0| + eps)^w_l * t_l^(1 - w_l)) and

        D = ( sum_l 1/(H_l W_l) sum_{c,h,w} [ (|c0 - c1| / S_l + eps)^beta + eps ] )^(1/beta).

    Initial values: t = 1, w = 0.2, beta = 1. Dropout (p = 0.5) on the pooled terms when ``trainable`` in
    train mode. Input scaling as Deeploss (LPIPS shift/scale on [0, 1]); grey input replicated to 3. The
    features c0, c1 come from the shared feature core (:class:`DeepFeatures`, as LPIPS: one batched pass,
    ``cache_target``); smax is :func:`percept.metrics.watson.smooth_max`.

    **Trained weights**: Czolbe et al. published ``{rgb,gray}_watson_vgg_trial0.pth`` (2019, their
    repository's ``src/loss/weights/``; not retrained in the December 2020 fix). ``pretrained=True`` loads the
    asset ``weights/czolbe/{rgb,gray}_watson_vgg_trial0.pth`` (``python -m percept.assets fetch ...``; about
    59 MB each, the VGG-16 trunk they trained with is inside and is used as the backbone); the download is
    checked against the file's git blob id in the upstream repository (no sha256 is known offline). A
    missing file raises :class:`percept.assets.MissingAssetError`. ``weights=<path or state dict>`` loads
    another file (the original layout or this module's state dict). ``pretrained=False`` gives the initial
    values above on a random backbone; pass ``backbone_weights="imagenet"`` for the ImageNet VGG-16 trunk.
    Because of the epsilon terms, d(x, x) is a small positive floor, not 0.
    """

    higher_is_better = False
    name = "watson-vgg"
    _LAYERS = 5

    def __init__(
        self,
        *,
        weights: str | os.PathLike | Mapping | None = None,
        backbone_weights: str | os.PathLike | Mapping | None = None,
        pretrained: bool = True,
        trainable: bool = False,
        colorspace: str = "rgb",
        reduction: str = "mean",
        cache_target: bool = False,
    ):
        colorspace, reduction = checks.normalize_colorspace(colorspace), checks.check_reduction(reduction)
        state = None
        if weights is not None:
            state = load_checkpoint(weights)
        elif pretrained:
            space = "rgb" if colorspace == "rgb" else "gray"
            try:
                state = load_checkpoint(assets.locate(f"weights/czolbe/{space}_watson_vgg_trial0.pth"))
            except assets.MissingAssetError as err:
                raise assets.MissingAssetError(
                    f"{err} (Czolbe et al.'s trained Watson-VGG weights, about 59 MB; or pass pretrained=False for "
                    "the initial values t=1, w=0.2, beta=1, with backbone_weights='imagenet' for the ImageNet "
                    "VGG-16 trunk)"
                ) from None
        trunk = {k: v for k, v in (state or {}).items() if k.startswith(("vgg.", "backbone."))}
        if backbone_weights is None and trunk:
            backbone_weights = self._trunk_state(trunk)
        backbone = backbone_for("vgg16", backbone_weights, pretrained)
        super().__init__(backbone, scaling="czolbe", cache_target=cache_target)
        self.colorspace, self.reduction, self.trainable = colorspace, reduction, trainable
        channels = self.backbone.channels
        logit = math.log(0.2 / 0.8)
        self.t_tild = nn.ParameterList([nn.Parameter(torch.zeros(c), requires_grad=trainable) for c in channels])
        self.w_tild = nn.Parameter(torch.full((len(channels),), logit), requires_grad=trainable)
        self.beta = nn.Parameter(torch.tensor(1.0), requires_grad=trainable)
        if state is not None:
            self._load_params(state)
        self.eval()

    @staticmethod
    def _trunk_state(trunk: Mapping) -> dict:
        out = {}
        for k, v in trunk.items():
            if k.startswith("backbone.body."):
                out["features." + k[len("backbone.body.") :]] = v
            elif k.startswith("vgg.slice"):  # original: vgg.slice{s}.{features index}.{param}
                _, _, idx, param = k.split(".", 3)
                out[f"features.{idx}.{param}"] = v
        return out

    def _load_params(self, state: Mapping) -> None:
        own = {k: v for k, v in state.items() if not k.startswith(("vgg.", "backbone.", "shift", "scale"))}
        mapped = {}
        for k in range(self._LAYERS):
            for key in (f"t{k}_tild", f"t_tild.{k}"):
                if key in own:
                    mapped[f"t_tild.{k}"] = own.pop(key)
        if "w_tild" in own:
            mapped["w_tild"] = own.pop("w_tild")
        elif all(f"w{k}_tild" in own for k in range(self._LAYERS)):
            mapped["w_tild"] = torch.stack([own.pop(f"w{k}_tild").reshape(()) for k in range(self._LAYERS)])
        if "beta" in own:
            mapped["beta"] = own.pop("beta")
        expected = {f"t_tild.{k}" for k in range(self._LAYERS)} | {"w_tild", "beta"}
        if own or set(mapped) != expected:
            raise RuntimeError(
                f"not a Watson-VGG checkpoint: missing {sorted(expected - set(mapped))}, unexpected {sorted(own)[:6]}"
            )
        with torch.no_grad():
            for k in range(self._LAYERS):
                if mapped[f"t_tild.{k}"].shape != self.t_tild[k].shape:
                    raise RuntimeError(f"t{k}_tild has shape {tuple(mapped[f't_tild.{k}'].shape)}")
                self.t_tild[k].copy_(mapped[f"t_tild.{k}"])
            self.w_tild.copy_(mapped["w_tild"].reshape(self.w_tild.shape))
            self.beta.copy_(mapped["beta"].reshape(()))

    def per_image(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(N,) distances of 3-channel [0, 1] batches (no checks)."""
        (c1s,), (c0s,) = self.pair_features(input, target)  # one branch: the channel-normalised taps
        w = torch.sigmoid(self.w_tild)
        total = 0
        for k, (c0, c1) in enumerate(zip(c0s, c1s)):
            t = torch.exp(self.t_tild[k]).view(1, -1, 1, 1).to(c0.dtype)
            s = smooth_max(t, (c0.abs() + EPS) ** w[k] * t ** (1 - w[k]))
            term = ((c0 - c1).abs() / s + EPS) ** self.beta
            if self.trainable and self.training:
                term = F.dropout(term, 0.5, training=True)
            total = total + (term + EPS).flatten(1).sum(dim=1) / (c0.shape[2] * c0.shape[3])
        return total ** (1 / self.beta)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """input, target: (N, C, H, W) in [0, 1]; returns a scalar or (N,) per ``reduction``."""
        input, target = prepare_pair(self, input, target, self.backbone.min_size)
        return checks.reduce(self.per_image(input, target), self.reduction)

    def extra_repr(self) -> str:
        return f"colorspace={self.colorspace!r}, reduction={self.reduction!r}, trainable={self.trainable}"
