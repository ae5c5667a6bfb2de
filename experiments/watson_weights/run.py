"""The tuned parameters of the Watson-DCT / Watson-DFT metrics, grey and RGB (Czolbe et al.'s inspect_weights).

    python experiments/watson_weights/run.py                        # the shipped weights -> results/watson_weights/
    python experiments/watson_weights/run.py --weights results/2afc/tuned/weights --out results/watson_weights/tuned
    python experiments/watson_weights/run.py --quick                # the same (it takes a second)

The original notebook ``inspect_weights.ipynb`` (spec czolbe.md §5, §9, Appendix A) prints, per trained model,
the parameter count of its state dict and the learned parameters: luminance masking alpha, contrast masking
w, pooling beta, the sensitivity (threshold) matrix ``QM`` t, for the DFT the phase weights, and for RGB the
Y/Cb/Cr channel weights. This driver reads them from percept's metrics (``percept.get_metric(...,
pretrained=True)`` or ``weights=`` a tuned file in the original format, through the module's
``original_state_dict()``) and writes them as tables; ``analysis.ipynb`` draws them.

Derived values (as the original evaluates them): t = exp(t_tild) (8 x 8 DCT; 8 x 5 rFFT layout, rows u = 0..7,
columns v = 0..4); w = sigmoid(w_tild); the DFT phase weights exp(w_phase_tild) with the four purely real
coefficients (0,0), (0,4), (4,0), (4,4) set to 0 as at inference (their stored values are kept in
``scalars.csv``); RGB channel weights softmax(w_tild) over (Y, Cb, Cr). The untrained values (``pretrained=
False``: Watson's table, alpha 0.649, w 0.7, beta 4 for the DCT; t = 1, alpha 0.1, w 0.2, beta 1, phase e^-2
for the DFT) are written beside them as source ``initial``.

Outputs (``--out``, default ``results/watson_weights/``): ``matrices.csv`` (source, metric, colorspace, channel,
parameter t|w_phase, u, v, value), ``scalars.csv`` (source, metric, colorspace, channel, alpha, w, beta,
channel_weight, and the stored real-coefficient phase weights), ``counts.csv`` (metric, colorspace, stored
values in the original state dict, learnable parameters), ``run.json`` (weights read, machine info).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

from percept.guard import add_debug_flag, driver_main
from percept.runinfo import machine_info, write_csv, write_json

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "results" / "watson_weights"
METRICS = ("watson-dct", "watson-dft")
COLORSPACES = ("grey", "rgb")
CHANNELS = {"grey": ("grey",), "rgb": ("Y", "Cb", "Cr")}
PREFIXES = {"grey": ("",), "rgb": ("ly.", "lcb.", "lcr.")}
REAL_COEFFICIENTS = ((0, 0), (0, 4), (4, 0), (4, 4))
#: state-dict entries that are fixed, not learned (the block size, the DCT matrix, the YCbCr transform)
FIXED = ("blocksize", "dct.A", "to_YCbCr.transform", "to_YCbCr.bias")



def original_file(metric: str, colorspace: str) -> str:
    """The original's file name: ``{rgb,gray}_watson_{dct,fft}_trial0.pth``."""
    kind = "dct" if metric == "watson-dct" else "fft"
    return f"{'rgb' if colorspace == 'rgb' else 'gray'}_watson_{kind}_trial0.pth"


def build(metric: str, colorspace: str, source: str, weights_dir: Path | None):
    """The metric with its trained (shipped, or ``weights_dir``'s) or initial parameters."""
    import percept

    if source == "initial":
        return percept.get_metric(metric, colorspace=colorspace, pretrained=False)
    if weights_dir is not None:
        path = weights_dir / original_file(metric, colorspace)
        if not path.is_file():
            raise FileNotFoundError(f"no weights {path} (expected the original's file names)")
        return percept.get_metric(metric, colorspace=colorspace, pretrained=False, weights=str(path))
    return percept.get_metric(metric, colorspace=colorspace, pretrained=True)


