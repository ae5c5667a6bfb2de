"""Speed and memory of percept's metrics beside L2 and the peer packages (``make bench``).

    python -m percept.bench                 # 128x3x64x64 and 128x1x64x64, MS-SSIM on 128x3x192x192
    python -m percept.bench --quick         # small batches, the same code path (about a minute)
    python -m percept.bench --device cuda --out results/bench     # also write bench.csv and machine.json

Expected runtime on 2 idle CPU cores: about 5 minutes, plus benchmarks/bench_deep.py (LPIPS against the lpips
package, 5-10 minutes; ``--no-deep`` leaves it out); ``--quick`` about a minute plus its quick run.

**What is timed** is one training iteration of the runtime experiment of Czolbe et al. (spec czolbe.md §12):
``x = sigmoid(param)``, ``loss(x, target)``, ``backward()``, an SGD step, with ``target`` a batch of CelebA
faces (the downloaded CelebA when present, else the offline 32-image sample; cropped and resized as in the
paper, tiled to the batch). The L2 baseline
("L2 (torch)", ``nn.MSELoss(reduction='sum')``, what the original LossProvider returns) pays the same
sigmoid, backward and step, so "ratio to L2" compares whole iterations. Candidates are timed in one process,
interleaved: every round runs each candidate once (a few iterations, in a rotating order), and the reported
time is the median over rounds, so machine noise hits all candidates alike. CUDA is synchronised around each
measurement.

**Memory** is the extra memory of one iteration, after a warm-up iteration, above what the process held right
before it (the metric, its lazily built constants, ``param`` and ``target`` already allocated), as a multiple
of the input batch (B*C*H*W float32): the peak of live tensor memory, i.e. allocations minus frees. On CUDA:
``torch.cuda.max_memory_allocated()`` minus ``memory_allocated()`` before. On CPU the same quantity is read
from the profiler's memory timeline (every allocation and free of the iteration, in order), in a fresh process
per candidate; this is exact and repeatable, where the resident set size depends on the C library's caching
(it moved L2's own row between 2x and 4x from run to run). It includes the harness's own share (the sigmoid
output kept for its backward pass, ``param.grad``, the gradient flowing back), which L2's row shows.

**Targets** (from the issue; printed as pass/FAIL, never asserted): Watson-DCT and Watson-DFT at most 10x L2;
SSIM at least 1.5x faster than pytorch-msssim with equal values (max abs difference per image <= 1e-5);
peak memory of percept's metrics at most 4x the input batch. For the original implementation the issue states
Watson-DCT ~ 28x, Watson-DFT ~ 35x and SSIM ~ 60x L2 on 2 CPU cores; there is no faithful re-implementation
of it here, so these are printed as documented anchors, not measured.

This module also holds what ``experiments/runtime/run.py`` is built from: the candidate losses
(:data:`CANDIDATES`: the original LossProvider's, percept's and the peers'), :func:`celeba_batch`,
:func:`measure_training` (one measurement) and :func:`run_isolated` (run it in a fresh process).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as _dt
import functools
import gc
import importlib.util
import inspect
import json
import math
import multiprocessing as mp
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

if TYPE_CHECKING:
    import pandas as pd

#: repository root (for git information and benchmarks/bench_deep.py)
REPO_ROOT = Path(__file__).resolve().parents[2]
#: seed of the random backbones used when ImageNet weights are missing (same weights for percept and peers)
RANDOM_BACKBONE_SEED = 0
#: the paper's optimiser step size
LR = 1e-4

# ------------------------------------------------------------------------------------------------ machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def device_name(device: str | torch.device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return _cpu_model()


def machine_info(device: str | torch.device = "cpu", threads: int | None = None) -> dict:
    """Torch version, device, CPU model, threads, date and git commit: what every result file carries."""
    import torchvision

    device = torch.device(device)
    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "device_name": device_name(device),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads if threads is not None else torch.get_num_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
    }
    try:
        info["cpu_affinity"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        pass
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(), gpu_memory_gib=props.total_memory / 2**30
        )
    for package in ("torchmetrics", "lpips", "pytorch_msssim"):
        try:
            from importlib.metadata import version

            info[package] = version(package.replace("_", "-"))
        except Exception:  # not installed: the peer rows say so
            info[package] = None
    return info


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------------- memory
def _proc_status_kib(field_name: str) -> int | None:
    try:
        match = re.search(rf"^{field_name}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _trim_heap() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # "5": reset the peak resident set size (VmHWM) to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


class PeakMemory:
    """Context manager: the peak extra memory of the enclosed code, in bytes (``.bytes``; ``.method`` says how).

    CUDA: ``max_memory_allocated() - memory_allocated()`` at entry (live tensor memory). CPU, ``live=True``:
    the same quantity for the CPU allocator, from the profiler's memory timeline (every allocation and
    free of the enclosed code, in order; exact and independent of the C library's caching, but slow, so
    for a separate memory pass only). CPU otherwise (Linux): peak resident set size (VmHWM, reset at
    entry) minus the resident set size at entry; meaningful in a fresh process only, which is why
    :func:`run_isolated` exists, and subject to the allocator's caching. Elsewhere ``bytes`` is None.
    """

    def __init__(self, device: torch.device, live: bool = False):
        self.device = torch.device(device)
        self.live = live
        self.bytes: float | None = None
        self.method = ""
        self._profiler = None

    def __enter__(self) -> PeakMemory:
        _trim_heap()
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            self.method = "cuda_max_memory_allocated"
        elif self.live:
            from torch.profiler import ProfilerActivity, profile

            self._profiler = profile(
                activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
            )
            self._stderr = _silence_stderr()  # the profiler's C++ side logs start/stop lines on every run
            self._profiler.__enter__()
            self.method = "cpu_live_tensor_bytes"
        else:
            self._base = _proc_status_kib("VmRSS")
            self._ok = self._base is not None and _reset_peak_rss()
            self.method = "peak_rss_delta" if self._ok else "unavailable"
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            self.bytes = float(torch.cuda.max_memory_allocated(self.device) - self._base)
        elif self._profiler is not None:
            try:
                self._profiler.__exit__(*exc)
                self.bytes = _peak_live_bytes(self._profiler)
            finally:
                _restore_stderr(self._stderr)
        elif self._ok:
            peak = _proc_status_kib("VmHWM")
            self.bytes = None if peak is None else float(max(0, peak - self._base) * 1024)


def _silence_stderr() -> int | None:
    """Point file descriptor 2 at /dev/null; returns the saved descriptor (None where that fails)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        return saved
    except OSError:
        return None


