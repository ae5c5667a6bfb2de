"""Agreement of metrics with human judgements on BAPPS: 2AFC score, JND mAP, and 2AFC tuning.

Scores (as in the LPIPS reference, ``lpips/trainer.py``):

- **2AFC** per triplet with h the fraction of humans who chose p1 and d0 = d(p0, ref), d1 = d(p1, ref):
  ``1 - h`` if d0 < d1, ``h`` if d1 < d0, 0.5 on a tie; the score of a subset is the mean (in [0, 1]).
  The human ceiling of a triplet is ``h^2 + (1 - h)^2`` (the agreement of two random judges).
- **JND mAP**: sort the pairs by ascending d(p0, p1), use "same" as a soft positive label
  (TP = cumsum(same), FP = cumsum(1 - same)), and take the VOC average precision (sentinels, monotone
  precision envelope, sum of delta-recall x precision). Ties in distance keep dataset order (a stable
  sort; the reference's numpy quicksort leaves their order unspecified).

Harness semantics for percept metrics (:class:`HarnessMetric`):

- patches are RGB in [0, 1]; evaluation calls ``metric(input=p0|p1, target=ref)`` (the reference is the
  masking target) and JND ``metric(input=p1, target=p0)``, with the metric's per-image output
  (``reduction="none"``), ``deterministic=True``;
- the grey colour space converts both patches with BT.601 luma (:func:`percept.color.rgb_to_grey`,
  0.299 R + 0.587 G + 0.114 B) to one channel; the original harness used (0.3, 0.59, 0.11) for Watson and,
  for Deeploss, converted after the input normalisation;
- similarities (``higher_is_better``, e.g. PSNR) are negated so that lower always means more similar;
- Watson metrics use percept's per-image luminance masking unless ``batch_luminance=True``, which
  restores the original's mean over the batch (then the batch size matters: the original evaluated in
  unshuffled batches of 128);
- the Czolbe et al. harness mapped Watson inputs with ``(x + 1) / 2`` although its data were already in
  [0, 1] (czolbe.md P3); that mapping is **not** applied here: patches go to every metric in [0, 1].

Tuning (:func:`tune_2afc`, czolbe.md §10.3 and lpips_elpips.md part B): distances d0, d1 of a trainable
metric go through a head that predicts the human preference for p1, trained with BCE against h:

- Watson-DCT/DFT and Adaptive: the *weighted sigmoid* ``sigmoid(exp(w) * (d0 - d1) / (d0 + d1))``
  (0.5 when d0 + d1 <= 0; w starts at 1), lr 2e-4, 10 epochs + 10 with linear decay, no clamping;
- LPIPS / Deeploss linear layers: the *ranked* head (LPIPS ``Dist2LogitLayer``: 1x1 convs 5 -> 32 -> 32 -> 1
  on [d0, d1, d0 - d1, d0 / (d1 + 0.1), d1 / (d0 + 0.1)], LeakyReLU 0.2, sigmoid), lr 1e-4, 5 + 5 epochs,
  linear weights clamped to >= 0 after every step (only the linear weights, never the trunk);
- Adam with betas (0.5, 0.999), batch 50, the training sets concatenated and shuffled; the learning rate
  stays at lr for epochs 1 .. n + 1 and then drops by lr / n_decay per epoch (the reference's update
  after each epoch e > n); dropout 0.5 inside the trainable metric;
- argument order: the original training called ``metric(input=ref, target=p0|p1)`` (masking from the
  distorted patch, czolbe.md P4) while evaluating with the reference as target; ``order="original"``
  (default) reproduces that, ``order="eval"`` trains in the evaluation order;
- a checkpoint (metric parameters, head, optimiser, epoch, RNG states, history) after every epoch;
  ``resume=True`` continues from it. The tuned parameters are written in the format the original
  LossProvider loads (:func:`tuned_state_dict`), under the original file names (:func:`tuned_weight_file`).
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from percept import registry
from percept.color import rgb_to_grey
from percept.data.bapps import (
    SUBSETS_2AFC,
    SUBSETS_JND,
    JNDDataset,
    TwoAFCDataset,
    make_loader,
)

log = logging.getLogger("percept.evaluate")

#: the paper's category averages
DISTORTION_SUBSETS = ("traditional", "cnn")
ALGORITHM_SUBSETS = ("superres", "deblur", "color", "frameinterp")
COLORSPACES = ("rgb", "grey")


# ============================================================================================ scores
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


# =========================================================================================== harness
#: samples per distance when E-LPIPS is evaluated on 2AFC (the E-LPIPS paper's protocol)
ELPIPS_SAMPLES = 50


def metric_family(name: str) -> str | None:
    """ "watson", "lpips", "deeploss", "dps", "adaptive" (the tunable families, by the registry record) or None."""
    rec = registry.record(name)
    return rec.family if rec.tuned_file is not None or rec.family == "dps" else None


def _space(colorspace: str) -> str:
    from percept.checks import normalize_colorspace

    return normalize_colorspace(colorspace, lab=True)  # "lab": RGB patches, the metric converts (l2, ssim)


def tuned_weight_file(name: str, colorspace: str, *, mode: str = "lin", options: Mapping | None = None) -> str:
    """File name of tuned weights: the original's names (``rgb_watson_fft_trial0.pth``,
    ``gray_pnet_lin_vgg_trial0.pth``, ...: the registry record's); LPIPS gets ``rgb_lpips_alex.pth`` etc.; DPS
    ``rgb_dps_alex_<method>[_nonorm][_layers-1-4][_<option>-<value>].pth``.

    ``mode`` "tune" / "scratch" (a trained trunk, see :class:`TuneConfig`) appends ``_tune`` / ``_scratch``
    (the trunk goes to :func:`tuned_trunk_file`); ``options`` (the metric constructor options the weights were
    tuned with, :attr:`TuneConfig.metric_options`) name the variant."""
    key = registry.canonical_name(name)
    if mode not in TUNE_MODES:
        raise ValueError(f"unknown tuning mode {mode!r}: use one of {', '.join(TUNE_MODES)}")
    family = metric_family(key)
    options = dict(options or {})
    tail = "" if mode == "lin" else f"_{mode}"
    if family != "dps" and not (tail or options):
        return registry.tuned_file(key, colorspace)  # the default variant; raises for untunable metrics
    if _space(colorspace) == "lab":
        raise ValueError(f"metric {name!r}: tuned weights exist for colour spaces rgb and grey only, not lab")
    cs = "rgb" if _space(colorspace) == "rgb" else "gray"
    if family == "dps":
        return f"{cs}_dps_{_dps_variant_name(key, options)}{tail}.pth"
    extra = "".join(f"_{k}-{_option_text(v)}" for k, v in sorted(options.items()))
    if family == "deeploss":
        return f"{cs}_pnet_lin_{key.split('-', 1)[1]}{extra}{tail}_trial0.pth"
    if family == "lpips":
        return f"{cs}_lpips_{key.split('-', 1)[1]}{extra}{tail}.pth"
    if family in ("watson", "adaptive"):
        raise ValueError(f"metric {name!r}: only its default variant is tunable (mode 'lin', no options)")
    return registry.tuned_file(key, colorspace)  # raises: no tunable parameters


def tuned_trunk_file(name: str, colorspace: str, *, mode: str, options: Mapping | None = None) -> str:
    """File name of the trained trunk of a "tune" / "scratch" run (a torchvision-layout state dict of the
    kept layers, ``features.0.weight`` ...; loadable as ``backbone_weights``): the weight file's stem + ``_trunk``."""
    if mode == "lin":
        raise ValueError("mode 'lin' keeps the trunk frozen: there is no trained trunk file")
    return tuned_weight_file(name, colorspace, mode=mode, options=options).removesuffix(".pth") + "_trunk.pth"


