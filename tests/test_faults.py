"""Fault injection (issue 15): a kill during a save, two runs into one folder, missing or corrupt
checkpoints, a full disk, and flags that used to end in tracebacks. Each must leave the earlier results
intact and end in one clear line. The whole file runs in well under a minute on 2 CPU cores.
"""

from __future__ import annotations

import builtins
import errno
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from scripts import load_script

from percept import guard
from percept.data.mnist import load_mnist
from percept.guard import LOCK_NAME, OutputError, RunError, RunLock, RunLockedError
from percept.models import MnistVAE
from percept.vae import CheckpointError, TrainConfig, load_checkpoint, train_vae

ROOT = Path(__file__).resolve().parents[1]
ENV = os.environ | {"PYTHONPATH": str(ROOT / "lib")}


@pytest.fixture(scope="module")
def digits():
    return load_mnist("train").subset(range(32)), load_mnist("test").subset(range(16))


def _config(**overrides) -> TrainConfig:
    base = dict(loss="l2", epochs=1, batch_size=16, lr=1e-3, lr_halflife=1.0, device="cpu", progress=False)
    return TrainConfig(**(base | overrides))


def _model() -> MnistVAE:
    torch.manual_seed(0)
    return MnistVAE(hidden_dim=8)


def _driver():
    return load_script("experiments/vae_mnist/run.py", "run_vae_mnist_faults")


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*.tmp*"))


# ----------------------------------------------------------------------------- kill during a save
KILL_DURING_SAVE = textwrap.dedent(
    """
    import os, signal, sys, torch
    from percept.data.mnist import load_mnist
    from percept.models import MnistVAE
    from percept.vae import TrainConfig, train_vae

    real_save = torch.save

    def save(obj, f, *args, **kwargs):  # the second last.pt: half written, then SIGKILL (no clean-up runs)
        if isinstance(obj, dict) and obj.get("format") and obj["epoch"] == 2:
            f.write(b"partial checkpoint" * 1000)
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, f, *args, **kwargs)

    torch.save = save
    torch.manual_seed(0)
    train, test = load_mnist("train").subset(range(32)), load_mnist("test").subset(range(16))
    cfg = TrainConfig(loss="l2", epochs=2, batch_size=16, lr=1e-3, lr_halflife=1.0, device="cpu", progress=False)
    train_vae(MnistVAE(hidden_dim=8), train, test, cfg, sys.argv[1])
    """
)


def test_kill_during_save_leaves_the_last_checkpoint_and_the_next_run_cleans_up(tmp_path, digits):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, str(out)], env=ENV, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    leftovers = _temps(out)
    assert leftovers and leftovers[0].startswith(".last.pt.tmp")  # the injected fault happened
    assert (out / LOCK_NAME).is_file()  # and the killed run could not release its lock
    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 1  # the previous checkpoint is intact
    result = train_vae(_model(), *digits, _config(epochs=2), out, resume=True)  # takes over the stale lock
    assert result.resumed_from_epoch == 1 and len(result.history) == 2
    assert _temps(out) == []  # the 18 KB (in real runs 67 MB) leftover is gone
    assert not (out / LOCK_NAME).exists()


