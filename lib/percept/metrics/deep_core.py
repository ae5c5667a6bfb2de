"""The shared core of the deep-feature metrics: input scaling, channel normalisation, the squared-difference
reduction, the DPS feature modifiers, the strict reader of linear weights, and the two modules every deep
metric is built on, :class:`DeepFeatures` and :class:`DeepDistance`.

:class:`DeepFeatures` is the one path from [0, 1] images to compared features (scaling, backbone taps,
modifiers, channel normalisation, the batched pair pass and the target cache); LPIPS, Deeploss and DPS
(:mod:`percept.metrics.deep`) are :class:`DeepDistance` modules, Watson-VGG (:mod:`percept.metrics.watson_vgg`)
and E-LPIPS (:mod:`percept.metrics.elpips`) subclass :class:`DeepFeatures`:

    input scaling -> backbone taps -> [modify: spatial / sort / mean] -> [channel normalisation]
    -> squared difference -> [learned non-negative per-channel weights | channel sum]
    -> mean over positions (or an upsampled spatial map) -> sum over layers (and branches)

>>> import torch
>>> from percept.backbones import build_backbone
>>> from percept.metrics.deep_core import DeepDistance, normalize_channels, scale_input
>>> x, y = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)        # (N, 3, H, W) in [0, 1]
>>> distance = DeepDistance(build_backbone("alex", weights="random"))  # LPIPS without linear weights
>>> distance(x, y).shape, bool(distance(x, x).abs().max() < 1e-6)
(torch.Size([2]), True)
>>> distance(x, y, spatial=True).shape                                 # the upsampled distance map
torch.Size([2, 1, 64, 64])
>>> normalize_channels(torch.zeros(1, 4, 2, 2)).abs().sum().item()     # all-zero features: 0, not NaN
0.0
>>> torch.allclose(scale_input(x, "raw"), 2 * x - 1)
True

Fixes of the reference implementations' known flaws:

- channel normalisation ``f / sqrt(sum_c f^2 + eps^2)`` (epsilon inside the square root, eps = 1e-10): no NaN
  gradient for all-zero feature vectors or input == target; the value differs from LPIPS's
  ``f / (||f|| + 1e-10)`` by about 1e-10 / ||f|| relative (the golden LPIPS values match to 3e-6);
- linear weights are always loaded strictly (every layer, right shapes, no foreign keys), whatever the
  dropout setting; dropout (p = 0.5, on the squared differences) is active only with ``trainable=True``
  in training mode;
- the backbone is a registered, frozen submodule (``.to(device)`` moves it, it is in the state dict)
  and stays in eval mode;
- 1-channel (grey) input is replicated to 3 channels when ``colorspace="grey"``, checked on the channel
  count (never on the batch size) (:func:`prepare_pair`).

Speed: both images go through the backbone in one batched pass when both or neither need gradients;
when only ``input`` does (a training loss), the target pass runs without autograd. With
``cache_target=True`` the target's features are kept between calls and reused while the same target
tensor object (unmodified) is passed again. On CPU the backbone runs in channels-last memory format where
that is faster (chosen per input size; no forward pass changes the module's state) and computes the first layer's input gradient in space-to-depth form
(:class:`percept.backbones.StemConv2d`); the channel normalisation and the weighted squared difference have
fused backward passes, differentiable again through autograd (double backward).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from percept import assets, checks
from percept.backbones import FeatureExtractor, build_backbone, load_checkpoint

__all__ = [
    "EPS",
    "LPIPS_SHIFT",
    "LPIPS_SCALE",
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
]

#: the epsilon of the reference implementations (channel normalisation, Watson terms)
EPS = 1e-10
#: LPIPS's ScalingLayer for inputs in [-1, 1]; identical to ImageNet mean/std normalisation of [0, 1] inputs
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
_SCALINGS = ("lpips", "raw", "czolbe")


# ------------------------------------------------------------------------------------------ functional
def _affine(mode: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (a, b) with backbone input = a * x + b for [0, 1] images x."""
    if mode == "lpips":  # (2x - 1 - shift) / scale
        return tuple(2 / s for s in LPIPS_SCALE), tuple((-1 - t) / s for t, s in zip(LPIPS_SHIFT, LPIPS_SCALE))
    if mode == "raw":  # 2x - 1
        return (2.0, 2.0, 2.0), (-1.0, -1.0, -1.0)
    if mode == "czolbe":  # (x - shift) / scale
        return tuple(1 / s for s in LPIPS_SCALE), tuple(-t / s for t, s in zip(LPIPS_SHIFT, LPIPS_SCALE))
    raise ValueError(f"unknown input scaling {mode!r}: use one of {', '.join(_SCALINGS)}")


