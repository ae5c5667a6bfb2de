"""Stochastic metrics as measurements: shared-sample comparisons and error-controlled estimates.

E-LPIPS (:class:`percept.metrics.elpips.ELPIPS`, ``percept.get_metric("elpips-vgg")``) is an expectation over
random transformations; one call averages ``n`` random draws. The helpers here turn draws into numbers with
error bars, as the reference implementation's example scripts do (``lpips_elpips.md`` D4):

>>> from percept import estimation  # doctest: +SKIP
>>> r = estimation.compare(ref, a, b, samples=30, seed=0)   # which of a and b is closer to ref?  # doctest: +SKIP
>>> r.d_a, r.d_b, r.diff, r.stderr                         # diff = d(ref, a) - d(ref, b) and its standard error  # doctest: +SKIP
>>> est = estimation.estimate(x, y)                        # sample until 1.96 SE < 0.01 and < 2.5 % of the mean  # doctest: +SKIP
>>> mean, stderr, n = est  # doctest: +SKIP
>>> mean, stderr, n = estimation.distance(x, y, samples=200, seed=0)   # a fixed number of independent draws  # doctest: +SKIP

:func:`compare` evaluates both images under the *same* draw (transformation and dropout masks) per sample,
so the noise of the two distances is correlated and their difference is far more precise than the
difference of two independent estimates. Any other metric (a Watson loss with random shifts, a deterministic
metric) is compared under shared seeds instead (:func:`shared_seed_samples`, :func:`seed_metric`). The
helpers take one image (C, H, W) or a batch (N, C, H, W) in [0, 1]; :func:`estimate` and :func:`distance`
take a single pair. They run without autograd.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from percept.execution import cached_constant
from percept.metrics.elpips import ELPIPS

__all__ = [
    "Comparison",
    "Estimate",
    "compare",
    "estimate",
    "distance",
    "build",
    "seed_metric",
    "shared_seed_samples",
]

#: draws per ``sample_distances`` call in :func:`compare` (one progress-bar step)
_CHUNK = 10
#: draws per ``sample_distances`` call in :func:`distance` (draws of one call are batched by scale level and
#: transposition, so larger calls are faster; the draws depend on this value for a given seed)
_DISTANCE_CHUNK = 50


@dataclass(frozen=True)
class Comparison:
    """Result of :func:`compare`. Floats for a single triple; (N,) float64 tensors for a batch of N.

    Attributes:
        d_a, d_b: mean E-LPIPS distances d(ref, a) and d(ref, b) over the samples.
        diff: mean of d(ref, a) - d(ref, b) per sample (< 0: a is closer).
        stderr: standard error of ``diff`` (sample std with ddof=1 over sqrt(n); NaN for n = 1).
        se_a, se_b: standard errors of d_a and d_b.
        n: number of shared samples.
        samples: the per-sample distances, (n, 2, N) float64 (index 0: a, 1: b).
    """

    d_a: float | torch.Tensor
    d_b: float | torch.Tensor
    diff: float | torch.Tensor
    stderr: float | torch.Tensor
    se_a: float | torch.Tensor
    se_b: float | torch.Tensor
    n: int
    samples: torch.Tensor

    @property
    def closer(self) -> str | torch.Tensor:
        """Which image is closer to ref: 'a', 'b' or 'equal' for one triple; a bool tensor (a is closer) for a batch."""
        if isinstance(self.diff, torch.Tensor):
            return self.diff < 0
        return "a" if self.diff < 0 else ("b" if self.diff > 0 else "equal")

    def __iter__(self) -> Iterator:
        """Unpacks as ``d_a, d_b, diff, stderr``."""
        return iter((self.d_a, self.d_b, self.diff, self.stderr))


@dataclass(frozen=True)
class Estimate:
    """Result of :func:`estimate`; unpacks as ``mean, stderr, n``.

    Attributes:
        mean: the E-LPIPS distance estimate (mean over the samples).
        stderr: its standard error (std with ddof=1 over sqrt(n)); the bounds were checked on 1.96 stderr.
        n: number of samples used.
        converged: whether both error bounds were met (else ``max_samples`` was reached).
        samples: the per-sample distances, (n,) float64.
    """

    mean: float
    stderr: float
    n: int
    converged: bool
    samples: torch.Tensor

    def __iter__(self) -> Iterator:
        return iter((self.mean, self.stderr, self.n))


# ------------------------------------------------------------------------------------------- helpers
@cached_constant(4)
def _cached_metric(net: str, device: str) -> ELPIPS:
    return ELPIPS(net=net, reduction="none").to(device).eval()


def build(net: str = "vgg", *, device: torch.device | str | None = None, **options) -> ELPIPS:
    """An :class:`ELPIPS` metric (``reduction="none"``) for the helpers. Without options the metric is cached
    per (net, device), so repeated calls do not reload the backbone."""
    device = str(torch.device(device)) if device is not None else "cpu"
    if not options:
        return _cached_metric(net, device)
    options.setdefault("reduction", "none")
    return ELPIPS(net=net, **options).to(device).eval()


def _batch(x: torch.Tensor, label: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{label} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 3:
        return x.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError(f"{label} must be (C, H, W) or (N, C, H, W), got shape {tuple(x.shape)}")
    return x


def _device_of(metric: nn.Module) -> torch.device | None:
    for t in metric.parameters():
        return t.device
    for t in metric.buffers():
        return t.device
    return None


def _generator(seed: int | None) -> torch.Generator | None:
    return torch.Generator().manual_seed(int(seed)) if seed is not None else None


def _stderr(values: torch.Tensor) -> torch.Tensor:
    """Standard error of the mean along dim 0 (NaN for a single sample)."""
    if values.shape[0] < 2:
        return torch.full(values.shape[1:], float("nan"), dtype=values.dtype)
    return values.std(dim=0, unbiased=True) / math.sqrt(values.shape[0])


def _progress(total: int, desc: str, progress: bool | None):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="sample", leave=False, file=sys.stderr,
                disable=None if progress is None else not progress)


def seed_metric(metric: nn.Module, seed: int) -> None:
    """Seed torch's global RNG and, if the metric has one, its own ``generator`` (a CPU generator: the
    Watson losses draw their shifts on the CPU, E-LPIPS derives a generator for its device from it)."""
    torch.manual_seed(int(seed))
    if hasattr(metric, "generator"):
        metric.generator = torch.Generator().manual_seed(int(seed))


def shared_seed_samples(
    metric: nn.Module, images: Sequence[torch.Tensor], reference: torch.Tensor, n: int, seed: int | None
) -> torch.Tensor:
    """(n, K, N) distances ``metric(image, reference)`` of K image batches, for any metric: sample i evaluates
    every image after :func:`seed_metric` with ``seed + i``, so a random metric draws the same randomness for
    all of them (a deterministic metric gives n equal rows). ``seed=None`` picks a random base seed."""
    base = int(seed) if seed is not None else int(torch.randint(0, 2**31 - 1, ()))
    out = []
    for i in range(n):
        row = []
        for im in images:
            seed_metric(metric, base + i)
            row.append(metric(im, reference).reshape(-1))
        out.append(torch.stack(row))
    return torch.stack(out)


# ------------------------------------------------------------------------------------------- compare
def _metric_and_images(fn: str, metric, net, device, options, **images):
    """The shared start of :func:`compare`, :func:`distance` and :func:`estimate`: build the metric when none
    is given (``options`` only apply then), batch the images and move them to the metric's device.
    Returns ``(metric, [images in the order given])``."""
    if metric is None:
        metric = build(net, device=device, **options)
    elif options:
        raise TypeError(f"options {sorted(options)} apply only when {fn}() builds the metric (metric=None)")
    batched = [_batch(v, name) for name, v in images.items()]
    dev = _device_of(metric)
    if dev is not None:
        batched = [v.to(dev) for v in batched]
    return metric, batched


def _one_pair(fn: str, x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape[0] != 1 or y.shape[0] != 1:
        raise ValueError(f"{fn}() takes one image pair, got batches of {x.shape[0]} and {y.shape[0]}")


def compare(
    ref: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    metric: nn.Module | None = None,
    net: str = "vgg",
    samples: int = 30,
    seed: int | None = None,
    device: torch.device | str | None = None,
    progress: bool | None = False,
    **options,
) -> Comparison:
    """Which of ``a`` and ``b`` is closer to ``ref`` under E-LPIPS, with a standard error.

    Each of the ``samples`` draws transforms ref, a and b identically (and shares the dropout masks), and
    evaluates d(ref, a) and d(ref, b) in one batched pass (the reference's correlated tuple evaluation; its
    ``ex_compare_distances`` uses 30 draws).

    Args:
        ref, a, b: (C, H, W) or (N, C, H, W) images in [0, 1] of the same shape.
        metric: an :class:`ELPIPS` (any ``reduction``; its ``n`` is ignored); default :func:`build` ``(net)``.
            Another stochastic metric is evaluated with a shared seed per sample instead.
        net: "vgg" or "squeeze", when ``metric`` is None.
        samples: number of shared draws.
        seed: seeds the draws (a CPU generator); None uses the metric's ``generator`` or torch's global RNG.
        device: where to build the metric (when ``metric`` is None); the images follow the metric.
        progress: tqdm progress bar (None: only on a terminal).
        options: further :class:`ELPIPS` options when ``metric`` is None (e.g. ``backbone_weights``).

    Returns:
        :class:`Comparison` (floats for N = 1, (N,) tensors otherwise).
    """
    samples = ELPIPS._check_n(samples)
    metric, (ref, a, b) = _metric_and_images("compare", metric, net, device, options, ref=ref, a=a, b=b)
    gen = _generator(seed)
    chunks = []
    with torch.no_grad():
        if hasattr(metric, "sample_distances"):
            with _progress(samples, "E-LPIPS compare", progress) as bar:
                done = 0
                while done < samples:
                    k = min(_CHUNK, samples - done)
                    chunks.append(metric.sample_distances((a, b), ref, n=k, generator=gen).double().cpu())
                    done += k
                    bar.update(k)
        else:
            chunks.append(shared_seed_samples(metric, (a, b), ref, samples, seed).double().cpu())
    values = torch.cat(chunks)  # (n, 2, N)
    diff = values[:, 0] - values[:, 1]
    fields = {
        "d_a": values[:, 0].mean(0),
        "d_b": values[:, 1].mean(0),
        "diff": diff.mean(0),
        "stderr": _stderr(diff),
        "se_a": _stderr(values[:, 0]),
        "se_b": _stderr(values[:, 1]),
    }
    if values.shape[2] == 1:
        fields = {k: float(v[0]) for k, v in fields.items()}
    return Comparison(**fields, n=samples, samples=values)


# ------------------------------------------------------------------------------------------ distance
def distance(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    samples: int = 200,
    metric: nn.Module | None = None,
    net: str = "vgg",
    seed: int | None = None,
    device: torch.device | str | None = None,
    progress: bool | None = False,
    **options,
) -> Estimate:
    """E-LPIPS distance of one image pair as the mean of exactly ``samples`` independent draws, with its
    standard error (the reference's ``ex_simple_distance``: a batch of one image, n = 200 draws).

    Unlike :func:`estimate` every draw transforms the single pair on its own (no tiling into a stratified
    batch) and there is no stopping rule. The draws are evaluated ``_DISTANCE_CHUNK`` at a time
    (``metric.sample_distances(x, y, n=...)`` with one generator seeded by ``seed``).

    Args:
        x, y: (C, H, W) or (1, C, H, W) images in [0, 1] of the same shape (x: input, y: reference).
        samples: number of draws (at least 2, for a standard error).
        metric, net, seed, device, progress, options: as :func:`compare`.

    Returns:
        :class:`Estimate` with ``n == samples``; ``converged`` says whether the reference's default bounds
        (1.96 stderr < 0.01 and < 2.5 % of the mean) hold.
    """
    samples = ELPIPS._check_n(samples)
    if samples < 2:
        raise ValueError(f"a standard error needs at least 2 samples, got {samples}")
    metric, (x, y) = _metric_and_images("distance", metric, net, device, options, x=x, y=y)
    if not hasattr(metric, "sample_distances"):
        raise TypeError(f"distance() needs an E-LPIPS metric (with sample_distances), got {type(metric).__name__}")
    _one_pair("distance", x, y)
    gen = _generator(seed)
    chunks = []
    with torch.no_grad(), _progress(samples, "E-LPIPS distance", progress) as bar:
        done = 0
        while done < samples:
            k = min(_DISTANCE_CHUNK, samples - done)
            chunks.append(metric.sample_distances(x, y, n=k, generator=gen)[:, 0, 0].double().cpu())
            done += k
            bar.update(k)
    t = torch.cat(chunks)
    mean, se = float(t.mean()), float(_stderr(t))
    converged = 1.96 * se < 0.01 and 1.96 * se < 0.025 * mean
    return Estimate(mean, se, samples, converged, t)


# ------------------------------------------------------------------------------------------ estimate
def estimate(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    abs_err: float = 0.01,
    rel_err: float = 0.025,
    max_samples: int = 5000,
    min_samples: int = 10,
    batch: int = 10,
    metric: nn.Module | None = None,
    net: str = "vgg",
    seed: int | None = None,
    device: torch.device | str | None = None,
    progress: bool | None = True,
    **options,
) -> Estimate:
    """E-LPIPS distance of one image pair, sampled until ``1.96 * stderr < abs_err`` and
    ``1.96 * stderr < rel_err * mean`` (after at least ``min_samples``), or ``max_samples`` samples.

    As the reference's ``ex_evaluate_distance.py``: the pair is tiled into a batch of ``batch`` copies, so one
    draw gives ``batch`` stratified samples (flips, permutations and colour factors are stratified across the
    batch; the scale level and the transposition are shared by it), and every copy counts as one sample.
    The scale levels follow the image size (:func:`scale_levels_for`). A zero standard error (identical
    images, a deterministic metric) meets both bounds.

    Args:
        x, y: (C, H, W) or (1, C, H, W) images in [0, 1] of the same shape.
        abs_err, rel_err: the two bounds on the 1.96-sigma error (reference defaults 0.01 and 2.5 %).
        max_samples: hard limit on the number of samples (reference default 5000).
        min_samples: samples before the bounds are first checked (at least 2).
        batch: copies per draw.
        metric, net, seed, device, options: as :func:`compare`.
        progress: tqdm progress bar with the running estimate (None: only on a terminal).

    Returns:
        :class:`Estimate` (``mean, stderr, n = estimate(...)`` unpacks it).
    """
    if not (abs_err > 0 and rel_err > 0):
        raise ValueError(f"abs_err and rel_err must be > 0, got {abs_err} and {rel_err}")
    max_samples, batch = ELPIPS._check_n(max_samples), ELPIPS._check_n(batch)
    min_samples = max(2, int(min_samples))
    metric, (x, y) = _metric_and_images("estimate", metric, net, device, options, x=x, y=y)
    _one_pair("estimate", x, y)
    gen = _generator(seed)
    values: list[float] = []
    converged = False
    mean = se = float("nan")
    with torch.no_grad(), _progress(max_samples, "E-LPIPS estimate", progress) as bar:
        while len(values) < max_samples:
            k = min(batch, max_samples - len(values))
            xt, yt = x.expand(k, -1, -1, -1), y.expand(k, -1, -1, -1)
            if hasattr(metric, "sample_distances"):
                d = metric.sample_distances(xt, yt, n=1, generator=gen)[0, 0]
            else:
                if seed is not None and not values:
                    seed_metric(metric, seed)
                d = metric(xt, yt).reshape(-1)
            values.extend(d.double().cpu().tolist())
            bar.update(k)
            if len(values) >= min_samples:
                t = torch.tensor(values, dtype=torch.float64)
                mean, se = float(t.mean()), float(_stderr(t))
                half = 1.96 * se
                bar.set_postfix_str(f"{mean:.5g} ± {half:.2g}")
                if half == 0 or (half < abs_err and half < rel_err * mean):
                    converged = True
                    break
    t = torch.tensor(values, dtype=torch.float64)
    mean = float(t.mean())
    se = float(_stderr(t)) if len(values) > 1 else float("nan")
    return Estimate(mean, se, len(values), converged, t)