def _restore_stderr(saved: int | None) -> None:
    if saved is not None:
        os.dup2(saved, 2)
        os.close(saved)


def _peak_live_bytes(profiler) -> float:
    """Peak of allocations minus frees over a profiled region (blocks allocated before it are not counted)."""
    from torch.profiler._memory_profiler import Action

    live = peak = 0
    for _, action, _, size in profiler._memory_profile().timeline:
        if action == Action.CREATE:
            live += size
        elif action == Action.DESTROY:
            live -= size
        peak = max(peak, live)
    return float(peak)


# ----------------------------------------------------------------------------------------- fresh process
_CONTEXT = None


def _mp_context():
    """A forkserver context whose server has imported torch and this module (fast, clean children)."""
    global _CONTEXT
    if _CONTEXT is None:
        if "forkserver" in mp.get_all_start_methods():
            from multiprocessing import forkserver

            _CONTEXT = mp.get_context("forkserver")
            # imported once by the server instead of by every child (torchvision alone takes seconds)
            _CONTEXT.set_forkserver_preload(["percept.bench", "torchvision", "PIL.Image", "percept.compat"])
            # each child re-runs the parent's main module as __mp_main__; under ``python -m percept.bench`` runpy
            # warns that the (preloaded) module is already imported: harmless, silenced in the server
            old = os.environ.get("PYTHONWARNINGS")
            os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [old, "ignore::RuntimeWarning:runpy"]))
            try:
                forkserver.ensure_running()
            finally:
                if old is None:
                    del os.environ["PYTHONWARNINGS"]
                else:
                    os.environ["PYTHONWARNINGS"] = old
        else:
            _CONTEXT = mp.get_context("spawn")
    return _CONTEXT


