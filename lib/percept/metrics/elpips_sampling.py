"""The random draws of E-LPIPS (:mod:`percept.metrics.elpips`): the input-transformation ensemble
(:class:`Transform`, :func:`sample_transform`, :func:`merge_transforms`, :func:`apply_transform`, the scale
levels and their probabilities) and the network dropout shared by the compared images (:func:`shared_dropout`
and the forward pre-hook that applies it to a backbone's convolutions).

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

>>> import torch
>>> from percept.metrics.elpips_sampling import apply_transform, sample_transform, scale_levels_for
>>> x = torch.rand(4, 3, 64, 64)                                   # (N, 3, H, W) in [0, 1]
>>> levels = scale_levels_for(64, 64)                              # 1: a 64 px image is not downscaled
>>> t = sample_transform(4, scale_levels=levels, generator=torch.Generator().manual_seed(0))
>>> t.output_size(64, 64), apply_transform(x, t).shape             # the shifts' padding adds 7 px
((71, 71), torch.Size([4, 3, 71, 71]))
>>> sorted(t.flips.tolist())                                       # flip codes stratified over the batch
[0, 1, 2, 3]
>>> both = apply_transform(torch.cat([x, x.flip(-1)]), t)          # a stacked pair shares the draw image by image
>>> torch.equal(both[:4], apply_transform(x, t))
True
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "SCALE_LEVELS",
    "MIN_SCALED_SIZE",
    "OFFSET_MAX",
    "DROPOUT_KEEP",
    "COLOR_MIN",
    "TRANSFORMS",
    "Transform",
    "scale_levels_for",
    "scale_probabilities",
    "sample_transform",
    "merge_transforms",
    "apply_transform",
    "shared_dropout",
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
