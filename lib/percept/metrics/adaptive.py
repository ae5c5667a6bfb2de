"""Barron's adaptive robust loss on YUV-DCT coefficients (Czolbe et al. 2020): modules over
:mod:`percept.functional.adaptive`.

The formula, written once, is :mod:`percept.functional.adaptive` (:func:`percept.functional.adaptive`; the
layout quirk of the original, pitfall P12, is explained there). Here is :class:`Adaptive`, the registry
metric (``percept.get_metric("adaptive")``): per-image value = the sum of the elementwise NLL over the image.
It is an NLL, so it can be negative, and it is not 0 for identical images (it is then
``sum(log c + log Z(alpha))``, a constant of the weights). The reproduction of the original ``LossProvider``
Adaptive loss, bugs included, on the same formula, is :func:`percept.compat.original_adaptive`.

>>> import torch
>>> from percept.metrics.adaptive import Adaptive
>>> metric = Adaptive(reduction="none")            # the shipped weights: one (alpha, c) per 64x64 coefficient
>>> x = torch.rand(2, 3, 64, 64)
>>> metric(x, x.flip(-1)).shape
torch.Size([2])
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from percept import checks
from percept.assets import locate
from percept.execution import check_strategy, no_autocast

# (``percept.functional.adaptive`` is the function; the module's names are imported from it directly)
from percept.functional.adaptive import (  # noqa: F401 (the math, re-exported)
    _EPS,
    ALPHA_HI,
    ALPHA_LO,
    SCALE_INIT,
    SCALE_LO,
    SYUV_SCALE,
    YUV_MATRIX,
    BarronConstants,
    alpha_from_latent,
    barron_constants,
    bind,
    coefficients,
    dct_matrix,
    log_partition,
    nll,
    nll_map,
    rgb_to_syuv,
    rho,
    scale_from_latent,
)
from percept.metrics._frozen import FrozenPerImage, cached_constants, images_per_chunk

__all__ = [
    "Adaptive",
    "rho",
    "nll",
    "log_partition",
    "alpha_from_latent",
    "scale_from_latent",
    "rgb_to_syuv",
    "dct_matrix",
]


# --------------------------------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------------------------------

#: the shipped weights fit only this size (3 * 64 * 64 = 12288 coefficients)
PRETRAINED_SIZE = (64, 64)


def load_czolbe_weights(colorspace: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The trained ``(latent_alpha, latent_scale)`` of Czolbe et al., each flat of length 12288.

    ``colorspace`` "rgb" reads ``rgb_adaptive_trial0.pth``, "grey" reads ``gray_adaptive_trial0.pth``
    (trained on grey images expanded to 3 identical channels). The files' keys carry a leading "." that the
    original provider strips; flat index ``c*4096 + h*64 + w`` belongs to coefficient ``[c, h, w]`` of the
    original layout (see :func:`_coefficients_original`).
    """
    name = "rgb" if checks.normalize_colorspace(colorspace) == "rgb" else "gray"
    path = locate(f"weights/czolbe/{name}_adaptive_trial0.pth")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k[1:] if k.startswith(".") else k: v for k, v in state.items()}
    prefix = "robust_loss.adaptive_lossfun."
    try:
        alpha, scale = state[prefix + "latent_alpha"], state[prefix + "latent_scale"]
    except KeyError as err:
        raise KeyError(f"{path} lacks {err}; keys are {sorted(state)}") from None
    return alpha.reshape(-1).float(), scale.reshape(-1).float()


def _size_pair(image_size) -> tuple[int, int]:
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    size = tuple(int(s) for s in image_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"image_size must be (H, W) with positive sizes, got {image_size!r}")
    return size


# --------------------------------------------------------------------------------------------------
# the registry metric
# --------------------------------------------------------------------------------------------------


