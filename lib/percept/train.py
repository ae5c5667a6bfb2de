"""Train a VAE with any registry metric as its reconstruction loss (Czolbe et al. 2020, spec czolbe.md §11).

The objective per minibatch of N images is the paper's::

    L = lambda * L_rec(recon, x) + KL,      KL = -1/2 * sum_{batch, latent} (1 + logvar - mu^2 - exp(logvar))

with ``lambda = exp(k)`` and L_rec the original LossProvider metric with reduction ``'sum'``. Adam (PyTorch
defaults) over the VAE parameters, lr = 1e-4 * 0.5 ** (epoch / H) with H = 100 (MNIST) or 20 (CelebA),
``drop_last=True`` shuffled batches, seed 0.

>>> from percept.models import build_vae
>>> from percept.data.mnist import load_mnist
>>> from percept.train import TrainConfig, train_vae
>>> cfg = TrainConfig(loss="watson-dft", epochs=250, batch_size=128, lr_halflife=100)
>>> result = train_vae(build_vae("mnist"), load_mnist("train"), load_mnist("test"), cfg, "results/x/watson-dft")

Units: matching the paper's weighting with our registry
-------------------------------------------------------
The registry metrics are called with ``reduction='none'`` (one value per image) and summed here, then
converted to the units the original LossProvider's ``'sum'`` had, so that ``exp(k)`` means what it meant:

* ``l1`` / ``l2``: the registry's per-image value is a **mean** over C*H*W; the original ``nn.MSELoss(sum)``
  summed every element. Factor ``C*H*W`` (1024 for MNIST, 12288 for CelebA).
* ``ssim``: the original ``'sum'`` was ``1 - mean SSIM`` over the batch, a **mean**; ours sums per-image
  values. Factor ``1 / N`` (N = the global minibatch size), applied as a mean over the batch.
* ``watson-*``, ``deeploss-*``, ``adaptive``: the registry per-image value is what the original summed over
  the batch (Watson distance, LPIPS-style distance, summed elementwise NLL). Factor 1.

:func:`loss_weighting` returns this as a :class:`LossWeighting`; ``multiplier = exp(k) * factor``.
The k defaults (:data:`K_EXPONENTS`) are the HEAD values of the original repository (``lambdas="head"``) or
the values of the paper's camera-ready code (``lambdas="paper"``). L2 and L1 were not among the paper's VAE
losses; their k = 0 (lambda = 1 on the per-pixel sum, a unit-variance-style Gaussian likelihood) is our choice.
Other registry metrics default to k = 0 with a warning: choose ``k`` yourself.

The metrics are also built with the options that make them behave as the original's did
(:data:`PAPER_METRIC_OPTIONS`: SSIM with zero padding, Watson with batch-averaged luminance masking and
no luminance floor (the original formula), Adaptive untrained with one parameter per pixel of the model's image size), unless
``metric_style="library"``.

Checkpoints, resume, distributed training
-----------------------------------------
After every epoch ``<out>/checkpoints/last.pt`` is written atomically (temporary file + rename) with the
model, optimiser, scheduler, epoch, the RNG states of every process (torch, CUDA, numpy, python and the
DataLoader generator), the training history and metadata (model name and configuration, loss, k, lambda,
seed). ``best_model.pt`` holds the weights with the lowest test loss (the paper kept those).
``resume=True`` continues from ``last.pt``; an interrupted run resumed this way ends with bit-identical
weights on CPU (``tests/test_vae.py`` checks it). A checkpoint from a different model, model
configuration, loss or k is refused with :class:`CheckpointMismatch`.

Launched with ``torchrun --nproc_per_node G`` the trainer uses DistributedDataParallel (NCCL on GPUs, gloo on
CPU). ``batch_size`` stays the global minibatch (each process takes ``batch_size / G`` images) and the
gradient is that of the global batch's loss, so G processes train the same model as one.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from percept import registry as _registry
from percept.guard import RunError, RunLock, add_debug_flag, atomic_output, clean_stale_temps, driver_main

log = logging.getLogger("percept.train")

#: the reconstruction losses of the paper's VAE comparison, in the order of its figures
PAPER_LOSSES = ("l2", "ssim", "watson-dft", "adaptive", "deeploss-vgg", "deeploss-squeeze")

#: k (lambda = e^k) per model, per version of the original code (spec §11.2, §11.3): the registry records' vae_k
K_EXPONENTS: dict[str, dict[str, dict[str, float]]] = _registry.k_exponents()
#: losses outside the paper's VAE set with a default k chosen here (see the module docstring)
OUR_K = {r.name: r.vae_k_ours for r in _registry.METRICS.values() if r.vae_k_ours is not None}

#: registry per-image value is a mean over C*H*W; the original summed every element
PIXEL_MEAN_METRICS = frozenset(r.name for r in _registry.METRICS.values() if r.units == "pixels")
#: the original's 'sum' was a mean over the batch
BATCH_MEAN_METRICS = frozenset(r.name for r in _registry.METRICS.values() if r.units == "batch-mean")

#: per model: (learning-rate half-life H in epochs, paper epochs, paper batch size)
PAPER_SCHEDULE = {"mnist": (100.0, 250, 128), "celeba": (20.0, 100, 64)}


def _paper_metric_options(image_shape: tuple[int, int, int]) -> dict[str, dict]:
    # the registry records' paper options (Watson: batch-pooled luminance and no floor on dark target blocks,
    # the original formula exactly: the near-zero thresholds of an MNIST digit's black background are what
    # trains it to black)
    return {
        name: _registry.paper_options(name, image_shape) for name, r in _registry.METRICS.items() if r.paper_options
    }


#: options that make a registry metric behave as the original's did in the VAEs (given the image shape)
PAPER_METRIC_OPTIONS = _paper_metric_options


class CheckpointMismatch(ValueError):
    """A checkpoint was written by a run with a different model, model configuration, loss or lambda."""


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable or not a checkpoint of this trainer."""


# --------------------------------------------------------------------------------------------------
# the loss
# --------------------------------------------------------------------------------------------------


def model_key(model: nn.Module | str) -> str:
    """ "mnist" or "celeba" (the K_EXPONENTS key) for a model, its name ("mnist-vae") or a key."""
    name = model if isinstance(model, str) else getattr(model, "name", type(model).__name__)
    return str(name).lower().removesuffix("-vae").removesuffix("vae").strip("-_")


