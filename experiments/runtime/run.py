"""Runtime and peak memory of training with each loss (Czolbe et al. 2020, spec czolbe.md §12), the peer packages
side by side, and how the cost grows with image and batch size.

    make reproduce-runtime                          # this driver, then the notebook, then --summary
    python experiments/runtime/run.py               # default protocol: about 15 min on 2 CPU cores
    python experiments/runtime/run.py --full        # the paper's 500 iterations x 3 repeats (meant for a GPU)
    python experiments/runtime/run.py --quick       # under a minute; tests and CI
    python experiments/runtime/run.py --summary     # the table from results/runtime/runtime.csv, figure paths
    python experiments/runtime/run.py --list        # every loss that can be measured
    python experiments/runtime/run.py --metrics lpips-alex,lpips.alex,torchmetrics.lpips_alex --no-scaling --update
                                                    # re-measure some rows of results/runtime/runtime.csv only

Expected runtime on 2 idle CPU cores: default about 12-15 min (dominated by the VGG-16 losses, several seconds per
iteration each), --quick about 1 min. On one recent GPU the default takes a few minutes and --full about 10-20 minutes.

Protocol (the paper's): reconstruct a batch of 128 CelebA 64x64 images (RGB, and grey with torchvision's
Grayscale weights) from ``param`` (randn) through a sigmoid with SGD (lr 1e-4); one iteration is zero_grad,
loss forward, backward, step. Each loss is built as the paper built it, through
``percept.LossProvider().get_loss_function(name, 'RGB'|'LA', reduction='sum', deterministic=False)`` (so
the Watson losses include the random shift); the other losses through ``percept.get_metric(...,
reduction='sum')``; the peers through their packages (sum of per-image distances). Every measurement runs
in a fresh process: warm-up iterations, then ``repeats`` x ``iterations`` timed iterations; the CSV has the
mean and std over repeats of the time per iteration (CUDA synchronised; the paper did not synchronise) and
the peak memory of the timed loop above the memory held right before it: on CUDA
``max_memory_allocated()`` (column cuda_peak_mib); on CPU the peak resident set size (VmHWM, reset before the
loop) minus the resident set size before it (column peak_rss_delta_mib).

Deviations from the paper, all visible in the outputs:

- Default: 20 iterations x 3 repeats after 3 warm-up iterations, and each measurement's timed loop capped
  at --budget-s (20 s) on CPU: a slow loss runs fewer iterations (at least 1 per repeat) and fewer warm-up
  iterations; the ``warmup``/``iterations`` columns say what ran. --full: 500 x 3, no cap.
- Data: the downloaded CelebA when ``data/download_celeba.py`` has run, else the 32-image offline sample,
  cropped and resized as in the paper and tiled to the batch (machine.json, ``data_source``).
- Weights: ImageNet VGG-16 is not available offline; VGG backbones are then random (seed 0, the same for
  percept and the peers): timing does not depend on the values. AlexNet and SqueezeNet come from the offline
  ``*_features.pth`` assets. Each row's ``weights`` says which.
- Peers are compared with the percept metric that computes the same thing (``compares_to``): pytorch-msssim's
  SSIM with ``ssim``, torchmetrics' SSIM with ``ssim (reflect)``, the LPIPS peers with ``lpips-*``;
  ``max_abs_diff`` is the largest per-image difference on a near pair (the target and a noisy copy). The
  LPIPS peers run in RGB only (percept's grey LPIPS replicates the channel, so it costs what RGB costs).
  MS-SSIM needs at least 161 px and is listed as skipped at 64 px (``make bench`` times it at 192 px).

Scaling: L1, L2, SSIM, Watson-DCT, Watson-DFT (as above) and lpips-squeeze on RGB images of 32, 64, 128 and
256 px with batches of 1, 16 and 128, 10 iterations x 3 repeats (cap --scaling-budget-s 3 s each). On CPU
the default skips batches of more than 2^21 pixels (128 x 256^2); --full runs all of them.

Outputs (--out, default results/runtime/): runtime.csv, scaling.csv, machine.json (torch version, device,
CPU model, threads, date, git commit, data source, the weights of each metric, the protocol).
``analysis.ipynb`` draws the figures from them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from percept.profiling import run_isolated
from percept.runinfo import machine_info

if TYPE_CHECKING:  # pandas is imported where it is used: every worker process re-imports this file
    import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "results" / "runtime"

# the losses to time, their CelebA input and one measurement are shared with the benchmark harness
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_losses import CANDIDATES, base_row, celeba_batch, measure_training  # noqa: E402

#: the losses of the paper's table (LossProvider names), then percept's extras, then the peers
PAPER = ["L1", "L2", "SSIM", "Watson-DCT", "Watson-DFT", "Deeploss-VGG", "Deeploss-squeeze", "Adaptive"]
EXTRA = ["lpips-alex", "lpips-squeeze", "lpips-vgg", "elpips-vgg", "ssim", "ssim (reflect)", "ms-ssim"]
PEERS = [
    "lpips.alex", "lpips.squeeze", "lpips.vgg",
    "torchmetrics.lpips_alex", "torchmetrics.lpips_squeeze", "torchmetrics.lpips_vgg",
    "pytorch_msssim.ssim", "torchmetrics.ssim", "pytorch_msssim.ms_ssim", "torchmetrics.ms_ssim",
]  # fmt: skip
SCALING = ["L1", "L2", "SSIM", "Watson-DCT", "Watson-DFT", "lpips-squeeze"]

#: the paper's numbers (spec czolbe.md §12): seconds for 500 iterations and MiB, (RGB, LA); run A on a P100
PAPER_RUN_A = {
    "L1": ((0.22, 24.0), (0.18, 8.0)),
    "L2": ((0.19, 24.0), (0.17, 8.0)),
    "SSIM": ((3.97, 114.0), (5.14, 38.0)),
    "Watson-DCT": ((12.13, 96.0), (3.48, 35.1)),
    "Watson-DFT": ((13.03, 111.0), (3.67, 37.5)),
    "Deeploss-VGG": ((68.31, 2213.7), (68.27, 2205.7)),
    "Deeploss-squeeze": ((9.60, 545.0), (9.54, 537.2)),
}
#: run B (HEAD pickle, device not recorded), the only run with Adaptive
PAPER_RUN_B = {
    "L1": ((0.37, 24.0), (0.38, 8.0)),
    "L2": ((0.31, 24.0), (0.34, 8.0)),
    "SSIM": ((8.73, 114.0), (5.55, 38.0)),
    "Adaptive": ((8.72, 132.2), (8.56, 125.2)),
    "Watson-DCT": ((13.92, 100.0), (3.37, 35.1)),
    "Watson-DFT": ((16.16, 114.8), (4.40, 38.5)),
    "Deeploss-VGG": ((56.79, 2214.7), (56.88, 2207.7)),
    "Deeploss-squeeze": ((14.14, 546.8), (14.07, 541.3)),
}

FIGURES = ("runtime_barplot.png", "peers.png", "scaling.png")

#: defaults of the three protocols (on a GPU the default protocol drops its CPU caps: budget_s, scaling_max_pixels)
PROTOCOLS = {
    "quick": dict(iterations=2, repeats=1, warmup=1, batch=4, budget_s=0, scaling_sizes="32,64",
                  scaling_batches="1,4", scaling_iterations=2, scaling_budget_s=0, scaling_max_pixels=0),
    "default": dict(iterations=20, repeats=3, warmup=3, batch=128, budget_s=20, scaling_sizes="32,64,128,256",
                    scaling_batches="1,16,128", scaling_iterations=10, scaling_budget_s=3, scaling_max_pixels=2**21),
    "full": dict(iterations=500, repeats=3, warmup=3, batch=128, budget_s=0, scaling_sizes="32,64,128,256",
                 scaling_batches="1,16,128", scaling_iterations=500, scaling_budget_s=0, scaling_max_pixels=0),
}  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    from percept.guard import add_debug_flag

    add_debug_flag(p)
    p.add_argument("--device", default="auto", help="cpu, cuda[:i] or auto (cuda when available; default)")
    p.add_argument("--iterations", type=int, default=None, help="timed iterations per repeat (default 20; --full 500)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (default 3)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up iterations before timing (default 3)")
    p.add_argument("--batch", type=int, default=None, help="images per batch (default 128, the paper's)")
    p.add_argument("--size", type=int, default=64, help="image side in pixels (default 64, the paper's)")
    p.add_argument(
        "--metrics",
        default="all",
        help="comma-separated losses (see --list), or groups: all, paper, extra, peers (default all)",
    )
    p.add_argument("--colorspaces", default="rgb,grey", help="rgb, grey or both (default rgb,grey)")
    p.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="cap on the timed loop of one measurement, seconds (default 20 on CPU, none on GPU and "
        "with --full; 0 = none)",
    )
    p.add_argument("--scaling-metrics", default=",".join(SCALING), help="losses of the scaling sweep ('' = none)")
    p.add_argument("--scaling-sizes", default=None, help="image sides of the sweep (default 32,64,128,256)")
    p.add_argument("--scaling-batches", default=None, help="batch sizes of the sweep (default 1,16,128)")
    p.add_argument(
        "--scaling-max-pixels",
        type=float,
        default=None,
        help="skip sweep points with more pixels per batch (default 2^21 on CPU, none on GPU/--full; 0 = none)",
    )
    p.add_argument("--scaling-budget-s", type=float, default=None, help="cap per sweep point, seconds (default 3)")
    p.add_argument("--no-scaling", action="store_true", help="skip the scaling sweep")
    p.add_argument("--seed", type=int, default=0, help="seed of param and of the random shifts (default 0)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--timeout-s", type=float, default=None, help="give up on one measurement after this long")
    p.add_argument(
        "--quick",
        action="store_true",
        help="batch 4, 2 iterations x 1 repeat after 1 warm-up, sweep 32/64 px x batch 1/4: ~1 min",
    )
    p.add_argument("--full", action="store_true", help="the paper's protocol: 500 iterations x 3 repeats, no caps")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (default results/runtime)")
    p.add_argument(
        "--update",
        action="store_true",
        help="replace only the measured rows in --out's runtime.csv (keep the other rows, scaling.csv and the "
        "full run's machine info; machine.json records the partial run under 'updates')",
    )
    p.add_argument("--reason", default="", help="with --update: why these rows were re-measured (machine.json)")
    p.add_argument("--summary", action="store_true", help="print the table of --out/runtime.csv and the figures")
    p.add_argument("--markdown", action="store_true", help="with --summary: Markdown tables (for the README)")
    p.add_argument("--list", action="store_true", help="list the losses that can be measured")
    args = p.parse_args(argv)
    if args.quick and args.full:
        p.error("--quick and --full exclude each other")
    return args


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the defaults that depend on --quick/--full and on the device."""
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    cpu = torch.device(args.device).type == "cpu"
    defaults = dict(PROTOCOLS["quick" if args.quick else "full" if args.full else "default"])
    if not cpu and not args.quick:
        defaults.update(budget_s=0, scaling_max_pixels=0)  # the caps exist for CPUs only
    for k, v in defaults.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    return args


