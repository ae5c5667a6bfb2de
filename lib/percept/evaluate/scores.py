"""Agreement of distances with human judgements on BAPPS: the 2AFC score and the JND mAP.

>>> from percept.evaluate import jnd_map, twoafc_score
>>> twoafc_score([0.1, 0.5], [0.3, 0.2], judge=[0.25, 0.75])   # d0 < d1 scores 1 - h, d1 < d0 scores h
0.75
>>> jnd_map([0.1, 0.2, 0.9], same=[1.0, 1.0, 0.0])              # the "same" pairs ranked first: mAP 1
1.0

Scores (as in the LPIPS reference, ``lpips/trainer.py``):

- **2AFC** per triplet with h the fraction of humans who chose p1 and d0 = d(p0, ref), d1 = d(p1, ref):
  ``1 - h`` if d0 < d1, ``h`` if d1 < d0, 0.5 on a tie; the score of a subset is the mean (in [0, 1]).
  The human ceiling of a triplet is ``h^2 + (1 - h)^2`` (the agreement of two random judges).
- **JND mAP**: sort the pairs by ascending d(p0, p1), use "same" as a soft positive label
  (TP = cumsum(same), FP = cumsum(1 - same)), and take the VOC average precision (sentinels, monotone
  precision envelope, sum of delta-recall x precision). Ties in distance keep dataset order (a stable
  sort; the reference's numpy quicksort leaves their order unspecified).

Inputs are array-likes or tensors of any shape (flattened to float64); NaN or inf distances are an error.
"""

from __future__ import annotations

import numpy as np
import torch


def _flat(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64).reshape(-1)


def twoafc_scores(d0, d1, judge) -> np.ndarray:
    """Per-triplet agreement with the humans: ``1 - h`` if d0 < d1, ``h`` if d1 < d0, 0.5 on a tie.

    Args:
        d0, d1: distances of p0 and p1 to the reference, shape (N,) (lower = closer).
        judge: h, the fraction of humans who chose p1 as closer, shape (N,), in [0, 1].
    """
    d0, d1, h = _flat(d0), _flat(d1), _flat(judge)
    if not (len(d0) == len(d1) == len(h)):
        raise ValueError(f"d0, d1 and judge have different lengths: {len(d0)}, {len(d1)}, {len(h)}")
    if not (np.isfinite(d0).all() and np.isfinite(d1).all()):
        raise ValueError("2AFC distances contain NaN or inf")
    return (d0 < d1) * (1.0 - h) + (d1 < d0) * h + (d0 == d1) * 0.5


def twoafc_score(d0, d1, judge) -> float:
    """Mean of :func:`twoafc_scores`, in [0, 1] (the paper reports it x 100)."""
    return float(np.mean(twoafc_scores(d0, d1, judge)))


def human_agreement(judge) -> np.ndarray:
    """The human ceiling per triplet, ``h^2 + (1 - h)^2``: the chance that two random judges agree."""
    h = _flat(judge)
    return h**2 + (1.0 - h) ** 2


def voc_ap(recall, precision) -> float:
    """VOC average precision (the non-11-point form): sentinels (recall 0 and 1, precision 0), the
    precision envelope made non-increasing from the right, and sum of delta-recall x precision over the
    points where recall changes."""
    mrec = np.concatenate(([0.0], _flat(recall), [1.0]))
    mpre = np.concatenate(([0.0], _flat(precision), [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def jnd_precision_recall(d, same) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall of "same" along pairs sorted by ascending distance (soft labels)."""
    d, same = _flat(d), _flat(same)
    if len(d) != len(same):
        raise ValueError(f"{len(d)} distances for {len(same)} 'same' values")
    if not np.isfinite(d).all():
        raise ValueError("JND distances contain NaN or inf")
    order = np.argsort(d, kind="stable")
    s = same[order]
    tp = np.cumsum(s)
    fp = np.cumsum(1.0 - s)
    fn = np.sum(s) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / (tp + fp)
        recall = tp / (tp + fn)
    return precision, recall


def jnd_map(d, same) -> float:
    """JND mAP in [0, 1]: VOC AP of "same" when pairs are ranked by ascending distance ``d``."""
    precision, recall = jnd_precision_recall(d, same)
    return voc_ap(recall, precision)


__all__ = ["twoafc_scores", "twoafc_score", "human_agreement", "voc_ap", "jnd_precision_recall", "jnd_map"]
