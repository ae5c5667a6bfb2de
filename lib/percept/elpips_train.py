"""Training E-LPIPS's linear weights on BAPPS 2AFC: the reference's ``train_run.py`` (lpips_elpips.md D4).

The E-LPIPS authors retrained the per-channel linear weights of their networks (the 14-tap average-pooled
VGG-16 of E-LPIPS-VGG, the 10-tap SqueezeNet, and their own LPIPS-VGG / LPIPS-SqueezeNet) with a TensorFlow
trainer that differs from LPIPS's (lpips_elpips.md part B) and from Czolbe et al.'s (:mod:`percept.evaluate`):

- **the network**: the chosen configuration (:data:`METRICS`) with the ImageNet trunk frozen and the linear
  weights trainable, **starting at zero**; the random transformations and the network dropout are **off**, as
  in the reference ("no input transformations for training the metrics"; ``transforms`` turns them on, with
  one draw per batch shared by p0, p1 and ref); ``lpips_dropout`` (the reference's ``--use_dropout``) is a
  dropout of p = 0.5 on the squared feature differences, shared by the compared images;
- **distances**: d0 = d(p0, ref) and d1 = d(p1, ref) evaluated as one correlated tuple;
- **the head** G (:class:`percept.evaluate.RankingHead`: 1x1 convs 5 -> 32 -> 32 -> 1, LeakyReLU 0.2, on
  [d0, d1, d0 - d1, d0 / (d1 + 0.1), d1 / (d0 + 0.1)]) with He-initialised weights (truncated normal of
  std sqrt(1.3 * 2 / fan_in), TF's ``variance_scaling_initializer``) and zero biases;
- **the loss**, symmetrised so that the prediction cannot prefer an argument order:
  ``0.5 * [BCE(G(d0, d1), h) + BCE(G(d1, d0), 1 - h)]`` with h the fraction of humans who chose p1;
- **Adam** with betas (0.9, 0.999) (the reference's comment: "original code used beta1 = 0.5"), lr 1e-4 for
  epochs 1 .. nepoch + 1, then lower by lr / nepoch_decay per epoch (5 + 5 epochs), times a **warm-up**
  factor ``clip((step - 50) / 50, 0, 1)`` over the global step (no update for the first 50 steps, a linear
  ramp over the next 50);
- after every step the linear weights are clamped to >= 0; batch 50, the three training sets shuffled
  together, full batches only (the reference's graph has a static batch size);
- the result: ``<name>-latest.npy``, a pickled dict ``{"lin{k}.model.1.weight": (1, 1, C, 1) float32}``
  clamped to >= 0, the format of the shipped ``vgg_full_avg.npy`` etc. (readable by the reference and by
  :class:`percept.metrics.elpips.ELPIPS` ``(lin_weights=path)``), written at the end of every epoch.

The training accuracy logged is the reference's: the mean of h where d1 < d0, else 1 - h (a tie counts as
choosing p0). Patches are read with the E-LPIPS loader's non-antialiased bilinear resize (``bilinear-noaa``),
which recovers the stored 64 x 64 content of BAPPS's nearest-upscaled files.

>>> from percept.elpips_train import ElpipsTrainConfig, train_elpips
>>> summary = train_elpips(ElpipsTrainConfig(metric="elpips_squeeze"), "data/bapps", "runs/squeeze")  # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from percept.evaluate import RankingHead, lr_at_epoch
from percept.runinfo import atomic_save, get_rng_state, set_rng_state, write_csv

__all__ = [
    "METRICS",
    "CHECKPOINT_FORMAT",
    "ElpipsTrainConfig",
    "canonical_metric",
    "build_trainable",
    "init_head",
    "warmup_factor",
    "step_learning_rate",
    "symmetric_ranking_loss",
    "reference_accuracy",
    "lin_weights_dict",
    "save_lin_weights",
    "train_elpips",
]

#: the reference's metric names -> (net, percept config): see :data:`percept.metrics.elpips.CONFIGS`
METRICS: dict[str, tuple[str, str]] = {
    "elpips_vgg": ("vgg", "elpips"),
    "elpips_squeeze_maxpool": ("squeeze", "elpips"),
    "lpips_vgg": ("vgg", "lpips"),
    "lpips_squeeze": ("squeeze", "lpips"),
}
_ALIASES = {"elpips_squeeze": "elpips_squeeze_maxpool", "elpips": "elpips_vgg"}
CHECKPOINT_FORMAT = "percept-elpips-train/1"


def canonical_metric(name: str) -> str:
    """The reference's spelling (``elpips_vgg``, ``elpips_squeeze_maxpool``, ``lpips_vgg``, ``lpips_squeeze``)
    of ``name``; dashes and percept's ``elpips-squeeze`` are accepted."""
    key = str(name).strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in METRICS:
        raise ValueError(f"unknown E-LPIPS training metric {name!r}: use one of {', '.join(METRICS)}")
    return key


