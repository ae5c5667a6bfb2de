"""The VAEs of Czolbe et al. 2020 (spec czolbe.md §11), layer by layer.

>>> import torch
>>> from percept.models import build_vae
>>> vae = build_vae("mnist")               # 33,662,757 parameters, latent 2, input 1x32x32
>>> recon, mu, logvar = vae(torch.rand(4, 1, 32, 32))   # x: (N, 1, 32, 32) in [0, 1]
>>> recon.shape, mu.shape
(torch.Size([4, 1, 32, 32]), torch.Size([4, 2]))

Every model here has ``encode(x) -> (mu, logvar)``, ``decode(z) -> images in [0, 1]``,
``forward(x) -> (recon, mu, logvar)`` (with the reparameterisation trick; ``recon`` decodes a sample
of q(z|x) in training mode and ``mu`` in eval mode), and the class attributes ``name``,
``image_shape`` (C, H, W) and ``colorspace`` used by :mod:`percept.vae`; the shared part is
:class:`percept.models.base.PaperVAE`.
"""

from __future__ import annotations

import torch.nn as nn

from percept.models.base import PaperVAE
from percept.models.celeba import CelebaVAE
from percept.models.mnist import MnistVAE

#: model name -> class
MODELS: dict[str, type[nn.Module]] = {"mnist": MnistVAE, "celeba": CelebaVAE}


def build_vae(name: str, **kwargs) -> nn.Module:
    """Build VAE ``name`` ("mnist" or "celeba") with the paper's sizes unless ``kwargs`` override them."""
    key = str(name).lower().replace("_", "-").removesuffix("-vae")
    if key not in MODELS:
        raise KeyError(f"unknown VAE {name!r}; valid names: {', '.join(MODELS)}")
    return MODELS[key](**kwargs)


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters (trainable or not; buffers such as BatchNorm statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


__all__ = ["PaperVAE", "MnistVAE", "CelebaVAE", "MODELS", "build_vae", "count_parameters"]
