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

>>> import torch
>>> from percept.models.celeba import CelebaVAE
>>> recon, mu, logvar = CelebaVAE(hidden_dim=16)(torch.rand(2, 3, 64, 64))  # hidden 16: a small test copy
>>> recon.shape, mu.shape
(torch.Size([2, 3, 64, 64]), torch.Size([2, 256]))
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from percept.models.base import PaperVAE


class CelebaVAE(PaperVAE):
    """The paper's CelebA VAE. ``hidden_dim`` and ``latent_dim`` default to the paper's 2048 and 256."""

    name = "celeba-vae"
    image_shape = (3, 64, 64)
    colorspace = "rgb"

    def __init__(self, latent_dim: int = 256, hidden_dim: int = 2048) -> None:
        super().__init__(latent_dim, hidden_dim)
        convolutions = [
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
        ]
        self.build_bottleneck(convolutions, channels=128)  # encoder (+ flatten, Linear, ReLU), mu/logvar, decoder_fc
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

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(N, latent_dim) latent codes -> (N, 3, 64, 64) images in [0, 1]."""
        h = self.decoder_conv1(self.latent_to_map(z))  # 128 x 16 x 16
        h = F.interpolate(h, size=(32, 32), mode="bilinear", align_corners=True)
        h = self.decoder_conv2(h)
        h = F.interpolate(h, size=(64, 64), mode="bilinear", align_corners=True)
        return self.decoder_conv3(h)
