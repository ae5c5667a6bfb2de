"""Loss-network grid of Pihlgren et al. 2023: 14 architectures x 4 extraction layers, as a metric and as a loss.

"A Systematic Performance Analysis of Deep Perceptual Loss Networks Breaks Transfer Learning Conventions"
(spec dps_analysis.md §3). Every cell (architecture, layer) is one single-layer deep perceptual network,
used in two studies:

- ``metric`` (their benchmark B1, perceptual similarity): the frozen "baseline" DPS metric of that one layer
  (spatial comparison, channel-normalised features: LPIPS without linear weights; ``--metric-norms raw`` adds
  the un-normalised features), scored by 2AFC on the BAPPS val subsets (mean over the 6 subsets, unweighted,
  as their aggregator) and by JND mAP (traditional and cnn pooled, as their code; per subset too);
- ``loss`` (their benchmark B2, super-resolution, reduced): a short training of the small super-resolution
  network of ``experiments/super_resolution`` with that layer's raw-feature MSE as the only loss (their SR loss:
  un-normalised [0, 1] input, no channel normalisation), scored on held-out faces by PSNR, SSIM, LPIPS-alex and
  LPIPS-squeeze.
  Pixel L2 and bicubic interpolation are written as reference rows.

::

    python experiments/pihlgren_grid/run.py                                   # the 56 cells, both studies
    python experiments/pihlgren_grid/run.py --studies metric --archs alexnet squeezenet1_1
    python experiments/pihlgren_grid/run.py --studies loss --archs vgg16 --layers 8 15   # indices of children
    python experiments/pihlgren_grid/run.py --metric-norms channel raw        # also the un-normalised metric
    python experiments/pihlgren_grid/run.py --quick                           # ~1 minute: 3 archs, SYNTHETIC 2AFC

Architectures and layers (``percept.backbones.PIHLGREN_LAYERS``, their ``layers_in_experiments``): layer k is
the output of child k of the network flattened as their ``FeatureExtractor`` does (``features`` for AlexNet /
VGG / SqueezeNet / DenseNet / EfficientNet, the whole model for ResNet / ResNeXt / GoogLeNet / Inception-v3;
GoogLeNet's and Inception's ``transform_input`` is bypassed, as in their code). An architecture this
torchvision cannot build, or a layer it does not have, stops the run before any cell is computed.

Weights (``--weights``): ``auto`` (default) uses ImageNet weights where the asset folder or torch's hub cache
has them (offline here: AlexNet and SqueezeNet 1.1 only) and otherwise torchvision's random initialisation
(``torch.manual_seed(--seed)`` before each build, so the cells of one architecture share the same random
network); ``imagenet`` makes a missing file an error; ``random`` uses random networks throughout. Every row's
``weights`` column says which one it used; random-network rows are **not** the paper's loss networks.

Data: BAPPS from ``--data`` (default ``data/bapps``, ``make data-bapps``). Without it the metric study needs
``--synthetic`` (implied by ``--quick``): a SYNTHETIC BAPPS-layout folder (asset photographs, software
distortions, simulated judges) whose scores say nothing about human agreement; the ``data`` column says
"SYNTHETIC". The loss study uses CelebA (offline: **REDUCED CelebA (10k half-res)**), x4.

Outputs in ``--out`` (default ``results/pihlgren_grid/``): ``metric.csv`` and ``loss.csv``, one row per cell,
written as each architecture finishes (the metric study reads the data once per architecture) or as each
cell finishes (loss study); a rerun skips cells already there (key: architecture, layer, norm, weights), so an
interrupted grid resumes. ``run.json`` holds each study's protocol (a rerun with another protocol into the same
folder is refused) and machine info.

Expected runtime: metric study on the full BAPPS val (36.4k triplets, 9.6k JND pairs), 14 architectures: the
data are read 14 times (~5 ms per triplet per worker), about 1-2 days on 2 CPU cores, ~1 h on a GPU with
``--workers 8``. Loss study at the default 500 steps: ~1-10 min per cell on 2 CPU cores (AlexNet fast,
EfficientNet-B7 and VGG-19 slow), a few hours for the 56 cells; minutes on a GPU.

Not covered: their variants lin / tune / scratch (trained on BAPPS train), the delineation (B3) and
autoencoder (B4) benchmarks, and the multi-layer metrics.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

import percept
from percept import assets
from percept.backbones import PIHLGREN_LAYERS, canonical_arch, flatten_children, imagenet_checkpoint
from percept.data import bapps
from percept.evaluate import HarnessMetric, evaluate_bapps, jnd_map
from percept.guard import RunError, RunLock, add_run_flags, driver_main
from percept.runinfo import machine_info, select_device, write_json

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DEFAULT_OUT = ROOT / "results" / "pihlgren_grid"
log = logging.getLogger("pihlgren_grid")

#: the paper's 14 architectures in the order of their table (spec §3.1)
ARCHS = tuple(PIHLGREN_LAYERS)
#: readable names of the paper's layers (spec dps_analysis.md §3.1, derived from the torchvision module order)
PAPER_LAYER_NAMES: dict[str, tuple[str, ...]] = {
    "alexnet": ("relu1", "relu2", "relu3", "relu5"),
    "vgg11": ("relu1_1", "relu2_1", "relu3_2", "relu5_2"),
    "vgg16": ("relu1_2", "relu2_2", "relu3_3", "relu5_3"),
    "vgg16_bn": ("relu1_2", "relu2_2", "relu3_3", "relu5_3"),
    "vgg19": ("relu1_2", "relu2_2", "relu3_4", "relu5_4"),
    "densenet121": ("relu0", "denseblock1", "denseblock2", "denseblock4"),
    "resnet18": ("stem relu", "layer1", "layer2", "layer4"),
    "resnet50": ("stem relu", "layer1", "layer2", "layer4"),
    "resnext50_32x4d": ("stem relu", "layer1", "layer2", "layer4"),
    "googlenet": ("conv1", "inception3a", "inception4a", "inception5b"),
    "inception_v3": ("Conv2d_2b_3x3", "Mixed_5b", "Mixed_5d", "Mixed_6e"),
    "squeezenet1_1": ("relu1", "fire2", "fire5", "fire9"),
    "efficientnet_b0": ("stem", "stage1", "stage4", "stage7"),
    "efficientnet_b7": ("stem", "stage1", "stage4", "stage7"),
}
QUICK_ARCHS = ["alexnet", "squeezenet1_1", "resnet18"]
QUICK_LIMIT = 24
CELL_COLUMNS = ["arch", "layer", "position", "layer_name", "module", "channels", "weights", "imagenet_top1", "norm"]


def load_sr_module():
    """``experiments/super_resolution/sr.py`` (network, FeatureLoss, training and scoring) as a module."""
    name = "percept_experiments_sr"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / "super_resolution" / "sr.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


sr = load_sr_module()


# ===================================================================================== cells, weights
def imagenet_top1(arch: str) -> float:
    """torchvision's ImageNet top-1 accuracy (%) of the IMAGENET1K_V1 weights (what the paper correlates with)."""
    from torchvision.models import get_model_weights

    enum = get_model_weights(arch)
    weights = getattr(enum, "IMAGENET1K_V1", None) or enum.DEFAULT
    return float(weights.meta["_metrics"]["ImageNet-1K"]["acc@1"])


