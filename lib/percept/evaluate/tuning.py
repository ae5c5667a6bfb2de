"""2AFC tuning of a metric's parameters on the BAPPS training sets: :class:`TuneConfig` and :func:`tune_2afc`.

>>> from percept.evaluate import TuneConfig, tune_2afc
>>> cfg = TuneConfig("watson-dft", "rgb")              # the family's reference head and schedule
>>> cfg.head, cfg.lr, cfg.epochs, cfg.batch_size
('weighted-sigmoid', 0.0002, 20, 50)
>>> result = tune_2afc(cfg, "data/bapps", "results/x/watson-dft_rgb")  # doctest: +SKIP
>>> result["weights"]  # doctest: +SKIP
PosixPath('results/x/watson-dft_rgb/rgb_watson_fft_trial0.pth')

Czolbe et al. §10.3 (czolbe.md) and lpips_elpips.md part B: distances d0, d1 of a trainable metric go
through a head that predicts the human preference for p1, trained with BCE against h:

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
  LossProvider loads (:func:`percept.evaluate.weights.tuned_state_dict`), under the original file names
  (:func:`percept.evaluate.weights.tuned_weight_file`).
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from percept import registry
from percept.data.bapps import SUBSETS_2AFC, make_loader
from percept.evaluate.bapps import _to
from percept.evaluate.harness import HarnessMetric, _space, build_metric, metric_family
from percept.evaluate.weights import (
    TUNE_MODES,
    _dps_variant_name,
    _option_text,
    clamp_lin_weights_,
    lin_layers,
    trunk_state_dict,
    tuned_state_dict,
    tuned_trunk_file,
    tuned_weight_file,
    unfreeze_trunk_,
)

log = logging.getLogger("percept.evaluate")


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
#: families with a trunk that "tune" / "scratch" can train
TRUNK_FAMILIES = ("lpips", "deeploss", "dps")


def lr_at_epoch(epoch: int, lr: float, nepoch: int, nepoch_decay: int) -> float:
    """Learning rate of 1-based ``epoch``: lr for epochs 1 .. nepoch + 1, then lower by lr / nepoch_decay
    per epoch (the reference decays after each epoch e > nepoch), lr / nepoch_decay in the last epoch."""
    if nepoch_decay <= 0:
        return lr
    return lr * (1.0 - max(0, epoch - nepoch - 1) / nepoch_decay)



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
    "WeightedSigmoidHead",
    "RankingHead",
    "HEADS",
    "FAMILY_DEFAULTS",
    "FAMILY_BATCH",
    "TRUNK_FAMILIES",
    "lr_at_epoch",
    "TuneConfig",
    "CHECKPOINT_FORMAT",
    "build_tunable",
    "tune_optimizer",
    "tune_step",
    "tune_2afc",
]