def select(spec: str) -> list[str]:
    groups = {"all": PAPER + EXTRA + PEERS, "paper": PAPER, "extra": EXTRA, "peers": PEERS}
    out: list[str] = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        names = groups.get(item.lower())
        if names is None:
            match = [k for k in CANDIDATES if k == item] or [k for k in CANDIDATES if k.lower() == item.lower()][:1]
            if not match:
                raise SystemExit(
                    f"unknown loss {item!r}; choose from: {', '.join(CANDIDATES)} (or all, paper, extra, peers)"
                )
            names = match
        out += [n for n in names if n not in out]
    return out


def _measure(key: str, colorspace: str, batch: int, size: int, args, *, iterations, repeats, warmup, budget) -> dict:
    kwargs = dict(
        colorspace=colorspace,
        batch=batch,
        size=size,
        device=args.device,
        warmup=warmup,
        iterations=iterations,
        repeats=repeats,
        budget_s=budget or None,
        seed=args.seed,
        threads=args.threads,
        compare=CANDIDATES[key].group == "peer",
    )
    t0 = time.perf_counter()
    try:
        row = run_isolated(measure_training, key, timeout=args.timeout_s, **kwargs)
    except RuntimeError as err:  # the worker crashed or timed out
        row = base_row(key, colorspace, batch, size, args.device) | {"status": "failed", "note": str(err)[:400]}
    row["wall_s"] = time.perf_counter() - t0  # the whole measurement: process, build, warm-up, timing, checks
    return row