def _child_main(conn, fn, args, kwargs) -> None:
    gc.freeze()  # what the server imported is never garbage: keeps gc.collect() in the child fast
    try:
        conn.send(("ok", fn(*args, **kwargs)))
    except BaseException as err:  # report everything, the parent decides
        conn.send(("error", f"{type(err).__name__}: {err}", traceback.format_exc()))
    finally:
        conn.close()


def run_isolated(fn: Callable, *args, timeout: float | None = None, **kwargs):
    """Run ``fn(*args, **kwargs)`` in a fresh process; return its result or raise ``RuntimeError``.

    ``fn`` must be importable (a module-level function) and its result picklable. A crash of the child
    (a segfault, the OOM killer) and ``timeout`` (seconds) raise ``RuntimeError`` too.
    """
    ctx = _mp_context()
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_main, args=(send, fn, args, kwargs), daemon=True)
    proc.start()
    send.close()
    deadline = None if timeout is None else time.monotonic() + timeout
    message = None
    try:
        while message is None:
            if recv.poll(0.1):
                message = recv.recv()
            elif not proc.is_alive():
                if recv.poll(0.5):
                    message = recv.recv()
                else:
                    message = ("error", f"worker process died with exit code {proc.exitcode}", "")
            elif deadline is not None and time.monotonic() > deadline:
                proc.kill()
                message = ("error", f"worker timed out after {timeout:.0f} s", "")
    except EOFError:
        message = ("error", f"worker process died with exit code {proc.exitcode}", "")
    finally:
        proc.join(5)
        recv.close()
    if message[0] == "ok":
        return message[1]
    raise RuntimeError(message[1]) from None


# --------------------------------------------------------------------------------------------------- data
def _grey(x: torch.Tensor) -> torch.Tensor:
    """torchvision Grayscale: 0.299 R + 0.587 G + 0.114 B, one channel."""
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


@functools.lru_cache(maxsize=8)
def _celeba_images(size: int) -> tuple[torch.Tensor, str]:
    from PIL import Image

    from percept import assets
    from percept.data import celeba

    processed = celeba.processed_dir()
    pngs = sorted(processed.glob("*.png"))[:128] if processed.is_dir() else []
    images = []
    if pngs:
        for f in pngs:
            with Image.open(f) as im:
                im = im.convert("RGB")
                images.append(celeba.to_tensor(im if size == celeba.SIZE else im.resize((size, size), Image.LANCZOS)))
        source = f"CelebA (downloaded), the first {len(pngs)} preprocessed 64x64 images of {processed}"
    else:
        folder = assets.data_dir("data/celeba_sample")
        files = sorted(folder.glob("*.jpg")) if folder is not None else []
        if not files:
            raise FileNotFoundError(
                "no CelebA images: neither the preprocessed dataset (python data/download_celeba.py) nor the "
                "offline sample (PERCEPT_ASSETS=<asset folder>/ with data/celeba_sample) was found"
            )
        for f in files:
            with Image.open(f) as im:
                images.append(
                    celeba.to_tensor(im.convert("RGB").crop(celeba.CROP_BOX).resize((size, size), Image.LANCZOS))
                )
        source = f"offline CelebA sample: {len(files)} aligned images from {folder} (crop {celeba.CROP_BOX}, LANCZOS)"
    if size != celeba.SIZE:
        source += f", resized to {size}x{size}"
    return torch.stack(images).float().div_(255), source


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
        x = _grey(x)
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