def canonical_loss(name: str) -> str:
    """Registry name of a loss; an unknown name raises ``KeyError`` listing the valid ones."""
    from percept.registry import canonical_name

    return canonical_name(name)


@dataclass(frozen=True)
class LossWeighting:
    """How a registry metric's per-image values become the paper's weighted reconstruction term.

    ``term = exp(k) * factor * sum_n d_n`` (divided by N when ``batch_mean``), with ``d_n`` the registry
    metric's per-image value (``reduction='none'``).
    """

    loss: str
    k: float
    factor: float
    batch_mean: bool
    source: str  # "head", "paper", "ours" (l1/l2), "user" (k given), "default" (k=0, not in the paper)

    @property
    def lam(self) -> float:
        return math.exp(self.k)

    @property
    def multiplier(self) -> float:
        return self.lam * self.factor

    def term(self, per_image: torch.Tensor, n_global: int) -> torch.Tensor:
        """Weighted reconstruction term of a (local) batch, given the global batch size ``n_global``."""
        total = per_image.sum() * self.multiplier
        return total / n_global if self.batch_mean else total

    def describe(self) -> str:
        unit = {True: "mean over the batch"}.get(self.batch_mean, "sum over the batch")
        return (
            f"{self.loss}: lambda = e^{self.k:g} = {self.lam:.6g} ({self.source}), times {self.factor:g} "
            f"(registry units -> the original's), {unit}"
        )


def loss_weighting(
    model: nn.Module | str,
    loss: str,
    *,
    lambdas: str = "head",
    k: float | None = None,
    image_shape: tuple[int, int, int] | None = None,
) -> LossWeighting:
    """The paper's weighting of ``loss`` for ``model`` ("mnist"/"celeba" or a model instance).

    Args:
        lambdas: "head" (the original repository at HEAD) or "paper" (camera-ready code).
        k: override the exponent (lambda = e^k).
        image_shape: (C, H, W); taken from ``model.image_shape`` when a model is given.
    """
    name = canonical_loss(loss)
    if lambdas not in ("head", "paper"):
        raise ValueError(f"unknown lambdas {lambdas!r}: use 'head' or 'paper'")
    if image_shape is None:
        image_shape = getattr(model, "image_shape", None)
        if image_shape is None:
            raise ValueError("image_shape is needed when model is given by name")
    key = model_key(model)
    table = K_EXPONENTS.get(key, {}).get(lambdas, {})
    if k is not None:
        k_val, source = float(k), "user"
    elif name in table:
        k_val, source = float(table[name]), lambdas
    elif name in OUR_K:
        k_val, source = OUR_K[name], "ours"
    else:
        k_val, source = 0.0, "default"
        warnings.warn(
            f"no paper lambda for loss {name!r} on the {key} VAE; using k = 0 (lambda = 1). Choose k yourself "
            f"(--k) so that the reconstruction term is not dwarfed by, or does not dwarf, the KL term.",
            stacklevel=2,
        )
    factor = float(np.prod(image_shape)) if name in PIXEL_MEAN_METRICS else 1.0
    return LossWeighting(name, k_val, factor, name in BATCH_MEAN_METRICS, source)


def build_metric(
    loss: str,
    *,
    colorspace: str,
    image_shape: tuple[int, int, int],
    deterministic: bool = False,
    metric_style: str = "paper",
    device: torch.device | str = "cpu",
) -> nn.Module:
    """Build registry metric ``loss`` with ``reduction='none'`` (per-image values), frozen, on ``device``.

    ``metric_style="paper"`` adds the registry record's paper options (:data:`PAPER_METRIC_OPTIONS`).
    Raises ``KeyError`` (unknown name, listing the valid ones) or the metric's own error (e.g.
    :class:`percept.assets.MissingAssetError` when its weights are not on this machine).
    """
    name = canonical_loss(loss)
    if metric_style not in ("paper", "library"):
        raise ValueError(f"unknown metric_style {metric_style!r}: use 'paper' or 'library'")
    options = {"colorspace": colorspace, "reduction": "none"}
    if _registry.takes(name, "deterministic"):  # the metric's random transformations, where it has some
        options["deterministic"] = deterministic
    return _registry.get_metric(name, style=metric_style, image_shape=image_shape, device=device, **options)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) summed over the batch and the latent dimensions: a scalar."""
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())


# --------------------------------------------------------------------------------------------------
# devices and processes
# --------------------------------------------------------------------------------------------------


def select_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    """ "auto": the process's CUDA device if there is one, else Apple MPS, else CPU; or an explicit device."""
    if preference != "auto":
        try:
            device = torch.device(preference)
        except (RuntimeError, ValueError) as err:
            raise RunError(f"bad --device {preference!r}: {err} (use auto, cpu, cuda, cuda:1 or mps)") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RunError(f"--device {preference}: CUDA is not available on this machine (use --device cpu or auto)")
        if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            raise RunError(f"--device {preference}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise RunError(f"--device {preference}: MPS is not available on this machine (use --device cpu or auto)")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device_preference: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1); NCCL on CUDA, else gloo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)
    if world <= 1:
        return DistInfo()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but torch.distributed is not available in this torch build")
    if device_preference == "auto":
        use_cuda = torch.cuda.is_available()
    else:
        use_cuda = device_preference.startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, initialized_here=True)


# --------------------------------------------------------------------------------------------------
# RNG states and checkpoints
# --------------------------------------------------------------------------------------------------


