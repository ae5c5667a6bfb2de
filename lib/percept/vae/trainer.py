"""Train a VAE with any registry metric as its reconstruction loss (Czolbe et al. 2020, spec czolbe.md §11).

>>> from percept.models import build_vae  # doctest: +SKIP
>>> from percept.data.mnist import load_mnist  # doctest: +SKIP
>>> from percept.vae import TrainConfig, train_vae  # doctest: +SKIP
>>> cfg = TrainConfig(loss="watson-dft", epochs=250, batch_size=128, lr_halflife=100)  # doctest: +SKIP
>>> result = train_vae(build_vae("mnist"), load_mnist("train"), load_mnist("test"), cfg, "results/x/watson-dft")  # doctest: +SKIP

The objective is the paper's (``lambda * L_rec + KL``, see :mod:`percept.vae.paper` for the weighting and
its units). Adam (PyTorch defaults) over the VAE parameters, lr = 1e-4 * 0.5 ** (epoch / H) with H = 100
(MNIST) or 20 (CelebA), ``drop_last=True`` shuffled batches, seed 0.

Checkpoints, resume, distributed training
-----------------------------------------
After every epoch ``<out>/checkpoints/last.pt`` is written atomically (temporary file + rename) with the
model, optimiser, scheduler, epoch, the RNG states of every process (torch, CUDA, numpy, python and the
DataLoader generator), the training history and metadata (model name and configuration, loss, k, lambda,
seed). ``best_model.pt`` holds the weights with the lowest test loss (the paper kept those).
``resume=True`` continues from ``last.pt``; an interrupted run resumed this way ends with bit-identical
weights on CPU (``tests/test_vae.py`` checks it). With ``checkpoint_steps = S`` ``last.pt`` is also written
every S training steps inside an epoch (with the step, the epoch's running sums and the RNG states at that
point): a run stopped mid-epoch resumes at that step and loses at most S steps, again bit-identically.
A checkpoint from a different model, model configuration, loss or k is refused with
:class:`percept.vae.checkpoint.CheckpointMismatch`.

Launched with ``torchrun --nproc_per_node G`` the trainer uses DistributedDataParallel (NCCL on GPUs, gloo on
CPU). ``batch_size`` stays the global minibatch (each process takes ``batch_size / G`` images) and the
gradient is that of the global batch's loss, so G processes train the same model as one.
"""

from __future__ import annotations

import csv
import inspect
import itertools
import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from percept.guard import RunError, RunLock, atomic_output, clean_stale_temps
from percept.runinfo import atomic_save, get_rng_state, init_distributed, launched_rank, select_device, set_rng_state
from percept.vae.checkpoint import CHECKPOINT_FORMAT, check_compatible, load_checkpoint
from percept.vae.paper import LossWeighting, build_metric, kl_divergence, loss_weighting

log = logging.getLogger(__name__)


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
    checkpoint_steps: int = 0  # also save last.pt every this many steps inside an epoch (0: at epoch ends only)


@dataclass
class TrainResult:
    model: nn.Module  # the final weights, unwrapped, on the training device (see mid_epoch)
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
    #: True when nothing was trained and ``model`` holds a checkpoint written inside the epoch after the last one
    #: in ``history`` (a run stopped mid-epoch, then called with --epochs equal to its finished epochs): those
    #: weights belong to no finished epoch, so outputs must come from ``best_checkpoint``
    mid_epoch: bool = False


HISTORY_FIELDS = (
    "epoch",
    "lr",
    "train_loss",
    "train_rec",
    "train_kl",
    "test_loss",
    "test_rec",
    "test_kl",
    "test_pixel_mse",
    "seconds",
    "images_per_second",
)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _batch_images(batch) -> torch.Tensor:
    return batch[0] if isinstance(batch, list | tuple) else batch


