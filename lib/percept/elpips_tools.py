"""Images found by optimising against E-LPIPS: the barycenter examples of the reference implementation.

The E-LPIPS repository (``mkettune/elpips``) ships two example scripts that *optimise an image* under the
metric (``lpips_elpips.md`` D6); here they are library functions, and ``percept pairwise-average`` /
``percept barycenter`` are their commands:

- :func:`pairwise_average` (``ex_pairwise_average.py``): the average of two images A and B, the minimiser of
  ``d(A, x)^2 + d(B, x)^2``. Both distances come from one random draw of the ensemble (the reference's
  correlated tuple ``forward((A, B), x)``: x is the reference of both comparisons).
- :func:`perturbed_barycenter` (``ex_bary10.py``): the average of ``count`` (10) perturbed copies of one
  image (:func:`perturbed_copies`: Gaussian noise of sigma 0.07, clipped, or random integer shifts in
  [-2, 2] px with reflect padding). Each step minimises ``d(x, c)^2`` for one copy c drawn uniformly at
  random (stochastic over the inputs too); the pixel mean of the copies is the L2 answer to compare with.

Both start from ``clip(0.5 + 0.2 N(0, 1), 1e-5, 1 - 1e-5)``, take Adam steps with the learning rate
``lr / (1 + 0.02 t'^0.75)``, ``t' = sqrt(100^2 + t^2) - 100`` (a gradual start, then between 1/t and 1/sqrt(t);
``lr`` = 0.03) and clip x to [1e-5, 1 - 1e-5] before every step. The reference runs 100,000 steps ("may take
hours"), writing the image at the steps of :func:`checkpoint_steps`.

As the reference scripts ran, E-LPIPS does **not** downscale here by default (``scale_levels=1``): their call
``set_scale_levels_by_image_size(image[0].shape[1], image[0].shape[2])`` passes (W, 3) of an NHWC array, which
sets one scale level whatever the image size (spec D6). :func:`scale_levels_option` with "auto" gives the
levels the image size allows (the intent). Any percept metric can stand in for E-LPIPS (``l2``, ``lpips-vgg``,
...); a metric with ``sample_distances`` (E-LPIPS) draws once per step, any other is called directly.

Images are (1, C, H, W) tensors in [0, 1]; results are the same shape.

>>> import percept
>>> from percept.elpips_tools import pairwise_average
>>> metric = percept.get_metric("elpips-vgg")                    # doctest: +SKIP
>>> result = pairwise_average(a, b, metric, steps=500)           # a, b: (1, 3, H, W) in [0, 1]  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from percept.runinfo import machine_info, write_json

__all__ = [
    "TOLERANCE",
    "BASE_LR",
    "STEPS",
    "SAVE_EVERY",
    "NOISE_SCALE",
    "MAX_SHIFT",
    "PERTURBATIONS",
    "learning_rate",
    "checkpoint_steps",
    "initial_image",
    "shift_image",
    "perturbed_copies",
    "distances",
    "OptimisationResult",
    "optimise_image",
    "pairwise_average",
    "perturbed_barycenter",
    "scale_levels_option",
    "write_pairwise_average",
    "write_perturbed_barycenter",
]

#: how far the optimised image is kept from 0 and 1
TOLERANCE = 1e-5
#: the learning-rate multiplier (``--learning_rate``)
BASE_LR = 0.03
#: the reference's number of steps
STEPS = 100_000
#: the float image is saved (``save_<step>.npy``) at multiples of this step
SAVE_EVERY = 10_000
#: sigma of the Gaussian noise of the "noise" copies
NOISE_SCALE = 0.07
#: the "shift" copies move by integers in [-MAX_SHIFT, MAX_SHIFT] px
MAX_SHIFT = 2
PERTURBATIONS = ("noise", "shift")
#: steps at which images are written below 2000 (then every 500 and the last)
_EARLY_CHECKPOINTS = (0, 1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200, 300, 400, 600, 900, 1200, 1500)


# ------------------------------------------------------------------------------------------- schedule
def learning_rate(step: int, base: float = BASE_LR) -> float:
    """The reference's step size at ``step`` (0 for the first update): ``base / (1 + 0.02 t'^0.75)`` with the
    gradual start ``t' = sqrt(100^2 + step^2) - 100``."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    t = math.sqrt(100.0**2 + float(step) ** 2) - 100.0
    return base / (1.0 + 0.02 * t**0.75)


