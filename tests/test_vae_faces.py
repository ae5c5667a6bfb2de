"""experiments/vae_celeba/faces.py: a face detector's count on the CelebA VAE's reconstructions."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from scripts import load_script

from percept.models import build_vae

N = 48  # held-out faces the tests use


@pytest.fixture(scope="module")
def faces():
    return load_script("experiments/vae_celeba/faces.py", "vae_faces")


@pytest.fixture(scope="module")
def originals(faces):
    images, source = faces.held_out_images(N)
    assert images.shape == (N, 3, 64, 64) and images.dtype == np.uint8 and "CelebA" in source
    return images


def test_cv2_is_installed():
    import cv2

    assert cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_alt2.xml").empty() is False


def test_detector_finds_real_faces_and_not_flat_or_striped_images(faces, originals):
    detector = faces.FaceDetector()
    assert detector.count(originals) >= 0.85 * N  # real 64x64 crops
    grey = np.full((4, 3, 64, 64), 128, np.uint8)
    assert detector.count(grey) == 0
    stripes = np.broadcast_to(((np.add.outer(np.arange(64), np.arange(64)) // 3) % 2 * 255).astype(np.uint8),
                              (4, 3, 64, 64))  # fmt: skip
    assert detector.count(np.ascontiguousarray(stripes)) == 0
    # faces as a decoder's (N, 3, H, W) output, not (H, W, 3): a transposed read would not find them
    assert detector.count(np.ascontiguousarray(originals[:16].transpose(0, 1, 3, 2))) < detector.count(originals[:16])
    with pytest.raises(ValueError, match=r"\(3, H, W\) uint8"):
        detector.found(originals[0].transpose(1, 2, 0))
    with pytest.raises(ValueError, match="uint8"):
        detector.found(originals[0].astype(np.float32))


def test_identification(faces, originals):
    """Its own source is the nearest original for a blurred or slightly noisy copy, not for another face or
    the average face; reconstructions in another order are matched to where they really come from."""
    detector = faces.FaceDetector()
    sources = np.arange(N)
    assert faces.identified(detector.blurred(originals, 1.5), originals, sources).mean() > 0.9
    noise = np.random.default_rng(0).normal(0, 12, originals.shape)
    noisy = np.clip(originals + noise, 0, 255).astype(np.uint8)
    assert faces.identified(noisy, originals, sources).all()
    shuffled = np.roll(originals, 1, axis=0)
    assert not faces.identified(shuffled, originals, sources).any()
    assert faces.identified(shuffled, originals, np.roll(sources, 1)).all()
    mean = np.broadcast_to(originals.mean(0).round().astype(np.uint8), originals.shape)
    assert faces.identified(np.ascontiguousarray(mean), originals, sources).sum() <= 1
    # faces flipped upside down keep their colours and background but lose their layout: rarely their own
    flipped = np.ascontiguousarray(originals[:, :, ::-1, :])
    assert faces.identified(flipped, originals, sources).mean() < 0.5
    assert faces.positions_in(originals[[5, 2]], originals).tolist() == [5, 2]
    assert faces.positions_in(np.zeros((1, 3, 64, 64), np.uint8), originals) is None


def test_appear_epoch(faces):
    assert faces.appear_epoch([1, 2, 3], [7, 7, 7], 7) == 1
    assert faces.appear_epoch([1, 2, 3, 4, 5], [0, 7, 6, 7, 8], 7) == 4  # a later dip restarts it
    assert faces.appear_epoch([1, 2], [7, 6], 7) is None


def test_main_counts_snapshots_and_held_out_reconstructions(faces, originals, tmp_path, capsys):
    """Epoch 1 draws grey, epoch 2 the faces themselves: the faces appear at epoch 2. A small checkpoint
    (hidden 16, untrained) stands for --held-out's best_model.pt."""
    run = tmp_path / "runs" / "l2"
    (run / "checkpoints").mkdir(parents=True)
    snap = originals[:8]
    recon = np.stack([np.full_like(snap, 128), snap])
    np.savez(run / "snapshots.npz", test_ids=np.arange(8), images=snap, epochs=np.array([1, 2]), reconstructions=recon)
    (run / "history.csv").write_text("epoch,test_pixel_mse\n1,0.1\n2,0.05\n")
    other = tmp_path / "runs" / "deeploss_vs_original"  # not a VAE run: its snapshots have other arrays
    other.mkdir()
    np.savez(other / "snapshots.npz", targets=snap)
    torch.manual_seed(0)
    model = build_vae("celeba-vae", latent_dim=4, hidden_dim=16)
    meta = {"model": "celeba-vae", "model_config": {"latent_dim": 4, "hidden_dim": 16}}
    torch.save({"meta": meta, "epoch": 5, "model": model.state_dict()}, run / "checkpoints" / "best_model.pt")
    out = tmp_path / "faces"
    argv = ["--runs", str(tmp_path / "runs"), "--out", str(out), "--limit", str(N)]
    assert faces.main([*argv, "--held-out"]) == 0
    detector = faces.FaceDetector()
    with open(out / "faces.csv") as f:
        rows = list(csv.DictReader(f))
    found = detector.count(snap)
    assert [(r["loss"], r["epoch"], r["faces_found"], r["of"]) for r in rows] == [
        ("l2", "1", "0", "8"), ("l2", "2", str(found), "8")]  # fmt: skip
    assert int(rows[0]["identified"]) <= 1 and rows[1]["identified"] == "8"  # grey: one face at most; itself: all
    report = json.loads((out / "faces.json").read_text())
    assert report["faces_appear_epoch"] == {"l2": 2}
    refs = report["references"]
    assert refs["snapshot_originals"] == found and refs["held_out_faces"] == N
    assert refs["held_out_rate"] == detector.count(originals) / N
    assert refs["held_out_blurred_rate"] <= refs["held_out_rate"]
    with open(out / "faces_held_out.csv") as f:
        held = list(csv.DictReader(f))
    assert [(r["loss"], r["epoch"], r["of"]) for r in held] == [("l2", "5", str(N))]
    assert int(held[0]["faces_found"]) < 0.5 * N  # an untrained decoder draws no faces
    assert int(held[0]["identified"]) <= 2  # ... and nobody in particular
    # a second call at a new epoch adds a row; the same epoch again replaces its row
    torch.save({"meta": meta, "epoch": 6, "model": model.state_dict()}, run / "checkpoints" / "best_model.pt")
    assert faces.main([*argv, "--held-out", "--losses", "ssim"]) == 0  # not this loss: no new row
    with open(out / "faces_held_out.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["5"]
    assert faces.main([*argv, "--held-out"]) == 0
    assert faces.main([*argv, "--held-out", "--losses", "l2"]) == 0
    with open(out / "faces_held_out.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["5", "6"]
    # --checkpoint last: an end-of-epoch last.pt is counted; one written inside an epoch is refused
    last = run / "checkpoints" / "last.pt"
    torch.save({"meta": meta, "epoch": 7, "step_in_epoch": 3, "model": model.state_dict()}, last)
    assert faces.main([*argv, "--held-out", "--checkpoint", "last"]) == 0
    assert "written inside epoch 8" in capsys.readouterr().out
    torch.save({"meta": meta, "epoch": 7, "step_in_epoch": 0, "model": model.state_dict()}, last)
    assert faces.main([*argv, "--held-out", "--checkpoint", "last"]) == 0
    with open(out / "faces_held_out.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["5", "6", "7"]
    assert (out / "faces.png").stat().st_size > 0


def test_no_runs_is_a_clear_error(faces, tmp_path):
    with pytest.raises(SystemExit, match="no <loss>/snapshots.npz"):
        faces.main(["--runs", str(tmp_path), "--limit", "4"])
