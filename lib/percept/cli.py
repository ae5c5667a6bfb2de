"""The ``percept`` command (also ``python -m percept``): distances between image files.

    percept dist REF IMG --metric watson-dft          print one distance (E-LPIPS: mean ± s.e. of 200 draws)
    percept estimate REF IMG -m elpips-vgg            E-LPIPS sampled until its error bounds are met
    percept dirs REFDIR DIR -o out.csv                every file name present in both folders -> CSV
    percept pairs DIR -o out.csv                      every pair of images in one folder -> CSV
                                                      (--consecutive: i with i+1 only; -N: the first N images)
    percept compare REF A B --metric elpips-vgg       which of A and B is closer to REF (with an error bar)
    percept pairwise-average A B -o out_bary2         the E-LPIPS average of two images (optimised image)
    percept barycenter IMG --mode noise|shift         the E-LPIPS barycenter of 10 perturbed copies of IMG
    percept list [--check]                            the metrics (and, with --check, which can be built here)

The speed table is not a ``percept`` command: it is the benchmark harness of the checkout (``make bench``,
``python benchmarks/bench.py [--quick]``), which an installed package does not carry.

The first image is always the reference (the metric's ``target``): asymmetric metrics such as Watson
compute their masking from it. Images are read with :mod:`percept.io` (PNG/JPEG; alpha dropped unless
``--alpha white|black``; grey files replicated to RGB, or colour turned into BT.601 grey with
``--colorspace grey``) and are never resized unless ``--resize HxW`` is given.

Exit status: 0 success, 1 runtime error (unreadable or corrupt file, size mismatch, missing weights, a
metric that rejects the input; one line on stderr naming the file, ``--debug`` for the traceback),
2 usage error (bad arguments, unknown metric or option), 130 interrupted.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import csv
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from percept.guard import RunError, run_guarded

DEFAULT_METRIC = "watson-dft"
#: shared samples for ``compare`` with a stochastic metric (E-LPIPS) unless --samples is given
DEFAULT_STOCHASTIC_SAMPLES = 50
#: independent draws of ``dist`` with E-LPIPS unless -n is given (the reference's ex_simple_distance)
DEFAULT_DIST_SAMPLES = 200


class CLIError(RunError):
    """A runtime error: reported as one line, exit status 1."""

    exit_code = 1


class UsageError(CLIError):
    """Bad arguments found after parsing (unknown metric, bad option): exit status 2."""

    exit_code = 2


# --------------------------------------------------------------------------------------------------
# argument parsing
# --------------------------------------------------------------------------------------------------


def _size(text: str) -> tuple[int, int]:
    from percept.io import parse_size

    try:
        return parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _option(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"bad metric option {text!r}: use KEY=VALUE, e.g. version=0.0")
    key, raw = text.split("=", 1)
    key = key.strip().replace("-", "_")
    if not key.isidentifier():
        raise argparse.ArgumentTypeError(f"bad metric option name {key!r}")
    lowered = raw.strip().lower()
    if lowered in ("true", "yes", "on"):
        return key, True
    if lowered in ("false", "no", "off"):
        return key, False
    if lowered == "none":
        return key, None
    try:
        return key, ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return key, raw


def _add_common(p: argparse.ArgumentParser, *, metric: bool = True, default_metric: str = DEFAULT_METRIC) -> None:
    if metric:
        p.add_argument("-m", "--metric", default=default_metric,
                       help=f"metric name or alias (default {default_metric}; see `percept list`)")
        p.add_argument("-c", "--colorspace", default="rgb", choices=["rgb", "grey", "gray", "LA"],
                       help="rgb (3 channels; grey files are replicated) or grey (1 channel, BT.601 luma; "
                            "alias gray, LA). Default rgb")
        p.add_argument("--resize", type=_size, default=None, metavar="HxW",
                       help="resample every image to HxW (antialiased bicubic). Default: never resize; "
                            "images of different sizes are an error")
        p.add_argument("--alpha", choices=["drop", "white", "black"], default="drop",
                       help="transparent images: drop the alpha channel (default, as the LPIPS/E-LPIPS scripts "
                            "do) or composite over white/black")
        p.add_argument("--max-pixels", type=int, default=None, metavar="N",
                       help="refuse images with more than N pixels (default 16.8 MP = 4096x4096, or "
                            "$PERCEPT_MAX_PIXELS; 0: no limit); large images take a lot of memory")
        p.add_argument("-O", "--option", dest="options", type=_option, action="append", default=[],
                       metavar="KEY=VALUE",
                       help="extra metric option, repeatable (e.g. -O version=0.0, -O deterministic=false)")
        p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps or auto (default: cuda if available)")
        p.add_argument("--seed", type=int, default=0, help="seed of stochastic metrics (default 0)")
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")


def build_parser() -> argparse.ArgumentParser:
    from percept import __version__

    parser = argparse.ArgumentParser(
        prog="percept",
        description="Perceptual distances between image files (PNG/JPEG). The first image of each command is "
                    "the reference.",
        epilog="Exit status: 0 ok, 1 runtime error (unreadable file, size mismatch, missing weights), 2 usage error.",
    )
    parser.add_argument("--version", action="version", version=f"percept {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("dist", help="print the distance between two images",
                       description="Print d(REF, IMG): the metric with IMG as input and REF as target (reference). "
                                   "E-LPIPS is random: it prints MEAN ± SE, the mean of --samples independent "
                                   "draws (seeded by --seed) and its standard error.")
    p.add_argument("ref", type=Path, help="reference image")
    p.add_argument("img", type=Path, help="image to compare with it")
    p.add_argument("-n", "--samples", type=int, default=None,
                   help=f"random draws of E-LPIPS (default {DEFAULT_DIST_SAMPLES}, as the original's "
                        "ex_simple_distance; at least 2); ignored by deterministic metrics")
    _add_common(p)
    p.set_defaults(func=cmd_dist)

    p = sub.add_parser("estimate", help="E-LPIPS distance sampled until its error bounds are met",
                       description="Sample E-LPIPS d(REF, IMG) in batches of --batch-size copies of the pair until "
                                   "1.96 standard errors are below --abs-err and below --rel-err times the mean "
                                   "(checked after --min-samples), or --max-samples samples; print the mean and "
                                   "both bounds (the original's ex_evaluate_distance).")
    p.add_argument("ref", type=Path, help="reference image")
    p.add_argument("img", type=Path, help="image to compare with it")
    p.add_argument("--abs-err", type=float, default=0.01, help="absolute bound on 1.96 s.e. (default 0.01)")
    p.add_argument("--rel-err", type=float, default=0.025,
                   help="relative bound: 1.96 s.e. < REL_ERR x mean (default 0.025)")
    p.add_argument("--max-samples", type=int, default=5000, help="stop here regardless of the bounds (default 5000)")
    p.add_argument("--min-samples", type=int, default=10, help="samples before the bounds are checked (default 10)")
    p.add_argument("--batch-size", type=int, default=10,
                   help="copies of the pair per draw, stratified across the batch (default 10)")
    _add_common(p, default_metric="elpips-vgg")
    p.set_defaults(func=cmd_estimate)

    p = sub.add_parser("dirs", help="distances between same-named files of two folders, as CSV",
                       description="For every file name present in both folders: d(REFDIR/name, DIR/name). "
                                   "Names present in only one folder are listed in a warning.")
    p.add_argument("refdir", type=Path, help="folder of reference images")
    p.add_argument("dir", type=Path, help="folder of images to compare, matched by file name")
    _add_batch_options(p)
    _add_common(p)
    p.set_defaults(func=cmd_dirs)

    p = sub.add_parser("pairs", help="distances between all pairs of images in a folder, as CSV",
                       description="For every unordered pair (file0 < file1 by name): d(file0, file1) with file0 "
                                   "as the reference. --consecutive: only each image with the next one by name "
                                   "(the default of LPIPS's lpips_1dir_allpairs.py); -N: only the first N images.")
    p.add_argument("dir", type=Path, help="folder of images")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--all-pairs", dest="consecutive", action="store_false", default=False,
                      help="every unordered pair, N(N-1)/2 distances (default)")
    mode.add_argument("--consecutive", dest="consecutive", action="store_true", default=False,
                      help="only consecutive pairs (file i, file i+1) in name order, N-1 distances")
    p.add_argument("-N", "--first", dest="first", type=int, default=None, metavar="N",
                   help="use only the first N images in name order (at least 2; default: all)")
    _add_batch_options(p)
    _add_common(p)
    p.set_defaults(func=cmd_pairs)

    p = sub.add_parser("compare", help="which of two images is closer to a reference",
                       description="Print d(REF, A), d(REF, B) and which is closer. Stochastic metrics (E-LPIPS, or "
                                   "-O deterministic=false) are averaged over --samples random transformations "
                                   "shared by both distances, with a standard error.")
    p.add_argument("ref", type=Path, help="reference image")
    p.add_argument("a", type=Path, help="first candidate")
    p.add_argument("b", type=Path, help="second candidate")
    p.add_argument("--samples", type=int, default=None,
                   help=f"shared samples for stochastic metrics (default {DEFAULT_STOCHASTIC_SAMPLES}; 1 for "
                        "deterministic ones)")
    _add_common(p)
    p.set_defaults(func=cmd_compare)

    _add_barycenter_parsers(sub)

    p = sub.add_parser("list", help="list the metrics", description="List metric names, descriptions and aliases.")
    p.add_argument("--check", action="store_true",
                   help="also build each metric here and say whether it works (weights present, module installed)")
    _add_common(p, metric=False)
    p.set_defaults(func=cmd_list)
    return parser


def _add_barycenter_parsers(sub) -> None:
    """``pairwise-average`` and ``barycenter``: images optimised under E-LPIPS (:mod:`percept.elpips_tools`)."""
    from percept import elpips_tools as tools

    common = ("Adam from clip(0.5 + 0.2 N(0,1)) with step size LR / (1 + 0.02 t'^0.75), t' = sqrt(100^2 + t^2) - 100, "
              "x clipped to [1e-5, 1 - 1e-5] before every step; writes OUTDIR/<step>.png at the reference's "
              "checkpoint steps (the result is <steps>.png), save_<step>.npy, log.csv and run.json. E-LPIPS draws "
              "one random transformation per step; as the reference examples ran, it does not downscale unless "
              "--scale-levels is given (auto: as the image size allows).")
    p = sub.add_parser("pairwise-average", help="the E-LPIPS average (barycenter) of two images, by optimisation",
                       description="Minimise d(A, x)^2 + d(B, x)^2 over an image x, both distances from one shared "
                                   "E-LPIPS draw per step (the original's ex_pairwise_average.py). " + common)
    p.add_argument("a", type=Path, help="first image (written as src_image.png)")
    p.add_argument("b", type=Path, help="second image (dest_image.png)")
    p.add_argument("-o", "--outdir", type=Path, default=Path("out_bary2"), help="output folder (default out_bary2)")
    _add_optimisation_options(p, tools)
    p.set_defaults(func=cmd_pairwise_average)

    p = sub.add_parser("barycenter", help="the E-LPIPS barycenter of perturbed copies of an image",
                       description="Make --count copies of IMAGE perturbed by Gaussian noise (--mode noise, sigma "
                                   "--noise-scale, clipped) or random shifts of -2..2 px with reflect padding "
                                   "(--mode shift); minimise d(x, c)^2 for one random copy c per step (the "
                                   "original's ex_bary10.py). Also writes the copies (input<i>.png) and their "
                                   "pixel mean (input_mean.png, the L2 barycenter). " + common)
    p.add_argument("image", type=Path, help="source image")
    p.add_argument("--mode", required=True, choices=tools.PERTURBATIONS, help="perturbation of the copies")
    p.add_argument("--count", type=int, default=10, help="number of perturbed copies (default 10)")
    p.add_argument("--noise-scale", type=float, default=tools.NOISE_SCALE,
                   help=f"sigma of the noise copies (default {tools.NOISE_SCALE})")
    p.add_argument("-o", "--outdir", type=Path, default=Path("out_bary10"), help="output folder (default out_bary10)")
    _add_optimisation_options(p, tools)
    p.set_defaults(func=cmd_barycenter)


def _add_optimisation_options(p: argparse.ArgumentParser, tools) -> None:
    p.add_argument("--steps", type=int, default=tools.STEPS,
                   help=f"optimisation steps (default {tools.STEPS}, as the original: hours with VGG)")
    p.add_argument("--lr", "--learning-rate", dest="lr", type=float, default=tools.BASE_LR,
                   help=f"step size multiplier (default {tools.BASE_LR})")
    p.add_argument("--scale-levels", default="1", metavar="S|auto",
                   help="E-LPIPS downscaling levels (default 1, as the original examples ran; auto: min(H, W) // 64, "
                        "at most 8)")
    p.add_argument("--save-every", type=int, default=tools.SAVE_EVERY,
                   help=f"write save_<step>.npy every this many steps (default {tools.SAVE_EVERY}; 0: only the last)")
    _add_common(p, default_metric="elpips-vgg")


def _add_batch_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--out", type=Path, default=None, help="CSV file to write (default: standard output)")
    p.add_argument("--batch-size", type=int, default=8, help="image pairs per metric call (default 8)")
    p.add_argument("--skip-errors", action="store_true",
                   help="skip unreadable files and failing pairs with a warning instead of stopping "
                        "(exit status 1 if any were skipped)")


# --------------------------------------------------------------------------------------------------
# shared machinery
# --------------------------------------------------------------------------------------------------


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as err:
        raise UsageError(f"bad --device {name!r}: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise CLIError(f"--device {name}: MPS is not available on this machine (use --device cpu)")
    return device


@contextlib.contextmanager
def _metric_errors(name: str):
    """Registry errors as CLI errors: an unknown metric or option is a usage error (status 2); a metric that
    cannot be built here (module not installed, weights missing, bad option value) a runtime error (status 1)."""
    from percept import registry
    from percept.assets import ChecksumError, MissingAssetError

    try:
        yield
    except (registry.UnknownMetricError, registry.MetricOptionError) as err:
        raise UsageError(str(err)) from None
    except registry.MetricUnavailableError as err:
        raise CLIError(str(err)) from err
    except (MissingAssetError, ChecksumError) as err:
        raise CLIError(f"metric {name!r} cannot be built: {err}") from err
    except ValueError as err:
        raise CLIError(f"metric {name!r}: {err}") from err


def _canonical(name: str) -> str:
    from percept import registry

    with _metric_errors(name):
        return registry.canonical_name(name)


def _space(args) -> str:
    from percept.checks import normalize_colorspace

    return normalize_colorspace(args.colorspace)


def _read(path: Path, args):
    from percept.io import read_image

    return read_image(path, colorspace=_space(args), alpha=args.alpha, resize=args.resize, max_pixels=args.max_pixels)


def _evaluate(metric, name: str, inputs, targets, paths: str, seed: int):
    """metric(inputs, targets) as a list of floats (seeded: :func:`percept.estimation.seed_metric`); a
    ValueError from the metric becomes a CLIError naming files."""
    import torch

    from percept.estimation import seed_metric

    seed_metric(metric, seed)
    with _input_errors(paths), torch.no_grad():
        d = metric(inputs, targets)
    d = d.detach().float().reshape(-1).cpu()
    if d.numel() != inputs.shape[0]:
        raise CLIError(f"metric {name!r} returned {d.numel()} values for {inputs.shape[0]} image pair(s)")
    return d.tolist()


def _fmt(value: float) -> str:
    return f"{value:.8g}"


def _warn(message: str) -> None:
    print(f"percept: warning: {message}", file=sys.stderr)


def _progress(iterable: Iterable, total: int, desc: str) -> Iterator:
    from tqdm.auto import tqdm

    return iter(tqdm(iterable, total=total, desc=desc, unit="pair", disable=None, leave=False, file=sys.stderr))


def _batched_distances(metric, name: str, jobs: Sequence[tuple], read, args) -> Iterator[tuple[tuple, float | None]]:
    """Yield (job, distance or None when skipped) for jobs (ref_path, img_path, *labels), batching same sizes."""
    import torch

    from percept.io import ImageReadError, check_same_size

    batch: list[tuple] = []

    def flush():
        if not batch:
            return []
        refs = torch.cat([r for _, r, _ in batch])
        imgs = torch.cat([i for _, _, i in batch])
        label = ", ".join(f"{j[0]} vs {j[1]}" for j, _, _ in batch[:3]) + (" ..." if len(batch) > 3 else "")
        try:
            values = _evaluate(metric, name, imgs, refs, label, args.seed)
        except CLIError:
            if not args.skip_errors or len(batch) == 1:
                if not args.skip_errors:
                    raise
                _warn(f"skipped {label}: {sys.exc_info()[1]}")
                return [(j, None) for j, _, _ in batch]
            # retry one pair at a time to find the failing one(s)
            out = []
            for j, r, i in batch:
                try:
                    out.append((j, _evaluate(metric, name, i, r, f"{j[0]} vs {j[1]}", args.seed)[0]))
                except CLIError as err:
                    _warn(f"skipped {err}")
                    out.append((j, None))
            return out
        return [(j, v) for (j, _, _), v in zip(batch, values)]

    for job in _progress(jobs, len(jobs), name):
        try:
            ref, img = read(job[0]), read(job[1])
            check_same_size(job[:2], (ref, img))
        except (ImageReadError, ValueError) as err:
            if not args.skip_errors:
                raise CLIError(str(err)) from err
            _warn(f"skipped {job[0]} vs {job[1]}: {err}")
            yield job, None
            continue
        ref, img = ref.to(args.device_obj), img.to(args.device_obj)
        if batch and (batch[0][1].shape != ref.shape or len(batch) >= max(1, args.batch_size)):
            yield from flush()
            batch = []
        batch.append((job, ref, img))
    yield from flush()


@contextlib.contextmanager
def _writer(args, inputs: Iterable[Path] = ()):
    """The CSV output: standard output, or ``-o FILE`` written to a temporary file that replaces FILE only
    when the command succeeds (a failing run leaves an existing FILE as it was). FILE may not be an input."""
    if args.out is None:
        yield sys.stdout
        return
    out = args.out
    if out.exists() and not out.is_file():
        raise UsageError(f"-o {out}: not a regular file; name a CSV file to write")
    for path in inputs:
        try:
            same = out.exists() and path.exists() and os.path.samefile(out, path)
        except OSError:
            same = False
        if same or out.resolve() == path.resolve():
            raise UsageError(f"-o {out} is one of the input images ({path}); name another output file")
    from percept.guard import atomic_output

    with contextlib.ExitStack() as stack:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            f = stack.enter_context(atomic_output(out, "w", newline=""))
        except OSError as err:
            raise CLIError(f"{out}: cannot write ({err.strerror or err})") from None
        yield f


def _prepare(args):
    from percept.io import ImageReadError  # noqa: F401  (import errors surface early)

    if getattr(args, "batch_size", 1) < 1:
        raise UsageError("--batch-size must be at least 1")
    args.device_obj = _device(args.device)
    from percept.registry import get_metric

    name = _canonical(args.metric)
    with _metric_errors(name):
        metric = get_metric(name, colorspace=_space(args), reduction="none", device=args.device_obj,
                            **dict(args.options))
    return name, metric.eval()


# --------------------------------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------------------------------


def _read_pair(args):
    from percept.io import ImageReadError, ImageSizeError, check_same_size

    try:
        ref, img = _read(args.ref, args), _read(args.img, args)
        check_same_size((args.ref, args.img), (ref, img))
    except (ImageReadError, ImageSizeError) as err:
        raise CLIError(str(err)) from err
    return ref, img


def _samples_elpips(metric) -> bool:
    """Whether ``metric`` is a random E-LPIPS (draws through ``sample_distances``)."""
    return hasattr(metric, "sample_distances") and bool(getattr(metric, "stochastic", False))


@contextlib.contextmanager
def _input_errors(paths: str):
    """A ValueError of the metric on these images becomes a CLIError naming the files."""
    try:
        yield
    except ValueError as err:
        message = str(err)
        if any(word in message for word in ("multiple", "too small", "at least", "image_size", "crop")):
            message += "; --resize HxW resamples the images"
        raise CLIError(f"{paths}: {message}") from err


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


#: what ``percept bench`` (a command of earlier versions) says now
BENCH_MOVED = (
    "percept bench: the speed table is no longer a percept command: it is the benchmark harness of the "
    "repository checkout. Run `make bench` (or `python benchmarks/bench.py --quick`) there."
)


# --------------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        print(BENCH_MOVED, file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)  # exits with status 2 on usage errors
    return run_guarded(lambda: args.func(args), prog=f"percept {args.command}", debug=args.debug)


__all__ = ["main", "build_parser", "CLIError", "UsageError"]
