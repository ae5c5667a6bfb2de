"""LPIPS speed: percept's LPIPS against the ``lpips`` 0.1.4 package on the same weights.

For lpips-squeeze, lpips-alex and lpips-vgg, forward (no autograd) and forward+backward (the input
requires grad, as in a training loss), on N x 3 x 64 x 64 batches (N = 64; 16 with ``--quick``). The
variants are timed in interleaved repetitions (peer, ours, ours+cache, then the reverse order, ...);
``ours_ms`` and ``peer_ms`` are medians, ``ratio`` is the median over repetitions of peer time / our time in
the same repetition (> 1: ours is faster; robust to the load of a shared machine drifting). Before timing,
the outputs of both are compared (``max_abs_diff``).

ImageNet trunk weights are used where this machine has them (SqueezeNet 1.1 in the asset folder);
otherwise both implementations get the same random trunk, which does not change the timing (the
network and the arithmetic are the same). The output says which.

Extra rows: ``+cache`` (ours with ``cache_target=True`` and a target fixed across calls, the situation
of a reconstruction loss against fixed data), and with ``--compile`` ``+compile`` (the backbone wrapped
in ``torch.compile``; compile time excluded, reported separately).

    python benchmarks/bench_deep.py [--quick] [--threads 2] [--reps 9] [--compile]

Expected runtime on 2 CPU cores: about 1 minute with --quick, 5-10 minutes without.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import warnings

import torch

from percept import assets
from percept.backbones import build_backbone
from percept.metrics.deep import LPIPS

NETS = ("squeeze", "alex", "vgg")


def _peer(net: str, state: dict):
    import lpips

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
    for name, slice_ in ref.net.named_children():
        if name.startswith("slice"):
            for idx, module in slice_.named_children():
                module.load_state_dict({k.split(".", 1)[1]: v for k, v in state.items() if k.split(".")[0] == idx})
    return ref.eval()


def _trunk_state(net: str) -> tuple[dict, str]:
    try:
        return build_backbone(net).body.state_dict(), "imagenet"
    except assets.MissingAssetError:
        torch.manual_seed(0)
        return build_backbone(net, weights="random").body.state_dict(), "random"


def _time(fns: dict, reps: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median milliseconds per callable, and the median over repetitions of each callable's time relative
    to the "peer" callable timed in the same repetition (robust to slow changes of the machine's load).
    Repetitions are interleaved and alternate their order; one warm-up call each first."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    keys = list(fns)
    for rep in range(reps):
        for k in keys if rep % 2 == 0 else keys[::-1]:
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
    ratios = {k: statistics.median(p / o for p, o in zip(times["peer"], v)) for k, v in times.items()}
    return ms, ratios


def run(quick: bool, *, reps: int | None = None, threads: int = 2, compile: bool = False) -> list[dict]:
    """Rows with keys metric, mode, ours_ms, peer_ms, ratio, max_abs_diff, trunk, batch."""
    torch.set_num_threads(threads)
    n = 16 if quick else 64
    reps = reps or (3 if quick else 9)
    torch.manual_seed(0)
    x, y = torch.rand(n, 3, 64, 64), torch.rand(n, 3, 64, 64)
    rows = []
    for net in NETS:
        state, trunk = _trunk_state(net)
        peer = _peer(net, state)
        ours = LPIPS(net=net, backbone_weights=state, reduction="none")
        cached = LPIPS(net=net, backbone_weights=state, reduction="none", cache_target=True)
        variants = {"": ours, "+cache": cached}
        if compile:
            comp = LPIPS(net=net, backbone_weights=state, reduction="none")
            with torch.no_grad():
                comp(x, y)  # eager first: the backbone settles its per-layer memory formats before tracing
            comp.backbone.compile()
            variants["+compile"] = comp
        with torch.no_grad():
            want = peer(x, y, normalize=True).flatten()
            diffs = {k: (m(x, y) - want).abs().max().item() for k, m in variants.items()}

        def forward(m, is_peer):
            with torch.no_grad():
                return m(x, y, normalize=True) if is_peer else m(x, y)

        def backward(m, is_peer):
            xg = x.clone().requires_grad_(True)
            d = m(xg, y, normalize=True) if is_peer else m(xg, y)
            d.sum().backward()

        for mode, step in (("forward", forward), ("forward+backward", backward)):
            fns = {"peer": lambda s=step, p=peer: s(p, True)}
            for k, m in variants.items():
                fns[k] = lambda s=step, m=m: s(m, False)
            if compile:  # compile (and warm) outside the timed region
                t0 = time.perf_counter()
                fns["+compile"]()
                compile_s = time.perf_counter() - t0
            ms, ratios = _time(fns, reps)
            for k in variants:
                rows.append(
                    {
                        "metric": f"lpips-{net}{k}",
                        "mode": mode,
                        "ours_ms": round(ms[k], 2),
                        "peer_ms": round(ms["peer"], 2),
                        "ratio": round(ratios[k], 3),
                        "max_abs_diff": diffs[k],
                        "trunk": trunk,
                        "batch": n,
                        **({"compile_s": round(compile_s, 1)} if k == "+compile" else {}),
                    }
                )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="batch 16, 3 repetitions (about a minute)")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per variant (default 9; 3 quick)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--compile", action="store_true", help="also time a torch.compile'd backbone")
    args = parser.parse_args(argv)
    rows = run(args.quick, reps=args.reps, threads=args.threads, compile=args.compile)
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, threads {torch.get_num_threads()}, "
        f"batch {rows[0]['batch']}x3x64x64, medians of interleaved repetitions; ratio = lpips package / ours (median per repetition)"
    )
    random = sorted({r["metric"].split("+")[0] for r in rows if r["trunk"] == "random"})
    if random:
        print(f"random trunk weights (ImageNet weights not on this machine; timing does not depend on them): {random}")
    print(f"{'metric':22s} {'mode':17s} {'ours ms':>9s} {'peer ms':>9s} {'ratio':>6s} {'max|diff|':>9s}")
    for r in rows:
        extra = f"  (compile {r['compile_s']} s)" if "compile_s" in r else ""
        print(
            f"{r['metric']:22s} {r['mode']:17s} {r['ours_ms']:9.1f} {r['peer_ms']:9.1f} {r['ratio']:6.2f} "
            f"{r['max_abs_diff']:9.1e}{extra}"
        )


if __name__ == "__main__":
    main()
