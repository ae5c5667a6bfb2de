"""The VAE models, the trainer (percept.vae) and the VAE experiment drivers.

Reference values: the parameter counts and lambda exponents of spec czolbe.md §11, torch's own
``nn.MSELoss(reduction='sum')`` (the original L2 loss), ``torch.distributions`` for the KL term, and
pytorch-msssim-style SSIM through the original's definition (1 - mean SSIM). Training tests use a
narrow MNIST VAE (``hidden_dim`` 16) on 64 real digits so that they take seconds.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scripts import load_script  # noqa: E402

import percept
from percept.data import ImageSet
from percept.data.mnist import load_mnist
from percept.guard import RunError
from percept.models import CelebaVAE, MnistVAE, build_vae, count_parameters
from percept.vae import (
    K_EXPONENTS,
    PAPER_LOSSES,
    CheckpointError,
    CheckpointMismatch,
    TrainConfig,
    build_metric,
    kl_divergence,
    load_checkpoint,
    load_model,
    loss_weighting,
    train_vae,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits() -> tuple[ImageSet, ImageSet]:
    """64 training and 32 test digits of the real MNIST test set (the offline 9,000 / 1,000 split)."""
    return load_mnist("train", recovered=False).subset(range(64)), load_mnist("test", recovered=False).subset(range(32))


def _tiny_config(**overrides) -> TrainConfig:
    base = dict(loss="l2", epochs=2, batch_size=16, lr=1e-3, lr_halflife=1.0, device="cpu", progress=False)
    base.update(overrides)
    return TrainConfig(**base)


def _tiny_model(seed: int = 0) -> MnistVAE:
    torch.manual_seed(seed)
    return MnistVAE(hidden_dim=16)


# --------------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------------


def test_parameter_counts_match_the_spec():
    with torch.device("meta"):  # no memory, no init time
        assert count_parameters(build_vae("mnist")) == 33_662_757
        assert count_parameters(build_vae("celeba")) == 136_348_547


def test_layer_shapes_follow_the_spec():
    m = MnistVAE(hidden_dim=16)
    x = torch.rand(3, 1, 32, 32)
    h = m.encoder[:3](x)  # conv, lrelu, maxpool
    assert h.shape == (3, 32, 16, 16)
    assert m.encoder[:5](x).shape == (3, 64, 16, 16)
    recon, mu, logvar = m(x)
    assert recon.shape == x.shape and mu.shape == logvar.shape == (3, 2)
    assert 0 <= recon.min() and recon.max() <= 1
    assert isinstance(m.decoder_conv2[-1], torch.nn.Sigmoid)

    c = CelebaVAE(hidden_dim=16)
    x = torch.rand(2, 3, 64, 64)
    assert c.encoder[:4](x).shape == (2, 64, 32, 32)
    assert c.encoder[:8](x).shape == (2, 128, 16, 16)
    recon, mu, logvar = c(x)
    assert recon.shape == x.shape and mu.shape == (2, 256)
    bn = [layer for layer in c.modules() if isinstance(layer, torch.nn.BatchNorm2d)]
    assert [b.num_features for b in bn] == [64, 128]  # none in the decoder (spec: dead code there)


def test_eval_mode_decodes_the_mean():
    m = MnistVAE(hidden_dim=16).eval()
    x = torch.rand(4, 1, 32, 32)
    recon, mu, _ = m(x)
    assert torch.equal(recon, m.decode(mu))
    m.train()
    torch.manual_seed(0)
    assert not torch.equal(m(x)[0], recon)


def test_build_vae_rejects_unknown_names():
    with pytest.raises(KeyError, match="mnist, celeba"):
        build_vae("cifar")


# --------------------------------------------------------------------------------------------------
# the loss: lambda, units, KL
# --------------------------------------------------------------------------------------------------


def test_lambda_exponents_are_the_specs():
    # spec §11.2 / §11.3, HEAD and paper versions
    assert K_EXPONENTS["mnist"]["head"] == {
        "ssim": 9, "watson-dft": 0, "deeploss-vgg": 9, "deeploss-squeeze": 9, "adaptive": 0,
    }  # fmt: skip
    assert K_EXPONENTS["mnist"]["paper"]["watson-dft"] == 1
    assert K_EXPONENTS["celeba"]["head"] == {
        "ssim": 13, "watson-dft": 0, "deeploss-vgg": 10, "deeploss-squeeze": 9, "adaptive": 3,
    }  # fmt: skip
    assert K_EXPONENTS["celeba"]["paper"] == {
        "ssim": 12, "watson-dft": 1, "deeploss-vgg": 10, "deeploss-squeeze": 9, "adaptive": 2,
    }  # fmt: skip
    w = loss_weighting("mnist", "Watson-fft", lambdas="paper", image_shape=(1, 32, 32))
    assert (w.loss, w.k, w.lam) == ("watson-dft", 1.0, math.e)
    assert loss_weighting("celeba", "ssim", image_shape=(3, 64, 64)).k == 13
    assert loss_weighting("celeba", "ssim", k=5.5, image_shape=(3, 64, 64)).source == "user"


def test_unknown_loss_lists_the_valid_names():
    with pytest.raises(KeyError) as err:
        loss_weighting("mnist", "watsn", image_shape=(1, 32, 32))
    for name in ("l2", "ssim", "watson-dft", "deeploss-vgg"):
        assert name in str(err.value)


def test_l2_term_equals_the_originals_mse_sum():
    """The original's L2 term: e^k * nn.MSELoss(reduction='sum')(recon, x)."""
    torch.manual_seed(1)
    x, r = torch.rand(5, 1, 32, 32), torch.rand(5, 1, 32, 32)
    w = loss_weighting("mnist", "l2", image_shape=(1, 32, 32))
    metric = build_metric("l2", colorspace="grey", image_shape=(1, 32, 32))
    ours = w.term(metric(r, x), n_global=5)
    reference = math.exp(w.k) * torch.nn.MSELoss(reduction="sum")(r, x)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=0)


