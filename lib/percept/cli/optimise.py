"""The image-optimising commands of ``percept``: ``pairwise-average`` and ``barycenter`` (E-LPIPS, through
:mod:`percept.elpips_tools`).

>>> from percept.cli import main
>>> main(["pairwise-average", "a.png", "b.png", "--steps", "2000", "-o", "out_bary2"])  # doctest: +SKIP
out_bary2/002000.png  (elpips-vgg, 2000 steps, final d(a,x)^2 + d(b,x)^2 = ...)
0
>>> main(["barycenter", "img.png", "--mode", "shift", "--steps", "2000", "-o", "out_bary10"])  # doctest: +SKIP
0

The metric is E-LPIPS (VGG by default) with ``--scale-levels`` (default 1, as the original examples ran) unless
``-O scale_levels=...`` sets them; the outputs (checkpoint images, ``save_<step>.npy``, ``log.csv``,
``run.json``) go to ``-o OUTDIR``, which may not hold the inputs under the names the outputs take.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from percept.cli.common import (
    CLIError,
    UsageError,
    _canonical,
    _device,
    _input_errors,
    _metric_errors,
    _read,
    _space,
    _warn,
)


def _optimisation_metric(args, height: int, width: int):
    """The metric of ``pairwise-average`` / ``barycenter``: E-LPIPS with --scale-levels (unless -O sets them)."""
    from percept import elpips_tools as tools

    if args.steps < 0:
        raise UsageError(f"--steps must be >= 0, got {args.steps}")
    if not args.lr > 0:
        raise UsageError(f"--lr must be > 0, got {args.lr}")
    if args.save_every < 0:
        raise UsageError(f"--save-every must be >= 0, got {args.save_every}")
    name = _canonical(args.metric)
    options = dict(args.options)
    if name.startswith("elpips-"):
        try:
            options.setdefault("scale_levels", tools.scale_levels_option(args.scale_levels, height, width))
        except ValueError as err:
            raise UsageError(f"--scale-levels: {err}") from None
    elif args.scale_levels != "1":
        _warn(f"{name} is not E-LPIPS: --scale-levels ignored")
    args.device_obj = _device(args.device)
    from percept.registry import get_metric

    with _metric_errors(name):
        metric = get_metric(name, colorspace=_space(args), reduction="none", device=args.device_obj, **options)
    return name, options, metric.eval()


def _check_outdir(outdir: Path, inputs: Sequence[Path]) -> None:
    if outdir.exists() and not outdir.is_dir():
        raise CLIError(f"{outdir} exists and is not a folder")
    for path in inputs:
        if path.resolve().parent == outdir.resolve() and path.name in ("src_image.png", "dest_image.png"):
            raise UsageError(f"{path} would be overwritten by the outputs in {outdir}: use another -o/--outdir")


def cmd_pairwise_average(args) -> int:
    from percept import elpips_tools as tools

    _check_outdir(args.outdir, (args.a, args.b))
    from percept.io import ImageReadError, ImageSizeError, check_same_size

    try:
        a, b = _read(args.a, args), _read(args.b, args)
        check_same_size((args.a, args.b), (a, b))
    except (ImageReadError, ImageSizeError) as err:
        raise CLIError(str(err)) from err
    name, options, metric = _optimisation_metric(args, *a.shape[-2:])
    with _input_errors(f"{args.a} and {args.b}"):
        result = tools.write_pairwise_average(
            a, b, metric, args.outdir, metric_name=name, metric_options=options, steps=args.steps, base_lr=args.lr,
            seed=args.seed, save_every=args.save_every, progress=None,
            extra={"inputs": [str(args.a), str(args.b)]})
    print(f"{args.outdir / f'{result.steps:06d}.png'}  ({name}, {result.steps} steps, "
          f"final d(a,x)^2 + d(b,x)^2 = {result.history[-1]['loss']:.6g})")
    return 0


def cmd_barycenter(args) -> int:
    from percept import elpips_tools as tools

    if args.count < 1:
        raise UsageError(f"--count must be at least 1, got {args.count}")
    if not args.noise_scale >= 0:
        raise UsageError(f"--noise-scale must be >= 0, got {args.noise_scale}")
    _check_outdir(args.outdir, (args.image,))
    from percept.io import ImageReadError

    try:
        src = _read(args.image, args)
    except ImageReadError as err:
        raise CLIError(str(err)) from err
    name, options, metric = _optimisation_metric(args, *src.shape[-2:])
    with _input_errors(str(args.image)):
        result = tools.write_perturbed_barycenter(
            src, metric, args.outdir, mode=args.mode, count=args.count, noise_scale=args.noise_scale,
            metric_name=name, metric_options=options, steps=args.steps, base_lr=args.lr, seed=args.seed,
            save_every=args.save_every, progress=None, extra={"input": str(args.image)})
    print(f"{args.outdir / f'{result.steps:06d}.png'}  ({name}, {args.count} {args.mode} copies, {result.steps} steps; "
          f"pixel mean: {args.outdir / 'input_mean.png'})")
    return 0


__all__ = ["cmd_pairwise_average", "cmd_barycenter"]