_DEEP_FAMILIES = ("lpips", "deeploss", "elpips", "dps")


def _elpips_single_sample(cls) -> dict:
    params = inspect.signature(cls.__init__).parameters
    for name in ("n", "samples", "n_samples", "num_samples", "ensemble_size", "n_transforms"):
        if name in params:
            return {name: 1}
    raise TypeError(f"{cls.__name__} has no sample-count option (looked for n, samples, n_samples, ...)")


def _percept_build(name: str, **options) -> Callable[..., Built]:
    def build(colorspace: str, reduction: str, size: tuple[int, int], device: torch.device) -> Built:
        import percept
        from percept.registry import metric_class

        kwargs = dict(options)
        weights, note = "none", ""
        family = name.split("-")[0]
        space = "rgb" if colorspace == "rgb" else "gray"
        if family in _DEEP_FAMILIES:
            cls = metric_class(name)  # ImportError when the family's module does not exist (yet)
            net = name.split("-")[1]
            state, bnote = backbone_state(net)
            if "backbone_weights" in inspect.signature(cls.__init__).parameters:
                kwargs["backbone_weights"] = state
                weights = f"backbone: {bnote}"
            else:
                weights = "backbone: the metric's default (ImageNet)"
            if family == "lpips":
                weights += "; lin: LPIPS v0.1"
            elif family == "deeploss":
                weights += f"; lin: weights/czolbe/{space}_pnet_lin_{net}_trial0.pth"
            if family == "elpips":
                n = _elpips_single_sample(cls)
                kwargs.update(n)
                note = f"E-LPIPS with {n} (one random transformation per call)"
        if name == "adaptive":
            if tuple(size) != (64, 64):
                kwargs.update(pretrained=False, image_size=tuple(size))
                weights = "none (alpha = c = 1: the trained weights fit 64x64 only)"
            else:
                weights = f"weights/czolbe/{space}_adaptive_trial0.pth"
        if name.startswith("watson"):
            kind = name[len("watson-") :].replace("dft", "fft")
            weights = f"weights/czolbe/{space}_watson_{kind}_trial0.pth"
        loss = percept.get_metric(name, colorspace=colorspace, reduction=reduction, **kwargs)
        return Built(loss.to(device), weights, note)

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
def _skip(status: str, err: BaseException) -> dict:
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