def test_ssim_term_is_a_batch_mean_as_in_the_original():
    """The original's SSIM 'sum' was 1 - mean SSIM over the batch; the weighted term is e^9 times that."""
    pytest.importorskip("pytorch_msssim")
    from pytorch_msssim import ssim as reference_ssim

    torch.manual_seed(2)
    x = torch.rand(4, 1, 32, 32)
    r = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    w = loss_weighting("mnist", "ssim", image_shape=(1, 32, 32))
    assert w.batch_mean and w.k == 9
    per_image = build_metric("ssim", colorspace="grey", image_shape=(1, 32, 32), metric_style="library")(r, x)
    ours = w.term(per_image, n_global=4)
    # pytorch-msssim uses 'valid' windows, as the library style does
    reference = math.exp(9) * (1 - reference_ssim(r, x, data_range=1.0, size_average=True))
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=0)


def test_kl_matches_torch_distributions():
    torch.manual_seed(3)
    mu, logvar = torch.randn(6, 2), torch.randn(6, 2)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    torch.testing.assert_close(kl_divergence(mu, logvar), torch.distributions.kl_divergence(q, p).sum())


# --------------------------------------------------------------------------------------------------
# training, checkpoints, resume
# --------------------------------------------------------------------------------------------------


def _weights(model) -> dict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("loss", ["l2", "watson-dft"])
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, digits, loss):
    """2 epochs in one go == 1 epoch, stop, resume for the second (bit-identical on CPU).

    Watson-DFT trains with the random block shifts (deterministic=False), so the RNG states must be restored.
    """
    train, test = digits
    full = train_vae(_tiny_model(), train, test, _tiny_config(loss=loss, epochs=2), tmp_path / "full")
    first = train_vae(_tiny_model(), train, test, _tiny_config(loss=loss, epochs=1), tmp_path / "split")
    assert load_checkpoint(tmp_path / "split/checkpoints/last.pt")["epoch"] == 1
    del first
    # a fresh process would construct a fresh model: different initial weights must not matter
    resumed = train_vae(_tiny_model(seed=123), train, test, _tiny_config(loss=loss, epochs=2), tmp_path / "split",
                        resume=True)  # fmt: skip
    assert resumed.resumed_from_epoch == 1
    a, b = _weights(full.model), _weights(resumed.model)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # and the training curves agree too
    assert [r["train_loss"] for r in full.history] == [r["train_loss"] for r in resumed.history]


