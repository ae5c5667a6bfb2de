"""Adversarial robustness of every metric (E-LPIPS's question, Kettunen et al. 2019, spec lpips_elpips.md D5/D6).

Can an image that plainly shows another photograph be optimised so that a metric judges it *closer* to a
reference than an honestly distorted copy of the reference? For each metric A in turn, and real photographs:

- reference r: a photograph (the E-LPIPS example photographs of the asset folder and the colour photographs
  bundled with scikit-image), resized so its short side is ``--size`` px and centre-cropped to size x size;
- honest copy h: r plus Gaussian noise (sigma ``--noise``, 0.05 = the RMS of E-LPIPS's ``adv_anchor``),
  clipped, rounded to 8 bits;
- source s: another of the photographs (``--sources-per-ref`` of them per reference, cyclically);
- attack: Adam on the pixels of x (start x = s, ``--steps`` steps, lr ``--lr`` decayed linearly to 10 %)
  minimising d_A(x, r), each step projected onto the box |x - s| <= eps (L-inf, per pixel, on the 8-bit
  grid) and [0, 1], for each budget eps of ``--eps``; the result is rounded to 8 bits (a real image) before
  it is judged. For the stochastic E-LPIPS the loss is the mean of ``--elpips-attack-samples`` draws per step;
- success: d_A(x, r) < d_A(h, r) (A is fooled) while x stays visibly different from r:
  PSNR(x, r) < ``--max-psnr`` dB. The budget keeps x near s (rms(x - s) <= eps), so x still shows
  the other photograph; the PSNR to r is reported for every image.
- transfer: every adversarial image (crafted on A) is judged by every metric B: the ratio
  d_B(x, r) / d_B(h, r) and fooled = ratio < 1. The unattacked sources are judged too (row "source").
- stochastic judges (E-LPIPS): d(x, r) and d(h, r) are estimated with paired draws
  (``percept.estimation.compare``: the same random transformations and dropout masks for both), adding draws until 1.96 SE < ``--elpips-rel-err`` x mean and
  < ``--elpips-abs-err`` for every image (spec D4's rule) or ``--elpips-max-samples``; fooled = mean paired
  difference < 0; the 95 % half-widths are in the ``*_ci`` columns.
- barycenter demo (spec D6): the "average" of two photographs (cat and dog) under L2, LPIPS-squeeze and
  E-LPIPS-squeeze: minimise d(x, a)^2 + d(x, b)^2 with Adam from the pixel average (``--bary-*``); the
  result is the mean of the second half's iterates.

    make reproduce-adversarial                           # this driver, then analysis.ipynb
    python experiments/adversarial_robustness/run.py     # default protocol: 8-12 min on 2 shared CPU cores
    python experiments/adversarial_robustness/run.py --quick   # 20-30 s (tests, CI)
    python experiments/adversarial_robustness/run.py --size 128 --steps 500 --sources-per-ref 4 --device cuda
    python experiments/adversarial_robustness/run.py --metrics l2,lpips-squeeze,elpips-squeeze

Metrics (``--metrics``, labels of :data:`METRICS` or any registry name with its defaults): a metric that
cannot be built here (missing weights, module not available) is skipped and its reason recorded.

Writes ``--out`` (default results/adversarial_robustness/):
    attacks.csv        one row per (reference, source, attacked metric, eps): the attacked metric's distances of
                       h, s and x to r, ratio, fooled, PSNR / RMS of x, s, h to r, success, seconds
    transfer.csv       one row per (reference, source, attack, eps, judge): d_B(x, r), d_B(h, r), ratio, fooled
                       (attack "source": the unattacked source photograph)
    summary.csv        per attacked metric and eps: success and fooled rates, ratios, PSNR, transfer rates
    transfer_success.csv / transfer_ratio.csv   the transfer matrix (rows: attack and eps, columns: judge):
                       fraction fooled / geometric-mean ratio
    skipped.csv        metrics (and photographs) that could not be used, with the reason
    images.npz         uint8 (N, H, W, 3) arrays: reference, honest, source, adv__<metric>__eps<eps> (the exact
                       images that were judged) for the largest budget (every budget with --all-images: about
                       5 MB for the default run, as the adversarial noise does not compress), and their names
    barycenter.npz / barycenter.csv   the barycenter demo's images and distances
    machine.json       machine info and the protocol
    attacks.png        quick look (analysis.ipynb draws the figures)
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib.util
import json
import math
import shlex
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from percept import functional
from percept.guard import RunLock, add_debug_flag, driver_main
from percept.runinfo import load_average, machine_info, select_device

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "results" / "adversarial_robustness"

#: E-LPIPS example photographs in the asset folder (adv_anchor / adv_vgg_sqz are derived images: not used)
ELPIPS_PHOTOS = ("adv_reference", "adv_teddy", "cat", "dog")
ELPIPS_PHOTO_DIR = "data/images/elpips"
#: colour photographs bundled with scikit-image (skimage/data/)
SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png")
QUICK_PHOTOS = ("adv_reference", "adv_teddy", "cat")


@dataclass(frozen=True)
class MetricSpec:
    registry: str
    options: dict = field(default_factory=dict)


#: attacked and judging metrics: label -> how to build it
METRICS: dict[str, MetricSpec] = {
    "l2": MetricSpec("l2"),
    "ssim": MetricSpec("ssim"),
    "watson-dct": MetricSpec("watson-dct", {"deterministic": True}),
    "watson-dft": MetricSpec("watson-dft", {"deterministic": True}),
    "adaptive": MetricSpec("adaptive"),
    "lpips-squeeze": MetricSpec("lpips-squeeze"),
    "deeploss-squeeze": MetricSpec("deeploss-squeeze"),
    "dps-squeeze": MetricSpec("dps-squeeze", {"method": "spatial"}),
    "dps-squeeze-sort": MetricSpec("dps-squeeze", {"method": "sort"}),
    "dps-squeeze-mean": MetricSpec("dps-squeeze", {"method": "mean"}),
    "elpips-squeeze": MetricSpec("elpips-squeeze", {"deterministic": False}),
    # ImageNet AlexNet (the default LPIPS, and the network of Sjögren et al.'s DPS default layers)
    "lpips-alex": MetricSpec("lpips-alex"),
    "dps-alex": MetricSpec("dps-alex", {"method": "spatial"}),
    "dps-alex-sort": MetricSpec("dps-alex", {"method": "sort"}),
    "dps-alex-mean": MetricSpec("dps-alex", {"method": "mean"}),
}
BARYCENTER_METRICS = ("l2", "lpips-squeeze", "elpips-squeeze")
BARYCENTER_PHOTOS = ("cat", "dog")
SOURCE_ROW = "source"  # the attack label of the unattacked source photographs in transfer.csv

DEFAULTS = dict(size=64, steps=200, sources_per_ref=1, eps="0.05,0.1,0.2", elpips_attack_samples=2,
                elpips_max_samples=30, bary_size=96, bary_steps=150, bary_samples=4)
QUICK = dict(size=64, steps=10, sources_per_ref=1, eps="0.1,0.2", elpips_attack_samples=1, elpips_max_samples=10,
             bary_size=48, bary_steps=5, bary_samples=1)


# --------------------------------------------------------------------------------------------------
# photographs
# --------------------------------------------------------------------------------------------------


def _elpips_photo(name: str) -> Path:
    from percept.assets import asset_roots

    searched = []
    for root in asset_roots():
        path = root / ELPIPS_PHOTO_DIR / f"{name}.png"
        searched.append(str(path))
        if path.is_file():
            return path
    raise FileNotFoundError(f"E-LPIPS photograph {name}.png not found (looked in {'; '.join(searched)}); "
                            "set PERCEPT_ASSETS to the offline asset folder")


def _skimage_photo(name: str) -> Path:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("scikit-image is not installed (pip install scikit-image): its bundled photographs "
                                "are not available")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not in this scikit-image installation")
    return path


def photo_path(name: str) -> Path:
    """``adv_teddy`` (E-LPIPS asset), ``skimage:astronaut.png`` (bundled with scikit-image) or a file path."""
    if name.startswith("skimage:"):
        return _skimage_photo(name.split(":", 1)[1])
    if name in ELPIPS_PHOTOS or name in ("adv_anchor", "adv_vgg_sqz"):
        return _elpips_photo(name)
    return Path(name)


def load_patch(path: Path, size: int | tuple[int, int]) -> torch.Tensor:
    """(1, 3, H, W) in [0, 1], 8-bit values: resized (antialiased bicubic) so that it covers ``size`` and
    centre-cropped to it. ``size`` is an int (square) or (H, W)."""
    from percept.io import read_image, resize_image

    h_out, w_out = (size, size) if isinstance(size, int) else size
    x = read_image(path, colorspace="rgb")  # alpha dropped: the colour channels as stored
    h, w = x.shape[-2:]
    scale = max(h_out / h, w_out / w)
    x = resize_image(x, (max(h_out, round(h * scale)), max(w_out, round(w * scale))))
    top, left = (x.shape[-2] - h_out) // 2, (x.shape[-1] - w_out) // 2
    return quantise(x[..., top : top + h_out, left : left + w_out])


def quantise(x: torch.Tensor) -> torch.Tensor:
    """Round [0, 1] images to 8-bit levels (what a saved PNG holds)."""
    return (x.clamp(0, 1) * 255).round() / 255


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [0, 1] -> uint8 (N, H, W, 3)."""
    return (x.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x - y).pow(2).flatten(1).mean(1)


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR in dB with peak 1, per image: :func:`percept.functional.psnr` (identical images: 100 dB)."""
    return functional.psnr(x, y, reduction="none")


# --------------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------------


class Metric:
    """A registry metric with the call convention of this experiment: ``metric(x, ref)`` -> (N,) distances.

    ``metric(input=x, target=ref)`` per image; a stochastic metric (E-LPIPS) is averaged over ``samples``
    independent draws of its random transformations (the global torch generator, seeded by the caller).
    """

    def __init__(self, label: str, spec: MetricSpec, device: torch.device):
        from percept import registry

        self.label, self.spec = label, spec
        self.stochastic = registry.is_stochastic(spec.registry, spec.options)
        module = registry.get_metric(spec.registry, colorspace="rgb", reduction="none", device=device, **spec.options)
        if getattr(module, "higher_is_better", False):
            raise ValueError(f"{label}: higher is better; this experiment needs a distance (lower = closer)")
        self.module = module  # frozen, in eval mode

    def __call__(self, x: torch.Tensor, ref: torch.Tensor, samples: int = 1) -> torch.Tensor:
        """d(x, ref) per image, (N,); a stochastic metric averages ``samples`` draws."""
        if not self.stochastic:
            return self.module(x, ref).reshape(x.shape[0])
        if hasattr(self.module, "sample_distances"):  # E-LPIPS: n draws in as few passes as fit
            return self.module.sample_distances((x,), ref, n=samples)[:, 0].mean(0)
        return torch.stack([self.module(x, ref).reshape(x.shape[0]) for _ in range(samples)]).mean(0)

    def pair(self, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, samples: int = 1, seed: int = 0):
        """(d(x, a), d(x, b)), each (N,); a stochastic metric evaluates both under the same draws (a correlated
        tuple, as the reference's barycenter example), averaging ``samples`` draws."""
        if self.stochastic and hasattr(self.module, "sample_distances"):
            set_seed(seed)
            d = self.module.sample_distances((a, b), x, n=samples).mean(0)  # symmetric: d(a, x) = d(x, a)
            return d[0], d[1]
        set_seed(seed)
        da = self(x, a, samples)
        set_seed(seed)
        return da, self(x, b, samples)


def backbone_of(metric: Metric) -> str:
    """Which trunk weights a deep metric runs on (the ImageNet checkpoint file it loaded), "none" for the others."""
    body = getattr(metric.module, "backbone", None)
    if body is None:
        return "none"
    from percept.backbones import imagenet_checkpoint

    arch = getattr(body, "name", "?")
    try:
        return f"ImageNet {arch} ({imagenet_checkpoint(arch).name})"
    except Exception as err:  # built from another source (a checkpoint given explicitly)
        return f"{arch} (no ImageNet checkpoint found: {type(err).__name__})"


def build_metrics(labels: list[str], device: torch.device, probe: torch.Tensor) -> tuple[dict, dict]:
    """label -> :class:`Metric` for those that can be built and evaluated on ``probe``-sized images;
    label -> reason for the others."""
    built, skipped = {}, {}
    for label in labels:
        spec = METRICS.get(label, MetricSpec(label))
        try:
            metric = Metric(label, spec, device)
            with torch.no_grad():
                d = metric(probe[:1], probe[1:2])
            if not torch.isfinite(d).all():
                raise ValueError(f"non-finite distance on the probe pair: {d.tolist()}")
            built[label] = metric
        except Exception as err:  # missing weights, module not landed, image too small: record, go on
            reason = " ".join(f"{type(err).__name__}: {err}".split())
            print(f"adversarial_robustness: skipping {label}: {reason}", file=sys.stderr)
            skipped[label] = reason
    return built, skipped


def seed_for(*parts) -> int:
    """A stable seed from strings / ints (independent of Python's hash randomisation)."""
    return zlib.crc32("/".join(map(str, parts)).encode()) % (2**31)


def set_seed(seed: int) -> None:
    torch.manual_seed(seed)  # seeds every device's default generator too


# --------------------------------------------------------------------------------------------------
# attack, judgement, barycenter
# --------------------------------------------------------------------------------------------------


def attack(metric: Metric, refs: torch.Tensor, sources: torch.Tensor, eps: float, args) -> tuple[torch.Tensor, float]:
    """Adam on the pixels from ``sources`` minimising d(x, refs), projected on |x - s| <= eps and [0, 1].

    Each image's loss depends on its own pixels only and Adam is element-wise, so the batch is N
    independent attacks. Returns (8-bit adversarial images, seconds).
    """
    set_seed(seed_for(args.seed, "attack", metric.label, eps))
    if eps > 0:  # the box on the 8-bit grid (sources are 8-bit), so that rounding x keeps it inside
        grid = math.floor(eps * 255 + 1e-6) / 255
        lower, upper = (sources - grid).clamp_min(0), (sources + grid).clamp_max(1)
    else:
        lower, upper = torch.zeros_like(sources), torch.ones_like(sources)
    x = sources.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([x], lr=args.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda t: 1 - 0.9 * t / max(1, args.steps))
    start = time.perf_counter()
    bar = tqdm(range(args.steps), desc=f"attack {metric.label:>16s} eps {eps:g}", leave=False, mininterval=1.0,
               disable=args.no_progress)
    for _ in bar:
        loss = metric(x, refs, samples=args.elpips_attack_samples).sum()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        with torch.no_grad():
            x.copy_(torch.maximum(torch.minimum(x, upper), lower))
    return quantise(x.detach()), time.perf_counter() - start


@torch.no_grad()
def _batched(metric: Metric, x: torch.Tensor, ref: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat([metric(x[i : i + batch], ref[i : i + batch]) for i in range(0, len(x), batch)])


@torch.no_grad()
def judge(metric: Metric, xs: torch.Tensor, honest: torch.Tensor, refs: torch.Tensor, args) -> dict[str, np.ndarray]:
    """d(xs, refs) and d(honest, refs) per row (N,), with 95 % half-widths for a stochastic metric.

    Stochastic: paired draws (``percept.estimation.compare``: both distances of a row under the same
    transformations and dropout masks), added 10 at a time until every row's mean has 1.96 SE below rel_err x mean
    and below abs_err (spec D4's rule), at least 10 draws and at most ``--elpips-max-samples``.
    """
    n = len(xs)
    if not metric.stochastic:
        d_x = _batched(metric, xs, refs, args.batch).double().cpu().numpy()
        d_h = _batched(metric, honest, refs, args.batch).double().cpu().numpy()
        zero = np.zeros(n)
        return {"d_adv": d_x, "d_honest": d_h, "ci_adv": zero, "ci_honest": zero, "ci_diff": zero,
                "diff": d_x - d_h, "samples": np.ones(n, dtype=int)}
    from percept.estimation import compare

    draws = []  # (k, 2, N): index 0 d(xs, refs), 1 d(honest, refs) under the same draws
    chunk = 10
    bar = tqdm(total=args.elpips_max_samples, desc=f"judge  {metric.label:>16s}", leave=False, mininterval=1.0,
               disable=args.no_progress)
    while sum(len(d) for d in draws) < args.elpips_max_samples:
        k = min(chunk, args.elpips_max_samples - sum(len(d) for d in draws))
        seed = seed_for(args.seed, "judge", metric.label, len(draws))
        draws.append(compare(refs, xs, honest, metric=metric.module, samples=k, seed=seed).samples.reshape(k, 2, n))
        bar.update(k)
        values = torch.cat(draws).numpy()
        if _converged(values[:, 0], args) and _converged(values[:, 1], args):
            break
    bar.close()
    dx, dh = values[:, 0], values[:, 1]
    return {"d_adv": dx.mean(0), "d_honest": dh.mean(0), "ci_adv": _half_width(dx), "ci_honest": _half_width(dh),
            "diff": (dx - dh).mean(0), "ci_diff": _half_width(dx - dh), "samples": np.full(n, len(dx))}


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b > 0 else float("inf")


def _half_width(draws: np.ndarray) -> np.ndarray:
    """1.96 x the standard error of the mean over axis 0 (draws)."""
    if len(draws) < 2:
        return np.full(draws.shape[1], np.nan)
    return 1.96 * draws.std(0, ddof=1) / math.sqrt(len(draws))


def _converged(draws: np.ndarray, args) -> bool:
    if len(draws) < 10:
        return False
    hw, mean = _half_width(draws), np.abs(draws.mean(0))
    return bool(np.all((hw < args.elpips_rel_err * mean) & (hw < args.elpips_abs_err)))


def barycenter(metric: Metric, a: torch.Tensor, b: torch.Tensor, args) -> tuple[torch.Tensor, dict]:
    """Minimise d(x, a)^2 + d(x, b)^2 (spec D6, ex_pairwise_average) with Adam from the pixel average, clipping
    to [0, 1] after each step; lr decays linearly to 10 %. A stochastic metric draws the same transformations
    for both terms of a step (``--bary-samples`` draws per step), and the result is the mean of the iterates of
    the second half (it averages out the noise of the stochastic gradients; a no-op for a converged
    deterministic metric)."""
    x = ((a + b) / 2).clone().requires_grad_(True)
    optimiser = torch.optim.Adam([x], lr=args.bary_lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda t: 1 - 0.9 * t / max(1, args.bary_steps))
    start = time.perf_counter()
    base = seed_for(args.seed, "barycenter", metric.label)
    total, count = torch.zeros_like(x), 0
    for step in tqdm(range(args.bary_steps), desc=f"barycenter {metric.label:>12s}", leave=False, mininterval=1.0,
                     disable=args.no_progress):
        da, db = metric.pair(x, a, b, samples=args.bary_samples, seed=base + step)
        loss = (da.pow(2) + db.pow(2)).sum()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        with torch.no_grad():
            x.clamp_(0, 1)
            if step >= args.bary_steps // 2:
                total += x
                count += 1
    result = total / count if count else x.detach()
    return quantise(result), {"seconds": time.perf_counter() - start}


# --------------------------------------------------------------------------------------------------
# outputs
# --------------------------------------------------------------------------------------------------


def _fmt(value):
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return "" if not np.isfinite(value) else f"{float(value):.6g}"
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_csv(path: Path, rows: list[dict], columns: list[str] | None = None) -> None:
    columns = columns or (list(rows[0]) if rows else [])
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(row.get(k)) for k in columns})


