"""One-shot GPU check: every metric on CUDA against CPU, then one training step of each, timed beside L2.

Made for a short loan of a GPU machine that has torch but none of our pins and no network (``make
bench-gpu``; the ``lpips`` and ``pytorch-msssim`` wheels travel in ``.whl/``). Everything is written row by
row, so a run stopped by a time limit keeps what it measured:

- ``parity.csv``: for each metric and colour space, the per-image values and input gradients on the device
  against CPU (same inputs, relative differences), and under float16 / bfloat16 autocast (finite, and
  the relative value difference to float32);
- ``bench.csv``: the columns of ``results/bench/bench.csv``. One training step (sigmoid, loss, backward,
  SGD) on a 128 x C x 64 x 64 CelebA batch (MS-SSIM: 192 px), the median of ``--repeats`` timed loops;
  ``ratio_to_l2`` divides by torch's L2 step measured in the same run on the same shape just before;
  ``speedup_vs_peer`` is peer time / our time (> 1: percept is faster). The note column says where a step's
  time goes: its CUDA kernels (profiler count), the milliseconds they keep the GPU busy (``gpu_busy_ms``) and
  the milliseconds the host needs to issue the step (``host_issue_ms``; near ``ms_per_iter``: host-bound,
  fewer operations or less Python help; near ``gpu_busy_ms``: the kernels themselves are slow). SSIM,
  Watson and Adaptive are also timed with the value checks off and read back in every call, and, where
  deterministic, replayed as CUDA graphs (``[CUDA graph]``: the step without launch overhead; skipped off
  CUDA) and, with ``--compile [BACKEND]``, under ``torch.compile`` (``[torch.compile]``). With
  ``--original``, the original code's rows are timed too;
- ``machine.json``.

    python benchmarks/bench_gpu.py --device cuda --out results/bench_gpu [--original PATH/src/loss]
    python benchmarks/bench_gpu.py --device cpu --quick --out /tmp/bench_gpu   # the same code path on CPU

Expected runtime on an H200: about 3 minutes (parity 20 s; the bench took 90 s before the check-mode and
CUDA-graph rows were added, about 2 s per row, 26 rows more).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn as nn
from bench_losses import CANDIDATES, Built, Candidate, celeba_batch, noisy_copy, parity_between

from percept.profiling import TrainingStep, synchronize
from percept.runinfo import machine_info

FIELDS = ["metric", "group", "colorspace", "shape", "ms_per_iter", "rounds", "iters_per_round", "peer",
          "max_abs_diff_vs_peer", "peak_mem_x_input", "original_x_l2", "note", "implementation", "ratio_to_l2",
          "speedup_vs_peer", "time_target", "time_verdict", "mem_verdict"]

#: GPU targets of the speed issue: (metric key) -> (description, test on the row and the run's other rows)
TARGETS = {
    "watson-dft (shift)": "<= 12x L2",
    "watson-dct": "<= 10x L2",
    "watson-dct (shift)": "<= 10x L2",
    "adaptive": "<= 10x L2",
    "ssim": "<= pytorch-msssim and <= the original SSIM",
    "ms-ssim": "<= pytorch-msssim",
    "lpips-squeeze": "<= the lpips package",
    "lpips-alex": "<= the lpips package",
    "lpips-vgg": "<= the lpips package",
}

PARITY_METRICS = [("l1", {}), ("l2", {}), ("ssim", {}), ("watson-dct", {}), ("watson-dft", {}),
                  ("watson-dft", {"deterministic": False}), ("adaptive", {}), ("lpips-squeeze", {}),
                  ("deeploss-squeeze", {}), ("dps-squeeze", {}), ("lpips-alex", {})]


class _Original(nn.Module):
    """A loss of the original code (``LossProvider`` of ``--original``), as it trains (random shift on)."""

    def __init__(self, loss: nn.Module):
        super().__init__()
        self.loss = loss

    def forward(self, x, y):
        return self.loss(x, y)


class _ChecksMode(nn.Module):
    """A percept loss called under one value-check mode (``percept.checks.value_checks(mode)``): "off" has no
    checks, "sync" reads them back in every call (one host synchronisation per call on a GPU)."""

    def __init__(self, loss: nn.Module, mode: str):
        super().__init__()
        self.loss, self.mode = loss, mode

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from percept.checks import value_checks

        with value_checks(self.mode):
            return self.loss(x, y)


def _wrapped_candidates(keys, tag: str, wrap, note: str, implementation) -> dict[str, Candidate]:
    """A ``"{key} [{tag}]"`` candidate for each of ``keys``: its percept loss inside ``wrap(loss)``, the row's note
    ``note`` and its implementation ``implementation(the loss's implementation)``."""
    out = {}
    for key in keys:
        cand = CANDIDATES[key]

        def build(*args, cand=cand) -> Built:
            built = cand.build(*args)
            return Built(wrap(built.loss), built.weights, note)

        out[f"{key} [{tag}]"] = Candidate(f"{key} [{tag}]", "percept", implementation(cand.implementation), build)
    return out


#: metrics also timed with the value checks off and read back in every call, beside the default ("auto":
#: deferred on a GPU after the first call): what the checks cost, and what deferring them saves
CHECKS_TIMED = ("ssim", "watson-dct (shift)", "watson-dft (shift)", "adaptive")
CHECK_VARIANTS = {"no value checks": ("off", "value checks off"),
                  "sync value checks": ("sync", "value checks read back in every call (a host sync per call)")}


def _check_mode_candidates() -> dict[str, Candidate]:
    out = {}
    for tag, (mode, note) in CHECK_VARIANTS.items():
        out |= _wrapped_candidates(CHECKS_TIMED, tag, lambda loss, mode=mode: _ChecksMode(loss, mode), note,
                                   lambda impl, mode=mode: f"{impl} under value_checks({mode!r})")
    return out


class _CudaGraphed(nn.Module):
    """A percept loss whose forward and backward replay CUDA graphs (``torch.cuda.make_graphed_callables``),
    captured at the first call on inputs of that call's shapes: one graph launch each instead of the
    metric's kernels, so no launch or Python overhead. The replays run no value checks (nothing is read
    back in a graph; the warm-up calls before the capture are checked). Only for deterministic metrics:
    a random shift drawn while capturing would be replayed unchanged (the metrics refuse it)."""

    def __init__(self, loss: nn.Module):
        super().__init__()
        self.loss = loss
        self.graphed = None

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.graphed is None:
            if x.device.type != "cuda":
                raise RuntimeError(f"CUDA graphs need a CUDA device, not {x.device.type}")
            sample = (torch.rand_like(x).requires_grad_(x.requires_grad), y.detach().clone())
            self.graphed = torch.cuda.make_graphed_callables(self.loss, sample)
        return self.graphed(x, y)


#: deterministic metrics also timed as CUDA graphs (what removing every launch would give)
GRAPHED = ("ssim", "watson-dct", "watson-dft", "adaptive")
GRAPH_TAG = "CUDA graph"
COMPILE_TAG = "torch.compile"


def _graphed_candidates() -> dict[str, Candidate]:
    return _wrapped_candidates(GRAPHED, GRAPH_TAG, _CudaGraphed, "forward and backward replayed as CUDA graphs",
                               lambda impl: f"torch.cuda.make_graphed_callables({impl})")


def _compiled_candidates(backend: str) -> dict[str, Candidate]:
    """The same metrics under ``torch.compile``, value checks off (a compiled step reads nothing back)."""
    return _wrapped_candidates(
        GRAPHED, COMPILE_TAG, lambda loss: _ChecksMode(torch.compile(loss, backend=backend), "off"),
        f"torch.compile(backend={backend!r}), value checks off; compiled in the warm-up steps",
        lambda impl: f"torch.compile({impl}, backend={backend!r})",
    )


def graph_parity(graphed: Candidate, eager: Candidate, colorspace: str, size, device: torch.device) -> float:
    """Largest relative difference of the loss over 3 training steps from the same start, graphed against
    eager (16 CelebA images): the later steps start from the earlier steps' gradients, so a wrong replayed
    gradient shows too."""
    target = celeba_batch(16, size[0], colorspace)[0].to(device)
    losses = []
    for cand in (graphed, eager):
        step = TrainingStep(cand.build(colorspace, "sum", tuple(size), device).loss, target, seed=1)
        losses.append(torch.stack([step() for _ in range(3)]).double())
    return float(((losses[0] - losses[1]).abs() / losses[1].abs().clamp_min(1e-12)).max())


def _original_candidates(path: str) -> dict[str, Candidate]:
    sys.path.insert(0, str(Path(path).resolve()))
    if not hasattr(torch, "rfft"):  # the original calls torch.rfft (removed in torch 1.8): its old meaning
        torch.rfft = lambda x, signal_ndim: torch.view_as_real(torch.fft.rfftn(x, dim=tuple(range(-signal_ndim, 0))))
    from loss_provider import LossProvider as OriginalProvider  # noqa: PLC0415 (optional, outside the package)

    out = {}
    for key, name in (("original SSIM", "SSIM"), ("original Watson-dct", "Watson-dct"),
                      ("original Watson-fft", "Watson-fft"), ("original Adaptive", "Adaptive")):
        def build(colorspace, reduction, size, device, name=name):
            kw = {"image_size": [3, *size]} if name == "Adaptive" else {}
            space = "RGB" if colorspace == "rgb" else "LA"
            loss = OriginalProvider().get_loss_function(name, space, reduction="sum", deterministic=False, **kw)
            return Built(_Original(loss).to(device), "the original code's trained weights")

        out[key] = Candidate(key, "original", f"original LossProvider().get_loss_function({name!r}, ...)", build)
    return out


def _writer(path: Path, fields: list[str]):
    handle = open(path, "w", newline="")
    writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    handle.flush()
    return handle, writer


def parity(device: torch.device, out: Path, log, only: set[str] | None = None) -> None:
    """CUDA against CPU: values and gradients, and autocast, for each metric (row by row)."""
    import percept

    handle, writer = _writer(out / "parity.csv", ["metric", "options", "colorspace", "value_rel_diff",
                                                  "grad_rel_diff", "fp16_finite", "fp16_value_rel_diff",
                                                  "bf16_finite", "bf16_value_rel_diff", "note"])
    for name, options in PARITY_METRICS:
        if only is not None and name not in only:
            continue
        for space in ("rgb", "grey"):
            row = {"metric": name, "options": json.dumps(options), "colorspace": space}
            try:
                c = 3 if space == "rgb" else 1
                target = celeba_batch(8, 64, space)[0]
                x = noisy_copy(target)
                results = {}
                for dev in (torch.device("cpu"), device):
                    metric = percept.get_metric(name, colorspace=space, reduction="none", **options).to(dev)
                    xd = x.to(dev).clone().requires_grad_(True)  # a leaf on each device
                    torch.manual_seed(0)
                    d = metric(xd, target.to(dev))
                    d.sum().backward()
                    results[dev.type] = (d.detach().cpu().double(), xd.grad.cpu().double())
                    if dev == device:
                        for dtype, tag in ((torch.float16, "fp16"), (torch.bfloat16, "bf16")):
                            with torch.autocast(dev.type, dtype=dtype):
                                torch.manual_seed(0)
                                da = metric(x.to(dev), target.to(dev)).detach().cpu().double()
                            row[f"{tag}_finite"] = bool(torch.isfinite(da).all())
                            row[f"{tag}_value_rel_diff"] = ((da - results[dev.type][0]).abs().max()
                                                           / results[dev.type][0].abs().max()).item()
                (v0, g0), (v1, g1) = results["cpu"], results[device.type]
                row["value_rel_diff"] = ((v1 - v0).abs().max() / v0.abs().max()).item()
                row["grad_rel_diff"] = ((g1 - g0).norm() / g0.norm()).item()
                assert c == x.shape[1]
            except Exception as err:  # noqa: BLE001 (one row per failure, the run goes on)
                row["note"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]
            writer.writerow(row)
            handle.flush()
            log(f"parity {name} {options} {space}: {row}")
    if only is None or "value checks" in only:
        row = {"metric": "value checks", "options": json.dumps({"mode": "auto"}), "colorspace": "rgb",
               "note": deferred_value_check(device)}
        writer.writerow(row)
        log(f"parity value checks: {row}")
    handle.close()


def deferred_value_check(device: torch.device) -> str:
    """Whether a NaN input, after the metric's first call, is reported by a later call on ``device`` in the
    default mode (deferred on CUDA: no host sync in the call itself), and at once in mode "sync"."""
    import percept
    from percept import checks

    metric = percept.get_metric("l2").to(device)
    x = torch.rand(2, 3, 16, 16, device=device)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    expect_deferred = device.type == "cuda"
    try:
        with checks.value_checks("auto"):
            metric(x, x)
            try:
                metric(bad, x)
            except ValueError:
                return "pass: raised in the call" if not expect_deferred else "FAIL: raised in the call (a host sync)"
            try:
                checks.flush_value_checks()
            except ValueError as err:
                verdict = "pass" if expect_deferred and "earlier call" in str(err) else f"FAIL: {err}"
            else:
                return "FAIL: the NaN was never reported"
        with checks.value_checks("sync"):
            try:
                metric(bad, x)
            except ValueError:
                return f"{verdict}: deferred in mode auto, raised in the call in mode sync"
            return "FAIL: mode sync did not raise"
    except Exception as err:  # noqa: BLE001 (reported in the row)
        return f"FAIL: {type(err).__name__}: {err}"


def _kernels_per_step(step, device: torch.device) -> tuple[int, float] | None:
    """CUDA kernels of one step and the milliseconds they keep the GPU busy (the sum of their durations)."""
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize(device)
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return len(kernels), sum(e.time_range.elapsed_us() for e in kernels) / 1e3


def _host_ms_per_step(step, device: torch.device, repeats: int = 5) -> float:
    """Milliseconds until one step has been issued (the GPU idle before it): what the host spends on Python,
    dispatch and launches. Near the step's time, the step is host-bound; a host sync inside counts in it."""
    times = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    synchronize(device)
    return statistics.median(times) * 1e3


def time_case(cand: Candidate, space: str, shape: tuple, device: torch.device, repeats: int) -> dict:
    b, c, h, w = shape
    target = celeba_batch(b, h, space)[0].to(device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        built = cand.build(space, "sum", (h, w), device)
    step = TrainingStep(built.loss, target, seed=0)
    for _ in range(3):
        step()
    synchronize(device)
    t0 = time.perf_counter()
    step()
    synchronize(device)
    n_iter = max(1, math.ceil(0.1 / max(time.perf_counter() - t0, 1e-6)))
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base_mem = torch.cuda.memory_allocated(device)
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(n_iter):
            step()
        synchronize(device)
        times.append((time.perf_counter() - t0) / n_iter)
    peak = None
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated(device) - base_mem) / (4 * math.prod(shape))
    profiled = _kernels_per_step(step, device)
    timing = ""
    if profiled is not None:  # where a GPU step's time goes: kernels, their busy time, the host's issue time
        timing = (f"cuda_kernels_per_step={profiled[0]}; gpu_busy_ms={profiled[1]:.3g}; "
                  f"host_issue_ms={_host_ms_per_step(step, device):.3g}")  # fmt: skip
    note = "; ".join(n for n in (built.note, timing) if n)
    return {"ms_per_iter": statistics.median(times) * 1e3, "rounds": repeats, "iters_per_round": n_iter,
            "peak_mem_x_input": peak, "note": note, "implementation": cand.implementation}


def _cases(quick: bool, original: bool, compiled: bool = False) -> list[tuple[str, str, tuple, str | None]]:
    b = 16 if quick else 128
    cases = []
    for space, c in (("rgb", 3), ("grey", 1)):
        shape = (b, c, 64, 64)
        cases += [("L2 (torch)", space, shape, None), ("l2", space, shape, None),
                  ("pytorch_msssim.ssim", space, shape, None), ("ssim", space, shape, "pytorch_msssim.ssim"),
                  ("watson-dct", space, shape, None), ("watson-dct (shift)", space, shape, None),
                  ("watson-dft", space, shape, None), ("watson-dft (shift)", space, shape, None),
                  ("adaptive", space, shape, None)]
        cases += [(f"{k} [{tag}]", space, shape, None) for k in CHECKS_TIMED for tag in CHECK_VARIANTS]
        if original:
            cases += [(k, space, shape, None) for k in ("original SSIM", "original Watson-dct",
                                                        "original Watson-fft", "original Adaptive")]
    shape = (b, 3, 64, 64)
    for net in ("squeeze", "alex", "vgg"):
        cases += [(f"lpips.{net}", "rgb", shape, None), (f"lpips-{net}", "rgb", shape, f"lpips.{net}")]
    cases += [("deeploss-squeeze", "rgb", shape, None)]
    shape = (4 if quick else 128, 3, 192, 192)
    cases += [("L2 (torch)", "rgb", shape, None), ("pytorch_msssim.ms_ssim", "rgb", shape, None),
              ("ms-ssim", "rgb", shape, "pytorch_msssim.ms_ssim")]
    # last: a capture that fails could leave the device unusable for the rows after it
    for space, c in (("rgb", 3), ("grey", 1)):
        shape = (b, c, 64, 64)
        cases += [("L2 (torch)", space, shape, None)]
        cases += [(f"{k} [{GRAPH_TAG}]", space, shape, k) for k in GRAPHED]
        if compiled:
            cases += [(f"{k} [{COMPILE_TAG}]", space, shape, k) for k in GRAPHED]
    return cases


def _verdict(key: str, row: dict, done: dict) -> tuple[str, str]:
    target = TARGETS.get(key)
    if target is None or not row.get("ms_per_iter"):
        return "", ""
    if "x L2" in target:
        if row.get("ratio_to_l2") is None:
            return target, "n/a"
        ok = row["ratio_to_l2"] <= float(target.split("x")[0].split()[-1])
    elif key == "ssim":
        peers = [done.get(("pytorch_msssim.ssim", row["colorspace"], row["shape"])),
                 done.get(("original SSIM", row["colorspace"], row["shape"]))]
        ok = all(p is None or row["ms_per_iter"] <= p for p in peers)
    else:
        peer = done.get((row["peer"], row["colorspace"], row["shape"]))
        ok = None if peer is None else row["ms_per_iter"] <= peer
    return target, "n/a" if ok is None else "pass" if ok else "FAIL"


def finalise(path: Path) -> None:
    """Recompute the ratios, speed-ups and verdicts of ``bench.csv`` once every row is there (a verdict
    compares with rows measured after it, e.g. SSIM with the original's)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    done = {(r["metric"], r["colorspace"], r["shape"]): float(r["ms_per_iter"]) for r in rows if r["ms_per_iter"]}
    for r in rows:
        if not r["ms_per_iter"]:
            continue
        row = {k: v for k, v in r.items()}
        row["ms_per_iter"] = float(r["ms_per_iter"])
        row["ratio_to_l2"] = float(r["ratio_to_l2"]) if r["ratio_to_l2"] else None
        if r["peer"] and (r["peer"], r["colorspace"], r["shape"]) in done:
            r["speedup_vs_peer"] = f"{done[(r['peer'], r['colorspace'], r['shape'])] / row['ms_per_iter']:.6g}"
        if row["ratio_to_l2"] is not None:
            r["time_target"], r["time_verdict"] = _verdict(r["metric"], row, done)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def run_bench(device: torch.device, out: Path, quick: bool, original: str | None, repeats: int, log,
              only: set[str] | None = None, compile_backend: str | None = None) -> None:
    candidates = dict(CANDIDATES) | _check_mode_candidates() | _graphed_candidates()
    if compile_backend:
        candidates |= _compiled_candidates(compile_backend)
    if original:
        candidates.update(_original_candidates(original))
    handle, writer = _writer(out / "bench.csv", FIELDS)
    done: dict[tuple, float] = {}
    l2: dict[str, float] = {}
    for key, space, shape, peer in _cases(quick, bool(original), bool(compile_backend)):
        if only is not None and key not in only:
            continue
        shape_s = "x".join(map(str, shape))
        cand = candidates[key]
        row = {"metric": key, "group": cand.group, "colorspace": space, "shape": shape_s, "peer": peer,
               "implementation": cand.implementation}
        try:
            row |= time_case(cand, space, shape, device, repeats)
        except Exception as err:  # noqa: BLE001
            row["note"] = f"skipped: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]
        ms = row.get("ms_per_iter")
        if ms:
            done[(key, space, shape_s)] = ms
            if key == "L2 (torch)":
                l2[shape_s] = ms
            row["ratio_to_l2"] = ms / l2[shape_s] if shape_s in l2 else None
            if peer and (peer, space, shape_s) in done:
                row["speedup_vs_peer"] = done[(peer, space, shape_s)] / ms
                try:
                    same_metric = key.endswith((f"[{GRAPH_TAG}]", f"[{COMPILE_TAG}]"))
                    compare = graph_parity if same_metric else parity_between
                    row["max_abs_diff_vs_peer"] = compare(candidates[key], candidates[peer], space, shape[2:], device)
                except Exception as err:  # noqa: BLE001
                    row["note"] = f"{row.get('note', '')}; parity failed: {type(err).__name__}: {err}"[:400]
            row["time_target"], row["time_verdict"] = _verdict(key, row, done)
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        handle.flush()
        log(f"bench {key} {space} {shape_s}: {row.get('ms_per_iter')} ms, x L2 {row.get('ratio_to_l2')} "
            f"{row.get('note', '')}")
    handle.close()
    finalise(out / "bench.csv")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", required=True)
    p.add_argument("--quick", action="store_true", help="batch 16: the same code path in a minute on CPU")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--original", help="the original repository's src/loss folder: time its losses too")
    p.add_argument("--skip-parity", action="store_true")
    p.add_argument("--skip-bench", action="store_true")
    p.add_argument("--only", help="comma-separated metric keys: run only these rows (tests)")
    p.add_argument("--compile", nargs="?", const="inductor", metavar="BACKEND",
                   help="also time SSIM, Watson and Adaptive under torch.compile (default backend inductor; "
                        "compiling takes minutes, so not in the default run)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = machine_info(device) | {"command": " ".join(["benchmarks/bench_gpu.py", *(argv or sys.argv[1:])])}
    (out / "machine.json").write_text(json.dumps(info, indent=2) + "\n")

    def log(msg):
        print(msg, flush=True)

    only = {k.strip() for k in args.only.split(",")} if args.only else None
    t0 = time.time()
    if not args.skip_parity:
        parity(device, out, log, only)
    log(f"parity done in {time.time() - t0:.0f} s")
    if not args.skip_bench:
        run_bench(device, out, args.quick, args.original, args.repeats, log, only, args.compile)
    log(f"bench done in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