def scale_input(x: torch.Tensor, mode: str) -> torch.Tensor:
    """Map [0, 1] images (N, 3, H, W) to the backbone's input.

    - ``"lpips"``: 2x - 1, then LPIPS's (x - shift) / scale, i.e. ImageNet normalisation (LPIPS v0.1, DPS);
    - ``"raw"``: 2x - 1 only (LPIPS v0.0, whose trunk was fed unscaled [-1, 1] images);
    - ``"czolbe"``: (x - shift) / scale applied to [0, 1] directly, as Czolbe et al.'s Deeploss and
      Watson-VGG do (their trained weights expect it).

    Evaluated as one affine map per channel (equal to the two-step form up to float rounding).
    """
    a, b = _affine(mode)
    a = torch.tensor(a, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    b = torch.tensor(b, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return torch.addcmul(b, x, a)


class InputScaling(nn.Module):
    """:func:`scale_input` as a module with its constants as (non-persistent) buffers, so they follow
    ``.to(device, dtype)`` and no host-to-device copy happens per call."""

    def __init__(self, mode: str):
        super().__init__()
        a, b = _affine(mode)
        self.mode = mode
        self.register_buffer("a", torch.tensor(a).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("b", torch.tensor(b).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.b.to(x.dtype), x, self.a.to(x.dtype))

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


def _channels_last(t: torch.Tensor) -> bool:
    return t.dim() == 4 and t.stride(1) == 1 and t.shape[1] > 1


def _sum_of_squares_over_channels(f: torch.Tensor) -> torch.Tensor:
    """(N, C, ...) -> (N, 1, ...), with the faster reduction for the memory layout (measured on CPU)."""
    if _channels_last(f):
        return torch.linalg.vector_norm(f, dim=1, keepdim=True).square_()
    return f.square().sum(dim=1, keepdim=True)


class _ChannelNorm(torch.autograd.Function):
    """u = f / sqrt(sum_c f^2 + eps^2) with a fused backward: grad_f = (g - u * sum_c(u g)) / sqrt(...).

    A backward pass that builds a graph (double backward) differentiates the same formula with autograd."""

    @staticmethod
    def forward(ctx, f: torch.Tensor, eps: float) -> torch.Tensor:
        inv = torch.rsqrt(_sum_of_squares_over_channels(f).add_(eps * eps))
        u = f * inv
        ctx.eps = eps
        ctx.save_for_backward(u, inv, f)  # f: kept alive by the layer before anyway (its ReLU saves it)
        return u

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        u, inv, f = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True
            u = f * torch.rsqrt(f.square().sum(dim=1, keepdim=True) + ctx.eps * ctx.eps)
            return torch.autograd.grad(u, f, g, create_graph=True)[0], None
        s = (u * g).sum(dim=1, keepdim=True)
        return torch.addcmul(g, u, s, value=-1).mul_(inv), None


def _sum_of_squares_over_positions(r: torch.Tensor) -> torch.Tensor:
    """(N, C, ...) -> (N, C): sum of squares over the positions, with the faster reduction for the layout."""
    if _channels_last(r):  # reduce over the middle axis of (N, H*W, C)
        return r.square().sum(dim=(2, 3))
    return torch.linalg.vector_norm(r.flatten(2), dim=2).square_()


class _SquaredDifferenceMean(torch.autograd.Function):
    """(N,) = mean over positions of sum_c w_c (u_c - v_c)^2 for (N, C, ...) tensors; w (C,) or None (w = 1).

    Same value as the autograd composition, with a two-pass backward; a backward pass that builds a graph
    (double backward) differentiates the composition with autograd."""

    @staticmethod
    def forward(ctx, u: torch.Tensor, v: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
        r = u - v
        positions = r[0, 0].numel()
        per_channel = _sum_of_squares_over_positions(r).div_(positions)  # (N, C)
        d = per_channel.sum(dim=1) if w is None else per_channel @ w.to(per_channel.dtype)
        ctx.positions = positions
        keep = per_channel if (w is not None and ctx.needs_input_grad[2]) else None
        ctx.save_for_backward(r, w, keep, u, v)  # u, v: the features, alive anyway
        return d

    @staticmethod
    def backward(ctx, gd: torch.Tensor):
        r, w, per_channel, u, v = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True
            inputs = [t for t, need in zip((u, v, w), ctx.needs_input_grad) if need]
            per = (u - v).square().flatten(2).mean(dim=2)
            d = per.sum(dim=1) if w is None else per @ w.to(per.dtype)
            grads = iter(torch.autograd.grad(d, inputs, gd, create_graph=True))
            return tuple(next(grads) if need else None for need in ctx.needs_input_grad)
        coef = gd.view(-1, 1) * (2.0 / ctx.positions)  # (N, 1)
        if w is not None:
            coef = coef * w.to(coef.dtype).view(1, -1)
        gr = r * coef.view(*coef.shape, *([1] * (r.dim() - 2)))
        grad_u = gr if ctx.needs_input_grad[0] else None
        grad_v = -gr if ctx.needs_input_grad[1] else None
        grad_w = (gd.view(1, -1) @ per_channel).view(-1).to(w.dtype) if per_channel is not None else None
        return grad_u, grad_v, grad_w


def normalize_channels(f: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Unit-normalise ``f`` (N, C, ...) along C: ``f / sqrt(sum_c f^2 + eps^2)``.

    The epsilon sits inside the square root, so all-zero vectors map to 0 with a finite gradient (the
    reference's ``f / (||f|| + eps)`` gives NaN there). For a vector of norm n the value differs from the
    reference's by about eps / n relative (1e-10 for n = 1). Half-precision features are normalised in
    float32. A fused backward; double backward works (autograd on the same formula).
    """
    if f.dtype in (torch.float16, torch.bfloat16):
        return _ChannelNorm.apply(f.float(), eps).to(f.dtype)
    return _ChannelNorm.apply(f, eps)


def squared_difference_mean(u: torch.Tensor, v: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """(N,) mean over positions of ``sum_c weight_c (u_c - v_c)^2`` for (N, C, ...) feature tensors; ``weight``
    of C elements (any shape, e.g. a (1, C, 1, 1) conv weight) or None for the plain channel sum."""
    return _SquaredDifferenceMean.apply(u, v, None if weight is None else weight.reshape(-1))


def modify_features(f: torch.Tensor, how: str) -> torch.Tensor:
    """Sjögren et al.'s modifiers of an (N, C, H, W) map, before channel normalisation.

    - ``"spatial"``: unchanged (N, C, H, W);
    - ``"sort"``: each channel's H*W values sorted ascending, (N, C, H*W) (position p means rank p);
    - ``"mean"``: each channel's spatial mean, (N, C, 1).
    """
    if how == "spatial":
        return f
    if how == "sort":
        return f.flatten(2).sort(dim=2).values
    if how == "mean":
        return f.flatten(2).mean(dim=2, keepdim=True)
    raise ValueError(f"unknown modifier {how!r}: use spatial, sort or mean")


_LIN_LAYOUTS = ("lin{k}.model.1.weight", "lin{k}.model.0.weight", "lins.{k}.weight", "lins.{k}")


def read_lin_weights(
    source: str | os.PathLike | Mapping, channels: Sequence[int], *, where: str | None = None
) -> list[torch.Tensor]:
    """Strictly read per-layer linear weights, each (C_l,) float32: the one reader of LPIPS, Deeploss, DPS and
    E-LPIPS weights.

    ``source``: a state dict, a ``torch.save`` checkpoint or an E-LPIPS ``.npy`` file (a pickled dict parsed by
    :func:`percept.assets.read_npy_dict` without unpickling, so a crafted file cannot run code). Key layouts:
    ``lin{k}.model.1.weight`` (LPIPS / Czolbe / E-LPIPS files, dropout at index 0), ``lin{k}.model.0.weight``
    (saved with ``use_dropout=False``), ``lins.{k}.weight`` (:class:`DeepDistance`) or ``lins.{k}``
    (:class:`percept.metrics.elpips.ELPIPS`); shapes (1, C, 1, 1), TensorFlow's (1, 1, C, 1) or (C,).

    Every layer must be present exactly once with C_l weights, no other key may appear, and the weights must
    be finite and non-negative; anything else raises (never silently random weights).
    """
    where = where or (str(source) if not isinstance(source, Mapping) else "state dict")
    if isinstance(source, Mapping):
        state = dict(source)
    elif str(source).endswith(".npy"):
        state = assets.read_npy_dict(source)
    else:
        state = load_checkpoint(source)
    out, used, missing = [], set(), []
    for k, c in enumerate(channels):
        found = [key.format(k=k) for key in _LIN_LAYOUTS if key.format(k=k) in state]
        if not found:
            missing.append(f"lin{k}")
            continue
        if len(found) > 1:
            raise RuntimeError(f"{where}: layer {k} appears under several keys: {found}")
        value = state[found[0]]
        value = value if torch.is_tensor(value) else torch.as_tensor(np.asarray(value))
        shape = tuple(value.shape)
        if shape not in ((1, c, 1, 1), (1, 1, c, 1), (c,)):
            raise RuntimeError(f"{where}: {found[0]} has shape {shape}, expected (1, {c}, 1, 1), (1, 1, {c}, 1) or ({c},)")
        value = value.detach().reshape(c).float().clone()
        if not torch.isfinite(value).all() or (value < 0).any():
            raise ValueError(f"{where}: {found[0]} has negative or non-finite weights")
        used.add(found[0])
        out.append(value)
    foreign = sorted(str(key) for key in state if key not in used)
    if missing or foreign:
        raise RuntimeError(
            f"{where} does not hold exactly {len(channels)} linear layers for channels {tuple(channels)}: "
            f"missing {missing or 'none'}, unexpected or duplicate {foreign[:6] or 'none'}"
        )
    return out


# ------------------------------------------------------------------------------------------- mechanism
class DeepFeatures(nn.Module):
    """The shared feature core: [0, 1] images -> input scaling -> backbone taps -> [modifier] -> [channel norm].

    Every deep metric runs its backbone through this module (:class:`DeepDistance`,
    :class:`percept.metrics.watson_vgg.WatsonVGG` and :class:`percept.metrics.elpips.ELPIPS` are subclasses),
    so the scaling, the channels-last input buffer, the batched pair pass and the target cache exist once.

    Args:
        backbone: a :class:`percept.backbones.FeatureExtractor`.
        scaling: input scaling (:func:`scale_input`): "lpips", "raw" or "czolbe".
        branches: modifiers (:func:`modify_features`), e.g. ("spatial",) for LPIPS, ("spatial", "sort") for
            DPS spatial+sort.
        channel_norm: unit-normalise along channels after the modifier.
        eps: the channel normalisation's epsilon.
        cache_target: keep the target's features between calls (see the module docstring).
    """

    def __init__(
        self,
        backbone: FeatureExtractor,
        *,
        scaling: str = "lpips",
        branches: Sequence[str] = ("spatial",),
        channel_norm: bool = True,
        eps: float = EPS,
        cache_target: bool = False,
    ):
        super().__init__()
        if scaling not in _SCALINGS:
            raise ValueError(f"unknown input scaling {scaling!r}: use one of {', '.join(_SCALINGS)}")
        for b in branches:
            if b not in ("spatial", "sort", "mean"):
                raise ValueError(f"unknown branch {b!r}: use spatial, sort or mean")
        self.backbone = backbone
        self.scaling = scaling
        self.scale = InputScaling(scaling)
        self.branches = tuple(branches)
        self.channel_norm = channel_norm
        self.eps = eps
        self.cache_target = cache_target
        self._cache: tuple | None = None

    def clear_cache(self) -> None:
        """Forget cached target features (``cache_target=True``)."""
        self._cache = None

    def _apply(self, fn, recurse=True):
        self._cache = None
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs):
        self._cache = None
        return super()._load_from_state_dict(*args, **kwargs)

    def backbone_input(self, *images: torch.Tensor) -> torch.Tensor:
        """The scaled backbone input for one or more [0, 1] batches, concatenated along the batch axis.

        Without autograd the scaling writes straight into one buffer in the memory format the backbone
        starts with (no separate concatenation and layout copies)."""
        if torch.is_grad_enabled() and any(x.requires_grad for x in images):
            x = images[0] if len(images) == 1 else torch.cat(images)
            return self.scale(x)
        first = images[0]
        shape = (sum(x.shape[0] for x in images), *first.shape[1:])
        out = torch.empty(
            shape, dtype=first.dtype, device=first.device, memory_format=self.backbone.memory_format_for(first)
        )
        a, b = self.scale.a.to(first.dtype), self.scale.b.to(first.dtype)
        start = 0
        for x in images:
            torch.addcmul(b, x, a, out=out[start : start + x.shape[0]])
            start += x.shape[0]
        return out

    def features(self, *images: torch.Tensor) -> list[list[torch.Tensor]]:
        """[branch][layer] compared features of [0, 1] batches (several are concatenated along the batch
        axis): scaled, tapped, modified, normalised."""
        taps = self.backbone(self.backbone_input(*images))
        out = []
        for branch in self.branches:
            feats = [modify_features(f, branch) for f in taps]
            if self.channel_norm:
                feats = [normalize_channels(f, self.eps) for f in feats]
            out.append(feats)
        return out

    def _backbone_trains(self) -> bool:
        return any(p.requires_grad for p in self.backbone.parameters())

    def pair_features(self, input: torch.Tensor, target: torch.Tensor):
        """Features of input and target: one batched backbone pass when both or neither need autograd,
        else the target without autograd; the cached target features when ``cache_target`` applies."""
        grad = torch.is_grad_enabled()
        bb_grad = grad and self._backbone_trains()
        in_grad = grad and (input.requires_grad or bb_grad)
        tg_grad = grad and (target.requires_grad or bb_grad)
        if self.cache_target and not tg_grad:
            c = self._cache
            if c is not None and c[0] is target and c[1] == target._version:
                return self.features(input), c[2]
            with torch.no_grad():
                ft = self.features(target)
            self._cache = (target, target._version, ft)
            return self.features(input), ft
        if in_grad == tg_grad:
            n = input.shape[0]
            both = self.features(input, target)
            return [[f[:n] for f in b] for b in both], [[f[n:] for f in b] for b in both]
        with torch.no_grad() if not tg_grad else torch.enable_grad():
            ft = self.features(target)
        return self.features(input), ft

    def extra_repr(self) -> str:
        return (
            f"scaling={self.scaling!r}, branches={self.branches}, channel_norm={self.channel_norm}, "
            f"cache_target={self.cache_target}"
        )


class DeepDistance(DeepFeatures):
    """The shared mechanism: backbone taps -> [modifier] -> [channel norm] -> squared difference ->
    [linear weights] -> pooling, summed over layers and branches.

    Args:
        backbone: a :class:`percept.backbones.FeatureExtractor`.
        options: ``scaling``, ``branches``, ``channel_norm``, ``eps``, ``cache_target`` of :class:`DeepFeatures`.
        lin: learned non-negative per-channel weights per layer and branch (1x1 convs without bias,
            ``lins``, ordered branch-major); initialised to 1 (the channel sum) until loaded.
        trainable: linear weights require grad, and dropout (``dropout``, on the squared differences)
            is active in training mode.

    ``forward(input, target, spatial=False)`` takes backbone-ready 3-channel batches in [0, 1] (no checks:
    the metric classes validate) and returns (N,) distances, or the (N, 1, H, W) map with ``spatial``.
    """

    def __init__(
        self, backbone: FeatureExtractor, *, lin: bool = False, trainable: bool = False, dropout: float = 0.5, **options
    ):
        super().__init__(backbone, **options)
        self.trainable = trainable
        self.dropout = dropout
        if lin:
            convs = [nn.Conv2d(c, 1, 1, bias=False) for _ in self.branches for c in backbone.channels]
            for conv in convs:
                nn.init.ones_(conv.weight)
                conv.weight.requires_grad_(trainable)
            self.lins = nn.ModuleList(convs)
        else:
            self.lins = None

    def load_lin_weights(self, state: Mapping | str | os.PathLike, *, where: str | None = None) -> None:
        """Strictly load linear weights (see :func:`read_lin_weights`) from a state dict or file."""
        if self.lins is None:
            raise RuntimeError("this distance has no linear layers (lin=False)")
        weights = read_lin_weights(state, [c for _ in self.branches for c in self.backbone.channels], where=where)
        with torch.no_grad():
            for conv, w in zip(self.lins, weights):
                conv.weight.copy_(w.view(1, -1, 1, 1))

    # -------------------------------------------------------------------------------------- compare
    def _drop(self, d: torch.Tensor) -> torch.Tensor:
        if self.trainable and self.training and self.dropout > 0:
            return F.dropout(d, self.dropout, training=True)
        return d

    def layer_distances(self, input: torch.Tensor, target: torch.Tensor) -> list[torch.Tensor]:
        """Per-(branch, layer) distances, each (N,), branch-major; their sum is the distance."""
        f_in, f_tg = self.pair_features(input, target)
        out = []
        k = 0
        for b_in, b_tg in zip(f_in, f_tg):
            for a, b in zip(b_in, b_tg):
                weight = None if self.lins is None else self.lins[k].weight
                if self.trainable and self.training and self.dropout > 0:
                    d = self._drop((a - b).square()).flatten(2).mean(dim=2)  # (N, C)
                    d = d.sum(dim=1) if weight is None else d @ weight.view(-1).to(d.dtype)
                else:
                    d = squared_difference_mean(a, b, weight)
                out.append(d)
                k += 1
        return out

    def distance_map(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W): per-layer maps (weighted channel sums) upsampled bilinearly (align_corners=False)
        to the input size and summed, as LPIPS's ``spatial=True``. Only for the "spatial" branch."""
        if self.branches != ("spatial",):
            raise ValueError("a spatial distance map exists only for the 'spatial' method")
        f_in, f_tg = self.pair_features(input, target)
        size = input.shape[-2:]
        total = None
        for k, (a, b) in enumerate(zip(f_in[0], f_tg[0])):
            d = self._drop((a - b).square())
            if self.lins is not None:
                m = F.conv2d(d, self.lins[k].weight.to(d.dtype))
            else:
                m = d.sum(dim=1, keepdim=True)
            m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
            total = m if total is None else total + m
        return total

    def forward(self, input: torch.Tensor, target: torch.Tensor, spatial: bool = False) -> torch.Tensor:
        if spatial:
            return self.distance_map(input, target)
        return torch.stack(self.layer_distances(input, target), dim=0).sum(dim=0)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, lin={self.lins is not None}, trainable={self.trainable}"


# ------------------------------------------------------------------------------------------- helpers
def backbone_for(
    net: str, backbone_weights: str | os.PathLike | Mapping | None, pretrained: bool, layers=None, **options
) -> FeatureExtractor:
    """:func:`percept.backbones.build_backbone` with ``backbone_weights``, or by default ImageNet weights
    (``pretrained``) or a random network."""
    if backbone_weights is None:
        backbone_weights = "imagenet" if pretrained else "random"
    return build_backbone(net, layers, weights=backbone_weights, **options)


def prepare_pair(
    metric: nn.Module, input: torch.Tensor, target: torch.Tensor, min_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The input side of every deep metric: check (N, C, H, W) [0, 1] batches against ``metric.colorspace``
    (C = 3, or 1 for grey) and ``min_size``, cast them to the backbone's dtype and replicate grey to 3 channels."""
    channels = checks.channels_of(metric.colorspace)
    checks.check_pair(input, target, channels=channels, min_size=min_size, name=metric.name)
    input, target = checks.to_compute_dtype(metric.backbone, input, target)
    if metric.colorspace == "grey":
        return input.expand(-1, 3, -1, -1), target.expand(-1, 3, -1, -1)
    return input, target