class Adaptive(nn.Module):
    """Barron's adaptive robust loss (NLL) on YUV-DCT coefficients of the residual, per image.

    Args:
        colorspace: "rgb" (input (N, 3, H, W)) or "grey" (alias "LA", "gray"; input (N, 1, H, W)).
        reduction: "mean", "sum" (over the batch) or "none" (shape (N,)).
        pretrained: load the Czolbe et al. weights (64x64 images, ``layout="original"`` only). False gives
            alpha = 1 and c = 1 for every coefficient (the library's initialisation).
        trainable: make ``latent_alpha`` and ``latent_scale`` trainable (``requires_grad=True``);
            otherwise they are frozen.
        image_size: (H, W) (or an int) the per-coefficient parameters are built for; input must match it.
        layout: "original" reproduces the trained weights' layout (the original's NCHW-read-as-NHWC mix-up:
            sYUV over triples of horizontal neighbours, 2-D DCT over the (channel, row) plane of each column),
            so the pretrained weights mean what they meant. "nchw" is the intended model: per-pixel sYUV,
            then a 2-D DCT over (H, W) of each channel; only with ``pretrained=False``.

    Grey images: with ``layout="original"`` the grey residual is expanded to 3 identical channels, exactly
    what the original's GreyscaleWrapper fed the grey weights in training (3 * H * W parameters). With
    ``layout="nchw"`` a grey image is modelled as what it is, one channel (1 * H * W parameters, no colour
    transform): expanding would add U and V coefficients that are identically zero, whose NLL is a constant
    that, when trained, drives their scales to the lower bound.

    Returns the sum over the image of the elementwise NLL ``rho + log c + log Z(alpha)``, reduced over the
    batch. It is a negative log-likelihood: it can be negative, and identical images give the constant
    ``sum(log c + log Z(alpha))`` rather than 0. Lower is more similar. Inputs are NCHW floats in [0, 1].
    """

    higher_is_better = False

    def __init__(
        self,
        *,
        colorspace: str = "rgb",
        reduction: str = "mean",
        pretrained: bool = True,
        trainable: bool = False,
        image_size: tuple[int, int] | int = PRETRAINED_SIZE,
        layout: str = "original",
        strategy: str = "auto",
    ) -> None:
        super().__init__()
        #: "auto" (chunks on CPU, the whole batch at once on other devices), "chunked" or "batched"
        self.strategy = check_strategy(strategy)
        self.colorspace = checks.normalize_colorspace(colorspace)
        self.reduction = checks.check_reduction(reduction)
        self.channels = 3 if self.colorspace == "rgb" else 1
        self.image_size = _size_pair(image_size)
        if layout not in ("original", "nchw"):
            raise ValueError(f"unknown layout {layout!r}: use 'original' or 'nchw'")
        self.layout = layout
        if pretrained and layout != "original":
            raise ValueError(
                "the pretrained Adaptive weights were trained in the original (NCHW-read-as-NHWC) layout; "
                "layout='nchw' needs pretrained=False"
            )
        if pretrained and self.image_size != PRETRAINED_SIZE:
            raise ValueError(
                f"the pretrained Adaptive weights fit only {PRETRAINED_SIZE[0]}x{PRETRAINED_SIZE[1]} images, "
                f"got image_size={self.image_size}; use pretrained=False for other sizes"
            )
        h, w = self.image_size
        shape = (3 if layout == "original" else self.channels, h, w)
        if pretrained:
            latent_alpha, latent_scale = (v.reshape(shape) for v in load_czolbe_weights(self.colorspace))
        else:
            latent_alpha, latent_scale = torch.zeros(shape), torch.zeros(shape)
        self.latent_alpha = nn.Parameter(latent_alpha.clone(), requires_grad=trainable)
        self.latent_scale = nn.Parameter(latent_scale.clone(), requires_grad=trainable)

    @property
    def alpha(self) -> torch.Tensor:
        """Shape parameters, one per coefficient, in (0.001, 1.999); shape (C, H, W)."""
        return alpha_from_latent(self.latent_alpha)

    @property
    def scale(self) -> torch.Tensor:
        """Scale parameters c, one per coefficient, > 1e-5; shape (C, H, W)."""
        return scale_from_latent(self.latent_scale)

    def extra_repr(self) -> str:
        return (
            f"colorspace={self.colorspace!r}, reduction={self.reduction!r}, image_size={self.image_size}, "
            f"layout={self.layout!r}"
        )

    def coefficients(self, residual: torch.Tensor) -> torch.Tensor:
        """Transform coefficients of an (N, C, H, W) residual, aligned with the parameters (N, C', H, W)."""
        return coefficients(residual, self.layout)

    def formula_constants(self, dtype: torch.dtype | None = None) -> BarronConstants:
        """The NLL's parameter-derived tensors in ``dtype`` (default: the parameters'); differentiable."""
        dtype = dtype or self.latent_alpha.dtype
        return barron_constants(
            alpha_from_latent(self.latent_alpha.to(dtype)), scale_from_latent(self.latent_scale.to(dtype))
        )

    def functional_kwargs(self) -> dict:
        """The keyword arguments of :func:`percept.functional.adaptive` that compute this metric."""
        return {"alpha": self.alpha, "scale": self.scale, "layout": self.layout, "reduction": self.reduction}

    def elementwise(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The elementwise NLL map (N, C', H, W) (C' = 3 in the original layout, even for grey)."""
        self._check(input, target)
        x = self.coefficients(input - target)
        return nll_map(x, self.formula_constants(x.dtype))

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """input, target: (N, C, H, W) in [0, 1]. Returns a scalar, or (N,) for reduction 'none'.

        A frozen metric against a target that needs no gradient computes the input gradient in closed
        form, a chunk of images at a time (see :class:`~percept.metrics._frozen.FrozenPerImage`);
        otherwise autograd runs through the same formula (:func:`percept.functional.adaptive`).
        """
        self._check(input, target)
        dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
        with no_autocast(input.device.type):
            params = (self.latent_alpha, self.latent_scale)
            constants = cached_constants(self, params, dtype, lambda: self.formula_constants(dtype))
            per_image = bind(constants, self.layout)
            graph = torch.is_grad_enabled() and (
                target.requires_grad or self.latent_alpha.requires_grad or self.latent_scale.requires_grad
            )
            if graph:
                return checks.reduce(per_image(input, target, slice(None)), self.reduction)
        # chunks of at most 2^18 coefficients and a quarter of the batch's size (grey images have
        # three coefficients per pixel in the original layout)
        budget = min(1 << 18, input.numel() // 4)
        per_chunk = images_per_chunk(
            self.strategy, input.device, input.shape[0], math.prod(self.latent_alpha.shape), budget
        )
        return checks.reduce(FrozenPerImage.apply(input, target, per_image, per_chunk), self.reduction)

    def _check(self, input: torch.Tensor, target: torch.Tensor) -> None:
        checks.check_pair(input, target, channels=self.channels, name="adaptive")
        if tuple(input.shape[2:]) != self.image_size:
            h, w = input.shape[2:]
            raise ValueError(
                f"adaptive: this metric has one (alpha, scale) per coefficient of a {self.image_size[0]}x"
                f"{self.image_size[1]} image, got {h}x{w} images; crop/resize to {self.image_size[0]}x"
                f"{self.image_size[1]}, or build it with image_size=({h}, {w}) and pretrained=False "
                "(the shipped weights fit only 64x64)"
            )