def mean_objective(
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
    """The test loss of an epoch: ``{"loss": objective per image, "rec": mean per-image distance, "kl": mean KL,
    "pixel_mse": mean per-image pixel MSE}`` (the last in the same units for every loss).

    Computed over ``dataset`` with z = mu (the model in eval mode, no gradients).

    "Objective per image" is the sum over batches of the paper's minibatch objective divided by the number
    of images (for a batch-mean loss such as SSIM the reconstruction term is lambda * mean, not a sum).

    With several processes each takes every ``world_size``-th image and the sums are all-reduced.
    """
    was_training = model.training
    model.eval()
    positions = list(range(rank, len(dataset), world_size))
    sums = torch.zeros(5, dtype=torch.float64, device=device)  # objective, rec, kl, count, pixel squared error
    with torch.no_grad():
        for start in range(0, len(positions), batch_size):
            x = torch.stack([dataset[i] for i in positions[start : start + batch_size]]).to(device)
            recon, mu, logvar = model(x)
            per_image = metric(recon, x).reshape(len(x), -1).sum(1)
            kl = kl_divergence(mu, logvar)
            objective = weighting.term(per_image, len(x)) + kl
            pixel = (recon - x).square().flatten(1).mean(1).sum()
            stats = [objective.item(), per_image.sum().item(), kl.item(), len(x), pixel.item()]
            sums += torch.tensor(stats, dtype=torch.float64, device=device)
    if world_size > 1:
        dist.all_reduce(sums)
    model.train(was_training)
    total, rec, kl, count, pixel = sums.tolist()
    count = max(count, 1)
    return {"loss": total / count, "rec": rec / count, "kl": kl / count, "pixel_mse": pixel / count}


def _write_history(path: Path, history: list[dict]) -> None:
    with atomic_output(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)


class _SkipSampler(torch.utils.data.Sampler):
    """An epoch's sampler order without its first ``skip`` indices: the rest of an epoch resumed mid-way."""

    def __init__(self, sampler, skip: int):
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        return itertools.islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)


def _adam_implementation(device: torch.device) -> dict:
    """Adam's fused kernel where this torch has it for ``device``: the same update as the default
    implementation (to float rounding), 5x faster on CPU for the 33.7M-parameter MNIST VAE (0.14 -> 0.026 s)."""
    if device.type in ("cpu", "cuda") and "fused" in inspect.signature(torch.optim.Adam).parameters:
        return {"fused": True}
    return {}


