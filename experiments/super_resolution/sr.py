"""Super-resolution with a perceptual loss: the network, the data, the losses, training and evaluation.

Shared by ``experiments/super_resolution/run.py`` (one run per loss) and ``experiments/pihlgren_grid/run.py``
(the loss-network grid of Pihlgren et al. 2023, one short run per architecture x layer). Plain functions;
no plotting.

Task (a reduced form of the Johnson et al. 2016 set-up that Pihlgren et al. re-ran, spec dps_analysis.md
§3.2 B2): high-resolution (HR) images are the 64x64 CelebA faces of :func:`percept.data.celeba.load_celeba`
(offline: the REDUCED CelebA, 10,000 faces at half resolution); the low-resolution (LR) input is the HR image
downscaled by ``factor`` (2 or 4) with antialiased bicubic resampling (Johnson et al. blurred with a Gaussian
and then downscaled bicubically; the antialiasing filter takes the blur's place). The network maps LR to HR.

Losses (:func:`build_loss`), all called as ``loss(output, target)`` on (N, 3, H, W) images in [0, 1]:

- a registry metric name (``percept.get_metric``): ``l2``, ``lpips-alex``, ``deeploss-squeeze``, ``dps-alex``, ...;
- ``feature-<arch>:<layer>`` (optionally ``@random`` / ``@imagenet``): :class:`FeatureLoss`, Pihlgren et al.'s
  super-resolution loss, the mean squared error between the raw (not channel-normalised) features of one
  layer of a torchvision network, with the images given to the network un-normalised, in [0, 1].
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import percept
from percept.color import rgb_to_grey

FACTORS = (2, 4)
#: LPIPS's input shift and scale: the DPS metrics map [0, 1] images x to ((2x - 1) - shift) / scale, which is
#: ImageNet mean/std normalisation (spec dps_analysis.md §1)
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
#: ImageNet mean and std implied by the constants above (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225)
IMAGENET_MEAN = tuple((1 + t) / 2 for t in _SHIFT)
IMAGENET_STD = tuple(s / 2 for s in _SCALE)


# ============================================================================================== data
def downscale(hr: torch.Tensor, factor: int) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] -> (N, 3, H / factor, W / factor) in [0, 1]: antialiased bicubic resampling."""
    if factor not in FACTORS:
        raise ValueError(f"factor must be one of {FACTORS}, got {factor}")
    h, w = hr.shape[-2:]
    if h % factor or w % factor:
        raise ValueError(f"image size {h}x{w} is not a multiple of the factor {factor}")
    lr = F.interpolate(hr, size=(h // factor, w // factor), mode="bicubic", antialias=True, align_corners=False)
    return lr.clamp_(0, 1)


def bicubic_upscale(lr: torch.Tensor, factor: int) -> torch.Tensor:
    """(N, 3, h, w) -> (N, 3, h * factor, w * factor) bicubic interpolation, clamped to [0, 1] (the baseline)."""
    return F.interpolate(lr, scale_factor=factor, mode="bicubic", align_corners=False).clamp(0, 1)


def load_faces(n_train: int | None = None, n_val: int = 100, n_test: int | None = None) -> dict:
    """HR faces (uint8 tensors (N, 3, 64, 64)) for training, validation and the held-out test, and the data note.

    Training and validation images come from the CelebA training split (validation: its last ``n_val``
    images), the test images from the held-out split (the first ``n_test``); ``None``: all of them.
    """
    from percept.data.celeba import load_celeba

    train = load_celeba("train")
    test = load_celeba("test")
    if n_val >= len(train):
        raise ValueError(f"n_val={n_val} leaves no training images out of {len(train)}")
    pixels = train.pixels if train.pixels is not None else (train.images() * 255).round().to(torch.uint8)
    test_pixels = test.pixels if test.pixels is not None else (test.images() * 255).round().to(torch.uint8)
    val = pixels[len(pixels) - n_val :]
    tr = pixels[: len(pixels) - n_val]
    if n_train is not None:
        tr = tr[:n_train]
    if n_test is not None:
        test_pixels = test_pixels[:n_test]
    source = train.info.get("data_source", "")
    label = "REDUCED CelebA (10k half-res)" if "REDUCED" in source else (
        "CelebA sample (32 images)" if train.info.get("protocol") == "sample" else "CelebA"
    )
    return {
        "train": tr,
        "val": val,
        "test": test_pixels,
        "label": label,
        "data_source": source,
        "test_source": test.info.get("data_source", ""),
    }


def to_float(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.float().div_(255.0)


# ============================================================================================= model
class SRNet(nn.Module):
    """A small super-resolution network: LR (N, 3, h, w) in [0, 1] -> HR (N, 3, h * factor, w * factor) in [0, 1].

    Bicubic upsampling of the input plus a residual, computed mostly on the LR grid (ESPCN-style): a 3x3 conv
    to ``channels``, ``blocks`` residual blocks (conv-ReLU-conv), a 3x3 conv to ``hr_channels`` * factor^2
    channels, a pixel shuffle by ``factor``, ReLU, and one 3x3 conv at high resolution to 3 channels (it mixes
    neighbouring pixel-shuffle blocks, so block edges need not show). The last conv starts at zero: the
    untrained network is bicubic interpolation. The output is clamped to [0, 1] (pixels pushed outside get
    no gradient, as with Johnson et al.'s tanh output).
    """

    def __init__(self, factor: int = 4, channels: int = 48, blocks: int = 3, hr_channels: int = 16):
        super().__init__()
        if factor not in FACTORS:
            raise ValueError(f"factor must be one of {FACTORS}, got {factor}")
        self.factor = factor
        self.head = nn.Conv2d(3, channels, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True),
                nn.Conv2d(channels, channels, 3, padding=1),
            )
            for _ in range(blocks)
        )
        self.up = nn.Sequential(
            nn.Conv2d(channels, hr_channels * factor * factor, 3, padding=1), nn.PixelShuffle(factor), nn.ReLU()
        )
        self.tail = nn.Conv2d(hr_channels, 3, 3, padding=1)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.head(lr))
        for block in self.blocks:
            h = h + block(h)
        return (bicubic_upscale(lr, self.factor) + self.tail(self.up(h))).clamp(0, 1)