def _memory_columns(df: pd.DataFrame) -> pd.DataFrame:
    """peak_mib -> peak_rss_delta_mib (CPU) or cuda_peak_mib (CUDA), so the column name says what it is."""
    for col in ("peak_mib", "mem_method"):
        if col not in df:
            df[col] = None
    df["peak_rss_delta_mib"] = df.peak_mib.where(df.mem_method == "peak_rss_delta")
    df["cuda_peak_mib"] = df.peak_mib.where(df.mem_method == "cuda_max_memory_allocated")
    return df.drop(columns=["peak_mib", "mem_method"])


RUNTIME_COLUMNS = [
    "metric", "group", "colorspace", "status", "ms_per_iter_mean", "ms_per_iter_std", "s_per_500_iter",
    "ratio_to_l2", "images_per_s", "peak_rss_delta_mib", "cuda_peak_mib", "compares_to", "ours_over_peer_time",
    "max_abs_diff", "warmup", "iterations", "repeats", "batch", "height", "width", "device", "threads", "wall_s",
    "weights", "implementation", "note",
]  # fmt: skip
SCALING_COLUMNS = [
    "metric", "colorspace", "batch", "size", "pixels_per_batch", "status", "ms_per_iter_mean", "ms_per_iter_std",
    "ms_per_image", "peak_rss_delta_mib", "cuda_peak_mib", "warmup", "iterations", "repeats", "device", "threads",
    "wall_s", "weights", "note",
]  # fmt: skip