def checkpoint_steps(steps: int) -> list[int]:
    """Steps (numbers of updates done) at which the image is written: 0, 1, 2, 3, 5, ..., 1500, then every
    500 from 2000, and ``steps`` itself; none beyond ``steps``."""
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    marks = {s for s in _EARLY_CHECKPOINTS if s <= steps} | set(range(2000, steps + 1, 500)) | {steps}
    return sorted(marks)


# ------------------------------------------------------------------------------------------- images
def _check_image(x: torch.Tensor, label: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{label} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] not in (1, 3):
        raise ValueError(f"{label} must be one image (1, C, H, W) or (C, H, W) with C = 1 or 3, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{label} must be a float tensor in [0, 1], got {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{label} contains NaN or inf")
    if x.min() < 0 or x.max() > 1:
        raise ValueError(f"{label} has values outside [0, 1] (min {float(x.min()):.3g}, max {float(x.max()):.3g})")
    return x


def initial_image(shape: Sequence[int], generator: torch.Generator | None = None) -> torch.Tensor:
    """The starting point ``clip(0.5 + 0.2 N(0, 1), TOLERANCE, 1 - TOLERANCE)`` of the given shape (float32)."""
    noise = torch.randn(tuple(shape), generator=generator, dtype=torch.float32)
    return (0.5 + 0.2 * noise).clamp_(TOLERANCE, 1.0 - TOLERANCE)


