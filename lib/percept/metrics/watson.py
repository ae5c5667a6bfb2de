"""Watson's perceptual model on 8x8 block DCT and DFT coefficients (Czolbe et al., NeurIPS 2020).

For one channel with target coefficients C0 and input coefficients C1 (blocks k, frequencies f):

1. base thresholds ``t = exp(t_tild)`` per frequency;
2. luminance masking ``T = t * ((dc0 + eps) / (mean(dc0) + eps)) ** alpha`` with dc0 the target's DC term;
3. contrast masking ``M = (|C0| + eps) ** w * T ** (1 - w)`` with ``w = sigmoid(w_tild)``, and the threshold
   ``S = smax(T, M)`` where ``smax(a, b) = a * softmax(a, b)[0] + b * softmax(a, b)[1]``;
4. Minkowski pooling ``D = (sum_{k,f} [(|C0 - C1| / S + eps) ** beta + eps]) ** (1 / beta)``.

The DFT variant compares amplitudes this way and adds a linear, weighted sum of phase differences.
RGB images are converted to YCbCr and each plane has its own parameters; the three distances are
combined with softmax weights. All channels are computed at once (parameters are stacked along a
channel axis), the block transforms are matrix products, and nothing loops over blocks or images.

Differences from the original code, all documented in the README:

- Per-image luminance masking (default): ``mean(dc0)`` is taken over the blocks of each image, so an
  image's distance does not depend on the rest of the batch. ``batch_luminance=True`` restores the
  original's mean over the whole batch (used by :class:`percept.LossProvider`).
- Dark blocks: the original's threshold goes to zero on pure-black target blocks and the loss explodes
  (about 3e7 on a real photograph). Here the target's DC term is floored at the value of a block of
  mean ``luminance_floor`` (default 1/255, one 8-bit grey level) before masking. Blocks at least that
  bright are untouched, so real images give the original's values; ``luminance_floor=0`` is the
  original formula exactly.
- The random shift of up to 8 px uses torch's RNG (seedable), not numpy's global RNG.
"""

from __future__ import annotations

import contextlib
import math
from functools import partial

import torch
import torch.nn as nn

from percept import assets, checks
from percept.color import YCBCR_MATRIX, YCBCR_OFFSET, rgb_to_ycbcr
from percept.transforms import block_dct, block_rdft, random_offsets, shift_images

EPS = 1e-10
BLOCK = 8
PHASE_CLAMP = 1 - 1e-7

#: Watson (1993) DCT base detection thresholds for 8x8 blocks (the DCTune defaults)
WATSON_TABLE = (
    (1.40, 1.01, 1.16, 1.66, 2.40, 3.43, 4.79, 6.56),
    (1.01, 1.45, 1.32, 1.52, 2.00, 2.71, 3.67, 4.93),
    (1.16, 1.32, 2.24, 2.59, 2.98, 3.64, 4.60, 5.88),
    (1.66, 1.52, 2.59, 3.77, 4.55, 5.30, 6.28, 7.60),
    (2.40, 2.00, 2.98, 4.55, 6.15, 7.46, 8.71, 10.17),
    (3.43, 2.71, 3.64, 5.30, 7.46, 9.62, 11.58, 13.51),
    (4.79, 3.67, 4.60, 6.28, 8.71, 11.58, 14.50, 17.29),
    (6.56, 4.93, 5.88, 7.60, 10.17, 13.51, 17.29, 21.15),
)

