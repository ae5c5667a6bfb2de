"""How Watson's luminance floor changes the start of VAE training (evidence for the library default).

The original Watson loss gives pure-black target blocks a near-zero threshold: errors there weigh
enormously. percept can floor the target's DC term (``luminance_floor``) so that such blocks stay
finite on photographs. This driver trains the paper's MNIST VAE (seed 0, Adam lr 1e-4, batch 128,
KL + lambda * Watson with lambda = 1, random block shift, batch-pooled luminance as in the paper) for a
few hundred steps with each floor, and records the held-out pixel error and the grey level of the
reconstructed background (the black border and gaps around each digit) every few steps::

    python experiments/luminance_floor/run.py                     # ~10 min on 2 CPU cores
    python experiments/luminance_floor/run.py --original PATH     # adds the original code's loss as a row
    python experiments/luminance_floor/run.py --quick             # seconds (tests)

``--original`` is the ``src/loss`` folder of the original repository (SteffenCzolbe/PerceptualSimilarity);
its ``LossProvider`` builds ``Watson-fft``/``Watson-dct`` ('LA', random shift) with its trained weights.
The original draws its shift from numpy's RNG, percept from torch's: the runs share the model
initialisation and the batch order, not the shift sequence.

Data: the MNIST training digits (offline: the recovered 60,000-digit training set, see
:mod:`percept.data.mnist`), held-out error on the first ``--test`` official test digits.
Writes ``results/luminance_floor/curves.csv`` (row by row) and ``machine.json``. With ``--snapshots K`` it
also keeps the reconstructions of the first K test images at every evaluation (``snapshots.npz``, one array
per run: evaluations x K x H x W, or x 3 x H x W for RGB, with the steps) and draws them (``snapshots.png``): what the images look
like, not only their error, e.g. to compare the original's texture with percept's over a few epochs::

    python experiments/luminance_floor/run.py --original PATH --losses watson-dft --floors 0 \
        --steps 1876 --eval-every 469 --snapshots 10 --out results/luminance_floor/epochs

``--model celeba`` does the same with the paper's CelebA VAE on RGB faces (the original's 'RGB' loss; the
offline faces are the REDUCED set, see :mod:`percept.data.celeba`; the paper's batch is 64).

``--losses deeploss-squeeze`` runs the same side-by-side training for a loss without a luminance floor (one
percept run, ``luminance_floor`` left empty), to check that percept's paper mode trains like the original's
Deeploss-Squeeze. Every loss is weighted with the paper's lambda = e^k for the model (the original
repository's HEAD k: 0 for Watson, 9 for Deeploss-Squeeze). The original's ``PNetLin`` moves itself to CUDA
and asks torchvision for ImageNet SqueezeNet (a download); on a CPU or offline machine the run keeps it on
the CPU and gives it the same SqueezeNet features percept uses (:mod:`percept.assets`)::

    python experiments/luminance_floor/run.py --model celeba --batch-size 64 --original PATH \
        --losses deeploss-squeeze --steps 140 --eval-every 35 --test 256 --snapshots 8 \
        --out results/vae_celeba/deeploss_vs_original
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import math
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

from percept.data.celeba import load_celeba
from percept.data.mnist import load_mnist
from percept.models import build_vae
from percept.models.mnist import MnistVAE
from percept.runinfo import machine_info, write_json
from percept.vae import K_EXPONENTS, build_metric, kl_divergence, loss_weighting
from percept.vae.outputs import to_uint8

ROOT = Path(__file__).resolve().parents[2]
FIELDS = ["loss", "implementation", "luminance_floor", "step", "test_pixel_mse", "background", "foreground",
          "train_objective", "seconds"]


#: per model: (data loader, colorspace of the metric, the original's colorspace name, image shape)
MODELS = {
    "mnist": (load_mnist, "grey", "LA", (1, 32, 32)),
    "celeba": (load_celeba, "rgb", "RGB", (3, 64, 64)),
}


#: percept's name -> the original LossProvider's
ORIGINAL_NAMES = {"watson-dft": "Watson-fft", "watson-dct": "Watson-dct", "deeploss-squeeze": "Deeploss-squeeze"}


@contextlib.contextmanager
def _original_pnetlin_here(device: str):
    """While the original's ``PNetLin`` is built: its unconditional ``.cuda()`` calls become moves to ``device``,
    and torchvision's ``squeezenet1_1(pretrained=True)`` (a download) gets the ImageNet features from
    :mod:`percept.assets` (the file percept's Deeploss-Squeeze loads)."""
    import deep_loss  # the original's module, on sys.path (see original_loss)
    import torchvision

    from percept.assets import locate

    def squeezenet1_1(pretrained: bool = False, **kwargs):
        net = torchvision.models.squeezenet1_1(weights=None, **kwargs)
        if pretrained:
            state = torch.load(locate("weights/torchvision/squeezenet1_1_features.pth"), map_location="cpu")
            net.features.load_state_dict({k.removeprefix("features."): v for k, v in state.items()})
        return net

    saved = deep_loss.models, torch.nn.Module.cuda, torch.Tensor.cuda
    deep_loss.models = types.SimpleNamespace(squeezenet1_1=squeezenet1_1)
    torch.nn.Module.cuda = lambda self, *a, **k: self.to(device)
    torch.Tensor.cuda = lambda self, *a, **k: self.to(device)
    try:
        yield
    finally:
        deep_loss.models, torch.nn.Module.cuda, torch.Tensor.cuda = saved


def original_loss(path: str, name: str, device: str, colorspace: str = "LA") -> torch.nn.Module:
    """The original code's loss ``name`` (``colorspace`` 'LA' or 'RGB', reduction 'sum', random shift for
    Watson), imported from ``path``."""
    sys.path.insert(0, str(Path(path).resolve()))
    if not hasattr(torch, "rfft"):  # the original calls torch.rfft (removed in torch 1.8): its old meaning
        torch.rfft = lambda x, signal_ndim: torch.view_as_real(torch.fft.rfftn(x, dim=tuple(range(-signal_ndim, 0))))
    from loss_provider import LossProvider as OriginalProvider  # optional, outside the package

    if name not in ORIGINAL_NAMES:
        raise SystemExit(f"--original: no comparison for {name!r}; it supports {', '.join(ORIGINAL_NAMES)}")
    provider = OriginalProvider()
    building = _original_pnetlin_here(device) if name.startswith("deeploss") else contextlib.nullcontext()
    with building:
        loss = provider.get_loss_function(ORIGINAL_NAMES[name], colorspace, reduction="sum", deterministic=False)
    return loss.to(device)


@torch.no_grad()
def reconstruct(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The model's reconstructions (z = mu) of ``images``, in chunks of 500."""
    model.eval()
    recon = torch.cat([model.decode(model.encode(x)[0]) for x in images.split(500)])
    model.train()
    return recon


def held_out(recon: torch.Tensor, images: torch.Tensor) -> dict:
    """Pixel MSE of the reconstructions, and their mean grey level on background / digit pixels (NaN for
    images without black pixels)."""
    background, foreground = images == 0, images > 0.5
    return {
        "test_pixel_mse": (recon - images).square().mean().item(),
        "background": recon[background].mean().item(),
        "foreground": recon[foreground].mean().item(),
    }


def _uint8(images: torch.Tensor) -> np.ndarray:
    """Images as uint8: N x H x W (grey) or N x 3 x H x W (RGB)."""
    return to_uint8((images[:, 0] if images.shape[1] == 1 else images).cpu())


def train_run(loss_fn, train: torch.Tensor, test: torch.Tensor, args, label: dict, writer, handle) -> dict:
    """Train a fresh VAE (seed ``args.seed``) with ``loss_fn(recon, x) -> lambda * per-batch sum`` (plus the KL
    term) and log its curve.

    Returns ``{"steps": [...], "images": evaluations x K x ...}`` (:func:`_uint8`) for the first
    ``args.snapshots`` test images (empty arrays when it is 0)."""
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    model = (MnistVAE(hidden_dim=args.hidden_dim) if args.model == "mnist" else build_vae(args.model)).to(args.device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed))
    t0, objective = time.time(), float("nan")
    steps, images = [], []
    for step in range(args.steps + 1):
        if step % args.eval_every == 0 or step == args.steps:
            recon = reconstruct(model, test)
            row = {**label, "step": step, **held_out(recon, test), "train_objective": objective,
                   "seconds": time.time() - t0}
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
            handle.flush()
            if args.snapshots:
                steps.append(step)
                images.append(_uint8(recon[: args.snapshots]))
        if step == args.steps:
            break
        ids = order[(step * args.batch_size) % len(train):][: args.batch_size]
        x = train[ids].to(args.device, non_blocking=True)
        recon, mu, logvar = model(x)
        loss = loss_fn(recon, x) + kl_divergence(mu, logvar)  # loss_fn holds the paper's lambda
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        objective = loss.item() / len(x)
    shape = (0, args.snapshots, *_uint8(test[:1]).shape[1:])
    return {"steps": np.array(steps, dtype=np.int64), "images": np.stack(images) if images else np.zeros(shape, np.uint8)}


def run_key(label: dict) -> str:
    """A snapshot array's name: ``<loss>/<implementation>/floor=<floor>`` (``floor=none`` for a loss without
    a luminance floor)."""
    floor = label["luminance_floor"]
    return f"{label['loss']}/{label['implementation']}/floor={'none' if floor is None else format(floor, 'g')}"


def save_snapshots(out: Path, snapshots: dict, test: torch.Tensor) -> Path:
    """``snapshots.npz`` (per run: ``<key>/steps`` and ``<key>/images``; ``targets``) and ``snapshots.png``."""
    k = next(iter(snapshots.values()))["images"].shape[1]
    arrays = {"targets": _uint8(test[:k])}
    for key, snap in snapshots.items():
        arrays[f"{key}/steps"], arrays[f"{key}/images"] = snap["steps"], snap["images"]
    np.savez_compressed(out / "snapshots.npz", **arrays)
    return draw_snapshots(out)


def draw_snapshots(out: Path) -> Path:
    """``snapshots.png`` from ``snapshots.npz``: the held-out images, then one row per run and evaluation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = np.load(out / "snapshots.npz")
    targets = data["targets"]
    keys = [name.removesuffix("/steps") for name in data.files if name.endswith("/steps")]
    rows = [("held-out images", targets)]
    for key in keys:
        loss, implementation, floor = key.split("/")
        label = implementation + ("" if floor in ("floor=0", "floor=none") else f", {floor.replace('=', ' ')}")
        rows += [(f"{label}, step {step}", images) for step, images in zip(data[f"{key}/steps"], data[f"{key}/images"],
                                                                            strict=True)]  # fmt: skip
    k = len(targets)
    height, width = targets.shape[-2:]
    strip_width = 0.75 * k * width / height  # inches per row of images
    fig, axes = plt.subplots(len(rows), 1, figsize=(strip_width + 2.2, 0.78 * len(rows) + 0.45), squeeze=False)
    for ax, (title, images) in zip(axes[:, 0], rows, strict=True):
        strip = np.concatenate(list(images), axis=-1)  # H x (K W) grey, or 3 x H x (K W) RGB
        ax.imshow(strip if strip.ndim == 2 else strip.transpose(1, 2, 0), cmap="gray", vmin=0, vmax=255)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(title, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(f"{keys[0].split('/')[0] if keys else ''}: reconstructions (z = mu) during training", fontsize=9)
    fig.subplots_adjust(left=2.1 / (strip_width + 2.2), right=0.99, top=1 - 0.45 / (0.78 * len(rows) + 0.45),
                        bottom=0.01, hspace=0.08)  # fmt: skip
    fig.savefig(out / "snapshots.png", dpi=100)
    plt.close(fig)
    return out / "snapshots.png"


def quick_look(out: Path, model: str = "mnist") -> Path:
    """A quick-look PNG of ``curves.csv``: held-out pixel MSE against the step and, for MNIST, the grey level
    of the reconstructed background (faces have no black background to measure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.read_csv(out / "curves.csv")
    panels = 2 if model == "mnist" else 1
    fig, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 3.2), squeeze=False)
    axes = axes[0]
    for (loss, impl, floor), g in df.groupby(["loss", "implementation", "luminance_floor"], sort=False, dropna=False):
        label = f"{loss}, {impl}" + ("" if impl == "original" or math.isnan(floor) else f", floor {floor:g}")
        style = "k--" if impl == "original" else "-"
        axes[0].plot(g.step, g.test_pixel_mse, style, label=label)
        if panels == 2:
            axes[1].plot(g.step, g.background, style, label=label)
    axes[0].set(xlabel="training step", ylabel="held-out pixel MSE")
    if panels == 2:
        axes[1].set(xlabel="training step", ylabel="mean output where the target is black")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)
    return out / "curves.png"


