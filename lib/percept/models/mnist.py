"""The MNIST VAE of Czolbe et al. 2020 (``mnist_vae.py``; spec czolbe.md §11.2): 33,662,757 parameters.

Input: (N, 1, 32, 32) in [0, 1] (MNIST zero-padded by 2 pixels). Latent dimension 2, so the whole
latent space can be drawn as a manifold.

Encoder                                            Decoder
  Conv 1->32 3x3 pad 1, LeakyReLU, MaxPool 2          Linear 2->1024, ReLU
  Conv 32->64 3x3 pad 1, LeakyReLU    (64x16x16)      Linear 1024->16384, ReLU, reshape 64x16x16
  flatten 16384, Linear ->1024, ReLU                  Conv 64->64, LeakyReLU
  mu: Linear 1024->2, logvar: Linear 1024->2          bilinear upsample (align_corners) to 32x32
                                                      Conv 64->32, LReLU; Conv 32->32, LReLU
                                                      Conv 32->1, Sigmoid
All convolutions are 3x3 with padding 1; LeakyReLU has slope 0.01.

>>> import torch
>>> from percept.models.mnist import MnistVAE
>>> recon, mu, logvar = MnistVAE(hidden_dim=16)(torch.rand(2, 1, 32, 32))   # hidden 16: a small test copy
>>> recon.shape, mu.shape
(torch.Size([2, 1, 32, 32]), torch.Size([2, 2]))
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from percept.models.base import PaperVAE


class MnistVAE(PaperVAE):
    """The paper's MNIST VAE. ``hidden_dim`` and ``latent_dim`` default to the paper's 1024 and 2.

    Smaller ``hidden_dim`` values are only meant for fast tests of the training machinery.
    """

    name = "mnist-vae"
    image_shape = (1, 32, 32)
    colorspace = "grey"

    def __init__(self, latent_dim: int = 2, hidden_dim: int = 1024) -> None:
        super().__init__(latent_dim, hidden_dim)
        convolutions = [
            nn.Conv2d(1, 32, 3, padding=1),
            nn.LeakyReLU(0.01),
            nn.MaxPool2d(2),  # 32 x 16 x 16
            nn.Conv2d(32, 64, 3, padding=1),
            nn.LeakyReLU(0.01),  # 64 x 16 x 16
        ]
        self.build_bottleneck(convolutions, channels=64)  # encoder (+ flatten, Linear, ReLU), mu/logvar, decoder_fc
        self.decoder_conv1 = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.LeakyReLU(0.01))
        self.decoder_conv2 = nn.Sequential(
            nn.Conv2d(64, 32, 3, padding=1),
            nn.LeakyReLU(0.01),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.LeakyReLU(0.01),
            nn.Conv2d(32, 1, 3, padding=1),
            nn.Sigmoid(),
        )

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(N, latent_dim) latent codes -> (N, 1, 32, 32) images in [0, 1]."""
        h = self.decoder_conv1(self.latent_to_map(z))  # 64 x 16 x 16
        h = F.interpolate(h, size=(32, 32), mode="bilinear", align_corners=True)
        return self.decoder_conv2(h)
