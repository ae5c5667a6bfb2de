"""Checkpoints of the VAE trainer: the file format, reading, compatibility checks, rebuilding a model.

>>> from percept.vae.checkpoint import load_checkpoint, load_model  # doctest: +SKIP
>>> state = load_checkpoint("results/vae_mnist/l2/checkpoints/last.pt")   # dict: meta, epoch, model, optimizer, ...  # doctest: +SKIP
>>> vae = load_model("results/vae_mnist/l2/checkpoints/best_model.pt")    # the paper VAE with those weights  # doctest: +SKIP

``last.pt`` (written by :func:`percept.vae.train_vae` after every epoch, atomically) holds the model, the
optimiser, the scheduler, the epoch, the RNG states of every process, the training history and ``meta``
(model name and configuration, loss, k, lambda, seed); ``best_model.pt`` holds ``meta`` and the weights with
the lowest test loss.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn


class CheckpointMismatch(ValueError):
    """A checkpoint was written by a run with a different model, model configuration, loss or lambda."""


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable or not a checkpoint of this trainer."""


CHECKPOINT_FORMAT = "percept-vae-checkpoint/1"


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint written by :func:`percept.vae.train_vae`; a missing or corrupt file raises :class:`CheckpointError`."""
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
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path} cannot be read as a checkpoint ({type(err).__name__}: {err})") from err
    return model_from_state(state).to(map_location)


def model_from_state(state: dict) -> nn.Module:
    """The paper VAE of a loaded checkpoint dict (its ``meta`` names the model and its config)."""
    from percept.models import build_vae

    meta = state.get("meta", state)
    with torch.device("meta"):  # no time spent on an initialisation that is overwritten anyway
        model = build_vae(meta["model"], **meta.get("model_config", {}))
    model.load_state_dict(state["model"], assign=True)
    return model