def count_children(arch: str) -> int:
    """Number of loss-network children of ``arch`` (built on the meta device, no weights)."""
    from torchvision.models import get_model

    kwargs = {"aux_logits": True, "init_weights": False} if arch in ("googlenet", "inception_v3") else {}
    with torch.device("meta"):
        model = get_model(arch, weights=None, **kwargs)
    return len(flatten_children(model, arch))


def plan_cells(archs: list[str], layers: list[int] | None) -> list[tuple[str, int, int | None]]:
    """(arch, layer index, position 1-4 in the paper's list or None) for every cell; raises RunError for an
    architecture torchvision cannot build here or a layer it does not have."""
    import torchvision

    cells = []
    for name in archs:
        try:
            arch = canonical_arch(name)
        except ValueError as err:
            raise RunError(f"--archs {name}: torchvision {torchvision.__version__} cannot build it here: {err}") from None
        if layers is None and arch not in PIHLGREN_LAYERS:
            raise RunError(
                f"--archs {name}: not one of the paper's 14 architectures ({', '.join(ARCHS)}); give its layers "
                "with --layers"
            )
        try:
            n = count_children(arch)
        except Exception as err:  # a constructor that fails in this torchvision
            raise RunError(f"--archs {name}: torchvision {torchvision.__version__} cannot build {arch}: {err}") from None
        chosen = list(PIHLGREN_LAYERS[arch]) if layers is None else list(layers)
        bad = [k for k in chosen if not 0 <= k < n]
        if bad:
            raise RunError(f"{arch} has children 0..{n - 1}; --layers {bad} do not exist")
        paper = PIHLGREN_LAYERS.get(arch, ())
        for k in sorted(set(chosen)):
            cells.append((arch, k, paper.index(k) + 1 if k in paper else None))
    return cells


