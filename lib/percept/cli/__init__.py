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

>>> from percept.cli import build_parser, main
>>> build_parser().parse_args(["pairs", "photos", "--consecutive"]).consecutive
True
>>> main(["compare", "ref.png", "a.png", "b.png", "-m", "elpips-vgg"])  # doctest: +SKIP
0

Modules: :mod:`percept.cli.parser` (:func:`build_parser` and its options), :mod:`percept.cli.commands` (dist,
estimate, dirs, pairs, compare, list), :mod:`percept.cli.optimise` (pairwise-average, barycenter),
:mod:`percept.cli.common` (errors, device, metric, images, batched distances, CSV output); :func:`main` here.
"""

from __future__ import annotations

import sys

# the further public names (X as X: re-exported) stay importable from percept.cli as before it became a package
from percept.cli.commands import CHECK_SIZES as CHECK_SIZES
from percept.cli.commands import cmd_compare as cmd_compare
from percept.cli.commands import cmd_dirs as cmd_dirs
from percept.cli.commands import cmd_dist as cmd_dist
from percept.cli.commands import cmd_estimate as cmd_estimate
from percept.cli.commands import cmd_list as cmd_list
from percept.cli.commands import cmd_pairs as cmd_pairs
from percept.cli.common import DEFAULT_DIST_SAMPLES as DEFAULT_DIST_SAMPLES
from percept.cli.common import DEFAULT_METRIC as DEFAULT_METRIC
from percept.cli.common import DEFAULT_STOCHASTIC_SAMPLES as DEFAULT_STOCHASTIC_SAMPLES
from percept.cli.common import CLIError, UsageError
from percept.cli.optimise import cmd_barycenter as cmd_barycenter
from percept.cli.optimise import cmd_pairwise_average as cmd_pairwise_average
from percept.cli.parser import build_parser
from percept.guard import run_guarded

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
