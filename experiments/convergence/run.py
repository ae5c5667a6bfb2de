"""Convergence speed of each loss: fit 50 MNIST digits from noise (spec czolbe.md §13).

How fast does each loss drive an optimisation to a good result, per iteration and per second? A batch of
50 MNIST test digits (1x32x32, grey) is the target; the parameters start as ``randn`` and the image is
``sigmoid(params)``; Adam minimises the sum of the per-sample losses (``reduction='none'``). Every
iteration records each sample's metric loss and pixel L2, normalised by their iteration-0 values, and the
optimisation's wall-clock time.

    python experiments/convergence/run.py             # default: 2,000 iterations per loss (~10 min on 2 CPU cores)
    python experiments/convergence/run.py --full      # the original protocol: 100,000 iterations at the paper's
                                                      # learning rates (hours per loss on a CPU: use a GPU)
    python experiments/convergence/run.py --quick     # 200 iterations, about a minute (tests, CI)
    python experiments/convergence/run.py --losses l2,watson-dft --iterations 500 --device cuda

Learning rates (Adam) are the paper's for 100,000 iterations: 1e-4 for L2, SSIM and Deeploss, 1e-3 for
Watson-DFT; our choices for the others: 1e-3 for Watson-DCT (the same model family as Watson-DFT), 1e-4
for Adaptive and LPIPS (pixel-statistics and deep losses, as L2 and Deeploss). A shorter run multiplies
every learning rate by ``--lr-scale`` (default ``min(50, 100000 / iterations)``: x50 at 2,000 iterations),
so the parameters can travel as far as in the paper's run; Adam's step is about ``lr`` per iteration
whatever the loss's scale. ``--full`` uses the paper's rates unscaled.

Losses are built as in the VAE experiments (``percept.get_metric(..., style="paper")``, the registry's paper options):
grey colorspace, the original LossProvider's defaults (Watson: random shifts of up to 8 px and luminance
masking pooled over the batch; Adaptive: ``pretrained=False``, as the VAEs used; SSIM: zero padding).
Metrics whose value on identical images is not 0 (Adaptive is a negative log-likelihood; Watson has a
small floor) are normalised as ``(d_t - d_floor) / (d_0 - d_floor)`` with ``d_floor`` = d(target, target)
per sample; for the others this is the spec's ``d_t / d_0``.

Writes ``results/convergence/`` (``--out``):
    curves.csv          per loss and recorded iteration: seconds, mean/std over the 50 samples of the normalised
                        metric loss and pixel L2, the std of their logs, and trailing-window smoothed means
    summary.csv         per loss: learning rate, iterations/s, iterations and seconds to reach 50 % / 10 % / 1 %
                        of the initial pixel L2 and metric loss, final values
    machine.json        machine info and the run's settings
    reconstructions.npz final reconstructions of the first 10 digits per loss (uint8), for the notebook
    reconstructions.png quick-look grid: targets, then one row per loss
``analysis.ipynb`` draws the spec's plots from these files.

Expected runtime (default, 2 busy CPU cores): L2 ~2 s, SSIM ~10 s, Watson-DCT/DFT and Adaptive ~15-25 s,
Deeploss-/LPIPS-SqueezeNet ~3 min each. The original's tqdm times on an unknown GPU for 100,000
iterations: L2 1:30, SSIM 13:07, Watson-fft 11:09, Deeploss-vgg 2:07:30.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import math
import os
import shlex
import struct
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from percept import registry
from percept.runinfo import load_average, machine_info

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "results" / "convergence"

LOSSES = ["l2", "ssim", "watson-dft", "watson-dct", "adaptive", "deeploss-squeeze", "lpips-squeeze"]
#: Adam learning rates for the paper's 100,000 iterations: the registry records' ``lr`` (spec §13; watson-dct,
#: adaptive, lpips: our choice)
PAPER_LR = {name: rec.lr for name, rec in registry.METRICS.items() if rec.lr is not None}
PAPER_ITERATIONS = 100_000
DEFAULT_ITERATIONS = 2_000
QUICK_ITERATIONS = 200
MAX_LR_SCALE = 50.0
THRESHOLDS = (0.5, 0.1, 0.01)
N_SHOWN = 10  # digits in the reconstruction figure
MNIST_TEST_IMAGES = "data/mnist/t10k-images-idx3-ubyte.gz"


# --------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------


def read_idx_images(path: Path) -> torch.Tensor:
    """A (gzipped) IDX image file -> uint8 tensor (N, H, W). Small stand-in for ``percept.data.mnist.read_idx``."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 16 or raw[:3] != b"\x00\x00\x08" or raw[3] != 3:
        raise ValueError(f"{path}: not a uint8 IDX image file (bad header)")
    n, h, w = struct.unpack(">3I", raw[4:16])
    if len(raw) != 16 + n * h * w:
        raise ValueError(f"{path}: {len(raw)} bytes, header {n}x{h}x{w} needs {16 + n * h * w}: truncated or corrupt")
    return torch.frombuffer(bytearray(raw[16:]), dtype=torch.uint8).reshape(n, h, w)