class _StopAfter(torch.utils.data.Dataset):
    """A dataset that raises KeyboardInterrupt at its ``limit``-th item: a run stopped in the middle of an epoch."""

    def __init__(self, dataset, limit: int):
        self.dataset, self.limit, self.served = dataset, limit, 0

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        self.served += 1
        if self.served > self.limit:
            raise KeyboardInterrupt
        return self.dataset[i]


@pytest.mark.parametrize("loss", ["l2", "watson-dft"])
def test_a_run_stopped_inside_an_epoch_resumes_at_its_last_step_checkpoint(tmp_path, digits, loss):
    """checkpoint_steps = 2: stopped during step 6 of epoch 2, resumed from the step-4 checkpoint, the run ends
    with the weights, history and RNG of an uninterrupted one (Watson-DFT: its random shifts too)."""
    train, test = digits
    cfg = dict(loss=loss, epochs=3, checkpoint_steps=2, batch_size=8)
    full = train_vae(_tiny_model(), train, test, _tiny_config(**cfg), tmp_path / "full")
    steps = len(train) // 8
    assert steps > 6
    stop_at = (steps + 5) * 8 + 3  # epoch 1 whole, 5 batches of epoch 2, then 3 images of the 6th
    with pytest.raises(KeyboardInterrupt):
        train_vae(_tiny_model(), _StopAfter(train, stop_at), test, _tiny_config(**cfg), tmp_path / "split")
    state = load_checkpoint(tmp_path / "split/checkpoints/last.pt")
    assert (state["epoch"], state["step_in_epoch"], len(state["history"])) == (1, 4, 1)
    with pytest.raises(RunError, match="inside epoch 2 with batch size 8; this run has 16"):
        train_vae(_tiny_model(), train, test, _tiny_config(**(cfg | {"batch_size": 16})), tmp_path / "split",
                  resume=True)  # fmt: skip
    resumed = train_vae(_tiny_model(seed=7), train, test, _tiny_config(**cfg), tmp_path / "split", resume=True)
    a, b = _weights(full.model), _weights(resumed.model)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    for row_full, row_resumed in zip(full.history, resumed.history, strict=True):
        for key in ("train_loss", "train_rec", "train_kl", "test_loss", "test_pixel_mse"):
            assert row_full[key] == row_resumed[key], key
    # the epoch-end checkpoint after a mid-epoch one is an ordinary one
    final = load_checkpoint(tmp_path / "split/checkpoints/last.pt")
    assert final["epoch"] == 3 and "step_in_epoch" not in final
    # every random stream ends where the uninterrupted run's did (the DataLoader's seeds its workers)
    reference = load_checkpoint(tmp_path / "full/checkpoints/last.pt")["rng"][0]
    for key in ("torch", "loader"):
        assert torch.equal(final["rng"][0][key], reference[key]), key


def test_checkpoint_contents_and_history(tmp_path, digits):
    train, test = digits
    result = train_vae(_tiny_model(), train, test, _tiny_config(epochs=1), tmp_path)
    state = load_checkpoint(result.checkpoint)
    for key in ("model", "optimizer", "scheduler", "epoch", "rng", "history", "meta"):
        assert key in state
    assert set(state["rng"][0]) >= {"torch", "numpy", "python", "loader"}
    meta = state["meta"]
    assert (meta["model"], meta["loss"], meta["k"], meta["seed"]) == ("mnist-vae", "l2", 0.0, 0)
    assert meta["factor"] == 1024  # l2: registry per-pixel mean -> the original's per-pixel sum
    assert (tmp_path / "checkpoints" / ".gitignore").read_text().strip().endswith("*")
    lines = (tmp_path / "history.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,lr,train_loss") and len(lines) == 2
    model = load_model(result.best_checkpoint)
    assert isinstance(model, MnistVAE) and model.hidden_dim == 16
    for k, v in _weights(result.model).items():
        assert torch.equal(model.state_dict()[k], v)


