"""E-LPIPS barycenters (``percept.elpips_tools``, ``percept pairwise-average`` / ``percept barycenter``):
the reference's ``ex_pairwise_average.py`` and ``ex_bary10.py`` (spec lpips_elpips.md D6).

Checked against plain computations written here from the reference scripts: the learning-rate formula, the
checkpoint list, numpy's reflect padding for the shifted copies, the closed-form minimisers of the L2
objectives (the pixel average of two images; the centre of symmetric constant copies), and the files the
commands write. E-LPIPS itself runs on SqueezeNet (offline weights) on tiny images.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from percept import cli
from percept import elpips_tools as tools
from percept.metrics.elpips import ELPIPS
from percept.metrics.pixel import L2


def _ref_lr(step: int, base: float = 0.03) -> float:
    # the reference: tf_step = sqrt(100^2 + step^2) - 100; lr = base / (1 + 0.02 * tf_step ** 0.75)
    s = np.sqrt(np.float64(100.0) ** 2 + np.float64(step) ** 2) - 100.0
    return float(base / (1.0 + 0.02 * s**0.75))


def test_learning_rate_is_the_reference_schedule():
    for step in (0, 1, 10, 99, 100, 1000, 12345, 100000):
        assert tools.learning_rate(step) == pytest.approx(_ref_lr(step), rel=1e-12)
        assert tools.learning_rate(step, 0.5) == pytest.approx(_ref_lr(step, 0.5), rel=1e-12)
    assert tools.learning_rate(0) == 0.03
    # between 1/t and 1/sqrt(t) late on: decays as t^-0.75
    ratio = tools.learning_rate(80000) / tools.learning_rate(20000)
    assert ratio == pytest.approx(4**-0.75, rel=0.02)
    with pytest.raises(ValueError):
        tools.learning_rate(-1)


def test_checkpoint_steps_match_the_reference_list():
    early = [0, 1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200, 300, 400, 600, 900, 1200, 1500]
    want = sorted(set(early + list(range(2000, 100001, 500)) + [100000]))
    assert tools.checkpoint_steps(100000) == want
    assert tools.checkpoint_steps(12) == [0, 1, 2, 3, 5, 7, 10, 12]
    assert tools.checkpoint_steps(2250) == early + [2000, 2250]
    assert tools.checkpoint_steps(0) == [0]


def test_initial_image_is_clipped_gaussian():
    g = torch.Generator().manual_seed(3)
    x = tools.initial_image((1, 3, 64, 64), g)
    want = (0.5 + 0.2 * torch.randn((1, 3, 64, 64), generator=torch.Generator().manual_seed(3))).clamp(1e-5, 1 - 1e-5)
    torch.testing.assert_close(x, want, rtol=0, atol=0)
    lo, hi = np.float32(1e-5), np.float32(1 - 1e-5)
    assert x.min().numpy() >= lo and x.max().numpy() <= hi and (x == lo).any()
    assert abs(float(x.mean()) - 0.5) < 0.01 and abs(float(x.std()) - 0.2) < 0.01


def _numpy_shift(src: np.ndarray, dy: int, dx: int) -> np.ndarray:
    # the reference's ex_bary10.py on an NHWC array
    n, h, w, c = src.shape
    image = src[:, max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx), :]
    return np.pad(image, ((0, 0), (max(0, dy), max(0, -dy)), (max(0, dx), max(0, -dx)), (0, 0)), "reflect")


def test_shift_image_equals_numpy_reflect_padding():
    rng = np.random.default_rng(0)
    src = rng.random((1, 9, 11, 3)).astype(np.float32)
    x = torch.from_numpy(src).permute(0, 3, 1, 2)
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            got = tools.shift_image(x, dy, dx).permute(0, 2, 3, 1).numpy()
            np.testing.assert_array_equal(got, _numpy_shift(src, dy, dx), err_msg=f"shift ({dy}, {dx})")
    with pytest.raises(ValueError):
        tools.shift_image(x, 9, 0)


def test_perturbed_copies():
    rng = np.random.default_rng(1)
    src = torch.from_numpy(rng.uniform(0.2, 0.8, (1, 3, 24, 24)).astype(np.float32))
    copies, info = tools.perturbed_copies(src, 40, "shift", generator=torch.Generator().manual_seed(0))
    assert copies.shape == (40, 3, 24, 24)
    seen = set()
    for i, item in enumerate(info):
        dy, dx = item["dy"], item["dx"]
        assert -2 <= dy <= 2 and -2 <= dx <= 2
        seen.add((dy, dx))
        want = _numpy_shift(src.permute(0, 2, 3, 1).numpy(), dy, dx)
        np.testing.assert_array_equal(copies[i : i + 1].permute(0, 2, 3, 1).numpy(), want)
    assert len(seen) > 12  # uniform over the 25 shifts, not a constant
    noisy, info = tools.perturbed_copies(src, 10, "noise", generator=torch.Generator().manual_seed(0))
    residual = (noisy - src).numpy()
    assert abs(residual.std() - 0.07) < 0.005 and abs(residual.mean()) < 0.005  # no clipping in [0.2, 0.8]
    assert not np.allclose(residual[0], residual[1])  # fresh noise per copy
    src[0, 0, 0, 0] = 0.999
    clipped, _ = tools.perturbed_copies(src, 50, "noise", noise_scale=0.5, generator=torch.Generator().manual_seed(1))
    assert float(clipped.min()) == 0.0 and float(clipped.max()) == 1.0
    with pytest.raises(ValueError, match="perturbation"):
        tools.perturbed_copies(src, 2, "blur")
    with pytest.raises(ValueError, match="count"):
        tools.perturbed_copies(src, 0, "noise")


def _random_image(seed: int, size: int = 8) -> torch.Tensor:
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_pairwise_average_under_l2_is_the_pixel_average():
    """d(a, x)^2 + d(b, x)^2 with d = mean squared error is stationary at (a + b) / 2 only."""
    a, b = _random_image(0), _random_image(1)
    result = tools.pairwise_average(a, b, L2(reduction="none"), steps=1500, seed=0)
    assert float((result.image - (a + b) / 2).abs().max()) < 0.01
    assert result.history[0]["step"] == 0 and result.history[-1]["step"] == 1500
    assert [r["step"] for r in result.history] == tools.checkpoint_steps(1500)
    minimum = 2 * (float((a - b).square().mean()) / 4) ** 2  # at the average, each mse is mse(a, b) / 4
    assert result.history[-1]["loss"] == pytest.approx(minimum, rel=1e-3)
    assert result.history[0]["loss"] > 2 * minimum
    torch.testing.assert_close(result.initial, tools.initial_image(a.shape, torch.Generator().manual_seed(0)))


def test_barycenter_of_random_copies_under_l2():
    """Constant copies 0.2, 0.4, 0.6, 0.8: E[(x - v)^4] over a uniform copy is minimal at x = 0.5, and the
    stochastic choice of copy per step must be uniform to get there."""
    values = torch.tensor([0.2, 0.4, 0.6, 0.8])
    copies = values.view(4, 1, 1, 1).expand(4, 3, 8, 8).contiguous()
    result = tools.perturbed_barycenter(copies, L2(reduction="none"), steps=3000, seed=0)
    assert abs(float(result.image.mean()) - 0.5) < 0.03
    assert float(result.image.std()) < 0.03


class _Spy(torch.nn.Module):
    """Records how the optimisers call an E-LPIPS-like metric; the distance is a plain L2."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def sample_distances(self, images, reference, *, n, generator):
        self.calls.append((len(images), [im.requires_grad for im in images], reference.requires_grad, n))
        d = torch.stack([(im - reference).square().mean(dim=(1, 2, 3)) for im in images])
        return d.unsqueeze(0)