def _mnist_test_file() -> Path:
    """The MNIST test images: the asset folder (checksummed), else a downloaded copy under the data root."""
    from percept.assets import MissingAssetError, locate

    try:
        return locate(MNIST_TEST_IMAGES)
    except MissingAssetError as err:
        candidates = []
        try:
            from percept.data import data_root

            base = data_root()
            for folder in (base, base / "MNIST" / "raw", base / "mnist"):
                candidates += [folder / "t10k-images-idx3-ubyte.gz", folder / "t10k-images-idx3-ubyte"]
        except ImportError:
            pass
        for path in candidates:
            if path.is_file():
                return path
        raise SystemExit(f"convergence: no MNIST test set ({err}); run `python data/download_mnist.py`") from err


def load_digits(n: int, first: int = 0) -> tuple[torch.Tensor, str]:
    """MNIST test digits ``first .. first + n - 1`` as (n, 1, 32, 32) floats in [0, 1] (28x28 zero-padded by 2)."""
    path = _mnist_test_file()
    try:
        from percept.data.mnist import read_idx
    except ImportError:
        read_idx = read_idx_images
    images = read_idx(path)
    if first + n > len(images):
        raise SystemExit(f"convergence: asked for digits {first}..{first + n - 1}, the test set has {len(images)}")
    digits = F.pad(images[first : first + n].float().div(255.0).unsqueeze(1), (2, 2, 2, 2))
    return digits, f"MNIST test digits {first}-{first + n - 1} from {path}"


# --------------------------------------------------------------------------------------------------
# losses
# --------------------------------------------------------------------------------------------------


def build_loss(name: str, *, image_shape, deterministic: bool, style: str, device) -> torch.nn.Module:
    """Registry metric ``name``, grey, ``reduction='none'``, frozen, built as the VAE experiments build it
    (``style="paper"``: the record's paper options, e.g. Adaptive untrained at the images' size)."""
    options = {"colorspace": "grey", "reduction": "none"}
    if registry.takes(name, "deterministic"):  # --deterministic: the metric's random shifts off, where it has some
        options["deterministic"] = deterministic
    return registry.get_metric(name, style=style, image_shape=tuple(image_shape), device=device, **options)


def _seed_metric(metric: torch.nn.Module, seed: int, device) -> None:
    """Give every module with a ``generator`` attribute (Watson's random shifts) a seeded generator."""
    for module in metric.modules():
        if hasattr(module, "generator"):
            module.generator = torch.Generator(device=device).manual_seed(seed)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _learning_rate(name: str, args) -> float:
    if name in args.lr:
        return args.lr[name]
    if name not in PAPER_LR:
        raise SystemExit(f"convergence: no learning rate known for {name!r}; give one with --lr {name}=VALUE")
    return PAPER_LR[name] * args.lr_scale


