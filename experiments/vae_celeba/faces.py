"""When do faces appear in the CelebA VAE's reconstructions? A face detector's count, epoch by epoch.

Every CelebA run (``experiments/vae_celeba/run.py``) saves, after each epoch, the reconstructions (z = mu) of 8
fixed held-out faces in ``<loss>/snapshots.npz``. This script runs OpenCV's frontal-face Haar cascade on them
and reports, per loss and epoch, in how many of the 8 it finds a face, and the first epoch from which the count
stays at least the count on the 8 original faces: that is the measured "faces appear" epoch.

The detector answers "is there a face-shaped pattern of eyes, nose and mouth here?", not "is it this person's
face?": a stripe texture makes it fail, a strong blur lowers its rate a little, and the average face passes.
The references it is read against are written next to the counts:

- the 8 original faces, and all held-out originals (the detector's own rate on real 64x64 crops);
- the held-out originals under a strong Gaussian blur (sigma 3 px): blur alone lowers the rate;
- the average held-out face.

A second count asks "is it this person's face?": a reconstruction is identified when, among all held-out
originals compared at 16x16, the nearest one is its own source. Chance is 1 in 1,000; a decoder that draws
the same generic face for every input passes the detector but not this.

With ``--held-out`` it also reconstructs every held-out face with each loss's ``checkpoints/best_model.pt``
(``--checkpoint last``: ``last.pt``, if it was written at the end of an epoch), when that local, uncommitted
file exists, and counts on all of them: a larger sample, at that checkpoint's epoch. Those rows accumulate in
``faces_held_out.csv`` across calls, so running it at the end of every epoch gives a curve over epochs::

    python experiments/vae_celeba/faces.py                 # reads results/vae_celeba/*/snapshots.npz
    python experiments/vae_celeba/faces.py --held-out      # + every held-out face, from the checkpoints

Writes ``<runs>/faces/faces.csv`` (loss, epoch, faces found and identified, of 8), ``faces_held_out.csv``
(with --held-out),
``faces.json`` (references, "faces appear" epochs, detector settings, machine) and ``faces.png``.
Needs ``opencv-python-headless`` (in requirements.txt), whose wheel ships the cascade files.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
import torch

from percept.data.celeba import load_celeba
from percept.vae.checkpoint import model_from_state
from percept.vae.outputs import reconstruct, to_uint8

ROOT = Path(__file__).resolve().parents[2]
CASCADE = "haarcascade_frontalface_alt2.xml"
#: the detector's settings: images are upscaled x2 and given a replicated 16 px border (a 64x64 crop is tight
#: around the face, and the cascade needs some margin), then searched for faces at least 48 px wide
SCALE, BORDER, MIN_SIZE, SCALE_FACTOR, MIN_NEIGHBOURS = 2, 16, 48, 1.05, 3
BLUR_SIGMA = 3.0
IDENTIFY_POOL = 4  # identification compares 64x64 faces as 16x16 area means


def _cv2():
    try:
        import cv2
    except ImportError as err:
        raise SystemExit(f"faces.py needs OpenCV: pip install opencv-python-headless ({err})") from None
    return cv2


class FaceDetector:
    """OpenCV's Haar frontal-face cascade on (3, H, W) uint8 RGB images."""

    def __init__(self, cascade: str = CASCADE) -> None:
        cv2 = _cv2()
        cv2.setNumThreads(1)
        path = Path(cv2.data.haarcascades) / cascade
        self.classifier = cv2.CascadeClassifier(str(path))
        if self.classifier.empty():
            raise SystemExit(f"OpenCV could not load its face cascade {path}")
        self.cv2 = cv2

    def found(self, image: np.ndarray) -> bool:
        """Whether the cascade finds a face in one (3, H, W) uint8 RGB image."""
        if image.ndim != 3 or image.shape[0] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected a (3, H, W) uint8 RGB image, got {image.shape} {image.dtype}")
        cv2 = self.cv2
        grey = cv2.cvtColor(np.ascontiguousarray(image.transpose(1, 2, 0)), cv2.COLOR_RGB2GRAY)
        grey = cv2.resize(grey, None, fx=SCALE, fy=SCALE, interpolation=cv2.INTER_LINEAR)
        grey = cv2.copyMakeBorder(grey, BORDER, BORDER, BORDER, BORDER, cv2.BORDER_REPLICATE)
        faces = self.classifier.detectMultiScale(
            grey, scaleFactor=SCALE_FACTOR, minNeighbors=MIN_NEIGHBOURS, minSize=(MIN_SIZE, MIN_SIZE)
        )
        return len(faces) > 0

    def count(self, images: np.ndarray) -> int:
        """In how many of (N, 3, H, W) uint8 images a face is found."""
        return sum(self.found(x) for x in images)

    def blurred(self, images: np.ndarray, sigma: float = BLUR_SIGMA) -> np.ndarray:
        """(N, 3, H, W) uint8 images under a Gaussian blur of ``sigma`` pixels."""
        out = [self.cv2.GaussianBlur(np.ascontiguousarray(x.transpose(1, 2, 0)), (0, 0), sigma) for x in images]
        return np.stack(out).transpose(0, 3, 1, 2)