def get_rng_state(loader_generator: torch.Generator | None = None) -> dict:
    """Every RNG state this process uses, in types ``torch.load(weights_only=True)`` accepts."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": _to_lists(random.getstate()),
        "cuda": [s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }
    if loader_generator is not None:
        state["loader"] = loader_generator.get_state()
    return state


def set_rng_state(state: dict, loader_generator: torch.Generator | None = None) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(_to_tuples(state["python"]))
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    if loader_generator is not None and "loader" in state:
        loader_generator.set_state(state["loader"])


def _to_lists(x):
    return [_to_lists(v) for v in x] if isinstance(x, tuple | list) else x


def _to_tuples(x):
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


def atomic_save(obj, path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the same folder, flush to disk, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, "wb") as f:  # a full disk: OutputError naming path; the old file stays
        torch.save(obj, f)
    return path


CHECKPOINT_FORMAT = "percept-vae-checkpoint/1"


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint written by :func:`train_vae`; a missing or corrupt file raises :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated / not a torch file
        raise CheckpointError(f"{path} cannot be read as a checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a percept VAE checkpoint (format {CHECKPOINT_FORMAT})")
    return state


def check_compatible(meta: dict, expected: dict, path: str | Path = "checkpoint") -> None:
    """Refuse (:class:`CheckpointMismatch`) a checkpoint whose model, model config, loss or k differ."""
    problems = []
    for key, label in (("model", "model"), ("model_config", "model configuration"), ("loss", "loss"), ("k", "k")):
        if meta.get(key) != expected.get(key):
            problems.append(f"{label} {meta.get(key)!r} (this run: {expected.get(key)!r})")
    if problems:
        raise CheckpointMismatch(
            f"{path} was written by a different run: {'; '.join(problems)}. Resume with the same model and "
            f"--loss/--k, or start a fresh run in another --out folder (or without --resume)."
        )


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a paper VAE from ``best_model.pt`` or ``last.pt`` (model name and config are stored in it)."""
    from percept.models import build_vae

    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path} cannot be read as a checkpoint ({type(err).__name__}: {err})") from err
    meta = state.get("meta", state)
    with torch.device("meta"):  # no time spent on an initialisation that is overwritten anyway
        model = build_vae(meta["model"], **meta.get("model_config", {}))
    model.load_state_dict(state["model"], assign=True)
    return model.to(map_location)