def optimise(name: str, target: torch.Tensor, init: torch.Tensor, args, device: torch.device) -> dict:
    """Run Adam on ``sigmoid(params)`` against ``target`` with loss ``name``; return per-iteration arrays."""
    metric = build_loss(name, image_shape=target.shape[1:], deterministic=args.deterministic, style=args.metric_style,
                        device=device)
    _seed_metric(metric, args.seed, device)
    torch.manual_seed(args.seed)
    lr = _learning_rate(name, args)
    params = init.clone().to(device).requires_grad_(True)
    optimiser = torch.optim.Adam([params], lr=lr)
    n, iters = target.shape[0], args.iterations
    with torch.no_grad():
        floor = metric(target, target).detach().reshape(n).double().cpu()
    metric_values = np.empty((iters + 1, n), dtype=np.float64)
    l2_values = np.empty((iters + 1, n), dtype=np.float64)
    seconds = np.zeros(iters + 1, dtype=np.float64)
    elapsed = 0.0
    bar = tqdm(range(iters + 1), desc=f"{name:>16s}", leave=True, mininterval=1.0, disable=args.no_progress)
    for it in bar:
        seconds[it] = elapsed  # optimisation time spent to reach the parameters of iteration ``it``
        _sync(device)
        start = time.perf_counter()
        image = torch.sigmoid(params)
        per_sample = metric(image, target).reshape(n)
        if it < iters:  # the last pass only measures the final parameters
            optimiser.zero_grad(set_to_none=True)
            per_sample.sum().backward()
            optimiser.step()
            _sync(device)
            elapsed += time.perf_counter() - start
        with torch.no_grad():
            metric_values[it] = per_sample.detach().double().cpu().numpy()
            l2_values[it] = (image.detach() - target).pow(2).mean(dim=(1, 2, 3)).double().cpu().numpy()
        if it and it % max(1, iters // 20) == 0:
            bar.set_postfix_str(f"L2 {l2_values[it].mean() / l2_values[0].mean():.3g}", refresh=False)
    with torch.no_grad():
        final = torch.sigmoid(params).detach().cpu()
    floor_np = floor.numpy()
    return {
        "name": name,
        "lr": lr,
        "metric": metric_values,
        "metric_floor": floor_np,
        "l2": l2_values,
        "seconds": seconds,
        "total_seconds": elapsed,
        "final": final,
    }


# --------------------------------------------------------------------------------------------------
# statistics and outputs
# --------------------------------------------------------------------------------------------------


def normalise(values: np.ndarray, floor: np.ndarray | float = 0.0) -> np.ndarray:
    """(iterations, samples) -> each sample's ``(v_t - floor) / (v_0 - floor)``; samples with v_0 == floor give NaN."""
    base = values[0] - floor
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.abs(base) > 0, (values - floor) / base, np.nan)


def trailing_mean(x: np.ndarray, window: int) -> np.ndarray:
    """Mean over the trailing ``window`` entries (fewer at the start), ignoring NaN."""
    if window <= 1:
        return x.copy()
    ok = np.isfinite(x)
    csum = np.concatenate([[0.0], np.cumsum(np.where(ok, x, 0.0))])
    ccount = np.concatenate([[0], np.cumsum(ok)])
    idx = np.arange(1, len(x) + 1)
    lo = np.maximum(0, idx - window)
    count = ccount[idx] - ccount[lo]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(count > 0, (csum[idx] - csum[lo]) / np.maximum(count, 1), np.nan)


def _stats(normed: np.ndarray) -> dict[str, np.ndarray]:
    with np.errstate(invalid="ignore", divide="ignore"):
        logs = np.log(np.where(normed > 0, normed, np.nan))
        return {
            "mean": np.nanmean(normed, axis=1),
            "std": np.nanstd(normed, axis=1),
            "logstd": np.nanstd(logs, axis=1),
        }


def record_iterations(iters: int, every: int) -> np.ndarray:
    """Iterations written to curves.csv: the first 50, then every ``every``-th, and the last."""
    head = np.arange(min(iters + 1, 50))
    tail = np.arange(0, iters + 1, max(1, every))
    return np.unique(np.concatenate([head, tail, [iters]]))


def first_reaching(curve: np.ndarray, threshold: float) -> int | None:
    """First index where ``curve <= threshold``, or None."""
    hits = np.nonzero(curve <= threshold)[0]
    return int(hits[0]) if len(hits) else None


