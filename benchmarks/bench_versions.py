"""CPU speed of this checkout's metrics against an earlier version of the library, side by side in one run.

Ratios to torch's L2 (``make bench``) move with the machine: on a shared 2-core machine L2 itself varies
by half between runs. A regression check therefore times both versions in the same run, interleaved:
each round starts one process per version (the order alternating between rounds), and each process times
one training step (sigmoid, loss, backward, SGD) of every case on the same saved inputs, each step timed on
its own. The verdict compares the 10th percentile of each side's steps, pooled over the rounds, and passes a
case when this checkout is at most 10% slower there. Noise only ever adds time, so a low percentile is what
the code needs; a percentile of many steps moves less between runs than the fastest round's mean (a few
dozen steps), which an earlier version of this check used. Both are reported, with the medians.

    python benchmarks/bench_versions.py --base b97de10 --out results/bench/versions
    python benchmarks/bench_versions.py --base /path/to/other/lib --quick     # a folder holding percept/

``--base`` is a git revision (its ``lib/`` is extracted with ``git archive``) or a folder that holds the
``percept`` package. Only ``percept.get_metric`` is used, so any version with that API can be timed.

``--host-proxy`` times the same steps on tiny inputs (2 images of 16x16, one thread) in the GPU
configuration (``strategy="batched"``; Adaptive untrained at 16x16, MS-SSIM left out: it needs 161 px).
There the arithmetic is a few microseconds per operation and what is timed is the host's share of a
step: Python, the dispatcher and the operations' bookkeeping, which is what a launch-bound GPU step waits
for. It is a CPU-side estimate of how a change moves GPU time, not a GPU measurement (a CUDA launch adds
its own cost per kernel, counted by the operation-count tests).

    python benchmarks/bench_versions.py --base 689d49b --host-proxy --out results/bench/versions_host
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: (label, metric, options, colorspace, batch, size): the percept rows of ``make bench`` (MS-SSIM on 32 images)
CASES = [
    (f"{label} {space}", name, options, space, 128, 64)
    for space in ("rgb", "grey")
    for label, name, options in (
        ("l2", "l2", {}),
        ("ssim", "ssim", {}),
        ("watson-dct", "watson-dct", {"deterministic": True}),
        ("watson-dct (shift)", "watson-dct", {"deterministic": False}),
        ("watson-dft", "watson-dft", {"deterministic": True}),
        ("watson-dft (shift)", "watson-dft", {"deterministic": False}),
        ("adaptive", "adaptive", {}),
    )
] + [("ms-ssim rgb 192px", "ms-ssim", {}, "rgb", 32, 192)]

#: this checkout may be this much slower than the base before a case fails
TOLERANCE = 1.10

#: the host proxy's batch and image side (see ``--host-proxy`` in the module docstring)
HOST_PROXY_BATCH, HOST_PROXY_SIZE = 2, 16


def host_proxy_cases(cases: list) -> list:
    """``cases`` made tiny and put in the GPU configuration (MS-SSIM dropped: its smallest side is 161)."""
    out = []
    for label, name, options, space, _, _ in cases:
        if name == "ms-ssim":
            continue
        options = dict(options)
        if name != "l2":
            options["strategy"] = "batched"
        if name == "adaptive":  # the pretrained weights exist for 64x64 only; the same operations at 16x16
            options.update(pretrained=False, image_size=HOST_PROXY_SIZE)
        out.append([label, name, options, space, HOST_PROXY_BATCH, HOST_PROXY_SIZE])
    return out


# --------------------------------------------------------------------------------------------------- worker
def worker(inputs_path: str, cases: list, min_seconds: float) -> dict[str, list[float]]:
    """Milliseconds of each timed training step of each case, with whatever ``percept`` is importable (one process)."""
    import warnings

    import torch

    import percept

    warnings.simplefilter("ignore")
    inputs = torch.load(inputs_path)
    out = {}
    for label, name, options, space, batch, size in cases:
        logits, target = (t[:batch] for t in inputs[f"{space}-{size}"])
        metric = percept.get_metric(name, colorspace=space, reduction="sum", **options)
        p = logits.clone().requires_grad_(True)
        opt = torch.optim.SGD([p], lr=1e-3)

        draws = options.get("deterministic") is False  # reseeding costs ~80 us: only where a shift is drawn

        def step(metric=metric, p=p, opt=opt, target=target, draws=draws):
            opt.zero_grad(set_to_none=True)
            if draws:
                torch.manual_seed(0)  # the same random shift in both versions
            metric(torch.sigmoid(p), target).backward()
            opt.step()

        step()
        t0 = time.perf_counter()
        step()
        iters = max(1, round(min_seconds / max(time.perf_counter() - t0, 1e-6)))
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1e3)
        out[label] = times
    return out


# --------------------------------------------------------------------------------------------------- driver
def base_lib(base: str, workdir: Path) -> tuple[Path, str]:
    """The folder to put on PYTHONPATH for ``base`` (a folder, or a git revision extracted there), and its name."""
    path = Path(base)
    if (path / "percept" / "__init__.py").is_file():
        return path.resolve(), str(path)
    if (path / "lib" / "percept" / "__init__.py").is_file():
        return (path / "lib").resolve(), str(path)
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", f"{base}^{{commit}}"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout.strip()
        archive = subprocess.run(["git", "archive", rev, "lib"], cwd=ROOT, check=True, capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        detail = getattr(err, "stderr", b"") or b""
        detail = detail.decode(errors="replace") if isinstance(detail, bytes) else str(detail)
        raise SystemExit(f"--base {base!r} is neither a folder holding percept/ nor a git revision here: "
                         f"{detail.strip() or err}") from None
    subprocess.run(["tar", "-x", "-C", str(workdir)], input=archive, check=True)
    return workdir / "lib", rev


def head_name() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True, capture_output=True,
                             text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "lib"], cwd=ROOT, check=True,
                               capture_output=True, text=True).stdout.strip()
        return rev + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "this checkout"


def save_inputs(path: Path, cases: list) -> None:
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_losses import celeba_batch

    inputs = {}
    for _, _, _, space, batch, size in cases:
        key = f"{space}-{size}"
        if key in inputs and inputs[key][0].shape[0] >= batch:
            continue
        target = celeba_batch(batch, size, space)[0]
        logits = torch.randn(target.shape, generator=torch.Generator().manual_seed(0))
        inputs[key] = (logits, target)
    torch.save(inputs, path)


def run_side(lib: Path, inputs: Path, cases_file: Path, min_seconds: float, threads: int | None) -> dict:
    """One process timing every case with the ``percept`` found in ``lib`` (checked: not another copy)."""
    env = {**os.environ, "PYTHONPATH": str(lib)}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", str(inputs), str(cases_file),
                           str(min_seconds)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"timing with {lib} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if Path(result["percept"]).resolve().parent.parent != Path(lib).resolve():
        raise SystemExit(f"the process for {lib} imported percept from {result['percept']}")
    return result["ms"]


#: the percentile of the pooled step times that the verdict compares
VERDICT_QUANTILE = 0.10


def quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values``, linearly interpolated between the sorted values."""
    v = sorted(values)
    pos = q * (len(v) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def compare(base: dict[str, list], head: dict[str, list]) -> list[dict]:
    """One row per case; ``base[label]`` and ``head[label]`` hold one list of step times (ms) per round."""
    rows = []
    for label in head:
        b_rounds, h_rounds = base[label], head[label]
        b = [statistics.fmean(r) for r in b_rounds]  # each round's mean step
        h = [statistics.fmean(r) for r in h_rounds]
        b_q = quantile([t for r in b_rounds for t in r], VERDICT_QUANTILE)
        h_q = quantile([t for r in h_rounds for t in r], VERDICT_QUANTILE)
        ratio_q = h_q / b_q
        rows.append({"case": label, "base_ms_min": f"{min(b):.4g}", "head_ms_min": f"{min(h):.4g}",
                     "base_ms_median": f"{statistics.median(b):.4g}", "head_ms_median": f"{statistics.median(h):.4g}",
                     "head_over_base_min": f"{min(h) / min(b):.3f}",
                     "head_over_base_median": f"{statistics.median(h) / statistics.median(b):.3f}",
                     "base_step_ms_p10": f"{b_q:.4g}", "head_step_ms_p10": f"{h_q:.4g}",
                     "head_over_base_step_p10": f"{ratio_q:.3f}",
                     "steps": sum(len(r) for r in h_rounds), "rounds": len(h_rounds),
                     "verdict": "pass" if ratio_q <= TOLERANCE else "FAIL"})
    return rows


def main(argv=None) -> int:
    if argv is None and len(sys.argv) == 5 and sys.argv[1] == "--worker":  # one side's timing process
        import percept

        cases = json.loads(Path(sys.argv[3]).read_text())
        print(json.dumps({"percept": percept.__file__, "ms": worker(sys.argv[2], cases, float(sys.argv[4]))}))
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, help="git revision, or a folder holding the percept package")
    p.add_argument("--rounds", type=int, default=6, help="interleaved rounds per version (default 6)")
    p.add_argument("--quick", action="store_true", help="batch 8, MS-SSIM 4, short timings (a smoke test)")
    p.add_argument("--only", help="comma-separated case labels (e.g. 'l2 rgb,adaptive grey')")
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS for both sides (default: torch's choice; "
                   "1 with --host-proxy)")
    p.add_argument("--host-proxy", action="store_true",
                   help="tiny inputs, GPU configuration: the host's share of a step (see the module docstring)")
    p.add_argument("--out", help="write versions.csv and versions.json into this folder")
    args = p.parse_args(argv)

    cases = [list(c) for c in CASES]
    if args.only:
        wanted = {s.strip() for s in args.only.split(",")}
        unknown = wanted - {c[0] for c in cases}
        if unknown:
            raise SystemExit(f"unknown case(s) {sorted(unknown)}; known: {[c[0] for c in cases]}")
        cases = [c for c in cases if c[0] in wanted]
    if args.host_proxy:
        cases = host_proxy_cases(cases)
        if not cases:
            raise SystemExit("--host-proxy leaves no case (MS-SSIM is not timed there)")
        args.threads = args.threads or 1
    elif args.quick:
        for c in cases:
            c[4] = 4 if c[1] == "ms-ssim" else 8
    min_seconds = 0.05 if args.quick else 0.4

    with tempfile.TemporaryDirectory(prefix="percept-versions-") as tmp:
        tmp = Path(tmp)
        base_path, base_label = base_lib(args.base, tmp)
        inputs = tmp / "inputs.pt"
        save_inputs(inputs, cases)
        cases_file = tmp / "cases.json"
        cases_file.write_text(json.dumps(cases))
        sides = {"base": (base_path, {}), "head": (ROOT / "lib", {})}
        for r in range(args.rounds):
            for side in (("base", "head") if r % 2 == 0 else ("head", "base")):
                lib, times = sides[side]
                for label, ms in run_side(lib, inputs, cases_file, min_seconds, args.threads).items():
                    times.setdefault(label, []).append(ms)
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    rows = compare(sides["base"][1], sides["head"][1])
    head_label = head_name()
    print(f"{'case':24s} {base_label:>12s} {head_label:>14s}  ratio (step p10; fastest round; median round)")
    for row in rows:
        print(f"{row['case']:24s} {row['base_step_ms_p10']:>10s}ms {row['head_step_ms_p10']:>12s}ms  "
              f"{row['head_over_base_step_p10']} ; {row['head_over_base_min']} ; {row['head_over_base_median']}  "
              f"{row['verdict']}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "versions.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        import torch

        meta = {"base": base_label, "head": head_label, "rounds": args.rounds, "quick": args.quick,
                "host_proxy": args.host_proxy,
                "shape": (f"{HOST_PROXY_BATCH}xCx{HOST_PROXY_SIZE}x{HOST_PROXY_SIZE}" if args.host_proxy
                          else "per case"),
                "tolerance": TOLERANCE, "verdict": f"step time quantile {VERDICT_QUANTILE}",
                "machine": platform.processor() or platform.machine(),
                "cpus": os.cpu_count(), "threads": args.threads or torch.get_num_threads(),
                "torch": torch.__version__, "python": platform.python_version(),
                "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (out / "versions.json").write_text(json.dumps(meta, indent=2) + "\n")
    return 0 if all(r["verdict"] == "pass" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
