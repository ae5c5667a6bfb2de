"""What the paper's two VAEs share: the Gaussian encoder head, the reparameterisation trick, the stored config.

Both VAEs convolve the image down to a ``channels`` x 16 x 16 map, pass it through the same dense bottleneck
(:meth:`PaperVAE.build_bottleneck`: flatten, Linear to ``hidden_dim``, ReLU, Linear heads to ``mu`` and
``logvar``; back: Linear, ReLU, Linear, ReLU to the map) and convolve back up. A model subclasses
:class:`PaperVAE`, calls ``build_bottleneck(encoder convolutions, channels)`` and then builds its decoder
convolutions in ``__init__``, implements ``decode(z) -> images in [0, 1]`` (starting from
:meth:`PaperVAE.latent_to_map`) and sets the class attributes ``name``, ``image_shape`` (C, H, W) and
``colorspace`` that the trainer (:mod:`percept.vae`) reads.

>>> import torch
>>> from percept.models import build_vae
>>> vae = build_vae("mnist", hidden_dim=16).eval()
>>> mu, logvar = vae.encode(torch.rand(3, 1, 32, 32))
>>> vae.decode(mu).shape, vae.config()["latent_dim"]
(torch.Size([3, 1, 32, 32]), 2)
"""

from __future__ import annotations

import torch
import torch.nn as nn


class PaperVAE(nn.Module):
    """Base of :class:`percept.models.MnistVAE` and :class:`percept.models.CelebaVAE` (no layers of its own)."""

    name: str
    image_shape: tuple[int, int, int]
    colorspace: str
    def __init__(self, latent_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.hidden_dim = hidden_dim
        self.map_channels = 0

    def build_bottleneck(self, convolutions: list[nn.Module], channels: int) -> None:
        """``encoder`` = ``convolutions`` (images -> ``channels`` x 16 x 16), flatten, Linear -> hidden_dim, ReLU;
        ``fc_mu``, ``fc_logvar``: Linear hidden_dim -> latent_dim; ``decoder_fc``: Linear latent_dim -> hidden_dim,
        ReLU, Linear -> ``channels`` * 16 * 16, ReLU (created in this order, as in the original code)."""
        features = channels * 16 * 16
        self.map_channels = channels
        self.encoder = nn.Sequential(*convolutions, nn.Flatten(), nn.Linear(features, self.hidden_dim), nn.ReLU())
        self.fc_mu = nn.Linear(self.hidden_dim, self.latent_dim)
        self.fc_logvar = nn.Linear(self.hidden_dim, self.latent_dim)
        self.decoder_fc = nn.Sequential(
            nn.Linear(self.latent_dim, self.hidden_dim),
            nn.ReLU(),
            nn.Linear(self.hidden_dim, features),
            nn.ReLU(),
        )

    def latent_to_map(self, z: torch.Tensor) -> torch.Tensor:
        """(N, latent_dim) latent codes -> (N, channels, 16, 16), the start of the decoder."""
        return self.decoder_fc(z).view(-1, self.map_channels, 16, 16)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, *image_shape) images in [0, 1] -> (mu, logvar), each (N, latent_dim)."""
        h = self.encoder(x)
        return self.fc_mu(h), self.fc_logvar(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(N, latent_dim) latent codes -> (N, *image_shape) images in [0, 1]."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (reconstruction, mu, logvar). Samples z ~ q(z|x) in training mode, uses z = mu in eval mode."""
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        return self.decode(z), mu, logvar

    def config(self) -> dict:
        """Constructor arguments; stored in checkpoints so a model can be rebuilt and compared."""
        return {"latent_dim": self.latent_dim, "hidden_dim": self.hidden_dim}