def _option_text(value) -> str:
    if isinstance(value, (list, tuple)):
        return "-".join(str(v) for v in value)
    return str(value)


def _dps_variant_name(key: str, options: Mapping) -> str:
    """``alex_sort``, ``resnet18_spatial-mean_nonorm_layers-2-4``: a DPS metric's network and options."""
    options = dict(options)
    net = str(options.pop("net", key.split("-", 1)[1]))
    net = {"alexnet": "alex", "vgg16": "vgg", "squeezenet1_1": "squeeze"}.get(net, net)
    parts = [net, str(options.pop("method", "spatial")).replace("+", "-")]
    if not options.pop("channel_norm", True):
        parts.append("nonorm")
    layers = options.pop("layers", None)
    if layers is not None:
        parts.append(f"layers-{_option_text(layers)}")
    parts += [f"{k}-{_option_text(v)}" for k, v in sorted(options.items())]
    return "_".join(parts)


def weight_options(name: str, path: str | Path) -> dict:
    """Constructor option that loads weights from ``path`` for metric ``name`` (the record's ``weights_option``)."""
    rec = registry.record(name)
    if rec.weights_option is None:
        raise ValueError(
            f"metric {rec.name!r} has no option to load weights from a file; tuned weights cannot replace its "
            "shipped ones"
        )
    return {rec.weights_option: str(path)}


