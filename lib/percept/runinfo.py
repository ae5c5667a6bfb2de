"""Run information shared by every driver: machine info, JSON and checkpoint writes, devices, processes, RNG.

>>> from percept.runinfo import machine_info, select_device, write_json
>>> device = select_device("auto")                       # CUDA if present, else Apple MPS, else CPU
>>> write_json("results/x/machine.json", machine_info(device) | {"command": "..."})

Every results folder carries :func:`machine_info` next to its numbers; writes go through a temporary file
and a rename (:func:`write_json`, :func:`atomic_save`), so an interrupted run never leaves half a file.
:func:`init_distributed` joins a torchrun process group (:class:`DistInfo` says which process this is) and
:func:`get_rng_state` / :func:`set_rng_state` carry every random stream across a checkpoint.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import platform
import random
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from percept.guard import RunError, atomic_output

#: packages whose versions :func:`machine_info` records (the peers of the benchmarks); None when not installed
PEER_PACKAGES = ("torchmetrics", "lpips", "pytorch_msssim")

# ------------------------------------------------------------------------------------------------ machine


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what :mod:`platform` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str | torch.device) -> str:
    """The GPU's name for a CUDA device, else the CPU's model name."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def git_commit() -> str | None:
    """The checkout's commit (with ``-dirty`` when tracked files are modified), None outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "") if sha else None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info(device: torch.device | str | None = None, threads: int | None = None) -> dict:
    """What every results file carries next to its numbers: software versions, device, CPU, threads, date, commit.

    Keys: date (UTC, ISO 8601), git_commit, python, torch, torchvision, torchmetrics, lpips, pytorch_msssim
    (None when not installed), platform, processor, device, device_name (GPU name, else CPU model),
    cpu_model, cpu_count, cpu_affinity (CPUs this process may use, Linux), torch_threads (``threads`` when
    given, else torch's current setting), omp_num_threads (the environment variable), cuda (torch's CUDA
    version, None for a CPU build), gpus (names of the visible GPUs) and, on a CUDA device, cudnn and
    gpu_memory_gib. ``device`` None: the one :func:`select_device` picks.
    """
    device = torch.device(device) if device is not None else select_device()
    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "device": str(device),
        "device_name": device_name(device),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads if threads is not None else torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cuda": torch.version.cuda,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available()
        else [],
    }
    try:
        info["cpu_affinity"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        pass
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(cudnn=torch.backends.cudnn.version(), gpu_memory_gib=props.total_memory / 2**30)
    from importlib.metadata import PackageNotFoundError, version

    for package in ("torchvision", *PEER_PACKAGES):
        try:
            info[package] = version(package.replace("_", "-"))
        except PackageNotFoundError:
            info[package] = None
    return info


def load_average() -> float | None:
    """1-minute load average: other processes on the machine slow timings down (None where unknown)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


# ------------------------------------------------------------------------------------------------- writes


def write_json(path: str | Path, obj: dict) -> None:
    """Write ``obj`` as indented JSON (values JSON cannot hold as ``str``), atomically; creates the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, "w") as f:
        f.write(json.dumps(obj, indent=2, default=str) + "\n")


def write_csv(path: str | Path, rows: list[dict], columns=None, float_format: str = ".8g") -> None:
    """Write ``rows`` (dicts) as CSV, atomically; creates the folder. ``columns``: every key in order of first
    appearance unless given; missing values are empty; floats are written with ``float_format``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(k for r in rows for k in r)) if columns is None else list(columns)
    with atomic_output(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({c: (format(r[c], float_format) if isinstance(r.get(c), float) else r.get(c, "")) for c in columns})


def atomic_save(obj, path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the same folder, flush to disk, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, "wb") as f:  # a full disk: OutputError naming path; the old file stays
        torch.save(obj, f)
    return path


# ------------------------------------------------------------------------------------- devices, processes


def select_device(preference: str = "auto", local_rank: int = 0, auto_mps: bool = True) -> torch.device:
    """ "auto": the process's CUDA device if there is one, else Apple MPS (unless ``auto_mps`` is False), else
    CPU; or an explicit device.

    An explicit device that this machine does not have raises :class:`percept.guard.RunError` (one line).
    """
    if preference != "auto":
        try:
            device = torch.device(preference)
        except (RuntimeError, ValueError) as err:
            raise RunError(f"bad --device {preference!r}: {err} (use auto, cpu, cuda, cuda:1 or mps)") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RunError(f"--device {preference}: CUDA is not available on this machine (use --device cpu or auto)")
        if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            raise RunError(f"--device {preference}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise RunError(f"--device {preference}: MPS is not available on this machine (use --device cpu or auto)")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if auto_mps and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@dataclass
class DistInfo:
    """This process's place in a torchrun launch (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device_preference: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1); NCCL on CUDA, else gloo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)
    if world <= 1:
        return DistInfo()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but torch.distributed is not available in this torch build")
    if device_preference == "auto":
        use_cuda = torch.cuda.is_available()
    else:
        use_cuda = device_preference.startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, initialized_here=True)


def launched_rank() -> int:
    """This process's rank: the process group's when joined, else torchrun's ``RANK`` (0 when not launched)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


# ----------------------------------------------------------------------------------------------- RNG state


def get_rng_state(loader_generator: torch.Generator | None = None) -> dict:
    """Every RNG state this process uses, in types ``torch.load(weights_only=True)`` accepts.

    torch, CUDA (all devices), numpy and python, plus ``loader_generator`` (a DataLoader's) when given.
    """
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": _to_lists(random.getstate()),
        "cuda": [s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }
    if loader_generator is not None:
        state["loader"] = loader_generator.get_state()
    return state


def set_rng_state(state: dict, loader_generator: torch.Generator | None = None) -> None:
    """Restore what :func:`get_rng_state` returned (CUDA only when the device count matches)."""
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(_to_tuples(state["python"]))
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    if loader_generator is not None and "loader" in state:
        loader_generator.set_state(state["loader"])


def _to_lists(x):
    return [_to_lists(v) for v in x] if isinstance(x, tuple | list) else x


def _to_tuples(x):
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


__all__ = [
    "machine_info", "cpu_model", "device_name", "git_commit", "load_average", "write_json", "write_csv", "atomic_save",
    "select_device", "DistInfo", "init_distributed", "launched_rank", "get_rng_state", "set_rng_state",
]  # fmt: skip
