"""What each reconstruction loss prefers when the decoder cannot tell two digits apart.

The paper's MNIST VAE has a 2-D latent space: many latent positions lie between the regions of two digit
classes, and there the decoder is trained on targets that are sometimes one digit and sometimes another.
The loss then decides what it draws: the output ``c`` that minimises the expected loss
``(d(c, a) + d(c, b)) / 2`` over the two targets ``a`` and ``b``. This script scores a few such outputs for
pairs of held-out digits of different classes, under each loss:

- ``average``: (a + b) / 2, the minimiser of L2 (a blurred mix);
- ``union``: max(a, b), both digits' strokes drawn sharply, one over the other;
- ``blurred average``: the average under a 3x3 box blur (what an L2-trained decoder tends to draw);
- ``one digit``: a alone (a sharp guess);
- ``black``: an empty image.

A loss that scores ``union`` below ``average`` rewards a decoder for drawing superposed sharp strokes where
it is unsure, which is what Watson-DFT's VAE draws for round digits (0, 2, 3, 5, 6, 8), while L2's draws a
blur::

    python experiments/vae_mnist/ambiguity.py                  # 512 pairs of round digits, ~1 min on 2 cores
    python experiments/vae_mnist/ambiguity.py --classes all    # pairs of any two classes
    python experiments/vae_mnist/ambiguity.py --quick          # a few pairs (tests)

Data: the official MNIST test digits (offline: the asset folder's copy). Writes ``<out>/ambiguity.csv``
(one row per loss and candidate), ``<out>/ambiguity.png`` and ``<out>/ambiguity.json`` (machine, arguments).
Watson-DFT is scored as in the paper's training (paper style: batch-pooled luminance, no floor) with the
block grid fixed (no random shift), and per image (library style) as a second row.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import torch

from percept.data.mnist import load_mnist
from percept.registry import get_metric
from percept.runinfo import machine_info, write_json

ROOT = Path(__file__).resolve().parents[2]
ROUND_DIGITS = (0, 2, 3, 5, 6, 8)
CANDIDATES = ("average", "union", "blurred average", "one digit", "black")
#: row name -> (registry name, style, options): the paper's losses that can be built offline
LOSSES = {
    "l2": ("l2", "library", {}),
    "ssim": ("ssim", "paper", {}),
    "watson-dft (paper)": ("watson-dft", "paper", {"deterministic": True}),
    "watson-dft (per image)": ("watson-dft", "library", {"deterministic": True}),
    "deeploss-squeeze": ("deeploss-squeeze", "paper", {}),
}


def candidates(a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
    """The outputs scored for target pairs (a, b), each (N, 1, H, W) in [0, 1]."""
    average = (a + b) / 2
    return {
        "average": average,
        "union": torch.maximum(a, b),
        "blurred average": torch.nn.functional.avg_pool2d(average, 3, stride=1, padding=1, count_include_pad=False),
        "one digit": a.clone(),
        "black": torch.zeros_like(a),
    }


def pick_pairs(labels: torch.Tensor, n: int, classes: tuple[int, ...] | None, seed: int) -> tuple[list, list]:
    """``n`` seeded pairs of positions whose digits are of different classes (both among ``classes``)."""
    pool = torch.arange(len(labels)) if classes is None else torch.nonzero(torch.isin(labels, torch.tensor(classes)))
    pool = pool.flatten()
    g = torch.Generator().manual_seed(seed)
    first, second = [], []
    while len(first) < n:
        i, j = pool[torch.randint(len(pool), (2,), generator=g)].tolist()
        if labels[i] != labels[j]:
            first.append(i)
            second.append(j)
    return first, second


def expected_costs(metric, outputs: dict[str, torch.Tensor], a: torch.Tensor, b: torch.Tensor, batch: int) -> dict:
    """Per pair and candidate: (d(c, a) + d(c, b)) / 2, computed in batches of ``batch`` pairs."""
    costs = {}
    with torch.no_grad():
        for name, c in outputs.items():
            parts = []
            for s in range(0, len(a), batch):
                sl = slice(s, s + batch)
                parts.append((metric(c[sl], a[sl]).flatten() + metric(c[sl], b[sl]).flatten()) / 2)
            costs[name] = torch.cat(parts)
    return costs


def draw(out: Path, a, b, outputs, rows: list[dict], losses: list[str]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    k = min(4, len(a))
    fig = plt.figure(figsize=(10, 3.6))
    grid = fig.add_gridspec(1, 2, width_ratios=[1.1, 1])
    ax = fig.add_subplot(grid[0])
    columns = [("a", a), ("b", b)] + [(name, outputs[name]) for name in CANDIDATES if name != "one digit"]
    tiles = np.concatenate([np.concatenate([img[i, 0].numpy() for i in range(k)], axis=0) for _, img in columns], 1)
    ax.imshow(tiles, cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([32 * i + 16 for i in range(len(columns))], [n.replace(" ", "\n") for n, _ in columns], fontsize=7)
    ax.set_yticks([])
    ax.set_title("two held-out digits and candidate outputs", fontsize=9)
    ax = fig.add_subplot(grid[1])
    width = 0.8 / len(CANDIDATES)
    for j, name in enumerate(CANDIDATES):
        values = [next(r["relative_to_average"] for r in rows if r["loss"] == loss and r["candidate"] == name)
                  for loss in losses]  # fmt: skip
        xs = np.arange(len(losses)) + (j - 2) * width
        ax.bar(xs, values, width, label=name)
        for x_, v in zip(xs, values, strict=True):
            if v > 3:  # clipped by the axis: say how far
                ax.text(x_, 2.93, f"{v:.1f}", ha="center", va="top", fontsize=6, rotation=90, color="w")
    ax.axhline(1, color="k", lw=0.6)
    ax.set_xticks(range(len(losses)), [n.replace(" (", "\n(") for n in losses], fontsize=7)
    ax.set_ylabel("expected loss / that of the average", fontsize=8)
    ax.set_ylim(0, 3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "ambiguity.png", dpi=100)
    plt.close(fig)
    return out / "ambiguity.png"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from percept.guard import add_debug_flag

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_debug_flag(p)
    p.add_argument("--pairs", type=int, default=512)
    p.add_argument("--classes", default="round", help="'round' (0, 2, 3, 5, 6, 8) or 'all'")
    p.add_argument("--losses", default=",".join(LOSSES), help=f"rows among: {', '.join(LOSSES)}")
    p.add_argument("--batch", type=int, default=128, help="pairs per metric call (Watson's paper style pools over it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "results" / "vae_mnist" / "ambiguity"))
    p.add_argument("--quick", action="store_true", help="16 pairs, L2 and Watson-DFT (tests)")
    args = p.parse_args(argv)
    if args.classes not in ("round", "all"):
        p.error(f"--classes: use 'round' or 'all', not {args.classes!r}")
    if args.pairs < 1 or args.batch < 1:
        p.error("--pairs and --batch must be at least 1")
    unknown = [n for n in args.losses.split(",") if n not in LOSSES]
    if unknown:
        p.error(f"--losses: unknown {', '.join(unknown)}; valid: {', '.join(LOSSES)}")
    if args.quick:
        args.pairs, args.losses = 16, "l2,watson-dft (paper)"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    test = load_mnist("test")
    classes = ROUND_DIGITS if args.classes == "round" else None
    first, second = pick_pairs(test.labels, args.pairs, classes, args.seed)
    a, b = test.images(first), test.images(second)
    outputs = candidates(a, b)
    rows, losses = [], args.losses.split(",")
    for loss in losses:
        name, style, options = LOSSES[loss]
        metric = get_metric(name, colorspace="grey", reduction="none", style=style, image_shape=(1, 32, 32), **options)
        costs = expected_costs(metric, outputs, a, b, args.batch)
        base = costs["average"]
        for cand in CANDIDATES:
            rows.append({
                "loss": loss, "candidate": cand, "expected_loss": costs[cand].mean().item(),
                "relative_to_average": (costs[cand].mean() / base.mean()).item(),
                "share_of_pairs_below_average": (costs[cand] < base).double().mean().item(),
            })  # fmt: skip
        best = min(CANDIDATES, key=lambda c: costs[c].mean().item())
        print(f"{loss}: lowest expected loss: {best}; " + ", ".join(
            f"{c} {costs[c].mean() / base.mean():.3f}" for c in CANDIDATES), flush=True)  # fmt: skip
    with open(out / "ambiguity.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
    write_json(out / "ambiguity.json", {**machine_info("cpu"), "data_source": test.info["data_source"],
                                        "pairs": {"first": first, "second": second}, "args": vars(args)})  # fmt: skip
    print(f"wrote {out / 'ambiguity.csv'} and {draw(out, a, b, outputs, rows, losses)}")
    return 0


if __name__ == "__main__":
    from percept.guard import driver_main

    sys.exit(driver_main(main, prog="experiments/vae_mnist/ambiguity.py"))