# ============================================================================================ losses
class FeatureLoss(nn.Module):
    """Mean squared error between the raw features of one layer: Pihlgren et al.'s deep perceptual loss.

    ``loss(x, y) = mean_{c, h, w} (F(x) - F(y))^2`` per image, with F the output of child ``layer`` of a
    torchvision network flattened as in :mod:`percept.backbones` (the loss networks' layer index). No
    channel normalisation (the "raw features" option; LPIPS-style unit normalisation along channels with
    ``channel_norm=True``, which then sums over channels as LPIPS does).

    Built on the registry's DPS metric (``percept.get_metric("dps", net=arch, layers=(layer,),
    channel_norm=False)``), whose distance is ``mean_{h, w} sum_c (F(x') - F(y'))^2`` with F fed ImageNet-
    normalised images; this class divides by the channel count and, for ``input_norm="none"`` (Pihlgren et
    al.'s super-resolution and autoencoder losses: un-normalised [0, 1] images into the network), hands DPS
    ``x * std + mean`` (still inside [0, 1]) so that its normalisation gives back x.

    Args:
        arch: torchvision architecture (``"alexnet"``, ``"vgg16"``, ``"resnet18"``, ...).
        layer: child index (e.g. Pihlgren et al.'s ``percept.backbones.PIHLGREN_LAYERS[arch]``).
        weights: ``"imagenet"`` (a missing file raises ``MissingAssetError``), ``"random"`` (torchvision's
            initialisation; seed it with ``torch.manual_seed``), or a checkpoint path / state dict.
        input_norm: ``"none"`` (default, the paper's SR loss) or ``"imagenet"``.
        channel_norm: unit-normalise each position's feature vector along channels first.
        reduction: "mean", "sum" or "none" (N,).

    ``forward(input, target)``: (N, 3, H, W) in [0, 1], H, W >= the layer's minimum size.
    """

    higher_is_better = False

    def __init__(
        self,
        arch: str,
        layer: int,
        *,
        weights="imagenet",
        input_norm: str = "none",
        channel_norm: bool = False,
        reduction: str = "mean",
    ):
        super().__init__()
        if input_norm not in ("none", "imagenet"):
            raise ValueError(f"input_norm must be 'none' or 'imagenet', got {input_norm!r}")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"unknown reduction {reduction!r}: use 'mean', 'sum' or 'none'")
        self.arch, self.layer, self.input_norm = arch, int(layer), input_norm
        self.channel_norm, self.reduction = bool(channel_norm), reduction
        # the registry's "dps" record takes any torchvision architecture through net=
        self.dps = percept.get_metric(
            "dps", net=arch, layers=(self.layer,), method="spatial", channel_norm=self.channel_norm,
            backbone_weights=weights, reduction="none",
        )
        self.channels = self.dps.backbone.channels[0]
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def backbone(self):
        return self.dps.backbone

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_norm == "imagenet":
            return x
        return torch.addcmul(self.mean.to(x.dtype), x, self.std.to(x.dtype))  # DPS maps it back to x

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if input.dim() != 4 or input.shape[1] != 3:
            raise ValueError(f"{self.arch} feature loss: expected (N, 3, H, W) images, got {tuple(input.shape)}")
        d = self.dps(self._prepare(input), self._prepare(target))
        if not self.channel_norm:
            d = d / self.channels  # sum over channels -> mean over channels (the paper's MSE)
        if self.reduction == "mean":
            return d.mean()
        if self.reduction == "sum":
            return d.sum()
        return d

    def extra_repr(self) -> str:
        return (
            f"arch={self.arch!r}, layer={self.layer}, input_norm={self.input_norm!r}, "
            f"channel_norm={self.channel_norm}, reduction={self.reduction!r}"
        )