def test_one_shared_draw_per_step_with_x_as_reference_in_the_pair():
    spy = _Spy()
    tools.pairwise_average(_random_image(0), _random_image(1), spy, steps=3, seed=0)
    assert spy.calls == [(2, [False, False], True, 1)] * 4  # steps + 1 evaluations, a tuple against x
    spy.calls.clear()
    tools.perturbed_barycenter(torch.cat([_random_image(0), _random_image(1)]), spy, steps=2, seed=0)
    assert spy.calls == [(1, [True], False, 1)] * 3  # x is the input, a copy the reference


@pytest.fixture(scope="module")
def photos(assets_dir) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's example pair (cat.png, dog.png), area-downscaled to 32 x 32."""
    from percept.io import read_image

    folder = assets_dir / "data" / "images" / "elpips"
    if not folder.is_dir():
        pytest.skip(f"no {folder}")
    images = [read_image(folder / f"{name}.png", colorspace="rgb") for name in ("cat", "dog")]
    return tuple(torch.nn.functional.interpolate(x, size=(32, 32), mode="area") for x in images)


def _objective(metric: ELPIPS, x, a, b, draws: int = 128) -> float:
    """E[d(a, x)^2 + d(b, x)^2] estimated with shared draws (the same draws for every x)."""
    with torch.no_grad():
        d = metric.sample_distances((a, b), x, n=draws, generator=torch.Generator().manual_seed(123))
    return float(d.square().sum(dim=1).mean())