def _parity_between(ours: Candidate, theirs: Candidate, colorspace: str, size, device: torch.device) -> float:
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
    numbers actually run. Peak memory (see :class:`PeakMemory`) covers warm-up and timed steps and is only
    meaningful in a fresh process (:func:`run_isolated`). ``compare``: for a peer, also the largest per-image
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
        return row | _skip("skipped", err)
    row["weights"] = built.weights
    if built.note:
        row["note"] = "; ".join(n for n in (row["note"], built.note) if n)
    target = target.to(dev)
    gen = torch.Generator().manual_seed(seed)
    param = torch.randn(target.shape, generator=gen).to(dev).requires_grad_(True)
    opt = torch.optim.SGD([param], lr=LR)
    loss_fn = built.loss
    torch.manual_seed(seed)  # the random shift of the Watson losses

    last: list[torch.Tensor] = []

    def step() -> None:
        opt.zero_grad()
        loss = loss_fn(torch.sigmoid(param), target)
        loss.backward()
        opt.step()
        last[:] = [loss.detach()]

    def timed_step() -> float:
        t0 = time.perf_counter()
        step()
        synchronize(dev)
        return time.perf_counter() - t0

    times: list[float] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            t_step = timed_step()
        except Exception as err:
            return row | _skip("skipped", err)
        try:
            n_warm = 1 + max(0, warmup - 1 if budget_s is None else min(warmup - 1, int(0.25 * budget_s / t_step)))
            for _ in range(n_warm - 1):
                t_step = timed_step()
            n_iter = iterations
            if budget_s is not None:
                n_iter = max(1, min(iterations, int(budget_s / (repeats * max(t_step, 1e-9)))))
            with PeakMemory(dev) as mem:  # after warm-up: "peak above the memory held right before the loop"
                for _ in range(repeats):
                    synchronize(dev)
                    t0 = time.perf_counter()
                    for _ in range(n_iter):
                        step()
                    synchronize(dev)
                    times.append((time.perf_counter() - t0) / n_iter)
        except Exception as err:
            return row | _skip("failed", err)
    value = float(last[0])
    if not math.isfinite(value):
        row["note"] = "; ".join(n for n in (row["note"], f"loss is {value}") if n)
    ms = [t * 1e3 for t in times]
    row |= {
        "warmup": n_warm,
        "iterations": n_iter,
        "repeats": len(ms),
        "ms_per_iter_mean": statistics.fmean(ms),
        "ms_per_iter_std": statistics.stdev(ms) if len(ms) > 1 else float("nan"),
        "images_per_s": batch / (statistics.fmean(ms) / 1e3),
        "mem_method": mem.method,
        "peak_mib": None if mem.bytes is None else mem.bytes / 2**20,
    }
    if compare and cand.compares_to:
        try:
            row["max_abs_diff"] = _parity(key, colorspace, (size, size), dev, target)
        except Exception as err:
            row["note"] = "; ".join(
                n for n in (row["note"], f"equal-values check failed: {_skip('', err)['note']}") if n
            )
    return row


# ----------------------------------------------------------------------------------------------- bench
#: (base name -> original's time as a multiple of L2 on 2 CPU cores, as the issue states; not measured here)
ORIGINAL_X_L2 = {"watson-dct": 28.0, "watson-dft": 35.0, "ssim": 60.0}


@dataclass
class _Case:
    key: str
    colorspace: str
    shape: tuple[int, int, int, int]
    peer: str | None = None


def _cases(quick: bool) -> list[_Case]:
    b = 16 if quick else 128
    b_ms = 4 if quick else 128
    cases = []
    for cs, c in (("rgb", 3), ("grey", 1)):
        shape = (b, c, 64, 64)
        cases += [
            _Case("L2 (torch)", cs, shape),
            _Case("l2", cs, shape),
            _Case("ssim", cs, shape, "pytorch_msssim.ssim"),
            _Case("pytorch_msssim.ssim", cs, shape),
            _Case("ssim (reflect)", cs, shape, "torchmetrics.ssim"),
            _Case("torchmetrics.ssim", cs, shape),
            _Case("watson-dct", cs, shape),
            _Case("watson-dct (shift)", cs, shape),
            _Case("watson-dft", cs, shape),
            _Case("watson-dft (shift)", cs, shape),
            _Case("adaptive", cs, shape),
        ]
    shape = (b_ms, 3, 192, 192)
    cases += [
        _Case("L2 (torch)", "rgb", shape),
        _Case("ms-ssim", "rgb", shape, "pytorch_msssim.ms_ssim"),
        _Case("pytorch_msssim.ms_ssim", "rgb", shape),
        _Case("torchmetrics.ms_ssim", "rgb", shape),
    ]
    return cases


