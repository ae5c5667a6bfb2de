"""E-LPIPS (Kettunen, Härkönen and Lehtinen 2019): LPIPS averaged over random input transformations and
random dropout inside the network.

    E-LPIPS(x, y) = E_T[ L(T(x), T(y)) ]

T is one random draw of the ensemble below **shared by both images** (and by every image compared with the
same reference, see :meth:`ELPIPS.sample_distances`), so d(x, x) = 0 exactly and d is symmetric. The metric
averages ``n`` independent draws per call; it is stochastic whatever ``.train()``/``.eval()`` says (E-LPIPS is
defined as an expectation), and reproducible through ``generator``.

The ensemble, as the reference implementation (``mkettune/elpips``, TensorFlow) codes it, in this order on
[0, 1] images (``lpips_elpips.md`` D3):

1. **scale**: one level s in {1..S} per draw with P(s) ~ 1/s^2; reflect-pad by an offset (oy, ox) uniform
   in [0, s-1] (shared by the batch) to a multiple of s, then box-average s x s blocks. S = 8 by default and
   never more than ``min(H, W) // 64`` (the original's ``set_scale_levels_by_image_size``), so a downscaled
   image is never smaller than 64 px (:data:`MIN_SCALED_SIZE`); images under 128 px are not downscaled.
2. **shift**: per image, offsets (oy, ox) uniform in [0, 7]; reflect-pad 7 - o rows/columns on the top/left
   and o on the bottom/right (every image grows by 7 px).
3. **flip**: per image one of 4 codes (0: mirror x, 1: mirror y, 2: both, 3: none), stratified over the batch.
4. **transpose**: swap x and y with probability 1/2, one draw for the batch.
5. **permute**: per image one of the 6 colour-channel permutations, stratified over the batch.
6. **color**: per image and channel a factor 0.2 + 0.8 u, u Latin-hypercube stratified over the batch
   ("brightness" mode: one factor for the three channels).

then x -> 2x - 1 and LPIPS's shift/scale. In the network, every convolution's input (VGG conv1_1 on the
image included; each SqueezeNet squeeze, expand1x1 and expand3x3 conv) is multiplied by a Bernoulli(0.99)
mask / 0.99, drawn per convolution and per image and shared by the compared images (:func:`shared_dropout`,
applied by forward pre-hooks on the backbone's convolutions that act only inside the metric's own passes, so
``metric.backbone`` alone is the plain network). The backbone runs through the feature core of the deep
metrics (:class:`percept.metrics.deep.DeepFeatures`): the scaled input is tap -1, the pooling is chosen
when the backbone is built. Each tap is unit-normalised over channels, the squared differences are weighted
by the linear weights, averaged over positions and summed over taps.

Configurations (``config``):

========== =========== ==================================== ======= =============================
config     net         taps                                 pooling linear weights
========== =========== ==================================== ======= =============================
"elpips"   vgg         input + the 13 conv ReLUs (14)       average ``vgg_full_avg.npy``
"elpips"   squeeze     input, conv1, fire2..fire9 (10)      max     ``squeeze_full_maxpool.npy``
"lpips"    vgg         relu1_2 .. relu5_3 (5)               max     ``vgg_maxpool.npy``
"lpips"    squeeze     relu1, fire3, fire5..fire9 (7)       max     ``squeeze.npy``
========== =========== ==================================== ======= =============================

The network is chosen by ``config`` alone (default "elpips"); ``deterministic=True`` only switches the
transformations and the network dropout off, so ``deterministic=True`` is the E-LPIPS network without
randomness (how its linear weights were trained). ``config="lpips"`` is the E-LPIPS package's plain LPIPS
(its own TF-trained linear weights, not the ``lpips`` v0.1 ones), which equals
:class:`percept.metrics.deep.LPIPS` given the same backbone and linear weights (for SqueezeNet with
``torchvision_pooling=True``, see below); the reference's ``lpips_vgg``/``lpips_squeeze`` are
``config="lpips", deterministic=True``.

SqueezeNet pools 'VALID' (floor) as in the TF reference, not with torchvision's ``ceil_mode=True``
(``torchvision_pooling=True`` restores it; the two differ when a pooled map has an even side length): with floor
pooling, the "lpips" SqueezeNet configuration reproduces the reference's README values on its
adversarial example (0.02187 and 0.02114) to 5 digits; with ceil mode it gives 0.02170 and 0.02293.

Differences from the reference: the channel normalisation is the NaN-safe
``f / sqrt(sum f^2 + eps^2)`` of :func:`percept.metrics.deep.normalize_channels`; the scale levels are
always limited by the image size (the original did that only when asked). The VGG-16 trunk is torchvision's
ImageNet network (not retrained for average pooling, as in the original).
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from percept import assets, checks
from percept.backbones import LPIPS_LAYERS, lpips_net
from percept.metrics.deep import DeepFeatures, backbone_for, prepare_pair, read_lin_weights, squared_difference_mean

__all__ = [
    "SCALE_LEVELS",
    "MIN_SCALED_SIZE",
    "OFFSET_MAX",
    "DROPOUT_KEEP",
    "COLOR_MIN",
    "TRANSFORMS",
    "CONFIGS",
    "Transform",
    "scale_levels_for",
    "scale_probabilities",
    "sample_transform",
    "merge_transforms",
    "apply_transform",
    "shared_dropout",
    "elpips_lin_state",
    "ELPIPS",
]

#: default number of scale levels S (the original ``Config``)
SCALE_LEVELS = 8
#: a downscaled image is never smaller than this (``set_scale_levels_by_image_size``: crop / S >= 64)
MIN_SCALED_SIZE = 64
#: largest per-image shift (``offset_max``); every image grows by this many pixels
OFFSET_MAX = 7
#: keep probability of the network dropout
DROPOUT_KEEP = 0.99
#: colour factors lie in [COLOR_MIN, 1)
COLOR_MIN = 0.2
#: the transformations, in the order they are applied
TRANSFORMS = ("scale", "shift", "flip", "transpose", "permute", "color")
_ALIASES = {
    "offset": "shift",
    "translation": "shift",
    "translate": "shift",
    "swap": "transpose",
    "permutation": "permute",
    "color_permutation": "permute",
    "colour": "color",
    "color_multiplication": "color",
    "colour_multiplication": "color",
    "downscale": "scale",
    "scaling": "scale",
}
_PERMUTATIONS = torch.tensor(list(itertools.permutations(range(3))), dtype=torch.long)  # (6, 3)


@dataclass(frozen=True)
class _NetConfig:
    arch: str
    layers: tuple[int, ...]  # backbone taps (indices into ``features``; -1: the scaled input image)
    avg_pool: bool  # max pooling replaced by average pooling
    lin_file: str  # asset path of the linear weights


#: (net, config) -> network layout; taps are torchvision ``features`` indices
CONFIGS: dict[tuple[str, str], _NetConfig] = {
    ("vgg", "elpips"): _NetConfig(
        "vgg16", (-1, 1, 3, 6, 8, 11, 13, 15, 18, 20, 22, 25, 27, 29), True, "weights/elpips/vgg_full_avg.npy"
    ),
    ("squeeze", "elpips"): _NetConfig(
        "squeezenet1_1", (-1, 1, 3, 4, 6, 7, 9, 10, 11, 12), False, "weights/elpips/squeeze_full_maxpool.npy"
    ),
    ("vgg", "lpips"): _NetConfig("vgg16", LPIPS_LAYERS["vgg16"], False, "weights/elpips/vgg_maxpool.npy"),
    ("squeeze", "lpips"): _NetConfig("squeezenet1_1", LPIPS_LAYERS["squeezenet1_1"], False, "weights/elpips/squeeze.npy"),
}


# ------------------------------------------------------------------------------------------ transforms
def scale_levels_for(height: int, width: int, max_levels: int = SCALE_LEVELS) -> int:
    """The number of scale levels S used for an H x W image: ``min(max_levels, max(1, min(H, W) // 64))``.

    With s <= S every downscaled image has at least :data:`MIN_SCALED_SIZE` pixels per side."""
    return max(1, min(int(max_levels), min(int(height), int(width)) // MIN_SCALED_SIZE))


def scale_probabilities(levels: int) -> torch.Tensor:
    """P(s) for s = 1..levels, proportional to 1/s^2 (float64, sums to 1)."""
    w = 1.0 / torch.arange(1, int(levels) + 1, dtype=torch.float64) ** 2
    return w / w.sum()


@dataclass(frozen=True, eq=False)
class Transform:
    """One draw of the ensemble for a batch of ``batch`` images (``None``: that transformation is off).

    Attributes:
        batch: number of images N the per-image parameters describe.
        scale: downscaling factor s (1: none), shared by the batch.
        scale_offset: (oy, ox) in [0, s-1], shared by the batch.
        offsets: (N, 2) int64 shifts (oy, ox) in [0, offset_max], or None.
        flips: (N,) int64 codes 0 (mirror x), 1 (mirror y), 2 (both), 3 (none), or None.
        transpose: swap x and y (shared by the batch).
        permutations: (N, 3) int64; output channel c of image i is input channel ``permutations[i, c]``.
        colors: (N, 3) float factors in [0.2, 1), applied after the permutation, or None.
        offset_max: the padding the shifts use.
    """

    batch: int
    scale: int = 1
    scale_offset: tuple[int, int] = (0, 0)
    offsets: torch.Tensor | None = None
    flips: torch.Tensor | None = None
    transpose: bool = False
    permutations: torch.Tensor | None = None
    colors: torch.Tensor | None = None
    offset_max: int = OFFSET_MAX

    @property
    def group_key(self) -> tuple:
        """Draws with equal keys can be evaluated in one batch (same output size and orientation)."""
        return (self.scale, self.scale_offset if self.scale > 1 else (0, 0), self.transpose, self.offsets is None)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) of a transformed H x W image."""
        s = self.scale
        if s > 1:
            height, width = (height + 2 * (s - 1)) // s, (width + 2 * (s - 1)) // s
        if self.offsets is not None:
            height, width = height + self.offset_max, width + self.offset_max
        return (width, height) if self.transpose else (height, width)


def _names(transforms: bool | str | Iterable[str] | None) -> frozenset[str]:
    if transforms is None or transforms is True:
        return frozenset(TRANSFORMS)
    if transforms is False:
        return frozenset()
    if isinstance(transforms, str):
        transforms = [transforms]
    out = set()
    for name in transforms:
        key = _ALIASES.get(str(name).lower(), str(name).lower())
        if key not in TRANSFORMS:
            raise ValueError(f"unknown E-LPIPS transformation {name!r}: use any of {', '.join(TRANSFORMS)}")
        out.add(key)
    return frozenset(out)


def sample_transform(
    batch: int,
    *,
    scale_levels: int = SCALE_LEVELS,
    transforms: bool | Iterable[str] | None = None,
    color_mode: str = "color",
    offset_max: int = OFFSET_MAX,
    generator: torch.Generator | None = None,
) -> Transform:
    """Draw one ensemble transformation for ``batch`` images (the original ``sample_ensemble``).

    Args:
        batch: number of images N; flips, permutations and colour factors are stratified across them.
        scale_levels: S (levels 1..S with P ~ 1/s^2); pass :func:`scale_levels_for` of the image size.
        transforms: the transformations to draw (default all of :data:`TRANSFORMS`); the others are off.
        color_mode: "color" (independent factor per channel) or "brightness" (one factor per image).
        offset_max: largest shift.
        generator: torch RNG (CPU or the device it lives on); None uses torch's global RNG.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if color_mode not in ("color", "brightness"):
        raise ValueError(f"color_mode must be 'color' or 'brightness', got {color_mode!r}")
    names = _names(transforms)
    dev = generator.device if generator is not None else torch.device("cpu")

    def randint(high: int, size) -> torch.Tensor:
        return torch.randint(0, high, size, generator=generator, device=dev)

    def randperm(k: int) -> torch.Tensor:
        return torch.randperm(k, generator=generator, device=dev)

    n = int(batch)
    scale, scale_offset = 1, (0, 0)
    if "scale" in names and scale_levels > 1:
        cdf = torch.cumsum(scale_probabilities(scale_levels), 0)
        u = float(torch.rand((), generator=generator, device=dev, dtype=torch.float64))
        scale = 1 + int((cdf[:-1] <= u).sum())  # inverse CDF: P(s) ~ 1/s^2
        if scale > 1:
            oy, ox = randint(scale, (2,)).tolist()
            scale_offset = (int(oy), int(ox))
    offsets = randint(offset_max + 1, (n, 2)).cpu() if "shift" in names else None
    flips = None
    if "flip" in names:
        flips = (torch.arange((n + 3) // 4 * 4, device=dev) % 4)[randperm((n + 3) // 4 * 4)][:n].cpu()
    transpose = bool(randint(2, ()).item()) if "transpose" in names else False
    colors = None
    if "color" in names:

        def stratified() -> torch.Tensor:
            u = (torch.rand(n, generator=generator, device=dev) + torch.arange(n, device=dev)) / n
            return u[randperm(n)].cpu()

        if color_mode == "color":
            colors = torch.stack([stratified() for _ in range(3)], dim=1)
        else:
            colors = stratified().view(n, 1).expand(n, 3).clone()
        colors = COLOR_MIN + (1 - COLOR_MIN) * colors
    permutations = None
    if "permute" in names:
        reps = (n + 5) // 6
        tiled = _PERMUTATIONS.repeat(reps, 1)
        permutations = tiled[randperm(6 * reps).cpu()][:n]
    return Transform(n, scale, scale_offset, offsets, flips, transpose, permutations, colors, offset_max)


def merge_transforms(draws: Sequence[Transform]) -> Transform:
    """Concatenate draws with the same :attr:`Transform.group_key` into one transform of their total batch."""
    first = draws[0]
    if any(t.group_key != first.group_key or t.offset_max != first.offset_max for t in draws):
        raise ValueError("only draws with the same scale, scale offset and transposition can be merged")
    if len(draws) == 1:
        return first

    def cat(name: str):
        parts = [getattr(t, name) for t in draws]
        if all(p is None for p in parts):
            return None
        if any(p is None for p in parts):
            raise ValueError(f"cannot merge draws with and without {name!r}")
        return torch.cat(parts)

    return Transform(
        sum(t.batch for t in draws),
        first.scale,
        first.scale_offset,
        cat("offsets"),
        cat("flips"),
        first.transpose,
        cat("permutations"),
        cat("colors"),
        first.offset_max,
    )


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Map coordinates in [-(size-1), 2(size-1)] into [0, size-1] by reflection (no edge repeat)."""
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


def apply_transform(x: torch.Tensor, t: Transform | None) -> torch.Tensor:
    """Apply a draw to [0, 1] images (B, 3, H, W); row b uses the parameters of image ``b % t.batch`` (so a
    stack of several batches shares the draw image by image). Differentiable; returns [0, 1]-range images
    (darker after the colour factors) of size :meth:`Transform.output_size`.

    Shift, flips, transposition and channel permutation are one gather with reflected indices."""
    if t is None:
        return x
    b, c, h, w = x.shape
    if b % t.batch:
        raise ValueError(f"batch {b} is not a multiple of the transformation's batch {t.batch}")
    if (t.permutations is not None or t.colors is not None) and c != 3:
        raise ValueError(f"colour transformations need 3 channels, got {c}")
    s = t.scale
    if s > 1:
        oy, ox = t.scale_offset
        full_h, full_w = (h + 2 * (s - 1)) // s * s, (w + 2 * (s - 1)) // s * s
        x = F.avg_pool2d(F.pad(x, (ox, full_w - w - ox, oy, full_h - h - oy), mode="reflect"), s)
        h, w = x.shape[-2:]
    reps, n = b // t.batch, t.batch
    dev = x.device
    if t.offsets is not None or t.flips is not None or t.transpose or t.permutations is not None:
        p = t.offset_max if t.offsets is not None else 0
        if p >= min(h, w):
            raise ValueError(f"images of {h}x{w} are too small for shifts of up to {p} px")
        ho, wo = h + p, w + p
        rows = torch.arange(ho, device=dev).expand(n, ho)
        cols = torch.arange(wo, device=dev).expand(n, wo)
        if t.flips is not None:
            flips = t.flips.to(dev).view(n, 1)
            cols = torch.where((flips == 0) | (flips == 2), wo - 1 - cols, cols)
            rows = torch.where((flips == 1) | (flips == 2), ho - 1 - rows, rows)
        if t.offsets is not None:
            off = t.offsets.to(dev)
            rows = _reflect(rows + off[:, :1] - p, h)
            cols = _reflect(cols + off[:, 1:] - p, w)
        if t.transpose:
            spatial = rows.view(n, 1, ho) * w + cols.view(n, wo, 1)  # (n, wo, ho)
        else:
            spatial = rows.view(n, ho, 1) * w + cols.view(n, 1, wo)  # (n, ho, wo)
        if t.permutations is not None:
            channel = t.permutations.to(dev)
        else:
            channel = torch.arange(c, device=dev).expand(n, c)
        index = (channel.view(n, c, 1, 1) * (h * w) + spatial.unsqueeze(1)).view(1, n, -1)
        out_hw = spatial.shape[1:]
        flat = x.reshape(reps, n, c * h * w)
        x = flat.gather(2, index.expand(reps, -1, -1)).view(b, c, *out_hw)
    if t.colors is not None:
        factors = t.colors.to(device=dev, dtype=x.dtype)
        x = (x.reshape(reps, n, c, *x.shape[-2:]) * factors.view(1, n, c, 1, 1)).view(b, c, *x.shape[-2:])
    return x


# ------------------------------------------------------------------------------------- linear weights
def elpips_lin_state(net: str = "vgg", config: str = "lpips") -> dict[str, torch.Tensor]:
    """The E-LPIPS package's linear weights of (net, config) in the LPIPS layout (``lin{k}.model.1.weight``,
    (1, C, 1, 1)), e.g. for :class:`percept.metrics.deep.LPIPS` ``(lin_weights=...)`` (config "lpips")."""
    cfg = CONFIGS[(lpips_net(net, ("vgg", "squeeze"), metric="E-LPIPS"), config)]
    path = assets.locate(cfg.lin_file)
    state = assets.read_npy_dict(path)
    channels = [int(np.asarray(state[f"lin{k}.model.1.weight"]).shape[2]) for k in range(len(state))]
    weights = read_lin_weights(state, channels, where=str(path))
    return {f"lin{k}.model.1.weight": w.view(1, -1, 1, 1) for k, w in enumerate(weights)}


# ------------------------------------------------------------------------------------ network dropout
def shared_dropout(x: torch.Tensor, copies: int, keep: float, generator: torch.Generator | None) -> torch.Tensor:
    """``x * Bernoulli(keep) / keep`` for ``copies`` stacked batches (copies * B, ...): one mask per image of a
    batch, shared by the copies (the compared images)."""
    b = x.shape[0] // copies
    mask = torch.empty((b, *x.shape[1:]), dtype=x.dtype, device=x.device)
    mask.bernoulli_(keep, generator=generator).div_(keep)
    return (x.reshape(copies, b, *x.shape[1:]) * mask).reshape(x.shape)


#: (copies, keep, generator) of the network dropout of the backbone pass under way, None outside one
_NET_DROPOUT: ContextVar[tuple[int, float, torch.Generator | None] | None] = ContextVar("elpips_net_dropout", default=None)


@contextlib.contextmanager
def _network_dropout(copies: int, keep: float, generator: torch.Generator | None) -> Iterator[None]:
    """Within the block, every convolution of an E-LPIPS backbone drops its input (:func:`shared_dropout`)."""
    token = _NET_DROPOUT.set((copies, keep, generator))
    try:
        yield
    finally:
        _NET_DROPOUT.reset(token)


def _drop_conv_input(conv: nn.Module, args: tuple) -> tuple | None:
    """Forward pre-hook of the backbone's convolutions: the network dropout, inside :func:`_network_dropout`."""
    drop = _NET_DROPOUT.get()
    return None if drop is None else (shared_dropout(args[0], *drop),)


# --------------------------------------------------------------------------------------------- metric
def _device_generator(generator: torch.Generator | None, device: torch.device) -> torch.Generator | None:
    """A generator on ``device``: ``generator`` itself if it lives there, else one seeded from it."""
    if generator is None or generator.device.type == device.type:
        return generator
    seed = int(torch.randint(0, 2**62, (), generator=generator, device=generator.device))
    return torch.Generator(device=device).manual_seed(seed)


class ELPIPS(DeepFeatures):
    """E-LPIPS-VGG / E-LPIPS-SqueezeNet (see the module docstring) for NCHW images in [0, 1].

    Args:
        net: "vgg" (VGG-16, the paper's main metric) or "squeeze" (SqueezeNet 1.1, "experimental").
        colorspace: "rgb" (3 channels) or "grey" (1 channel, replicated to 3).
        reduction: "mean", "sum" or "none" (shape (N,)).
        pretrained: ImageNet backbone and the published E-LPIPS linear weights (``weights/elpips/*.npy``);
            False: random backbone, linear weights 1.
        trainable: the linear weights require grad (the backbone is always frozen); in training mode a
            dropout (p = 0.5) on the squared differences, shared by the compared images (the original's
            ``use_lpips_dropout``).
        deterministic: no transformations and no network dropout (the network stays the one of ``config``).
        n: random draws averaged per call (memory with gradients grows with n; the original advises 1-3 for
            a loss, 50 for 2AFC, 200 for a single distance).
        backbone_weights: "imagenet", "random", a checkpoint path or a state dict (default from ``pretrained``).
        lin_weights: override the linear weights: an E-LPIPS ``.npy``, an LPIPS-layout checkpoint or a mapping.
        generator: torch RNG for the draws (CPU or the metric's device); None: torch's global RNG.
        config: "elpips" (default) or "lpips": the network layout and weights (see the module docstring).
        transforms: the transformations to use (default all of :data:`TRANSFORMS`, none when deterministic);
            e.g. ``("shift", "flip")`` for an ablation.
        net_dropout: dropout inside the network (default: not deterministic).
        dropout_keep: keep probability of the network dropout.
        scale_levels: S, the largest downscaling level (also limited by the image size, see
            :func:`scale_levels_for`).
        color_mode: "color" or "brightness".
        torchvision_pooling: pool as torchvision's modules do (SqueezeNet with ``ceil_mode=True``, as the
            ``lpips`` package and :class:`percept.metrics.deep.LPIPS`) instead of 'VALID' (floor) as the
            reference, whose SqueezeNet weights were trained that way (VGG-16 is the same either way). Fixed
            when the metric is built (the backbone's ``pooling``).
        max_batch_pixels: draws with the same scale level and transposition are evaluated together, as
            long as their transformed images (all compared images included) hold at most this many pixels.

    ``forward(input, target)`` returns the mean over ``n`` draws of the distance of each pair, reduced.
    ``sample_distances((a, b, ...), reference, n=...)`` returns every draw's distances of several images to
    one reference under shared draws, shape (n, K, N). Inputs smaller than :attr:`min_size` raise a
    ``ValueError`` (E-LPIPS: VGG 9 px, SqueezeNet 24 px, thanks to the shifts' 7 px padding; deterministic:
    VGG 16 px, SqueezeNet 31 px, 17 px with ``torchvision_pooling``).
    """

    higher_is_better = False

    def __init__(
        self,
        *,
        net: str = "vgg",
        colorspace: str = "rgb",
        reduction: str = "mean",
        pretrained: bool = True,
        trainable: bool = False,
        deterministic: bool = False,
        n: int = 1,
        backbone_weights: str | os.PathLike | Mapping | None = None,
        lin_weights: str | os.PathLike | Mapping | None = None,
        generator: torch.Generator | None = None,
        config: str = "elpips",
        transforms: bool | Iterable[str] | None = None,
        net_dropout: bool | None = None,
        dropout_keep: float = DROPOUT_KEEP,
        scale_levels: int = SCALE_LEVELS,
        color_mode: str = "color",
        torchvision_pooling: bool = False,
        max_batch_pixels: int = 1 << 22,
    ):
        net = lpips_net(net, ("vgg", "squeeze"), metric="E-LPIPS")
        if config not in ("elpips", "lpips"):
            raise ValueError(f"config must be 'elpips' or 'lpips', got {config!r}")
        colorspace, reduction = checks.normalize_colorspace(colorspace), checks.check_reduction(reduction)
        if deterministic and (transforms not in (None, False) or net_dropout):
            raise ValueError("deterministic=True excludes transforms and net_dropout")
        transforms = frozenset() if deterministic else _names(transforms)
        if not 0 < dropout_keep <= 1:
            raise ValueError(f"dropout_keep must be in (0, 1], got {dropout_keep}")
        if int(scale_levels) < 1:
            raise ValueError(f"scale_levels must be >= 1, got {scale_levels}")
        if color_mode not in ("color", "brightness"):
            raise ValueError(f"color_mode must be 'color' or 'brightness', got {color_mode!r}")
        n = self._check_n(n)
        cfg = CONFIGS[(net, config)]
        pooling = "avg" if cfg.avg_pool else ("torchvision" if torchvision_pooling else "floor")
        # NCHW throughout: with a dropout mask on every convolution's input, channels-last was 6 % slower on CPU
        backbone = backbone_for(cfg.arch, backbone_weights, pretrained, cfg.layers, pooling=pooling, channels_last=False)
        super().__init__(backbone)
        for m in self.backbone.modules():  # the network dropout, active only inside this metric's passes
            if isinstance(m, nn.Conv2d):
                m.register_forward_pre_hook(_drop_conv_input)
        self.colorspace, self.reduction, self.net, self.config = colorspace, reduction, net, config
        self.deterministic = bool(deterministic)
        self.transforms = transforms
        self.net_dropout = (not deterministic) if net_dropout is None else bool(net_dropout)
        self.dropout_keep = float(dropout_keep)
        self.scale_levels = int(scale_levels)
        self.color_mode = color_mode
        self.n = n
        self.trainable = bool(trainable)
        self.generator = generator
        self.max_batch_pixels = int(max_batch_pixels)
        self.torchvision_pooling = bool(torchvision_pooling)
        self.name = f"elpips-{self.net}" if self.config == "elpips" else f"elpips-{self.net} (lpips config)"
        channels = self.channels = self.backbone.channels
        if lin_weights is None and pretrained:
            lin_weights = assets.locate(cfg.lin_file)
        weights = read_lin_weights(lin_weights, channels) if lin_weights is not None else None
        self.lins = nn.ParameterList(
            [
                nn.Parameter(weights[k] if weights is not None else torch.ones(c), requires_grad=self.trainable)
                for k, c in enumerate(channels)
            ]
        )
        self.eval()

    # ----------------------------------------------------------------------------------------- options
    @staticmethod
    def _check_n(n) -> int:
        if isinstance(n, bool) or int(n) != n or int(n) < 1:
            raise ValueError(f"the number of samples n must be a positive integer, got {n!r}")
        return int(n)

    @property
    def stochastic(self) -> bool:
        """Whether calls are random (some transformation or the network dropout is on)."""
        return bool(self.transforms) or (self.net_dropout and self.dropout_keep < 1)

    @property
    def min_size(self) -> int:
        """Smallest H and W accepted: every tap must have a position for the network input (the image grown
        by the shifts' padding when "shift" is on), and the shifts' reflect padding needs 8 px."""
        if "shift" in self.transforms:
            return max(OFFSET_MAX + 1, self.backbone.min_size - OFFSET_MAX)
        return self.backbone.min_size

    def scale_levels_for(self, height: int, width: int) -> int:
        """S actually used for H x W images (1, i.e. no downscaling, when "scale" is off)."""
        return scale_levels_for(height, width, self.scale_levels) if "scale" in self.transforms else 1

    def sample(self, batch: int, height: int, width: int, generator: torch.Generator | None = None) -> Transform:
        """One draw of this metric's ensemble for ``batch`` images of H x W."""
        return sample_transform(
            batch,
            scale_levels=self.scale_levels_for(height, width),
            transforms=self.transforms,
            color_mode=self.color_mode,
            generator=generator if generator is not None else self.generator,
        )

    # ----------------------------------------------------------------------------------------- network
    def _pass(
        self, images: Sequence[torch.Tensor], reference: torch.Tensor, t: Transform | None, groups: int, gen
    ) -> torch.Tensor:
        """Distances (K, groups * N) of K images to the reference under draw ``t`` (of batch groups * N)."""
        k = len(images)
        stack = torch.cat([im.repeat(groups, 1, 1, 1) if groups > 1 else im for im in (*images, reference)])
        x = apply_transform(stack, t)
        b = x.shape[0] // (k + 1)
        gen = _device_generator(gen, x.device) if self.stochastic else None
        keep = self.dropout_keep if self.net_dropout else 1.0
        with _network_dropout(k + 1, keep, gen) if keep < 1 else contextlib.nullcontext():
            (feats,) = self.features(x)  # scaled, tapped, channel-normalised: one branch
        lpips_dropout = self.trainable and self.training
        total = [0.0] * k
        for f, w in zip(feats, self.lins):
            u = f.reshape(k + 1, b, *f.shape[1:])
            mask = None
            if lpips_dropout:
                mask = torch.empty(u.shape[1:], dtype=u.dtype, device=u.device).bernoulli_(0.5, generator=gen).mul_(2.0)
            for j in range(k):
                if mask is None:
                    d = squared_difference_mean(u[j], u[k], w)
                else:
                    d = ((u[j] - u[k]).square() * mask).flatten(2).mean(dim=2) @ w.to(u.dtype)
                total[j] = total[j] + d
        return torch.stack(total)

    # -------------------------------------------------------------------------------------- distances
    def sample_distances(
        self,
        images: torch.Tensor | Sequence[torch.Tensor],
        reference: torch.Tensor,
        *,
        n: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Distances of each image batch in ``images`` (K batches, each (N, C, H, W) like ``reference``) to
        ``reference``, for each of ``n`` draws (default ``self.n``), shape (n, K, N).

        Within a draw, all K images and the reference share the transformation and the dropout masks, so
        differences between the K distances have far less noise than independent evaluations."""
        if isinstance(images, torch.Tensor):
            images = (images,)
        images = list(images)
        if not images:
            raise ValueError(f"{self.name}: no images to compare")
        for j, im in enumerate(images):
            images[j], ref = prepare_pair(self, im, reference, self.min_size)
        reference = ref
        n = self.n if n is None else self._check_n(n)
        gen = generator if generator is not None else self.generator
        k, batch, _, h, w = len(images), *reference.shape
        if not self.stochastic:
            d = self._pass(images, reference, None, 1, None)
            return d.unsqueeze(0).expand(n, k, batch)
        draws = [self.sample(batch, h, w, gen) for _ in range(n)]
        groups: dict[tuple, list[int]] = {}
        for i, t in enumerate(draws):
            groups.setdefault(t.group_key, []).append(i)
        results: list[torch.Tensor | None] = [None] * n
        for members in groups.values():
            oh, ow = draws[members[0]].output_size(h, w)
            per_pass = max(1, self.max_batch_pixels // ((k + 1) * batch * oh * ow))
            for start in range(0, len(members), per_pass):
                chunk = members[start : start + per_pass]
                d = self._pass(images, reference, merge_transforms([draws[i] for i in chunk]), len(chunk), gen)
                d = d.view(k, len(chunk), batch)
                for g, i in enumerate(chunk):
                    results[i] = d[:, g]
        return torch.stack(results)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """input, target: (N, C, H, W) in [0, 1] (C = 3, or 1 for grey); the mean over ``n`` draws per image,
        reduced by ``reduction`` (scalar, or (N,) for "none")."""
        d = self.sample_distances((input,), target)[:, 0].mean(dim=0)
        return checks.reduce(d, self.reduction)

    def train(self, mode: bool = True) -> ELPIPS:
        super().train(mode)
        self.backbone.train(False)
        return self

    def extra_repr(self) -> str:
        return (
            f"net={self.net!r}, config={self.config!r}, n={self.n}, transforms={sorted(self.transforms)}, "
            f"net_dropout={self.net_dropout}, colorspace={self.colorspace!r}, reduction={self.reduction!r}"
        )