# --------------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Everything that defines a training run (the paper's values where it has them).

    ``batch_size`` is the global minibatch; ``lr_halflife`` is H in lr = lr0 * 0.5 ** (epoch / H).
    """

    loss: str = "watson-dft"
    epochs: int = 250
    batch_size: int = 128
    lr: float = 1e-4
    lr_halflife: float = 100.0
    lambdas: str = "head"
    k: float | None = None
    seed: int = 0
    device: str = "auto"
    deterministic_loss: bool = False  # the paper trains with the random shifts of Watson's block grid
    metric_style: str = "paper"
    num_workers: int = 0
    progress: bool = True
    deterministic_algorithms: bool = False  # torch.use_deterministic_algorithms (exact resume on GPU)
    checkpoint_every: int = 1  # epochs between checkpoints (the last epoch is always saved)


@dataclass
class TrainResult:
    model: nn.Module  # the final (last-epoch) weights, unwrapped, on the training device
    history: list[dict]
    weighting: LossWeighting
    best_epoch: int
    best_test_loss: float
    out_dir: Path
    checkpoint: Path
    best_checkpoint: Path
    seconds: float
    resumed_from_epoch: int = 0
    device: str = "cpu"
    world_size: int = 1
    extra: dict = field(default_factory=dict)


HISTORY_FIELDS = (
    "epoch",
    "lr",
    "train_loss",
    "train_rec",
    "train_kl",
    "test_loss",
    "test_rec",
    "test_kl",
    "seconds",
    "images_per_second",
)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _batch_images(batch) -> torch.Tensor:
    return batch[0] if isinstance(batch, list | tuple) else batch


def evaluate(
    model: nn.Module,
    dataset: Dataset,
    metric: nn.Module,
    weighting: LossWeighting,
    *,
    batch_size: int,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, float]:
    """Objective per image (z = mu), mean per-image reconstruction distance and KL, over ``dataset``.

    "Objective per image" is the sum over batches of the paper's minibatch objective divided by the number
    of images (for a batch-mean loss such as SSIM the reconstruction term is lambda * mean, not a sum).

    With several processes each takes every ``world_size``-th image and the sums are all-reduced.
    """
    was_training = model.training
    model.eval()
    positions = list(range(rank, len(dataset), world_size))
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # objective, rec, kl, count
    with torch.no_grad():
        for start in range(0, len(positions), batch_size):
            x = torch.stack([dataset[i] for i in positions[start : start + batch_size]]).to(device)
            recon, mu, logvar = model(x)
            per_image = metric(recon, x).reshape(len(x), -1).sum(1)
            kl = kl_divergence(mu, logvar)
            objective = weighting.term(per_image, len(x)) + kl
            stats = [objective.item(), per_image.sum().item(), kl.item(), len(x)]
            sums += torch.tensor(stats, dtype=torch.float64, device=device)
    if world_size > 1:
        dist.all_reduce(sums)
    model.train(was_training)
    total, rec, kl, count = sums.tolist()
    count = max(count, 1)
    return {"loss": total / count, "rec": rec / count, "kl": kl / count}


def _write_history(path: Path, history: list[dict]) -> None:
    with atomic_output(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)


def train_vae(
    model: nn.Module,
    train_set: Dataset,
    test_set: Dataset,
    config: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool | str | Path = False,
    overwrite: bool = False,
    on_epoch_end: Callable[[int, nn.Module, dict], None] | None = None,
) -> TrainResult:
    """Train ``model`` (any VAE with ``forward(x) -> (recon, mu, logvar)``) and write ``out_dir``.

    Args:
        model: a freshly constructed VAE. Its initial weights are drawn before this call; seed them with
            ``torch.manual_seed(config.seed)`` first (as :func:`run_experiment` does) for reproducibility.
        train_set, test_set: datasets of (C, H, W) images in [0, 1] (or tuples whose first item is one).
        config: see :class:`TrainConfig`.
        out_dir: receives ``history.csv``, ``checkpoints/last.pt`` (every epoch) and ``checkpoints/best_model.pt``.
            It is locked while the run lasts (:class:`percept.guard.RunLock`: a second run into it fails), and
            temporary files left by a run killed during a save are removed first.
        resume: True continues from ``out_dir/checkpoints/last.pt`` (a fresh start, with a warning, when it does
            not exist and nothing else is there); a path continues from that checkpoint. A checkpoint of another
            model/loss/k is refused.
        overwrite: replace an earlier run in ``out_dir``. Without it (or ``resume``) a folder that holds a
            history or checkpoints is refused with :class:`percept.guard.RunError` instead of overwritten.
        on_epoch_end: called on the main process as ``on_epoch_end(epoch, model, row)`` after each epoch.

    Returns a :class:`TrainResult`. Under torchrun every process trains; only rank 0 writes files.
    """
    out_dir = Path(out_dir)
    if _launched_as_rank() != 0:
        return _train_vae(model, train_set, test_set, config, out_dir, resume, overwrite, on_epoch_end)
    with RunLock(out_dir):
        for folder in (out_dir, out_dir / "checkpoints"):
            clean_stale_temps(folder)
        return _train_vae(model, train_set, test_set, config, out_dir, resume, overwrite, on_epoch_end)


def _launched_as_rank() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def _earlier_run(out_dir: Path) -> list[str]:
    """What an earlier run left in ``out_dir``: its history and checkpoints."""
    found = []
    history = out_dir / "history.csv"
    if history.is_file():
        try:
            epochs = max(0, len(history.read_text().splitlines()) - 1)
        except OSError:
            epochs = "?"
        found.append(f"history.csv with {epochs} epoch(s)")
    found += [f"checkpoints/{n}" for n in ("last.pt", "best_model.pt") if (out_dir / "checkpoints" / n).is_file()]
    return found


def _check_earlier_run(out_dir: Path, last_path: Path, resume, overwrite: bool) -> None:
    """Refuse to start over an earlier run unless asked to; say loudly when --resume finds no checkpoint."""
    if resume and (resume is not True or last_path.is_file()):
        return  # continuing from a checkpoint (a missing explicit path is reported by load_checkpoint)
    found = _earlier_run(out_dir)
    if found and not overwrite:
        if resume:
            raise RunError(
                f"--resume: there is no checkpoint {last_path}, but {out_dir} holds an earlier run "
                f"({', '.join(found)}) that starting from scratch would overwrite: pass --overwrite to start "
                "again, or write to another --out"
            )
        raise RunError(
            f"{out_dir} already holds a run ({', '.join(found)}): pass --resume to continue it, --overwrite to "
            "replace it, or write to another --out"
        )
    if found:
        log.warning("--overwrite: replacing the earlier run in %s (%s)", out_dir, ", ".join(found))
        for path in (out_dir / "history.csv", last_path, last_path.with_name("best_model.pt")):
            path.unlink(missing_ok=True)
    if resume:
        log.warning("--resume: there is no checkpoint %s: training %s from scratch", last_path, out_dir)


def _train_vae(model, train_set, test_set, config, out_dir, resume, overwrite, on_epoch_end) -> TrainResult:
    t_start = time.time()
    if config.epochs < 1 or config.batch_size < 1:
        raise RunError(f"epochs ({config.epochs}) and batch size ({config.batch_size}) must be at least 1")
    info = init_distributed(config.device)
    device = select_device(config.device, info.local_rank)
    if config.deterministic_algorithms:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    colorspace = getattr(model, "colorspace", "rgb")
    image_shape = tuple(getattr(model, "image_shape", None) or _batch_images(train_set[0]).shape)
    weighting = loss_weighting(model, config.loss, lambdas=config.lambdas, k=config.k, image_shape=image_shape)
    train_metric = build_metric(
        weighting.loss,
        colorspace=colorspace,
        image_shape=image_shape,
        deterministic=config.deterministic_loss,
        metric_style=config.metric_style,
        device=device,
    )
    test_metric = build_metric(
        weighting.loss,
        colorspace=colorspace,
        image_shape=image_shape,
        deterministic=True,
        metric_style=config.metric_style,
        device=device,
    )
    if getattr(train_metric, "higher_is_better", False):
        raise ValueError(f"{weighting.loss} is a similarity (higher is better), not a distance: it cannot be a loss")
    if config.batch_size % info.world_size:
        raise ValueError(f"batch size {config.batch_size} is not divisible by the {info.world_size} processes")
    local_batch = config.batch_size // info.world_size
    if len(train_set) < config.batch_size:
        raise ValueError(
            f"the training set has {len(train_set)} images, fewer than one batch of {config.batch_size} "
            "(batches are drop_last as in the paper); lower --batch-size"
        )

    model = model.to(device)
    meta = {
        "format": CHECKPOINT_FORMAT,
        "model": getattr(model, "name", type(model).__name__),
        "model_config": model.config() if hasattr(model, "config") else {},
        "loss": weighting.loss,
        "k": weighting.k,
        "lambda": weighting.lam,
        "factor": weighting.factor,
        "batch_mean": weighting.batch_mean,
        "lambda_source": weighting.source,
        "seed": config.seed,
        "config": {k: v for k, v in asdict(config).items()},
        "world_size": info.world_size,
    }
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    halflife = config.lr_halflife
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 0.5 ** (epoch / halflife))

    loader_generator = torch.Generator()
    loader_generator.manual_seed(config.seed)
    sampler = DistributedSampler(
        train_set, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=config.seed, drop_last=True
    )
    loader = DataLoader(
        train_set,
        batch_size=local_batch,
        sampler=sampler,
        drop_last=True,
        num_workers=config.num_workers,
        generator=loader_generator,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )

    ckpt_dir = out_dir / "checkpoints"
    last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best_model.pt"
    history: list[dict] = []
    start_epoch, best_loss, best_epoch = 0, math.inf, 0
    if info.is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        ignore = ckpt_dir / ".gitignore"  # checkpoints are large: keep them out of version control
        if not ignore.exists():
            ignore.write_text("# written by percept.train: checkpoints are not committed\n*\n")

    if info.is_main:
        _check_earlier_run(out_dir, last_path, resume, overwrite)
    resume_path = (last_path if resume is True else Path(resume)) if resume else None
    if resume_path is not None and (resume is not True or resume_path.is_file()):
        state = load_checkpoint(resume_path)
        check_compatible(state["meta"], meta, resume_path)
        _unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch = int(state["epoch"])
        history = list(state["history"])
        best_loss, best_epoch = float(state["best_test_loss"]), int(state["best_epoch"])
        rng = state["rng"]
        if len(rng) == info.world_size:
            set_rng_state(rng[info.rank], loader_generator)
        else:
            warnings.warn(
                f"{resume_path} was written by {len(rng)} processes, this run has {info.world_size}: the random "
                "streams restart from the seed, so the continuation is not bit-identical",
                stacklevel=2,
            )
            torch.manual_seed(config.seed + 1000 * (info.rank + 1) + start_epoch)
        for key in ("batch_size", "lr", "lr_halflife", "seed"):
            if state["meta"]["config"].get(key) != meta["config"][key]:
                warnings.warn(
                    f"resuming with {key} = {meta['config'][key]} but the checkpoint used "
                    f"{state['meta']['config'].get(key)}",
                    stacklevel=2,
                )
        if info.is_main:
            log.info("resumed %s at epoch %d", resume_path, start_epoch)
    if info.distributed and start_epoch == 0:
        # every process starts from rank 0's weights (DDP broadcasts them) but draws its own noise
        torch.manual_seed(config.seed + 1000 * (info.rank + 1))
    resumed_from = start_epoch

    if info.distributed:
        ddp_kwargs = {"device_ids": [device.index]} if device.type == "cuda" else {}
        train_model = nn.parallel.DistributedDataParallel(model, **ddp_kwargs)
    else:
        train_model = model

    from tqdm.auto import tqdm

    show = config.progress and info.is_main
    epochs_bar = tqdm(
        range(start_epoch, config.epochs),
        desc=f"{meta['model']} {weighting.loss}",
        unit="epoch",
        disable=not show,
        initial=start_epoch,
        total=config.epochs,
    )
    for epoch in epochs_bar:
        t0 = time.time()
        sampler.set_epoch(epoch)
        train_model.train()
        sums = torch.zeros(4, dtype=torch.float64)
        lr = optimizer.param_groups[0]["lr"]
        for batch in tqdm(loader, desc=f"epoch {epoch + 1}", leave=False, disable=not show, unit="batch"):
            x = _batch_images(batch).to(device, non_blocking=True)
            recon, mu, logvar = train_model(x)
            per_image = train_metric(recon, x).reshape(len(x), -1).sum(1)
            kl = kl_divergence(mu, logvar)
            local = weighting.term(per_image, config.batch_size) + kl
            optimizer.zero_grad(set_to_none=True)
            # DDP averages gradients over processes; scaling by their number gives the global batch's gradient
            (local * info.world_size).backward()
            optimizer.step()
            stats = [local.item(), per_image.sum().item(), kl.item(), len(x)]
            sums += torch.tensor(stats, dtype=torch.float64)
        if info.distributed:
            sums = sums.to(device)
            dist.all_reduce(sums)
            sums = sums.cpu()
        scheduler.step()
        test = evaluate(
            _unwrap(train_model),
            test_set,
            test_metric,
            weighting,
            batch_size=local_batch,
            device=device,
            rank=info.rank,
            world_size=info.world_size,
        )
        n = max(sums[3].item(), 1)
        seconds = time.time() - t0
        row = {
            "epoch": epoch + 1,
            "lr": lr,
            "train_loss": sums[0].item() / n,
            "train_rec": sums[1].item() / n,
            "train_kl": sums[2].item() / n,
            "test_loss": test["loss"],
            "test_rec": test["rec"],
            "test_kl": test["kl"],
            "seconds": seconds,
            "images_per_second": sums[3].item() / seconds,
        }
        history.append(row)
        improved = row["test_loss"] < best_loss
        if improved:
            best_loss, best_epoch = row["test_loss"], epoch + 1
        rng = get_rng_state(loader_generator)
        if info.distributed:
            gathered = [None] * info.world_size
            dist.all_gather_object(gathered, rng)
            rng = gathered
        else:
            rng = [rng]
        if info.is_main:
            bare = _unwrap(train_model)
            if improved:
                atomic_save({"meta": meta, "epoch": epoch + 1, "model": bare.state_dict()}, best_path)
            state = {
                "format": CHECKPOINT_FORMAT,
                "meta": meta,
                "epoch": epoch + 1,
                "model": bare.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rng,
                "history": history,
                "best_test_loss": best_loss,
                "best_epoch": best_epoch,
            }
            if (epoch + 1) % max(1, config.checkpoint_every) == 0 or epoch + 1 == config.epochs:
                atomic_save(state, last_path)
            _write_history(out_dir / "history.csv", history)
            epochs_bar.set_postfix(train=f"{row['train_loss']:.4g}", test=f"{row['test_loss']:.4g}")
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, bare, row)
        if info.distributed:
            dist.barrier()
    epochs_bar.close()
    if start_epoch >= config.epochs and info.is_main:
        log.info("%s already holds %d >= %d epochs: nothing to train", last_path, start_epoch, config.epochs)
    return TrainResult(
        model=_unwrap(train_model),
        history=history,
        weighting=weighting,
        best_epoch=best_epoch,
        best_test_loss=best_loss,
        out_dir=out_dir,
        checkpoint=last_path,
        best_checkpoint=best_path,
        seconds=time.time() - t_start,
        resumed_from_epoch=resumed_from,
        device=str(device),
        world_size=info.world_size,
    )


# --------------------------------------------------------------------------------------------------
# outputs: reconstructions, samples, interpolations, manifold, cross-metric scores
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def reconstruct(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Reconstructions decoded from z = mu: (N, C, H, W) in [0, 1], on the CPU."""
    model.eval()
    device = next(model.parameters()).device
    out = [
        model.decode(model.encode(images[i : i + batch_size].to(device))[0]).cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out)