def run_runtime(
    args, keys: list[str], colorspaces: list[str], partial: Path | None = None
) -> tuple[pd.DataFrame, str | None]:
    """Measure each (loss, colour space); ``partial``: a CSV rewritten after every row (a run stopped by a
    time limit keeps what it measured)."""
    import pandas as pd

    jobs = []
    for key in keys:
        for cs in colorspaces:
            if cs == "grey" and not CANDIDATES[key].grey:
                continue  # LPIPS peers take RGB; their grey cost equals their RGB cost
            jobs.append((key, cs))
    rows, source = [], None
    bar = tqdm(jobs, desc="runtime", unit="loss")
    for key, cs in bar:
        bar.set_postfix_str(f"{key} {cs}")
        row = _measure(
            key,
            cs,
            args.batch,
            args.size,
            args,
            iterations=args.iterations,
            repeats=args.repeats,
            warmup=args.warmup,
            budget=args.budget_s,
        )
        source = source or row.get("data_source")
        rows.append(row)
        if partial is not None:
            pd.DataFrame(rows).to_csv(partial, index=False)
    df = _memory_columns(pd.DataFrame(rows))
    for col in RUNTIME_COLUMNS:
        if col not in df:
            df[col] = None
    return derived_columns(df)[RUNTIME_COLUMNS], source


def derived_columns(df: pd.DataFrame) -> pd.DataFrame:
    """s_per_500_iter, ratio_to_l2 (against the L2 row of the same colour space) and ours_over_peer_time."""
    df = df.copy()
    df["s_per_500_iter"] = df.ms_per_iter_mean * 0.5
    ms = {(r.metric, r.colorspace): r.ms_per_iter_mean for r in df.itertuples()}
    l2 = {cs: ms.get(("L2", cs), ms.get(("L2 (torch)", cs))) for cs in set(df.colorspace)}
    df["ratio_to_l2"] = [
        r.ms_per_iter_mean / l2[r.colorspace] if l2.get(r.colorspace) else math.nan for r in df.itertuples()
    ]
    df["ours_over_peer_time"] = [
        ms.get((r.compares_to, r.colorspace), math.nan) / r.ms_per_iter_mean if r.group == "peer" else math.nan
        for r in df.itertuples()
    ]
    return df


