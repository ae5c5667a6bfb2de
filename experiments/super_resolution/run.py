"""Super-resolution of faces trained with a pixel or a deep perceptual loss (Pihlgren et al. 2023, benchmark B2).

A small network (:class:`sr.SRNet`: bicubic upsampling plus a learned residual from a few conv layers and a pixel
shuffle) learns to upscale 64x64 CelebA faces by 4 (or 2) with each loss in ``--losses``, and is scored on
held-out faces with PSNR (RGB), SSIM (luma), LPIPS-alex and LPIPS-squeeze, next to bicubic interpolation::

    python experiments/super_resolution/run.py                       # the 6 default losses: ~1 h on 2 CPU cores
    python experiments/super_resolution/run.py --losses l2 deeploss-squeeze feature-vgg16:8@random
    python experiments/super_resolution/run.py --losses feature-alexnet:1+tv=1 lpips-alex+tv=1   # with a TV term
    python experiments/super_resolution/run.py --quick               # ~1 minute (tests)

Losses: any registry name (``percept.list_metrics()``: ``l2``, ``lpips-alex``, ``deeploss-squeeze``, ``dps-alex``,
...) or ``feature-<arch>:<layer>[@imagenet|@random]``, Pihlgren et al.'s loss: the mean squared error of the raw
(not channel-normalised) features of child ``layer`` of a torchvision network fed un-normalised [0, 1] images
(``--feature-input-norm imagenet`` normalises them first). ImageNet weights exist offline for AlexNet and
SqueezeNet 1.1 only; ``@random`` uses torchvision's random initialisation (seeded), and the ``weights`` column
says which one each row used. A missing weight file is an error, never a silent fallback. A suffix ``+tv=W``
(e.g. ``feature-alexnet:1+tv=1``) adds W x Johnson et al.'s total-variation regulariser (mean squared
neighbour difference of the output) to that loss; ``--tv-weight`` sets W for losses without the suffix
(default 0: the loss alone). The ``tv_weight`` column says which weight each row used.

The default feature loss is AlexNet relu1 (child 1), not relu2 (child 4, the usual "relu2_2-like" choice): on
64x64 faces relu2 is a 7x7 map, and in a 500-step probe its loss left fine detail unconstrained and drew a
visible grid of blotches (relu1 is 15x15); ``feature-alexnet:4+tv=3`` suppresses most of that.

Protocol, with what differs from Pihlgren et al.'s re-run of Johnson et al. 2016 (spec dps_analysis.md §3.2 B2):

- data: **REDUCED CelebA (10k half-res)** offline (the 64x64 face crops of :mod:`percept.data.celeba`, made
  from 89x109 copies), 8,900 training faces, 100 validation faces (the end of the training split), the
  1,000 held-out faces as the test set; the paper: 10,000 COCO images at 288x288, tested on Set5/Set14/BSD100;
- LR input: antialiased bicubic downscaling (the paper: Gaussian blur, then bicubic);
- network: 3 residual blocks of 48 channels on the LR grid, a pixel shuffle to 16 channels at full
  resolution, one 3x3 conv, a bicubic skip (the paper: Johnson et al.'s 4 residual blocks of 64 channels with
  nearest upsampling and a tanh output);
- training: Adam, lr 1e-3 (the paper's), batch 16 (the paper: 4), 3,000 steps (the paper: 80 epochs);
- model selection: the last step (``--select best-psnr`` is the paper's rule; since this network starts as
  bicubic interpolation, that rule can return the untrained network for losses that trade PSNR for detail);
- scores: PSNR on RGB and SSIM on BT.601 luma (the paper: both on the Y channel) plus LPIPS-alex and
  LPIPS-squeeze (independent of the AlexNet-based losses).

Writes ``--out`` (default ``results/super_resolution/``), updated after each loss: ``summary.csv`` (one row per
loss and the bicubic baseline: means and standard errors over the test faces; a rerun replaces its own losses'
rows), ``curves.csv`` (validation scores during training, row by row), ``per_image.npz`` (every test face's
scores, for paired comparisons), ``examples.npz`` (LR, bicubic, each loss's output and HR for the first test
faces, uint8), ``examples.png`` (a quick look) and ``run.json`` (protocol, arguments, data, machine info).
``analysis.ipynb`` reads these files only.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import logging
import re
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from percept.evaluate import merge_rows
from percept.guard import RunError, RunLock, add_run_flags, driver_main
from percept.runinfo import machine_info, select_device, write_json

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DEFAULT_OUT = ROOT / "results" / "super_resolution"
log = logging.getLogger("super_resolution")


def load_sr_module():
    """``experiments/super_resolution/sr.py`` (the network, losses and training loop) as a module."""
    if "percept_experiments_sr" in sys.modules:
        return sys.modules["percept_experiments_sr"]
    spec = importlib.util.spec_from_file_location("percept_experiments_sr", HERE / "sr.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


sr = load_sr_module()

SUMMARY_COLUMNS = [
    "loss", "weights", "data", "factor", "steps", "select", "n_test",
    "tv_weight", "psnr", "psnr_se", "ssim", "ssim_se", "lpips_alex", "lpips_alex_se", "lpips_squeeze",
    "lpips_squeeze_se", "train_seconds", "seconds_per_step",
]
CURVE_COLUMNS = ["loss", "step", "train_loss", "val_psnr", "val_ssim", "val_lpips_alex", "val_lpips_squeeze",
                 "train_seconds"]
N_EXAMPLES = 8
#: the committed run: pixel L2, Pihlgren et al.'s raw-feature loss on the two ImageNet networks available offline,
#: LPIPS-alex, and the AlexNet losses again with Johnson et al.'s TV regulariser
DEFAULT_LOSSES = ["l2", "feature-alexnet:1", "feature-squeezenet1_1:1", "lpips-alex", "feature-alexnet:1+tv=1",
                  "lpips-alex+tv=1"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--losses", nargs="+", default=DEFAULT_LOSSES,
                   help="registry names or feature-<arch>:<layer>[@imagenet|@random]")
    p.add_argument("--factor", type=int, default=4, choices=sr.FACTORS, help="upscaling factor (the paper's x4)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (the paper's 1e-3)")
    p.add_argument("--channels", type=int, default=48)
    p.add_argument("--blocks", type=int, default=3)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--select", default="last", choices=["last", "best-psnr"],
                   help="model kept: the last step, or the best validation PSNR (the paper's rule)")
    p.add_argument("--tv-weight", type=float, default=0.0,
                   help="TV regulariser weight for losses without a +tv=W suffix (Johnson et al.'s; 0: the loss alone)")
    p.add_argument("--feature-input-norm", default="none", choices=["none", "imagenet"],
                   help="feature-* losses: un-normalised [0, 1] input (the paper's SR loss) or ImageNet mean/std")
    p.add_argument("--n-train", type=int, default=None, help="training faces (default: all but --n-val)")
    p.add_argument("--n-val", type=int, default=100)
    p.add_argument("--n-test", type=int, default=None, help="held-out test faces (default: all 1,000)")
    add_run_flags(p, default_out=DEFAULT_OUT.relative_to(ROOT), quick="a ~1 minute run on a few faces (tests)")
    return p


def _apply_quick(args: argparse.Namespace) -> None:
    if args.quick:
        args.steps, args.eval_every = min(args.steps, 12), min(args.eval_every, 6)
        args.n_train, args.n_val, args.n_test = args.n_train or 256, min(args.n_val, 16), args.n_test or 32
        args.batch_size = min(args.batch_size, 8)


def weights_of(spec: str, loss: torch.nn.Module) -> str:
    """Which backbone weights a loss uses: "imagenet", "random", "n/a" (no network)."""
    if isinstance(loss, sr.FeatureLoss):
        return "random" if spec.strip().lower().endswith("@random") else "imagenet"
    return "imagenet" if hasattr(loss, "backbone") else "n/a"


_TV_SUFFIX = re.compile(r"^(?P<loss>.+?)\+tv=(?P<w>[0-9.eE+-]+)$")


def split_tv(spec: str, default: float) -> tuple[str, float]:
    """``"feature-alexnet:1+tv=1"`` -> ``("feature-alexnet:1", 1.0)``; no suffix: ``(spec, default)``."""
    m = _TV_SUFFIX.match(spec.strip())
    if not m:
        return spec.strip(), default
    try:
        w = float(m.group("w"))
    except ValueError:
        raise RunError(f"--losses {spec}: bad TV weight {m.group('w')!r}") from None
    if not w >= 0:
        raise RunError(f"--losses {spec}: the TV weight must be >= 0")
    return m.group("loss"), w


def _row(loss: str, weights: str, label: str, args, scores: dict, train_seconds: float, tv: float = 0.0) -> dict:
    s = sr.summarise(scores)
    return {
        "loss": loss, "weights": weights, "data": label, "factor": args.factor,
        "steps": args.steps if loss != "bicubic" else 0, "select": args.select if loss != "bicubic" else "",
        "tv_weight": tv if loss != "bicubic" else "",
        "n_test": len(scores["psnr"]), **s, "train_seconds": train_seconds,
        "seconds_per_step": train_seconds / args.steps if loss != "bicubic" and args.steps else float("nan"),
    }


def _check_folder(out: Path, label: str, args) -> None:
    """Rows of one folder must come from the same data and protocol (a rerun replaces rows, never mixes)."""
    info = out / "run.json"
    if not info.is_file():
        return
    try:
        old = json.loads(info.read_text())
    except ValueError:
        return
    same = {"data": label, "factor": args.factor, "steps": args.steps, "n_test": args.n_test, "quick": args.quick}
    was = {k: old.get("protocol", {}).get(k) for k in same}
    if was != same:
        raise RunError(
            f"{out} holds results of another protocol ({was}); this run is {same}: write to another --out"
        )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _apply_quick(args)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = args.out or (DEFAULT_OUT / "quick" if args.quick else DEFAULT_OUT)
    device = select_device(args.device)
    # build every loss first: a bad name or a missing weight file stops the run before any training
    losses = {}  # row label -> (loss module, TV weight, loss name)
    for spec in args.losses:
        name, tv = split_tv(spec, args.tv_weight)
        label = f"{name}+tv={tv:g}" if tv else name
        if label in losses:
            raise RunError(f"--losses names {label!r} twice")
        try:
            losses[label] = (sr.build_loss(name, device, input_norm=args.feature_input_norm), tv, name)
        except KeyError as err:
            raise RunError(str(err.args[0])) from None
        except ValueError as err:
            raise RunError(f"--losses {spec}: {err}") from None
    faces = sr.load_faces(args.n_train, args.n_val, args.n_test)
    args.n_test = len(faces["test"])
    with RunLock(out):
        out.mkdir(parents=True, exist_ok=True)
        _check_folder(out, faces["label"], args)
        return _run(args, losses, faces, out, device)


def _run(args, losses: dict, faces: dict, out: Path, device) -> int:
    label = faces["label"]
    print(f"data: {label} ({len(faces['train'])} training, {len(faces['val'])} validation, {len(faces['test'])} test "
          f"faces), x{args.factor}, {args.steps} steps, device {device}")
    evaluator = sr.Evaluator(device)
    config = sr.TrainConfig(
        factor=args.factor, steps=args.steps, batch_size=args.batch_size, lr=args.lr, channels=args.channels,
        blocks=args.blocks, eval_every=args.eval_every, select=args.select, seed=args.seed,
    )
    hr = sr.to_float(faces["test"])
    lr_images = sr.downscale(hr, args.factor)
    examples = {
        "hr": faces["test"][:N_EXAMPLES].numpy(),
        "lr": (lr_images[:N_EXAMPLES] * 255).round().to(torch.uint8).numpy(),
        "bicubic": (sr.bicubic_upscale(lr_images[:N_EXAMPLES], args.factor) * 255).round().to(torch.uint8).numpy(),
    }
    per_image = {"bicubic": evaluator.scores(sr.bicubic_upscale(lr_images, args.factor), hr)}
    rows = [_row("bicubic", "n/a", label, args, per_image["bicubic"], 0.0)]
    old_examples = _load_npz(out / "examples.npz")
    old_scores = _load_npz(out / "per_image.npz")
    info = {
        "experiment": "super_resolution",
        "data": label,
        "data_source": faces["data_source"],
        "test_source": faces["test_source"],
        "protocol": {"data": label, "factor": args.factor, "steps": args.steps, "n_test": args.n_test,
                     "quick": args.quick},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "scores": "PSNR on RGB (dB); SSIM on BT.601 luma (Gaussian 11x11, sigma 1.5, valid); LPIPS-alex and "
                  "LPIPS-squeeze v0.1",
        "machine": machine_info(device),
    }

    def save() -> None:
        """Write everything computed so far (after each loss, so an interrupted run keeps its finished losses)."""
        merge_rows(out / "summary.csv", rows, SUMMARY_COLUMNS, key=["loss"])
        done = {k.removeprefix("out:") for k in examples}
        kept = {k: v for k, v in old_examples.items() if k.removeprefix("out:") not in done | set(losses)}
        np.savez_compressed(out / "examples.npz", **kept, **examples)
        scores = {k: v for k, v in old_scores.items() if k.split("|")[0] not in set(per_image) | set(losses)}
        for spec, s in per_image.items():
            scores.update({f"{spec}|{k}": v.numpy() for k, v in s.items()})
        np.savez_compressed(out / "per_image.npz", **scores)
        write_json(out / "run.json", info)

    save()
    curves_path = out / "curves.csv"
    kept_curves = _kept_curves(curves_path, set(losses))
    with open(curves_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CURVE_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(kept_curves)
        for spec, (loss_fn, tv, name) in losses.items():
            print(f"training with {spec} ...", flush=True)

            def on_eval(record, spec=spec):
                writer.writerow({"loss": spec, **{k: _fmt(record.get(k, "")) for k in CURVE_COLUMNS if k != "loss"}})
                handle.flush()

            model, history = sr.train_sr(loss_fn, faces["train"], faces["val"], replace(config, tv_weight=tv),
                                         device=device,
                                         evaluator=evaluator, on_eval=on_eval, progress=not args.no_progress)
            output = sr.predict(model, lr_images, device)
            per_image[spec] = evaluator.scores(output, hr)
            examples[f"out:{spec}"] = (output[:N_EXAMPLES] * 255).round().to(torch.uint8).numpy()
            row = _row(spec, weights_of(name, loss_fn), label, args, per_image[spec], history[-1]["train_seconds"], tv)
            rows.append(row)
            save()
            print(f"  {spec}: PSNR {row['psnr']:.2f} dB, SSIM {row['ssim']:.4f}, LPIPS-alex {row['lpips_alex']:.4f}, "
                  f"LPIPS-squeeze {row['lpips_squeeze']:.4f} ({row['train_seconds']:.0f} s)", flush=True)
    quick_look(out / "examples.png", {**old_examples, **examples})
    print(f"wrote {out} ({label})")
    return 0


def _fmt(v):
    return f"{v:.6g}" if isinstance(v, float) else v


def _load_npz(path: Path) -> dict:
    if not path.is_file():
        return {}
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def _kept_curves(path: Path, replaced: set) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if r.get("loss") not in replaced]


def quick_look(path: Path, examples: dict) -> None:
    """One row per image: LR (nearest-upscaled), bicubic, each loss's output, HR."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = ["lr", "bicubic"] + [k for k in examples if k.startswith("out:")] + ["hr"]
    n = min(4, len(examples["hr"]))
    fig, axes = plt.subplots(n, len(columns), figsize=(1.6 * len(columns), 1.7 * n), squeeze=False)
    for i in range(n):
        for j, key in enumerate(columns):
            axes[i, j].imshow(examples[key][i].transpose(1, 2, 0), interpolation="nearest")
            axes[i, j].axis("off")
            if i == 0:
                axes[i, j].set_title(key.removeprefix("out:"), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(driver_main(main, prog="experiments/super_resolution/run.py"))