def resolve_weights(arch: str, mode: str) -> str:
    """"imagenet" or "random" for ``arch`` under ``--weights mode`` (auto: ImageNet where the file exists)."""
    if mode == "random":
        return "random"
    try:
        imagenet_checkpoint(arch)
        return "imagenet"
    except assets.MissingAssetError:
        if mode == "imagenet":
            raise
        return "random"


def cell_metric(arch: str, layer: int, norm: str, weights: str, seed: int) -> torch.nn.Module:
    """The frozen single-layer DPS metric of one cell, (N,) distances of [0, 1] images.

    ``norm="channel"``: channel-normalised features (LPIPS's baseline, the paper's metric); ``"raw"``: the
    features themselves. Both: ImageNet-normalised input, squared difference summed over channels and
    averaged over positions.
    """
    if norm not in ("channel", "raw"):
        raise ValueError(f"norm must be 'channel' or 'raw', got {norm!r}")
    torch.manual_seed(seed)  # the same random network for every cell of an architecture
    return percept.get_metric(
        "dps", net=arch, layers=(layer,), method="spatial", channel_norm=norm == "channel",
        backbone_weights=weights, reduction="none",
    ).eval()


def cell_loss(arch: str, layer: int, norm: str, weights: str, seed: int, input_norm: str) -> torch.nn.Module:
    """The training loss of one cell: :class:`sr.FeatureLoss` (raw: the paper's feature MSE)."""
    torch.manual_seed(seed)
    return sr.FeatureLoss(arch, layer, weights=weights, input_norm=input_norm, channel_norm=norm == "channel")


def cell_info(arch: str, layer: int, position: int | None, norm: str, weights: str, backbone) -> dict:
    names = PAPER_LAYER_NAMES.get(arch)
    return {
        "arch": arch,
        "layer": layer,
        "position": position or "",
        "layer_name": names[position - 1] if names and position else "",
        "module": backbone.layer_names[0],
        "channels": backbone.channels[0],
        "weights": weights,
        "imagenet_top1": imagenet_top1(arch) if weights == "imagenet" else "",
        "norm": norm,
    }


# ========================================================================================== CSV files
def _key(row: dict) -> tuple[str, str, str, str]:
    return (str(row["arch"]), str(row["layer"]), str(row["norm"]), str(row["weights"]))


def read_done(path: Path) -> set:
    """Keys (arch, layer, norm, weights) of the cells already in a study's CSV."""
    if not path.is_file():
        return set()
    with open(path, newline="") as f:
        return {_key(r) for r in csv.DictReader(f)}


class RowWriter:
    """Appends rows to a CSV (header on creation), flushed after every row."""

    def __init__(self, path: Path, columns: list[str]):
        self.path, self.columns = path, columns
        if path.is_file():
            with open(path, newline="") as f:
                header = next(csv.reader(f), None)
            if header != columns:
                raise RunError(f"{path} has the columns {header}, this run writes {columns}: use another --out")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w", newline="") as f:
                csv.writer(f, lineterminator="\n").writerow(columns)

    def write(self, row: dict) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns, lineterminator="\n").writerow(
                {c: (f"{row[c]:.6f}" if isinstance(row[c], float) else row[c]) for c in self.columns}
            )


# ======================================================================================== metric study
def metric_columns(subsets: list[str], jnd_subsets: list[str]) -> list[str]:
    cols = CELL_COLUMNS + ["data", "n_triplets", "2afc_mean"] + [f"2afc_{s}" for s in subsets]
    if jnd_subsets:
        cols += ["jnd_pooled"] + [f"jnd_{s}" for s in jnd_subsets]
    return cols


