"""What a trained VAE shows: reconstructions, samples, interpolations, the 2-D manifold, cross-metric scores.

>>> from percept.vae import load_model, reconstruct, sample, score_reconstructions  # doctest: +SKIP
>>> vae = load_model("results/vae_mnist/watson-dft/checkpoints/best_model.pt")  # doctest: +SKIP
>>> recon = reconstruct(vae, images)                     # (N, 1, 32, 32) in [0, 1], decoded from z = mu  # doctest: +SKIP
>>> faces = sample(vae, 64, seed=0)                      # 64 images decoded from z ~ N(0, I)  # doctest: +SKIP
>>> scores = score_reconstructions(vae, test_set, {"l2": l2_metric})   # {"l2": (N,) distances}  # doctest: +SKIP

Every function runs the model in eval mode without gradients and returns CPU tensors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from percept.guard import atomic_output


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


def append_snapshot(path: Path, model: nn.Module, images: torch.Tensor, test_ids, epoch: int) -> None:
    """Add epoch ``epoch``'s reconstructions (z = mu) of ``images`` to ``path`` (npz: ``test_ids``, ``images``,
    ``epochs`` (E,), ``reconstructions`` (E, K, C, H, W), uint8), so one can see when the images appear.

    Entries of epoch ``epoch`` or later (from a run that was interrupted and resumed) are replaced."""
    epochs, recons = [], []
    if path.is_file():
        with np.load(path) as old:
            keep = old["epochs"] < epoch
            epochs, recons = list(old["epochs"][keep]), list(old["reconstructions"][keep])
    was_training = model.training
    with torch.no_grad():
        recon = reconstruct(model, images)
    model.train(was_training)
    epochs.append(epoch)
    recons.append(to_uint8(recon))
    with atomic_output(path, "wb") as f:
        np.savez_compressed(f, test_ids=np.asarray(test_ids), images=to_uint8(images), epochs=np.asarray(epochs),
                            reconstructions=np.stack(recons))  # fmt: skip


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

