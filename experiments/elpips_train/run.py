"""Train E-LPIPS's linear weights on BAPPS 2AFC (the reference's ``train_run.py``), then score them.

    make data-bapps                                               # once: BAPPS into data/bapps
    python experiments/elpips_train/run.py --metric elpips_vgg --name elpips_vgg --device cuda --workers 8
    python experiments/elpips_train/run.py --metric elpips_squeeze_maxpool --use-dropout
    python experiments/elpips_train/run.py --metric elpips_vgg --transforms all --net-dropout   # with the ensemble
    python experiments/elpips_train/run.py --resume --name elpips_vgg                         # continue a run
    python experiments/elpips_train/run.py --quick          # ~1 min on 2 CPU cores; SYNTHETIC data without BAPPS

The training (``percept.elpips_train``, spec lpips_elpips.md D4) follows the reference: the chosen network
(``--metric``: elpips_vgg = E-LPIPS-VGG's 14 average-pooled taps, elpips_squeeze_maxpool, lpips_vgg,
lpips_squeeze) with its ImageNet trunk frozen and linear weights from zero; **no random transformations and no
network dropout** (``--transforms all --net-dropout`` trains with the ensemble on instead, one shared draw per
batch); d(p0, ref) and d(p1, ref) as one correlated tuple; the symmetrised ranking loss
0.5 [BCE(G(d0, d1), h) + BCE(G(d1, d0), 1 - h)] with LPIPS's 5 -> 32 -> 32 -> 1 head (He init); Adam
(0.9, 0.999), lr 1e-4 for 5 epochs + 5 of linear decay, no update in the first 50 steps and a linear warm-up
over the next 50; weights clamped >= 0 after every step; batch 50 (full batches); train/traditional + cnn + mix
shuffled together; patches resized without antialiasing (the E-LPIPS loader).

Then (unless ``--no-eval``) the trained weights and the shipped ones (``weights/elpips/*.npy``) are scored on the
2AFC validation sets with the E-LPIPS protocol (train_test_2afc): the ensemble with every transformation and the
network dropout (no downscaling at 64 px), ``--eval-samples`` (50) draws per triplet shared by p0 and p1; the
``lpips_*`` configurations are deterministic.

Outputs in ``--out/<name>/`` (default ``results/elpips_train/<name>/``): ``<name>-latest.npy`` (the E-LPIPS
weight format: ``percept dist -m elpips-vgg -O lin_weights=...`` or the reference load it), ``history.csv``,
``steps.csv``, ``checkpoints/last.pt``, ``weights.csv`` (per layer: channels, sum and zeros of the trained and
the shipped weights), ``scores.csv`` (model, subset, 2AFC score in [0, 1]; "human" is the ceiling),
``run.json`` (flags, data, machine info). ``analysis.ipynb`` plots them.

Expected runtime: an epoch reads the 151k training triplets. E-LPIPS-VGG at 64 px on one GPU with
``--workers 8``: a few minutes per epoch (PNG decoding dominates), so ~30-60 min for 10 epochs; SqueezeNet is
faster. On 2 CPU cores an epoch takes hours (SqueezeNet) to about a day (VGG): use a GPU. The evaluation with
50 draws per triplet is ~50x the cost of one pass over the 36.4k validation triplets. ``--quick``: ~1 min.

Without BAPPS, ``--quick`` builds a SYNTHETIC folder in the BAPPS layout (asset photographs, synthetic
distortions, simulated judges) in a temporary folder and writes there; its numbers say nothing about human
perception (``run.json`` says ``"synthetic": true``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from percept.data import DatasetError, bapps
from percept.guard import RunLock, add_run_flags, driver_main
from percept.runinfo import machine_info, select_device, write_csv, write_json

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "results" / "elpips_train"
log = logging.getLogger("elpips_train")
QUICK = dict(metric="elpips_squeeze_maxpool", nepoch=1, nepoch_decay=1, batch_size=8, warmup=1, max_batches=3,
             limit=24, eval_samples=2, eval_limit=8)



def build_parser() -> argparse.ArgumentParser:
    from percept.elpips_train import METRICS

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--metric", default="elpips_vgg",
                   help=f"network and configuration: {', '.join(METRICS)} (dashes accepted; default elpips_vgg)")
    p.add_argument("--name", default=None, help="run name: output subfolder and <name>-latest.npy (default: --metric)")
    p.add_argument("--data", type=Path, default=None, help=f"BAPPS root (default {bapps.default_root()})")
    p.add_argument("--transforms", default="none",
                   help="random transformations while training: none (the reference), all, or a comma list of "
                        "scale,shift,flip,transpose,permute,color")
    p.add_argument("--net-dropout", action="store_true", help="the ensemble's dropout inside the network while training")
    p.add_argument("--use-dropout", action="store_true",
                   help="dropout 0.5 on the squared feature differences (the reference's --use_dropout)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--beta1", type=float, default=0.9, help="Adam beta1 (default 0.9, the reference; LPIPS used 0.5)")
    p.add_argument("--nepoch", type=int, default=5, help="epochs at the base learning rate")
    p.add_argument("--nepoch-decay", type=int, default=5, help="epochs of linear decay")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--warmup", type=int, default=50, help="no update for WARMUP steps, then a linear ramp over WARMUP")
    p.add_argument("--train-subsets", nargs="+", default=list(bapps.SUBSETS_2AFC["train"]))
    p.add_argument("--resize", default="bilinear-noaa", choices=bapps.RESIZE_MODES,
                   help="patch resampling (default: the E-LPIPS loader's non-antialiased bilinear)")
    p.add_argument("--limit", type=int, default=None, help="use the first N triplets of each training subset")
    p.add_argument("--backbone-weights", default="imagenet", help="trunk: imagenet (default), random or a checkpoint")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default min(4, CPUs / 2))")
    add_run_flags(p, default_out=DEFAULT_OUT.relative_to(ROOT), out_help="output folder; the run goes to OUT/<name>",
                  quick="~1 minute: SqueezeNet, 1 + 1 epochs of 3 batches of 8 (SYNTHETIC data without BAPPS)")
    p.add_argument("--resume", action="store_true", help="continue the run in OUT/<name> from its checkpoint")
    p.add_argument("--max-batches", type=int, default=None, help="stop each epoch after N batches")
    p.add_argument("--log-every", type=int, default=10, help="steps between rows of steps.csv")
    p.add_argument("--no-eval", action="store_true", help="train only")
    p.add_argument("--eval-subsets", nargs="*", default=list(bapps.SUBSETS_2AFC["val"]))
    p.add_argument("--eval-samples", type=int, default=50, help="E-LPIPS draws per validation triplet (default 50)")
    p.add_argument("--eval-batch-size", type=int, default=50)
    p.add_argument("--eval-limit", type=int, default=None, help="score the first N triplets of each val subset")
    return p


def _data_root(args) -> tuple[Path, bool, Path | None]:
    root = args.data if args.data is not None else bapps.default_root()
    if (bapps.resolve_root(root) / "2afc" / "train").is_dir():
        return bapps.resolve_root(root), bapps.is_synthetic(root), None
    if not args.quick:
        raise DatasetError(f"no BAPPS 2AFC training data under {root}; {bapps.FETCH_HINT} (or try --quick)")
    tmp = Path(tempfile.mkdtemp(prefix="percept-elpips-train-synthetic-"))
    bapps.make_synthetic_bapps(tmp / "bapps", n_val=QUICK["eval_limit"], n_train=QUICK["limit"], n_jnd=1,
                               jnd_subsets=(), seed=args.seed)
    return tmp / "bapps", True, tmp


def _layer_table(trained: dict, shipped: dict | None) -> list[dict]:
    rows = []
    for k in range(len(trained)):
        key = f"lin{k}.model.1.weight"
        w = np.asarray(trained[key]).reshape(-1)
        row = {"layer": k, "channels": w.size, "trained_sum": float(w.sum()), "trained_zeros": int((w == 0).sum())}
        if shipped is not None and key in shipped:
            s = np.asarray(shipped[key]).reshape(-1)
            row.update(shipped_sum=float(s.sum()), shipped_zeros=int((s == 0).sum()))
        rows.append(row)
    return rows


def _write_rows(path: Path, rows: list[dict]) -> None:
    if rows:
        write_csv(path, rows, float_format=".6g")


def _evaluate(args, config, weights: Path, shipped: Path, root: Path, device) -> tuple[list[dict], dict]:
    """2AFC scores of the trained and the shipped weights under the E-LPIPS protocol."""
    from percept.evaluate import HarnessMetric, evaluate_bapps
    from percept.metrics.elpips import ELPIPS

    def build(lin_weights: Path) -> HarnessMetric:
        options = dict(net=config.net, config=config.config, reduction="none", lin_weights=str(lin_weights),
                       backbone_weights=config.backbone_weights, n=args.eval_samples)
        if config.config == "lpips":
            options["deterministic"] = True
        return HarnessMetric(ELPIPS(**options), f"elpips-{config.net}", "rgb").to(device).eval()

    metrics = {(config.name, "trained"): build(weights), (f"{config.metric} (shipped)", "shipped"): build(shipped)}
    torch.manual_seed(args.seed)
    result = evaluate_bapps(metrics, root, subsets=args.eval_subsets, jnd_subsets=(), batch_size=args.eval_batch_size,
                            workers=args.workers, resize=args.resize, limit=args.eval_limit, device=device,
                            progress=not args.no_progress)
    rows = [{"model": r["metric"], "weights": r["colorspace"], "subset": r["subset"], "score": r["score"]}
            for r in result.scores]
    return rows, result.counts


def main(argv: list[str] | None = None) -> int:
    """Run the experiment; a failure is one line on stderr (``--debug``: the traceback)."""
    return driver_main(_main, argv, prog="experiments/elpips_train/run.py")


def _main(argv: list[str]) -> int:
    from percept import assets
    from percept.elpips_train import ElpipsTrainConfig, canonical_metric, train_elpips
    from percept.metrics.elpips import CONFIGS

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if args.quick:
        defaults = {a.dest: a.default for a in parser._actions}
        for key, value in QUICK.items():
            if getattr(args, key) == defaults.get(key):
                setattr(args, key, value)
        args.workers = 0
    if args.workers is None:
        args.workers = min(4, (os.cpu_count() or 2) // 2)
    try:
        metric = canonical_metric(args.metric)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for flag in ("eval_samples", "eval_batch_size", "log_every"):
        if getattr(args, flag) < 1:
            print(f"error: --{flag.replace('_', '-')} must be at least 1", file=sys.stderr)
            return 2
    config = ElpipsTrainConfig(
        metric=metric, name=args.name or metric, transforms=args.transforms, net_dropout=args.net_dropout,
        lpips_dropout=args.use_dropout, lr=args.lr, beta1=args.beta1, nepoch=args.nepoch,
        nepoch_decay=args.nepoch_decay, batch_size=args.batch_size, warmup=args.warmup,
        train_subsets=tuple(args.train_subsets), resize=args.resize, limit=args.limit, seed=args.seed,
        backbone_weights=args.backbone_weights)
    root, synthetic, tmp = _data_root(args)
    if synthetic:
        print("=" * 100 + "\nSYNTHETIC DATA: not BAPPS. Patches, distortions and judge values were generated by "
              f"software ({root});\nthe weights and scores below exercise the code and say nothing about human "
              "perception.\n" + "=" * 100)
    base = args.out or ((tmp / "results") if tmp is not None else DEFAULT_OUT)
    out = base / config.name
    with RunLock(out):
        return _run(args, config, root, synthetic, out, assets.locate(CONFIGS[(config.net, config.config)].lin_file),
                    train_elpips)


def _run(args, config, root: Path, synthetic: bool, out: Path, shipped: Path, train_elpips) -> int:
    from percept import assets

    out.mkdir(parents=True, exist_ok=True)
    if synthetic:
        bapps.mark_synthetic(out, "experiments/elpips_train/run.py on a synthetic BAPPS-layout folder")
    device = select_device(args.device)
    log.info("training %s (%s) on %s%s -> %s, device %s", config.name, config.metric, root,
             " (SYNTHETIC)" if synthetic else "", out, device)
    result = train_elpips(config, root, out, device=device, workers=args.workers, resume=args.resume,
                          max_batches=args.max_batches, log_every=args.log_every, progress=not args.no_progress)
    trained = assets.read_npy_dict(result["weights"])
    _write_rows(out / "weights.csv", _layer_table(trained, assets.read_npy_dict(shipped)))
    payload = {
        "experiment": "elpips_train",
        "synthetic": synthetic,
        "data": str(root),
        "data_note": ("SYNTHETIC BAPPS-layout folder (software-generated judges), NOT human judgements" if synthetic
                      else "BAPPS (Zhang et al. 2018), official folder layout"),
        "config": config.as_dict(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "weights": str(result["weights"]),
        "shipped_weights": str(shipped),
        "history": result["history"],
        "machine": machine_info(device),
    }
    val = bapps.resolve_root(root) / "2afc" / "val"
    if not args.no_eval and args.eval_subsets and val.is_dir():
        rows, counts = _evaluate(args, config, result["weights"], shipped, root, device)
        _write_rows(out / "scores.csv", rows)
        payload["evaluation"] = {"counts": counts, "samples": args.eval_samples,
                                 "protocol": "E-LPIPS ensemble (no downscaling at 64 px), draws shared by p0 and p1"
                                 if config.config == "elpips" else "deterministic (lpips configuration)"}
        means = {}
        for r in rows:
            means.setdefault(r["model"], []).append(r["score"])
        print("\n2AFC score (mean over subsets, x100):")
        for model, values in means.items():
            print(f"  {model:32s} {100 * sum(values) / len(values):6.2f}")
    write_json(out / "run.json", payload)
    tag = " (SYNTHETIC DATA, not BAPPS)" if synthetic else ""
    print(f"wrote {out}{tag}: {result['weights'].name}, history.csv, weights.csv"
          + (", scores.csv" if "evaluation" in payload else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