def adv_key(label: str, eps: float) -> str:
    """The images.npz key of the adversarial images crafted on ``label`` with budget ``eps``."""
    return f"adv__{label}__eps{eps:g}"


def quick_look(path: Path, images: dict[str, np.ndarray], keys: list[str], n: int = 3) -> None:
    """attacks.png: for the first n rows, reference / honest / source / the adversarial images of ``keys``."""
    from PIL import Image

    columns = ["reference", "honest", "source"] + keys
    h, w = images["reference"].shape[1:3]
    pad = 2
    n = min(n, len(images["reference"]))
    canvas = np.full((n * (h + pad) + pad, len(columns) * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i in range(n):
        for j, key in enumerate(columns):
            top, left = pad + i * (h + pad), pad + j * (w + pad)
            canvas[top : top + h, left : left + w] = images[key][i]
    Image.fromarray(canvas).save(path)


def summarise(attack_rows: list[dict], transfer_rows: list[dict], candidates: list[tuple[str, float]],
              judges: list[str]) -> tuple[list[dict], list[dict], list[dict]]:
    """summary rows per (attack, eps); the transfer matrices (rows: attack and eps, columns: judges):
    fraction of the images that fool the judge, geometric-mean ratio d_B(x, r) / d_B(h, r)."""
    summary, success, ratio = [], [], []
    for label, eps in candidates:
        rows = [r for r in attack_rows if r["metric"] == label and r["eps"] == eps]
        trans = [r for r in transfer_rows if r["attack"] == label and r["eps"] == eps]
        others = [r for r in trans if r["judge"] != label]
        if rows:
            summary.append({
                "metric": label,
                "eps": eps,
                "n": len(rows),
                "success_rate": np.mean([r["success"] for r in rows]),
                "fooled_rate": np.mean([r["fooled"] for r in rows]),
                "fooled_confident_rate": np.mean([r["fooled_confident"] for r in rows]),
                "ratio_median": np.median([r["ratio"] for r in rows]),
                "ratio_gmean": _gmean([r["ratio"] for r in rows]),
                "ratio_source_gmean": _gmean([r["ratio_source"] for r in rows]),
                "psnr_adv_ref_mean": np.mean([r["psnr_adv_ref"] for r in rows]),
                "psnr_adv_ref_max": np.max([r["psnr_adv_ref"] for r in rows]),
                "psnr_honest_ref_mean": np.mean([r["psnr_honest_ref"] for r in rows]),
                "rms_adv_source_mean": np.mean([r["rms_adv_source"] for r in rows]),
                "others_fooled_rate": np.mean([r["fooled"] for r in others]) if others else float("nan"),
                "steps": rows[0]["steps"],
                "seconds": rows[0]["seconds"],
            })
        row_s, row_r = {"attack": label, "eps": eps}, {"attack": label, "eps": eps}
        for j in judges:
            cell = [r for r in trans if r["judge"] == j]
            row_s[j] = np.mean([r["fooled"] for r in cell]) if cell else float("nan")
            row_r[j] = _gmean([r["ratio"] for r in cell])
        success.append(row_s)
        ratio.append(row_r)
    return summary, success, ratio


def _gmean(values) -> float:
    values = [v for v in values if v > 0 and np.isfinite(v)]
    return float(np.exp(np.mean(np.log(values)))) if values else float("nan")


# --------------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    doc = __doc__.split("\n\n", 1)
    p = argparse.ArgumentParser(description=doc[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=doc[1])
    p.add_argument("--quick", action="store_true", help="20-30 s: 3 photographs, 10 steps, 2 budgets")
    p.add_argument("--metrics", default=",".join(METRICS), help="attacked (and judging) metrics: labels or registry "
                   "names, comma-separated (default: %(default)s)")
    p.add_argument("--photos", default=None, help="comma-separated: E-LPIPS names, skimage:FILE, or paths (default: "
                   f"{','.join(ELPIPS_PHOTOS)} and skimage:{{{','.join(SKIMAGE_PHOTOS)}}}; --quick: "
                   f"{','.join(QUICK_PHOTOS)})")
    p.add_argument("--size", type=int, default=None, help=f"patch side in px, a multiple of 8 for Watson (default "
                   f"{DEFAULTS['size']}, --quick {QUICK['size']})")
    p.add_argument("--sources-per-ref", type=int, default=None, help="attacks per reference: the next k photographs "
                   f"are the sources (default {DEFAULTS['sources_per_ref']}, --quick {QUICK['sources_per_ref']})")
    p.add_argument("--noise", type=float, default=0.05, help="sigma of the honest Gaussian noise (default 0.05)")
    p.add_argument("--eps", default=None, help="L-inf budgets around the source, comma-separated (default "
                   f"{DEFAULTS['eps']}, --quick {QUICK['eps']}; 0 = no budget, only [0, 1])")
    p.add_argument("--steps", type=int, default=None, help=f"Adam steps per attack (default {DEFAULTS['steps']}, "
                   f"--quick {QUICK['steps']})")
    p.add_argument("--lr", type=float, default=0.01, help="Adam learning rate (pixels; default 0.01, decayed "
                   "linearly to 10 %%)")
    p.add_argument("--max-psnr", type=float, default=20.0, help="visibly different: PSNR(x, r) below this (dB, "
                   "default 20, i.e. rms > 0.1, twice the honest noise)")
    p.add_argument("--elpips-attack-samples", type=int, default=None, help="E-LPIPS draws per attack step (default "
                   f"{DEFAULTS['elpips_attack_samples']}, --quick {QUICK['elpips_attack_samples']})")
    p.add_argument("--elpips-max-samples", type=int, default=None, help="most E-LPIPS draws per judgement (default "
                   f"{DEFAULTS['elpips_max_samples']}, --quick {QUICK['elpips_max_samples']}; the original: 5000)")
    p.add_argument("--elpips-rel-err", type=float, default=0.025, help="stop when 1.96 SE < this x mean (0.025)")
    p.add_argument("--elpips-abs-err", type=float, default=0.01, help="... and 1.96 SE < this (0.01)")
    p.add_argument("--bary-size", type=int, default=None, help="barycenter image height in px (width from the "
                   f"photographs' aspect; default {DEFAULTS['bary_size']}, --quick {QUICK['bary_size']}; 0 = skip)")
    p.add_argument("--bary-steps", type=int, default=None, help=f"barycenter Adam steps (default "
                   f"{DEFAULTS['bary_steps']}, --quick {QUICK['bary_steps']}; the original ran 100,000)")
    p.add_argument("--bary-lr", type=float, default=0.003, help="barycenter Adam learning rate (default 0.003, "
                   "decayed linearly to 10 %%)")
    p.add_argument("--bary-samples", type=int, default=None, help="E-LPIPS draws per barycenter step (default "
                   f"{DEFAULTS['bary_samples']}, --quick {QUICK['bary_samples']})")
    p.add_argument("--all-images", action="store_true", help="save the adversarial images of every budget in "
                   "images.npz (default: the largest budget's, which the figures show)")
    p.add_argument("--batch", type=int, default=64, help="images per forward pass when judging (default 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise, the attacks and the E-LPIPS draws")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_debug_flag(p)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.photos is None:
        args.photos = list(QUICK_PHOTOS) if args.quick else \
            list(ELPIPS_PHOTOS) + [f"skimage:{name}" for name in SKIMAGE_PHOTOS]
    else:
        args.photos = [p.strip() for p in args.photos.split(",") if p.strip()]
    args.metrics = list(dict.fromkeys(m.strip().lower() for m in args.metrics.split(",") if m.strip()))
    try:
        args.eps = sorted({float(e) for e in str(args.eps).split(",") if e.strip()})
    except ValueError:
        parser.error(f"bad --eps {args.eps!r}: comma-separated numbers, e.g. 0.05,0.1,0.2")
    if not args.eps or min(args.eps) < 0:
        parser.error("--eps needs at least one budget, all >= 0")
    if args.size < 24 or args.size % 8:
        parser.error("--size must be a multiple of 8 (Watson's blocks) and at least 24 (SqueezeNet, SSIM)")
    if args.steps < 0 or args.bary_steps < 0:
        parser.error("--steps and --bary-steps must be >= 0")
    if min(args.sources_per_ref, args.elpips_attack_samples, args.elpips_max_samples, args.bary_samples) < 1:
        parser.error("--sources-per-ref, --elpips-attack-samples, --elpips-max-samples and --bary-samples must be >= 1")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def load_photos(names: list[str], size: int) -> tuple[list[str], torch.Tensor, dict]:
    kept, patches, skipped = [], [], {}
    for name in names:
        try:
            patches.append(load_patch(photo_path(name), size))
            kept.append(Path(name.split(":", 1)[-1]).stem)
        except Exception as err:  # scikit-image missing, asset folder not set
            skipped[name] = " ".join(f"{type(err).__name__}: {err}".split())
            print(f"adversarial_robustness: skipping photograph {name}: {skipped[name]}", file=sys.stderr)
    return kept, (torch.cat(patches) if patches else torch.empty(0)), skipped


def run_barycenter(args, metrics: dict, device: torch.device, out: Path) -> dict:
    """The barycenter demo: barycenter.npz (uint8 a, b, average, one image per metric) and barycenter.csv."""
    if args.bary_size <= 0:
        return {"skipped": "--bary-size 0"}
    try:
        paths = [photo_path(n) for n in BARYCENTER_PHOTOS]
        from percept.io import image_size

        h, w = image_size(paths[0])
        shape = (args.bary_size, 8 * max(1, round(args.bary_size * w / h / 8)))
        a, b = (load_patch(p, shape).to(device) for p in paths)
    except Exception as err:
        reason = " ".join(f"{type(err).__name__}: {err}".split())
        print(f"adversarial_robustness: no barycenter demo: {reason}", file=sys.stderr)
        return {"skipped": reason}
    images = {"a": to_uint8(a), "b": to_uint8(b), "average": to_uint8(quantise((a + b) / 2))}
    rows, skipped = [], {}
    for label in BARYCENTER_METRICS:
        if label not in metrics:
            skipped[label] = "metric not available in this run"
            continue
        metric = metrics[label]
        x, info = barycenter(metric, a, b, args)
        images[label] = to_uint8(x)
        row = {"method": label, "steps": args.bary_steps, "seconds": info["seconds"],
               "psnr_to_average": float(psnr(x, quantise((a + b) / 2))[0])}
        for judge_label, judge_metric in metrics.items():  # every metric's view of the barycenter
            if judge_label not in BARYCENTER_METRICS:
                continue
            with torch.no_grad():
                da, db = judge_metric.pair(x, a, b, samples=min(args.elpips_max_samples, 50),
                                           seed=seed_for(args.seed, "barycenter-judge"))
            row[f"{judge_label}_to_a"], row[f"{judge_label}_to_b"] = float(da[0]), float(db[0])
        rows.append(row)
    np.savez_compressed(out / "barycenter.npz", **images, photos=np.array(BARYCENTER_PHOTOS))
    write_csv(out / "barycenter.csv", rows)
    return {"photos": list(BARYCENTER_PHOTOS), "shape": list(shape), "steps": args.bary_steps, "lr": args.bary_lr,
            "objective": "d(x, a)^2 + d(x, b)^2 from the pixel average, Adam (lr decayed linearly to 10 %), clip to "
                         "[0, 1]; result: mean of the second half's iterates, 8-bit",
            "samples_per_step": args.bary_samples,
            "skipped": skipped}


def main(argv: list[str] | None = None) -> int:
    """Run the experiment; a failure is one line on stderr (``--debug`` or PERCEPT_DEBUG=1: the traceback)."""
    with contextlib.ExitStack() as cleanup:
        return driver_main(lambda a: _main(a, cleanup), argv, prog="experiments/adversarial_robustness/run.py")


def _main(argv: list[str], cleanup: contextlib.ExitStack) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)  # a clear error for a device this machine does not have
    out = Path(args.out)
    cleanup.enter_context(RunLock(out))  # one run at a time per output folder
    started, load_before = time.time(), load_average()

    names, photos, skipped_photos = load_photos(args.photos, args.size)
    if len(names) < 2:
        print("adversarial_robustness: need at least two photographs", file=sys.stderr)
        return 1
    k = min(args.sources_per_ref, len(names) - 1)
    ref_idx = [i for i in range(len(names)) for _ in range(k)]
    src_idx = [(i + 1 + j) % len(names) for i in range(len(names)) for j in range(k)]
    noise = torch.randn(photos.shape, generator=torch.Generator().manual_seed(args.seed))
    honest_photos = quantise(photos + args.noise * noise)
    refs, honest, sources = photos[ref_idx].to(device), honest_photos[ref_idx].to(device), photos[src_idx].to(device)

    metrics, skipped = build_metrics(args.metrics, device, photos[:2].to(device))
    if not metrics:
        print("adversarial_robustness: no metric could be built", file=sys.stderr)
        return 1
    labels = list(metrics)

    adversarial, seconds = {}, {}
    jobs = [(label, eps) for eps in args.eps for label in labels]
    for label, eps in tqdm(jobs, desc="attacks", disable=args.no_progress):
        adversarial[label, eps], seconds[label, eps] = attack(metrics[label], refs, sources, eps, args)

    # judge every image (each attack's, and the unattacked sources) with every metric, in one batch per judge
    candidates = [(SOURCE_ROW, 0.0)] + jobs
    xs = torch.cat([sources] + [adversarial[job] for job in jobs])
    m, c = len(refs), len(candidates)
    big_refs, big_honest, big_sources = (t.repeat(c, 1, 1, 1) for t in (refs, honest, sources))
    verdicts = {}
    for judge_label in tqdm(labels, desc="judges", disable=args.no_progress):
        verdicts[judge_label] = judge(metrics[judge_label], xs, big_honest, big_refs, args)

    pix_psnr_adv = psnr(xs, big_refs).cpu().numpy()
    pix_psnr_honest = psnr(honest, refs).cpu().numpy()
    pix_psnr_source = psnr(sources, refs).cpu().numpy()
    rms_adv_source = mse(xs, big_sources).sqrt().cpu().numpy()
    linf_adv_source = (xs - big_sources).abs().flatten(1).amax(1).cpu().numpy()
    transfer_rows, attack_rows = [], []
    for ci, (label, eps) in enumerate(candidates):
        for i in range(m):
            r = ci * m + i  # row of xs
            base = {"reference": names[ref_idx[i]], "source": names[src_idx[i]], "attack": label, "eps": eps}
            for judge_label in labels:
                v = verdicts[judge_label]
                transfer_rows.append({
                    **base, "judge": judge_label, "d_adv": v["d_adv"][r], "d_honest": v["d_honest"][r],
                    "ratio": _ratio(v["d_adv"][r], v["d_honest"][r]),
                    "fooled": bool(v["diff"][r] < 0), "fooled_confident": bool(v["diff"][r] + v["ci_diff"][r] < 0),
                    "ci_adv": v["ci_adv"][r], "ci_honest": v["ci_honest"][r],
                    "diff": v["diff"][r], "ci_diff": v["ci_diff"][r],
                    "samples": v["samples"][r], "psnr_adv_ref": pix_psnr_adv[r],
                })
            if label == SOURCE_ROW:
                continue
            own = verdicts[label]
            fooled = bool(own["diff"][r] < 0)
            visibly_different = bool(pix_psnr_adv[r] < args.max_psnr)
            attack_rows.append({
                "reference": names[ref_idx[i]], "source": names[src_idx[i]], "metric": label, "eps": eps,
                "d_honest": own["d_honest"][r], "d_source": own["d_adv"][i], "d_adv": own["d_adv"][r],
                "ratio": _ratio(own["d_adv"][r], own["d_honest"][r]),
                "ratio_source": _ratio(own["d_adv"][i], own["d_honest"][i]),
                "ci_honest": own["ci_honest"][r], "ci_adv": own["ci_adv"][r],
                "diff": own["diff"][r], "ci_diff": own["ci_diff"][r],
                "fooled": fooled, "fooled_confident": bool(own["diff"][r] + own["ci_diff"][r] < 0),
                "psnr_adv_ref": pix_psnr_adv[r], "psnr_honest_ref": pix_psnr_honest[i],
                "psnr_source_ref": pix_psnr_source[i], "mse_adv_ref": float(mse(xs[r : r + 1], refs[i : i + 1])[0]),
                "rms_adv_source": rms_adv_source[r], "linf_adv_source": linf_adv_source[r],
                "visibly_different": visibly_different, "success": fooled and visibly_different,
                "stochastic": metrics[label].stochastic, "samples": own["samples"][r], "steps": args.steps,
                "seconds": seconds[label, eps],
            })

    summary, matrix_success, matrix_ratio = summarise(attack_rows, transfer_rows, candidates, labels)
    write_csv(out / "attacks.csv", attack_rows)
    write_csv(out / "transfer.csv", transfer_rows)
    write_csv(out / "summary.csv", summary)
    write_csv(out / "transfer_success.csv", matrix_success)
    write_csv(out / "transfer_ratio.csv", matrix_ratio)
    skipped_rows = [{"kind": "metric", "name": n, "reason": r} for n, r in skipped.items()]
    skipped_rows += [{"kind": "photograph", "name": n, "reason": r} for n, r in skipped_photos.items()]
    write_csv(out / "skipped.csv", skipped_rows, ["kind", "name", "reason"])
    images = {"reference": to_uint8(refs), "honest": to_uint8(honest), "source": to_uint8(sources)}
    kept = jobs if args.all_images else [job for job in jobs if job[1] == max(args.eps)]
    images.update({adv_key(*job): to_uint8(adversarial[job]) for job in kept})
    np.savez_compressed(out / "images.npz", **images, reference_names=np.array([names[i] for i in ref_idx]),
                        source_names=np.array([names[i] for i in src_idx]), metrics=np.array(labels),
                        eps=np.array(args.eps))
    quick_look(out / "attacks.png", images, [adv_key(label, max(args.eps)) for label in labels])

    bary = run_barycenter(args, metrics, device, out)

    info = machine_info(device)
    info["run"] = {
        "command": "python experiments/adversarial_robustness/run.py "
                   + shlex.join(sys.argv[1:] if argv is None else argv),
        "quick": args.quick,
        "photos": names,
        "metrics": {label: {"registry": metrics[label].spec.registry, "options": metrics[label].spec.options,
                            "stochastic": metrics[label].stochastic, "backbone": backbone_of(metrics[label])}
                    for label in labels},
        "skipped_metrics": skipped,
        "skipped_photos": skipped_photos,
        "protocol": {
            "patch": f"{args.size}x{args.size}: the photograph resized (antialiased bicubic) so its short side is "
                     f"{args.size} px, centre crop, 8-bit",
            "pairs": f"each photograph is a reference; the next {k} photographs (cyclically) are the sources",
            "honest": f"reference + N(0, {args.noise}^2) noise, clipped, 8-bit (seed {args.seed})",
            "attack": f"Adam lr {args.lr} (linear decay to 10 %), {args.steps} steps, minimise d(x, ref) from the "
                      f"source, projected on |x - source| <= eps (L-inf, eps in {args.eps}, on the 8-bit grid) and "
                      "[0, 1]; rounded to 8 bits",
            "success": f"d_A(x, ref) < d_A(honest, ref) and PSNR(x, ref) < {args.max_psnr} dB",
            "stochastic": f"E-LPIPS attacked with {args.elpips_attack_samples} draws per step; judged with paired "
                          f"draws until 1.96 SE < {args.elpips_rel_err} x mean and < {args.elpips_abs_err}, "
                          f"10 to {args.elpips_max_samples} draws",
            "convention": "metric(input=x, target=reference), per image",
        },
        "barycenter": bary,
        "seed": args.seed,
        "wall_seconds": round(time.time() - started, 1),
        "load_average_1min": {"start": load_before, "end": load_average()},
    }
    info["args"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    (out / "machine.json").write_text(json.dumps(info, indent=2, default=str) + "\n")

    width = max(len(s["metric"]) for s in summary)
    print(f"{'metric':<{width}}   eps  success  fooled  ratio(median)  PSNR(x,r)  others fooled")
    for s in summary:
        print(f"{s['metric']:<{width}}  {s['eps']:4g}  {s['success_rate']:7.2f}  {s['fooled_rate']:6.2f}  "
              f"{s['ratio_median']:13.3g}  {s['psnr_adv_ref_mean']:9.1f}  {s['others_fooled_rate']:13.2f}")
    print(f"wrote {out}/ (attacks.csv, transfer.csv, summary.csv, images.npz, machine.json) "
          f"in {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
