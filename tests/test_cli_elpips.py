"""``percept dist`` and ``percept estimate`` with E-LPIPS (spec lpips_elpips.md D4).

The printed numbers are checked against statistics computed here with numpy from per-draw distances that
the metric gives for the same seed (``ELPIPS.sample_distances`` with a generator seeded as ``--seed``), and
the stopping rule of ``estimate`` is re-implemented here from the spec (1.96 * std(ddof=1) / sqrt(n) against
the absolute and the relative bound, checked after each batch once 10 samples are in). E-LPIPS-SqueezeNet on
the 64x64 LPIPS example patches keeps this fast and offline.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from percept import cli, estimation
from percept.metrics.elpips import ELPIPS


@pytest.fixture(scope="module")
def files(assets_dir) -> dict[str, Path]:
    folder = assets_dir / "data" / "images" / "lpips_examples"
    if not folder.is_dir():
        pytest.skip(f"no {folder}")
    return {k: folder / f"ex_{k}.png" for k in ("ref", "p0", "p1")}


@pytest.fixture(scope="module")
def squeeze() -> ELPIPS:
    return ELPIPS(net="squeeze", reduction="none").eval()


def _tensor(path: Path) -> torch.Tensor:
    array = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


DIST = re.compile(r"^(\S+) ± (\S+) \(standard error over (\d+) draws, seed (-?\d+)\)$")


def _parse_dist(out: str) -> tuple[float, float, int]:
    match = DIST.match(out.strip())
    assert match, out
    return float(match[1]), float(match[2]), int(match[3])


def _mean_se(values) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v)))


# ------------------------------------------------------------------------------------------------ dist
def test_dist_defaults_to_200_draws(capsys, files, monkeypatch):
    """Counted at the metric: every draw goes through sample_distances; mean and s.e. are of those draws."""
    calls, drawn = [], []

    def fake(self, images, reference, *, n=None, generator=None):
        k = 1 if isinstance(images, torch.Tensor) else len(images)
        values = torch.rand(n, k, reference.shape[0], generator=generator, dtype=torch.float64)
        calls.append(n)
        drawn.extend(values[:, 0, 0].tolist())
        return values

    monkeypatch.setattr(ELPIPS, "sample_distances", fake)
    code, out, err = run(capsys, "dist", files["ref"], files["p0"], "-m", "elpips-squeeze")
    assert code == 0, err
    mean, se, n = _parse_dist(out)
    assert sum(calls) == 200 == n and len(set(drawn)) == 200  # no chunk repeats another one's draws
    want_mean, want_se = _mean_se(drawn)
    assert mean == pytest.approx(want_mean, rel=1e-7) and se == pytest.approx(want_se, rel=1e-3)

    calls.clear()
    code, out, _ = run(capsys, "dist", files["ref"], files["p0"], "-m", "elpips-squeeze", "-n", "7")
    assert code == 0 and sum(calls) == 7 and _parse_dist(out)[2] == 7


def test_dist_standard_error_matches_the_metric_draws(capsys, files, squeeze):
    n, seed = 20, 5
    assert n <= estimation._DISTANCE_CHUNK  # the CLI draws them in one call with a generator seeded by --seed
    code, out, err = run(capsys, "dist", files["ref"], files["p0"], "-m", "elpips-squeeze", "-n", n, "--seed", seed)
    assert code == 0, err
    mean, se, count = _parse_dist(out)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        draws = squeeze.sample_distances(_tensor(files["p0"]), _tensor(files["ref"]), n=n, generator=gen)
    want_mean, want_se = _mean_se(draws[:, 0, 0].double().numpy())
    assert count == n
    assert mean == pytest.approx(want_mean, rel=1e-6)
    assert se == pytest.approx(want_se, rel=1e-3)  # printed with 4 digits; ddof=0 would be 2.6 % off
    assert se > 0

    code, again, _ = run(capsys, "dist", files["ref"], files["p0"], "-m", "elpips-squeeze", "-n", n, "--seed", seed)
    assert again == out
    code, other, _ = run(capsys, "dist", files["ref"], files["p0"], "-m", "elpips-squeeze", "-n", n, "--seed", 6)
    assert _parse_dist(other)[0] != mean


def test_dist_deterministic_elpips_prints_one_value(capsys, files):
    code, out, err = run(capsys, "dist", files["ref"], files["p0"], "-m", "elpips-squeeze",
                         "-O", "deterministic=true", "-n", "5")
    assert code == 0 and "±" not in out and float(out) > 0
    assert "ignored" in err


@pytest.mark.parametrize("n", ["1", "0", "-3"])
def test_dist_needs_two_draws(capsys, files, n):
    code, out, err = run(capsys, "dist", files["ref"], files["p0"], "-m", "elpips-squeeze", "-n", n)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "at least 2" in err


def test_dist_missing_file(capsys, files, tmp_path):
    missing = tmp_path / "nothere.png"
    code, out, err = run(capsys, "dist", files["ref"], missing, "-m", "elpips-squeeze")
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and str(missing) in err


# -------------------------------------------------------------------------------------------- estimate
_ESTIMATE = re.compile(
    r"distance \((?P<name>[\w-]+)\): (?P<mean>\S+)\n"
    r"  ± (?P<abs>\S+) or (?P<rel>\S+) %  \(bounds: 1\.96 standard errors over (?P<n>\d+) samples, seed (?P<seed>-?\d+)\)\n"
    r"  (?P<status>stopped|not converged)"
)


def _parse_estimate(out: str) -> dict:
    match = _ESTIMATE.match(out)
    assert match, out
    return {"mean": float(match["mean"]), "abs": float(match["abs"]), "rel": float(match["rel"]) / 100,
            "n": int(match["n"]), "converged": match["status"] == "stopped"}


def _reference_run(metric, x, y, *, seed, batch, max_samples, abs_err, rel_err, min_samples=10):
    """The spec's ex_evaluate_distance loop: tile the pair into ``batch`` copies, one draw per batch; after each
    batch with >= min_samples samples, stop when 1.96 s.e. < abs_err and < rel_err * mean."""
    gen = torch.Generator().manual_seed(seed)
    values: list[float] = []
    converged = False
    with torch.no_grad():
        while len(values) < max_samples:
            k = min(batch, max_samples - len(values))
            d = metric.sample_distances(x.expand(k, -1, -1, -1), y.expand(k, -1, -1, -1), n=1, generator=gen)
            values.extend(d[0, 0].double().tolist())
            if len(values) >= min_samples:
                mean, se = _mean_se(values)
                if 1.96 * se < abs_err and 1.96 * se < rel_err * mean:
                    converged = True
                    break
    mean, se = _mean_se(values)
    return {"mean": mean, "abs": 1.96 * se, "rel": 1.96 * se / (1e-12 + mean), "n": len(values),
            "converged": converged, "values": values}


def _half_widths(values, batch):
    """(n, 1.96 s.e., relative bound) after each batch, as the stopping rule sees them."""
    out = []
    for n in range(batch, len(values) + 1, batch):
        mean, se = _mean_se(values[:n])
        out.append((n, 1.96 * se, 1.96 * se / mean))
    return out


def test_estimate_bounds_and_stopping_follow_the_spec(capsys, files, squeeze):
    seed, batch, cap = 3, 10, 40
    x, y = _tensor(files["p0"]), _tensor(files["ref"])
    # the whole sequence, to place the bounds so that the rule stops neither at once nor never
    full = _reference_run(squeeze, x, y, seed=seed, batch=batch, max_samples=cap, abs_err=0, rel_err=0)
    steps = _half_widths(full["values"], batch)
    first, later = steps[0], steps[1:]

    cases = {  # label: (abs_err, rel_err, whether the first check, at 10 samples, should stop)
        "absolute": ((first[1] + min(s[1] for s in later)) / 2, 10.0, False),  # abs binds, rel is loose
        "relative": (10.0, (first[2] + min(s[2] for s in later)) / 2, False),  # rel binds, abs is loose
        "loose": (10.0, 10.0, True),
    }
    for label, (abs_err, rel_err, at_first) in cases.items():
        want = _reference_run(squeeze, x, y, seed=seed, batch=batch, max_samples=cap, abs_err=abs_err,
                              rel_err=rel_err)
        assert want["converged"] and (want["n"] == batch) == at_first, label
        code, out, err = run(capsys, "estimate", files["ref"], files["p0"], "-m", "elpips-squeeze", "--seed", seed,
                             "--max-samples", cap, "--abs-err", abs_err, "--rel-err", rel_err)
        assert code == 0, err
        got = _parse_estimate(out)
        assert got["n"] == want["n"] and got["converged"] == want["converged"], label
        assert got["mean"] == pytest.approx(want["mean"], rel=1e-6), label
        assert got["abs"] == pytest.approx(want["abs"], rel=1e-5), label
        assert got["rel"] == pytest.approx(want["rel"], rel=1e-4), label

    # bounds that cannot be met: all samples, reported as not converged with a warning
    code, out, err = run(capsys, "estimate", files["ref"], files["p0"], "-m", "elpips-squeeze", "--seed", seed,
                         "--max-samples", 20, "--abs-err", 1e-9)
    got = _parse_estimate(out)
    assert code == 0 and got["n"] == 20 and not got["converged"] and "not met" in err
    assert got["abs"] == pytest.approx(1.96 * _mean_se(full["values"][:20])[1], rel=1e-5)


def test_estimate_defaults_are_the_originals():
    args = cli.build_parser().parse_args(["estimate", "a.png", "b.png"])
    assert (args.metric, args.abs_err, args.rel_err, args.max_samples, args.min_samples, args.batch_size) == (
        "elpips-vgg", 0.01, 0.025, 5000, 10, 10)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--min-samples", "1"], "at least 2"),
        (["--max-samples", "5"], "--max-samples"),
        (["--abs-err", "0"], "> 0"),
        (["--rel-err", "-1"], "> 0"),
        (["--batch-size", "0"], "--batch-size"),
        (["-m", "l2"], "deterministic"),
        (["-O", "deterministic=true"], "deterministic"),
    ],
)
def test_estimate_usage_errors(capsys, files, extra, message):
    code, out, err = run(capsys, "estimate", files["ref"], files["p0"], "-m", "elpips-squeeze", *extra)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err


def test_estimate_missing_file(capsys, files, tmp_path):
    missing = tmp_path / "nothere.png"
    code, out, err = run(capsys, "estimate", missing, files["p0"], "-m", "elpips-squeeze")
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and str(missing) in err
