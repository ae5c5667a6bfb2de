"""The distance commands of ``percept``: ``dist``, ``estimate``, ``dirs``, ``pairs``, ``compare`` and ``list``.

>>> from percept.cli import main
>>> main(["dist", "ref.png", "img.png", "-m", "watson-dft"])  # doctest: +SKIP
0.61803399
0
>>> main(["pairs", "photos", "--consecutive", "-o", "pairs.csv"])  # doctest: +SKIP
0

Each ``cmd_*`` takes the parsed arguments (:func:`percept.cli.build_parser`), prints its result (one value,
or CSV rows on standard output or to ``-o``) and returns the exit status; errors are raised as
:class:`percept.cli.CLIError` / :class:`percept.cli.UsageError`. The first image is always the reference
(the metric's ``target``).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from percept.cli.common import (
    DEFAULT_DIST_SAMPLES,
    DEFAULT_STOCHASTIC_SAMPLES,
    CLIError,
    UsageError,
    _batched_distances,
    _canonical,
    _evaluate,
    _fmt,
    _input_errors,
    _metric_errors,
    _prepare,
    _read,
    _read_pair,
    _samples_elpips,
    _warn,
    _writer,
)


def cmd_dist(args) -> int:
    if args.samples is not None and args.samples < 2:
        raise UsageError(f"-n/--samples must be at least 2 (a standard error needs two draws), got {args.samples}")
    name = _canonical(args.metric)
    ref, img = _read_pair(args)
    name, metric = _prepare(args)
    ref, img = ref.to(args.device_obj), img.to(args.device_obj)
    if _samples_elpips(metric):
        from percept import estimation

        samples = args.samples if args.samples is not None else DEFAULT_DIST_SAMPLES
        with _input_errors(f"{args.ref} vs {args.img}"):
            est = estimation.distance(img, ref, samples=samples, metric=metric, seed=args.seed, progress=None)
        print(f"{_fmt(est.mean)} ± {est.stderr:.4g} (standard error over {est.n} draws, seed {args.seed})")
        return 0
    if args.samples is not None:
        _warn(f"{name} is deterministic here: -n/--samples ignored")
    (value,) = _evaluate(metric, name, img, ref, f"{args.ref} vs {args.img}", args.seed)
    print(_fmt(value))
    return 0


def cmd_estimate(args) -> int:
    if not (args.abs_err > 0 and args.rel_err > 0):
        raise UsageError(f"--abs-err and --rel-err must be > 0, got {args.abs_err} and {args.rel_err}")
    if args.min_samples < 2:
        raise UsageError(f"--min-samples must be at least 2 (a standard error needs two samples), got {args.min_samples}")
    if args.max_samples < args.min_samples:
        raise UsageError(f"--max-samples ({args.max_samples}) must be at least --min-samples ({args.min_samples})")
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    ref, img = _read_pair(args)
    name, metric = _prepare(args)
    if not _samples_elpips(metric):
        raise UsageError(f"estimate samples a random E-LPIPS metric; {name} is deterministic here (use `percept dist`)")
    from percept import estimation

    ref, img = ref.to(args.device_obj), img.to(args.device_obj)
    with _input_errors(f"{args.ref} vs {args.img}"):
        est = estimation.estimate(img, ref, abs_err=args.abs_err, rel_err=args.rel_err,
                                  max_samples=args.max_samples, min_samples=args.min_samples, batch=args.batch_size,
                                  metric=metric, seed=args.seed, progress=None)
    absolute = 1.96 * est.stderr
    relative = absolute / (1e-12 + est.mean)  # as the original reports it
    print(f"distance ({name}): {_fmt(est.mean)}")
    print(f"  ± {absolute:.6g} or {100 * relative:.4f} %  (bounds: 1.96 standard errors over {est.n} samples, "
          f"seed {args.seed})")
    rule = f"1.96 s.e. < {args.abs_err:g} and < {100 * args.rel_err:g} % of the mean"
    if est.converged:
        print(f"  stopped: {rule}")
    else:
        print(f"  not converged: stopped at --max-samples {est.n} before {rule}")
        _warn(f"the error bounds were not met after {est.n} samples; raise --max-samples or loosen --abs-err/--rel-err")
    return 0


def cmd_dirs(args) -> int:
    from percept.io import ImageReadError, list_images

    try:
        refs = {p.name: p for p in list_images(args.refdir)}
        imgs = {p.name: p for p in list_images(args.dir)}
    except ImageReadError as err:
        raise CLIError(str(err)) from err
    common = sorted(set(refs) & set(imgs))
    for folder, names in ((args.refdir, sorted(set(refs) - set(imgs))), (args.dir, sorted(set(imgs) - set(refs)))):
        if names:
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            _warn(f"{len(names)} image(s) only in {folder}, not compared: {shown}")
    if not common:
        raise CLIError(f"no image file names in common between {args.refdir} and {args.dir}")
    name, metric = _prepare(args)
    jobs = [(refs[n], imgs[n], n) for n in common]
    skipped = 0
    with _writer(args, list(refs.values()) + list(imgs.values())) as out:
        writer = csv.writer(out)
        writer.writerow(["file", "distance"])
        for job, value in _batched_distances(metric, name, jobs, lambda p: _read(p, args), args):
            if value is None:
                skipped += 1
                continue
            writer.writerow([job[2], _fmt(value)])
    if args.out is not None:
        print(f"wrote {len(common) - skipped} distance(s) to {args.out}", file=sys.stderr)
    return 1 if skipped else 0


def _pair_indices(n: int, consecutive: bool) -> list[tuple[int, int]]:
    """Index pairs (i, j), i < j, of n images: all of them, or (i, i + 1) only with ``consecutive``."""
    if consecutive:
        return [(i, i + 1) for i in range(n - 1)]
    return [(i, j) for i in range(n) for j in range(i + 1, n)]


def cmd_pairs(args) -> int:
    from percept.io import ImageReadError, list_images

    if args.first is not None and args.first < 2:
        raise UsageError(f"-N {args.first}: a pair needs at least 2 images; give -N 2 or more")
    try:
        files = list_images(args.dir)
    except ImageReadError as err:
        raise CLIError(str(err)) from err
    if args.first is not None:
        files = files[:args.first]
    if len(files) < 2:
        raise CLIError(f"{args.dir}: {len(files)} image file(s); pairs needs at least 2")
    name, metric = _prepare(args)
    cache: dict[Path, object] = {}

    def read(path):
        if path not in cache:
            cache[path] = _read(path, args)
        return cache[path]

    jobs = [(files[i], files[j]) for i, j in _pair_indices(len(files), args.consecutive)]
    skipped = 0
    with _writer(args, files) as out:
        writer = csv.writer(out)
        writer.writerow(["file0", "file1", "distance"])
        for job, value in _batched_distances(metric, name, jobs, read, args):
            if value is None:
                skipped += 1
                continue
            writer.writerow([job[0].name, job[1].name, _fmt(value)])
    if args.out is not None:
        print(f"wrote {len(jobs) - skipped} distance(s) to {args.out}", file=sys.stderr)
    return 1 if skipped else 0


def cmd_compare(args) -> int:
    from percept.io import ImageReadError, ImageSizeError, check_same_size
    from percept.registry import is_stochastic, metric_class

    name = _canonical(args.metric)
    stochastic = is_stochastic(name, dict(args.options))
    samples = args.samples if args.samples is not None else (DEFAULT_STOCHASTIC_SAMPLES if stochastic else 1)
    if samples < 1:
        raise UsageError("--samples must be at least 1")
    paths = (args.ref, args.a, args.b)
    try:
        ref, a, b = (_read(p, args) for p in paths)
        check_same_size(paths, (ref, a, b))
    except (ImageReadError, ImageSizeError) as err:
        raise CLIError(str(err)) from err
    name, metric = _prepare(args)
    ref, a, b = (t.to(args.device_obj) for t in (ref, a, b))
    from percept import estimation

    # E-LPIPS: shared draws (sample_distances); any other metric: shared seeds, one sample when deterministic
    with _input_errors(f"{args.ref} vs {args.a} / {args.b}"):
        result = estimation.compare(ref, a, b, metric=metric, samples=samples, seed=args.seed)

    higher_is_better = bool(getattr(metric_class(name), "higher_is_better", False))
    n, err = result.n, result.stderr
    if n > 1:
        print(f"d(REF, A) = {_fmt(result.d_a)} ± {result.se_a:.2g}    A = {args.a}")
        print(f"d(REF, B) = {_fmt(result.d_b)} ± {result.se_b:.2g}    B = {args.b}")
        print(f"d(REF, A) - d(REF, B) = {_fmt(result.diff)} ± {err:.2g} (standard error over {n} shared samples)")
    else:
        print(f"d(REF, A) = {_fmt(result.d_a)}    A = {args.a}")
        print(f"d(REF, B) = {_fmt(result.d_b)}    B = {args.b}")
    diff = result.diff
    closer_a = diff > 0 if higher_is_better else diff < 0
    if diff == 0:
        verdict = f"A and B are equally close to REF ({args.ref})"
    else:
        verdict = f"{'A' if closer_a else 'B'} is closer to REF ({args.ref})"
        if n > 1 and abs(diff) < 2 * err:
            verdict += f", but within 2 standard errors: not significant; try more --samples than {n}"
    if higher_is_better:
        verdict += f" [{name} is a similarity: higher means closer]"
    print(verdict)
    return 0


#: image sizes ``list --check`` tries: Adaptive's weights fit only 64x64, MS-SSIM needs at least 161x161
CHECK_SIZES = (64, 192)


def _try_sizes(metric) -> str:
    """"ok" if the metric computes a distance on random 3-channel images of one of :data:`CHECK_SIZES`."""
    import torch

    errors = []
    for size in CHECK_SIZES:
        x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
        try:
            with torch.no_grad():
                metric(x, x.flip(-1))
            return "ok" if size == CHECK_SIZES[0] else f"ok (at {size}x{size})"
        except ValueError as err:
            errors.append(err)
    raise errors[-1]


def cmd_list(args) -> int:
    from percept.registry import aliases, get_metric, list_metrics

    metrics = list_metrics()
    width = max(len(n) for n in metrics)
    for name, description in metrics.items():
        line = f"{name:<{width}}  {description}"
        if args.check:
            try:
                with _metric_errors(name):
                    metric = get_metric(name, reduction="none")
                status = _try_sizes(metric)
            except CLIError as err:
                status = "UNAVAILABLE: " + " ".join(str(err).split())[:160]
            except Exception as err:  # a metric that builds but fails on a plain image is worth reporting
                status = f"FAILS: {type(err).__name__}: " + " ".join(str(err).split())[:160]
            line += f"\n{'':<{width}}  -> {status}"
        print(line)
    shown = ", ".join(f"{a} = {b}" for a, b in sorted(aliases().items()))
    print(f"\naliases: {shown}")
    return 0


__all__ = ["cmd_dist", "cmd_estimate", "cmd_dirs", "cmd_pairs", "cmd_compare", "cmd_list", "CHECK_SIZES"]
