"""The CelebA VAE of Czolbe et al. 2020 (``celebA_vae.py``; spec czolbe.md §11.3): 136,348,547 parameters.

Input: (N, 3, 64, 64) RGB in [0, 1] (aligned CelebA, cropped to the box (25, 45, 153, 178) and resized
to 64x64, see :mod:`percept.data.celeba`). Latent dimension 256.

Encoder                                                  Decoder
  Conv 3->64, LReLU, MaxPool 2, BatchNorm(64)              Linear 256->2048, ReLU
  Conv 64->128, LReLU, MaxPool 2, BatchNorm(128)           Linear 2048->32768, ReLU, reshape 128x16x16
  Conv 128->128, LReLU                    (128x16x16)      Conv 128->128, LReLU, bilinear upsample to 32x32
  flatten 32768, Linear ->2048, ReLU                       Conv 128->64, LReLU, bilinear upsample to 64x64
  mu, logvar: Linear 2048->256                             Conv 64->64, LReLU; Conv 64->64, LReLU
                                                           Conv 64->3, Sigmoid
All convolutions are 3x3 with padding 1; LeakyReLU has slope 0.01; upsampling uses align_corners=True.
The original also appended two BatchNorm layers to the decoder's layer list after the list had been
wrapped, so they were never used (pitfall P16); they are left out here and the parameter count matches.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class CelebaVAE(nn.Module):
    """The paper's CelebA VAE. ``hidden_dim`` and ``latent_dim`` default to the paper's 2048 and 256."""

    name = "celeba-vae"
    image_shape = (3, 64, 64)
    colorspace = "rgb"

    def __init__(self, latent_dim: int = 256, hidden_dim: int = 2048) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.hidden_dim = hidden_dim
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 64, 3, padding=1),
            nn.LeakyReLU(0.01),
            nn.MaxPool2d(2),
            nn.BatchNorm2d(64),  # 64 x 32 x 32
            nn.Conv2d(64, 128, 3, padding=1),
            nn.LeakyReLU(0.01),
            nn.MaxPool2d(2),
            nn.BatchNorm2d(128),  # 128 x 16 x 16
            nn.Conv2d(128, 128, 3, padding=1),
            nn.LeakyReLU(0.01),
            nn.Flatten(),
            nn.Linear(128 * 16 * 16, hidden_dim),
            nn.ReLU(),
        )
        self.fc_mu = nn.Linear(hidden_dim, latent_dim)
        self.fc_logvar = nn.Linear(hidden_dim, latent_dim)
        self.decoder_fc = nn.Sequential(
            nn.Linear(latent_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, 128 * 16 * 16),
            nn.ReLU(),
        )
        self.decoder_conv1 = nn.Sequential(nn.Conv2d(128, 128, 3, padding=1), nn.LeakyReLU(0.01))
        self.decoder_conv2 = nn.Sequential(nn.Conv2d(128, 64, 3, padding=1), nn.LeakyReLU(0.01))
        self.decoder_conv3 = nn.Sequential(
            nn.Conv2d(64, 64, 3, padding=1),
            nn.LeakyReLU(0.01),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.LeakyReLU(0.01),
            nn.Conv2d(64, 3, 3, padding=1),
            nn.Sigmoid(),
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, 64, 64) images in [0, 1] -> (mu, logvar), each (N, latent_dim)."""
        h = self.encoder(x)
        return self.fc_mu(h), self.fc_logvar(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(N, latent_dim) latent codes -> (N, 3, 64, 64) images in [0, 1]."""
        h = self.decoder_fc(z).view(-1, 128, 16, 16)
        h = self.decoder_conv1(h)
        h = F.interpolate(h, size=(32, 32), mode="bilinear", align_corners=True)
        h = self.decoder_conv2(h)
        h = F.interpolate(h, size=(64, 64), mode="bilinear", align_corners=True)
        return self.decoder_conv3(h)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (reconstruction, mu, logvar). Samples z ~ q(z|x) in training mode, uses z = mu in eval mode."""
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        return self.decode(z), mu, logvar

    def config(self) -> dict:
        """Constructor arguments; stored in checkpoints so a model can be rebuilt and compared."""
        return {"latent_dim": self.latent_dim, "hidden_dim": self.hidden_dim}
