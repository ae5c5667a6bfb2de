"""The VAE experiments of Czolbe et al. 2020 (spec czolbe.md §11): train a VAE with any registry metric as its
reconstruction loss, and the driver behind ``experiments/vae_mnist`` and ``experiments/vae_celeba``.

>>> from percept.models import build_vae  # doctest: +SKIP
>>> from percept.data.mnist import load_mnist  # doctest: +SKIP
>>> from percept.vae import TrainConfig, train_vae, load_model, reconstruct  # doctest: +SKIP
>>> cfg = TrainConfig(loss="watson-dft", epochs=250, batch_size=128, lr_halflife=100)  # doctest: +SKIP
>>> result = train_vae(build_vae("mnist"), load_mnist("train"), load_mnist("test"), cfg, "results/x/watson-dft")  # doctest: +SKIP
>>> recon = reconstruct(load_model(result.best_checkpoint), load_mnist("test").images(range(8)))  # doctest: +SKIP

Modules:

- :mod:`percept.vae.paper`: the paper's tables (losses, lambda exponents per model and code version,
  schedules, metric options), :func:`loss_weighting` (the registry's units -> the original's), the KL term;
- :mod:`percept.vae.trainer`: :class:`TrainConfig`, :func:`train_vae` (checkpoints, resume, DDP);
- :mod:`percept.vae.checkpoint`: the checkpoint format, :func:`load_checkpoint`, :func:`load_model`;
- :mod:`percept.vae.outputs`: reconstructions, samples, interpolations, the manifold, cross-metric scores;
- :mod:`percept.vae.driver`: :class:`VAEExperiment` and :func:`run_experiment` (flags, results folder).
"""

from percept.vae.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    CheckpointMismatch,
    check_compatible,
    load_checkpoint,
    load_model,
)
from percept.vae.driver import Figures, VAEExperiment, build_parser, first_positions, run_experiment, write_outputs
from percept.vae.outputs import interpolate, manifold, reconstruct, sample, score_reconstructions, to_uint8
from percept.vae.paper import (
    BATCH_MEAN_METRICS,
    K_EXPONENTS,
    OUR_K,
    PAPER_LOSSES,
    PAPER_METRIC_OPTIONS,
    PAPER_SCHEDULE,
    PIXEL_MEAN_METRICS,
    LossWeighting,
    build_metric,
    canonical_loss,
    kl_divergence,
    loss_weighting,
    model_key,
)
from percept.vae.trainer import HISTORY_FIELDS, TrainConfig, TrainResult, mean_objective, train_vae

__all__ = [
    "TrainConfig", "TrainResult", "train_vae", "mean_objective", "HISTORY_FIELDS",
    "CHECKPOINT_FORMAT", "CheckpointError", "CheckpointMismatch", "check_compatible", "load_checkpoint", "load_model",
    "reconstruct", "sample", "interpolate", "manifold", "score_reconstructions", "to_uint8",
    "PAPER_LOSSES", "K_EXPONENTS", "OUR_K", "PIXEL_MEAN_METRICS", "BATCH_MEAN_METRICS", "PAPER_SCHEDULE",
    "PAPER_METRIC_OPTIONS", "LossWeighting", "loss_weighting", "build_metric", "canonical_loss", "kl_divergence",
    "model_key", "Figures", "VAEExperiment", "run_experiment", "build_parser", "first_positions", "write_outputs",
]  # fmt: skip