_CHANNEL_PREFIXES = ("ly.", "lcb.", "lcr.")


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def smooth_max(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise ``a * s_a + b * s_b`` with ``(s_a, s_b) = softmax(a, b)``."""
    return b + (a - b) * torch.sigmoid(a - b)


class _Watson(nn.Module):
    """Shared machinery of :class:`WatsonDCT` and :class:`WatsonDFT`; see the module docstring."""

    higher_is_better = False
    kind = ""  # "dct" or "fft": the name used by the original weight files
    n_freq = 0

    def __init__(
        self,
        *,
        colorspace: str = "rgb",
        reduction: str = "mean",
        deterministic: bool = True,
        pretrained: bool = True,
        trainable: bool = False,
        batch_luminance: bool = False,
        luminance_floor: float = 1 / 255,
        weights: str | None = None,
        chunk_pixels: int = 1 << 16,
    ) -> None:
        super().__init__()
        self.colorspace = checks.normalize_colorspace(colorspace)
        self.reduction = checks.check_reduction(reduction)
        self.deterministic = deterministic
        self.trainable = trainable
        self.batch_luminance = batch_luminance
        if luminance_floor < 0:
            raise ValueError("luminance_floor must be >= 0")
        self.luminance_floor = float(luminance_floor)
        self.channels = 3 if self.colorspace == "rgb" else 1
        self.generator: torch.Generator | None = None  # set one for reproducible shifts
        #: pixels per chunk when a frozen metric forms gradients in its forward pass (0: no chunking)
        self.chunk_pixels = chunk_pixels
        self.dropout = nn.Dropout(0.5)

        c = self.channels
        self.t_tild = nn.Parameter(self._initial_log_thresholds().expand(c, -1).clone())
        self.alpha = nn.Parameter(torch.full((c,), self._initial_alpha))
        self.w_tild = nn.Parameter(torch.full((c,), _logit(self._initial_w)))
        self.beta = nn.Parameter(torch.full((c,), self._initial_beta))
        self.channel_logits = nn.Parameter(torch.zeros(c))  # softmax -> 1/3 each for YCbCr
        self._init_extra(c)
        if pretrained or weights is not None:
            self.load_original_state_dict(self._read_weights(weights))
        self.train(trainable)
        self.requires_grad_(trainable)

    # -- parameters -------------------------------------------------------------------------------
    _initial_alpha = 0.0
    _initial_w = 0.5
    _initial_beta = 1.0

    def _initial_log_thresholds(self) -> torch.Tensor:
        raise NotImplementedError

    def _init_extra(self, channels: int) -> None:
        pass

    def weight_file(self) -> str:
        prefix = "rgb" if self.colorspace == "rgb" else "gray"
        return f"weights/czolbe/{prefix}_watson_{self.kind}_trial0.pth"

    def _read_weights(self, path: str | None) -> dict:
        source = path if path is not None else assets.locate(self.weight_file())
        return torch.load(source, map_location="cpu", weights_only=True)

    _per_channel = ("t_tild", "alpha", "w_tild", "beta")

    def load_original_state_dict(self, state: dict) -> None:
        """Load parameters saved by the original code (``ly.t_tild``, ``w_tild``, ... or grey keys).

        Every learned parameter must be present. ``blocksize`` must be 8 when present; the fixed
        matrices the original stores (``dct.A``, ``to_YCbCr.*``) are recomputed here and not read.
        """
        prefixes = _CHANNEL_PREFIXES if self.channels == 3 else ("",)
        loaded = {}
        for name in self._per_channel:
            try:
                values = [state[p + name] for p in prefixes]
            except KeyError as err:
                raise KeyError(
                    f"weights for {type(self).__name__}({self.colorspace}) lack {err.args[0]!r}; "
                    f"expected the keys of {self.weight_file()}"
                ) from None
            loaded[name] = torch.stack([v.reshape(getattr(self, name).shape[1:]) for v in values])
        if self.channels == 3:
            loaded["channel_logits"] = state["w_tild"].reshape(3)
        for p in prefixes:
            if p + "blocksize" in state and int(state[p + "blocksize"]) != BLOCK:
                raise ValueError(f"weights use blocksize {int(state[p + 'blocksize'])}, only {BLOCK} is supported")
        with torch.no_grad():
            for name, value in loaded.items():
                getattr(self, name).copy_(value)

    def original_state_dict(self) -> dict:
        """The parameters in the original code's key layout (loadable by its LossProvider)."""
        prefixes = _CHANNEL_PREFIXES if self.channels == 3 else ("",)
        out = {}
        for i, p in enumerate(prefixes):
            out[p + "blocksize"] = torch.tensor(BLOCK)
            for name in self._per_channel:
                value = getattr(self, name)[i].detach().clone()
                out[p + name] = value.reshape(BLOCK, -1) if value.dim() == 1 else value
            out.update({p + k: v for k, v in self._original_extra_buffers().items()})
        if self.channels == 3:
            out["w_tild"] = self.channel_logits.detach().clone()
            out["to_YCbCr.transform"] = torch.tensor(YCBCR_MATRIX).T.contiguous()  # stored transposed
            out["to_YCbCr.bias"] = torch.tensor(YCBCR_OFFSET)
        return out

    def _original_extra_buffers(self) -> dict:
        return {}

    def train(self, mode: bool = True) -> _Watson:
        # dropout is part of the 2AFC tuning only; it is never active unless the metric is trainable
        super().train(mode and self.trainable)
        return self

    # -- forward ----------------------------------------------------------------------------------
    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Distance of ``input`` to the reference ``target`` (masking is computed from the target).

        Args:
            input, target: (N, C, H, W) float tensors in [0, 1], C = 3 (rgb) or 1 (grey), H and W
                multiples of 8.
        Returns:
            (N,) per-image distances for reduction "none", else their sum or mean.
        """
        checks.check_pair(
            input, target, channels=self.channels, min_size=BLOCK, multiple_of=BLOCK, name=type(self).__name__
        )
        return checks.reduce(self.per_image(input, target), self.reduction)

    def per_image(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(N,) distances without input checks or reduction."""
        target_grad = target.requires_grad and torch.is_grad_enabled()
        offsets = None if self.deterministic else random_offsets(BLOCK, self.generator)
        fused = not (self.trainable or target_grad)
        if fused and input.requires_grad and torch.is_grad_enabled() and self.chunk_pixels:
            # each image's distance depends on its own pixels only (the batch-pooled luminance mean
            # comes from the target), so gradients can be formed chunk by chunk in the forward pass
            chunk = input.shape[0] if self.batch_luminance else max(1, self.chunk_pixels // input[0].numel())
            if chunk < input.shape[0]:
                return _ChunkedPerImage.apply(input, target, partial(self._per_image_core, offsets=offsets), chunk)
        return self._per_image_core(input, target, target_grad, offsets)

    def _per_image_core(
        self, input: torch.Tensor, target: torch.Tensor, target_grad: bool = False, offsets: tuple | None = None
    ) -> torch.Tensor:
        if offsets is not None:
            input, target = shift_images(input, offsets, BLOCK), shift_images(target, offsets, BLOCK)
        if input.dtype in (torch.float16, torch.bfloat16):
            input, target = input.float(), target.float()  # eps = 1e-10 and the powers need float32
        with torch.autocast(input.device.type, enabled=False):
            with self._target_side(target_grad):
                target = rgb_to_ycbcr(target) if self.channels == 3 else target
            if self.channels == 3:
                input = rgb_to_ycbcr(input)
            per_channel = self._distance(input, target, target_grad)  # (N, C)
            if self.channels == 1:
                return per_channel[:, 0]
            return per_channel @ torch.softmax(self.channel_logits, 0).to(per_channel.dtype)

    def _luminance_masked(self, dc: torch.Tensor, floor: float) -> torch.Tensor:
        """((dc + eps) / (mean dc + eps)) ** alpha with dc of shape (N, C, K); returns (N, C, K, 1).

        The mean is taken over the raw DC terms (so the floor leaves images without dark blocks
        exactly as in the original); each block's DC and the mean itself are then floored.
        """
        mean = dc.mean(dim=(0, 2), keepdim=True) if self.batch_luminance else dc.mean(dim=2, keepdim=True)
        if floor > 0:
            dc = dc.clamp_min(floor)
            mean = mean.clamp_min(floor)
        ratio = (dc + EPS) / (mean + EPS)
        return ratio.pow(self.alpha.view(1, -1, 1)).unsqueeze(-1)

    def _threshold(self, c0_abs: torch.Tensor, lum: torch.Tensor) -> torch.Tensor:
        """Contrast-masked threshold S = smax(T, M) from the target's |coefficients| (N, C, K, F)."""
        t = torch.exp(self.t_tild).unsqueeze(1)  # (C, 1, F)
        w = torch.sigmoid(self.w_tild).view(-1, 1, 1)
        thresh = t * lum  # T
        mask = (c0_abs + EPS).pow(w) * thresh.pow(1 - w)  # M
        return smooth_max(thresh, mask)

    def _pool(self, v0: torch.Tensor, v1: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Minkowski pooling of |v0 - v1| / s over blocks and frequencies: (N, C, K, F) -> (N, C)."""
        if self.trainable or s.requires_grad or v0.requires_grad:
            terms = ((v0 - v1).abs() / s + EPS).pow(self.beta.view(-1, 1, 1))
            if self.training:
                terms = self.dropout(terms)
            total = terms.sum(dim=(-1, -2)) + terms.shape[-1] * terms.shape[-2] * EPS
            return total.pow(1 / self.beta)
        return _MinkowskiPool.apply(v1, v0, s, self.beta.detach())

    def _target_side(self, target_requires_grad: bool):
        """No graph for target-only quantities when nothing upstream of them needs a gradient."""
        return contextlib.nullcontext() if (self.trainable or target_requires_grad) else torch.no_grad()

    def _distance(self, input: torch.Tensor, target: torch.Tensor, target_grad: bool) -> torch.Tensor:
        """(N, C) distances of single-channel planes (Y, Cb, Cr or grey)."""
        raise NotImplementedError


class WatsonDCT(_Watson):
    """Watson's model on the 8x8 block DCT. Inputs (N, 3|1, H, W) in [0, 1], H, W multiples of 8.

    Options: ``colorspace`` "rgb"/"grey"; ``reduction`` "mean"/"sum"/"none"; ``deterministic`` (False:
    the original's random 0-7 px shift of the block grid, for training); ``pretrained`` (the trained
    weights of Czolbe et al., else Watson's table, alpha 0.649, w 0.7, beta 4); ``trainable``
    (parameters require grad and dropout 0.5 is applied, for 2AFC tuning); ``batch_luminance`` and
    ``luminance_floor`` (see the module docstring); ``weights``: a path to weights in the original format.
    """

    kind = "dct"
    n_freq = BLOCK * BLOCK
    _initial_alpha = 0.649
    _initial_w = 0.7
    _initial_beta = 4.0

    def _initial_log_thresholds(self) -> torch.Tensor:
        return torch.log(torch.tensor(WATSON_TABLE)).reshape(1, -1)

    def _original_extra_buffers(self) -> dict:
        from percept.transforms import dct_matrix

        return {"dct.A": dct_matrix(BLOCK, torch.float32)}

    def _distance(self, input: torch.Tensor, target: torch.Tensor, target_grad: bool) -> torch.Tensor:
        with self._target_side(target_grad):
            c0 = block_dct(target)  # (N, C, K, 64)
            lum = self._luminance_masked(c0[..., 0], BLOCK * self.luminance_floor)
            s = self._threshold(c0.abs(), lum)
        return self._pool(c0, block_dct(input), s)


class WatsonDFT(_Watson):
    """Watson's model on the 8x8 block real DFT (the paper's metric): amplitude masking plus phase.

    Same options as :class:`WatsonDCT`. Untrained values: thresholds 1, alpha 0.1, w 0.2, beta 1,
    phase weights exp(-2). When not trainable, the phase weights of the four purely real
    coefficients (0,0), (0,4), (4,0), (4,4) are zero, as in the original at inference.
    """

    kind = "fft"
    n_freq = BLOCK * (BLOCK // 2 + 1)
    _initial_alpha = 0.1
    _initial_w = 0.2
    _initial_beta = 1.0
    _per_channel = ("t_tild", "alpha", "w_tild", "beta", "w_phase_tild")

    def _initial_log_thresholds(self) -> torch.Tensor:
        return torch.zeros(1, self.n_freq)

    def _init_extra(self, channels: int) -> None:
        self.w_phase_tild = nn.Parameter(torch.full((channels, self.n_freq), -2.0))
        real_only = torch.ones(BLOCK, BLOCK // 2 + 1)
        for u, v in ((0, 0), (0, 4), (4, 0), (4, 4)):
            real_only[u, v] = 0
        self.register_buffer("_complex_mask", real_only.reshape(-1), persistent=False)

    def _phase_weights(self) -> torch.Tensor:
        w_phase = torch.exp(self.w_phase_tild)
        return w_phase if self.trainable else w_phase * self._complex_mask

    def _distance(self, input: torch.Tensor, target: torch.Tensor, target_grad: bool) -> torch.Tensor:
        with self._target_side(target_grad):
            re0, im0 = block_rdft(target)  # (N, C, K, 40) each
            a0 = torch.sqrt((re0 + EPS) ** 2 + (im0 + EPS) ** 2)
            lum = self._luminance_masked(a0[..., 0], self.luminance_floor)
            s = self._threshold(a0, lum)
        re1, im1 = block_rdft(input)
        if not (self.trainable or target_grad):
            return _DFTDistance.apply(re1, im1, re0, im0, a0, s, self.beta.detach(), self._phase_weights())

        # the original formula through autograd: needed for gradients w.r.t. parameters or target
        a1 = torch.sqrt((re1 + EPS) ** 2 + (im1 + EPS) ** 2)
        d_amp = self._pool(a0, a1, s)
        # phase difference as the angle between the two coefficients, in [0, pi]; the factor just below
        # one keeps the arccos gradient finite when the phases agree
        delta = torch.arccos(torch.cos(torch.atan2(im0, re0 + EPS) - torch.atan2(im1, re1 + EPS)) * PHASE_CLAMP)
        if self.training:
            delta = self.dropout(delta)
        d_phase = (delta * self._phase_weights().unsqueeze(1)).sum(dim=(-1, -2))
        return d_amp + d_phase


class _MinkowskiPool(torch.autograd.Function):
    """(sum_{k,f} [(|v1 - v0| / s + eps) ** beta + eps]) ** (1 / beta) per (image, channel).

    Differentiable in ``v1`` only (``v0``, ``s`` and ``beta`` are constants: a frozen metric and a
    target that needs no gradient). The forward pass also computes the elementwise derivative, so
    the backward pass is one multiplication instead of autograd's chain through abs, div and pow.
    """

    @staticmethod
    def forward(ctx, v1, v0, s, beta):
        diff = v1 - v0
        ratio = diff.abs().div_(s).add_(EPS)
        terms = ratio.pow(beta.view(-1, 1, 1))
        total = terms.sum(dim=(-1, -2)) + terms.shape[-1] * terms.shape[-2] * EPS
        dist = total.pow(1 / beta)
        if ctx.needs_input_grad[0]:
            # d dist / d v1 = total ** (1/beta - 1) * ratio ** (beta - 1) / s * sign(v1 - v0)
            elementwise = terms.div_(ratio).div_(s).mul_(diff.sign_())
            ctx.save_for_backward(elementwise, dist / total)
        return dist

    @staticmethod
    def backward(ctx, grad_dist):
        elementwise, scale = ctx.saved_tensors
        return elementwise * (grad_dist * scale)[..., None, None], None, None, None


class _DFTDistance(torch.autograd.Function):
    """Watson-DFT amplitude + phase distance per (image, channel) for a frozen metric.

    Differentiable in the input's coefficients (``re1``, ``im1``) only. The phase difference is
    computed from cross and dot products of the two coefficients rather than as the difference of
    two atan2 angles: the same angle (exactly zero for identical coefficients, as in the original),
    at a fraction of the cost. Both gradients are formed in the forward pass.
    """

    @staticmethod
    def forward(ctx, re1, im1, re0, im0, a0, s, beta, w_phase):
        # amplitude term: Minkowski pooling of |a0 - a1| / s, with a = |(re + eps, im + eps)|
        re1e, im1e = re1 + EPS, im1 + EPS
        a1 = torch.sqrt(re1e * re1e + im1e * im1e)
        diff = a1 - a0
        ratio = diff.abs().div_(s).add_(EPS)
        terms = ratio.pow(beta.view(-1, 1, 1))
        total = terms.sum(dim=(-1, -2)) + terms.shape[-1] * terms.shape[-2] * EPS
        d_amp = total.pow(1 / beta)

        # phase term: the angle between z0 = (re0 + eps, im0) and z1 = (re1 + eps, im1)
        re0e = re0 + EPS
        dot = re0e * re1e + im0 * im1
        cross = im0 * re1e - re0e * im1
        # cos of the angle; exactly 1 for identical coefficients (cross == 0), as atan2 differences give
        kc = torch.nan_to_num(dot.sign() * torch.rsqrt(1 + (cross / dot) ** 2), nan=1.0).mul_(PHASE_CLAMP)
        d_phase = (torch.arccos(kc) * w_phase.unsqueeze(1)).sum(dim=(-1, -2))

        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            # amplitude: d d_amp / d a1 = total ** (1/beta - 1) * ratio ** (beta - 1) / s * sign(a1 - a0),
            # and d a1 / d re1 = (re1 + eps) / a1, d a1 / d im1 = (im1 + eps) / a1
            g_amp = terms.div_(ratio).div_(s).mul_(diff.sign_()).div_(a1).mul_((d_amp / total)[..., None, None])
            # phase: d delta / d re1 = g * im1 and d delta / d im1 = -g * (re1 + eps) with
            # g = k sin(phi0 - phi1) / (|z1|^2 sqrt(1 - (k cos)^2)), sin(phi0 - phi1) = cross / (|z0| |z1|)
            rho0 = torch.sqrt(re0e * re0e + im0 * im0)
            rho1_sq = re1e * re1e + im1 * im1
            g_phase = cross.mul_(PHASE_CLAMP * w_phase.unsqueeze(1))
            g_phase = g_phase.div_(rho0 * rho1_sq * torch.sqrt(rho1_sq) * torch.sqrt(1 - kc * kc))
            ctx.save_for_backward(g_amp * re1e + g_phase * im1, g_amp * im1e - g_phase * re1e)
        return d_amp + d_phase

    @staticmethod
    def backward(ctx, grad_dist):
        grad_re, grad_im = ctx.saved_tensors
        scale = grad_dist[..., None, None]
        return grad_re * scale, grad_im * scale, None, None, None, None, None, None


class _ChunkedPerImage(torch.autograd.Function):
    """Per-image distances whose input gradients are computed chunk by chunk in the forward pass.

    For a frozen metric whose image ``n`` depends only on ``input[n]``, the backward pass is
    ``grad_input[n] = grad_output[n] * d dist[n] / d input[n]``. Forming those gradients a chunk of
    images at a time keeps one input-sized buffer alive instead of every intermediate of the batch.
    """

    @staticmethod
    def forward(ctx, input, target, per_image, chunk):
        values = input.new_empty(input.shape[0], dtype=torch.float32 if input.dtype != torch.float64 else input.dtype)
        grads = torch.empty_like(input)
        for start in range(0, input.shape[0], chunk):
            part = slice(start, start + chunk)
            x = input[part].detach().requires_grad_(True)
            with torch.enable_grad():
                d = per_image(x, target[part])
                (g,) = torch.autograd.grad(d.sum(), x)
            values[part] = d.detach()
            grads[part] = g
        ctx.save_for_backward(grads)
        return values

    @staticmethod
    def backward(ctx, grad_values):
        (grads,) = ctx.saved_tensors
        return grads * grad_values.to(grads.dtype).view(-1, *([1] * (grads.dim() - 1))), None, None, None