def test_resume_refuses_another_loss_or_model(tmp_path, digits):
    train, test = digits
    train_vae(_tiny_model(), train, test, _tiny_config(epochs=1), tmp_path)
    with pytest.raises(CheckpointMismatch, match=r"loss 'l2' \(this run: 'l1'\)"):
        train_vae(_tiny_model(), train, test, _tiny_config(loss="l1"), tmp_path, resume=True)
    with pytest.raises(CheckpointMismatch, match="model configuration"):
        torch.manual_seed(0)
        train_vae(MnistVAE(hidden_dim=8), train, test, _tiny_config(), tmp_path, resume=True)
    with pytest.raises(CheckpointMismatch, match=r"k 0\.0 \(this run: 2\.0\)"):
        train_vae(_tiny_model(), train, test, _tiny_config(k=2.0), tmp_path, resume=True)


def test_corrupt_or_foreign_checkpoints_are_refused(tmp_path, digits):
    train, test = digits
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        train_vae(_tiny_model(), train, test, _tiny_config(), tmp_path / "x", resume=bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not a percept VAE checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train_vae(_tiny_model(), train, test, _tiny_config(), tmp_path / "y", resume=tmp_path / "missing.pt")


DDP_SCRIPT = textwrap.dedent(
    """
    import os, sys, torch
    from percept.data import ImageSet
    from percept.models import MnistVAE
    from percept.vae import TrainConfig, train_vae

    class MeanVAE(MnistVAE):  # decodes z = mu in training too: no per-process noise, so 1 and 2 processes agree
        def forward(self, x):
            mu, logvar = self.encode(x)
            return self.decode(mu), mu, logvar

    out, data = sys.argv[1], torch.load(sys.argv[2])
    train, test = ImageSet(pixels=data["train"]), ImageSet(pixels=data["test"])
    cfg = dict(loss="l2", batch_size=16, lr=1e-3, lr_halflife=1.0, device="cpu", progress=False)
    torch.manual_seed(0)
    full = train_vae(MeanVAE(hidden_dim=16), train, test, TrainConfig(epochs=2, **cfg), out + "/full")
    torch.manual_seed(0)
    train_vae(MeanVAE(hidden_dim=16), train, test, TrainConfig(epochs=1, **cfg), out + "/split")
    torch.manual_seed(0)
    resumed = train_vae(MeanVAE(hidden_dim=16), train, test, TrainConfig(epochs=2, **cfg), out + "/split", resume=True)
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save({"full": full.model.state_dict(), "resumed": resumed.model.state_dict(),
                    "world_size": full.world_size, "history": full.history}, out + "/final.pt")
    elif full.world_size > 1:  # the other process ends with the same weights as rank 0
        torch.save(full.model.state_dict(), out + "/final_rank1.pt")
    """
)


def test_distributed_training_with_two_processes_matches_one(tmp_path, digits):
    """torchrun --nproc_per_node 2 (gloo, CPU): same weights as one process, and an exact resume."""
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    train, test = digits
    torch.save({"train": train.pixels, "test": test.pixels}, tmp_path / "data.pt")
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    for cmd, out in (
        (torchrun + [str(script), str(tmp_path / "two"), str(tmp_path / "data.pt")], "two"),
        ([sys.executable, str(script), str(tmp_path / "one"), str(tmp_path / "data.pt")], "one"),
    ):
        (tmp_path / out).mkdir()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    two, one = torch.load(tmp_path / "two/final.pt"), torch.load(tmp_path / "one/final.pt")
    assert (two["world_size"], one["world_size"]) == (2, 1)
    rank1 = torch.load(tmp_path / "two/final_rank1.pt")
    for key, value in two["full"].items():
        assert torch.equal(value, rank1[key]), key  # processes stay in sync
        assert torch.equal(value, two["resumed"][key]), key  # exact resume under DDP
        # the global-batch gradient is the same; only the summation order differs
        torch.testing.assert_close(value, one["full"][key], rtol=1e-4, atol=1e-5)
    assert two["history"][0]["train_loss"] == pytest.approx(one["history"][0]["train_loss"], rel=1e-5)
    ckpt = load_checkpoint(tmp_path / "two/full/checkpoints/last.pt")
    assert len(ckpt["rng"]) == 2 and ckpt["meta"]["world_size"] == 2


# --------------------------------------------------------------------------------------------------
# the drivers
# --------------------------------------------------------------------------------------------------


def _driver(name: str):
    return load_script(f"experiments/{name}/run.py", f"run_{name}")


def test_mnist_driver_end_to_end(tmp_path, capsys):
    """A tiny offline run of experiments/vae_mnist/run.py: every output file, the data source recorded."""
    run = _driver("vae_mnist")
    out = tmp_path / "vae_mnist"
    argv = ["--loss", "l2", "--epochs", "1", "--train-limit", "128", "--test-limit", "40", "--batch-size", "64",
            "--eval-metrics", "l2,ssim", "--out", str(out),
            "--no-progress", "--device", "cpu", "--no-keep-checkpoints"]  # fmt: skip
    assert run.run_experiment(run.EXPERIMENT, argv) == 0
    for f in ("cross_metric.csv", "training_curves.csv", "results.json", "machine.json"):
        assert (out / f).is_file(), f
    loss_dir = out / "l2"
    for f in ("history.csv", "outputs.npz", "scores.csv", "run.json", "reconstructions.png", "samples.png",
              "interpolations.png", "manifold.png"):  # fmt: skip
        assert (loss_dir / f).is_file(), f
    assert not (loss_dir / "checkpoints").exists()
    results = json.loads((out / "results.json").read_text())
    assert results["offline"] is True and "offline" in results["data_source"]
    assert "RECOVERED MNIST training set" in results["data_source"]
    assert results["losses"]["l2"]["status"] == "trained"
    assert results["machine"]["torch"] == torch.__version__
    arrays = np.load(loss_dir / "outputs.npz")
    assert arrays["reconstructions"].shape == arrays["test_images"].shape == (10, 1, 32, 32)
    assert arrays["interpolations"].shape == (2, 10, 1, 32, 32)
    assert arrays["manifold"].shape == (36, 1, 32, 32) and arrays["samples"].shape == (64, 1, 32, 32)
    table = (out / "cross_metric.csv").read_text().splitlines()
    assert table[0] == "trained_with,l2,ssim" and table[1].startswith("l2,")
    run_json = json.loads((loss_dir / "run.json").read_text())
    assert run_json["k"] == 0 and run_json["unit_factor"] == 1024


def test_snapshots_and_pixel_mse_per_epoch_survive_a_resume(tmp_path):
    """--snapshots K: the reconstructions of K fixed test images after every epoch (one entry per epoch, also
    across an interrupted and resumed run); history's test_pixel_mse is the test set's mean pixel MSE."""
    run = _driver("vae_mnist")
    out = tmp_path / "vae_mnist"
    argv = ["--loss", "l2", "--train-limit", "128", "--test-limit", "40", "--batch-size", "64", "--snapshots", "3",
            "--eval-metrics", "l2", "--out", str(out), "--no-progress", "--device", "cpu", "--checkpoint-steps", "1"]  # fmt: skip
    assert run.run_experiment(run.EXPERIMENT, argv + ["--epochs", "1"]) == 0
    assert load_checkpoint(out / "l2" / "checkpoints" / "last.pt")["meta"]["config"]["checkpoint_steps"] == 1
    assert run.run_experiment(run.EXPERIMENT, argv + ["--epochs", "2", "--resume"]) == 0
    snaps = np.load(out / "l2" / "snapshots.npz")
    outputs = np.load(out / "l2" / "outputs.npz")
    assert snaps["epochs"].tolist() == [1, 2]
    assert snaps["reconstructions"].shape == (2, 3, 1, 32, 32)
    np.testing.assert_array_equal(snaps["images"], outputs["test_images"][:3])
    np.testing.assert_array_equal(snaps["test_ids"], outputs["test_ids"][:3])
    model = load_model(out / "l2" / "checkpoints" / "last.pt").eval()
    test = load_mnist("test").subset(range(40))
    x = torch.stack([test[i] for i in range(40)])
    with torch.no_grad():
        recon = model.decode(model.encode(x)[0])
    want = ((recon - x).double() ** 2).mean(dim=(1, 2, 3)).mean().item()
    last = np.genfromtxt(out / "l2" / "history.csv", delimiter=",", names=True)[-1]
    assert last["test_pixel_mse"] == pytest.approx(want, rel=1e-5)
    shown = [int(np.where(test.indices.numpy() == i)[0][0]) for i in snaps["test_ids"]]
    np.testing.assert_array_equal(snaps["reconstructions"][-1], (recon[shown].clamp(0, 1) * 255).round().byte().numpy())


def test_collecting_a_run_stopped_inside_an_epoch_uses_a_finished_epochs_weights(tmp_path, caplog):
    """A run stopped inside epoch 2 and collected with --epochs 1 --resume trains nothing; its last.pt holds
    weights from inside epoch 2, so the outputs must come from best_model.pt (epoch 1), not from those."""
    run = _driver("vae_mnist")
    out = tmp_path / "vae_mnist"
    argv = ["--loss", "l2", "--epochs", "1", "--train-limit", "128", "--test-limit", "40", "--batch-size", "64",
            "--eval-metrics", "l2", "--out", str(out), "--no-progress", "--device", "cpu", "--checkpoint-steps", "1"]  # fmt: skip
    assert run.run_experiment(run.EXPERIMENT, argv) == 0
    before = np.load(out / "l2" / "outputs.npz")["reconstructions"]
    last_path = out / "l2" / "checkpoints" / "last.pt"
    state = load_checkpoint(last_path)  # as if the run had gone on and been stopped after step 1 of epoch 2
    state["model"] = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v
                      for k, v in state["model"].items()}  # fmt: skip
    state["step_in_epoch"], state["partial"] = 1, [torch.zeros(4, dtype=torch.float64)]
    torch.save(state, last_path)
    with caplog.at_level("INFO", logger="percept.vae.trainer"):
        assert run.run_experiment(run.EXPERIMENT, [*argv, "--resume"]) == 0
    assert "also holds 1 steps of epoch 2" in caplog.text
    np.testing.assert_array_equal(np.load(out / "l2" / "outputs.npz")["reconstructions"], before)
    assert load_checkpoint(last_path)["step_in_epoch"] == 1  # kept for a later --resume