@torch.no_grad()
def sample(model: nn.Module, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` images decoded from z ~ N(0, I), drawn from a private generator seeded ``seed``; on the CPU."""
    model.eval()
    device = next(model.parameters()).device
    z = torch.randn(n, model.latent_dim, generator=torch.Generator().manual_seed(seed))
    return model.decode(z.to(device)).cpu()


@torch.no_grad()
def interpolate(model: nn.Module, a: torch.Tensor, b: torch.Tensor, steps: int = 10) -> torch.Tensor:
    """Decode the linear path between mu(a) and mu(b) (images (C, H, W)): (steps, C, H, W), on the CPU."""
    model.eval()
    device = next(model.parameters()).device
    mu = model.encode(torch.stack([a, b]).to(device))[0]
    t = torch.linspace(0, 1, steps, device=device)[:, None]
    return model.decode(mu[0] * (1 - t) + mu[1] * t).cpu()


@torch.no_grad()
def manifold(model: nn.Module, grid: int = 6, extent: float = 1.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode a ``grid`` x ``grid`` lattice over [-extent, extent]^2 of a 2-D latent space (the paper's 6, 1.5).

    Returns (images (grid*grid, C, H, W) row by row, top row = largest z2; z (grid*grid, 2)).
    """
    if model.latent_dim != 2:
        raise ValueError(f"a manifold needs a 2-D latent space, this model has {model.latent_dim}")
    model.eval()
    device = next(model.parameters()).device
    axis = torch.linspace(-extent, extent, grid)
    z = torch.stack([torch.stack([x, y]) for y in axis.flip(0) for x in axis])
    return model.decode(z.to(device)).cpu(), z


@torch.no_grad()
def score_reconstructions(
    model: nn.Module, dataset, metrics: dict[str, nn.Module], batch_size: int = 100
) -> dict[str, torch.Tensor]:
    """Distance of each test image's reconstruction (z = mu) to the image, under every metric: {name: (N,)}.

    ``dataset`` is an :class:`percept.data.ImageSet` (or any sequence of (C, H, W) images); it is streamed in
    batches, so a large test set never sits in memory at once. Metrics return per-image values
    (``reduction='none'``) and run on their own device.
    """
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in metrics}
    for start in range(0, len(dataset), batch_size):
        stop = min(start + batch_size, len(dataset))
        images = (
            dataset.images(range(start, stop))
            if hasattr(dataset, "images")
            else torch.stack([dataset[i] for i in range(start, stop)])
        )
        recon = reconstruct(model, images, batch_size)
        for name, metric in metrics.items():
            device = next(iter(metric.parameters()), torch.empty(0)).device
            values = metric(recon.to(device), images.to(device)).reshape(len(images), -1).sum(1).double().cpu()
            parts[name].append(-values if getattr(metric, "higher_is_better", False) else values)
    # a similarity (PSNR) is negated so that every column reads "lower is better"
    return {
        (f"neg-{name}" if getattr(metrics[name], "higher_is_better", False) else name): torch.cat(values)
        for name, values in parts.items()
    }


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Float images in [0, 1] -> uint8 numpy array of the same shape."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


# --------------------------------------------------------------------------------------------------
# machine info
# --------------------------------------------------------------------------------------------------


def machine_info(device: torch.device | str | None = None) -> dict:
    """Torch version, device, threads, CPU and GPU names: written next to every number."""
    info = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "device": str(device) if device is not None else str(select_device()),
        "cuda": torch.version.cuda,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available()
        else [],
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            info["cpu_model"] = names[0]
    except OSError:
        pass
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        info["git_commit"] = commit or None
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def load_average() -> float | None:
    """1-minute load average: other processes on the machine slow timings down."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def write_json(path: str | Path, obj: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, "w") as f:
        f.write(json.dumps(obj, indent=2, default=str) + "\n")


# --------------------------------------------------------------------------------------------------
# the experiment driver shared by experiments/vae_mnist and experiments/vae_celeba
# --------------------------------------------------------------------------------------------------


@dataclass
class VAEExperiment:
    """What differs between the MNIST and the CelebA experiment; see :func:`run_experiment`.

    ``load(split, args)`` returns an :class:`percept.data.ImageSet`; ``figure_positions(test_set)`` returns
    ``(reconstruction positions, interpolation position pairs)`` in the test set.
    """

    name: str
    model: str
    load: Callable
    figure_positions: Callable
    n_samples: int
    sample_rows: int
    interpolation_steps: int
    quick: dict
    description: str = ""
    offline: dict = field(default_factory=dict)  # flag defaults replaced when only the offline sample is there


def _parse_losses(text: str) -> list[str]:
    names = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        if part.lower() == "all":
            names.extend(PAPER_LOSSES)
        else:
            names.append(canonical_loss(part))
    return list(dict.fromkeys(names))


def build_parser(exp: VAEExperiment) -> argparse.ArgumentParser:
    """argparse flags of a VAE driver; defaults are the paper's values for ``exp.model``."""
    halflife, epochs, batch = PAPER_SCHEDULE[exp.model]
    parser = argparse.ArgumentParser(
        prog=f"experiments/{exp.name}/run.py",
        description=exp.description or f"Train the {exp.model} VAE with perceptual reconstruction losses.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--loss",
        default="all",
        help="registry metric name(s), comma-separated, or 'all' for the paper's set: " + ", ".join(PAPER_LOSSES),
    )
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument(
        "--batch-size", type=int, default=batch, help="global minibatch (split over torchrun processes)"
    )
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--lr-halflife", type=float, default=halflife, help="H in lr = lr0 * 0.5 ** (epoch / H)")
    parser.add_argument(
        "--lambdas",
        choices=("head", "paper"),
        default="head",
        help="lambda = e^k exponents of the original repository at HEAD, or of the paper's code",
    )
    parser.add_argument("--k", type=float, default=None, help="override the exponent k (lambda = e^k); one loss only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help=f"output folder (default: results/{exp.name}/)")
    parser.add_argument(
        "--resume", action="store_true", help="continue each loss from <out>/<loss>/checkpoints/last.pt"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the earlier run of a loss in <out> (without it, or --resume, an earlier run is not touched)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="about a minute on 2 CPU cores: " + ", ".join(f"{k}={v}" for k, v in exp.quick.items()),
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="downloaded data folder (default: $PERCEPT_DATA, else data/ of the checkout)",
    )
    parser.add_argument("--offline", action="store_true", help="use the offline asset data even when a download exists")
    parser.add_argument("--train-limit", type=int, default=None, help="use only the first N training images")
    parser.add_argument("--test-limit", type=int, default=None, help="use only the first N test images")
    parser.add_argument(
        "--eval-metrics",
        default=",".join(PAPER_LOSSES),
        help="metrics scoring every model's test reconstructions (the cross-metric table)",
    )
    parser.add_argument(
        "--metric-style",
        choices=("paper", "library"),
        default="paper",
        help="build losses with the options matching the original code, or the library defaults",
    )
    parser.add_argument(
        "--deterministic-loss",
        action="store_true",
        help="train without the random block shifts of Watson (the paper trains with them)",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=1,
        help="epochs between checkpoints (1: every epoch; the last epoch is always saved)",
    )
    parser.add_argument(
        "--keep-checkpoints",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep checkpoints after a loss finishes (default: yes, except with --quick)",
    )
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    add_debug_flag(parser)
    return parser


def _apply_quick(args: argparse.Namespace, parser: argparse.ArgumentParser, quick: dict) -> None:
    for key, value in quick.items():
        if getattr(args, key) == parser.get_default(key):
            setattr(args, key, value)


def _limit(dataset, n: int | None):
    return dataset if n is None or n >= len(dataset) else dataset.subset(range(n))


def _build_eval_metrics(names: list[str], colorspace: str, image_shape, style: str, device) -> tuple[dict, dict]:
    metrics, unavailable = {}, {}
    for name in names:
        try:
            metrics[name] = build_metric(
                name,
                colorspace=colorspace,
                image_shape=image_shape,
                deterministic=True,
                metric_style=style,
                device=device,
            )
        except Exception as err:  # missing weights, a metric not in this installation, ...
            unavailable[name] = f"{type(err).__name__}: {err}"
    return metrics, unavailable


def _save_grid(images: torch.Tensor, path: Path, nrow: int) -> None:
    from torchvision.utils import save_image

    save_image(images, path, nrow=nrow, padding=2, pad_value=1.0)


def write_outputs(
    exp: VAEExperiment, model: nn.Module, test_set, loss_dir: Path, eval_metrics: dict, seed: int
) -> dict[str, dict]:
    """Figures' raw data (``outputs.npz``), quick-look PNGs and ``scores.csv`` of one trained model."""
    recon_pos, pairs = exp.figure_positions(test_set)
    images = test_set.images(recon_pos)
    recon = reconstruct(model, images)
    samples = sample(model, exp.n_samples, seed=seed)
    interps = torch.stack([interpolate(model, test_set[a], test_set[b], exp.interpolation_steps) for a, b in pairs])
    arrays = {
        "test_ids": test_set.indices[torch.as_tensor(recon_pos, dtype=torch.long)].numpy(),
        "test_images": to_uint8(images),
        "reconstructions": to_uint8(recon),
        "samples": to_uint8(samples),
        "interpolation_ids": test_set.indices[torch.as_tensor(pairs, dtype=torch.long).reshape(-1)]
        .numpy()
        .reshape(-1, 2),
        "interpolations": to_uint8(interps),
    }
    _save_grid(torch.cat([images, recon]), loss_dir / "reconstructions.png", nrow=len(images))
    _save_grid(samples, loss_dir / "samples.png", nrow=exp.sample_rows)
    _save_grid(interps.flatten(0, 1), loss_dir / "interpolations.png", nrow=exp.interpolation_steps)
    if getattr(model, "latent_dim", None) == 2:
        grid_images, z = manifold(model)
        arrays["manifold"], arrays["manifold_z"] = to_uint8(grid_images), z.numpy()
        _save_grid(grid_images, loss_dir / "manifold.png", nrow=int(math.isqrt(len(z))))
    np.savez_compressed(loss_dir / "outputs.npz", **arrays)

    scores = score_reconstructions(model, test_set, eval_metrics)
    summary = {}
    with open(loss_dir / "scores.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["metric", "mean", "std", "n"])
        for name, values in scores.items():
            summary[name] = {"mean": values.mean().item(), "std": values.std().item(), "n": len(values)}
            writer.writerow([name, f"{values.mean().item():.8g}", f"{values.std().item():.8g}", len(values)])
    return summary


def _collect(out: Path, order: list[str]) -> None:
    """Merge every ``<out>/<loss>/{scores,history}.csv`` into ``cross_metric.csv`` and ``training_curves.csv``."""
    import pandas as pd

    folders = sorted(
        (d for d in out.iterdir() if (d / "run.json").is_file()),
        key=lambda d: (order.index(d.name) if d.name in order else len(order), d.name),
    )
    rows, curves = [], []
    for d in folders:
        if (d / "scores.csv").is_file():
            scores = pd.read_csv(d / "scores.csv")
            rows.append(scores.set_index("metric")["mean"].rename(d.name))
        if (d / "history.csv").is_file():
            curves.append(pd.read_csv(d / "history.csv").assign(loss=d.name))
    if rows:
        table = pd.DataFrame(rows)
        table.index.name = "trained_with"
        table.to_csv(out / "cross_metric.csv", float_format="%.8g")
    if curves:
        frame = pd.concat(curves, ignore_index=True)
        frame[["loss"] + [c for c in frame.columns if c != "loss"]].to_csv(
            out / "training_curves.csv", index=False, float_format="%.8g"
        )


def run_experiment(exp: VAEExperiment, argv: list[str] | None = None) -> int:
    """The driver behind ``experiments/vae_*/run.py``: train each requested loss, then write the outputs.

    Per loss ``<out>/<loss>/``: ``history.csv`` (training curves), ``outputs.npz`` (fixed test images, their
    reconstructions, random samples, interpolations and, for a 2-D latent, the manifold), quick-look PNGs,
    ``scores.csv`` (the test reconstructions scored by every metric) and ``run.json``. For the whole run:
    ``cross_metric.csv``, ``training_curves.csv``, ``results.json`` and ``machine.json``.

    ``<out>`` is locked for the run (a second driver into it stops with an error). A loss folder that holds an
    earlier run needs ``--resume`` or ``--overwrite``. Errors end in one line on stderr and a non-zero exit
    status (``--debug`` or ``PERCEPT_DEBUG=1`` for the traceback).
    """
    with contextlib.ExitStack() as cleanup:
        return driver_main(lambda a: _run_experiment(exp, a, cleanup), argv, prog=f"experiments/{exp.name}/run.py")


def _check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Flags that would fail deep inside training: refused here with one line naming the flag."""
    for flag, minimum in (("epochs", 1), ("batch_size", 1), ("checkpoint_every", 1), ("num_workers", 0),
                          ("train_limit", 1), ("test_limit", 1)):  # fmt: skip
        value = getattr(args, flag)
        if value is not None and value < minimum:
            parser.error(f"--{flag.replace('_', '-')} must be at least {minimum}, got {value}")
    if args.lr <= 0 or not math.isfinite(args.lr) or args.lr_halflife <= 0:
        parser.error("--lr and --lr-halflife must be positive")
    if args.resume and args.overwrite:
        parser.error("--resume continues an earlier run and --overwrite replaces it: give one of them")
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise RunError(f"--out {args.out} is a file, not a folder: choose a folder for the results")
    select_device(args.device)  # a device that is not there: one line now, not a traceback after loading data


def _run_experiment(exp: VAEExperiment, argv: list[str], cleanup: contextlib.ExitStack) -> int:
    parser = build_parser(exp)
    args = parser.parse_args(argv)
    if args.quick:
        _apply_quick(args, parser, exp.quick)
    _check_args(args, parser)
    try:
        losses = _parse_losses(args.loss)
        eval_names = _parse_losses(args.eval_metrics)
    except KeyError as err:
        parser.error(f"{err.args[0]}. Or 'all' for the paper's set: {', '.join(PAPER_LOSSES)}")
    if not losses:
        parser.error("--loss names no loss")
    if args.k is not None and len(losses) > 1:
        parser.error("--k sets one loss's lambda: use it with a single --loss")
    keep = (not args.quick) if args.keep_checkpoints is None else args.keep_checkpoints
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    info = init_distributed(args.device)
    out = args.out or Path(__file__).resolve().parents[2] / "results" / exp.name
    from percept.data import DatasetError

    try:
        train_set = _limit(exp.load("train", args), args.train_limit)
        test_set = _limit(exp.load("test", args), args.test_limit)
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if train_set.info.get("offline") and train_set.info.get("protocol") in (None, "sample", "test-split"):
        # the small offline samples: settings that suit a handful of images (not the recovered or reduced sets)
        for key, value in exp.offline.items():
            if getattr(args, key) == parser.get_default(key):
                log.warning("offline data: --%s %s", key.replace("_", "-"), value)
                setattr(args, key, value)
    batch_size = args.batch_size
    if len(train_set) < batch_size:
        new = max(info.world_size, len(train_set) // info.world_size * info.world_size)
        log.warning("only %d training images: batch size %d -> %d", len(train_set), batch_size, new)
        batch_size = new
    device = select_device(args.device, info.local_rank)
    data = {
        "data_source": train_set.info.get("data_source", "").split("; this is")[0],
        "offline": bool(train_set.info.get("offline")),
        "train": train_set.info | {"size": len(train_set)},
        "test": test_set.info | {"size": len(test_set)},
    }
    if info.is_main:
        cleanup.enter_context(RunLock(out))  # one driver at a time per output folder
        log.info("data: %s", data["data_source"])
        log.info("writing to %s (device %s, %d process(es))", out, device, info.world_size)
    from percept.models import build_vae

    statuses = {}
    eval_metrics, unavailable = ({}, {})
    probe = build_vae(exp.model, hidden_dim=8)  # a small instance: only its colorspace and image shape are read
    if info.is_main:
        eval_metrics, unavailable = _build_eval_metrics(
            eval_names, probe.colorspace, probe.image_shape, args.metric_style, device
        )
        for name, why in unavailable.items():
            log.warning("metric %s cannot score reconstructions here: %s", name, why)
    for loss in losses:
        loss_dir = out / loss
        config = TrainConfig(
            loss=loss,
            epochs=args.epochs,
            batch_size=batch_size,
            lr=args.lr,
            lr_halflife=args.lr_halflife,
            lambdas=args.lambdas,
            k=args.k,
            seed=args.seed,
            device=args.device,
            deterministic_loss=args.deterministic_loss,
            metric_style=args.metric_style,
            num_workers=args.num_workers,
            progress=not args.no_progress,
            checkpoint_every=args.checkpoint_every,
        )
        try:  # can this loss be built here (weights present, metric implemented, a distance)?
            check = build_metric(
                loss,
                colorspace=probe.colorspace,
                image_shape=probe.image_shape,
                deterministic=args.deterministic_loss,
                metric_style=args.metric_style,
                device="cpu",
            )
            if getattr(check, "higher_is_better", False):
                raise ValueError(f"{loss} is a similarity (higher is better), not a distance: it cannot be a loss")
        except Exception as err:
            reason = f"{type(err).__name__}: {err}"
            if len(losses) == 1:
                print(f"error: cannot train with loss {loss!r}: {reason}", file=sys.stderr)
                return 2
            statuses[loss] = {"status": "skipped", "reason": reason}
            log.warning("skipping loss %s: %s", loss, reason)
            continue
        torch.manual_seed(args.seed)
        np.random.seed(args.seed)
        random.seed(args.seed)
        model = build_vae(exp.model)
        try:
            result = train_vae(
                model, train_set, test_set, config, loss_dir, resume=args.resume, overwrite=args.overwrite
            )
        except (CheckpointMismatch, CheckpointError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        if not info.is_main:
            continue
        if result.history and result.best_epoch == result.history[-1]["epoch"]:
            best = result.model  # the last epoch is the best one: no need to read it back
        else:
            best = load_model(result.best_checkpoint, map_location=device)
        metrics = dict(eval_metrics)
        if loss not in metrics and loss not in unavailable:
            metrics[loss] = build_metric(
                loss,
                colorspace=best.colorspace,
                image_shape=best.image_shape,
                deterministic=True,
                metric_style=args.metric_style,
                device=device,
            )
        scores = write_outputs(exp, best, test_set, loss_dir, metrics, seed=args.seed)
        w = result.weighting
        run = {
            "experiment": exp.name,
            "loss": loss,
            "k": w.k,
            "lambda": w.lam,
            "lambda_source": w.source,
            "unit_factor": w.factor,
            "batch_mean": w.batch_mean,
            "weighting": w.describe(),
            "config": asdict(config),
            "epochs_trained": len(result.history),
            "resumed_from_epoch": result.resumed_from_epoch,
            "best_epoch": result.best_epoch,
            "best_test_loss": result.best_test_loss,
            "final": result.history[-1] if result.history else {},
            "seconds": result.seconds,
            "device": result.device,
            "world_size": result.world_size,
            "scores": scores,
            **data,
            "machine": machine_info(device),
        }
        write_json(loss_dir / "run.json", run)
        statuses[loss] = {
            "status": "trained",
            "epochs": len(result.history),
            "best_epoch": result.best_epoch,
            "seconds": round(result.seconds, 1),
        }
        if not keep:
            shutil.rmtree(loss_dir / "checkpoints", ignore_errors=True)
    if info.is_main:
        _collect(out, list(PAPER_LOSSES))
        machine = machine_info(device)
        write_json(out / "machine.json", machine)
        previous = {}
        if (out / "results.json").is_file():
            previous = json.loads((out / "results.json").read_text()).get("losses", {})
        write_json(
            out / "results.json",
            {
                "experiment": exp.name,
                "command": " ".join([f"experiments/{exp.name}/run.py"] + (argv if argv is not None else sys.argv[1:])),
                **data,
                "quick": args.quick,
                "epochs": args.epochs,
                "batch_size": batch_size,
                "lambdas": args.lambdas,
                "metric_style": args.metric_style,
                "seed": args.seed,
                "losses": previous | statuses,
                "eval_metrics": list(eval_metrics),
                "eval_metrics_unavailable": unavailable,
                "machine": machine,
            },
        )
        trained = [k for k, v in statuses.items() if v["status"] == "trained"]
        print(f"{exp.name}: trained {', '.join(trained) or 'nothing'}; results in {out}")
        for name, st in statuses.items():
            if st["status"] != "trained":
                print(f"  skipped {name}: {st['reason']}")
    if info.initialized_here or (info.distributed and dist.is_initialized()):
        dist.barrier()
        dist.destroy_process_group()
    return 0