def test_elpips_pairwise_average_lowers_the_expected_objective(photos):
    a, b = photos
    metric = ELPIPS(net="squeeze", reduction="none", scale_levels=1)
    result = tools.pairwise_average(a, b, metric, steps=150, seed=0)
    assert _objective(metric, result.image, a, b) < 0.5 * _objective(metric, result.initial, a, b)
    # from the pixel average (a good start: E-LPIPS is "perceptually convex"), smaller steps improve on it
    average = ((a + b) / 2).clamp(1e-5, 1 - 1e-5)
    result = tools.pairwise_average(a, b, metric, steps=100, seed=0, init=average, base_lr=0.003)
    assert _objective(metric, result.image, a, b) < 0.95 * _objective(metric, average, a, b)


def test_scale_levels_option():
    assert tools.scale_levels_option("1", 512, 512) == 1
    assert tools.scale_levels_option("auto", 512, 400) == 6
    assert tools.scale_levels_option("auto", 64, 64) == 1
    assert tools.scale_levels_option("auto", 2000, 2000) == 8
    for bad in ("0", "x", "-3"):
        with pytest.raises(ValueError):
            tools.scale_levels_option(bad, 64, 64)


# ------------------------------------------------------------------------------------------------- CLI
def _png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(np.clip(np.rint(array * 255), 0, 255).astype(np.uint8)).save(path)
    return path


def _load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255


