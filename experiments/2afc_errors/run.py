"""2AFC error cases: the BAPPS triplets on which a metric disagrees most clearly with the human judges.

    make data-bapps                                           # once: BAPPS into data/bapps
    python experiments/2afc_errors/run.py                     # Watson-DFT, Deeploss-VGG, L2, SSIM in RGB -> results/2afc_errors/
    python experiments/2afc_errors/run.py --metrics watson-dft deeploss-squeeze --colorspaces rgb grey --cases 8
    python experiments/2afc_errors/run.py --quick             # ~1 min; SYNTHETIC data without BAPPS

For every metric and 2AFC validation subset the driver computes d0 = d(p0, ref) and d1 = d(p1, ref) with the
harness of ``experiments/2afc`` (:mod:`percept.evaluate`: ``metric(input=p, target=ref)``, per-image values,
64 x 64 patches, grey = BT.601 luma), and keeps the **error cases**: triplets where a majority of the humans
preferred one patch (h != 0.5, h the fraction who chose p1) and the metric strictly prefers the other. They are
ranked by how clear the humans were (|h - 0.5|, descending), then by the metric's relative margin
|d0 - d1| / (d0 + d1) (descending): the first ``--cases`` per subset are kept with their patches. The figures
(``analysis.ipynb``) show them as triplets (reference, p0, p1), framing the humans' and the metric's choices,
after Czolbe et al.'s 2AFC example figure (``dataset_example_plot.ipynb``, which frames the humans' choice).

Outputs (``--out``, default ``results/2afc_errors/``): ``summary.csv`` (metric, colorspace, subset, triplets,
2AFC score, triplets with a human majority, of which the metric contradicts), ``cases.csv`` (case, metric,
colorspace, subset, index, patch, file, judge, human_choice, metric_choice, d0, d1, human_margin, metric_margin),
``cases.npz`` (uint8 patches ``ref``, ``p0``, ``p1`` of shape (triplets, 64, 64, 3); a case's row is its ``patch``:
metrics that fail on the same triplet share it),
``distances.npz`` (d0, d1 of every triplet per metric and subset, and the judges), ``run.json``.

Without BAPPS, ``--quick`` (24 triplets per subset) or ``--synthetic N`` build a SYNTHETIC folder in the BAPPS
layout (crops of the asset photographs, synthetic distortions, simulated judges); its error cases show the
figure and say nothing about human perception (``run.json`` says ``"synthetic": true``, the folder carries
``SYNTHETIC_NOT_BAPPS.txt``, the figures say so).

Runtime: that of ``experiments/2afc/run.py`` for the same metrics (the VGG-16 metrics need a GPU for the full
36.4k triplets); selecting and saving the cases takes seconds.
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

from percept import registry
from percept.data import DatasetError, bapps
from percept.guard import RunLock, add_run_flags, atomic_output, driver_main
from percept.runinfo import machine_info, select_device, write_csv, write_json

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "results" / "2afc_errors"
DEFAULT_METRICS = ["watson-dft", "deeploss-vgg", "l2", "ssim"]
QUICK_METRICS = ["watson-dft", "deeploss-squeeze", "l2"]
QUICK_TRIPLETS = 24
log = logging.getLogger("2afc_errors")



def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=None, help=f"BAPPS root (default {bapps.default_root()})")
    p.add_argument("--subsets", nargs="+", default=list(bapps.SUBSETS_2AFC["val"]), help="2AFC val subsets")
    p.add_argument("--metrics", nargs="+", default=None,
                   help=f"registry names (default {' '.join(DEFAULT_METRICS)}; --quick: {' '.join(QUICK_METRICS)})")
    p.add_argument("--colorspaces", nargs="+", default=["rgb"], choices=["rgb", "grey"])
    p.add_argument("--cases", type=int, default=4, help="error cases kept per metric, colour space and subset")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--resize", default="pil-bilinear", choices=bapps.RESIZE_MODES)
    p.add_argument("--limit", type=int, default=None, help="use the first N triplets of each subset")
    p.add_argument("--synthetic", type=int, default=None, metavar="N",
                   help="without BAPPS: build a SYNTHETIC BAPPS-layout folder of N triplets per subset and use it")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default min(4, CPUs / 2))")
    add_run_flags(p, default_out=DEFAULT_OUT.relative_to(ROOT),
                  quick=f"{QUICK_TRIPLETS} triplets per subset, metrics {' '.join(QUICK_METRICS)} (SYNTHETIC without BAPPS)")
    return p


def _data_root(args) -> tuple[Path, bool, Path | None]:
    root = args.data if args.data is not None else bapps.default_root()
    if (bapps.resolve_root(root) / "2afc" / "val").is_dir():
        return bapps.resolve_root(root), bapps.is_synthetic(root), None
    n = args.synthetic if args.synthetic is not None else (QUICK_TRIPLETS if args.quick else None)
    if n is None:
        raise DatasetError(f"no BAPPS 2AFC data under {root}; {bapps.FETCH_HINT} (or --quick / --synthetic N: "
                           "synthetic data)")
    tmp = Path(tempfile.mkdtemp(prefix="percept-2afc-errors-synthetic-"))
    bapps.make_synthetic_bapps(tmp / "bapps", n_val=n, n_train=1, n_jnd=1, val_subsets=tuple(args.subsets),
                               train_subsets=(), jnd_subsets=(), seed=args.seed)
    return tmp / "bapps", True, tmp


def error_cases(d0: np.ndarray, d1: np.ndarray, judge: np.ndarray, k: int) -> list[int]:
    """Indices of up to ``k`` triplets where the human majority (h != 0.5) and the metric's strict preference
    differ, clearest human majority first, then the largest relative metric margin; ties keep dataset order."""
    d0, d1, judge = (np.asarray(a, dtype=np.float64) for a in (d0, d1, judge))
    human = np.where(judge > 0.5, 1, 0)
    metric = np.where(d0 < d1, 0, 1)
    wrong = (judge != 0.5) & (d0 != d1) & (human != metric)
    idx = np.nonzero(wrong)[0]
    human_margin = np.abs(judge[idx] - 0.5)
    total = d0[idx] + d1[idx]
    metric_margin = np.where(total > 0, np.abs(d0[idx] - d1[idx]) / np.where(total > 0, total, 1.0), 0.0)
    order = np.lexsort((idx, -metric_margin, -human_margin))  # last key first: human margin, metric margin, index
    return [int(i) for i in idx[order][:k]]


def summary_row(name: str, cs: str, subset: str, d0, d1, judge) -> dict:
    from percept.evaluate import twoafc_score

    d0, d1, judge = (np.asarray(a, dtype=np.float64) for a in (d0, d1, judge))
    majority = judge != 0.5
    contradicts = majority & (d0 != d1) & ((judge > 0.5) != (d1 < d0))
    return {"metric": name, "colorspace": cs, "subset": subset, "triplets": int(len(judge)),
            "score": twoafc_score(d0, d1, judge), "majority": int(majority.sum()),
            "contradicts": int(contradicts.sum()),
            "contradict_rate": float(contradicts.sum() / majority.sum()) if majority.any() else float("nan")}


def _uint8(x: torch.Tensor) -> np.ndarray:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def _save_npz(path: Path, arrays: dict) -> None:
    with atomic_output(path, "wb") as f:
        np.savez_compressed(f, **arrays)


def main(argv: list[str] | None = None) -> int:
    return driver_main(_main, argv, prog="experiments/2afc_errors/run.py")


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if args.cases < 1 or args.batch_size < 1 or (args.synthetic is not None and args.synthetic < 1):
        print("error: --cases, --batch-size and --synthetic must be at least 1", file=sys.stderr)
        return 2
    if args.quick:
        args.limit = args.limit or QUICK_TRIPLETS
        args.workers = 0
    if args.workers is None:
        args.workers = min(4, (os.cpu_count() or 2) // 2)
    try:
        names = [registry.canonical_name(n) for n in (args.metrics or (QUICK_METRICS if args.quick else DEFAULT_METRICS))]
    except KeyError as err:
        print(f"error: {err.args[0]}", file=sys.stderr)
        return 2
    root, synthetic, tmp = _data_root(args)
    if synthetic:
        print("=" * 100 + "\nSYNTHETIC DATA: not BAPPS. Patches, distortions and judge values were generated by "
              f"software ({root});\nthe error cases below exercise the code and say nothing about human perception.\n"
              + "=" * 100)
    out = args.out or ((tmp / "results") if tmp is not None else DEFAULT_OUT)
    with RunLock(out):
        return _run(args, names, root, synthetic, out)


def _run(args, names: list[str], root: Path, synthetic: bool, out: Path) -> int:
    from percept.evaluate import build_metric, evaluate_bapps

    out.mkdir(parents=True, exist_ok=True)
    marker = out / bapps.SYNTHETIC_MARKER
    if synthetic:
        bapps.mark_synthetic(out, "experiments/2afc_errors/run.py on a synthetic BAPPS-layout folder")
    elif marker.exists():
        marker.unlink()
    device = select_device(args.device)
    metrics, skipped = {}, {}
    for name in names:
        for cs in args.colorspaces:
            try:
                metrics[(name, cs)] = build_metric(name, cs, device=device)
            except Exception as err:  # missing weights, a metric that cannot take 64 x 64 patches, ...
                skipped[f"{name}/{cs}"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
                log.warning("skipped %s/%s: %s", name, cs, skipped[f"{name}/{cs}"])
    if not metrics:
        raise SystemExit("error: no metric could be built here (see the warnings above)")
    torch.manual_seed(args.seed)
    result = evaluate_bapps(metrics, root, subsets=args.subsets, jnd_subsets=(), batch_size=args.batch_size,
                            workers=args.workers, resize=args.resize, limit=args.limit, device=device,
                            progress=not args.no_progress, keep_distances=True)
    summary, cases, patches, distances = [], [], {"ref": [], "p0": [], "p1": []}, {}
    datasets, stored = {}, {}  # (subset, index) -> row of the patch arrays (metrics share triplets)
    for (_, name, cs, subset), (d0, d1, judge) in result.distances.items():
        summary.append(summary_row(name, cs, subset, d0, d1, judge))
        distances[f"{name}|{cs}|{subset}|d0"] = d0
        distances[f"{name}|{cs}|{subset}|d1"] = d1
        distances[f"judge|{subset}"] = judge
        if subset not in datasets:
            datasets[subset] = bapps.TwoAFCDataset(root, "val", subset, resize=args.resize, limit=args.limit)
        data = datasets[subset]
        for i in error_cases(d0, d1, judge, args.cases):
            if (subset, i) not in stored:
                item = data[i]
                stored[(subset, i)] = len(patches["ref"])
                for part in patches:
                    patches[part].append(_uint8(item[part]))
            total = d0[i] + d1[i]
            cases.append({"case": len(cases), "metric": name, "colorspace": cs, "subset": subset, "index": i,
                          "patch": stored[(subset, i)], "file": data.files["p0"][i].stem, "judge": float(judge[i]),
                          "human_choice": "p1" if judge[i] > 0.5 else "p0", "metric_choice": "p0" if d0[i] < d1[i] else "p1",
                          "d0": float(d0[i]), "d1": float(d1[i]), "human_margin": float(abs(judge[i] - 0.5)),
                          "metric_margin": float(abs(d0[i] - d1[i]) / total) if total > 0 else 0.0})
    write_csv(out / "summary.csv", summary)
    write_csv(out / "cases.csv", cases)
    _save_npz(out / "cases.npz", {k: np.stack(v) if v else np.zeros((0, 64, 64, 3), np.uint8)
                                  for k, v in patches.items()})
    _save_npz(out / "distances.npz", distances)
    write_json(out / "run.json", {
        "experiment": "2afc_errors",
        "synthetic": synthetic,
        "data": str(root),
        "data_note": ("SYNTHETIC BAPPS-layout folder (software-generated judges), NOT human judgements" if synthetic
                      else "BAPPS (Zhang et al. 2018), official folder layout"),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "metrics": [f"{n}/{cs}" for n, cs in metrics],
        "skipped": skipped,
        "counts": result.counts,
        "selection": "human majority (h != 0.5) contradicted by a strict metric preference; ranked by |h - 0.5|, then "
                     "|d0 - d1| / (d0 + d1), both descending",
        "harness": "metric(input=p0|p1, target=ref), reduction 'none', deterministic; grey = BT.601 luma",
        "machine": machine_info(device),
    })
    for row in summary:
        print(f"  {row['metric']:18s} {row['colorspace']:4s} {row['subset']:12s} score {100 * row['score']:6.2f}  "
              f"contradicts {row['contradicts']}/{row['majority']} majorities")
    tag = " (SYNTHETIC DATA, not BAPPS)" if synthetic else ""
    print(f"wrote {out}{tag}: {len(cases)} error cases")
    return 0


if __name__ == "__main__":
    sys.exit(main())
