"""experiments/vae_mnist/ambiguity.py: the expected loss of candidate outputs for ambiguous digit pairs."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from scripts import load_script

import percept
from percept.data.mnist import load_mnist


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("ambiguity")
    module = load_script("experiments/vae_mnist/ambiguity.py", "vae_ambiguity")
    assert module.main(["--quick", "--out", str(out)]) == 0
    with open(out / "ambiguity.csv") as f:
        rows = {(r["loss"], r["candidate"]): r for r in csv.DictReader(f)}
    pairs = json.loads((out / "ambiguity.json").read_text())["pairs"]
    return module, out, rows, pairs


def _pair_images(pairs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    test = load_mnist("test")
    return test.images(pairs["first"]), test.images(pairs["second"])


def test_l2_rows_follow_from_the_algebra(quick):
    """For L2 the average costs |a - b|^2 / 4 per pixel, the union and a single digit exactly twice that."""
    module, out, rows, pairs = quick
    assert {loss for loss, _ in rows} == {"l2", "watson-dft (paper)"}
    assert {c for _, c in rows} == set(module.CANDIDATES)
    test = load_mnist("test")
    a, b = _pair_images(pairs)
    assert all(test.labels[i] != test.labels[j] for i, j in zip(pairs["first"], pairs["second"], strict=True))
    assert all(int(test.labels[i]) in module.ROUND_DIGITS for i in pairs["first"] + pairs["second"])
    want = ((a - b) ** 2).mean().item() / 4
    assert float(rows[("l2", "average")]["expected_loss"]) == pytest.approx(want, rel=1e-4)
    for cand in ("union", "one digit"):
        assert float(rows[("l2", cand)]["relative_to_average"]) == pytest.approx(2.0, rel=1e-4)
    assert float(rows[("l2", "blurred average")]["relative_to_average"]) > 1


def test_watson_rows_are_the_metrics_values(quick):
    """Watson-DFT's expected loss of the union is the paper-style metric's, recomputed here on the same pairs."""
    module, out, rows, pairs = quick
    a, b = _pair_images(pairs)
    metric = percept.get_metric("watson-dft", colorspace="grey", reduction="none", style="paper",
                                image_shape=(1, 32, 32), deterministic=True)  # fmt: skip
    union = torch.maximum(a, b)
    with torch.no_grad():
        want = ((metric(union, a) + metric(union, b)) / 2).mean().item()
    assert float(rows[("watson-dft (paper)", "union")]["expected_loss"]) == pytest.approx(want, rel=1e-5)
    # blur costs Watson far more than it costs L2 (the finding of the full run holds on 16 pairs too)
    blur_watson = float(rows[("watson-dft (paper)", "blurred average")]["relative_to_average"])
    assert blur_watson > float(rows[("l2", "blurred average")]["relative_to_average"])
    assert (out / "ambiguity.png").stat().st_size > 0


def test_bad_arguments_are_refused(capsys):
    module = load_script("experiments/vae_mnist/ambiguity.py", "vae_ambiguity")
    with pytest.raises(SystemExit):
        module.parse_args(["--losses", "l2,watsn"])
    assert "unknown watsn" in capsys.readouterr().err
