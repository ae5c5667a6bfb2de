"""The E-LPIPS transformation ensemble's *distribution*, pinned to lpips_elpips.md D3 (the original's
``sample_ensemble``): every parameter takes exactly the values the spec lists, with the spec's frequencies, both
from :func:`sample_transform` and from the draws the metric actually applies (``ELPIPS.sample_distances``).

Each test draws with fixed seeds; the tolerances are about 5 standard errors (or chi-square / Kolmogorov-Smirnov
p-values of 1e-4), so a correct sampler passes and a sampler whose range or frequencies are off by one value
fails by far. Planted bugs this file fails on (checked): offsets drawn in [0, 6] or [0, 8] instead of [0, 7];
the transposition never drawn; merged draws losing their transposition."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy import stats

from percept.metrics import elpips as E
from percept.metrics.elpips import COLOR_MIN, ELPIPS, OFFSET_MAX, Transform, sample_transform

_DIHEDRAL = 8  # 4 flip codes x transposed or not


def _draws(batch: int, count: int, seed: int, **kwargs) -> list[Transform]:
    g = torch.Generator().manual_seed(seed)
    return [sample_transform(batch, generator=g, **kwargs) for _ in range(count)]


def _uniform_pvalue(values: np.ndarray, k: int) -> float:
    """Chi-square p-value of integer ``values`` against the uniform distribution on 0 .. k-1 (every value
    outside that range makes the test fail outright)."""
    assert values.min() >= 0 and values.max() < k, (values.min(), values.max())
    counts = np.bincount(values, minlength=k)
    return float(stats.chisquare(counts).pvalue)


# ------------------------------------------------------------------------------------------------ shifts
def test_shift_offsets_are_uniform_on_0_to_7_per_image_and_axis():
    offsets = torch.cat([t.offsets for t in _draws(8, 1500, seed=0)]).numpy()  # (12000, 2)
    assert offsets.dtype == np.int64 and OFFSET_MAX == 7
    for axis in (0, 1):
        values = offsets[:, axis]
        assert set(np.unique(values).tolist()) == set(range(8))  # every value of [0, 7], nothing else
        freq = np.bincount(values, minlength=8) / len(values)
        np.testing.assert_allclose(freq, np.full(8, 1 / 8), atol=0.015)
        assert _uniform_pvalue(values, 8) > 1e-4
    # (oy, ox) jointly uniform on the 64 cells: the axes are drawn independently
    assert _uniform_pvalue(offsets[:, 0] * 8 + offsets[:, 1], 64) > 1e-4
    # per image, not per batch: the images of one draw get different shifts
    same = [bool((t.offsets == t.offsets[0]).all()) for t in _draws(8, 200, seed=1)]
    assert sum(same) == 0


def test_every_image_grows_by_offset_max_and_each_offset_is_where_the_spec_puts_it():
    """Reflect-pad 7 - o before and o after: an offset o moves the image content by 7 - o pixels, so a draw
    of offsets 0 and 7 moves it by 7 and by 0 (checked on a coordinate image)."""
    h, w = 20, 24
    rows = torch.arange(h, dtype=torch.float64).view(1, 1, h, 1).expand(1, 3, h, w)
    for oy, ox in ((0, 0), (7, 7), (3, 5)):
        t = Transform(1, offsets=torch.tensor([[oy, ox]]))
        out = E.apply_transform(rows.clone(), t)
        assert out.shape[-2:] == (h + OFFSET_MAX, w + OFFSET_MAX)
        top = OFFSET_MAX - oy  # the first source row sits below 7 - oy padding rows
        assert out[0, 0, top, 0].item() == 0 and out[0, 0, top + h - 1, 0].item() == h - 1


# ------------------------------------------------------------------------------------ flips, transpose
def test_transpose_is_drawn_with_probability_one_half_once_per_draw():
    draws = _draws(5, 4000, seed=2)
    flags = np.array([t.transpose for t in draws])
    assert flags.dtype == bool
    assert abs(flags.mean() - 0.5) < 0.04  # 4000 draws: standard error 0.008
    # one draw for the whole batch: a bool, not a per-image tensor
    assert all(isinstance(t.transpose, bool) for t in draws[:20])
    # independent of the flips (the 8 symmetries of the square are equally likely)
    single = _draws(1, 6000, seed=3)
    element = np.array([int(t.flips[0]) * 2 + int(t.transpose) for t in single])
    assert _uniform_pvalue(element, _DIHEDRAL) > 1e-4
    np.testing.assert_allclose(np.bincount(element, minlength=8) / len(element), np.full(8, 1 / 8), atol=0.02)


@pytest.mark.parametrize("batch", [1, 3, 4, 7])
def test_flip_codes_are_uniform_and_stratified(batch):
    draws = _draws(batch, 2000 // batch + 200, seed=4 + batch)
    codes = torch.cat([t.flips for t in draws]).numpy()
    assert _uniform_pvalue(codes, 4) > 1e-4
    for t in draws[:50]:  # 0..3 repeated to cover the batch: no code twice before every code once
        counts = np.bincount(t.flips.numpy(), minlength=4)
        assert counts.max() - counts.min() <= 1


# ----------------------------------------------------------------------------------------------- colour
@pytest.mark.parametrize("batch", [1, 5, 6])
def test_channel_permutations_are_the_six_uniformly_and_stratified(batch):
    draws = _draws(batch, 3000 // batch + 200, seed=10 + batch)
    perms = torch.cat([t.permutations for t in draws])
    table = {p: i for i, p in enumerate(itertools.permutations(range(3)))}
    index = np.array([table[tuple(p)] for p in perms.tolist()])
    assert _uniform_pvalue(index, 6) > 1e-4
    for t in draws[:50]:
        counts = np.bincount([table[tuple(p)] for p in t.permutations.tolist()], minlength=6)
        assert counts.max() - counts.min() <= 1


@pytest.mark.parametrize("mode", ["color", "brightness"])
def test_colour_factors_are_uniform_on_0_2_to_1(mode):
    draws = _draws(1, 3000, seed=20, color_mode=mode)
    factors = torch.cat([t.colors for t in draws]).double().numpy()  # (3000, 3)
    assert factors.min() >= COLOR_MIN == 0.2 and factors.max() < 1
    u = (factors - 0.2) / 0.8
    for c in range(3):
        assert stats.kstest(u[:, c], "uniform").pvalue > 1e-4
    if mode == "color":  # the channels are drawn independently
        assert abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 0.1
    else:
        assert np.array_equal(factors[:, 0], factors[:, 2])


# ------------------------------------------------------------------------------------------------ scale
def test_scale_offset_is_uniform_on_0_to_s_minus_1():
    draws = [t for t in _draws(2, 6000, seed=30, scale_levels=4, transforms=("scale",)) if t.scale > 1]
    for s in (2, 3, 4):
        offsets = np.array([t.scale_offset for t in draws if t.scale == s])
        assert len(offsets) > 150
        for axis in (0, 1):
            assert set(np.unique(offsets[:, axis]).tolist()) == set(range(s))
            assert _uniform_pvalue(offsets[:, axis], s) > 1e-4


# ----------------------------------------------------------------------------------- the metric's draws
@pytest.fixture(scope="module")
def metric() -> ELPIPS:
    return ELPIPS(net="squeeze", pretrained=False, reduction="none")


def test_the_metric_applies_draws_with_the_spec_distribution(metric, monkeypatch):
    """What ``ELPIPS.sample_distances`` hands to the image transformation (after grouping and merging draws)
    follows the same distribution: all six transformations on, transposition half of the time, shifts on
    [0, 7], and every compared image under the same draw as its reference."""
    applied: list[tuple[int, Transform]] = []
    original = E.apply_transform

    def record(x, t):
        applied.append((x.shape[0], t))
        return original(x, t)

    monkeypatch.setattr(E, "apply_transform", record)
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        metric.sample_distances((x, x.flip(-1)), y, n=600, generator=torch.Generator().manual_seed(0))
    assert metric.transforms == frozenset(E.TRANSFORMS)
    batches = [t.batch for _, t in applied]
    assert sum(batches) == 600 * 2  # every draw of 2 images once
    for rows, t in applied:
        assert rows == 3 * t.batch  # x, x.flip and the reference stacked: one draw for the three
        assert t.offsets is not None and t.flips is not None and t.permutations is not None and t.colors is not None
    transposed = sum(t.batch for _, t in applied if t.transpose) / sum(batches)
    assert abs(transposed - 0.5) < 0.06  # 600 draws: standard error 0.02
    offsets = torch.cat([t.offsets for _, t in applied]).numpy().ravel()
    assert set(np.unique(offsets).tolist()) == set(range(8))
    assert _uniform_pvalue(offsets, 8) > 1e-4