def _run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def images(tmp_path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    smooth = np.linspace(0.1, 0.9, 32)
    a = np.stack([np.add.outer(smooth, smooth) / 2] * 3, axis=2) + 0.05 * rng.standard_normal((32, 32, 3))
    b = rng.uniform(0.2, 0.8, (32, 32, 3))
    return {"a": _png(tmp_path / "a.png", np.clip(a, 0, 1)), "b": _png(tmp_path / "b.png", b),
            "small": _png(tmp_path / "small.png", b[:16, :16]), "odd": _png(tmp_path / "odd.png", b[:30])}


def test_cli_pairwise_average_writes_the_reference_files(capsys, images, tmp_path):
    out = tmp_path / "bary2"
    code, stdout, err = _run(capsys, "pairwise-average", images["a"], images["b"], "-m", "elpips-squeeze",
                             "--steps", 12, "-o", out, "--seed", 4, "--save-every", 10)
    assert code == 0, err
    assert "000012.png" in stdout
    for name in ("src_image.png", "dest_image.png", "initial_image.png", "log.csv", "run.json",
                 "save_000000.npy", "save_000010.npy", "save_000012.npy"):
        assert (out / name).is_file(), name
    steps = tools.checkpoint_steps(12)
    assert sorted(p.name for p in out.glob("0*.png")) == [f"{s:06d}.png" for s in steps]
    np.testing.assert_array_equal(_load(out / "src_image.png"), _load(images["a"]))
    np.testing.assert_array_equal(_load(out / "dest_image.png"), _load(images["b"]))
    init = tools.initial_image((1, 3, 32, 32), torch.Generator().manual_seed(4))[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(_load(out / "initial_image.png"), init, atol=0.5 / 255 + 1e-6)
    np.testing.assert_allclose(_load(out / "000000.png"), init, atol=0.5 / 255 + 1e-6)
    final = np.load(out / "save_000012.npy")
    assert final.shape == (32, 32, 3) and final.dtype == np.float32
    assert final.min() >= np.float32(1e-5) and final.max() <= np.float32(1 - 1e-5)
    np.testing.assert_allclose(_load(out / "000012.png"), final, atol=0.5 / 255 + 1e-6)
    with open(out / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == steps
    for r in rows:
        assert float(r["learning_rate"]) == pytest.approx(_ref_lr(int(r["step"])), rel=1e-6)
        assert math.isfinite(float(r["loss"])) and float(r["loss"]) > 0
    info = json.loads((out / "run.json").read_text())
    assert info["command"] == "pairwise-average" and info["metric"] == "elpips-squeeze"
    assert info["steps"] == 12 and info["metric_options"] == {"scale_levels": "1"} and "machine" in info


def test_cli_barycenter_writes_copies_and_their_mean(capsys, images, tmp_path):
    out = tmp_path / "bary10"
    code, stdout, err = _run(capsys, "barycenter", images["a"], "--mode", "shift", "--count", 4, "-m",
                             "elpips-squeeze", "--steps", 3, "-o", out)
    assert code == 0, err
    info = json.loads((out / "run.json").read_text())
    assert info["command"] == "barycenter" and info["mode"] == "shift" and len(info["copies"]) == 4
    src = _load(images["a"])[None]
    inputs = []
    for i, item in enumerate(info["copies"]):
        got = _load(out / f"input{i:02d}.png")
        np.testing.assert_allclose(got, _numpy_shift(src, item["dy"], item["dx"])[0], atol=1e-12)
        inputs.append(got)
    np.testing.assert_allclose(_load(out / "input_mean.png"), np.mean(inputs, axis=0), atol=0.5 / 255 + 1e-9)
    assert (out / "000003.png").is_file() and (out / "save_000003.npy").is_file()

    out = tmp_path / "noise"
    code, _, err = _run(capsys, "barycenter", images["b"], "--mode", "noise", "--count", 3, "--noise-scale", 0.1,
                        "-m", "l2", "--steps", 2, "-o", out)
    assert code == 0, err
    residual = np.stack([_load(out / f"input{i:02d}.png") for i in range(3)]) - _load(images["b"])[None]
    assert 0.08 < residual.std() < 0.12


def test_cli_scale_levels_reach_elpips(capsys, tmp_path, monkeypatch):
    big = _png(tmp_path / "big.png", np.random.default_rng(0).random((130, 140, 3)))
    seen = {}
    real = tools.write_pairwise_average

    def spy(a, b, metric, outdir, **kw):
        seen["levels"] = metric.scale_levels
        return real(a, b, metric, outdir, **{**kw, "steps": 0})

    monkeypatch.setattr(tools, "write_pairwise_average", spy)
    code, _, err = _run(capsys, "pairwise-average", big, big, "-m", "elpips-squeeze", "--scale-levels", "auto",
                        "-o", tmp_path / "o")
    assert code == 0, err
    assert seen["levels"] == 2
    code, _, err = _run(capsys, "pairwise-average", big, big, "-m", "elpips-squeeze", "-o", tmp_path / "o")
    assert code == 0 and seen["levels"] == 1


@pytest.mark.parametrize(
    "argv, status, message",
    [
        (["pairwise-average", "{a}", "{b}", "--steps", "-1"], 2, "--steps"),
        (["pairwise-average", "{a}", "{b}", "--lr", "0"], 2, "--lr"),
        (["pairwise-average", "{a}", "{b}", "-m", "elpips-squeeze", "--scale-levels", "0"], 2, "scale levels"),
        (["pairwise-average", "{a}", "{odd}", "-m", "elpips-squeeze"], 1, "differ in size"),
        (["pairwise-average", "{small}", "{small}", "-m", "elpips-squeeze"], 1, "small.png"),
        (["pairwise-average", "{a}", "{tmp}/missing.png"], 1, "missing.png"),
        (["pairwise-average", "{a}", "{b}", "-m", "nope"], 2, "unknown metric"),
        (["barycenter", "{a}", "--mode", "noise", "--count", "0"], 2, "--count"),
        (["barycenter", "{a}", "--mode", "noise", "--noise-scale", "-1"], 2, "--noise-scale"),
        (["barycenter", "{a}", "--mode", "noise", "-o", "{a}"], 1, "not a folder"),
    ],
)
def test_cli_bad_input_is_a_clear_error(capsys, images, tmp_path, argv, status, message):
    argv = [a.format(tmp=tmp_path, **{k: str(v) for k, v in images.items()}) for a in argv]
    if "--steps" not in argv:
        argv += ["--steps", "0"]
    if "-o" not in argv:
        argv += ["-o", str(tmp_path / "out")]
    code, out, err = _run(capsys, *argv)
    assert code == status, (code, err)
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not list((tmp_path / "out").glob("0*.png"))


@pytest.mark.parametrize("argv", [["--mode", "wobble"], []])
def test_cli_barycenter_needs_a_known_mode(capsys, images, argv):
    with pytest.raises(SystemExit) as info:
        cli.main(["barycenter", str(images["a"]), *argv])
    assert info.value.code == 2
    assert "--mode" in capsys.readouterr().err