def phase_weights_off(metric: torch.nn.Module) -> None:
    """Zero Watson-DFT's phase weights (w_phase = exp(w_phase_tild) = 0): its amplitude term alone."""
    if not hasattr(metric, "w_phase_tild"):
        raise SystemExit(f"--phase off: {type(metric).__name__} has no phase term (only watson-dft has)")
    with torch.no_grad():
        metric.w_phase_tild.fill_(-math.inf)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    from percept.guard import add_debug_flag

    add_debug_flag(p)
    p.add_argument("--model", choices=sorted(MODELS), default="mnist",
                   help="the paper's MNIST VAE (grey digits) or CelebA VAE (RGB faces; use --batch-size 64)")
    p.add_argument("--losses", default="watson-dft,watson-dct")
    p.add_argument("--floors", default="0,1e-4,1e-3,0.00392156862745098",
                   help="luminance_floor values (0: the original formula; 1/255: percept's former default)")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--test", type=int, default=1000, help="held-out test digits")
    p.add_argument("--hidden-dim", type=int, default=1024, help="the VAE's hidden layer (the paper's 1024)")
    p.add_argument("--original", help="the original repository's src/loss folder: adds its loss as a reference row")
    p.add_argument("--phase", default="on",
                   help="Watson-DFT's phase term in percept's runs: 'on' (the paper), 'off' (phase weights 0: the "
                        "amplitude term alone, implementation 'percept-no-phase') or 'on,off'")
    p.add_argument("--snapshots", type=int, default=0,
                   help="keep the reconstructions of the first K test digits at every evaluation (snapshots.npz/png)")
    p.add_argument("--out", default=str(ROOT / "results" / "luminance_floor"))
    p.add_argument("--quick", action="store_true", help="a few steps on a few digits (tests)")
    args = p.parse_args(argv)
    if not set(args.phase.split(",")) <= {"on", "off"}:
        p.error(f"--phase: use 'on', 'off' or 'on,off', not {args.phase!r}")
    if args.quick:
        args.steps, args.eval_every, args.test, args.floors = 4, 2, 64, "0,0.00392156862745098"
        args.hidden_dim = 32
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    load, colorspace, original_colorspace, image_shape = MODELS[args.model]
    train_set, test_set = load("train"), load("test")
    train = train_set.images(range(min(len(train_set), 4096))) if args.quick else train_set.images()
    test = test_set.images(range(min(len(test_set), args.test))).to(args.device)
    write_json(out / "machine.json", {**machine_info(args.device), "data_source": train_set.info["data_source"],
                                      "test_source": test_set.info["data_source"], "args": vars(args)})
    floors = [float(f) for f in args.floors.split(",")]
    snapshots = {}
    with open(out / "curves.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        for name in args.losses.split(","):
            # the paper's lambda for the model; k = 0 (lambda 1) for a loss outside its VAE set (Watson-DCT)
            k = None if name in K_EXPONENTS[args.model]["head"] else 0.0
            weighting = loss_weighting(args.model, name, image_shape=image_shape, k=k)
            print(weighting.describe(), flush=True)
            runs, has_floor = [], False
            for floor in floors:
                for phase in args.phase.split(","):
                    metric = build_metric(name, colorspace=colorspace, image_shape=image_shape, deterministic=False,
                                          device=args.device)
                    has_floor = hasattr(metric, "luminance_floor")
                    if has_floor:
                        metric.luminance_floor = floor
                    elif floor != floors[0]:
                        continue  # one run per phase: the loss has no floor
                    if phase == "off":
                        phase_weights_off(metric)

                    def loss_fn(recon, x, metric=metric, weighting=weighting):
                        return weighting.term(metric(recon, x), n_global=len(x))

                    implementation = "percept" if phase == "on" else "percept-no-phase"
                    runs.append(({"implementation": implementation, "luminance_floor": floor if has_floor else None},
                                 loss_fn))  # fmt: skip
            if args.original:
                original = original_loss(args.original, name, args.device, original_colorspace)

                def original_fn(recon, x, original=original, lam=weighting.lam):
                    return lam * original(recon, x)  # already in the original's units

                # the original has no floor: labelled 0 where percept's metric has one, empty otherwise; runs first
                runs.insert(0, ({"implementation": "original", "luminance_floor": 0.0 if has_floor else None},
                                original_fn))  # fmt: skip
            for label, loss_fn in runs:
                label = {"loss": name, **label}
                print(f"{label} ...", flush=True)
                snapshots[run_key(label)] = train_run(loss_fn, train, test, args, label, writer, handle)
                if args.snapshots:
                    save_snapshots(out, snapshots, test)  # after every run: a stopped job keeps what finished
    print(f"wrote {out / 'curves.csv'} and {quick_look(out, args.model)}")
    return 0


if __name__ == "__main__":
    from percept.guard import driver_main

    sys.exit(driver_main(main, prog="experiments/luminance_floor/run.py"))