def curves_rows(run: dict, args) -> tuple[list[dict], dict]:
    metric_norm = normalise(run["metric"], run["metric_floor"])
    l2_norm = normalise(run["l2"])
    m, q = _stats(metric_norm), _stats(l2_norm)
    window = args.smooth
    m_smooth, q_smooth = trailing_mean(m["mean"], window), trailing_mean(q["mean"], window)
    m_logstd_s, q_logstd_s = trailing_mean(m["logstd"], window), trailing_mean(q["logstd"], window)
    rows = []
    for it in record_iterations(args.iterations, args.record_every):
        rows.append({
            "loss": run["name"],
            "iteration": int(it),
            "seconds": round(float(run["seconds"][it]), 6),
            "metric_norm_mean": m["mean"][it],
            "metric_norm_std": m["std"][it],
            "metric_norm_logstd": m["logstd"][it],
            "metric_norm_mean_smooth": m_smooth[it],
            "metric_norm_logstd_smooth": m_logstd_s[it],
            "l2_norm_mean": q["mean"][it],
            "l2_norm_std": q["std"][it],
            "l2_norm_logstd": q["logstd"][it],
            "l2_norm_mean_smooth": q_smooth[it],
            "l2_norm_logstd_smooth": q_logstd_s[it],
            "l2_mean": float(run["l2"][it].mean()),
            "metric_mean": float(run["metric"][it].mean()),
        })
    iters = args.iterations
    summary = {
        "loss": run["name"],
        "lr": run["lr"],
        "iterations": iters,
        "seconds": round(run["total_seconds"], 3),
        "it_per_s": round(iters / run["total_seconds"], 2) if run["total_seconds"] > 0 else float("nan"),
        "l2_initial": float(run["l2"][0].mean()),
        "l2_final": float(run["l2"][iters].mean()),
        "l2_norm_final": float(q["mean"][iters]),
        "metric_norm_final": float(m["mean"][iters]),
        "metric_floor_mean": float(np.mean(run["metric_floor"])),
    }
    for frac in THRESHOLDS:
        pct = f"{frac * 100:g}pct"
        for key, curve in (("l2", q["mean"]), ("metric", m_smooth)):
            hit = first_reaching(curve, frac)
            summary[f"it_{key}_{pct}"] = hit if hit is not None else ""
            summary[f"s_{key}_{pct}"] = round(float(run["seconds"][hit]), 3) if hit is not None else ""
    return rows, summary


def _fmt(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(v) for k, v in row.items()})
    os.replace(tmp, path)