_FEATURE_SPEC = re.compile(r"^feature-(?P<arch>[a-z0-9_]+):(?P<layer>\d+)(@(?P<weights>imagenet|random))?$")


def build_loss(spec: str, device: torch.device | str = "cpu", *, input_norm: str = "none") -> nn.Module:
    """The training loss named by ``spec`` (see the module docstring), frozen, on ``device``, mean over the batch.

    ``feature-<arch>:<layer>[@imagenet|@random]`` builds :class:`FeatureLoss` (ImageNet weights unless
    ``@random``; ``input_norm`` goes to it); anything else must be a registry name (``percept.list_metrics()``;
    an unknown name raises ``KeyError`` listing them).
    """
    key = spec.strip().lower()
    m = _FEATURE_SPEC.match(key)
    if m:
        loss = FeatureLoss(m.group("arch"), int(m.group("layer")), weights=m.group("weights") or "imagenet",
                           input_norm=input_norm)
    elif key.startswith("feature-"):
        raise ValueError(f"bad feature loss {spec!r}: write feature-<arch>:<layer>[@imagenet|@random], e.g. feature-alexnet:4")
    else:
        loss = percept.get_metric(spec, colorspace="rgb", reduction="mean", deterministic=True)
    if getattr(loss, "higher_is_better", False):
        raise ValueError(f"{spec!r} is a similarity (higher is better), not a loss to minimise")
    loss.requires_grad_(False)
    return loss.to(device).eval()