def test_driver_rejects_unknown_losses(capsys):
    run = _driver("vae_mnist")
    with pytest.raises(SystemExit):
        run.run_experiment(run.EXPERIMENT, ["--loss", "l2,watsn"])
    err = capsys.readouterr().err
    assert "watsn" in err and "watson-dft" in err and "deeploss-squeeze" in err
    with pytest.raises(SystemExit):
        run.run_experiment(run.EXPERIMENT, ["--loss", "l2", "--checkpoint-steps", "-5"])
    assert "--checkpoint-steps must be at least 0, got -5" in capsys.readouterr().err


def test_driver_reports_a_corrupt_dataset_folder(tmp_path, capsys):
    run = _driver("vae_mnist")
    (tmp_path / "MNIST" / "raw").mkdir(parents=True)
    (tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz").write_bytes(b"garbage")
    assert run.run_experiment(run.EXPERIMENT, ["--data-root", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "t10k-labels-idx1-ubyte" in err and "download_mnist.py" in err


def test_celeba_driver_quick_path(tmp_path):
    """experiments/vae_celeba/run.py on the offline CelebA sample with the paper's 136M-parameter model."""
    run = _driver("vae_celeba")
    out = tmp_path / "vae_celeba"
    argv = [
        "--loss",
        "l2",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--train-limit",
        "8",
        "--test-limit",
        "8",
        "--eval-metrics",
        "l2",
        "--out",
        str(out),
        "--no-progress",
        "--device",
        "cpu",
        "--no-keep-checkpoints",
    ]
    assert run.run_experiment(run.EXPERIMENT, argv) == 0  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    assert "REDUCED CelebA" in results["data_source"] and "half resolution" in results["data_source"]
    arrays = np.load(out / "l2" / "outputs.npz")
    assert arrays["reconstructions"].shape == (8, 3, 64, 64)
    assert arrays["samples"].shape == (24, 3, 64, 64) and "manifold" not in arrays
    assert json.loads((out / "l2" / "run.json").read_text())["unit_factor"] == 3 * 64 * 64


def test_paper_losses_are_registry_names():
    for name in PAPER_LOSSES:
        assert name in percept.list_metrics()


def test_registry_metrics_used_for_training_give_per_image_values():
    x = torch.rand(3, 1, 32, 32)
    r = F.avg_pool2d(x, 3, 1, 1)
    for name in ("l2", "ssim", "watson-dft", "adaptive", "deeploss-squeeze"):
        metric = build_metric(name, colorspace="grey", image_shape=(1, 32, 32))
        assert metric(r, x).shape == (3,), name