class HarnessMetric(nn.Module):
    """A percept metric as the 2AFC harness uses it: RGB patches (N, 3, H, W) in [0, 1] in, (N,) out.

    Converts to grey (BT.601) for ``colorspace="grey"`` (``"lab"``: RGB goes to the metric, which converts it
    to CIELAB itself: l2, ssim, ssim-skimage) and negates similarities, so that lower always
    means "closer to the target". ``metric`` must be built with ``reduction="none"``.
    """

    def __init__(self, metric: nn.Module, name: str, colorspace: str) -> None:
        super().__init__()
        self.metric = metric
        self.name = registry.canonical_name(name)
        self.colorspace = _space(colorspace)
        self.sign = -1.0 if getattr(metric, "higher_is_better", False) else 1.0

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.colorspace == "grey":
            input, target = rgb_to_grey(input), rgb_to_grey(target)
        d = self.metric(input, target)
        if d.numel() != input.shape[0]:
            raise ValueError(f"{self.name}: expected one distance per image, got shape {tuple(d.shape)}")
        d = d.reshape(input.shape[0])
        return -d if self.sign < 0 else d

    def pair(self, p0: torch.Tensor, p1: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(d(p0, target), d(p1, target)), each (N,), for 2AFC.

        A stochastic metric that compares several images under shared draws (E-LPIPS's ``sample_distances``)
        evaluates p0 and p1 under the **same** random transformation and dropout masks in each draw, and
        averages its ``n`` draws: the correlated sampling of the E-LPIPS 2AFC protocol (spec D4), so the
        comparison of d0 and d1 is not drowned in independent noise (identical patches tie exactly). Any
        other metric scores p0 and p1 as one batch of 2N against the target repeated."""
        sample = getattr(self.metric, "sample_distances", None)
        if sample is not None and getattr(self.metric, "stochastic", False):
            if self.colorspace == "grey":
                p0, p1, target = rgb_to_grey(p0), rgb_to_grey(p1), rgb_to_grey(target)
            d = sample((p0, p1), target).mean(dim=0)  # (n, 2, N) -> (2, N)
            d0, d1 = d[0], d[1]
            return (-d0, -d1) if self.sign < 0 else (d0, d1)
        n = p0.shape[0]
        d = self(torch.cat([p0, p1]), torch.cat([target, target]))
        return d[:n], d[n:]

    def extra_repr(self) -> str:
        return f"name={self.name!r}, colorspace={self.colorspace!r}, sign={self.sign:+.0f}"


def build_metric(
    name: str,
    colorspace: str = "rgb",
    *,
    weights: str | Path | None = None,
    batch_luminance: bool = False,
    pretrained: bool = True,
    trainable: bool = False,
    backbone_weights: str | None = None,
    device: torch.device | str = "cpu",
    probe_size: int | None = 64,
    **options,
) -> HarnessMetric:
    """Build registry metric ``name`` for the harness (``reduction="none"``, ``deterministic=True``).

    E-LPIPS is the exception: it is evaluated as its ensemble, ``ELPIPS_SAMPLES`` draws per distance.

    Args:
        weights: a file of tuned weights in the original format (see :func:`tuned_state_dict`), loaded
            instead of the shipped ones.
        batch_luminance: Watson only: the original's batch-pooled luminance masking.
        backbone_weights: metrics with a backbone only (others ignore it): "imagenet", "random" or a checkpoint
            (default: as ``pretrained``).
        probe_size: run the metric once on two random patches of this size, so that a metric that cannot
            take them fails here rather than mid-run (None: skip).
        options: further constructor options of the metric.
    """
    key = registry.canonical_name(name)
    family = metric_family(key)
    opts = dict(colorspace=_space(colorspace), reduction="none", deterministic=True, pretrained=pretrained,
                trainable=trainable)
    if family == "watson":
        opts["batch_luminance"] = batch_luminance
    if registry.record(key).stochastic:
        # E-LPIPS is its random ensemble: the spec's 2AFC protocol averages 50 samples per distance
        opts.update(deterministic=False, n=ELPIPS_SAMPLES)
    if backbone_weights is not None and registry.takes(key, "backbone_weights"):
        opts["backbone_weights"] = backbone_weights
    if weights is not None:
        opts.update(weight_options(key, weights))
    opts.update(options)
    harness = HarnessMetric(registry.get_metric(key, device=device, **opts), key, colorspace)
    if not trainable:
        harness.eval()
    if probe_size:
        g = torch.Generator().manual_seed(0)
        x = torch.rand(2, 3, probe_size, probe_size, generator=g).to(device)
        with torch.no_grad():
            harness(x, x.flip(0))
    return harness


# ========================================================================================= evaluation
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


# ============================================================================================ tuning
class WeightedSigmoidHead(nn.Module):
    """P(humans choose p1) = sigmoid(exp(w) * (d0 - d1) / (d0 + d1)); 0.5 where d0 + d1 <= 0.

    The Czolbe et al. head for Watson and Adaptive; ``w`` starts at 1 and is learned (not saved with
    the metric's weights).
    """

    def __init__(self, w_init: float = 1.0) -> None:
        super().__init__()
        self.w_tild = nn.Parameter(torch.tensor(float(w_init)))

    def forward(self, d0: torch.Tensor, d1: torch.Tensor) -> torch.Tensor:
        den = d0 + d1
        ok = den > 0
        x = torch.where(ok, (d0 - d1) / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(den))
        return torch.sigmoid(torch.exp(self.w_tild) * x)


class RankingHead(nn.Module):
    """LPIPS's ``Dist2LogitLayer``: 1x1 convs 5 -> 32 -> 32 -> 1 (LeakyReLU 0.2, sigmoid) on
    [d0, d1, d0 - d1, d0 / (d1 + eps), d1 / (d0 + eps)], eps = 0.1. Same state-dict keys (``model.*``)."""

    def __init__(self, hidden: int = 32, eps: float = 0.1) -> None:
        super().__init__()
        self.eps = eps
        self.model = nn.Sequential(
            nn.Conv2d(5, hidden, 1, bias=True),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(hidden, hidden, 1, bias=True),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(hidden, 1, 1, bias=True),
            nn.Sigmoid(),
        )

    def forward(self, d0: torch.Tensor, d1: torch.Tensor) -> torch.Tensor:
        d0, d1 = d0.reshape(-1, 1, 1, 1), d1.reshape(-1, 1, 1, 1)
        features = torch.cat((d0, d1, d0 - d1, d0 / (d1 + self.eps), d1 / (d0 + self.eps)), dim=1)
        return self.model(features).reshape(-1)


HEADS: dict[str, type[nn.Module]] = {"weighted-sigmoid": WeightedSigmoidHead, "ranked": RankingHead}
#: head and schedule (lr, epochs at constant lr, epochs of decay) of each family in the reference code;
#: DPS: Sjögren et al.'s ``experiment.py`` (Adam lr 1e-3, constant for 5 epochs, then factors 1.0 .. 0.2)
FAMILY_DEFAULTS = {
    "watson": ("weighted-sigmoid", 2e-4, 10, 10),
    "adaptive": ("weighted-sigmoid", 2e-4, 10, 10),
    "lpips": ("ranked", 1e-4, 5, 5),
    "deeploss": ("ranked", 1e-4, 5, 5),
    "dps": ("ranked", 1e-3, 5, 5),
}
#: training batch size of each family's reference (the LPIPS trainer: 50; Sjögren et al.: 256)
FAMILY_BATCH = {"dps": 256}
#: what is trained (LPIPS's variants, lpips_elpips.md A7): "lin" the linear layers on a frozen ImageNet
#: trunk; "tune" the trunk too, from ImageNet weights; "scratch" the trunk too, from a random initialisation
TUNE_MODES = ("lin", "tune", "scratch")
#: families with a trunk that "tune" / "scratch" can train
TRUNK_FAMILIES = ("lpips", "deeploss", "dps")


def lr_at_epoch(epoch: int, lr: float, nepoch: int, nepoch_decay: int) -> float:
    """Learning rate of 1-based ``epoch``: lr for epochs 1 .. nepoch + 1, then lower by lr / nepoch_decay
    per epoch (the reference decays after each epoch e > nepoch), lr / nepoch_decay in the last epoch."""
    if nepoch_decay <= 0:
        return lr
    return lr * (1.0 - max(0, epoch - nepoch - 1) / nepoch_decay)


def lin_layers(metric: nn.Module) -> list[nn.Conv2d]:
    """The LPIPS-style linear 1x1 layers of a deep metric (``metric.distance.lins``), else []."""
    distance = getattr(metric, "distance", None)
    lins = getattr(distance, "lins", None)
    return list(lins) if lins is not None else []


@torch.no_grad()
def clamp_lin_weights_(metric: nn.Module) -> None:
    """Clamp the linear layers' weights to >= 0 (only those: a frozen trunk's 1x1 convs are left alone)."""
    for conv in lin_layers(metric):
        conv.weight.clamp_(min=0)


def tuned_state_dict(metric: nn.Module, name: str) -> dict:
    """The tuned parameters in the format the original LossProvider loads.

    Watson: ``original_state_dict()`` (``t_tild``, ``alpha``, ... or ``ly.``/``lcb.``/``lcr.`` keys and
    ``w_tild`` for RGB); LPIPS / Deeploss / DPS: ``lin{i}.model.1.weight`` of shape (1, C, 1, 1) (DPS: i runs
    over the branches, then the layers); Adaptive: ``.robust_loss.adaptive_lossfun.latent_alpha`` /
    ``latent_scale`` of shape (1, 3*H*W). A trained trunk is saved apart (:func:`trunk_state_dict`).
    """
    family = metric_family(name)
    if family == "watson":
        return {k: v.detach().cpu().clone() for k, v in metric.original_state_dict().items()}
    if family in ("lpips", "deeploss", "dps"):
        return {f"lin{i}.model.1.weight": c.weight.detach().cpu().clone() for i, c in enumerate(lin_layers(metric))}
    if family == "adaptive":
        if getattr(metric, "layout", "original") != "original":
            raise ValueError("only Adaptive(layout='original') has the original weight format")
        prefix = ".robust_loss.adaptive_lossfun."
        return {
            prefix + "latent_alpha": metric.latent_alpha.detach().cpu().reshape(1, -1).clone(),
            prefix + "latent_scale": metric.latent_scale.detach().cpu().reshape(1, -1).clone(),
        }
    raise ValueError(f"metric {name!r} has no tunable parameters")


def metric_trunk(metric: nn.Module):
    """The feature extractor of a deep metric (``metric.distance.backbone``); ValueError for other metrics."""
    trunk = getattr(getattr(metric, "distance", None), "backbone", None)
    if trunk is None or not hasattr(trunk, "body"):
        raise ValueError(f"{type(metric).__name__} has no trunk (a deep-feature backbone) to train")
    return trunk


def unfreeze_trunk_(metric: nn.Module) -> None:
    """Let the trunk of a deep metric train ("tune" / "scratch"): its parameters require grad and it follows
    ``.train()`` (batch-norm statistics update, as in the references; AlexNet, VGG and SqueezeNet have none)."""
    trunk = metric_trunk(metric)
    trunk.frozen = False
    trunk.requires_grad_(True)


def trunk_state_dict(metric: nn.Module) -> dict:
    """The trunk's kept layers as a torchvision-layout state dict (``features.0.weight``, ...; the keys of the
    full model), loadable as ``backbone_weights`` by LPIPS / Deeploss / DPS (and torchvision, non-strictly)."""
    trunk = metric_trunk(metric)
    out = {}
    for key, value in trunk.body.state_dict().items():
        index, rest = key.split(".", 1)
        out[f"{trunk.prefixes[int(index)]}.{rest}"] = value.detach().cpu().contiguous().clone()
    return out


@dataclass
class TuneConfig:
    """One 2AFC tuning run; ``None`` fields take the reference values of the metric's family.

    ``mode`` (:data:`TUNE_MODES`, deep metrics only): "lin" trains the linear layers on a frozen trunk (the
    default, and the only mode of Watson and Adaptive); "tune" trains the trunk with them, starting from
    ``backbone_weights`` (default ImageNet; LPIPS ``--train_trunk``); "scratch" trains a randomly initialised
    trunk with them (LPIPS ``--from_scratch --train_trunk``; Sjögren et al.'s ``scratch`` variant).
    ``metric_options``: further constructor options of the metric, e.g. a DPS ``method``, ``channel_norm``,
    ``layers`` or ``net`` (any torchvision network); they name the output files.
    """

    metric: str
    colorspace: str = "rgb"
    head: str | None = None
    lr: float | None = None
    nepoch: int | None = None
    nepoch_decay: int | None = None
    batch_size: int | None = None
    beta1: float = 0.5
    order: str = "original"
    batch_luminance: bool = False
    backbone_weights: str | None = None
    lin_init: str = "default"
    seed: int = 0
    train_subsets: tuple[str, ...] = SUBSETS_2AFC["train"]
    resize: str = "pil-bilinear"
    limit: int | None = None
    mode: str = "lin"
    metric_options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.metric = registry.canonical_name(self.metric)
        self.colorspace = _space(self.colorspace)
        family = metric_family(self.metric)
        if family is None:
            raise ValueError(
                f"metric {self.metric!r} has nothing to tune; tunable: watson-dct, watson-dft, adaptive, lpips-*, "
                "deeploss-*, dps-*"
            )
        head, lr, nepoch, decay = FAMILY_DEFAULTS[family]
        self.head = self.head or head
        self.lr = lr if self.lr is None else float(self.lr)
        self.nepoch = nepoch if self.nepoch is None else int(self.nepoch)
        self.nepoch_decay = decay if self.nepoch_decay is None else int(self.nepoch_decay)
        self.batch_size = FAMILY_BATCH.get(family, 50) if self.batch_size is None else int(self.batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        self.train_subsets = tuple(self.train_subsets)
        if self.mode not in TUNE_MODES:
            raise ValueError(f"unknown tuning mode {self.mode!r}: use one of {', '.join(TUNE_MODES)}")
        if self.mode != "lin" and family not in TRUNK_FAMILIES:
            raise ValueError(
                f"mode {self.mode!r} trains a deep metric's trunk; {self.metric} has none (use mode 'lin')"
            )
        if self.backbone_weights is None:
            self.backbone_weights = "random" if self.mode == "scratch" else "imagenet"
        self.backbone_weights = str(self.backbone_weights)
        if self.mode == "scratch" and self.backbone_weights != "random":
            raise ValueError(
                f"mode 'scratch' starts from a random trunk; got backbone_weights={self.backbone_weights!r}"
            )
        if self.mode == "tune" and self.backbone_weights == "random":
            raise ValueError("mode 'tune' fine-tunes a trained trunk; a random trunk trained is mode 'scratch'")
        self.metric_options = _plain_options(self.metric_options)
        if self.head not in HEADS:
            raise ValueError(f"unknown head {self.head!r}: use one of {', '.join(HEADS)}")
        if self.order not in ("original", "eval"):
            raise ValueError(f"unknown order {self.order!r}: 'original' (input=ref) or 'eval' (target=ref)")
        if self.lin_init not in ("default", "ones"):
            raise ValueError(f"unknown lin_init {self.lin_init!r}: 'default' (PyTorch conv init) or 'ones'")

    @property
    def epochs(self) -> int:
        return self.nepoch + self.nepoch_decay

    @property
    def tag(self) -> str:
        """Folder name of the run: ``<metric>_<colorspace>``, plus the variant's options and the mode (not "lin")."""
        name = self.metric
        if metric_family(self.metric) == "dps":
            name = f"dps-{_dps_variant_name(self.metric, self.metric_options)}"
        elif self.metric_options:
            name += "".join(f"_{k}-{_option_text(v)}" for k, v in sorted(self.metric_options.items()))
        return f"{name}_{self.colorspace}" + ("" if self.mode == "lin" else f"_{self.mode}")

    @property
    def weight_file(self) -> str:
        return tuned_weight_file(self.metric, self.colorspace, mode=self.mode, options=self.metric_options)

    @property
    def trunk_file(self) -> str | None:
        if self.mode == "lin":
            return None
        return tuned_trunk_file(self.metric, self.colorspace, mode=self.mode, options=self.metric_options)


def _plain_options(options: Mapping) -> dict:
    """Metric options as JSON-like values (tuples to lists), so that they compare equal after a checkpoint."""
    out = {}
    for k, v in dict(options or {}).items():
        if isinstance(v, tuple):
            v = list(v)
        if not isinstance(v, (str, int, float, bool, list, type(None))):
            raise ValueError(f"metric option {k}={v!r}: only plain values (str, number, bool, list) can be recorded")
        out[str(k)] = v
    return out


CHECKPOINT_FORMAT = "percept-2afc-tuning/1"
#: configuration fields added after the first checkpoints were written, with the value those runs had
_CONFIG_ADDED = {"mode": "lin", "metric_options": {}}


def build_tunable(config: TuneConfig, device: torch.device | str = "cpu") -> HarnessMetric:
    """The metric of ``config`` with trainable parameters at their initial values (reference init)."""
    torch.manual_seed(config.seed)
    options = dict(config.metric_options)
    if metric_family(config.metric) == "dps":
        options["lin"] = True  # DPS is uncalibrated unless asked for its linear layers
    harness = build_metric(
        config.metric,
        config.colorspace,
        pretrained=False,
        trainable=True,
        batch_luminance=config.batch_luminance,
        backbone_weights=config.backbone_weights,
        device=device,
        probe_size=None,
        **options,
    )
    if config.lin_init == "default":
        for conv in lin_layers(harness.metric):
            conv.reset_parameters()  # PyTorch's default (signed) init, as the reference; clamped after a step
    if config.mode != "lin":
        unfreeze_trunk_(harness.metric)
    if not any(p.requires_grad for p in harness.parameters()):
        raise ValueError(f"{config.metric} has no trainable parameters with trainable=True")
    return harness


def _trainable_state(module: nn.Module) -> dict:
    return {k: p.detach().cpu().clone() for k, p in module.named_parameters() if p.requires_grad}


def _load_trainable_state(module: nn.Module, state: Mapping) -> None:
    params = dict(module.named_parameters())
    missing = [k for k, p in params.items() if p.requires_grad and k not in state]
    if missing or any(k not in params for k in state):
        raise ValueError(f"checkpoint parameters do not match the metric (missing {missing[:4]})")
    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(v)


def _write_history(path: Path, history: list[dict]) -> None:
    if not history:
        return
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(history)


def tune_optimizer(harness: nn.Module, head: nn.Module, config: TuneConfig) -> torch.optim.Adam:
    """Adam (betas (beta1, 0.999), lr ``config.lr``) over every parameter that requires grad: the metric's
    (linear layers; with mode "tune" / "scratch" the trunk too) and the head's, as the references' optimisers."""
    params = [p for p in harness.parameters() if p.requires_grad] + list(head.parameters())
    return torch.optim.Adam(params, lr=config.lr, betas=(config.beta1, 0.999))


def tune_step(
    harness: nn.Module,
    head: nn.Module,
    optimizer: torch.optim.Optimizer,
    ref: torch.Tensor,
    p0: torch.Tensor,
    p1: torch.Tensor,
    judge: torch.Tensor,
    *,
    order: str = "original",
) -> tuple[float, float]:
    """One training step on a batch of triplets (each (N, 3, H, W) in [0, 1]; judge (N,) in [0, 1]):
    BCE(head(d0, d1), judge), an optimiser step, then the linear weights clamped to >= 0 (only those, as
    Sjögren et al. and the spec's faithful LPIPS re-trainer). Returns (summed loss, summed training accuracy)
    over the batch; the accuracy is the reference's: a tie counts as choosing p0."""
    if order == "original":
        d0, d1 = harness(ref, p0), harness(ref, p1)
    else:
        d0, d1 = harness(p0, ref), harness(p1, ref)
    loss = nn.functional.binary_cross_entropy(head(d0, d1), judge)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    clamp_lin_weights_(harness.metric)
    with torch.no_grad():
        acc = torch.where(d1 < d0, judge, 1 - judge).sum().item()
    return loss.item() * judge.shape[0], acc


def tune_2afc(
    config: TuneConfig,
    root: str | Path | None,
    out_dir: str | Path,
    *,
    resume: bool = False,
    device: torch.device | str = "cpu",
    workers: int = 0,
    progress: bool = True,
    max_batches: int | None = None,
    until_epoch: int | None = None,
) -> dict:
    """Tune a metric's parameters on the 2AFC training sets (see the module docstring).

    Writes ``out_dir/checkpoints/last.pt`` (every epoch), ``out_dir/history.csv`` and the tuned weights
    ``out_dir/<tuned_weight_file>`` (every epoch; the latest is the result, as in the reference); modes
    "tune" and "scratch" also the trained trunk, ``out_dir/<tuned_trunk_file>``.

    Args:
        root: BAPPS root (with ``2afc/train/<subset>``).
        resume: continue from ``checkpoints/last.pt`` when it exists (its configuration must match).
        max_batches: stop each epoch after this many batches (quick runs and tests).
        until_epoch: stop after this epoch (as if interrupted; ``resume=True`` continues).

    Returns ``{"weights": path, "trunk": path or None, "checkpoint": path, "history": [...], "config": {...}}``.
    """
    from percept.data.bapps import twoafc_train_set
    from percept.runinfo import atomic_save, get_rng_state, set_rng_state

    out_dir = Path(out_dir)
    ckpt_path = out_dir / "checkpoints" / "last.pt"
    weights_path = out_dir / config.weight_file
    trunk_path = out_dir / config.trunk_file if config.trunk_file else None
    device = torch.device(device)

    harness = build_tunable(config, device)
    head = HEADS[config.head]().to(device)
    optimizer = tune_optimizer(harness, head, config)
    loader_gen = torch.Generator().manual_seed(config.seed)
    history: list[dict] = []
    start = 1
    if resume and ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{ckpt_path} is not a 2AFC tuning checkpoint ({CHECKPOINT_FORMAT})")
        saved, now = state["config"], _config_dict(config)
        diff = {
            k: (saved.get(k, _CONFIG_ADDED.get(k)), v)
            for k, v in now.items()
            if saved.get(k, _CONFIG_ADDED.get(k)) != v
        }
        if diff:
            raise ValueError(
                f"{ckpt_path} was written with a different configuration {diff} (saved, now); resume with the same "
                "flags or use another output folder"
            )
        _load_trainable_state(harness, state["metric"])
        head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"], loader_gen)
        history = list(state["history"])
        start = int(state["epoch"]) + 1
        log.info("resuming %s from epoch %d", config.tag, start)
    elif ckpt_path.is_file():
        log.warning("%s exists and is overwritten (pass resume=True / --resume to continue it)", ckpt_path)

    data = twoafc_train_set(root, config.train_subsets, resize=config.resize, limit=config.limit)
    loader = make_loader(data, config.batch_size, shuffle=True, workers=workers, generator=loader_gen, device=device)
    last = config.epochs if until_epoch is None else min(config.epochs, until_epoch)
    for epoch in range(start, last + 1):
        lr = lr_at_epoch(epoch, config.lr, config.nepoch, config.nepoch_decay)
        for group in optimizer.param_groups:
            group["lr"] = lr
        harness.train()
        head.train()
        total_loss, total_acc, seen = 0.0, 0.0, 0
        bar = tqdm(loader, desc=f"tune {config.tag} epoch {epoch}/{config.epochs}", disable=not progress, leave=False)
        for i, batch in enumerate(bar):
            if max_batches is not None and i >= max_batches:
                break
            ref, p0, p1 = _to(batch, ("ref", "p0", "p1"), device)
            judge = batch["judge"].to(device).float().reshape(-1)
            loss, acc = tune_step(harness, head, optimizer, ref, p0, p1, judge, order=config.order)
            total_loss += loss
            total_acc += acc
            seen += judge.shape[0]
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{total_acc / seen:.3f}")
        if seen == 0:
            raise ValueError("the training set is empty")
        if not math.isfinite(total_loss):
            raise FloatingPointError(f"{config.tag}: the loss became {total_loss} in epoch {epoch}")
        history.append({"epoch": epoch, "lr": lr, "loss": total_loss / seen, "acc": total_acc / seen, "triplets": seen})
        harness.eval()
        atomic_save(tuned_state_dict(harness.metric, config.metric), weights_path)
        if trunk_path is not None:
            atomic_save(trunk_state_dict(harness.metric), trunk_path)
        atomic_save(
            {
                "format": CHECKPOINT_FORMAT,
                "config": _config_dict(config),
                "epoch": epoch,
                "metric": _trainable_state(harness),
                "head": {k: v.detach().cpu() for k, v in head.state_dict().items()},
                "optimizer": optimizer.state_dict(),
                "rng": get_rng_state(loader_gen),
                "history": history,
            },
            ckpt_path,
        )
        _write_history(out_dir / "history.csv", history)
    if not weights_path.is_file():  # resumed a finished run: write the result again
        atomic_save(tuned_state_dict(harness.metric, config.metric), weights_path)
    if trunk_path is not None and not trunk_path.is_file():
        atomic_save(trunk_state_dict(harness.metric), trunk_path)
    return {
        "weights": weights_path,
        "trunk": trunk_path,
        "checkpoint": ckpt_path,
        "history": history,
        "config": _config_dict(config),
    }


def _config_dict(config: TuneConfig) -> dict:
    d = asdict(config)
    d["train_subsets"] = list(d["train_subsets"])
    d["metric_options"] = dict(d["metric_options"])
    return d


__all__ = [
    "DISTORTION_SUBSETS",
    "ALGORITHM_SUBSETS",
    "twoafc_scores",
    "twoafc_score",
    "human_agreement",
    "voc_ap",
    "jnd_precision_recall",
    "jnd_map",
    "metric_family",
    "tuned_weight_file",
    "tuned_trunk_file",
    "weight_options",
    "HarnessMetric",
    "build_metric",
    "twoafc_distances",
    "jnd_distances",
    "BAPPSResult",
    "evaluate_bapps",
    "merge_rows",
    "WeightedSigmoidHead",
    "RankingHead",
    "HEADS",
    "FAMILY_DEFAULTS",
    "FAMILY_BATCH",
    "TUNE_MODES",
    "lr_at_epoch",
    "lin_layers",
    "clamp_lin_weights_",
    "tuned_state_dict",
    "metric_trunk",
    "unfreeze_trunk_",
    "trunk_state_dict",
    "TuneConfig",
    "build_tunable",
    "tune_optimizer",
    "tune_step",
    "tune_2afc",
]