def merge_update(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """``old`` with its (metric, colorspace) rows replaced by those of ``new`` in place (new keys appended),
    the derived columns recomputed over the merged table."""
    import pandas as pd

    fresh = {(r.metric, r.colorspace): i for i, r in enumerate(new.itertuples())}
    rows, used = [], set()
    for _, row in old.iterrows():
        key = (row.metric, row.colorspace)
        if key in fresh:
            rows.append(new.iloc[fresh[key]])
            used.add(key)
        else:
            rows.append(row)
    rows += [new.iloc[i] for key, i in fresh.items() if key not in used]
    merged = pd.DataFrame(rows).reset_index(drop=True)
    return derived_columns(merged)[RUNTIME_COLUMNS]


def run_scaling(args) -> pd.DataFrame:
    import pandas as pd

    keys = select(args.scaling_metrics) if args.scaling_metrics else []
    sizes = [int(s) for s in str(args.scaling_sizes).split(",") if s]
    batches = [int(b) for b in str(args.scaling_batches).split(",") if b]
    jobs = [(k, s, b) for k in keys for s in sizes for b in batches]
    rows = []
    bar = tqdm(jobs, desc="scaling", unit="point")
    for key, size, batch in bar:
        bar.set_postfix_str(f"{key} {batch}x{size}px")
        pixels = batch * size * size
        if args.scaling_max_pixels and pixels > args.scaling_max_pixels:
            row = {
                "metric": key,
                "colorspace": "rgb",
                "batch": batch,
                "height": size,
                "status": "skipped",
                "note": f"{pixels:,} pixels per batch > {int(args.scaling_max_pixels):,}: too slow for the "
                "default CPU protocol (run with --full)",
                "device": args.device,
            }
        else:
            row = _measure(
                key,
                "rgb",
                batch,
                size,
                args,
                iterations=args.scaling_iterations,
                repeats=args.repeats,
                warmup=min(args.warmup, 2),
                budget=args.scaling_budget_s,
            )
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=SCALING_COLUMNS)
    df = _memory_columns(df).rename(columns={"height": "size"})
    for col in SCALING_COLUMNS:
        if col not in df:
            df[col] = None
    df["pixels_per_batch"] = df.batch * df["size"] ** 2
    df["ms_per_image"] = df.ms_per_iter_mean / df.batch
    return df[SCALING_COLUMNS]


