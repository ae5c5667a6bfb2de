"""Distances of metrics over BAPPS and their scores: :func:`evaluate_bapps` (every 2AFC and JND val subset),
the loops behind it (:func:`twoafc_distances`, :func:`jnd_distances`) and the CSV merge of result rows.

>>> from percept.evaluate import build_metric, evaluate_bapps, merge_rows
>>> metrics = {("l2", "rgb"): build_metric("l2"), ("watson-dft", "grey"): build_metric("watson-dft", "grey")}  # doctest: +SKIP
>>> result = evaluate_bapps(metrics, "data/bapps", limit=100)  # doctest: +SKIP
>>> rows = merge_rows("results/x/scores.csv", result.scores, ["metric", "colorspace", "subset", "score"],
...                   key=["metric", "colorspace", "subset"])  # doctest: +SKIP

The 2AFC score of each subset is :func:`percept.evaluate.scores.twoafc_score` of ``d(p0, ref)``,
``d(p1, ref)`` and the human judgements, next to the human ceiling; the JND mAP is
:func:`percept.evaluate.scores.jnd_map` of ``d(p1, p0)`` and "same". The paper's category averages are over
:data:`DISTORTION_SUBSETS` and :data:`ALGORITHM_SUBSETS`.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from percept.data.bapps import SUBSETS_2AFC, SUBSETS_JND, JNDDataset, TwoAFCDataset, make_loader
from percept.evaluate.scores import human_agreement, jnd_map, twoafc_score

#: the paper's category averages
DISTORTION_SUBSETS = ("traditional", "cnn")
ALGORITHM_SUBSETS = ("superres", "deblur", "color", "frameinterp")
COLORSPACES = ("rgb", "grey")


def _to(batch: dict, keys: Sequence[str], device) -> list[torch.Tensor]:
    return [batch[k].to(device, non_blocking=True) for k in keys]


@torch.no_grad()
def twoafc_distances(
    metrics: Mapping, loader: Iterable, *, device: torch.device | str = "cpu", desc: str = "2afc", progress=True
) -> tuple[dict, np.ndarray]:
    """Distances d0 = m(p0, ref), d1 = m(p1, ref) of every metric over a loader of 2AFC triplets.

    Returns ``({key: (d0, d1)}, judge)`` as float64 numpy arrays in loader order. p0 and p1 go through a
    metric in one batch of 2N against the reference repeated twice (for a batch-pooled Watson the pooled
    mean over [ref, ref] is that over ref); E-LPIPS evaluates them under shared random draws
    (:meth:`HarnessMetric.pair`).
    """
    d0 = {k: [] for k in metrics}
    d1 = {k: [] for k in metrics}
    judges = []
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
        ref, p0, p1 = _to(batch, ("ref", "p0", "p1"), device)
        n = ref.shape[0]
        for k, m in metrics.items():
            if hasattr(m, "pair"):
                a, b = m.pair(p0, p1, ref)
            else:  # a plain callable: one batch of 2N
                d = m(torch.cat([p0, p1]), torch.cat([ref, ref]))
                a, b = d[:n], d[n:]
            d0[k].append(a.double().cpu())
            d1[k].append(b.double().cpu())
        judges.append(batch["judge"].double().reshape(-1))
    judge = torch.cat(judges).numpy() if judges else np.zeros(0)
    return {k: (torch.cat(d0[k]).numpy(), torch.cat(d1[k]).numpy()) for k in metrics}, judge


@torch.no_grad()
def jnd_distances(
    metrics: Mapping, loader: Iterable, *, device: torch.device | str = "cpu", desc: str = "jnd", progress=True
) -> tuple[dict, np.ndarray]:
    """Distances m(input=p1, target=p0) of every metric over a loader of JND pairs; ``({key: d}, same)``."""
    ds = {k: [] for k in metrics}
    sames = []
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
        p0, p1 = _to(batch, ("p0", "p1"), device)
        for k, m in metrics.items():
            ds[k].append(m(p1, p0).double().cpu())
        sames.append(batch["same"].double().reshape(-1))
    same = torch.cat(sames).numpy() if sames else np.zeros(0)
    return {k: torch.cat(v).numpy() for k, v in ds.items()}, same


@dataclass
class BAPPSResult:
    """Rows of ``scores.csv`` (metric, colorspace, subset, score) and ``jnd.csv`` (metric, colorspace,
    subset, map); ``human`` rows carry colorspace "n/a". ``details`` holds per-subset counts and the raw
    distances when requested."""

    scores: list[dict] = field(default_factory=list)
    jnd: list[dict] = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    distances: dict = field(default_factory=dict)


def evaluate_bapps(
    metrics: Mapping[tuple[str, str], Callable],
    root: str | Path | None,
    *,
    subsets: Sequence[str] = SUBSETS_2AFC["val"],
    jnd_subsets: Sequence[str] = SUBSETS_JND["val"],
    batch_size: int = 128,
    workers: int = 0,
    resize: str = "pil-bilinear",
    limit: int | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
    keep_distances: bool = False,
) -> BAPPSResult:
    """2AFC score of every metric on each val subset (plus the human ceiling) and JND mAP.

    ``metrics`` maps (name, colorspace) to a harness callable (see :func:`build_metric`). Each subset is
    read once, in sorted order, and every metric scores the same batches.
    """
    result = BAPPSResult()
    for subset in tqdm(subsets, desc="2AFC subsets", disable=not progress):
        data = TwoAFCDataset(root, "val", subset, resize=resize, limit=limit)
        loader = make_loader(data, batch_size, workers=workers, device=device)
        dists, judge = twoafc_distances(metrics, loader, device=device, desc=f"2afc val/{subset}", progress=progress)
        result.counts[f"2afc/val/{subset}"] = len(judge)
        result.scores.append(
            {"metric": "human", "colorspace": "n/a", "subset": subset, "score": float(human_agreement(judge).mean())}
        )
        for (name, cs), (d0, d1) in dists.items():
            result.scores.append(
                {"metric": name, "colorspace": cs, "subset": subset, "score": twoafc_score(d0, d1, judge)}
            )
            if keep_distances:
                result.distances[("2afc", name, cs, subset)] = (d0, d1, judge)
    for subset in tqdm(jnd_subsets, desc="JND subsets", disable=not progress):
        data = JNDDataset(root, subset, resize=resize, limit=limit)
        loader = make_loader(data, batch_size, workers=workers, device=device)
        dists, same = jnd_distances(metrics, loader, device=device, desc=f"jnd val/{subset}", progress=progress)
        result.counts[f"jnd/val/{subset}"] = len(same)
        for (name, cs), d in dists.items():
            result.jnd.append({"metric": name, "colorspace": cs, "subset": subset, "map": jnd_map(d, same)})
            if keep_distances:
                result.distances[("jnd", name, cs, subset)] = (d, same)
    return result


def merge_rows(path: str | Path, rows: list[dict], columns: Sequence[str], key: Sequence[str]) -> list[dict]:
    """Write ``rows`` to CSV ``path``, keeping existing rows whose ``key`` columns are not among the new ones."""
    path = Path(path)
    new_keys = {tuple(str(r[k]) for k in key) for r in rows}
    kept = []
    if path.is_file():
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                if tuple(r.get(k, "") for k in key) not in new_keys:
                    kept.append({c: r.get(c, "") for c in columns})
    merged = kept + [{c: r[c] for c in columns} for r in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        for r in merged:
            writer.writerow({c: (f"{r[c]:.6f}" if isinstance(r[c], float) else r[c]) for c in columns})
    tmp.replace(path)
    return merged


__all__ = [
    "DISTORTION_SUBSETS",
    "ALGORITHM_SUBSETS",
    "COLORSPACES",
    "twoafc_distances",
    "jnd_distances",
    "BAPPSResult",
    "evaluate_bapps",
    "merge_rows",
]
