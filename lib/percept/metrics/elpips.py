"""E-LPIPS (Kettunen, Härkönen and Lehtinen 2019): LPIPS averaged over random input transformations and
random dropout inside the network, :class:`ELPIPS`.

    E-LPIPS(x, y) = E_T[ L(T(x), T(y)) ]

T is one random draw of the ensemble **shared by both images** (and by every image compared with the
same reference, see :meth:`ELPIPS.sample_distances`), so d(x, x) = 0 exactly and d is symmetric. The metric
averages ``n`` independent draws per call; it is stochastic whatever ``.train()``/``.eval()`` says (E-LPIPS is
defined as an expectation), and reproducible through ``generator``.

>>> import torch
>>> from percept.metrics.elpips import ELPIPS
>>> metric = ELPIPS(net="squeeze", pretrained=False, n=2, reduction="none",
...                 generator=torch.Generator().manual_seed(0))    # random SqueezeNet, linear weights 1
>>> x, y = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)      # (N, 3, H, W) in [0, 1]
>>> with torch.no_grad():
...     d, same = metric(x, y), metric(x, x)
>>> d.shape, same.tolist()
(torch.Size([2]), [0.0, 0.0])
>>> metric.sample_distances((x, x.flip(-1)), y, n=3).shape          # (draws, images, N) under shared draws
torch.Size([3, 2, 2])
>>> published = ELPIPS(net="vgg")                                    # E-LPIPS-VGG, published weights  # doctest: +SKIP

The ensemble T (scale, shift, flip, transpose, permute, colour, in this order on [0, 1] images, as the
reference implementation ``mkettune/elpips`` codes it) and the network dropout are drawn by
:mod:`percept.metrics.elpips_sampling`, where each transformation is defined; its public names are
re-exported here.

After the transformations, x -> 2x - 1 and LPIPS's shift/scale. In the network, every convolution's input
(VGG conv1_1 on the image included; each SqueezeNet squeeze, expand1x1 and expand3x3 conv) is multiplied by a
Bernoulli(0.99) mask / 0.99, drawn per convolution and per image and shared by the compared images
(:func:`shared_dropout`, applied by forward pre-hooks on the backbone's convolutions that act only inside the
metric's own passes, so ``metric.backbone`` alone is the plain network). The backbone runs through the feature core of the deep
metrics (:class:`percept.metrics.deep_core.DeepFeatures`): the scaled input is tap -1, the pooling is chosen
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
``f / sqrt(sum f^2 + eps^2)`` of :func:`percept.metrics.deep_core.normalize_channels`; the scale levels are
always limited by the image size (the original did that only when asked). The VGG-16 trunk is torchvision's
ImageNet network (not retrained for average pooling, as in the original).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from percept import assets, checks, execution
from percept.backbones import LPIPS_LAYERS, lpips_net
from percept.metrics.deep_core import (
    DeepFeatures,
    backbone_for,
    prepare_pair,
    read_lin_weights,
    squared_difference_mean,
)
from percept.metrics.elpips_sampling import (
    COLOR_MIN,
    DROPOUT_KEEP,
    MIN_SCALED_SIZE,
    OFFSET_MAX,
    SCALE_LEVELS,
    TRANSFORMS,
    Transform,
    _drop_conv_input,
    _names,
    _network_dropout,
    apply_transform,
    merge_transforms,
    sample_transform,
    scale_levels_for,
    scale_probabilities,
    shared_dropout,
)

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
        k, batch = len(images), reference.shape[0]
        if not self.stochastic:
            d = self._pass(images, reference, None, 1, None)
            return d.unsqueeze(0).expand(n, k, batch)
        return self._sampled(images, reference, n, gen)

    @torch.compiler.disable
    def _sampled(self, images: list[torch.Tensor], reference: torch.Tensor, n: int, gen) -> torch.Tensor:
        """The (n, K, N) distances of :meth:`sample_distances` under ``n`` random draws.

        Runs eagerly under ``torch.compile``: each draw's scales and offsets would become constants of a
        traced graph, compiled again for every new draw until torch's recompilation limit."""
        execution.refuse_host_draws_in_capture(
            reference.device, f"{self.name} (random transformations per call)",
            "Call it outside the captured region (with transforms=() and net_dropout=False it draws nothing).",
        )
        k, batch, _, h, w = len(images), *reference.shape
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