def protocol(args) -> dict:
    keys = (
        "device",
        "iterations",
        "repeats",
        "warmup",
        "batch",
        "size",
        "metrics",
        "colorspaces",
        "budget_s",
        "scaling_metrics",
        "scaling_sizes",
        "scaling_batches",
        "scaling_max_pixels",
        "scaling_budget_s",
        "scaling_iterations",
        "seed",
        "threads",
        "quick",
        "full",
    )
    return {k: getattr(args, k) for k in keys}


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    args = parse_args(argv)
    out = Path(args.out)
    if args.list:
        for key, cand in CANDIDATES.items():
            print(f"{key:26s} {cand.group:8s} {cand.implementation}")
        return 0
    if args.summary:
        return summary(out, markdown=args.markdown)
    args = resolve(args)
    keys = select(args.metrics)
    colorspaces = [c.strip() for c in args.colorspaces.split(",") if c.strip()]
    bad = [c for c in colorspaces if c not in ("rgb", "grey")]
    if bad:
        raise SystemExit(f"unknown colour space(s) {bad}: use rgb, grey")
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info(args.device, threads=args.threads)
    print(
        f"runtime experiment on {info['device_name']} ({args.device}), torch {info['torch']}, "
        f"{info['torch_threads']} threads; {args.iterations} iterations x {args.repeats} repeats after "
        f"{args.warmup} warm-up, batch {args.batch}x{args.size}px"
        + (f", cap {args.budget_s:g} s" if args.budget_s else "")
    )
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    partial = out / "runtime.partial.csv"
    runtime, source = run_runtime(args, keys, colorspaces, partial=partial)
    if args.update:
        partial.unlink(missing_ok=True)
        return _write_update(out, runtime, info, args, t0)
    runtime.to_csv(out / "runtime.csv", index=False)
    partial.unlink(missing_ok=True)
    scaling = pd.DataFrame(columns=SCALING_COLUMNS) if args.no_scaling else run_scaling(args)
    scaling.to_csv(out / "scaling.csv", index=False)
    info["data_source"] = source or celeba_batch(1, args.size)[1]
    info["weights"] = {
        f"{r.metric} [{r.colorspace}]": r.weights for r in runtime.itertuples() if isinstance(r.weights, str)
    }
    info["protocol"] = protocol(args)
    info["wall_s"] = round(time.time() - t0, 1)
    (out / "machine.json").write_text(json.dumps(info, indent=2) + "\n")
    not_ok = runtime[runtime.status != "ok"]
    for r in not_ok.itertuples():
        print(f"  {r.status}: {r.metric} [{r.colorspace}]: {r.note}")
    print(f"wrote {out / 'runtime.csv'}, {out / 'scaling.csv'} and {out / 'machine.json'} in {info['wall_s']:.0f} s")
    return 0