@dataclass
class ElpipsTrainConfig:
    """One training run; the defaults are the reference's ``train_run.py``."""

    metric: str = "elpips_vgg"
    name: str = ""
    transforms: str = "none"  # "none" (the reference), "all", or a comma list of percept.metrics.elpips_sampling.TRANSFORMS
    net_dropout: bool = False  # the ensemble's dropout inside the network (off in the reference's training)
    lpips_dropout: bool = False  # the reference's --use_dropout
    lr: float = 1e-4
    beta1: float = 0.9
    nepoch: int = 5
    nepoch_decay: int = 5
    batch_size: int = 50
    warmup: int = 50  # no update for `warmup` steps, then a linear ramp over `warmup` steps
    drop_last: bool = True
    train_subsets: tuple[str, ...] = ("traditional", "cnn", "mix")
    resize: str = "bilinear-noaa"
    limit: int | None = None
    seed: int = 0
    backbone_weights: str = "imagenet"

    def __post_init__(self) -> None:
        self.metric = canonical_metric(self.metric)
        self.name = self.name or self.metric
        if not self.name.replace("-", "_").replace(".", "_").isidentifier():
            raise ValueError(f"run name {self.name!r}: use letters, digits, '-', '_' and '.'")
        self.train_subsets = tuple(self.train_subsets)
        for key in ("nepoch", "nepoch_decay", "warmup"):
            if int(getattr(self, key)) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.nepoch + self.nepoch_decay < 1:
            raise ValueError("nepoch + nepoch_decay must be at least 1")
        if int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        self.transform_names()  # validates

    @property
    def net(self) -> str:
        return METRICS[self.metric][0]

    @property
    def config(self) -> str:
        return METRICS[self.metric][1]

    @property
    def epochs(self) -> int:
        return self.nepoch + self.nepoch_decay

    def transform_names(self) -> tuple[str, ...]:
        from percept.metrics.elpips_sampling import TRANSFORMS

        text = str(self.transforms).strip().lower()
        if text in ("none", "", "off"):
            return ()
        if text in ("all", "on"):
            return tuple(TRANSFORMS)
        names = [t.strip() for t in text.split(",") if t.strip()]
        unknown = [t for t in names if t not in TRANSFORMS]
        if unknown:
            raise ValueError(f"transforms {self.transforms!r}: unknown {unknown}; use none, all or a comma list of "
                             f"{', '.join(TRANSFORMS)}")
        return tuple(n for n in TRANSFORMS if n in names)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["train_subsets"] = list(d["train_subsets"])
        return d


# ---------------------------------------------------------------------------------------------- model
def build_trainable(config: ElpipsTrainConfig, device: torch.device | str = "cpu"):
    """The E-LPIPS network of ``config`` with its ImageNet trunk frozen and zero linear weights that require
    grad; transformations and network dropout as configured (off: the reference)."""
    from percept.metrics.elpips import ELPIPS

    transforms = config.transform_names()
    deterministic = not transforms and not config.net_dropout
    options = dict(net=config.net, config=config.config, reduction="none", pretrained=False, trainable=True,
                   backbone_weights=config.backbone_weights, deterministic=deterministic)
    if not deterministic:
        options.update(transforms=transforms, net_dropout=config.net_dropout)
    metric = ELPIPS(**options)
    with torch.no_grad():
        for w in metric.lins:
            w.zero_()
    metric.train(config.lpips_dropout)  # only the LPIPS dropout on the differences depends on the mode
    return metric.to(device)


def init_head(head: RankingHead, generator: torch.Generator | None = None) -> RankingHead:
    """TF's ``variance_scaling_initializer()`` for every 1x1 conv of the head (truncated normal, std
    sqrt(1.3 * 2 / fan_in), cut at 2 std) and zero biases, as the reference's ``BCERankingLoss``."""
    with torch.no_grad():
        for m in head.modules():
            if isinstance(m, nn.Conv2d):
                std = math.sqrt(1.3 * 2.0 / m.in_channels)
                w = torch.empty(m.weight.shape)
                nn.init.trunc_normal_(w, std=std, a=-2 * std, b=2 * std, generator=generator)
                m.weight.copy_(w)
                m.bias.zero_()
    return head