def save_reconstructions(out: Path, target: torch.Tensor, finals: dict[str, torch.Tensor]) -> None:
    """reconstructions.npz (uint8 arrays) and a quick-look reconstructions.png (targets, then one row per loss)."""
    from PIL import Image, ImageDraw

    def u8(x):
        return (x[:N_SHOWN, 0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()

    arrays = {"target": u8(target), **{name: u8(img) for name, img in finals.items()}}
    np.savez_compressed(out / "reconstructions.npz", **arrays)
    scale, label_w, pad = 2, 130, 2
    h, w = arrays["target"].shape[1:]
    cols = arrays["target"].shape[0]
    canvas = Image.new("L", (label_w + cols * (w * scale + pad), len(arrays) * (h * scale + pad)), 255)
    draw = ImageDraw.Draw(canvas)
    for r, (name, imgs) in enumerate(arrays.items()):
        y = r * (h * scale + pad)
        draw.text((4, y + h * scale // 2 - 6), name, fill=0)
        for c, img in enumerate(imgs):
            tile = Image.fromarray(img).resize((w * scale, h * scale), Image.NEAREST)
            canvas.paste(tile, (label_w + c * (w * scale + pad), y))
    canvas.save(out / "reconstructions.png")


# --------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------


def _lr_option(text: str) -> tuple[str, float]:
    try:
        name, value = text.split("=", 1)
        return name.strip().lower(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad --lr {text!r}: use NAME=VALUE, e.g. watson-dft=1e-3") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    from percept.guard import add_debug_flag

    add_debug_flag(p)
    p.add_argument("--losses", default=",".join(LOSSES), help="comma-separated registry names (default: %(default)s)")
    p.add_argument("--iterations", type=int, default=None,
                   help=f"Adam iterations per loss (default {DEFAULT_ITERATIONS}; --full {PAPER_ITERATIONS}; "
                        f"--quick {QUICK_ITERATIONS})")
    p.add_argument("--full", action="store_true", help=f"the original protocol: {PAPER_ITERATIONS} iterations, "
                                                       "the paper's learning rates unscaled")
    p.add_argument("--quick", action="store_true", help=f"{QUICK_ITERATIONS} iterations: about a minute on 2 CPU cores")
    p.add_argument("--lr-scale", type=float, default=None,
                   help=f"multiply the paper's learning rates (default min({MAX_LR_SCALE:g}, {PAPER_ITERATIONS} / "
                        "iterations); 1 with --full)")
    p.add_argument("--lr", type=_lr_option, action="append", default=[], metavar="NAME=VALUE",
                   help="learning rate of one loss, used as given (not scaled); repeatable")
    p.add_argument("--batch", type=int, default=50, help="number of MNIST test digits (default 50)")
    p.add_argument("--first", type=int, default=0, help="index of the first test digit (default 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial parameters and Watson's shifts")
    p.add_argument("--deterministic", action="store_true",
                   help="no random shifts in Watson (default: random shifts, the original LossProvider's default)")
    p.add_argument("--metric-style", choices=["paper", "library"], default="paper",
                   help="paper: the losses as the original LossProvider built them (default); library: registry "
                        "defaults")
    p.add_argument("--smooth", type=int, default=None,
                   help="trailing window (iterations) of the smoothed curves (default iterations/100; the spec's "
                        "1000 at 100,000)")
    p.add_argument("--record-every", type=int, default=None,
                   help="write every n-th iteration to curves.csv (default: about 1000 rows per loss)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default results/convergence)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.full and args.quick:
        parser.error("--full and --quick exclude each other")
    if args.iterations is None:
        args.iterations = PAPER_ITERATIONS if args.full else QUICK_ITERATIONS if args.quick else DEFAULT_ITERATIONS
    if args.iterations < 1 or args.batch < 1:
        parser.error("--iterations and --batch must be at least 1")
    if args.lr_scale is None:
        args.lr_scale = 1.0 if args.full else min(MAX_LR_SCALE, PAPER_ITERATIONS / args.iterations)
    args.lr = dict(args.lr)
    if args.smooth is None:
        args.smooth = max(1, args.iterations // 100)
    if args.record_every is None:
        args.record_every = max(1, args.iterations // 1000)
    from percept.registry import canonical_name

    try:
        args.losses = [canonical_name(n) for n in args.losses.split(",") if n.strip()]
        args.lr = {canonical_name(k): v for k, v in args.lr.items()}
    except KeyError as err:
        parser.error(err.args[0])
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    target, source = load_digits(args.batch, args.first)
    target = target.to(device)
    init = torch.randn(target.shape, generator=torch.Generator().manual_seed(args.seed))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    rows, summaries, finals, skipped = [], [], {}, {}
    started = time.time()
    load_before = load_average()
    for name in args.losses:
        try:
            run = optimise(name, target, init, args, device)
        except Exception as err:  # a metric that cannot be built here (missing weights, module not landed)
            reason = " ".join(f"{type(err).__name__}: {err}".split())
            print(f"convergence: skipping {name}: {reason}", file=sys.stderr)
            skipped[name] = reason
            continue
        loss_rows, summary = curves_rows(run, args)
        rows += loss_rows
        summaries.append(summary)
        finals[name] = run["final"]
    if not summaries:
        print("convergence: no loss could be run", file=sys.stderr)
        return 1
    write_csv(out / "curves.csv", rows)
    write_csv(out / "summary.csv", summaries)
    save_reconstructions(out, target.cpu(), finals)
    info = machine_info(device)
    info["run"] = {
        "command": "python experiments/convergence/run.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        "quick": args.quick,
        "full": args.full,
        "iterations": args.iterations,
        "lr_scale": args.lr_scale,
        "learning_rates": {s["loss"]: s["lr"] for s in summaries},
        "batch": args.batch,
        "data": source,
        "seed": args.seed,
        "deterministic": args.deterministic,
        "metric_style": args.metric_style,
        "colorspace": "grey",
        "smooth_window": args.smooth,
        "record_every": args.record_every,
        "skipped": skipped,
        "wall_seconds": round(time.time() - started, 1),
        "load_average_1min": {"start": load_before, "end": load_average()},
    }
    (out / "machine.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    width = max(len(s["loss"]) for s in summaries)
    print(f"{'loss':<{width}}  {'lr':>8}  {'it/s':>8}  {'L2 final':>9}  {'metric final':>12}  it to L2 10%")
    for s in summaries:
        print(f"{s['loss']:<{width}}  {s['lr']:8.2g}  {s['it_per_s']:8.1f}  {s['l2_norm_final']:9.3g}  "
              f"{s['metric_norm_final']:12.3g}  {s['it_l2_10pct']}")
    print(f"wrote {out}/curves.csv, summary.csv, machine.json, reconstructions.png")
    return 0


if __name__ == "__main__":
    from percept.guard import driver_main

    sys.exit(driver_main(main, prog="experiments/convergence/run.py"))
