"""The losses that ``make bench`` and the runtime experiment time, their input batch and one measurement.

Used by ``benchmarks/bench.py``, ``benchmarks/bench_gpu.py`` and ``experiments/runtime/run.py`` (which puts
this folder on ``sys.path``); the timing and memory machinery is the library's :mod:`percept.profiling`.

>>> from bench_losses import CANDIDATES, celeba_batch, measure_training
>>> target, source = celeba_batch(128, 64, "grey")       # (128, 1, 64, 64) CelebA faces in [0, 1]
>>> loss = CANDIDATES["watson-dft"].build("grey", "sum", (64, 64), "cpu").loss
>>> row = measure_training("Watson-DFT", "rgb", batch=16, iterations=5)   # one row of results/runtime

:data:`CANDIDATES` holds, by key: the baseline (``"L2 (torch)"``, ``nn.MSELoss(reduction='sum')``, what the
original LossProvider returns), the paper's losses through ``percept.LossProvider`` ("L1" ... "Adaptive"),
percept's metrics through ``percept.get_metric`` ("ssim", "watson-dft (shift)", ...) and the peer packages
("pytorch_msssim.ssim", "lpips.alex", "torchmetrics.lpips_vgg", ...), each peer naming the percept metric that
computes the same thing (``compares_to``).

The input (:func:`celeba_batch`) is a batch of CelebA faces: the downloaded CelebA when present, else the
offline 32-image sample, cropped and resized as in the paper (:func:`percept.data.celeba.first_faces`) and
tiled to the batch; grey with torchvision's Grayscale weights (:func:`percept.color.rgb_to_grey`).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from percept.color import LUMA_BT601, rgb_to_grey
from percept.profiling import TrainingStep, measure_steps, time_step

#: seed of the random backbones used when ImageNet weights are missing (same weights for percept and peers)
RANDOM_BACKBONE_SEED = 0


# --------------------------------------------------------------------------------------------------- data
@functools.lru_cache(maxsize=8)
def _celeba_images(size: int) -> tuple[torch.Tensor, str]:
    from percept.data.celeba import first_faces

    pixels, source = first_faces(128, size)
    return pixels.float().div_(255), source


def celeba_batch(batch: int, size: int = 64, colorspace: str = "rgb") -> tuple[torch.Tensor, str]:
    """(batch, C, size, size) CelebA faces in [0, 1] (tiled when there are fewer images), and where they came from.

    ``colorspace`` "grey" gives one channel (torchvision's Grayscale weights 0.299/0.587/0.114).
    """
    images, source = _celeba_images(int(size))
    n = images.shape[0]
    x = images.repeat(math.ceil(batch / n), 1, 1, 1)[:batch].contiguous()
    if n < batch:
        source += f", tiled to {batch}"
    if colorspace == "grey":
        x = rgb_to_grey(x, LUMA_BT601)
    return x, source


# ------------------------------------------------------------------------------------------- candidates
@dataclass
class Built:
    """A built loss: ``loss(x, target)`` (an ``nn.Module`` on the device) and which weights it uses."""

    loss: nn.Module
    weights: str = "none"
    note: str = ""


@dataclass(frozen=True)
class Candidate:
    """One loss that can be timed.

    ``build(colorspace, reduction, (H, W), device) -> Built``; ``reduction`` is "sum" for training and
    "none" (per-image values, shape (N,)) for the equal-values check of a peer against ``compares_to``.
    """

    key: str
    group: str  # "baseline" | "paper" | "percept" | "peer"
    implementation: str
    build: Callable[..., Built] = field(repr=False)
    compares_to: str | None = None  # for peers: the percept candidate that computes the same thing
    grey: bool = True  # takes 1-channel input (LPIPS peers: grey input is expanded to 3 channels instead)
    min_size: int = 1


class _Fn(nn.Module):
    """Wrap a function of (x, y) (plus submodules it uses) as a loss module with a reduction."""

    def __init__(self, fn: Callable, reduction: str, expand_grey: bool = False, **modules: nn.Module):
        super().__init__()
        self.fn = fn
        self.reduction = reduction
        self.expand_grey = expand_grey
        for name, module in modules.items():
            self.add_module(name, module)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.expand_grey and x.shape[1] == 1:
            x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
        d = self.fn(self, x, y).reshape(x.shape[0])
        return d.sum() if self.reduction == "sum" else d


@functools.lru_cache(maxsize=4)
def backbone_state(net: str) -> tuple[dict, str]:
    """Feature weights ("features.<i>...." keys) of LPIPS backbone ``net`` and a note saying which.

    ImageNet weights when percept finds them (asset folder, torch hub cache); otherwise torchvision's random
    initialisation with seed :data:`RANDOM_BACKBONE_SEED`: timing does not depend on weight values, and
    percept's metrics and the peers then get the same random weights, so their values can still be compared.
    """
    from percept.assets import MissingAssetError
    from percept.backbones import build_backbone, canonical_arch, imagenet_checkpoint, load_checkpoint

    arch = canonical_arch(net)
    try:
        path = imagenet_checkpoint(arch)
    except MissingAssetError:
        path = None
    if path is not None:
        state = load_checkpoint(path)
        if not any(k.startswith("features.") for k in state):
            state = {f"features.{k}": v for k, v in state.items()}
        return {k: v for k, v in state.items() if k.startswith("features.")}, f"ImageNet {arch} ({path.name})"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_BACKBONE_SEED)
        last = {"alexnet": 12, "vgg16": 30, "squeezenet1_1": 12}[arch]  # every child of ``features``
        fx = build_backbone(arch, (last,), weights="random", channels_last=False)
    state = {}
    for key, value in fx.body.state_dict().items():
        idx, rest = key.split(".", 1)
        state[f"{fx.prefixes[int(idx)]}.{rest}"] = value.clone()
    return state, f"random {arch} (torchvision init, seed {RANDOM_BACKBONE_SEED}): ImageNet weights not found"


def _load_features(net: nn.Module, state: dict) -> None:
    """Load "features.<i>..." weights into a peer's LPIPS trunk (slices whose children are named by index)."""
    by_index: dict[int, nn.Module] = {}
    for module in net.modules():
        if isinstance(module, nn.Sequential):
            for name, child in module.named_children():
                if name.isdigit():
                    by_index[int(name)] = child
    groups: dict[int, dict] = {}
    for key, value in state.items():
        _, idx, rest = key.split(".", 2)
        groups.setdefault(int(idx), {})[rest] = value
    for idx, module in by_index.items():
        expected = set(module.state_dict())
        if not expected:
            continue
        got = groups.get(idx, {})
        if set(got) != expected:
            raise RuntimeError(f"backbone weights for layer {idx} do not fit the peer's trunk: {sorted(expected)}")
        module.load_state_dict(got, strict=True)


def _provider_build(name: str) -> Callable[..., Built]:
    def build(colorspace: str, reduction: str, size: tuple[int, int], device: torch.device) -> Built:
        from percept.compat import LossProvider

        space = "RGB" if colorspace == "rgb" else "LA"
        kwargs = {"image_size": (3, *size)} if name == "Adaptive" else {}
        weights, note = "none", ""
        gray = "rgb" if colorspace == "rgb" else "gray"
        if name.startswith("Deeploss"):
            net = name.split("-")[1].lower()
            state, bnote = backbone_state(net)
            lin = f"lin: weights/czolbe/{gray}_pnet_lin_{net}_trial0.pth"
            if bnote.startswith("ImageNet"):
                loss = LossProvider().get_loss_function(name, space, reduction=reduction, deterministic=False)
            else:
                import percept

                loss = percept.get_metric(
                    f"deeploss-{net}", colorspace=colorspace, reduction=reduction, backbone_weights=state
                )
                note = "built with percept.get_metric(..., backbone_weights=<random>): LossProvider needs ImageNet"
            weights = f"backbone: {bnote}; {lin}"
        else:
            loss = LossProvider().get_loss_function(name, space, reduction=reduction, deterministic=False, **kwargs)
            if name.startswith("Watson"):
                kind = "dct" if name == "Watson-dct" else "fft"
                weights = f"weights/czolbe/{gray}_watson_{kind}_trial0.pth"
            elif name == "Adaptive":
                weights = f"weights/czolbe/{gray}_adaptive_trial0.pth"
        return Built(loss.to(device), weights, note)

    return build


def _percept_build(name: str, **options) -> Callable[..., Built]:
    def build(colorspace: str, reduction: str, size: tuple[int, int], device: torch.device) -> Built:
        from percept import registry

        rec = registry.record(name)
        kwargs = dict(options)
        weights, note = "none", ""
        if "net" in rec.fixed and registry.takes(name, "backbone_weights"):  # ImageNet, else seeded random trunk
            kwargs["backbone_weights"], bnote = backbone_state(rec.fixed["net"])
            weights = f"backbone: {bnote}"
        if rec.family == "lpips":
            weights += "; lin: LPIPS v0.1"
        elif rec.family == "deeploss":
            weights += f"; lin: weights/czolbe/{registry.tuned_file(name, colorspace)}"
        if rec.stochastic:
            kwargs["n"] = 1
            note = "E-LPIPS with n=1 (one random transformation per call)"
        if rec.family == "adaptive" and tuple(size) != (64, 64):
            kwargs.update(pretrained=False, image_size=tuple(size))
            weights = "none (alpha = c = 1: the trained weights fit 64x64 only)"
        elif rec.family in ("adaptive", "watson"):
            weights = f"weights/czolbe/{registry.tuned_file(name, colorspace)}"
        loss = registry.get_metric(name, colorspace=colorspace, reduction=reduction, device=device, **kwargs)
        return Built(loss, weights, note)

    return build


def _pytorch_msssim_build(ms: bool) -> Callable[..., Built]:
    def build(colorspace: str, reduction: str, size: tuple[int, int], device: torch.device) -> Built:
        import pytorch_msssim

        fn = pytorch_msssim.ms_ssim if ms else pytorch_msssim.ssim
        return Built(_Fn(lambda self, x, y: 1 - fn(x, y, data_range=1.0, size_average=False), reduction).to(device))

    return build


def _torchmetrics_ssim_build(ms: bool) -> Callable[..., Built]:
    def build(colorspace: str, reduction: str, size: tuple[int, int], device: torch.device) -> Built:
        from torchmetrics.functional.image import (
            multiscale_structural_similarity_index_measure,
            structural_similarity_index_measure,
        )

        fn = multiscale_structural_similarity_index_measure if ms else structural_similarity_index_measure
        return Built(_Fn(lambda self, x, y: 1 - fn(x, y, data_range=1.0, reduction="none"), reduction).to(device))

    return build


def _lpips_package_build(net: str) -> Callable[..., Built]:
    def build(colorspace: str, reduction: str, size: tuple[int, int], device: torch.device) -> Built:
        import lpips

        state, bnote = backbone_state(net)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
        _load_features(model.net, state)
        model.eval().requires_grad_(False)
        loss = _Fn(lambda self, x, y: self.model(x, y, normalize=True), reduction, expand_grey=True, model=model)
        return Built(loss.to(device), f"backbone: {bnote}; lin: LPIPS v0.1 (lpips package)")

    return build


def _torchmetrics_lpips_build(net: str) -> Callable[..., Built]:
    def build(colorspace: str, reduction: str, size: tuple[int, int], device: torch.device) -> Built:
        from torchmetrics.functional.image.lpips import _lpips_update, _NoTrainLpips

        state, bnote = backbone_state(net)
        model = _NoTrainLpips(net=net, pnet_rand=True)  # the network LearnedPerceptualImagePatchSimilarity holds
        _load_features(model.net, state)
        loss = _Fn(lambda self, x, y: _lpips_update(x, y, self.model, normalize=True), reduction, True, model=model)
        return Built(loss.to(device), f"backbone: {bnote}; lin: LPIPS v0.1 (torchmetrics copy)")

    return build


def _mse_build(colorspace: str, reduction: str, size: tuple[int, int], device: torch.device) -> Built:
    return Built(nn.MSELoss(reduction=reduction))


def _candidates() -> dict[str, Candidate]:
    lp = "percept.LossProvider().get_loss_function({!r}, 'RGB'|'LA', reduction='sum', deterministic=False)"
    gm = "percept.get_metric({!r}, reduction='sum'{})"
    out = [Candidate("L2 (torch)", "baseline", "torch.nn.MSELoss(reduction='sum')", _mse_build)]
    for key, name in [
        ("L1", "L1"),
        ("L2", "L2"),
        ("SSIM", "SSIM"),
        ("Watson-DCT", "Watson-dct"),
        ("Watson-DFT", "Watson-fft"),
        ("Deeploss-VGG", "Deeploss-vgg"),
        ("Deeploss-squeeze", "Deeploss-squeeze"),
        ("Adaptive", "Adaptive"),
    ]:
        out.append(Candidate(key, "paper", lp.format(name), _provider_build(name)))
    percept_rows = [
        ("l1", {}),
        ("l2", {}),
        ("ssim", {}),
        ("ssim (reflect)", {"padding": "reflect"}),
        ("ms-ssim", {}),
        ("watson-dct", {"deterministic": True}),
        ("watson-dft", {"deterministic": True}),
        ("watson-dct (shift)", {"deterministic": False}),
        ("watson-dft (shift)", {"deterministic": False}),
        ("adaptive", {}),
        ("lpips-alex", {}),
        ("lpips-squeeze", {}),
        ("lpips-vgg", {}),
        ("deeploss-vgg", {}),
        ("deeploss-squeeze", {}),
        ("elpips-vgg", {}),
    ]
    for key, opts in percept_rows:
        name = key.split(" ")[0]
        shown = "".join(f", {k}={v!r}" for k, v in opts.items())
        impl = gm.format(name, shown + (", <n>=1" if name.startswith("elpips") else ""))
        out.append(
            Candidate(key, "percept", impl, _percept_build(name, **opts), min_size=161 if name == "ms-ssim" else 1)
        )
    out += [
        Candidate(
            "pytorch_msssim.ssim",
            "peer",
            "1 - pytorch_msssim.ssim(x, y, data_range=1, size_average=False)",
            _pytorch_msssim_build(False),
            compares_to="ssim",
        ),
        Candidate(
            "pytorch_msssim.ms_ssim",
            "peer",
            "1 - pytorch_msssim.ms_ssim(x, y, data_range=1, size_average=False)",
            _pytorch_msssim_build(True),
            compares_to="ms-ssim",
            min_size=161,
        ),
        Candidate(
            "torchmetrics.ssim",
            "peer",
            "1 - torchmetrics.functional.image.structural_similarity_index_measure(x, y, data_range=1.0)",
            _torchmetrics_ssim_build(False),
            compares_to="ssim (reflect)",
        ),
        Candidate(
            "torchmetrics.ms_ssim",
            "peer",
            "1 - torchmetrics.functional.image.multiscale_structural_similarity_index_measure(x, y, data_range=1.0)",
            _torchmetrics_ssim_build(True),
            compares_to="ms-ssim",
            min_size=161,
        ),
    ]
    for net in ("alex", "squeeze", "vgg"):
        out.append(
            Candidate(
                f"lpips.{net}",
                "peer",
                f"lpips.LPIPS(net={net!r})(x, y, normalize=True) (lpips 0.1.4)",
                _lpips_package_build(net),
                compares_to=f"lpips-{net}",
                grey=False,
            )
        )
        out.append(
            Candidate(
                f"torchmetrics.lpips_{net}",
                "peer",
                f"torchmetrics LPIPS network (_NoTrainLpips(net={net!r}), normalize=True)",
                _torchmetrics_lpips_build(net),
                compares_to=f"lpips-{net}",
                grey=False,
            )
        )
    return {c.key: c for c in out}


#: every loss that can be timed, by key
CANDIDATES: dict[str, Candidate] = _candidates()


# ------------------------------------------------------------------------------------------ measurement
def skip_row(status: str, err: BaseException) -> dict:
    """``{"status": status, "note": "<error type>: <first line of its message>"}`` (400 characters at most)."""
    msg = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return {"status": status, "note": f"{type(err).__name__}: {msg}"[:400]}


def noisy_copy(target: torch.Tensor, sigma: float = 0.1, seed: int = 1) -> torch.Tensor:
    """``target`` plus Gaussian noise (``sigma``), clamped to [0, 1]: the input of the equal-values checks.

    A near pair, as in a reconstruction, rather than noise against an image: there MS-SSIM's contrast terms
    are close to 0, where ``cs ** 0.0448`` turns float rounding into visible differences between any two
    correct implementations.
    """
    noise = torch.randn(target.shape, generator=torch.Generator().manual_seed(seed)).to(target.device)
    return (target + sigma * noise).clamp(0, 1)


def _parity(key: str, colorspace: str, size: tuple[int, int], device: torch.device, target) -> float:
    """max |peer(x, target) - percept(x, target)| over the first 16 images (per-image values), x = noisy_copy."""
    cand = CANDIDATES[key]
    ours = CANDIDATES[cand.compares_to].build(colorspace, "none", size, device).loss
    theirs = cand.build(colorspace, "none", size, device).loss
    target = target[:16]
    x = noisy_copy(target)
    with torch.no_grad():
        return float((ours(x, target).float() - theirs(x, target).float()).abs().max())


def parity_between(ours: Candidate, theirs: Candidate, colorspace: str, size, device: torch.device) -> float:
    """max |theirs(x, target) - ours(x, target)| per image over 16 CelebA images, x = :func:`noisy_copy`."""
    target = celeba_batch(16, size[0], colorspace)[0].to(device)
    x = noisy_copy(target)
    a = ours.build(colorspace, "none", tuple(size), device).loss
    b = theirs.build(colorspace, "none", tuple(size), device).loss
    with torch.no_grad():
        return float((a(x, target).float().flatten() - b(x, target).float().flatten()).abs().max())


def base_row(key: str, colorspace: str, batch: int, size: int, device: str | torch.device) -> dict:
    """The columns that identify a measurement of candidate ``key`` (shared by its result and failure rows)."""
    cand = CANDIDATES[key]
    return {
        "metric": key,
        "group": cand.group,
        "implementation": cand.implementation,
        "compares_to": cand.compares_to,
        "colorspace": colorspace,
        "batch": batch,
        "height": size,
        "width": size,
        "device": str(device),
    }


def measure_training(
    key: str,
    colorspace: str = "rgb",
    batch: int = 128,
    size: int = 64,
    device: str = "cpu",
    warmup: int = 3,
    iterations: int = 20,
    repeats: int = 3,
    budget_s: float | None = None,
    seed: int = 0,
    threads: int | None = None,
    compare: bool = False,
) -> dict:
    """Time ``repeats`` x ``iterations`` SGD steps of loss ``key`` (after ``warmup`` steps); also peak memory.

    One step: ``opt.zero_grad(); loss(sigmoid(param), target).backward(); opt.step()`` with SGD(lr 1e-4) on
    ``param`` (randn, seeded) and ``target`` a CelebA batch (``batch`` x C x ``size`` x ``size``).

    ``budget_s`` caps the timed work of one measurement on slow metrics: the first warm-up step is timed,
    further warm-up steps run while they take at most a quarter of the budget, and ``iterations`` is lowered
    (to no less than 1) so that ``repeats`` x ``iterations`` steps take about ``budget_s``. The row reports the
    numbers actually run (:func:`percept.profiling.measure_steps`). Peak memory
    (:class:`percept.profiling.PeakMemory`) covers the timed steps and is only meaningful in a fresh process
    (:func:`percept.profiling.run_isolated`). ``compare``: for a peer, also the largest per-image
    difference from the percept metric it ``compares_to`` (``max_abs_diff``), on ``(noisy_copy(target), target)``
    for the first 16 images.

    Returns a dict with "status" ("ok", "skipped": the loss cannot be built or run on this input, "failed":
    it broke during the timed loop), "note", timings in ms, memory in MiB and which weights were used.
    """
    dev = torch.device(device)
    if threads:
        torch.set_num_threads(threads)
    cand = CANDIDATES[key]
    row = base_row(key, colorspace, batch, size, dev) | {"threads": torch.get_num_threads(), "status": "ok", "note": ""}
    try:
        target, source = celeba_batch(batch, size, colorspace)
        row["data_source"] = source
        if colorspace == "grey" and not cand.grey:
            row["note"] = "grey input expanded to 3 channels (the package takes RGB only)"
        if size < cand.min_size:
            raise ValueError(f"{key} needs images of at least {cand.min_size} px, got {size}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            built = cand.build(colorspace, "sum", (size, size), dev)
    except Exception as err:
        return row | skip_row("skipped", err)
    row["weights"] = built.weights
    if built.note:
        row["note"] = "; ".join(n for n in (row["note"], built.note) if n)
    target = target.to(dev)
    step = TrainingStep(built.loss, target, seed=seed)
    torch.manual_seed(seed)  # the random shift of the Watson losses
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            first_s = time_step(step, dev)
        except Exception as err:
            return row | skip_row("skipped", err)
        try:
            m = measure_steps(step, dev, first_step_s=first_s, warmup=warmup, iterations=iterations,
                              repeats=repeats, budget_s=budget_s)
        except Exception as err:
            return row | skip_row("failed", err)
    if not math.isfinite(m["last_loss"]):
        row["note"] = "; ".join(n for n in (row["note"], f"loss is {m['last_loss']}") if n)
    row |= {k: m[k] for k in ("warmup", "iterations", "repeats", "ms_per_iter_mean", "ms_per_iter_std")}
    row |= {"images_per_s": batch / (m["ms_per_iter_mean"] / 1e3), "mem_method": m["mem_method"],
            "peak_mib": m["peak_mib"]}
    if compare and cand.compares_to:
        try:
            row["max_abs_diff"] = _parity(key, colorspace, (size, size), dev, target)
        except Exception as err:
            row["note"] = "; ".join(
                n for n in (row["note"], f"equal-values check failed: {skip_row('', err)['note']}") if n
            )
    return row