def warmup_factor(step: int, warmup: int = 50) -> float:
    """``clip((step - warmup) / warmup, 0, 1)`` for the 0-based global step (1 when ``warmup`` is 0)."""
    if warmup <= 0:
        return 1.0
    return min(1.0, max(0.0, (step - warmup) / warmup))


def step_learning_rate(config: ElpipsTrainConfig, epoch: int, step: int) -> float:
    """The learning rate of global step ``step`` (0-based) in 1-based ``epoch``."""
    return lr_at_epoch(epoch, config.lr, config.nepoch, config.nepoch_decay) * warmup_factor(step, config.warmup)


def symmetric_ranking_loss(head: nn.Module, d0: torch.Tensor, d1: torch.Tensor, judge: torch.Tensor) -> torch.Tensor:
    """``0.5 * [BCE(G(d0, d1), h) + BCE(G(d1, d0), 1 - h)]``, each BCE a mean over the batch."""
    judge = judge.reshape(-1).to(d0.dtype)
    p01 = head(d0, d1).clamp(1e-7, 1 - 1e-7)
    p10 = head(d1, d0).clamp(1e-7, 1 - 1e-7)
    return 0.5 * (F.binary_cross_entropy(p01, judge) + F.binary_cross_entropy(p10, 1.0 - judge))


def reference_accuracy(d0: torch.Tensor, d1: torch.Tensor, judge: torch.Tensor) -> torch.Tensor:
    """The reference's training accuracy: mean of h where d1 < d0, else 1 - h (a tie counts as p0)."""
    judge = judge.reshape(-1).to(d0.dtype)
    return torch.where(d1 < d0, judge, 1.0 - judge).mean()


# ------------------------------------------------------------------------------------------ weights
def lin_weights_dict(metric) -> dict[str, np.ndarray]:
    """The linear weights in E-LPIPS's file layout: ``{"lin{k}.model.1.weight": (1, 1, C, 1) float32}``,
    clamped to >= 0 (as the reference saves them)."""
    return {
        f"lin{k}.model.1.weight": np.maximum(0.0, w.detach().float().cpu().numpy()).reshape(1, 1, -1, 1)
        for k, w in enumerate(metric.lins)
    }


def save_lin_weights(weights: Mapping[str, np.ndarray], path: str | Path) -> Path:
    """``np.save(path, dict)`` (the E-LPIPS format, a pickled dict) to a temporary file renamed over ``path``."""
    from percept.guard import atomic_output

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, "wb") as f:
        np.save(f, dict(weights), allow_pickle=True)
    return path


# ----------------------------------------------------------------------------------------- training
def _write_csv(path: Path, rows: list[dict]) -> None:
    if rows:
        write_csv(path, rows, list(rows[0]))


