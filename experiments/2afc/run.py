"""Agreement with human judgements on BAPPS: 2AFC score and JND mAP of every metric, and 2AFC tuning.

Evaluation (the paper's comparison, czolbe.md §10 and the LPIPS benchmark, lpips_elpips.md part C)::

    make data-bapps                                   # once: 6.6 GB into data/bapps (resumable)
    python experiments/2afc/run.py                    # every registry metric, rgb and grey -> results/2afc/
    python experiments/2afc/run.py --metrics watson-dft l2 --colorspaces rgb --subsets traditional cnn
    python experiments/2afc/run.py --metrics watson-dft watson-dct --batch-luminance   # the original's masking
    python experiments/2afc/run.py --quick            # ~1 min on 2 CPU cores; SYNTHETIC data if BAPPS is absent

The LPIPS paper's table rows (lpips_elpips.md A6/A7, C5)::

    python experiments/2afc/run.py --metrics l2 ssim-skimage --colorspaces lab   # its L2 and SSIM rows (Lab)
    python experiments/2afc/run.py --metrics lpips-alex lpips-vgg lpips-squeeze --lpips-version 0.0  # v0.0 lin
    python experiments/2afc/run.py --metrics lpips-alex lpips-squeeze --lpips-baseline   # off-the-shelf "net" rows
    python experiments/2afc/run.py --metrics lpips-alex --lpips-baseline --backbone-weights random  # random AlexNet

The deep perceptual similarity (DPS) rows of Sjögren et al. 2022 (dps_analysis.md §2.5-2.6): every network x
method x channel normalisation; ``dps-<torchvision network>`` (e.g. ``dps-resnet18``) for other loss networks::

    python experiments/2afc/run.py --metrics dps-alex dps-squeeze dps-vgg \
        --dps-methods spatial mean sort spatial+mean spatial+sort --dps-channel-norm on off --colorspaces rgb
    python experiments/2afc/run.py --metrics dps-resnet18 --dps-layers 2 4 5 7 --dps-methods spatial+sort

Tuning (Watson-DCT/DFT, Adaptive and LPIPS/Deeploss/DPS linear layers on 2AFC train; czolbe.md §10.3,
lpips_elpips.md part B; DPS with Sjögren et al.'s schedule: Adam 1e-3, batch 256, 5 + 5 epochs)::

    python experiments/2afc/run.py --train --metrics watson-dft --colorspaces rgb grey
    python experiments/2afc/run.py --train --resume   # continue every run from its last epoch
    python experiments/2afc/run.py --weights results/2afc/tuned/weights    # score with the tuned weights
    python experiments/2afc/run.py --train --metrics lpips-alex --variants lin tune scratch --colorspaces rgb
    python experiments/2afc/run.py --train --metrics dps-alex --dps-methods spatial+sort --variants lin tune

``--variants`` (LPIPS's lin / tune / scratch, lpips_elpips.md A7): ``lin`` trains the linear layers on the
frozen ImageNet trunk; ``tune`` trains the trunk with them from ImageNet weights; ``scratch`` trains a random
trunk with them. The trained trunk is written beside the linear weights (``<weights>_trunk.pth``); rows are
labelled ``+tuned`` (lin), ``+tune`` and ``+scratch``.

Expected runtime (estimates from per-triplet costs measured on 2 shared CPU cores; see README.md): the
full validation data are 36.4k triplets + 9.6k JND pairs. Every metric without the VGG-16 ones, rgb and
grey: ~3-4 h on 2 CPU cores; the VGG-16 metrics (lpips-vgg, deeploss-vgg, dps-vgg, watson-vgg, elpips-vgg)
add about a day on CPU, so run them on a GPU, where reading the PNGs dominates (~5 ms per triplet per
worker: ``--workers 8`` gives ~10-20 min for everything). Tuning reads the 151k training triplets once per
epoch: on a GPU with ``--workers 8`` roughly 1-3 min per epoch, i.e. ~1 h for a Watson run (20 epochs),
~30 min for an LPIPS/Deeploss run (10 epochs); CPU-only tuning takes days. ``--quick``: ~30 s on 2 CPU cores.

Outputs in ``--out`` (default ``results/2afc/``): ``scores.csv`` (metric, colorspace, subset, score in
[0, 1]; metric "human" is the ceiling p^2 + (1 - p)^2), ``jnd.csv`` (metric, colorspace, subset, map),
``run.json`` (data, options, machine info, metrics skipped and why). Later runs into the same folder
replace their own rows and keep the others. Metric labels carry ``+tuned`` / ``+tune`` / ``+scratch`` (``--weights``
and ``--variants``), the DPS options (``+sort``, ``+spatial+mean``, ``+nonorm``, ``+layers-1-4-7``),
``+batchlum`` (``--batch-luminance``), ``+v0.0`` (``--lpips-version 0.0``), ``+baseline``
(``--lpips-baseline``) and ``+random`` / ``+trunk-<file>`` (``--backbone-weights``). Colour space "lab"
(RGB patches compared in CIELAB, the paper's default for L2 and SSIM) exists for l2, ssim and ssim-skimage;
the other metrics are skipped for it. Training writes ``tuned/weights/<original file name>`` (loadable by
the original LossProvider and by ``--weights``), ``tuned/<metric>_<colorspace>[_<variant>]/{history.csv,
checkpoints/last.pt}`` (DPS: ``tuned/dps-<net>_<method>[_nonorm]..._<colorspace>...``).

Harness semantics (see :mod:`percept.evaluate`): ``metric(input=p0|p1, target=ref)``, per-image output,
deterministic; grey = BT.601 luma; similarities (PSNR) negated; patches resized to 64x64 with PIL bilinear
(antialiased, as the LPIPS loader; ``--resize bilinear-noaa`` for the E-LPIPS loader); the original
Watson harness's ``(x + 1) / 2`` on [0, 1] data is not applied.

Without BAPPS, ``--quick`` builds a SYNTHETIC folder in the BAPPS layout (asset photographs, synthetic
distortions, simulated judges) in a temporary folder and writes there; its scores say nothing about
human agreement, and ``run.json`` says ``"synthetic": true``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from percept import registry
from percept.checks import LAB_METRICS
from percept.data import DatasetError, bapps
from percept.evaluate import (
    TUNE_MODES,
    TuneConfig,
    build_metric,
    evaluate_bapps,
    merge_rows,
    metric_family,
    tune_2afc,
    tuned_trunk_file,
    tuned_weight_file,
)
from percept.guard import RunLock, add_run_flags, driver_main
from percept.metrics.deep import METHODS as DPS_METHODS

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "results" / "2afc"
log = logging.getLogger("2afc")

QUICK_METRICS = ["l2", "psnr", "ssim", "ssim-skimage", "watson-dct", "watson-dft", "adaptive", "lpips-squeeze"]
QUICK_TRAIN_METRICS = ["watson-dft", "lpips-squeeze"]
TRAIN_METRICS = [
    "watson-dct",
    "watson-dft",
    "adaptive",
    "deeploss-vgg",
    "deeploss-squeeze",
    "lpips-alex",
    "lpips-vgg",
    "lpips-squeeze",
]
QUICK_LIMIT = 24


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--data", type=Path, default=None, help=f"BAPPS root with 2afc/ and jnd/ (default {bapps.default_root()})"
    )
    p.add_argument("--subsets", nargs="+", default=list(bapps.SUBSETS_2AFC["val"]), help="2AFC val subsets")
    p.add_argument(
        "--jnd-subsets", nargs="*", default=list(bapps.SUBSETS_JND["val"]), help="JND val subsets (none: skip)"
    )
    p.add_argument(
        "--metrics",
        nargs="+",
        default=None,
        help="registry names (default: every registry metric; with --train the tunable ones)",
    )
    p.add_argument(
        "--colorspaces",
        nargs="+",
        default=["rgb", "grey"],
        choices=["rgb", "grey", "lab"],
        help=f"lab: RGB compared in CIELAB, only {', '.join(LAB_METRICS)} (the LPIPS paper's L2/SSIM default)",
    )
    p.add_argument(
        "--batch-size", type=int, default=None, help="evaluation 128 (the original's); training 50 (DPS: 256)"
    )
    p.add_argument("--limit", type=int, default=None, help="use the first N entries of each subset")
    add_run_flags(p, default_out=DEFAULT_OUT.relative_to(ROOT),
                  quick="a ~1 minute run on a few triplets (synthetic data without BAPPS)")
    p.add_argument(
        "--resize",
        default="pil-bilinear",
        choices=bapps.RESIZE_MODES,
        help="pil-bilinear: antialiased, as the LPIPS loader; bilinear-noaa: as the E-LPIPS loader",
    )
    p.add_argument(
        "--batch-luminance",
        action="store_true",
        help="Watson: the original's luminance masking pooled over the batch (use --batch-size 128)",
    )
    p.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="folder of tuned weights (original file names, e.g. from --train): replace the shipped ones",
    )
    p.add_argument(
        "--lpips-version",
        default="0.1",
        choices=["0.1", "0.0"],
        help="lpips-*: 0.1 (ImageNet input scaling, its lin weights) or 0.0 (the first release's, lpips_elpips.md A6)",
    )
    p.add_argument(
        "--lpips-baseline",
        action="store_true",
        help="lpips-*: no learned linear layers, the paper's off-the-shelf 'net' rows (lpips=False)",
    )
    p.add_argument(
        "--backbone-weights",
        default=None,
        help="lpips-*/deeploss-*/dps-*: trunk 'imagenet' (default), 'random' or a checkpoint; also the trunk tuned",
    )
    d = p.add_argument_group("DPS (Sjögren et al. 2022): dps-alex, dps-squeeze, dps-vgg or dps-<torchvision network>")
    d.add_argument(
        "--dps-methods",
        nargs="+",
        default=["spatial"],
        choices=list(DPS_METHODS),
        help="comparison methods; each is scored (and tuned) as its own row",
    )
    d.add_argument(
        "--dps-channel-norm",
        nargs="+",
        default=["on"],
        choices=["on", "off"],
        help="unit-normalise the features along channels (on: the paper's default; 'on off' runs both)",
    )
    d.add_argument(
        "--dps-layers",
        nargs="+",
        type=int,
        default=None,
        help="tap indices (children of the network's feature trunk; default the LPIPS taps / Pihlgren et al.'s)",
    )
    p.add_argument(
        "--workers", type=int, default=None, help="DataLoader workers decoding PNGs (default: min(4, CPUs/2))"
    )
    t = p.add_argument_group("tuning (--train)")
    t.add_argument("--train", action="store_true", help="tune on 2AFC train, then score the tuned metrics on val")
    t.add_argument("--train-subsets", nargs="+", default=list(bapps.SUBSETS_2AFC["train"]))
    t.add_argument(
        "--variants",
        nargs="+",
        default=["lin"],
        choices=list(TUNE_MODES),
        help="lin: linear layers on the frozen ImageNet trunk; tune: the trunk trained with them; scratch: a "
        "random trunk trained with them (LPIPS/Deeploss/DPS). With --weights: which tuned files to score",
    )
    t.add_argument(
        "--lr", type=float, default=None, help="default per family: Watson/Adaptive 2e-4, LPIPS/Deeploss 1e-4, DPS 1e-3"
    )
    t.add_argument("--nepoch", type=int, default=None, help="epochs at constant lr (Watson 10, LPIPS/Deeploss 5)")
    t.add_argument(
        "--nepoch-decay", type=int, default=None, help="epochs of linear decay (Watson 10, LPIPS/Deeploss 5)"
    )
    t.add_argument(
        "--order",
        default="original",
        choices=["original", "eval"],
        help="original: metric(input=ref, target=p) as the reference trained (czolbe.md P4)",
    )
    t.add_argument(
        "--lin-init",
        default="default",
        choices=["default", "ones"],
        help="initial linear weights: PyTorch's conv init as the reference, or ones",
    )
    t.add_argument("--resume", action="store_true", help="continue each tuning run from its last checkpoint")
    t.add_argument("--no-eval", action="store_true", help="tune only; do not score the tuned metrics")
    t.add_argument("--max-batches", type=int, default=None, help="stop each epoch after N batches")
    return p


# ------------------------------------------------------------------------------------------- helpers
def _has_bapps(root: Path, train: bool) -> bool:
    root = bapps.resolve_root(root)
    return (root / "2afc" / ("train" if train else "val")).is_dir()


def _data_root(args) -> tuple[Path, bool, Path | None]:
    """(root, synthetic, temporary folder to report): real BAPPS, or with --quick a synthetic folder."""
    root = args.data if args.data is not None else bapps.default_root()
    if _has_bapps(root, args.train):
        return bapps.resolve_root(root), bapps.is_synthetic(root), None
    if not args.quick:
        raise DatasetError(f"no BAPPS 2AFC data under {root}; {bapps.FETCH_HINT} (or try --quick: synthetic data)")
    tmp = Path(tempfile.mkdtemp(prefix="percept-2afc-synthetic-"))
    n = QUICK_LIMIT
    bapps.make_synthetic_bapps(tmp / "bapps", n_val=n, n_train=n, n_jnd=n, seed=args.seed)
    return tmp / "bapps", True, tmp


def _check_out(out: Path, synthetic: bool) -> None:
    """Never mix synthetic and BAPPS scores in one folder."""
    info = out / "run.json"
    if info.is_file():
        try:
            previous = json.loads(info.read_text()).get("synthetic")
        except (ValueError, AttributeError):
            previous = None
        if previous is not None and bool(previous) != synthetic:
            kind = "SYNTHETIC" if previous else "BAPPS"
            raise SystemExit(f"error: {out} holds {kind} scores; write these to another --out")
    out.mkdir(parents=True, exist_ok=True)
    marker = out / bapps.SYNTHETIC_MARKER
    if synthetic:
        bapps.mark_synthetic(out, "experiments/2afc/run.py on a synthetic BAPPS-layout folder")
    elif marker.exists():
        marker.unlink()


TUNED_SUFFIX = {"lin": "+tuned", "tune": "+tune", "scratch": "+scratch"}


def _label(name: str, tuned: bool | str, batchlum: bool, variant: str = "") -> str:
    """Row label: the metric, its variant's options, ``+tuned`` (mode lin) / ``+tune`` / ``+scratch`` for tuned
    weights (``tuned`` True means mode lin), ``+batchlum``."""
    mode = "lin" if tuned is True else (tuned or None)
    family = metric_family(_registry_key(name))
    return (
        name + variant + (TUNED_SUFFIX[mode] if mode else "") + ("+batchlum" if batchlum and family == "watson" else "")
    )


def _canonical(name: str) -> str:
    """A registry name (aliases resolved), or ``dps-<torchvision network>`` for DPS on any other network."""
    try:
        return registry.canonical_name(name)
    except KeyError:
        key = str(name).strip().lower()
        if key.startswith("dps-"):
            from percept.backbones import canonical_arch

            try:
                return f"dps-{canonical_arch(key[4:])}"
            except ValueError as err:
                raise KeyError(f"{name!r}: {err}") from None
        raise


def _registry_key(name: str) -> str:
    """The registry entry that builds ``name`` (``dps-resnet18`` is built by ``dps`` with ``net``)."""
    try:
        return registry.canonical_name(name)
    except KeyError:
        return "dps"


def _base_options(name: str) -> dict:
    key = _registry_key(name)
    return {"net": name[4:]} if key != name and key == "dps" else {}


def _dps_options(args) -> list[tuple[dict, str]]:
    """(options, label suffix) for each DPS method x channel normalisation (x the tap layers)."""
    out = []
    layers = getattr(args, "dps_layers", None)
    for method in getattr(args, "dps_methods", None) or ["spatial"]:
        for norm in getattr(args, "dps_channel_norm", None) or ["on"]:
            options, suffix = {}, ""
            if method != "spatial":
                options["method"] = method
                suffix += f"+{method}"
            if norm == "off":
                options["channel_norm"] = False
                suffix += "+nonorm"
            if layers:
                options["layers"] = list(layers)
                suffix += "+layers-" + "-".join(str(k) for k in layers)
            out.append((options, suffix))
    return out


def _variants(args, name: str) -> list[tuple[dict, str]]:
    """Constructor options of the metric flags for metric ``name`` and the label suffix that names them: one
    entry, or one per DPS method / normalisation. ``options`` include what builds ``dps-<network>``."""
    family = metric_family(_registry_key(name))
    base = _base_options(name)
    if family == "dps":
        variants = [({**base, **o}, suffix) for o, suffix in _dps_options(args)]
    else:
        options, suffix = {}, ""
        if family == "lpips":
            if args.lpips_version != "0.1":
                options["version"] = args.lpips_version
                suffix += f"+v{args.lpips_version}"
            if args.lpips_baseline:
                options["lin"] = False
                suffix += "+baseline"
        variants = [(options, suffix)]
    trunk = getattr(args, "backbone_weights", None)
    if family in ("lpips", "deeploss", "dps") and trunk not in (None, "imagenet"):
        suffix = "+random" if trunk == "random" else f"+trunk-{Path(trunk).stem}"
        variants = [({**o, "backbone_weights": trunk}, s + suffix) for o, s in variants]
    return variants


def _variant(args, name: str) -> tuple[dict, str]:
    """The first of :func:`_variants` (every metric but DPS has exactly one)."""
    return _variants(args, name)[0]


def _tuning_options(options: dict) -> dict:
    """The variant options that name tuned weights (a trunk override is the tuning's starting point, not a name)."""
    return {k: v for k, v in options.items() if k not in ("backbone_weights", "lin")}


def _build_all(args, device, names: list[str], weights_dir: Path | None) -> tuple[dict, dict, dict]:
    """{(label, colorspace): harness}, {label/colorspace: details}, {label/colorspace: reason skipped}."""
    metrics, details, skipped = {}, {}, {}
    modes = (getattr(args, "variants", None) or ["lin"]) if weights_dir is not None else [None]
    for name in names:
        key = _registry_key(name)
        family = metric_family(key)
        for options, variant in _variants(args, name):
            for cs in args.colorspaces:
                for mode in modes:
                    _build_one(
                        args,
                        device,
                        name,
                        key,
                        family,
                        dict(options),
                        variant,
                        cs,
                        mode,
                        weights_dir,
                        metrics,
                        details,
                        skipped,
                    )
    return metrics, details, skipped


def _build_one(args, device, name, key, family, options, variant, cs, mode, weights_dir, metrics, details, skipped):
    where = f"{name}{variant}/{cs}"
    if cs == "lab" and key not in LAB_METRICS:
        skipped[where] = f"no Lab variant (colour space lab: {', '.join(LAB_METRICS)})"
        return
    if weights_dir is not None and options.get("lin") is False and family == "lpips":
        skipped[where] = "--lpips-baseline has no linear layers to load --weights into"
        return
    weights = None
    if mode is not None:
        where = f"{name}{variant}{TUNED_SUFFIX[mode]}/{cs}"
        try:
            named = _tuning_options(options)
            candidate = weights_dir / tuned_weight_file(key, cs, mode=mode, options=named)
            trunk = weights_dir / tuned_trunk_file(key, cs, mode=mode, options=named) if mode != "lin" else None
        except ValueError as err:
            skipped[where] = str(err)
            return
        missing = [str(f) for f in (candidate, trunk) if f is not None and not f.is_file()]
        if missing:
            skipped[where] = f"no tuned weights {' '.join(missing)}"
            return
        weights = candidate
        if trunk is not None:
            options["backbone_weights"] = str(trunk)
    label = _label(name, mode or False, args.batch_luminance, variant)
    try:
        metrics[(label, cs)] = build_metric(
            key, cs, weights=weights, batch_luminance=args.batch_luminance, device=device, **options
        )
    except Exception as err:  # a metric that cannot run here (missing weights, too small for 64x64, ...)
        skipped[f"{label}/{cs}"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
        return
    details[f"{label}/{cs}"] = {
        "metric": name,
        "colorspace": cs,
        "weights": str(weights) if weights is not None else "shipped",
        "batch_luminance": bool(args.batch_luminance and family == "watson"),
        **({"variant": mode} if mode is not None else {}),
        **{k: str(v) for k, v in options.items()},
    }


def _write_run_json(out: Path, payload: dict) -> None:
    """Write ``run.json`` for this run; earlier runs into the same folder (whose rows the CSVs keep) are
    listed under ``previous_runs`` without their score lists."""
    from percept.runinfo import write_json

    path = out / "run.json"
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = {}
        previous = old.pop("previous_runs", [])
        for key in ("evaluation",):
            if isinstance(old.get(key), dict):
                old[key] = {k: v for k, v in old[key].items() if k not in ("scores", "jnd")}
        payload["previous_runs"] = (previous + [old])[-20:] if old else previous
    write_json(path, payload)


def evaluate(args, root: Path, synthetic: bool, out: Path, device, names: list[str], weights_dir=None) -> dict:
    t0 = time.time()
    metrics, details, skipped = _build_all(args, device, names, weights_dir)
    for key, why in skipped.items():
        log.warning("skipped %s: %s", key, why)
    if not metrics:
        raise SystemExit("error: no metric could be built here (see the warnings above)")
    torch.manual_seed(args.seed)
    jnd_subsets = args.jnd_subsets if (bapps.resolve_root(root) / "jnd").is_dir() else []
    if args.jnd_subsets and not jnd_subsets:
        log.warning("no JND data under %s: jnd.csv is not written", root)
    result = evaluate_bapps(
        metrics,
        root,
        subsets=args.subsets,
        jnd_subsets=jnd_subsets,
        batch_size=args.batch_size or 128,
        workers=args.workers,
        resize=args.resize,
        limit=args.limit,
        device=device,
        progress=not args.no_progress,
    )
    merge_rows(
        out / "scores.csv",
        result.scores,
        ("metric", "colorspace", "subset", "score"),
        ("metric", "colorspace", "subset"),
    )
    if result.jnd:
        merge_rows(
            out / "jnd.csv", result.jnd, ("metric", "colorspace", "subset", "map"), ("metric", "colorspace", "subset")
        )
    return {
        "metrics": details,
        "skipped": skipped,
        "counts": result.counts,
        "seconds": round(time.time() - t0, 1),
        "scores": result.scores,
        "jnd": result.jnd,
    }


def train(args, root: Path, out: Path, device, names: list[str]) -> tuple[dict, dict]:
    tuned_root = out / "tuned"
    weights_dir = tuned_root / "weights"
    runs, skipped = {}, {}
    for name in names:
        key = _registry_key(name)
        if metric_family(key) is None:
            skipped[name] = "nothing to tune"
            continue
        for options, variant in _variants(args, name):
            for cs in args.colorspaces:
                for mode in args.variants:
                    where = f"{name}{variant}{'' if mode == 'lin' else '+' + mode}/{cs}"
                    if cs == "lab":
                        skipped[where] = "no tunable metric has a Lab variant"
                        continue
                    if options.get("lin") is False:
                        skipped[where] = "--lpips-baseline has no linear layers to tune"
                        continue
                    try:
                        config = TuneConfig(
                            key,
                            cs,
                            lr=args.lr,
                            nepoch=args.nepoch,
                            nepoch_decay=args.nepoch_decay,
                            batch_size=args.batch_size,
                            order=args.order,
                            batch_luminance=args.batch_luminance,
                            backbone_weights=args.backbone_weights,
                            lin_init=args.lin_init,
                            seed=args.seed,
                            train_subsets=tuple(args.train_subsets),
                            resize=args.resize,
                            limit=args.limit,
                            mode=mode,
                            metric_options=_tuning_options(options),
                        )
                        result = tune_2afc(
                            config,
                            root,
                            tuned_root / config.tag,
                            resume=args.resume,
                            device=device,
                            workers=args.workers,
                            progress=not args.no_progress,
                            max_batches=args.max_batches,
                        )
                    except (DatasetError, SystemExit):
                        raise
                    except Exception as err:  # e.g. a trunk whose ImageNet weights are not on this machine
                        skipped[where] = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
                        log.warning("could not tune %s: %s", where, skipped[where])
                        continue
                    weights_dir.mkdir(parents=True, exist_ok=True)
                    files = [result["weights"]] + ([result["trunk"]] if result.get("trunk") else [])
                    for f in files:
                        shutil.copyfile(f, weights_dir / f.name)
                    last = result["history"][-1] if result["history"] else {}
                    runs[where] = {
                        "name": name,
                        "variant": mode,
                        "config": result["config"],
                        "weights": str(weights_dir / result["weights"].name),
                        **({"trunk": str(weights_dir / result["trunk"].name)} if result.get("trunk") else {}),
                        "final_epoch": last,
                    }
                    log.info("tuned %s: %s", where, last)
    return runs, skipped


def main(argv: list[str] | None = None) -> int:
    """Run the experiment; a failure is one line on stderr (``--debug`` or PERCEPT_DEBUG=1: the traceback)."""
    return driver_main(_main, argv, prog="experiments/2afc/run.py")


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if args.workers is None:
        args.workers = min(4, (os.cpu_count() or 2) // 2)
    if args.quick:
        args.limit = args.limit or QUICK_LIMIT
        args.workers = 0
        if args.train:
            args.nepoch = 1 if args.nepoch is None else args.nepoch
            args.nepoch_decay = 1 if args.nepoch_decay is None else args.nepoch_decay
            args.max_batches = args.max_batches or 2
    try:
        names = [_canonical(n) for n in args.metrics] if args.metrics else None
    except KeyError as err:
        print(f"error: {err.args[0]}", file=sys.stderr)
        return 2
    if names is None:
        if args.train:
            names = QUICK_TRAIN_METRICS if args.quick else TRAIN_METRICS
        elif args.weights is not None:
            names = [n for n in registry.list_metrics() if metric_family(n) is not None]
        else:
            names = QUICK_METRICS if args.quick else list(registry.list_metrics())
    if args.batch_luminance and (args.batch_size or 128) != 128 and not args.train:
        log.warning("--batch-luminance with --batch-size %s: the original evaluated in batches of 128", args.batch_size)

    try:
        root, synthetic, tmp = _data_root(args)
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if synthetic:
        print(
            "=" * 100 + "\nSYNTHETIC DATA: not BAPPS. Patches, distortions and judge values were generated by software "
            f"({root});\nthe scores below exercise the code and say nothing about agreement with humans.\n" + "=" * 100
        )
    out = args.out or ((tmp / "results") if tmp is not None else (DEFAULT_OUT / "quick" if args.quick else DEFAULT_OUT))
    with RunLock(out):  # one run at a time per output folder
        return _run(args, names, root, synthetic, out)


def _run(args, names: list[str], root: Path, synthetic: bool, out: Path) -> int:
    from percept.runinfo import machine_info, select_device

    _check_out(out, synthetic)
    device = select_device(args.device)
    log.info("data %s%s, writing to %s, device %s", root, " (SYNTHETIC)" if synthetic else "", out, device)

    payload = {
        "experiment": "2afc",
        "synthetic": synthetic,
        "data": str(root),
        "data_note": (
            "SYNTHETIC BAPPS-layout folder (software-generated judges), NOT human judgements"
            if synthetic
            else "BAPPS (Zhang et al. 2018), official folder layout"
        ),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "harness": {
            "call": "metric(input=p0|p1, target=ref) for 2AFC, metric(input=p1, target=p0) for JND; reduction 'none'",
            "grey": "BT.601 luma 0.299 R + 0.587 G + 0.114 B (percept.color.rgb_to_grey)",
            "resize": args.resize,
            "watson_luminance": "batch-pooled (original)" if args.batch_luminance else "per image (percept)",
            "watson_input_mapping": "none: patches in [0, 1]; the original harness's (x + 1) / 2 is not applied",
            "similarities": "metrics with higher_is_better (psnr) are negated",
        },
        "machine": machine_info(device),
    }
    if args.train:
        runs, skipped = train(args, root, out, device, names)
        payload["tuning"] = {"runs": runs, "skipped": skipped, "weights": str(out / "tuned" / "weights")}
        tuned = sorted({r["name"] for r in runs.values()})
        if tuned and not args.no_eval and _has_bapps(root, train=False):
            payload["evaluation"] = evaluate(args, root, synthetic, out, device, tuned, out / "tuned" / "weights")
    else:
        payload["evaluation"] = evaluate(args, root, synthetic, out, device, names, args.weights)
    _write_run_json(out, payload)
    _print_summary(payload, out)
    return 0


def _print_summary(payload: dict, out: Path) -> None:
    ev = payload.get("evaluation")
    if ev:
        rows = {}
        for r in ev["scores"]:
            rows.setdefault((r["metric"], r["colorspace"]), []).append(r["score"])
        print(f"\n2AFC score (mean over {len(next(iter(rows.values())))} subsets, x100):")
        for (m, cs), v in rows.items():
            print(f"  {m:28s} {cs:5s} {100 * sum(v) / len(v):6.2f}")
        if ev["skipped"]:
            print(f"skipped {len(ev['skipped'])} metric/colour-space pairs (reasons in run.json)")
    tag = " (SYNTHETIC DATA, not BAPPS)" if payload["synthetic"] else ""
    print(f"wrote {out}{tag}")


if __name__ == "__main__":
    sys.exit(main())