def extract(state: dict, metric: str, colorspace: str, source: str) -> tuple[list[dict], list[dict]]:
    """(matrix rows, scalar rows) of one original-format state dict."""
    matrices, scalars = [], []
    weights = None
    if colorspace == "rgb":
        weights = torch.softmax(state["w_tild"].double().reshape(3), dim=0).tolist()
    for i, (prefix, channel) in enumerate(zip(PREFIXES[colorspace], CHANNELS[colorspace], strict=True)):
        base = {"source": source, "metric": metric, "colorspace": colorspace, "channel": channel}
        t = torch.exp(state[prefix + "t_tild"].double())
        for (u, v), value in _cells(t):
            matrices.append({**base, "parameter": "t", "u": u, "v": v, "value": value})
        row = {**base,
               "alpha": float(state[prefix + "alpha"]),
               "w": 1.0 / (1.0 + math.exp(-float(state[prefix + "w_tild"]))),
               "beta": float(state[prefix + "beta"]),
               "channel_weight": weights[i] if weights is not None else 1.0}
        if metric == "watson-dft":
            phase = torch.exp(state[prefix + "w_phase_tild"].double())
            for u, v in REAL_COEFFICIENTS:
                row[f"w_phase_stored_{u}{v}"] = float(phase[u, v])
                phase[u, v] = 0.0
            for (u, v), value in _cells(phase):
                matrices.append({**base, "parameter": "w_phase", "u": u, "v": v, "value": value})
        scalars.append(row)
    return matrices, scalars


def _cells(matrix: torch.Tensor):
    for u in range(matrix.shape[0]):
        for v in range(matrix.shape[1]):
            yield (u, v), float(matrix[u, v])


def counts(state: dict, metric: str, colorspace: str) -> dict:
    """Values stored in the original state dict, and the learnable ones (all but :data:`FIXED`)."""
    stored = sum(int(v.numel()) for v in state.values())
    learnable = sum(int(v.numel()) for k, v in state.items() if not any(k.endswith(f) for f in FIXED))
    return {"metric": metric, "colorspace": colorspace, "stored": stored, "learnable": learnable}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=Path, default=None,
                   help="folder of tuned weights with the original's file names (e.g. results/2afc/tuned/weights; "
                        "default: the shipped weights of Czolbe et al.)")
    p.add_argument("--out", type=Path, default=None, help=f"output folder (default {DEFAULT_OUT.relative_to(ROOT)})")
    p.add_argument("--metrics", nargs="+", default=list(METRICS), choices=METRICS)
    p.add_argument("--colorspaces", nargs="+", default=list(COLORSPACES), choices=COLORSPACES)
    p.add_argument("--quick", action="store_true", help="the same run (it takes a second); for symmetry with the others")
    add_debug_flag(p)
    return p


def main(argv: list[str] | None = None) -> int:
    return driver_main(_main, argv, prog="experiments/watson_weights/run.py")


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    out = args.out or DEFAULT_OUT
    out.mkdir(parents=True, exist_ok=True)
    matrices, scalars, count_rows, read = [], [], [], {}
    for metric in args.metrics:
        for cs in args.colorspaces:
            for source in ("trained", "initial"):
                module = build(metric, cs, source, args.weights)
                state = module.original_state_dict()
                m, s = extract(state, metric, cs, source)
                matrices += m
                scalars += s
                if source == "trained":
                    count_rows.append(counts(state, metric, cs))
                    read[f"{metric}/{cs}"] = (str(args.weights / original_file(metric, cs)) if args.weights
                                              else f"shipped: weights/czolbe/{original_file(metric, cs)}")
    write_csv(out / "matrices.csv", matrices)
    write_csv(out / "scalars.csv", scalars)
    write_csv(out / "counts.csv", count_rows)
    write_json(out / "run.json", {"experiment": "watson_weights", "weights": read,
                                  "args": {k: str(v) for k, v in vars(args).items()}, "machine": machine_info("cpu")})
    for row in scalars:
        if row["source"] == "trained":
            print(f"{row['metric']:10s} {row['colorspace']:4s} {row['channel']:4s} alpha {row['alpha']:+.4f}  "
                  f"w {row['w']:.4f}  beta {row['beta']:.4f}  channel weight {row['channel_weight']:.3f}")
    print(f"wrote {out}: matrices.csv, scalars.csv, counts.csv, run.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