# ======================================================================================== evaluation
@dataclass
class Evaluator:
    """PSNR (RGB, dB), SSIM (on BT.601 luma, Gaussian 11x11 window), LPIPS-alex and LPIPS-squeeze (v0.1) per
    image. LPIPS-squeeze is the perceptual score independent of AlexNet-based training losses."""

    device: torch.device | str = "cpu"
    batch_size: int = 100

    def __post_init__(self):
        self.psnr = percept.get_metric("psnr", reduction="none").to(self.device)
        self.ssim = percept.get_metric("ssim", colorspace="grey", reduction="none").to(self.device)
        self.lpips = percept.get_metric("lpips-alex", reduction="none").to(self.device).eval()
        self.lpips_squeeze = percept.get_metric("lpips-squeeze", reduction="none").to(self.device).eval()

    @torch.no_grad()
    def scores(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-image ``psnr``, ``ssim``, ``lpips_alex``, ``lpips_squeeze`` (each (N,)) of outputs against targets in
        [0, 1]."""
        out = {"psnr": [], "ssim": [], "lpips_alex": [], "lpips_squeeze": []}
        for o, t in zip(output.split(self.batch_size), target.split(self.batch_size)):
            o, t = o.to(self.device), t.to(self.device)
            out["psnr"].append(self.psnr(o, t).cpu())
            out["ssim"].append(1 - self.ssim(rgb_to_grey(o), rgb_to_grey(t)).cpu())
            out["lpips_alex"].append(self.lpips(o, t).cpu())
            out["lpips_squeeze"].append(self.lpips_squeeze(o, t).cpu())
        return {k: torch.cat(v) for k, v in out.items()}


@torch.no_grad()
def predict(model: nn.Module, lr: torch.Tensor, device, batch_size: int = 100) -> torch.Tensor:
    model.eval()
    out = torch.cat([model(x.to(device)).cpu() for x in lr.split(batch_size)])
    model.train()
    return out


def summarise(scores: dict[str, torch.Tensor]) -> dict[str, float]:
    """Means and standard errors of per-image scores."""
    out = {}
    for k, v in scores.items():
        v = v.double()
        out[k] = float(v.mean())
        out[f"{k}_se"] = float(v.std(unbiased=True) / math.sqrt(len(v))) if len(v) > 1 else float("nan")
    return out


# ========================================================================================== training
def total_variation(y: torch.Tensor) -> torch.Tensor:
    """Squared total variation of (N, C, H, W) images: mean squared difference of vertical neighbours plus that
    of horizontal neighbours (a scalar). Johnson et al.'s smoothness regulariser for feature-loss training."""
    return (y[:, :, 1:] - y[:, :, :-1]).square().mean() + (y[..., 1:] - y[..., :-1]).square().mean()


@dataclass
class TrainConfig:
    factor: int = 4
    steps: int = 2000
    batch_size: int = 16
    lr: float = 1e-3  # Johnson et al. / Pihlgren et al.: Adam, lr 1e-3
    channels: int = 48
    blocks: int = 3
    eval_every: int = 250
    select: str = "last"  # "last" or "best-psnr" (the paper's rule: best validation PSNR)
    tv_weight: float = 0.0  # weight of total_variation(output) added to the loss (Johnson et al.'s regulariser)
    seed: int = 0


def train_sr(
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    train_hr: torch.Tensor,
    val_hr: torch.Tensor,
    config: TrainConfig,
    *,
    device: torch.device | str = "cpu",
    evaluator: Evaluator | None = None,
    on_eval: Callable[[dict], None] | None = None,
    progress: bool = False,
) -> tuple[SRNet, list[dict]]:
    """Train a fresh :class:`SRNet` (seeded) with Adam on ``loss_fn(output, hr)`` (+ ``tv_weight`` x TV(output)).

    ``train_hr`` / ``val_hr``: uint8 (N, 3, H, W). Every ``eval_every`` steps (and at steps 0 and ``steps``)
    the validation images are scored (PSNR, SSIM, LPIPS-alex) and the record (with the training time so
    far, evaluations excluded) passed to ``on_eval``. Returns
    the selected model (``config.select``: the last one, or the one of best validation PSNR) and the history.
    """
    if config.select not in ("last", "best-psnr"):
        raise ValueError(f"select must be 'last' or 'best-psnr', got {config.select!r}")
    torch.manual_seed(config.seed)
    model = SRNet(config.factor, config.channels, config.blocks).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    g = torch.Generator().manual_seed(config.seed)
    val_lr = downscale(to_float(val_hr), config.factor)
    val_target = to_float(val_hr)
    history, best, best_state = [], -math.inf, None
    train_seconds, train_loss = 0.0, float("nan")
    order = torch.randperm(len(train_hr), generator=g)
    pos = 0
    from tqdm.auto import tqdm

    bar = tqdm(total=config.steps, desc="train", disable=not progress, leave=False)
    for step in range(config.steps + 1):
        if step % config.eval_every == 0 or step == config.steps:
            record = {"step": step, "train_loss": train_loss, "train_seconds": train_seconds}
            if evaluator is not None:
                record.update({f"val_{k}": v for k, v in summarise(
                    evaluator.scores(predict(model, val_lr, device), val_target)).items() if not k.endswith("_se")})
                if config.select == "best-psnr" and record["val_psnr"] > best:
                    best = record["val_psnr"]
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            history.append(record)
            if on_eval is not None:
                on_eval(record)
        if step == config.steps:
            break
        if pos + config.batch_size > len(order):
            order, pos = torch.randperm(len(train_hr), generator=g), 0
        t0 = time.perf_counter()
        hr = to_float(train_hr[order[pos : pos + config.batch_size]]).to(device)
        pos += config.batch_size
        lr = downscale(hr, config.factor)
        output = model(lr)
        loss = loss_fn(output, hr)
        if config.tv_weight:
            loss = loss + config.tv_weight * total_variation(output)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the loss became {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        train_loss = float(loss.detach())
        train_seconds += time.perf_counter() - t0
        bar.update(1)
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model, history


def evaluate_sr(model: nn.Module, test_hr: torch.Tensor, factor: int, evaluator: Evaluator, device) -> dict:
    """Per-image scores of ``model`` and of bicubic upscaling on the test HR images (uint8)."""
    hr = to_float(test_hr)
    lr = downscale(hr, factor)
    return {
        "model": evaluator.scores(predict(model, lr, device), hr),
        "bicubic": evaluator.scores(bicubic_upscale(lr, factor), hr),
    }


__all__ = [
    "FACTORS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "downscale",
    "bicubic_upscale",
    "load_faces",
    "SRNet",
    "FeatureLoss",
    "build_loss",
    "Evaluator",
    "predict",
    "summarise",
    "TrainConfig",
    "total_variation",
    "train_sr",
    "evaluate_sr",
]