def _write_update(out: Path, runtime: pd.DataFrame, info: dict, args, t0: float) -> int:
    """--update: merge the measured rows into the committed runtime.csv and record the partial run."""
    import pandas as pd

    path = out / "runtime.csv"
    if not path.is_file() or not (out / "machine.json").is_file():
        raise SystemExit(f"--update needs an existing {path} and machine.json (run without --update first)")
    merged = merge_update(pd.read_csv(path), runtime)
    merged.to_csv(path, index=False)
    full = json.loads((out / "machine.json").read_text())
    rows = [f"{r.metric} [{r.colorspace}]" for r in runtime.itertuples()]
    full.setdefault("weights", {}).update(
        {f"{r.metric} [{r.colorspace}]": r.weights for r in runtime.itertuples() if isinstance(r.weights, str)}
    )
    record = {k: info.get(k) for k in ("date", "git_commit", "torch", "torchvision", "device", "torch_threads")}
    record.update(rows=rows, reason=args.reason, protocol=protocol(args), wall_s=round(time.time() - t0, 1))
    record["load_average"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    full.setdefault("updates", []).append(record)
    (out / "machine.json").write_text(json.dumps(full, indent=2) + "\n")
    print(f"updated {len(rows)} rows of {path} ({', '.join(rows)}); machine.json records the partial run")
    return 0


# ------------------------------------------------------------------------------------------------ summary
def _fmt(v, spec: str) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _table(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]

    def fmt(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def summary(out: Path, markdown: bool = False) -> int:
    import pandas as pd

    path = out / "runtime.csv"
    if not path.is_file():
        print(f"no results at {path}: run `python experiments/runtime/run.py` (or make reproduce-runtime) first")
        return 1
    df = pd.read_csv(path)
    info = json.loads((out / "machine.json").read_text()) if (out / "machine.json").is_file() else {}
    mem_col = "cuda_peak_mib" if df.cuda_peak_mib.notna().any() else "peak_rss_delta_mib"
    mem_name = "CUDA peak MiB" if mem_col == "cuda_peak_mib" else "peak RSS delta MiB"
    proto = info.get("protocol", {})
    print(
        f"Runtime per training iteration (batch {proto.get('batch', '?')}x{proto.get('size', '?')}px), "
        f"{info.get('device_name', '?')} ({info.get('device', '?')}), torch {info.get('torch', '?')}, "
        f"{info.get('torch_threads', '?')} threads, {info.get('date', '?')}, commit {info.get('git_commit', '?')}"
    )
    print(f"data: {info.get('data_source', '?')}\n")
    ok = df[df.status == "ok"]
    cell = {(r.metric, r.colorspace): r for r in ok.itertuples()}
    header = [
        "loss",
        "RGB ms/iter",
        f"RGB {mem_name}",
        "grey ms/iter",
        f"grey {mem_name}",
        "RGB x L2",
        "paper ms/iter RGB / LA (P100)",
        "paper MiB RGB / LA",
    ]
    rows = []
    for metric in dict.fromkeys(df[df.group != "peer"].metric):
        rgb, grey = cell.get((metric, "rgb")), cell.get((metric, "grey"))
        if rgb is None and grey is None:
            continue

        def t(r):
            return "" if r is None else f"{r.ms_per_iter_mean:.1f} ± {_fmt(r.ms_per_iter_std, '.1f') or '-'}"

        paper = PAPER_RUN_A.get(metric) or PAPER_RUN_B.get(metric)
        mark = "" if metric in PAPER_RUN_A or paper is None else " (run B)"
        rows.append(
            [
                metric,
                t(rgb),
                "" if rgb is None else _fmt(getattr(rgb, mem_col), ".0f"),
                t(grey),
                "" if grey is None else _fmt(getattr(grey, mem_col), ".0f"),
                "" if rgb is None else _fmt(rgb.ratio_to_l2, ".1f"),
                "" if paper is None else f"{paper[0][0] * 2:.1f} / {paper[1][0] * 2:.1f}{mark}",
                "" if paper is None else f"{paper[0][1]:.0f} / {paper[1][1]:.0f}",
            ]
        )
    print(_table(header, rows, markdown))
    peers = ok[ok.group == "peer"]
    if len(peers):
        print("\nPeers on the same inputs (ours/peer < 1: percept is faster; max |diff|: per-image values)\n")
        rows = [
            [
                r.metric,
                r.colorspace,
                f"{r.ms_per_iter_mean:.1f}",
                str(r.compares_to),
                _fmt(cell[(r.compares_to, r.colorspace)].ms_per_iter_mean, ".1f")
                if (r.compares_to, r.colorspace) in cell
                else "",
                _fmt(r.ours_over_peer_time, ".2f"),
                _fmt(r.max_abs_diff, ".1e"),
                _fmt(getattr(r, mem_col), ".0f"),
            ]
            for r in peers.itertuples()
        ]
        print(
            _table(
                ["peer", "colour", "peer ms/iter", "percept", "percept ms/iter", "ours/peer", "max |diff|", mem_name],
                rows,
                markdown,
            )
        )
    skipped = df[df.status != "ok"]
    if len(skipped):
        print("\nNot measured:")
        for r in skipped.itertuples():
            print(f"  {r.metric} [{r.colorspace}] {r.status}: {r.note}")
    random = sorted({r.metric for r in df.itertuples() if isinstance(r.weights, str) and "random" in r.weights})
    if random:
        print(
            f"\nRandom backbone weights (ImageNet weights not on this machine; timing does not depend on them): "
            f"{', '.join(random)}"
        )
    print(
        f"\nIterations: {proto.get('iterations', '?')} x {proto.get('repeats', '?')} repeats after "
        f"{proto.get('warmup', '?')} warm-up"
        + (
            f", timed loop capped at {proto['budget_s']:g} s per loss (see the iterations column of runtime.csv)"
            if proto.get("budget_s")
            else ""
        )
    )
    print("\nFigures:")
    for name in FIGURES:
        fig = out.resolve() / name
        fig = fig.relative_to(Path.cwd()) if fig.is_relative_to(Path.cwd()) else fig
        print(
            f"  {fig}"
            if fig.is_file()
            else f"  {fig} (not drawn yet: python -m percept.notebooks experiments/runtime/analysis.ipynb)"
        )
    return 0


if __name__ == "__main__":
    from percept.guard import driver_main

    sys.exit(driver_main(main, prog="experiments/runtime/run.py"))