# ----------------------------------------------------------------------------------- concurrency
HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from percept.guard import RunLock
    lock = RunLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(120)
    """
)


def test_a_second_run_into_a_busy_folder_stops_with_one_line(tmp_path, digits, capsys):
    out = tmp_path / "busy"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out / "l2")], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=f"pid {holder.pid}"):
            train_vae(_model(), *digits, _config(), out / "l2")
        assert not (out / "l2" / "history.csv").exists()
        # the driver: exit status 2 and one line, nothing written into the loss folder
        run = _driver()
        argv = ["--loss", "l2", "--epochs", "1", "--train-limit", "32", "--test-limit", "16", "--batch-size", "16",
                "--eval-metrics", "l2", "--out", str(out), "--no-progress", "--device", "cpu"]  # fmt: skip
        assert run.run_experiment(run.EXPERIMENT, argv) == 2
        err = capsys.readouterr().err
        assert "in use by another run" in err and "Traceback" not in err
        assert not (out / "l2" / "history.csv").exists()
    finally:
        holder.kill()
        holder.wait()
    with RunLock(out / "l2") as lock:  # the owner is gone: its lock is stale and taken over
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert not (out / "l2" / LOCK_NAME).exists()


def test_drivers_on_different_losses_share_one_output_folder(tmp_path):
    """A loss folder is locked while it trains, not the whole --out: a second driver trains another loss into
    the same folder (one process per loss on a many-core machine) and the shared tables list both."""
    out = tmp_path / "shared"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out / "l2")], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        run = _driver()
        argv = ["--loss", "ssim", "--epochs", "1", "--train-limit", "32", "--test-limit", "16", "--batch-size", "16",
                "--eval-metrics", "l2", "--out", str(out), "--no-progress", "--device", "cpu"]  # fmt: skip
        assert run.run_experiment(run.EXPERIMENT, argv) == 0
        assert (out / "ssim" / "run.json").is_file() and not (out / "l2" / "history.csv").exists()
        assert "ssim" in json.loads((out / "results.json").read_text())["losses"]
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_with_wait_takes_over_when_the_owner_finishes(tmp_path):
    release_after_2s = HOLD_LOCK.replace("time.sleep(120)", "time.sleep(2); lock.release(); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", release_after_2s, str(tmp_path)], env=ENV,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError):
            RunLock(tmp_path).acquire()  # no wait: refused at once
        with RunLock(tmp_path, wait=60) as lock:  # the holder, still running, releases it after 2 s
            assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    finally:
        holder.kill()
        holder.wait()


def test_two_locks_in_one_process_exclude_each_other(tmp_path):
    with RunLock(tmp_path), pytest.raises(RunLockedError):
        RunLock(tmp_path).acquire()
    RunLock(tmp_path).acquire().release()  # released: free again


# -------------------------------------------------------------------- missing / corrupt checkpoints
def test_resume_without_a_checkpoint_never_overwrites_an_earlier_run(tmp_path, digits, caplog):
    out = tmp_path / "run"
    train_vae(_model(), *digits, _config(), out)
    history = (out / "history.csv").read_text()
    # a finished --quick run keeps history.csv but deletes its checkpoints
    (out / "checkpoints" / "last.pt").unlink()
    with pytest.raises(RunError, match="--overwrite"):
        train_vae(_model(), *digits, _config(), out, resume=True)
    with pytest.raises(RunError, match="--resume"):
        train_vae(_model(), *digits, _config(), out)
    assert (out / "history.csv").read_text() == history
    assert (out / "checkpoints" / "best_model.pt").is_file()
    with caplog.at_level(logging.WARNING, logger="percept.vae"):
        result = train_vae(_model(), *digits, _config(), out, overwrite=True)
    assert "replacing the earlier run" in caplog.text and len(result.history) == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="percept.vae"):
        train_vae(_model(), *digits, _config(), tmp_path / "fresh", resume=True)  # nothing there: loud, then trains
    assert "no checkpoint" in caplog.text and "from scratch" in caplog.text


def test_a_corrupt_checkpoint_is_refused_and_nothing_is_overwritten(tmp_path, digits):
    out = tmp_path / "run"
    train_vae(_model(), *digits, _config(), out)
    last = out / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])  # truncated
    history = (out / "history.csv").read_text()
    with pytest.raises(CheckpointError, match="cannot be read"):
        train_vae(_model(), *digits, _config(epochs=2), out, resume=True)
    assert (out / "history.csv").read_text() == history and not (out / LOCK_NAME).exists()


# ------------------------------------------------------------------------------------ a full disk
class _FullDisk:
    """A file whose every write fails as on a full disk."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def _full_disk_open(path, mode="r", *args, **kwargs):
    f = builtins.open(path, mode, *args, **kwargs)
    return _FullDisk(f) if any(c in mode for c in "wax") else f


def test_a_full_disk_keeps_the_last_checkpoint_and_ends_in_one_line(tmp_path, digits, monkeypatch, capsys):
    out = tmp_path / "run"
    train_vae(_model(), *digits, _config(), out)
    before = {p: p.read_bytes() for p in (out / "history.csv", out / "checkpoints" / "last.pt")}
    monkeypatch.setattr(guard, "open", _full_disk_open, raising=False)  # every atomic write now fails
    with pytest.raises(OutputError, match="no space left") as err:
        train_vae(_model(), *digits, _config(epochs=2), out, resume=True)
    assert {p: p.read_bytes() for p in before} == before  # the earlier files are intact
    assert _temps(out) == [] and not (out / LOCK_NAME).exists()
    code = guard.run_guarded(lambda: (_ for _ in ()).throw(err.value), prog="run.py")
    line = capsys.readouterr().err
    assert code == 1 and line.count("\n") == 1 and "no space left" in line and "Traceback" not in line


# ------------------------------------------------------------------ flags that used to end in tracebacks
@pytest.mark.parametrize(
    "argv,message",
    [
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--resume", "--overwrite"], "give one of them"),
        (["--device", "cuda:7"], "CUDA"),
        (["--device", "tpu"], "bad --device"),
    ],
)
def test_driver_flags_are_refused_in_one_line(tmp_path, capsys, argv, message):
    if argv[-1].startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    run = _driver()
    try:
        code = run.run_experiment(run.EXPERIMENT, ["--loss", "l2", "--out", str(tmp_path / "o"), *argv])
    except SystemExit as exit:  # argparse's usage errors
        code = exit.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_driver_out_pointing_at_a_file(tmp_path, capsys):
    target = tmp_path / "results.csv"
    target.write_text("keep me\n")
    run = _driver()
    assert run.run_experiment(run.EXPERIMENT, ["--loss", "l2", "--out", str(target)]) == 2
    err = capsys.readouterr().err
    assert "is a file" in err and err.count("\n") == 1 and target.read_text() == "keep me\n"


def test_debug_shows_the_traceback(tmp_path):
    target = tmp_path / "f"
    target.write_text("")
    proc = subprocess.run([sys.executable, str(ROOT / "experiments/vae_mnist/run.py"), "--out", str(target)],
                          env=ENV | {"PERCEPT_DEBUG": "1"}, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "is a file" in proc.stderr