def run_metric_study(args, cells, weights_of: dict, root: Path, data_label: str, out: Path, device) -> int:
    """Score every pending cell; rows are written when an architecture's cells are done. Returns rows written."""
    columns = metric_columns(args.subsets, args.jnd_subsets)
    writer = RowWriter(out / "metric.csv", columns)
    done = read_done(out / "metric.csv")
    written = 0
    for arch in dict.fromkeys(a for a, _, _ in cells):
        w = weights_of[arch]
        pending = [(k, pos, norm) for a, k, pos in cells if a == arch for norm in args.metric_norms
                   if (arch, str(k), norm, w) not in done]
        if not pending:
            continue
        metrics, infos = {}, {}
        for k, pos, norm in pending:
            m = cell_metric(arch, k, norm, w, args.seed)
            label = f"{arch}:{k}:{norm}"
            metrics[(label, "rgb")] = HarnessMetric(m, "dps", "rgb").to(device).eval()
            infos[label] = cell_info(arch, k, pos, norm, w, m.backbone)
        print(f"metric study: {arch} ({w}) layers {[k for k, _, _ in pending]} ...", flush=True)
        result = evaluate_bapps(
            metrics, root, subsets=args.subsets, jnd_subsets=args.jnd_subsets, batch_size=args.batch_size,
            workers=args.workers, limit=args.limit, device=device, progress=not args.no_progress,
            keep_distances=True,
        )
        for label, info in infos.items():
            scores = {r["subset"]: r["score"] for r in result.scores if r["metric"] == label}
            row = {**info, "data": data_label, "n_triplets": sum(
                v for k, v in result.counts.items() if k.startswith("2afc/"))}
            row["2afc_mean"] = float(np.mean([scores[s] for s in args.subsets]))
            row.update({f"2afc_{s}": scores[s] for s in args.subsets})
            if args.jnd_subsets:
                parts = [result.distances[("jnd", label, "rgb", s)] for s in args.jnd_subsets]
                row["jnd_pooled"] = jnd_map(np.concatenate([d for d, _ in parts]), np.concatenate([s for _, s in parts]))
                row.update({f"jnd_{r['subset']}": r["map"] for r in result.jnd if r["metric"] == label})
            writer.write(row)
            written += 1
            print(f"  {label}: 2AFC {100 * row['2afc_mean']:.2f}", flush=True)
    return written


# ========================================================================================== loss study
LOSS_COLUMNS = CELL_COLUMNS + [
    "data", "factor", "steps", "tv_weight", "n_test", "psnr", "psnr_se", "ssim", "ssim_se", "lpips_alex",
    "lpips_alex_se", "lpips_squeeze", "lpips_squeeze_se", "train_seconds",
]


def run_loss_study(args, cells, weights_of: dict, out: Path, device) -> int:
    """Train and score every pending cell (one row each, written as it finishes), plus the L2 and bicubic rows."""
    writer = RowWriter(out / "loss.csv", LOSS_COLUMNS)
    done = read_done(out / "loss.csv")
    faces = sr.load_faces(args.n_train, args.n_val, args.n_test)
    evaluator = sr.Evaluator(device)
    config = sr.TrainConfig(factor=args.factor, steps=args.loss_steps, batch_size=args.loss_batch_size,
                            lr=args.loss_lr, eval_every=max(1, args.loss_steps), tv_weight=args.loss_tv_weight,
                            seed=args.seed)
    hr = sr.to_float(faces["test"])
    lr = sr.downscale(hr, args.factor)
    base = {"data": faces["label"], "factor": args.factor, "n_test": len(hr), "tv_weight": args.loss_tv_weight}
    written = 0

    def finish(info: dict, scores: dict, steps: int, seconds: float) -> None:
        nonlocal written
        row = {**info, **base, "steps": steps, **sr.summarise(scores), "train_seconds": seconds}
        writer.write(row)
        written += 1
        print(f"  {info['arch']}:{info['layer']} ({info['weights']}): PSNR {row['psnr']:.2f}, SSIM {row['ssim']:.4f}, "
              f"LPIPS-alex {row['lpips_alex']:.4f}, LPIPS-squeeze {row['lpips_squeeze']:.4f}", flush=True)

    empty = dict.fromkeys(CELL_COLUMNS, "")
    if ("bicubic", "", "", "n/a") not in done:
        finish({**empty, "arch": "bicubic", "weights": "n/a"}, evaluator.scores(sr.bicubic_upscale(lr, args.factor), hr),
               0, 0.0)
    if args.l2_reference and ("l2", "", "", "n/a") not in done:
        model, history = sr.train_sr(sr.build_loss("l2", device), faces["train"], faces["val"], config, device=device)
        finish({**empty, "arch": "l2", "weights": "n/a"}, evaluator.scores(sr.predict(model, lr, device), hr),
               args.loss_steps, history[-1]["train_seconds"])
    for arch, k, pos in cells:
        w = weights_of[arch]
        for norm in args.loss_norms:
            if (arch, str(k), norm, w) in done:
                continue
            print(f"loss study: {arch}:{k} ({w}, {norm}) ...", flush=True)
            loss_fn = cell_loss(arch, k, norm, w, args.seed, args.loss_input_norm).to(device).eval()
            model, history = sr.train_sr(loss_fn, faces["train"], faces["val"], config, device=device,
                                         progress=not args.no_progress)
            info = cell_info(arch, k, pos, norm, w, loss_fn.backbone)
            finish(info, evaluator.scores(sr.predict(model, lr, device), hr), args.loss_steps,
                   history[-1]["train_seconds"])
    return written