def shift_image(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Move (N, C, H, W) images by ``dy`` rows down and ``dx`` columns right, filling the uncovered border by
    reflection (the reference: crop, then numpy ``pad(..., 'reflect')``, i.e. mirror without repeating the
    edge). |dy| and |dx| must be smaller than H and W."""
    h, w = x.shape[-2:]
    if abs(dy) >= h or abs(dx) >= w:
        raise ValueError(f"shift ({dy}, {dx}) too large for a {h}x{w} image")
    crop = x[..., max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)]
    pad = (max(0, dx), max(0, -dx), max(0, dy), max(0, -dy))  # left, right, top, bottom
    if not any(pad):
        return crop.clone()
    if max(pad[0], pad[1]) >= crop.shape[-1] or max(pad[2], pad[3]) >= crop.shape[-2]:
        raise ValueError(f"shift ({dy}, {dx}) too large to reflect-pad a {h}x{w} image")
    return F.pad(crop, pad, mode="reflect")


def perturbed_copies(
    src: torch.Tensor,
    count: int = 10,
    mode: str = "noise",
    *,
    noise_scale: float = NOISE_SCALE,
    max_shift: int = MAX_SHIFT,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, list[dict]]:
    """``count`` perturbed copies of one image (1, C, H, W) in [0, 1], as the reference's ``ex_bary10.py``:

    - ``"noise"``: ``clip(src + noise_scale * N(0, 1), 0, 1)``, fresh noise per copy;
    - ``"shift"``: :func:`shift_image` by (dy, dx), each uniform in [-max_shift, max_shift] (dx drawn first).

    Returns ``(copies (count, C, H, W), [{"mode", "dy", "dx"} or {"mode", "noise_scale"} per copy])``.
    """
    src = _check_image(src, "the source image")
    if int(count) != count or count < 1:
        raise ValueError(f"count must be a positive integer, got {count}")
    if mode not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {mode!r}: use one of {', '.join(PERTURBATIONS)}")
    copies, info = [], []
    for _ in range(int(count)):
        if mode == "noise":
            if not noise_scale >= 0:
                raise ValueError(f"noise_scale must be >= 0, got {noise_scale}")
            noise = torch.randn(src.shape, generator=generator, dtype=torch.float32).to(src.device, src.dtype)
            copies.append((src + noise_scale * noise).clamp(0.0, 1.0))
            info.append({"mode": mode, "noise_scale": float(noise_scale)})
        else:
            dx, dy = (int(v) for v in torch.randint(-max_shift, max_shift + 1, (2,), generator=generator))
            copies.append(shift_image(src, dy, dx))
            info.append({"mode": mode, "dy": dy, "dx": dx})
    return torch.cat(copies), info


# ------------------------------------------------------------------------------------------ distances
def distances(
    metric: nn.Module, images: Sequence[torch.Tensor], reference: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """(K,) distances of the K single images to ``reference``, differentiable in all of them.

    A metric with ``sample_distances`` (E-LPIPS) evaluates them under **one** shared random draw (one
    transformation and one set of dropout masks, from ``generator``); any other metric is called as
    ``metric(image, reference)`` (input, target) with ``reduction="none"``."""
    if hasattr(metric, "sample_distances"):
        return metric.sample_distances(tuple(images), reference, n=1, generator=generator)[0, :, 0]
    return torch.stack([metric(im, reference).reshape(-1)[0] for im in images])


# ----------------------------------------------------------------------------------------- optimiser
@dataclass
class OptimisationResult:
    """The image found and the log of its optimisation.

    Attributes:
        image: the final image (1, C, H, W) in [TOLERANCE, 1 - TOLERANCE] (after ``steps`` updates, clipped).
        initial: the starting image.
        history: one row per checkpoint step: ``{"step", "loss", "learning_rate", "seconds"}``; ``loss`` is the
            objective of the draw taken at that step (before its update).
        steps: number of updates.
    """

    image: torch.Tensor
    initial: torch.Tensor
    history: list[dict] = field(default_factory=list)
    steps: int = 0


def optimise_image(
    objective: Callable[[torch.Tensor, int], torch.Tensor],
    init: torch.Tensor,
    *,
    steps: int = STEPS,
    base_lr: float = BASE_LR,
    on_checkpoint: Callable[[int, torch.Tensor, dict], None] | None = None,
    progress: bool | None = False,
) -> OptimisationResult:
    """Minimise ``objective(x, step)`` over an image x with the reference's Adam schedule.

    Iteration t = 0 .. ``steps``: clip x to [TOLERANCE, 1 - TOLERANCE]; evaluate the objective; at the steps of
    :func:`checkpoint_steps` call ``on_checkpoint(t, x, row)`` (x after t updates); then, for t < ``steps``, an
    Adam step (betas 0.9, 0.999) with learning rate :func:`learning_rate` ``(t, base_lr)``.
    """
    if int(steps) != steps or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps}")
    if not base_lr > 0:
        raise ValueError(f"the learning rate must be > 0, got {base_lr}")
    steps = int(steps)
    x = init.detach().clone().requires_grad_(True)
    optimiser = torch.optim.Adam([x], lr=learning_rate(0, base_lr), betas=(0.9, 0.999))
    marks = set(checkpoint_steps(steps))
    history: list[dict] = []
    start = time.perf_counter()
    from tqdm.auto import tqdm

    bar = tqdm(total=steps, desc="optimising", unit="step", leave=False, disable=None if progress is None else not progress)
    try:
        for t in range(steps + 1):
            with torch.no_grad():
                x.clamp_(TOLERANCE, 1.0 - TOLERANCE)
            lr = learning_rate(t, base_lr)
            loss = objective(x, t)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the objective became {float(loss.detach())} at step {t}")
            if t in marks:
                row = {"step": t, "loss": float(loss.detach()), "learning_rate": lr, "seconds": time.perf_counter() - start}
                history.append(row)
                if on_checkpoint is not None:
                    on_checkpoint(t, x.detach(), row)
            if t == steps:
                break
            for group in optimiser.param_groups:
                group["lr"] = lr
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            bar.update(1)
            if t % 50 == 0:
                bar.set_postfix(loss=f"{float(loss.detach()):.4g}")
    finally:
        bar.close()
    return OptimisationResult(x.detach().clamp(TOLERANCE, 1.0 - TOLERANCE), init.detach().clone(), history, steps)


def _generators(seed: int | None) -> tuple[torch.Generator, torch.Generator]:
    """(data generator: start image, copies, choices; draw generator: the metric's random transformations)."""
    base = int(seed) if seed is not None else int(torch.randint(0, 2**31 - 1, ()))
    return torch.Generator().manual_seed(base), torch.Generator().manual_seed(base + 1)


def _metric_device(metric: nn.Module) -> torch.device:
    for t in (*metric.parameters(), *metric.buffers()):
        return t.device
    return torch.device("cpu")


def pairwise_average(
    a: torch.Tensor,
    b: torch.Tensor,
    metric: nn.Module,
    *,
    steps: int = STEPS,
    base_lr: float = BASE_LR,
    seed: int | None = 0,
    init: torch.Tensor | None = None,
    on_checkpoint: Callable[[int, torch.Tensor, dict], None] | None = None,
    progress: bool | None = False,
) -> OptimisationResult:
    """The average of images ``a`` and ``b`` (each (1, C, H, W) in [0, 1], same shape) under ``metric``: the
    minimiser of ``d(a, x)^2 + d(b, x)^2``, both distances from one shared draw per step (x is the reference).

    ``metric`` must return per-image distances (``reduction="none"``); its parameters are not optimised.
    ``seed`` seeds the start image and the metric's draws; ``init`` replaces the random start.
    """
    a, b = _check_image(a, "image a"), _check_image(b, "image b")
    if a.shape != b.shape:
        raise ValueError(f"the two images differ in shape: {tuple(a.shape)} and {tuple(b.shape)}")
    device = _metric_device(metric)
    a, b = a.to(device, torch.float32), b.to(device, torch.float32)
    data_gen, draw_gen = _generators(seed)
    start = initial_image(a.shape, data_gen) if init is None else _check_image(init, "init").clone().float()

    def objective(x: torch.Tensor, step: int) -> torch.Tensor:
        d = distances(metric, (a, b), x, draw_gen)
        return d.square().sum()

    return optimise_image(objective, start.to(device), steps=steps, base_lr=base_lr, on_checkpoint=on_checkpoint,
                          progress=progress)


def perturbed_barycenter(
    copies: torch.Tensor,
    metric: nn.Module,
    *,
    steps: int = STEPS,
    base_lr: float = BASE_LR,
    seed: int | None = 0,
    init: torch.Tensor | None = None,
    on_checkpoint: Callable[[int, torch.Tensor, dict], None] | None = None,
    progress: bool | None = False,
) -> OptimisationResult:
    """The barycenter of images ``copies`` (K, C, H, W) in [0, 1] under ``metric``: each step minimises
    ``d(x, c)^2`` for one copy c drawn uniformly at random (x is the input, c the reference), one draw of the
    ensemble per step. ``seed`` seeds the start image, the choice of copies and the metric's draws."""
    if not isinstance(copies, torch.Tensor) or copies.dim() != 4 or copies.shape[0] < 1:
        raise ValueError(f"copies must be a (K, C, H, W) tensor with K >= 1, got {getattr(copies, 'shape', copies)}")
    for i in range(copies.shape[0]):
        _check_image(copies[i : i + 1], f"copy {i}")
    device = _metric_device(metric)
    copies = copies.to(device, torch.float32)
    data_gen, draw_gen = _generators(seed)
    start = initial_image((1, *copies.shape[1:]), data_gen) if init is None else _check_image(init, "init").clone()
    count = copies.shape[0]

    def objective(x: torch.Tensor, step: int) -> torch.Tensor:
        k = int(torch.randint(0, count, (), generator=data_gen))
        return distances(metric, (x,), copies[k : k + 1], draw_gen).square().sum()

    return optimise_image(objective, start.float().to(device), steps=steps, base_lr=base_lr,
                          on_checkpoint=on_checkpoint, progress=progress)


# ------------------------------------------------------------------------------------------- options
def scale_levels_option(value: str | int, height: int, width: int) -> int:
    """E-LPIPS scale levels for the examples: an integer >= 1, or "auto" (what an H x W image allows,
    :func:`percept.metrics.elpips_sampling.scale_levels_for`). The reference examples effectively used 1."""
    from percept.metrics.elpips_sampling import scale_levels_for

    if str(value).strip().lower() == "auto":
        return scale_levels_for(height, width)
    try:
        levels = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"scale levels must be a positive integer or 'auto', got {value!r}") from None
    if levels < 1:
        raise ValueError(f"scale levels must be >= 1, got {levels}")
    return levels


# ---------------------------------------------------------------------------------------------- files
def _save_png(x: torch.Tensor, path: Path) -> None:
    from percept.io import save_image

    save_image(x.detach().float().cpu(), path)


def _write_log(path: Path, history: list[dict]) -> None:
    from percept.guard import atomic_output

    with atomic_output(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["step", "loss", "learning_rate", "seconds"], lineterminator="\n")
        writer.writeheader()
        for row in history:
            writer.writerow({k: (f"{v:.8g}" if isinstance(v, float) else v) for k, v in row.items()})


def _save_float(x: torch.Tensor, path: Path) -> None:
    from percept.guard import atomic_output

    array = x.detach().float().cpu()[0].permute(1, 2, 0).numpy().astype(np.float32)  # (H, W, C)
    with atomic_output(path, "wb") as f:
        np.save(f, array)


def _checkpoint_writer(outdir: Path, save_every: int) -> Callable[[int, torch.Tensor, dict], None]:
    def write(step: int, x: torch.Tensor, row: dict) -> None:
        _save_png(x, outdir / f"{step:06d}.png")
        if save_every and step % save_every == 0:
            _save_float(x, outdir / f"save_{step:06d}.npy")

    return write


def _run_info(kind: str, metric: nn.Module, metric_name: str, options: dict, result: OptimisationResult,
              extra: dict) -> dict:
    return {
        "command": kind,
        "metric": metric_name,
        "metric_options": {k: str(v) for k, v in options.items()},
        "steps": result.steps,
        "final_loss": result.history[-1]["loss"] if result.history else None,
        **extra,
        "machine": machine_info(_metric_device(metric)),
    }


def write_pairwise_average(
    a: torch.Tensor,
    b: torch.Tensor,
    metric: nn.Module,
    outdir: str | Path,
    *,
    metric_name: str = "",
    metric_options: dict | None = None,
    steps: int = STEPS,
    base_lr: float = BASE_LR,
    seed: int | None = 0,
    save_every: int = SAVE_EVERY,
    progress: bool | None = None,
    extra: dict | None = None,
) -> OptimisationResult:
    """:func:`pairwise_average` writing the reference's files into ``outdir``: ``src_image.png`` (a),
    ``dest_image.png`` (b), ``initial_image.png``, ``<step:06d>.png`` at every :func:`checkpoint_steps` step
    (the result is ``<steps:06d>.png``), ``save_<step:06d>.npy`` (float32 (H, W, C)) every ``save_every``
    steps and at the end; and ``log.csv`` (step, loss, learning_rate, seconds) and ``run.json``."""
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise NotADirectoryError(f"{outdir} exists and is not a folder")
    outdir.mkdir(parents=True, exist_ok=True)
    a, b = _check_image(a, "image a"), _check_image(b, "image b")
    _save_png(a, outdir / "src_image.png")
    _save_png(b, outdir / "dest_image.png")
    data_gen, _ = _generators(seed)
    init = initial_image(a.shape, data_gen)
    _save_png(init, outdir / "initial_image.png")
    result = pairwise_average(a, b, metric, steps=steps, base_lr=base_lr, seed=seed, init=init,
                              on_checkpoint=_checkpoint_writer(outdir, save_every), progress=progress)
    _save_float(result.image, outdir / f"save_{result.steps:06d}.npy")
    _write_log(outdir / "log.csv", result.history)
    info = {"images": {"a": "src_image.png", "b": "dest_image.png"}, "result": f"{result.steps:06d}.png",
            "learning_rate": base_lr, "seed": seed, **(extra or {})}
    write_json(outdir / "run.json", _run_info("pairwise-average", metric, metric_name, metric_options or {}, result, info))
    return result


def write_perturbed_barycenter(
    src: torch.Tensor,
    metric: nn.Module,
    outdir: str | Path,
    *,
    mode: str,
    count: int = 10,
    noise_scale: float = NOISE_SCALE,
    metric_name: str = "",
    metric_options: dict | None = None,
    steps: int = STEPS,
    base_lr: float = BASE_LR,
    seed: int | None = 0,
    save_every: int = SAVE_EVERY,
    progress: bool | None = None,
    extra: dict | None = None,
) -> OptimisationResult:
    """:func:`perturbed_copies` of ``src`` and their :func:`perturbed_barycenter`, writing the reference's files
    into ``outdir``: ``src_image.png``, ``input<i:02d>.png`` (the copies), ``input_mean.png`` (their pixel mean,
    the L2 barycenter), ``initial_image.png``, ``<step:06d>.png`` at the checkpoint steps, ``save_*.npy``,
    ``log.csv``, ``run.json`` (with each copy's perturbation)."""
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise NotADirectoryError(f"{outdir} exists and is not a folder")
    src = _check_image(src, "the source image")
    data_gen, _ = _generators(seed)
    copies, info = perturbed_copies(src, count, mode, noise_scale=noise_scale, generator=data_gen)
    init = initial_image(src.shape, data_gen)
    outdir.mkdir(parents=True, exist_ok=True)
    _save_png(src, outdir / "src_image.png")
    for i in range(copies.shape[0]):
        _save_png(copies[i : i + 1], outdir / f"input{i:02d}.png")
    _save_png(copies.mean(dim=0, keepdim=True), outdir / "input_mean.png")
    _save_png(init, outdir / "initial_image.png")

    # the copies and the start came from data_gen; the steps (choices, draws) get generators of their own
    result = perturbed_barycenter(copies, metric, steps=steps, base_lr=base_lr,
                                  seed=None if seed is None else int(seed) + 2, init=init,
                                  on_checkpoint=_checkpoint_writer(outdir, save_every), progress=progress)
    _save_float(result.image, outdir / f"save_{result.steps:06d}.npy")
    _write_log(outdir / "log.csv", result.history)
    payload = {"source": "src_image.png", "mode": mode, "count": int(count), "copies": info,
               "result": f"{result.steps:06d}.png", "pixel_mean": "input_mean.png", "learning_rate": base_lr,
               "seed": seed, **(extra or {})}
    write_json(outdir / "run.json", _run_info("barycenter", metric, metric_name, metric_options or {}, result, payload))
    return result