def identified(recon: np.ndarray, originals: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """Per reconstruction, whether its nearest held-out original is its own source (``sources``: positions in
    ``originals``), both compared at 16x16 (4x4 area means, RGB): coarse enough that blur and fine textures do
    not matter, fine enough to tell faces apart by shape, hair, skin and background. A decoder that draws one
    face for every input scores at chance, 1 / len(originals)."""

    def small(x: np.ndarray) -> torch.Tensor:
        return torch.nn.functional.avg_pool2d(torch.as_tensor(x).double() / 255, IDENTIFY_POOL).flatten(1)

    nearest = torch.cdist(small(recon), small(originals)).argmin(dim=1).numpy()
    return nearest == np.asarray(sources)


def positions_in(images: np.ndarray, originals: np.ndarray) -> np.ndarray | None:
    """Where each of ``images`` stands in ``originals`` (equal pixels), or None if one is not there."""
    index = {x.tobytes(): i for i, x in enumerate(originals)}
    found = [index.get(x.tobytes()) for x in images]
    return None if any(i is None for i in found) else np.asarray(found)


def appear_epoch(epochs: list[int], counts: list[int], target: int) -> int | None:
    """The first epoch from which every count is at least ``target`` (None if the last one is below it)."""
    first = None
    for epoch, n in zip(epochs, counts, strict=True):
        if n >= target:
            first = epoch if first is None else first
        else:
            first = None
    return first


def held_out_images(limit: int | None = None) -> tuple[np.ndarray, str]:
    """The held-out faces (the first ``limit``, or all) as (N, 3, 64, 64) uint8, and where they come from."""
    test = load_celeba("test")
    images = test.images(list(range(min(len(test), limit or len(test)))))
    return to_uint8(images), test.info["data_source"]


def load_checkpoint_model(path: Path):
    """The VAE in a ``best_model.pt`` or end-of-epoch ``last.pt``, and its epoch; None (with the reason) for a
    ``last.pt`` written inside an epoch, whose weights belong to no finished epoch."""
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if int(state.get("step_in_epoch", 0)):
        return None, f"{path} was written inside epoch {int(state['epoch']) + 1}; count again at an epoch's end"
    return (model_from_state(state), int(state["epoch"])), ""


def draw(path: Path, rows: list[dict], held: list[dict], refs: dict, appear: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = sorted({r["loss"] for r in rows + held})
    colour = {loss: f"C{i}" for i, loss in enumerate(losses)}  # the same colour for a loss in both panels
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    ax = axes[0]
    for loss in dict.fromkeys(r["loss"] for r in rows):
        points = [(r["epoch"], r["faces_found"]) for r in rows if r["loss"] == loss]
        label = loss + (f" (faces from epoch {appear[loss]})" if appear.get(loss) else " (not yet)")
        ax.plot(*zip(*points, strict=True), marker="o", color=colour[loss], label=label)
    n = refs["snapshot_faces"]
    ax.axhline(refs["snapshot_originals"], color="k", lw=0.8, ls="--", label=f"the {n} originals")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"faces found (of {n} reconstructions)")
    ax.set_ylim(-0.3, n + 0.3)
    ax.set_title(f"a face: the {n} snapshot faces, every epoch", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax = axes[1]
    for loss in dict.fromkeys(r["loss"] for r in held):
        points = [(r["epoch"], 100 * r["faces_found"] / r["of"]) for r in held if r["loss"] == loss]
        ax.plot(*zip(*points, strict=True), marker="s", color=colour[loss], label=loss)
    ax.axhline(100 * refs["held_out_rate"], color="k", lw=0.8, ls="--", label="the originals")
    ax.axhline(100 * refs["held_out_blurred_rate"], color="grey", lw=0.8, ls=":",
               label=f"the originals blurred (sigma {BLUR_SIGMA:g} px)")  # fmt: skip
    ax.set_xlabel("epoch (of the checkpoint)")
    ax.set_ylabel(f"faces found (% of {refs['held_out_faces']:,} held-out)")
    ax.set_ylim(0, 102)
    ax.set_title("a face: every held-out face (--held-out)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax = axes[2]
    for loss in dict.fromkeys(r["loss"] for r in held):
        points = [
            (r["epoch"], 100 * r["identified"] / r["of"]) for r in held if r["loss"] == loss and r["identified"] != ""
        ]
        if points:
            ax.plot(*zip(*points, strict=True), marker="^", color=colour[loss], label=loss)
    ax.axhline(100 * refs["identified_by_chance"], color="k", lw=0.8, ls=":", label="by chance")
    ax.set_xlabel("epoch (of the checkpoint)")
    ax.set_ylabel("nearest original is its own (%)")
    ax.set_ylim(0, 102)
    ax.set_title(f"this person's face: identified among the {refs['held_out_faces']:,} (16x16)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.suptitle("Do the VAE's reconstructions show faces? (REDUCED CelebA)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def read_rows(path: Path) -> list[dict]:
    """The rows of an earlier faces_held_out.csv (integers as int), or none."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = [{k: (v if k == "loss" or v in ("", None) else int(v)) for k, v in r.items()} for r in csv.DictReader(f)]
    for r in rows:  # rows written before the identification column: not counted then
        r["identified"] = r.get("identified") if r.get("identified") is not None else ""
    return [{k: r[k] for k in ("loss", "epoch", "faces_found", "identified", "of")} for r in rows]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from percept.guard import add_debug_flag

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_debug_flag(p)
    p.add_argument("--runs", default=str(ROOT / "results" / "vae_celeba"), help="folder of the per-loss runs")
    p.add_argument("--out", default=None, help="output folder (default: <runs>/faces)")
    p.add_argument("--held-out", action="store_true", help="also count on every held-out face, from checkpoints")
    p.add_argument(
        "--checkpoint",
        choices=("best", "last"),
        default="best",
        help="--held-out from best_model.pt (lowest test loss) or last.pt (the latest finished epoch)",
    )
    p.add_argument("--losses", default=None, help="--held-out only for these losses (comma-separated; default all)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N held-out faces (tests)")
    args = p.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    from percept.guard import atomic_output
    from percept.runinfo import machine_info, write_json

    args = parse_args(argv)
    runs = Path(args.runs)
    out = Path(args.out) if args.out else runs / "faces"
    # a VAE run's folder (history.csv beside it); other folders, e.g. a side-by-side comparison's, are not runs
    snapshots = sorted(p for p in runs.glob("*/snapshots.npz") if (p.parent / "history.csv").is_file())
    if not snapshots:
        raise SystemExit(f"no <loss>/snapshots.npz (with history.csv) under {runs}: train with "
                         "experiments/vae_celeba/run.py first")
    detector = FaceDetector()
    originals, data_source = held_out_images(args.limit)
    models = {}  # loaded first: a last.pt is overwritten by the next in-epoch checkpoint a minute or two later
    for path in snapshots if args.held_out else []:
        loss = path.parent.name
        checkpoint = path.parent / "checkpoints" / ("last.pt" if args.checkpoint == "last" else "best_model.pt")
        if (args.losses is None or loss in args.losses.split(",")) and checkpoint.is_file():
            loaded, why = load_checkpoint_model(checkpoint)
            if loaded is None:
                print(f"{loss}: {why}", flush=True)
            else:
                models[loss] = loaded
    mean_face = originals.astype(np.float64).mean(0).round().astype(np.uint8)
    refs = {
        "held_out_faces": len(originals),
        "held_out_rate": detector.count(originals) / len(originals),
        "held_out_blurred_rate": detector.count(detector.blurred(originals)) / len(originals),
        "mean_face_found": detector.found(mean_face),
        "identified_by_chance": 1 / len(originals),
    }
    out.mkdir(parents=True, exist_ok=True)
    rows, appear, held = [], {}, read_rows(out / "faces_held_out.csv")
    for path in snapshots:
        loss = path.parent.name
        with np.load(path) as z:
            epochs, recon, images = z["epochs"].tolist(), z["reconstructions"], z["images"]
        target = detector.count(images)
        refs.setdefault("snapshot_faces", len(images))
        refs.setdefault("snapshot_originals", target)
        counts = [detector.count(r) for r in recon]
        sources = positions_in(images, originals)  # None when --limit left a snapshot face out
        ids = [int(identified(r, originals, sources).sum()) if sources is not None else "" for r in recon]
        rows += [
            {"loss": loss, "epoch": e, "faces_found": n, "identified": i, "of": len(images)}
            for e, n, i in zip(epochs, counts, ids, strict=True)
        ]
        appear[loss] = appear_epoch(epochs, counts, target)
        print(f"{loss}: faces found per epoch {counts} (originals: {target} of {len(images)}); "
              f"faces appear at epoch {appear[loss]}", flush=True)  # fmt: skip
        if loss in models:
            model, epoch = models.pop(loss)
            recon_all = to_uint8(reconstruct(model, torch.as_tensor(originals).float() / 255, batch_size=100))
            held = [r for r in held if (r["loss"], r["epoch"]) != (loss, epoch)]  # a rerun replaces its row
            own = int(identified(recon_all, originals, np.arange(len(originals))).sum())
            row = {"loss": loss, "epoch": epoch, "faces_found": detector.count(recon_all), "identified": own}
            held.append(row | {"of": len(originals)})
            print(f"{loss}: held-out reconstructions at epoch {epoch}: a face in {row['faces_found']}, identified "
                  f"{own} of {len(originals)}")  # fmt: skip
    held.sort(key=lambda r: (r["loss"], r["epoch"]))
    for name, table in (("faces.csv", rows), ("faces_held_out.csv", held)):
        if table:  # atomic: the held-out rows of earlier epochs cannot be counted again once training moved on
            with atomic_output(out / name, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(table[0]))
                writer.writeheader()
                writer.writerows(table)
    settings = {"cascade": CASCADE, "upscale": SCALE, "border_px": BORDER, "min_size_px": MIN_SIZE,
                "scale_factor": SCALE_FACTOR, "min_neighbours": MIN_NEIGHBOURS, "blur_sigma_px": BLUR_SIGMA,
                "opencv": detector.cv2.__version__}  # fmt: skip
    write_json(out / "faces.json", {**machine_info("cpu"), "data_source": data_source, "references": refs,
                                    "faces_appear_epoch": appear, "detector": settings, "args": vars(args)})  # fmt: skip
    draw(out / "faces.png", rows, held, refs, appear)
    print(f"references: {refs}\nwrote {out / 'faces.csv'}, {out / 'faces.json'} and {out / 'faces.png'}")
    return 0


if __name__ == "__main__":
    from percept.guard import driver_main

    sys.exit(driver_main(main, prog="experiments/vae_celeba/faces.py"))