# ============================================================================================== driver
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--studies", nargs="+", default=["metric", "loss"], choices=["metric", "loss"])
    p.add_argument("--archs", nargs="+", default=None, help="torchvision names (default: the paper's 14)")
    p.add_argument("--layers", nargs="+", type=int, default=None,
                   help="child indices used for every --archs (default: each architecture's 4 paper layers)")
    p.add_argument("--weights", default="auto", choices=["auto", "imagenet", "random"])
    add_run_flags(p, default_out=DEFAULT_OUT.relative_to(ROOT), quick="~1 minute: 3 architectures, SYNTHETIC 2AFC, a few steps")
    m = p.add_argument_group("metric study (BAPPS 2AFC / JND)")
    m.add_argument("--metric-norms", nargs="+", default=["channel"], choices=["channel", "raw"],
                   help="channel: channel-normalised features (the paper's); raw: the features themselves")
    m.add_argument("--data", type=Path, default=None, help=f"BAPPS root (default {bapps.default_root()})")
    m.add_argument("--synthetic", action="store_true",
                   help="without BAPPS: score on a SYNTHETIC BAPPS-layout folder (says nothing about humans)")
    m.add_argument("--subsets", nargs="+", default=list(bapps.SUBSETS_2AFC["val"]))
    m.add_argument("--jnd-subsets", nargs="*", default=list(bapps.SUBSETS_JND["val"]))
    m.add_argument("--limit", type=int, default=None, help="the first N entries of each subset")
    m.add_argument("--batch-size", type=int, default=128)
    m.add_argument("--workers", type=int, default=0, help="DataLoader workers decoding PNGs")
    s = p.add_argument_group("loss study (super-resolution, CelebA)")
    s.add_argument("--loss-norms", nargs="+", default=["raw"], choices=["channel", "raw"],
                   help="raw: the paper's feature MSE; channel: channel-normalised features")
    s.add_argument("--loss-input-norm", default="none", choices=["none", "imagenet"],
                   help="none: [0, 1] images into the network (the paper's SR loss)")
    s.add_argument("--loss-steps", type=int, default=500)
    s.add_argument("--loss-batch-size", type=int, default=16)
    s.add_argument("--loss-lr", type=float, default=1e-3)
    s.add_argument("--loss-tv-weight", type=float, default=0.0,
                   help="total-variation regulariser added to every loss (0: the feature loss alone, as the paper)")
    s.add_argument("--factor", type=int, default=4, choices=sr.FACTORS)
    s.add_argument("--n-train", type=int, default=None)
    s.add_argument("--n-val", type=int, default=100)
    s.add_argument("--n-test", type=int, default=200)
    s.add_argument("--no-l2-reference", dest="l2_reference", action="store_false",
                   help="skip the pixel-L2 reference row")
    return p


