"""percept.data.bapps on BAPPS-format folders built here (SYNTHETIC: no BAPPS with human judgements offline).

The folders hold real 64x64 patches (the LPIPS example patches and crops of the E-LPIPS photographs from
the asset folder), stored as BAPPS stores them (nearest-neighbour upscaled to 256x256), with judge / same
values chosen by hand.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from percept.data import DatasetError, bapps


@pytest.fixture(scope="module")
def patches(assets_dir) -> torch.Tensor:
    """(6, 3, 64, 64) real patches in [0, 1], quantised to 8 bits."""
    ex = assets_dir / "data" / "images" / "lpips_examples"
    out = [bapps.load_patch(ex / f"ex_{k}.png", mode="none") for k in ("ref", "p0", "p1")]
    for name in ("cat", "dog", "adv_teddy"):
        with Image.open(assets_dir / "data" / "images" / "elpips" / f"{name}.png") as im:
            x = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).float() / 255
        out.append(x[:, 100:164, 150:214])
    return torch.stack(out)


def test_layout_roundtrip_sorted_order_and_labels(tmp_path, patches):
    judge = [0.0, 0.2, 0.4, 0.6, 1.0]
    folder = tmp_path / "2afc" / "val" / "cnn"
    bapps.write_2afc_subset(folder, patches[:5], patches[1:6], patches.flip(0)[:5], judge)
    assert sorted(p.name for p in (folder / "ref").iterdir())[0] == "000000.png"
    with Image.open(folder / "ref" / "000000.png") as im:
        assert im.size == (256, 256)  # stored as BAPPS stores its patches
    data = bapps.TwoAFCDataset(tmp_path, "val", "cnn", resize="bilinear-noaa")
    assert len(data) == 5 and not data.synthetic
    for i in range(5):
        item = data[i]
        assert item["index"] == i
        assert item["judge"].item() == pytest.approx(judge[i], abs=1e-7)
        # the non-antialiased bilinear resize recovers the 64x64 content of a nearest-upscaled patch exactly
        torch.testing.assert_close(item["ref"], patches[i], atol=1e-6, rtol=0)
        torch.testing.assert_close(item["p0"], patches[i + 1], atol=1e-6, rtol=0)
    np.testing.assert_allclose(data.labels(), judge, atol=1e-7)
    assert len(bapps.TwoAFCDataset(tmp_path, "val", "cnn", limit=3)) == 3


def test_pil_bilinear_is_torchvision_resize_on_pil(tmp_path, patches):
    """The default resize equals the reference loader's transforms.Resize(64) on a PIL image (antialiased)."""
    from torchvision import transforms

    bapps.write_2afc_subset(tmp_path / "2afc" / "val" / "color", patches[:2], patches[2:4], patches[4:6], [0.5, 0.5])
    data = bapps.TwoAFCDataset(tmp_path, "val", "color")
    path = data.files["p1"][1]
    with Image.open(path) as im:
        ref = transforms.ToTensor()(transforms.Resize(64)(im.convert("RGB")))
    torch.testing.assert_close(data[1]["p1"], ref, atol=0, rtol=0)
    # antialiasing blends neighbouring 4x4 blocks: not the stored 64x64 content
    assert (data[1]["p1"] - patches[5]).abs().max() > 0.02
    # a 252x252 file (BAPPS has a few) also comes out 64x64
    odd = tmp_path / "odd.png"
    Image.fromarray(np.zeros((252, 252, 3), np.uint8)).save(odd)
    assert bapps.load_patch(odd).shape == (3, 64, 64)


def test_jnd_layout(tmp_path, patches):
    bapps.write_jnd_subset(tmp_path / "jnd" / "val" / "traditional", patches[:3], patches[3:6], [1.0, 1 / 3, 0.0])
    data = bapps.JNDDataset(tmp_path, "traditional", resize="bilinear-noaa")
    assert len(data) == 3
    item = data[1]
    assert set(item) == {"p0", "p1", "same", "index"}
    assert item["same"].item() == pytest.approx(1 / 3, abs=1e-7)
    torch.testing.assert_close(item["p1"], patches[4], atol=1e-6, rtol=0)


def test_loader_streams_batches_in_sorted_order(tmp_path, patches):
    bapps.write_2afc_subset(
        tmp_path / "2afc" / "val" / "deblur", patches, patches, patches, [0.1 * i for i in range(6)]
    )
    loader = bapps.make_loader(bapps.TwoAFCDataset(tmp_path, "val", "deblur"), batch_size=4)
    batches = list(loader)
    assert [b["ref"].shape for b in batches] == [(4, 3, 64, 64), (2, 3, 64, 64)]
    assert torch.cat([b["index"] for b in batches]).tolist() == list(range(6))
    assert batches[0]["judge"].dtype == torch.float32


def test_dataset_root_may_hold_a_dataset_folder(tmp_path, patches):
    bapps.write_2afc_subset(tmp_path / "dataset" / "2afc" / "val" / "cnn", patches[:1], patches[:1], patches[:1], [0.5])
    assert len(bapps.TwoAFCDataset(tmp_path, "val", "cnn")) == 1


def test_broken_folders_raise_clear_errors(tmp_path, patches):
    with pytest.raises(DatasetError, match="make data-bapps"):
        bapps.TwoAFCDataset(tmp_path, "val", "traditional")
    folder = bapps.write_2afc_subset(
        tmp_path / "2afc" / "val" / "traditional", patches[:2], patches[:2], patches[:2], [0.5, 0.5]
    )
    (folder / "judge" / "000001.npy").unlink()
    with pytest.raises(DatasetError, match="different numbers"):
        bapps.TwoAFCDataset(tmp_path, "val", "traditional")
    np.save(folder / "judge" / "000009.npy", np.array([0.5]))
    with pytest.raises(DatasetError, match="different names"):
        bapps.TwoAFCDataset(tmp_path, "val", "traditional")
    (folder / "judge" / "000009.npy").unlink()
    np.save(folder / "judge" / "000001.npy", np.array([1.5]))
    with pytest.raises(DatasetError, match="fraction"):
        bapps.TwoAFCDataset(tmp_path, "val", "traditional")[1]
    with pytest.raises(ValueError, match="resize"):
        bapps.TwoAFCDataset(tmp_path, "val", "traditional", resize="bicubic")


def test_synthetic_folders_are_marked(tmp_path):
    root = bapps.make_synthetic_bapps(
        tmp_path / "syn",
        n_val=2,
        n_train=2,
        n_jnd=2,
        val_subsets=("cnn",),
        train_subsets=("mix",),
        jnd_subsets=("cnn",),
    )
    assert bapps.is_synthetic(root)
    assert "NOT BAPPS" in (root / bapps.SYNTHETIC_MARKER).read_text()
    data = bapps.TwoAFCDataset(root, "val", "cnn")
    assert data.synthetic and "SYNTHETIC" in repr(data)
    judges = data.labels()
    assert np.all(np.isin(np.round(judges * 5), np.arange(6)))  # fractions of 5 simulated judges
    assert len(bapps.twoafc_train_set(root, ("mix",))) == 2
    assert len(bapps.JNDDataset(root, "cnn")) == 2
    assert not bapps.is_synthetic(tmp_path)