def _memory_format(device: torch.device) -> torch.memory_format:
    """channels_last on CPU, where oneDNN's convolutions run faster in it (MNIST VAE step 0.49 -> 0.32 s on 2
    cores with fused Adam); other devices keep the default layout."""
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


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
            ``torch.manual_seed(config.seed)`` first (as :func:`percept.vae.run_experiment` does) for reproducibility.
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
    if launched_rank() != 0:
        return _train_vae(model, train_set, test_set, config, out_dir, resume, overwrite, on_epoch_end)
    with RunLock(out_dir):
        for folder in (out_dir, out_dir / "checkpoints"):
            clean_stale_temps(folder)
        return _train_vae(model, train_set, test_set, config, out_dir, resume, overwrite, on_epoch_end)


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

    memory_format = _memory_format(device)
    model = model.to(device, memory_format=memory_format)
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
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, **_adam_implementation(device))
    halflife = config.lr_halflife
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 0.5 ** (epoch / halflife))

    loader_generator = torch.Generator()
    loader_generator.manual_seed(config.seed)
    sampler = DistributedSampler(
        train_set, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=config.seed, drop_last=True
    )

    def make_loader(skip_images: int = 0) -> DataLoader:
        return DataLoader(
            train_set,
            batch_size=local_batch,
            sampler=_SkipSampler(sampler, skip_images) if skip_images else sampler,
            drop_last=True,
            num_workers=config.num_workers,
            generator=loader_generator,
            pin_memory=device.type == "cuda",
            persistent_workers=False,
        )

    loader = make_loader()

    ckpt_dir = out_dir / "checkpoints"
    last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best_model.pt"
    history: list[dict] = []
    start_epoch, best_loss, best_epoch = 0, math.inf, 0
    resume_step, partial = 0, None  # a checkpoint written inside an epoch: its step and running sums
    if info.is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        ignore = ckpt_dir / ".gitignore"  # checkpoints are large: keep them out of version control
        if not ignore.exists():
            ignore.write_text("# written by percept.vae: checkpoints are not committed\n*\n")

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
        resume_step = int(state.get("step_in_epoch", 0))
        if resume_step:
            if len(rng) != info.world_size:
                raise RunError(
                    f"{resume_path} was written inside epoch {start_epoch + 1} by {len(rng)} processes; this run "
                    f"has {info.world_size}. Resume it with {len(rng)} processes, or from an epoch-end checkpoint"
                )
            if state["meta"]["config"].get("batch_size") != config.batch_size:
                raise RunError(
                    f"{resume_path} was written inside epoch {start_epoch + 1} with batch size "
                    f"{state['meta']['config'].get('batch_size')}; this run has {config.batch_size}. Resume it with "
                    "the same batch size (the rest of the epoch is counted in its batches)"
                )
            partial = state["partial"][info.rank]
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
            where = f", step {resume_step} of epoch {start_epoch + 1}" if resume_step else ""
            log.info("resumed %s at epoch %d%s", resume_path, start_epoch, where)
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

    def gather(obj) -> list:
        if not info.distributed:
            return [obj]
        gathered = [None] * info.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def save_last(epoch_done: int, rng: list, **extra) -> None:
        state = {
            "format": CHECKPOINT_FORMAT,
            "meta": meta,
            "epoch": epoch_done,
            "model": _unwrap(train_model).state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rng,
            "history": history,
            "best_test_loss": best_loss,
            "best_epoch": best_epoch,
            **extra,
        }
        atomic_save(state, last_path)

    steps_per_epoch = len(loader)
    for epoch in epochs_bar:
        t0 = time.time()
        sampler.set_epoch(epoch)
        train_model.train()
        sums = torch.zeros(4, dtype=torch.float64)
        lr = optimizer.param_groups[0]["lr"]
        step, epoch_loader = 0, loader
        if resume_step and epoch == start_epoch:  # the rest of an epoch that a checkpoint interrupted
            step, epoch_loader = resume_step, make_loader(resume_step * local_batch)
            sums = torch.tensor(partial["sums"], dtype=torch.float64)
            t0 -= float(partial["seconds"])
            loader_generator.set_state(partial["loader_at_epoch_start"])
        loader_at_epoch_start = loader_generator.get_state()  # the DataLoader draws its base seed from it
        for batch in tqdm(epoch_loader, desc=f"epoch {epoch + 1}", leave=False, disable=not show, unit="batch",
                          initial=step, total=steps_per_epoch):  # fmt: skip
            x = _batch_images(batch).to(device, non_blocking=True, memory_format=memory_format)
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
            step += 1
            if config.checkpoint_steps and step % config.checkpoint_steps == 0 and step < steps_per_epoch:
                rng = get_rng_state(loader_generator)
                here = {
                    "sums": sums.tolist(),
                    "seconds": time.time() - t0,
                    "loader_at_epoch_start": loader_at_epoch_start,
                }
                gathered = gather((rng, here))
                if info.is_main:
                    save_last(epoch, [g[0] for g in gathered], step_in_epoch=step, partial=[g[1] for g in gathered])
        if info.distributed:
            sums = sums.to(device)
            dist.all_reduce(sums)
            sums = sums.cpu()
        scheduler.step()
        test = mean_objective(
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
            "test_pixel_mse": test["pixel_mse"],
            "seconds": seconds,
            "images_per_second": sums[3].item() / seconds,
        }
        history.append(row)
        improved = row["test_loss"] < best_loss
        if improved:
            best_loss, best_epoch = row["test_loss"], epoch + 1
        rng = gather(get_rng_state(loader_generator))
        if info.is_main:
            bare = _unwrap(train_model)
            if improved:
                atomic_save({"meta": meta, "epoch": epoch + 1, "model": bare.state_dict()}, best_path)
            if (epoch + 1) % max(1, config.checkpoint_every) == 0 or epoch + 1 == config.epochs:
                save_last(epoch + 1, rng)
            _write_history(out_dir / "history.csv", history)
            epochs_bar.set_postfix(train=f"{row['train_loss']:.4g}", test=f"{row['test_loss']:.4g}")
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, bare, row)
        if info.distributed:
            dist.barrier()
    epochs_bar.close()
    if start_epoch >= config.epochs and info.is_main:
        log.info("%s already holds %d >= %d epochs: nothing to train", last_path, start_epoch, config.epochs)
        if resume_step:
            log.info("%s also holds %d steps of epoch %d; they are kept for a later --resume", last_path,
                     resume_step, start_epoch + 1)  # fmt: skip
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
        mid_epoch=bool(resume_step) and start_epoch >= config.epochs,
    )