def train_elpips(
    config: ElpipsTrainConfig,
    root: str | Path | None,
    out_dir: str | Path,
    *,
    device: torch.device | str = "cpu",
    workers: int = 0,
    resume: bool = False,
    max_batches: int | None = None,
    until_epoch: int | None = None,
    log_every: int = 10,
    progress: bool = True,
) -> dict:
    """Train the linear weights of ``config`` on ``root``'s ``2afc/train/<subsets>`` (see the module docstring).

    Writes into ``out_dir``: ``<name>-latest.npy`` (every epoch), ``history.csv`` (per epoch: lr, mean loss
    and accuracy, triplets, seconds), ``steps.csv`` (every ``log_every`` steps: step, epoch, lr, loss,
    accuracy) and ``checkpoints/last.pt`` (weights, head, optimiser, step, RNG states) from which
    ``resume=True`` continues with the same configuration.

    Args:
        max_batches: stop each epoch after this many batches (quick runs and tests).
        until_epoch: stop after this epoch (as if interrupted).

    Returns ``{"weights": path, "checkpoint": path, "history": [...], "config": {...}, "metric": module}``.
    """
    from percept.data.bapps import make_loader, twoafc_train_set

    out_dir = Path(out_dir)
    ckpt_path = out_dir / "checkpoints" / "last.pt"
    weights_path = out_dir / f"{config.name}-latest.npy"
    device = torch.device(device)

    torch.manual_seed(config.seed)
    metric = build_trainable(config, device)
    head = init_head(RankingHead(), torch.Generator().manual_seed(config.seed)).to(device)
    params = list(metric.lins) + list(head.parameters())
    optimizer = torch.optim.Adam(params, lr=config.lr, betas=(config.beta1, 0.999))
    loader_gen = torch.Generator().manual_seed(config.seed)
    draw_gen = torch.Generator().manual_seed(config.seed + 1)
    history: list[dict] = []
    steps_log: list[dict] = []
    start_epoch, step = 1, 0
    if resume and ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{ckpt_path} is not an E-LPIPS training checkpoint ({CHECKPOINT_FORMAT})")
        saved, now = state["config"], config.as_dict()
        diff = {k: (saved.get(k), v) for k, v in now.items() if saved.get(k) != v}
        if diff:
            raise ValueError(f"{ckpt_path} was written with another configuration {diff} (saved, now): resume with "
                             "the same flags or use another output folder")
        with torch.no_grad():
            for w, v in zip(metric.lins, state["lins"], strict=True):
                w.copy_(v)
        head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"], loader_gen)
        draw_gen.set_state(state["draw_rng"])
        history, steps_log = list(state["history"]), list(state["steps"])
        start_epoch, step = int(state["epoch"]) + 1, int(state["step"])
    elif ckpt_path.is_file():
        raise FileExistsError(f"{ckpt_path} exists: pass resume=True (--resume) to continue it, or use another folder")

    data = twoafc_train_set(root, config.train_subsets, resize=config.resize, limit=config.limit)
    loader = make_loader(data, config.batch_size, shuffle=True, workers=workers, generator=loader_gen, device=device)
    last = config.epochs if until_epoch is None else min(config.epochs, until_epoch)
    smooth = [0.0, 0.0]  # the reference's smoothed loss: c <- 0.995 c + loss, w <- 0.995 w + 1
    for epoch in range(start_epoch, last + 1):
        t0 = time.perf_counter()
        head.train()
        metric.train(config.lpips_dropout)
        totals = {"loss": 0.0, "acc": 0.0, "batches": 0, "triplets": 0}
        bar = tqdm(loader, desc=f"{config.name} epoch {epoch}/{config.epochs}", disable=not progress, leave=False)
        for i, batch in enumerate(bar):
            if max_batches is not None and i >= max_batches:
                break
            n = batch["judge"].shape[0]
            if config.drop_last and n < config.batch_size:
                continue  # the reference's static batch: no partial batch
            ref, p0, p1 = (batch[k].to(device) for k in ("ref", "p0", "p1"))
            judge = batch["judge"].to(device).float().reshape(-1)
            lr = step_learning_rate(config, epoch, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            d = metric.sample_distances((p0, p1), ref, n=1, generator=draw_gen)[0]  # (2, N): one shared draw
            d0, d1 = d[0], d[1]
            loss = symmetric_ranking_loss(head, d0, d1, judge)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{config.name}: the loss became {float(loss.detach())} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                for w in metric.lins:
                    w.clamp_(min=0)
                acc = float(reference_accuracy(d0, d1, judge))
            value = float(loss.detach())
            smooth = [0.995 * smooth[0] + value, 0.995 * smooth[1] + 1.0]
            totals["loss"] += value
            totals["acc"] += acc
            totals["batches"] += 1
            totals["triplets"] += n
            if step % max(1, log_every) == 0:
                steps_log.append({"step": step, "epoch": epoch, "lr": lr, "loss": value, "acc": acc,
                                  "smooth_loss": smooth[0] / smooth[1]})
            step += 1
            bar.set_postfix(loss=f"{smooth[0] / smooth[1]:.4f}", acc=f"{acc:.3f}")
        if totals["batches"] == 0:
            raise ValueError(
                f"no full batch of {config.batch_size} triplets in {root} ({len(data)} triplets): use a smaller "
                "batch size or more data")
        history.append({
            "epoch": epoch,
            "lr": lr_at_epoch(epoch, config.lr, config.nepoch, config.nepoch_decay),
            "loss": totals["loss"] / totals["batches"],
            "acc": totals["acc"] / totals["batches"],
            "steps": step,
            "triplets": totals["triplets"],
            "seconds": time.perf_counter() - t0,
        })
        save_lin_weights(lin_weights_dict(metric), weights_path)
        atomic_save({
            "format": CHECKPOINT_FORMAT,
            "config": config.as_dict(),
            "epoch": epoch,
            "step": step,
            "lins": [w.detach().cpu().clone() for w in metric.lins],
            "head": {k: v.detach().cpu() for k, v in head.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "rng": get_rng_state(loader_gen),
            "draw_rng": draw_gen.get_state(),
            "history": history,
            "steps": steps_log,
        }, ckpt_path)
        _write_csv(out_dir / "history.csv", history)
        _write_csv(out_dir / "steps.csv", steps_log)
    if not weights_path.is_file():  # resumed a finished run
        save_lin_weights(lin_weights_dict(metric), weights_path)
    metric.eval()
    return {"weights": weights_path, "checkpoint": ckpt_path, "history": history, "config": config.as_dict(),
            "metric": metric}
