"""The argument parser of the ``percept`` command: :func:`build_parser`, its subcommands and option helpers.

>>> from percept.cli import build_parser
>>> args = build_parser().parse_args(["dist", "ref.png", "img.png", "-m", "lpips-alex", "-O", "version=0.0"])
>>> args.command, args.metric, args.colorspace, args.options
('dist', 'lpips-alex', 'rgb', [('version', 0.0)])

Every subcommand takes ``--debug``; those that build a metric also take the common options (``-m``, ``-c``,
``--resize``, ``--alpha``, ``--max-pixels``, ``-O KEY=VALUE``, ``--device``, ``--seed``). Each subparser sets
``func``, the command that :func:`percept.cli.main` runs (:mod:`percept.cli.commands`,
:mod:`percept.cli.optimise`).
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

from percept.cli.commands import cmd_compare, cmd_dirs, cmd_dist, cmd_estimate, cmd_list, cmd_pairs
from percept.cli.common import DEFAULT_DIST_SAMPLES, DEFAULT_METRIC, DEFAULT_STOCHASTIC_SAMPLES
from percept.cli.optimise import cmd_barycenter, cmd_pairwise_average


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


__all__ = ["build_parser"]
