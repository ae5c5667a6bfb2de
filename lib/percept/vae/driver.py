"""The experiment driver shared by ``experiments/vae_mnist/run.py`` and ``experiments/vae_celeba/run.py``.

A driver file describes what differs between the two experiments as a :class:`VAEExperiment` and hands it
to :func:`run_experiment`, which parses the flags (the paper's values as defaults), trains every requested
loss with :func:`percept.vae.train_vae` and writes the results:

>>> from percept.data.mnist import load_mnist
>>> from percept.vae.driver import Figures, VAEExperiment, first_positions, run_experiment
>>> EXPERIMENT = VAEExperiment(model="mnist", dataset=load_mnist,
...                            figures=Figures(first_positions, n_samples=64, sample_rows=8, interpolation_steps=10),
...                            quick={"epochs": 1, "train_limit": 512, "test_limit": 128})
>>> run_experiment(EXPERIMENT, ["--quick", "--loss", "l2"])    # python experiments/vae_mnist/run.py --quick  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import math
import random
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from percept.guard import RunError, RunLock, add_debug_flag, driver_main
from percept.runinfo import init_distributed, machine_info, select_device, write_json
from percept.vae.checkpoint import CheckpointError, CheckpointMismatch, load_model
from percept.vae.outputs import (
    append_snapshot,
    interpolate,
    manifold,
    reconstruct,
    sample,
    score_reconstructions,
    to_uint8,
)
from percept.vae.paper import PAPER_LOSSES, PAPER_SCHEDULE, build_metric, canonical_loss
from percept.vae.trainer import TrainConfig, train_vae

log = logging.getLogger(__name__)

#: the checkout's root (results/<experiment>/ is the default output folder)
ROOT = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class Figures:
    """What a trained model's figures show: which test images, and how samples and interpolations are laid out.

    ``positions(test_set)`` returns ``(reconstruction positions, interpolation position pairs)`` in the test
    set (:func:`first_positions` when the paper's images are not there); ``n_samples`` random samples are
    drawn in rows of ``sample_rows``; each interpolation has ``interpolation_steps`` images.
    """

    positions: Callable
    n_samples: int
    sample_rows: int
    interpolation_steps: int


@dataclass
class VAEExperiment:
    """What differs between the MNIST and the CelebA experiment; see :func:`run_experiment`.

    ``model`` names the VAE ("mnist" or "celeba"), its paper schedule and the experiment (``vae_<model>``:
    ``experiments/vae_<model>/``, ``results/vae_<model>/``). ``dataset(split, root=..., offline=...)`` is the
    loader (:func:`percept.data.mnist.load_mnist`, :func:`percept.data.celeba.load_celeba`) returning an
    :class:`percept.data.ImageSet`. ``quick``: the flag values of ``--quick``; ``offline``: flag defaults
    replaced when only the small offline sample is there.
    """

    model: str
    dataset: Callable
    figures: Figures
    quick: dict
    description: str = ""
    offline: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"vae_{self.model}"

    def load(self, split: str, args: argparse.Namespace):
        """The ``split`` ("train"/"test") of the dataset, from ``--data-root`` (``--offline``: the asset copy)."""
        return self.dataset(split, root=args.data_root, offline=True if args.offline else None)


def first_positions(test_set, n: int) -> tuple[list[int], list[tuple[int, int]]]:
    """Figure positions of a test set without the paper's images: the first ``n``, pairs (0, 1) and (2, 3)."""
    size = len(test_set)
    return list(range(min(n, size))), [(0 % size, 1 % size), (2 % size, 3 % size)]


def _parse_losses(text: str) -> list[str]:
    names = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        if part.lower() == "all":
            names.extend(PAPER_LOSSES)
        else:
            names.append(canonical_loss(part))
    return list(dict.fromkeys(names))


def build_parser(exp: VAEExperiment) -> argparse.ArgumentParser:
    """argparse flags of a VAE driver; defaults are the paper's values for ``exp.model``."""
    halflife, epochs, batch = PAPER_SCHEDULE[exp.model]
    parser = argparse.ArgumentParser(
        prog=f"experiments/{exp.name}/run.py",
        description=exp.description or f"Train the {exp.model} VAE with perceptual reconstruction losses.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--loss",
        default="all",
        help="registry metric name(s), comma-separated, or 'all' for the paper's set: " + ", ".join(PAPER_LOSSES),
    )
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument(
        "--batch-size", type=int, default=batch, help="global minibatch (split over torchrun processes)"
    )
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--lr-halflife", type=float, default=halflife, help="H in lr = lr0 * 0.5 ** (epoch / H)")
    parser.add_argument(
        "--lambdas",
        choices=("head", "paper"),
        default="head",
        help="lambda = e^k exponents of the original repository at HEAD, or of the paper's code",
    )
    parser.add_argument("--k", type=float, default=None, help="override the exponent k (lambda = e^k); one loss only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help=f"output folder (default: results/{exp.name}/)")
    parser.add_argument(
        "--resume", action="store_true", help="continue each loss from <out>/<loss>/checkpoints/last.pt"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the earlier run of a loss in <out> (without it, or --resume, an earlier run is not touched)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="about a minute on 2 CPU cores: " + ", ".join(f"{k}={v}" for k, v in exp.quick.items()),
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="downloaded data folder (default: $PERCEPT_DATA, else data/ of the checkout)",
    )
    parser.add_argument("--offline", action="store_true", help="use the offline asset data even when a download exists")
    parser.add_argument("--train-limit", type=int, default=None, help="use only the first N training images")
    parser.add_argument("--test-limit", type=int, default=None, help="use only the first N test images")
    parser.add_argument(
        "--eval-metrics",
        default=",".join(PAPER_LOSSES),
        help="metrics scoring every model's test reconstructions (the cross-metric table)",
    )
    parser.add_argument(
        "--metric-style",
        choices=("paper", "library"),
        default="paper",
        help="build losses with the options matching the original code, or the library defaults",
    )
    parser.add_argument(
        "--deterministic-loss",
        action="store_true",
        help="train without the random block shifts of Watson (the paper trains with them)",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=1,
        help="epochs between checkpoints (1: every epoch; the last epoch is always saved)",
    )
    parser.add_argument(
        "--checkpoint-steps",
        type=int,
        default=0,
        help="also checkpoint every this many training steps inside an epoch, so that a run stopped mid-epoch "
        "resumes at that step (long CPU epochs); 0: at epoch ends only",
    )
    parser.add_argument(
        "--snapshots",
        type=int,
        default=8,
        help="reconstructions of this many fixed test images after every epoch, in <loss>/snapshots.npz "
        "(when do the images appear?); 0: none",
    )
    parser.add_argument(
        "--keep-checkpoints",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep checkpoints after a loss finishes (default: yes, except with --quick)",
    )
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    add_debug_flag(parser)
    return parser


def _apply_quick(args: argparse.Namespace, parser: argparse.ArgumentParser, quick: dict) -> None:
    for key, value in quick.items():
        if getattr(args, key) == parser.get_default(key):
            setattr(args, key, value)


def _limit(dataset, n: int | None):
    return dataset if n is None or n >= len(dataset) else dataset.subset(range(n))


def _build_eval_metrics(names: list[str], colorspace: str, image_shape, style: str, device) -> tuple[dict, dict]:
    metrics, unavailable = {}, {}
    for name in names:
        try:
            metrics[name] = build_metric(
                name,
                colorspace=colorspace,
                image_shape=image_shape,
                deterministic=True,
                metric_style=style,
                device=device,
            )
        except Exception as err:  # missing weights, a metric not in this installation, ...
            unavailable[name] = f"{type(err).__name__}: {err}"
    return metrics, unavailable


def _save_grid(images: torch.Tensor, path: Path, nrow: int) -> None:
    from torchvision.utils import save_image

    save_image(images, path, nrow=nrow, padding=2, pad_value=1.0)


def write_outputs(
    exp: VAEExperiment, model: nn.Module, test_set, loss_dir: Path, eval_metrics: dict, seed: int
) -> dict[str, dict]:
    """Figures' raw data (``outputs.npz``), quick-look PNGs and ``scores.csv`` of one trained model."""
    figures = exp.figures
    recon_pos, pairs = figures.positions(test_set)
    images = test_set.images(recon_pos)
    recon = reconstruct(model, images)
    samples = sample(model, figures.n_samples, seed=seed)
    interps = torch.stack([interpolate(model, test_set[a], test_set[b], figures.interpolation_steps) for a, b in pairs])
    arrays = {
        "test_ids": test_set.indices[torch.as_tensor(recon_pos, dtype=torch.long)].numpy(),
        "test_images": to_uint8(images),
        "reconstructions": to_uint8(recon),
        "samples": to_uint8(samples),
        "interpolation_ids": test_set.indices[torch.as_tensor(pairs, dtype=torch.long).reshape(-1)]
        .numpy()
        .reshape(-1, 2),
        "interpolations": to_uint8(interps),
    }
    _save_grid(torch.cat([images, recon]), loss_dir / "reconstructions.png", nrow=len(images))
    _save_grid(samples, loss_dir / "samples.png", nrow=figures.sample_rows)
    _save_grid(interps.flatten(0, 1), loss_dir / "interpolations.png", nrow=figures.interpolation_steps)
    if getattr(model, "latent_dim", None) == 2:
        grid_images, z = manifold(model)
        arrays["manifold"], arrays["manifold_z"] = to_uint8(grid_images), z.numpy()
        _save_grid(grid_images, loss_dir / "manifold.png", nrow=int(math.isqrt(len(z))))
    np.savez_compressed(loss_dir / "outputs.npz", **arrays)

    scores = score_reconstructions(model, test_set, eval_metrics)
    summary = {}
    with open(loss_dir / "scores.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["metric", "mean", "std", "n"])
        for name, values in scores.items():
            summary[name] = {"mean": values.mean().item(), "std": values.std().item(), "n": len(values)}
            writer.writerow([name, f"{values.mean().item():.8g}", f"{values.std().item():.8g}", len(values)])
    return summary


def _collect(out: Path, order: list[str]) -> None:
    """Merge every ``<out>/<loss>/{scores,history}.csv`` into ``cross_metric.csv`` and ``training_curves.csv``."""
    import pandas as pd

    folders = sorted(
        (d for d in out.iterdir() if (d / "run.json").is_file()),
        key=lambda d: (order.index(d.name) if d.name in order else len(order), d.name),
    )
    rows, curves = [], []
    for d in folders:
        if (d / "scores.csv").is_file():
            scores = pd.read_csv(d / "scores.csv")
            rows.append(scores.set_index("metric")["mean"].rename(d.name))
        if (d / "history.csv").is_file():
            curves.append(pd.read_csv(d / "history.csv").assign(loss=d.name))
    if rows:
        table = pd.DataFrame(rows)
        table.index.name = "trained_with"
        table.to_csv(out / "cross_metric.csv", float_format="%.8g")
    if curves:
        frame = pd.concat(curves, ignore_index=True)
        frame[["loss"] + [c for c in frame.columns if c != "loss"]].to_csv(
            out / "training_curves.csv", index=False, float_format="%.8g"
        )


def run_experiment(exp: VAEExperiment, argv: list[str] | None = None) -> int:
    """The driver behind ``experiments/vae_*/run.py``: train each requested loss, then write the outputs.

    Per loss ``<out>/<loss>/``: ``history.csv`` (training curves), ``outputs.npz`` (fixed test images, their
    reconstructions, random samples, interpolations and, for a 2-D latent, the manifold), quick-look PNGs,
    ``scores.csv`` (the test reconstructions scored by every metric) and ``run.json``. For the whole run:
    ``cross_metric.csv``, ``training_curves.csv``, ``results.json`` and ``machine.json``.

    Each ``<out>/<loss>`` is locked while it trains (a second driver on the same loss stops with an error);
    drivers training different losses may share ``<out>``, and write its shared files in turn. A loss folder that holds an
    earlier run needs ``--resume`` or ``--overwrite``. Errors end in one line on stderr and a non-zero exit
    status (``--debug`` or ``PERCEPT_DEBUG=1`` for the traceback).
    """
    with contextlib.ExitStack() as cleanup:
        return driver_main(lambda a: _run_experiment(exp, a, cleanup), argv, prog=f"experiments/{exp.name}/run.py")


def _check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Flags that would fail deep inside training: refused here with one line naming the flag."""
    for flag, minimum in (("epochs", 1), ("batch_size", 1), ("checkpoint_every", 1), ("checkpoint_steps", 0),
                          ("num_workers", 0),
                          ("train_limit", 1), ("test_limit", 1), ("snapshots", 0)):  # fmt: skip
        value = getattr(args, flag)
        if value is not None and value < minimum:
            parser.error(f"--{flag.replace('_', '-')} must be at least {minimum}, got {value}")
    if args.lr <= 0 or not math.isfinite(args.lr) or args.lr_halflife <= 0:
        parser.error("--lr and --lr-halflife must be positive")
    if args.resume and args.overwrite:
        parser.error("--resume continues an earlier run and --overwrite replaces it: give one of them")
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise RunError(f"--out {args.out} is a file, not a folder: choose a folder for the results")
    select_device(args.device)  # a device that is not there: one line now, not a traceback after loading data


def _run_experiment(exp: VAEExperiment, argv: list[str], cleanup: contextlib.ExitStack) -> int:
    parser = build_parser(exp)
    args = parser.parse_args(argv)
    if args.quick:
        _apply_quick(args, parser, exp.quick)
    _check_args(args, parser)
    try:
        losses = _parse_losses(args.loss)
        eval_names = _parse_losses(args.eval_metrics)
    except KeyError as err:
        parser.error(f"{err.args[0]}. Or 'all' for the paper's set: {', '.join(PAPER_LOSSES)}")
    if not losses:
        parser.error("--loss names no loss")
    if args.k is not None and len(losses) > 1:
        parser.error("--k sets one loss's lambda: use it with a single --loss")
    keep = (not args.quick) if args.keep_checkpoints is None else args.keep_checkpoints
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    info = init_distributed(args.device)
    out = args.out or ROOT / "results" / exp.name
    from percept.data import DatasetError

    try:
        train_set = _limit(exp.load("train", args), args.train_limit)
        test_set = _limit(exp.load("test", args), args.test_limit)
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if train_set.info.get("offline") and train_set.info.get("protocol") in (None, "sample", "test-split"):
        # the small offline samples: settings that suit a handful of images (not the recovered or reduced sets)
        for key, value in exp.offline.items():
            if getattr(args, key) == parser.get_default(key):
                log.warning("offline data: --%s %s", key.replace("_", "-"), value)
                setattr(args, key, value)
    batch_size = args.batch_size
    if len(train_set) < batch_size:
        new = max(info.world_size, len(train_set) // info.world_size * info.world_size)
        log.warning("only %d training images: batch size %d -> %d", len(train_set), batch_size, new)
        batch_size = new
    device = select_device(args.device, info.local_rank)
    data = {
        "data_source": train_set.info.get("data_source", "").split("; this is")[0],
        "offline": bool(train_set.info.get("offline")),
        "train": train_set.info | {"size": len(train_set)},
        "test": test_set.info | {"size": len(test_set)},
    }
    if info.is_main:
        # each loss folder is locked while it trains (train_vae), so several drivers can train different losses
        # into one --out at the same time; the shared files at the end are written under the folder's lock
        log.info("data: %s", data["data_source"])
        log.info("writing to %s (device %s, %d process(es))", out, device, info.world_size)
    from percept.models import build_vae

    statuses = {}
    eval_metrics, unavailable = ({}, {})
    probe = build_vae(exp.model, hidden_dim=8)  # a small instance: only its colorspace and image shape are read
    if info.is_main:
        eval_metrics, unavailable = _build_eval_metrics(
            eval_names, probe.colorspace, probe.image_shape, args.metric_style, device
        )
        for name, why in unavailable.items():
            log.warning("metric %s cannot score reconstructions here: %s", name, why)
    for loss in losses:
        loss_dir = out / loss
        config = TrainConfig(
            loss=loss,
            epochs=args.epochs,
            batch_size=batch_size,
            lr=args.lr,
            lr_halflife=args.lr_halflife,
            lambdas=args.lambdas,
            k=args.k,
            seed=args.seed,
            device=args.device,
            deterministic_loss=args.deterministic_loss,
            metric_style=args.metric_style,
            num_workers=args.num_workers,
            progress=not args.no_progress,
            checkpoint_every=args.checkpoint_every,
            checkpoint_steps=args.checkpoint_steps,
        )
        try:  # can this loss be built here (weights present, metric implemented, a distance)?
            check = build_metric(
                loss,
                colorspace=probe.colorspace,
                image_shape=probe.image_shape,
                deterministic=args.deterministic_loss,
                metric_style=args.metric_style,
                device="cpu",
            )
            if getattr(check, "higher_is_better", False):
                raise ValueError(f"{loss} is a similarity (higher is better), not a distance: it cannot be a loss")
        except Exception as err:
            reason = f"{type(err).__name__}: {err}"
            if len(losses) == 1:
                print(f"error: cannot train with loss {loss!r}: {reason}", file=sys.stderr)
                return 2
            statuses[loss] = {"status": "skipped", "reason": reason}
            log.warning("skipping loss %s: %s", loss, reason)
            continue
        torch.manual_seed(args.seed)
        np.random.seed(args.seed)
        random.seed(args.seed)
        model = build_vae(exp.model)
        snapshot = None
        if args.snapshots and info.is_main:
            shown = exp.figures.positions(test_set)[0][: args.snapshots]
            shown_images = test_set.images(shown)
            shown_ids = test_set.indices[torch.as_tensor(shown, dtype=torch.long)].numpy()

            def snapshot(epoch, trained, row, loss_dir=loss_dir, images=shown_images, ids=shown_ids):
                append_snapshot(loss_dir / "snapshots.npz", trained, images, ids, epoch)

        try:
            result = train_vae(
                model, train_set, test_set, config, loss_dir, resume=args.resume, overwrite=args.overwrite,
                on_epoch_end=snapshot,
            )  # fmt: skip
        except (CheckpointMismatch, CheckpointError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        if not info.is_main:
            continue
        if result.history and result.best_epoch == result.history[-1]["epoch"] and not result.mid_epoch:
            best = result.model  # the last epoch is the best one: no need to read it back
        else:
            best = load_model(result.best_checkpoint, map_location=device)
        metrics = dict(eval_metrics)
        if loss not in metrics and loss not in unavailable:
            metrics[loss] = build_metric(
                loss,
                colorspace=best.colorspace,
                image_shape=best.image_shape,
                deterministic=True,
                metric_style=args.metric_style,
                device=device,
            )
        scores = write_outputs(exp, best, test_set, loss_dir, metrics, seed=args.seed)
        w = result.weighting
        run = {
            "experiment": exp.name,
            "loss": loss,
            "k": w.k,
            "lambda": w.lam,
            "lambda_source": w.source,
            "unit_factor": w.factor,
            "batch_mean": w.batch_mean,
            "weighting": w.describe(),
            "config": asdict(config),
            "epochs_trained": len(result.history),
            "resumed_from_epoch": result.resumed_from_epoch,
            "best_epoch": result.best_epoch,
            "best_test_loss": result.best_test_loss,
            "final": result.history[-1] if result.history else {},
            "seconds": result.seconds,
            "device": result.device,
            "world_size": result.world_size,
            "scores": scores,
            **data,
            "machine": machine_info(device),
        }
        write_json(loss_dir / "run.json", run)
        statuses[loss] = {
            "status": "trained",
            "epochs": len(result.history),
            "best_epoch": result.best_epoch,
            "seconds": round(result.seconds, 1),
        }
        if not keep:
            shutil.rmtree(loss_dir / "checkpoints", ignore_errors=True)
    if info.is_main:
        cleanup.enter_context(RunLock(out, wait=600))
        _collect(out, list(PAPER_LOSSES))
        machine = machine_info(device)
        write_json(out / "machine.json", machine)
        previous = {}
        if (out / "results.json").is_file():
            previous = json.loads((out / "results.json").read_text()).get("losses", {})
        write_json(
            out / "results.json",
            {
                "experiment": exp.name,
                "command": " ".join([f"experiments/{exp.name}/run.py"] + (argv if argv is not None else sys.argv[1:])),
                **data,
                "quick": args.quick,
                "epochs": args.epochs,
                "batch_size": batch_size,
                "lambdas": args.lambdas,
                "metric_style": args.metric_style,
                "seed": args.seed,
                "losses": previous | statuses,
                "eval_metrics": list(eval_metrics),
                "eval_metrics_unavailable": unavailable,
                "machine": machine,
            },
        )
        trained = [k for k, v in statuses.items() if v["status"] == "trained"]
        print(f"{exp.name}: trained {', '.join(trained) or 'nothing'}; results in {out}")
        for name, st in statuses.items():
            if st["status"] != "trained":
                print(f"  skipped {name}: {st['reason']}")
    if info.initialized_here or (info.distributed and dist.is_initialized()):
        dist.barrier()
        dist.destroy_process_group()
    return 0