class _Prepared:
    def __init__(self, case: _Case, device: torch.device, seed: int = 0):
        b, c, h, w = case.shape
        cand = CANDIDATES[case.key]
        self.case = case
        self.target = celeba_batch(b, h, case.colorspace)[0].to(device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.built = cand.build(case.colorspace, "sum", (h, w), device)
        gen = torch.Generator().manual_seed(seed)
        self.param = torch.randn(self.target.shape, generator=gen).to(device).requires_grad_(True)
        self.opt = torch.optim.SGD([self.param], lr=LR)

    def step(self) -> None:
        self.opt.zero_grad()
        self.built.loss(torch.sigmoid(self.param), self.target).backward()
        self.opt.step()


def _memory_of_case(key: str, colorspace: str, shape: tuple, device: str) -> float | None:
    """Peak extra bytes of one training step after a warm-up step (run in a fresh process on CPU)."""
    prep = _Prepared(_Case(key, colorspace, tuple(shape)), torch.device(device))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prep.step()  # warm-up: pages in code and creates the metric's lazily built constants
        with PeakMemory(torch.device(device), live=True) as mem:
            prep.step()
    return mem.bytes


def _load_deep_bench():
    path = REPO_ROOT / "benchmarks" / "bench_deep.py"
    if not path.is_file() or importlib.util.find_spec("percept.metrics.deep") is None:
        return None
    spec = importlib.util.spec_from_file_location("percept_bench_deep", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, "run", None)


def run(
    quick: bool = False,
    device: str = "cpu",
    rounds: int | None = None,
    memory: bool = True,
    threads: int | None = None,
    progress: bool = True,
    deep: bool = True,
) -> pd.DataFrame:
    """Time every case (see the module docstring) and return one row per case as a DataFrame.

    Columns: metric, group, colorspace, shape, ms_per_iter (median over ``rounds``), ratio_to_l2, peer,
    speedup_vs_peer (peer time / our time: > 1 means percept is faster), max_abs_diff_vs_peer (per-image
    values on a near pair, see :func:`noisy_copy`), peak_mem_x_input, original_x_l2 (the issue's figure for
    the original code, not measured), time_target and time_verdict (the issue's speed targets), mem_verdict
    (percept's metrics: peak memory <= 4x the input batch), note, implementation. ``deep``: also run
    ``benchmarks/bench_deep.py`` (LPIPS against the lpips package) when it exists, and append its rows.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    dev = torch.device(device)
    if threads:
        torch.set_num_threads(threads)
    rounds = rounds or (3 if quick else 7)
    per_call_s = 0.02 if quick else 0.15
    cases = _cases(quick)
    notes: dict[int, str] = {}
    prepared: dict[int, _Prepared] = {}
    n_iter: dict[int, int] = {}
    times: dict[int, list[float]] = {}
    bar = tqdm(total=len(cases) * (rounds + 1) + (len(cases) if memory else 0), desc="bench", disable=not progress)
    for i, case in enumerate(cases):
        try:
            prep = _Prepared(case, dev)
            for _ in range(2):  # warm-up; the second call is the estimate
                synchronize(dev)
                t0 = time.perf_counter()
                prep.step()
                synchronize(dev)
            t = time.perf_counter() - t0
            prepared[i] = prep
            n_iter[i] = max(1, math.ceil(per_call_s / max(t, 1e-9)))
            times[i] = []
        except Exception as err:
            notes[i] = _skip("skipped", err)["note"]
        bar.update(1)
    order = list(prepared)
    for r in range(rounds):
        k = r % max(1, len(order))
        for i in order[k:] + order[:k]:  # rotate the order so no candidate always runs first
            prep = prepared[i]
            synchronize(dev)
            t0 = time.perf_counter()
            for _ in range(n_iter[i]):
                prep.step()
            synchronize(dev)
            times[i].append((time.perf_counter() - t0) / n_iter[i])
            bar.update(1)
        bar.update(len(cases) - len(order))
    peers: dict[int, float] = {}
    for i, case in enumerate(cases):
        if case.peer and i in prepared:
            peer_index = next(
                (j for j, c in enumerate(cases) if c.key == case.peer and c.shape == case.shape and j in prepared), None
            )
            if peer_index is None:
                continue
            prep = prepared[i]
            x = noisy_copy(prep.target)
            try:
                b, c, h, w = case.shape
                ours = CANDIDATES[case.key].build(case.colorspace, "none", (h, w), dev).loss
                theirs = CANDIDATES[case.peer].build(case.colorspace, "none", (h, w), dev).loss
                with torch.no_grad():
                    peers[i] = float((ours(x, prep.target) - theirs(x, prep.target)).abs().max())
            except Exception as err:
                notes[i] = f"equal-values check failed: {_skip('', err)['note']}"
    prepared.clear()
    gc.collect()
    mem: dict[int, float | None] = {}
    if memory:
        for i, case in enumerate(cases):
            if i in times:
                try:
                    if dev.type == "cuda":
                        mem[i] = _memory_of_case(case.key, case.colorspace, case.shape, str(dev))
                    else:
                        mem[i] = run_isolated(
                            _memory_of_case, case.key, case.colorspace, case.shape, str(dev), timeout=600
                        )
                except Exception as err:
                    notes[i] = "; ".join(n for n in (notes.get(i), f"memory: {err}") if n)
            bar.update(1)
    bar.close()

    rows = []
    for i, case in enumerate(cases):
        cand = CANDIDATES[case.key]
        ms = statistics.median(times[i]) * 1e3 if times.get(i) else float("nan")
        rows.append(
            {
                "metric": case.key,
                "group": cand.group,
                "colorspace": case.colorspace,
                "shape": "x".join(map(str, case.shape)),
                "ms_per_iter": ms,
                "rounds": len(times.get(i, [])),
                "iters_per_round": n_iter.get(i),
                "peer": case.peer,
                "max_abs_diff_vs_peer": peers.get(i),
                "peak_mem_x_input": (mem[i] / (4 * math.prod(case.shape))) if mem.get(i) is not None else None,
                "original_x_l2": ORIGINAL_X_L2.get(case.key.split(" ")[0]) if cand.group == "percept" else None,
                "note": notes.get(i, ""),
                "implementation": cand.implementation,
            }
        )
    df = pd.DataFrame(rows)
    base = df[df.metric == "L2 (torch)"].set_index("shape").ms_per_iter
    df["ratio_to_l2"] = df.ms_per_iter / df["shape"].map(base)
    by_case = {(r.metric, r.shape): r.ms_per_iter for r in df.itertuples()}
    df["speedup_vs_peer"] = [
        by_case.get((r.peer, r.shape), float("nan")) / r.ms_per_iter if isinstance(r.peer, str) else float("nan")
        for r in df.itertuples()
    ]

    def verdict(ok) -> str:
        return "n/a" if ok is None else "pass" if ok else "FAIL"

    time_target, time_verdict, mem_verdict = [], [], []
    for r in df.itertuples():
        target, ok = "", None
        if r.metric.startswith("watson"):
            target = "<= 10x L2"
            ok = None if pd.isna(r.ratio_to_l2) else bool(r.ratio_to_l2 <= 10)
        elif r.metric == "ssim":
            target = ">= 1.5x faster than pytorch-msssim, |diff| <= 1e-5"
            diff = r.max_abs_diff_vs_peer
            ok = (
                None if pd.isna(r.speedup_vs_peer) or pd.isna(diff) else bool(r.speedup_vs_peer >= 1.5 and diff <= 1e-5)
            )
        time_target.append(target)
        time_verdict.append(verdict(ok) if target else "")
        mem = r.peak_mem_x_input
        mem_verdict.append(verdict(None if pd.isna(mem) else bool(mem <= 4)) if r.group == "percept" else "")
    df["time_target"] = time_target
    df["time_verdict"] = time_verdict
    df["mem_verdict"] = mem_verdict  # target: peak memory <= 4x the input batch
    deep_run = _load_deep_bench() if deep else None
    if deep_run is not None:
        try:
            kwargs = {"threads": torch.get_num_threads()} if "threads" in inspect.signature(deep_run).parameters else {}
            df = pd.concat([df, _deep_rows(deep_run(quick, **kwargs))], ignore_index=True)
        except Exception as err:
            print(f"benchmarks/bench_deep.py failed: {type(err).__name__}: {err}", file=sys.stderr)
    return df


def _deep_rows(rows: list[dict]) -> pd.DataFrame:
    """benchmarks/bench_deep.py's rows (metric, mode, ours_ms, peer_ms, ratio, max_abs_diff, trunk, batch) in
    this table's columns; its peer is the lpips package, its inputs random N x 3 x 64 x 64 images."""
    import pandas as pd

    out = []
    for r in rows:
        out.append(
            {
                "metric": r.get("metric"),
                "group": "deep (benchmarks/bench_deep.py)",
                "colorspace": "rgb",
                "shape": f"{r['batch']}x3x64x64" if "batch" in r else None,
                "ms_per_iter": r.get("ours_ms"),
                "peer": "lpips package",
                "speedup_vs_peer": r.get("ratio"),
                "max_abs_diff_vs_peer": r.get("max_abs_diff"),
                "note": f"{r.get('mode', '')}; trunk: {r.get('trunk', '?')} (no sigmoid/SGD step)",
                "time_target": "",
                "time_verdict": "",
                "mem_verdict": "",
            }
        )
    return pd.DataFrame(out)


def format_table(df) -> str:
    """The bench table as printed by ``python -m percept.bench``."""
    cols = [
        "metric", "colorspace", "shape", "ms_per_iter", "ratio_to_l2", "original_x_l2", "peer", "speedup_vs_peer",
        "max_abs_diff_vs_peer", "time_target", "time_verdict", "peak_mem_x_input", "mem_verdict", "note",
    ]  # fmt: skip
    formats = {
        "ms_per_iter": "{:.2f}",
        "ratio_to_l2": "{:.1f}x",
        "speedup_vs_peer": "{:.2f}x",
        "max_abs_diff_vs_peer": "{:.1e}",
        "peak_mem_x_input": "{:.1f}x",
        "original_x_l2": "~{:.0f}x",
    }
    cols = [c for c in cols if c in df.columns]

    def cell(col: str, v) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        return formats[col].format(v) if col in formats else str(v)

    rows = [[cell(c, v) for c, v in zip(cols, values)] for values in df[cols].itertuples(index=False)]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) if i in (0, 1, 2, 6) else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))
              for r in rows]  # fmt: skip
    return "\n".join(line.rstrip() for line in lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m percept.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small batches (16, MS-SSIM 4), 3 rounds: under a minute")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds; median over them (default 7)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    parser.add_argument("--no-deep", action="store_true", help="skip benchmarks/bench_deep.py (LPIPS vs lpips)")
    parser.add_argument("--out", default=None, help="also write bench.csv and machine.json into this folder")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info(args.device)
    print(
        f"percept bench on {info['device_name']} ({info['device']}), torch {info['torch']}, "
        f"{info['torch_threads']} threads, {info['cpu_count']} CPUs, commit {info['git_commit']}, {info['date']}"
    )
    df = run(
        quick=args.quick,
        device=args.device,
        rounds=args.rounds,
        memory=not args.no_memory,
        threads=args.threads,
        deep=not args.no_deep,
    )
    print(format_table(df))
    print(
        "ms_per_iter: median over interleaved rounds of one training iteration (sigmoid, forward, backward, SGD "
        "step). speedup_vs_peer = peer time / percept time. peak_mem_x_input: extra memory of one iteration "
        "as a multiple of the input batch (peak live tensor memory, incl. the harness's share: see L2's row). original_x_l2: "
        "the issue's figure for the original code on 2 CPU cores (documented anchor, not measured)."
    )
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        df.to_csv(out / "bench.csv", index=False)
        info["quick"] = args.quick
        (out / "machine.json").write_text(json.dumps(info, indent=2) + "\n")
        print(f"wrote {out / 'bench.csv'} and {out / 'machine.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
