"""Watson-DCT and Watson-DFT metrics (Czolbe et al., NeurIPS 2020): modules over :mod:`percept.functional.watson`.

The formula, written once, is :mod:`percept.functional.watson` (:func:`percept.functional.watson_dct`,
:func:`percept.functional.watson_dft`). These modules hold its parameters in the original's form
(``t_tild`` = log thresholds, ``alpha``, ``w_tild`` = logit of w, ``beta``, the YCbCr channel logits and
Watson-DFT's log phase weights), read the original weight files, check the input, draw the random shift and
choose how the formula runs:

- a frozen metric against a target that needs no gradient (training a generator: the default, and
  :class:`percept.LossProvider`) goes through :class:`percept.metrics._frozen.FrozenPerImage`: chunks of
  images (on CPU; the whole batch at once on other devices, see :mod:`percept.execution`), each computed in
  one pass together with its input gradient in closed form, so a training step keeps one input-sized
  gradient instead of every intermediate. Its gradient is differentiable again (double backward) through
  autograd on the same formula;
- a ``trainable`` metric, or parameters or a target that need a gradient: autograd through the formula.

Differences from the original code, all documented in the README:

- Per-image luminance masking (default): ``mean(dc0)`` is taken over the blocks of each image, so an
  image's distance does not depend on the rest of the batch. ``batch_luminance=True`` restores the
  original's mean over the whole batch (used by :class:`percept.LossProvider`).
- Dark blocks: the original's threshold goes to zero on pure-black target blocks, so errors there weigh
  enormously (about 3e7 on a real photograph with black blocks). That is the original formula, and it
  is the default (``luminance_floor=0``): it is what pulls a VAE's black MNIST background to black in the
  first hundred steps, and any floor well above eps removes that pull (measured: floors of 1e-3 and 1/255
  leave the paper's MNIST VAE outputting uniform grey after 150 steps, where the original and floor 0
  reach a pixel MSE of 0.071; ``results/luminance_floor``). For *evaluating* photographs with pure-black
  regions, ``luminance_floor=1/255`` floors the target's DC term at the value of a block of mean 1/255
  (one 8-bit grey level) before masking: blocks at least that bright are untouched, and the value stays
  finite and continuous as a block darkens to black.
- The random shift of up to 8 px uses torch's RNG (seedable), not numpy's global RNG.

>>> import torch
>>> from percept.metrics.watson import WatsonDFT
>>> metric = WatsonDFT(colorspace="grey", reduction="none", pretrained=False)   # the initial values, no file
>>> x = torch.rand(2, 1, 32, 32)                  # (N, C, H, W) in [0, 1], H and W multiples of 8
>>> d = metric(x, (x + 0.05 * torch.randn_like(x)).clamp(0, 1))
>>> d.shape, bool((d > metric(x, x)).all())       # identical images: a small eps floor, not 0 (spec)
(torch.Size([2]), True)
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from percept import assets, checks
from percept.color import YCBCR_MATRIX, YCBCR_OFFSET
from percept.execution import check_strategy, no_autocast, refuse_host_draws_in_capture, resolve_strategy
from percept.functional import watson as formula
from percept.functional.watson import BLOCK, EPS, PHASE_CLAMP, WATSON_TABLE, smooth_max  # noqa: F401 (re-exported)
from percept.metrics._frozen import FrozenPerImage, cached_constants, images_per_chunk
from percept.transforms import random_offsets

_CHANNEL_PREFIXES = ("ly.", "lcb.", "lcr.")


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


class _Watson(nn.Module):
    """Parameters, options and execution shared by :class:`WatsonDCT` and :class:`WatsonDFT`; the subclasses
    only set the class attributes below (the transform and the paper's initial values)."""

    higher_is_better = False
    kind = ""  # "dct" or "fft": the name used by the original weight files
    _transform: formula._Transform
    _initial_alpha = 0.0
    _initial_w = 0.5
    _initial_beta = 1.0
    _initial_thresholds: tuple | float = 1.0  # Watson's table (DCT) or one value for every frequency
    _has_phase = False

    def __init__(
        self,
        *,
        colorspace: str = "rgb",
        reduction: str = "mean",
        deterministic: bool = True,
        pretrained: bool = True,
        trainable: bool = False,
        batch_luminance: bool = False,
        luminance_floor: float = 0.0,
        weights: str | None = None,
        chunk_pixels: int = 1 << 18,
        strategy: str = "auto",
        phase_eps: float = 0.0,
    ) -> None:
        super().__init__()
        if not phase_eps >= 0:
            raise ValueError(f"phase_eps must be >= 0, got {phase_eps}")
        if phase_eps and not self._has_phase:
            raise ValueError(f"phase_eps applies to Watson-DFT's phase term; {type(self).__name__} has none")
        #: Watson-DFT: fades the phase of input coefficients below this amplitude (0: the original)
        self.phase_eps = float(phase_eps)
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
        #: values (images x channels x pixels) per chunk of the frozen path, at most a quarter of the
        #: batch (0: the whole batch at once)
        self.chunk_pixels = chunk_pixels
        #: "auto" (chunks on CPU, the whole batch at once on other devices), "chunked" or "batched"
        self.strategy = check_strategy(strategy)
        #: dropout probability of the pooled terms (and phase differences) while a trainable metric trains
        self.dropout = 0.5

        c, f = self.channels, self._transform.frequencies
        log_t = torch.log(torch.tensor(self._initial_thresholds, dtype=torch.float32)).reshape(-1, 1)
        self.t_tild = nn.Parameter(log_t.reshape(1, -1).expand(c, f).clone())
        self.alpha = nn.Parameter(torch.full((c,), self._initial_alpha))
        self.w_tild = nn.Parameter(torch.full((c,), _logit(self._initial_w)))
        self.beta = nn.Parameter(torch.full((c,), self._initial_beta))
        self.channel_logits = nn.Parameter(torch.zeros(c))  # softmax -> 1/3 each for YCbCr
        if self._has_phase:
            self.w_phase_tild = nn.Parameter(torch.full((c, f), -2.0))
            real_only = torch.ones(f)
            real_only[list(formula.REAL_DFT_COEFFICIENTS)] = 0
            self.register_buffer("_complex_mask", real_only, persistent=False)
        if pretrained or weights is not None:
            self.load_original_state_dict(self._read_weights(weights))
        self.train(trainable)
        self.requires_grad_(trainable)

    # -- parameters -------------------------------------------------------------------------------
    @property
    def _per_channel(self) -> tuple[str, ...]:
        return ("t_tild", "alpha", "w_tild", "beta") + (("w_phase_tild",) if self._has_phase else ())

    @property
    def n_freq(self) -> int:
        return self._transform.frequencies

    def weight_file(self) -> str:
        prefix = "rgb" if self.colorspace == "rgb" else "gray"
        return f"weights/czolbe/{prefix}_watson_{self.kind}_trial0.pth"

    def _read_weights(self, path: str | None) -> dict:
        source = path if path is not None else assets.locate(self.weight_file())
        return torch.load(source, map_location="cpu", weights_only=True)

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
            if self.kind == "dct":
                from percept.transforms import dct_matrix

                out[p + "dct.A"] = dct_matrix(BLOCK, torch.float32)
        if self.channels == 3:
            out["w_tild"] = self.channel_logits.detach().clone()
            out["to_YCbCr.transform"] = torch.tensor(YCBCR_MATRIX).T.contiguous()  # stored transposed
            out["to_YCbCr.bias"] = torch.tensor(YCBCR_OFFSET)
        return out

    def formula_parameters(self, dtype: torch.dtype | None = None) -> formula._Params:
        """The parameters in the formula's natural units, in ``dtype`` (default: the parameters' own);
        differentiable in the module's parameters."""
        dtype = dtype or self.alpha.dtype
        phase = None
        if self._has_phase:
            phase = torch.exp(self.w_phase_tild.to(dtype))
            if not self.trainable:  # the original zeroes the real coefficients' phase weights at inference
                phase = phase * self._complex_mask.to(dtype)
        return formula._Params(
            log_thresholds=self.t_tild.to(dtype),
            alpha=self.alpha.to(dtype),
            w=torch.sigmoid(self.w_tild.to(dtype)),
            beta=self.beta.to(dtype),
            channel_weights=torch.softmax(self.channel_logits.to(dtype), 0)
            if self.channels == 3
            else formula._constant((1.0,), dtype, self.alpha.device),
            phase_weights=phase,
        )

    def functional_kwargs(self) -> dict:
        """The keyword arguments of :func:`percept.functional.watson_dct` (or ``watson_dft``) that compute this
        metric: its parameters and options. ``offsets`` is not among them: a metric with
        ``deterministic=False`` draws a random shift in every call (:func:`percept.transforms.random_offsets`)."""
        p = self.formula_parameters()
        kwargs = {
            "log_thresholds": p.log_thresholds, "alpha": p.alpha, "w": p.w, "beta": p.beta,
            "batch_luminance": self.batch_luminance, "luminance_floor": self.luminance_floor,
            "reduction": self.reduction,
        }
        if self.channels == 3:
            kwargs["channel_weights"] = p.channel_weights
        if self._has_phase:
            kwargs |= {"phase_weights": p.phase_weights, "phase_eps": self.phase_eps}
        return kwargs

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
        """(N,) distances without input checks or reduction (float64 for float64 input, else float32)."""
        if self.deterministic:
            return self._per_image(input, target, None)
        return self._per_image_shifted(input, target)

    @torch.compiler.disable
    def _per_image_shifted(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """:meth:`per_image` with a random shift drawn for this call.

        Runs eagerly under ``torch.compile``: the shift's offsets become constants of a traced graph, so every
        new offset (64 of them) would compile it again, until torch gives up at its recompilation limit.
        """
        refuse_host_draws_in_capture(
            input.device, f"{type(self).__name__} with deterministic=False (a random shift per call)",
            "Capture it with deterministic=True, or call it outside the captured region.",
        )
        return self._per_image(input, target, random_offsets(BLOCK, self.generator))

    def _per_image(self, input: torch.Tensor, target: torch.Tensor, offsets) -> torch.Tensor:
        dtype = formula._compute_dtype(input)
        with no_autocast(input.device.type):
            masking = cached_constants(
                self, self.parameters(), (dtype, self.trainable),
                lambda: formula._mask(self.formula_parameters(dtype), self._transform),
            )  # fmt: skip
            per_image = formula.bind(
                self._transform,
                target,
                masking,
                offsets=offsets,
                batch_luminance=self.batch_luminance,
                luminance_floor=self.luminance_floor,
                phase_eps=self.phase_eps,
                dropout=self.dropout if self.training else 0.0,
                full_dct=resolve_strategy(self.strategy, input.device) == "batched",
            )
            graph = torch.is_grad_enabled() and (target.requires_grad or any(p.requires_grad for p in self.parameters()))
            if graph or self.training:  # gradients for the parameters (2AFC tuning) or the target: autograd
                return per_image(input, target, slice(None))
        # chunks of at most chunk_pixels values and a quarter of the batch (the intermediates of a chunk
        # take several times its size)
        budget = min(self.chunk_pixels, input.numel() // 4) if self.chunk_pixels else 0
        per_chunk = images_per_chunk(self.strategy, input.device, input.shape[0], input[0].numel(), budget)
        return FrozenPerImage.apply(input, target, per_image, per_chunk)


class WatsonDCT(_Watson):
    """Watson's model on the 8x8 block DCT. Inputs (N, 3|1, H, W) in [0, 1], H, W multiples of 8.

    Options: ``colorspace`` "rgb"/"grey"; ``reduction`` "mean"/"sum"/"none"; ``deterministic`` (False:
    the original's random 0-7 px shift of the block grid, for training); ``pretrained`` (the trained
    weights of Czolbe et al., else Watson's table, alpha 0.649, w 0.7, beta 4); ``trainable``
    (parameters require grad and dropout 0.5 is applied, for 2AFC tuning); ``batch_luminance`` and
    ``luminance_floor`` (see the module docstring); ``weights``: a path to weights in the original format;
    ``strategy`` and ``chunk_pixels``: how the batch runs (:mod:`percept.execution`).
    """

    kind = "dct"
    _transform = formula.DCT
    _initial_alpha = 0.649
    _initial_w = 0.7
    _initial_beta = 4.0
    _initial_thresholds = WATSON_TABLE


class WatsonDFT(_Watson):
    """Watson's model on the 8x8 block real DFT (the paper's metric): amplitude masking plus phase.

    Same options as :class:`WatsonDCT`. Untrained values: thresholds 1, alpha 0.1, w 0.2, beta 1,
    phase weights exp(-2). When not trainable, the phase weights of the four purely real
    coefficients (0,0), (0,4), (4,0), (4,4) are zero, as in the original at inference.

    ``phase_eps`` (default 0: the original formula) is for training from flat outputs. The phase of an
    input coefficient z1 is undefined at z1 = 0, and its derivative grows as 1 / |z1|: a flat (constant or
    black) input against a textured target gets input gradients of about 1e7 (normal: about 1e2). With
    ``phase_eps = e > 0`` each phase difference is weighted by ``|z1|^2 / (|z1|^2 + e^2)``: unchanged for
    coefficients well above ``e`` (amplitudes are block means: 1/255 is one grey level of a block-wide
    wave), faded out below it, so the gradient stays bounded by about ``1 / e``.
    """

    kind = "fft"
    _transform = formula.DFT
    _initial_alpha = 0.1
    _initial_w = 0.2
    _initial_beta = 1.0
    _initial_thresholds = 1.0
    _has_phase = True