def _apply_quick(args) -> None:
    if not args.quick:
        return
    args.archs = args.archs or list(QUICK_ARCHS)
    args.synthetic = True
    args.limit = args.limit or QUICK_LIMIT
    args.loss_steps, args.loss_batch_size = min(args.loss_steps, 4), min(args.loss_batch_size, 8)
    args.n_train, args.n_val, args.n_test = args.n_train or 128, min(args.n_val, 8), min(args.n_test, 16)


def _data_root(args, tmp_holder: list) -> tuple[Path, str]:
    root = bapps.resolve_root(args.data)
    if (root / "2afc" / "val").is_dir():
        return root, "SYNTHETIC (not BAPPS)" if bapps.is_synthetic(root) else "BAPPS"
    if not args.synthetic:
        raise RunError(f"no BAPPS 2AFC data under {root}; {bapps.FETCH_HINT} (or pass --synthetic / --quick)")
    tmp = Path(tempfile.mkdtemp(prefix="percept-pihlgren-synthetic-"))
    tmp_holder.append(tmp)
    n = args.limit or QUICK_LIMIT
    bapps.make_synthetic_bapps(tmp / "bapps", n_val=n, n_train=1, n_jnd=n, val_subsets=args.subsets,
                               train_subsets=(), jnd_subsets=args.jnd_subsets, seed=args.seed)
    return tmp / "bapps", "SYNTHETIC (not BAPPS)"


def _protocols(args, data_label: str | None) -> dict:
    out = {}
    if "metric" in args.studies:
        out["metric"] = {"data": data_label, "subsets": args.subsets, "jnd_subsets": args.jnd_subsets,
                         "limit": args.limit, "seed": args.seed}
    if "loss" in args.studies:
        out["loss"] = {"factor": args.factor, "steps": args.loss_steps, "batch_size": args.loss_batch_size,
                       "lr": args.loss_lr, "tv_weight": args.loss_tv_weight, "input_norm": args.loss_input_norm,
                       "n_train": args.n_train,
                       "n_val": args.n_val, "n_test": args.n_test, "seed": args.seed}
    return out


def _check_protocols(out: Path, protocols: dict) -> dict:
    """The protocols recorded in ``run.json`` must match this run's for the studies it runs."""
    path = out / "run.json"
    old = {}
    if path.is_file():
        try:
            old = json.loads(path.read_text()).get("protocols", {})
        except ValueError:
            old = {}
    for study, proto in protocols.items():
        if study in old and old[study] != proto:
            raise RunError(f"{out} holds {study}-study rows of another protocol ({old[study]}); this run is {proto}: "
                           "write to another --out")
    return {**old, **protocols}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _apply_quick(args)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cells = plan_cells(args.archs or list(ARCHS), args.layers)
    device = select_device(args.device)
    out = args.out or (DEFAULT_OUT / "quick" if args.quick else DEFAULT_OUT)
    weights_of = {arch: resolve_weights(arch, args.weights) for arch in dict.fromkeys(a for a, _, _ in cells)}
    print("weights: " + ", ".join(f"{a} {w}" for a, w in weights_of.items()))
    tmp: list[Path] = []
    try:
        root, data_label = _data_root(args, tmp) if "metric" in args.studies else (None, None)
        if data_label and data_label != "BAPPS":
            print("=" * 90 + f"\nSYNTHETIC 2AFC DATA ({root}): not BAPPS; the metric-study scores say nothing about "
                  "human agreement.\n" + "=" * 90)
        with RunLock(out):
            out.mkdir(parents=True, exist_ok=True)
            protocols = _check_protocols(out, _protocols(args, data_label))
            written = {}
            if "metric" in args.studies:
                written["metric"] = run_metric_study(args, cells, weights_of, root, data_label, out, device)
            if "loss" in args.studies:
                written["loss"] = run_loss_study(args, cells, weights_of, out, device)
            write_json(out / "run.json", {
                "experiment": "pihlgren_grid",
                "protocols": protocols,
                "weights": weights_of,
                "last_args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                "rows_written_last_run": written,
                "machine": machine_info(device),
            })
    finally:
        for t in tmp:
            shutil.rmtree(t, ignore_errors=True)
    print(f"wrote {out}: " + ", ".join(f"{n} new {s} rows" for s, n in written.items()))
    return 0


if __name__ == "__main__":
    sys.exit(driver_main(main, prog="experiments/pihlgren_grid/run.py"))
