"""The paper's VAE objective (Czolbe et al. 2020, spec czolbe.md §11): its tables, the loss weighting, the KL term.

The objective per minibatch of N images is::

    L = lambda * L_rec(recon, x) + KL,      KL = -1/2 * sum_{batch, latent} (1 + logvar - mu^2 - exp(logvar))

with ``lambda = exp(k)`` and L_rec the original LossProvider metric with reduction ``'sum'``.

>>> from percept.vae.paper import build_metric, loss_weighting  # doctest: +SKIP
>>> w = loss_weighting("mnist", "watson-dft", image_shape=(1, 32, 32))   # k = 0 (HEAD), factor 1  # doctest: +SKIP
>>> metric = build_metric("watson-dft", colorspace="grey", image_shape=(1, 32, 32))  # per-image values  # doctest: +SKIP
>>> term = w.term(metric(recon, x), n_global=len(x))                        # the weighted reconstruction term  # doctest: +SKIP

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
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from percept import registry as _registry

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
