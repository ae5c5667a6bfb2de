"""experiments/adversarial_robustness/run.py: the quick run end to end, and its numbers recomputed from the saved
images by independent code (numpy for L2 and PSNR, a freshly built metric for the others)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "experiments" / "adversarial_robustness" / "run.py"
BOGUS = "no-such-metric"


def _load_run():
    return load_script(RUN, "adversarial_run")


@pytest.fixture(scope="module")
def run_module():
    return _load_run()


def _have_photos(run_module) -> bool:
    try:
        return all(run_module.photo_path(name).is_file() for name in run_module.QUICK_PHOTOS)
    except FileNotFoundError:
        return False


@pytest.fixture(scope="module")
def quick(run_module, tmp_path_factory):
    """One --quick run (every default metric plus an unknown one, which must be skipped with a reason)."""
    if not _have_photos(run_module):
        pytest.skip("needs the E-LPIPS photographs: set PERCEPT_ASSETS to the offline asset folder")
    out = tmp_path_factory.mktemp("adversarial")
    metrics = ",".join(list(run_module.METRICS) + [BOGUS])
    argv = ["--quick", "--out", str(out), "--no-progress", "--metrics", metrics, "--all-images"]
    assert run_module.main(argv) == 0
    return out


ATTACK_COLUMNS = {
    "reference", "source", "metric", "eps", "d_honest", "d_source", "d_adv", "ratio", "ratio_source", "ci_honest",
    "ci_adv", "diff", "ci_diff", "fooled", "fooled_confident", "psnr_adv_ref", "psnr_honest_ref", "psnr_source_ref",
    "mse_adv_ref", "rms_adv_source", "linf_adv_source", "visibly_different", "success", "stochastic", "samples",
    "steps", "seconds",
}
TRANSFER_COLUMNS = {
    "reference", "source", "attack", "eps", "judge", "d_adv", "d_honest", "ratio", "fooled", "fooled_confident",
    "ci_adv", "ci_honest", "diff", "ci_diff", "samples", "psnr_adv_ref",
}


def test_quick_run_writes_every_file(quick):
    for name in ("attacks.csv", "transfer.csv", "summary.csv", "transfer_success.csv", "transfer_ratio.csv",
                 "skipped.csv", "images.npz", "machine.json", "attacks.png", "barycenter.npz", "barycenter.csv"):
        assert (quick / name).is_file(), name
    attacks, transfer = pd.read_csv(quick / "attacks.csv"), pd.read_csv(quick / "transfer.csv")
    assert ATTACK_COLUMNS <= set(attacks.columns)
    assert TRANSFER_COLUMNS <= set(transfer.columns)
    machine = json.loads((quick / "machine.json").read_text())
    for key in ("torch", "device", "torch_threads"):
        assert key in machine
    protocol = machine["run"]["protocol"]
    for key in ("patch", "honest", "attack", "success", "stochastic"):
        assert protocol[key]
    # every (attack, eps) crafted an image for every (reference, source) pair, judged by every metric
    metrics = list(dict.fromkeys(attacks.metric))
    pairs = attacks[["reference", "source"]].drop_duplicates()
    assert len(attacks) == len(pairs) * len(metrics) * attacks.eps.nunique()
    assert len(transfer) == len(pairs) * len(metrics) * (1 + len(metrics) * attacks.eps.nunique())
    assert (attacks.reference != attacks.source).all()


def test_skipped_metrics_have_reasons(quick):
    skipped = pd.read_csv(quick / "skipped.csv", keep_default_na=False)
    assert list(skipped.columns) == ["kind", "name", "reason"]
    assert BOGUS in set(skipped.name)
    assert (skipped.reason.str.len() > 10).all()
    machine = json.loads((quick / "machine.json").read_text())
    assert BOGUS in machine["run"]["skipped_metrics"]
    attacked = set(pd.read_csv(quick / "attacks.csv").metric)
    assert BOGUS not in attacked
    assert attacked | set(skipped.name[skipped.kind == "metric"]) >= {BOGUS, "l2", "lpips-squeeze"}


def test_machine_json_says_which_backbone_each_metric_used(quick):
    metrics = json.loads((quick / "machine.json").read_text())["run"]["metrics"]
    assert metrics["l2"]["backbone"] == "none"
    assert metrics["lpips-squeeze"]["backbone"] == "ImageNet squeezenet1_1 (squeezenet1_1_features.pth)"
    for label in ("lpips-alex", "dps-alex", "dps-alex-sort", "dps-alex-mean"):  # the real AlexNet, not a random one
        assert metrics[label]["backbone"] == "ImageNet alexnet (alexnet_features.pth)", label


def _images(folder: Path):
    data = np.load(folder / "images.npz")
    return data, {k: data[k].astype(np.float64) / 255 for k in data.files if data[k].dtype == np.uint8}


def test_l2_and_psnr_recomputed_with_numpy(quick):
    """The L2 rows and every PSNR, recomputed from the saved 8-bit images with numpy alone."""
    data, img = _images(quick)
    attacks = pd.read_csv(quick / "attacks.csv")
    eps_list = [float(e) for e in data["eps"]]
    for row in attacks.itertuples():
        i = next(k for k, (r, s) in enumerate(zip(data["reference_names"], data["source_names"]))
                 if (r, s) == (row.reference, row.source))
        adv = img[f"adv__{row.metric}__eps{row.eps:g}"][i]
        ref, honest, src = img["reference"][i], img["honest"][i], img["source"][i]
        mse_adv = np.mean((adv - ref) ** 2)
        assert row.mse_adv_ref == pytest.approx(mse_adv, rel=1e-4)
        assert row.psnr_adv_ref == pytest.approx(10 * math.log10(1 / mse_adv), abs=1e-3)
        assert row.psnr_honest_ref == pytest.approx(10 * math.log10(1 / np.mean((honest - ref) ** 2)), abs=1e-3)
        assert row.linf_adv_source == pytest.approx(np.abs(adv - src).max(), abs=1e-6)
        assert row.eps in eps_list
        assert np.abs(adv - src).max() <= row.eps + 1e-9  # the budget holds after rounding to 8 bits
        if row.metric == "l2":
            d_h = np.mean((honest - ref) ** 2)
            assert row.d_adv == pytest.approx(mse_adv, rel=1e-4)
            assert row.d_honest == pytest.approx(d_h, rel=1e-4)
            assert bool(row.fooled) == (mse_adv < d_h)
        assert bool(row.visibly_different) == (row.psnr_adv_ref < 20.0)
        assert bool(row.success) == (bool(row.fooled) and bool(row.visibly_different))


@pytest.mark.parametrize("label", ["ssim", "watson-dft", "lpips-squeeze", "dps-squeeze-sort"])
def test_rows_recomputed_with_a_fresh_metric(quick, run_module, label):
    """d_A(x, r), d_A(h, r) and the success criterion of one metric's rows, recomputed from images.npz."""
    import percept

    attacks = pd.read_csv(quick / "attacks.csv")
    rows = attacks[attacks.metric == label]
    if rows.empty:
        pytest.skip(f"{label} was skipped in this environment")
    data, img = _images(quick)
    spec = run_module.METRICS[label]
    metric = percept.get_metric(spec.registry, colorspace="rgb", reduction="none", **spec.options).eval()
    names = list(zip(data["reference_names"], data["source_names"]))
    for row in rows.itertuples():
        i = names.index((row.reference, row.source))

        def t(key, i=i):
            return torch.from_numpy(img[key][i : i + 1]).permute(0, 3, 1, 2).float()

        with torch.no_grad():
            d_adv = float(metric(t(f"adv__{label}__eps{row.eps:g}"), t("reference"))[0])
            d_h = float(metric(t("honest"), t("reference"))[0])
            d_s = float(metric(t("source"), t("reference"))[0])
        assert row.d_adv == pytest.approx(d_adv, rel=1e-3, abs=1e-6)
        assert row.d_honest == pytest.approx(d_h, rel=1e-3, abs=1e-6)
        assert row.d_source == pytest.approx(d_s, rel=1e-3, abs=1e-6)
        assert bool(row.fooled) == (d_adv < d_h)
        assert bool(row.success) == (d_adv < d_h and row.psnr_adv_ref < 20.0)


def test_stochastic_rows_have_error_bars(quick):
    attacks = pd.read_csv(quick / "attacks.csv")
    stochastic = attacks[attacks.stochastic == 1]
    if stochastic.empty:
        pytest.skip("E-LPIPS is not available in this environment")
    assert (stochastic.samples >= 10).all()
    assert (stochastic.ci_adv > 0).all() and (stochastic.ci_honest > 0).all() and (stochastic.ci_diff > 0).all()
    assert ((stochastic["diff"] < 0) == (stochastic.fooled == 1)).all()
    deterministic = attacks[attacks.stochastic == 0]
    assert (deterministic.ci_adv == 0).all() and (deterministic.samples == 1).all()


def test_transfer_matrix_and_summary_agree_with_the_rows(quick):
    transfer = pd.read_csv(quick / "transfer.csv")
    attacks = pd.read_csv(quick / "attacks.csv")
    success = pd.read_csv(quick / "transfer_success.csv")
    for _, row in success.iterrows():  # (judge names have hyphens: not namedtuple fields)
        cell = transfer[(transfer.attack == row["attack"]) & (transfer.eps == row["eps"])]
        for judge, value in row.items():
            if judge in ("attack", "eps"):
                continue
            assert value == pytest.approx(cell[cell.judge == judge].fooled.mean(), abs=1e-6)
    # the diagonal of the transfer table is the attack table
    for row in attacks.itertuples():
        t = transfer[(transfer.attack == row.metric) & (transfer.eps == row.eps) & (transfer.judge == row.metric)
                     & (transfer.reference == row.reference) & (transfer.source == row.source)]
        assert len(t) == 1
        assert t.d_adv.iloc[0] == pytest.approx(row.d_adv, rel=1e-5)
    summary = pd.read_csv(quick / "summary.csv")
    for s in summary.itertuples():
        rows = attacks[(attacks.metric == s.metric) & (attacks.eps == s.eps)]
        assert s.success_rate == pytest.approx(rows.success.mean(), abs=1e-6)


def test_barycenter_demo(quick):
    bary = np.load(quick / "barycenter.npz")
    table = pd.read_csv(quick / "barycenter.csv")
    assert {"a", "b", "average", "l2"} <= set(bary.files)
    assert bary["l2"].shape == bary["a"].shape
    # under L2, d(x,a)^2 + d(x,b)^2 is minimised by the pixel average, where the attack starts: it stays there
    assert np.abs(bary["l2"].astype(int) - bary["average"].astype(int)).max() <= 1
    assert set(table.method) >= {"l2"}


def test_attack_without_budget_reaches_the_reference(run_module):
    """With no budget, minimising L2 from another image converges to the reference: L2 is fooled then."""
    import argparse

    g = torch.Generator().manual_seed(0)
    ref, src = run_module.quantise(torch.rand(2, 3, 16, 16, generator=g)).chunk(2)
    metric = run_module.Metric("l2", run_module.METRICS["l2"], torch.device("cpu"))
    args = argparse.Namespace(seed=0, lr=0.05, steps=150, elpips_attack_samples=1, no_progress=True)
    adv, _ = run_module.attack(metric, ref, src, 0.0, args)
    assert float(metric(adv, ref)) < 1e-4
    bounded, _ = run_module.attack(metric, ref, src, 0.1, args)
    assert float((bounded - src).abs().max()) <= 0.1 + 1e-6
    assert float(metric(bounded, ref)) > float(metric(adv, ref))


def test_bad_arguments_are_refused(run_module):
    with pytest.raises(SystemExit):
        run_module.parse_args(["--size", "60"])
    with pytest.raises(SystemExit):
        run_module.parse_args(["--eps", "-0.1"])
    args = run_module.parse_args(["--quick", "--eps", "0.2,0.05"])
    assert args.eps == [0.05, 0.2]


def test_images_of_the_largest_budget_only_by_default(run_module, tmp_path):
    """Without --all-images, images.npz holds the adversarial images the figures show (largest budget)."""
    if not _have_photos(run_module):
        pytest.skip("needs the E-LPIPS photographs: set PERCEPT_ASSETS to the offline asset folder")
    assert run_module.main(["--quick", "--out", str(tmp_path), "--no-progress", "--metrics", "l2"]) == 0
    data = np.load(tmp_path / "images.npz")
    eps = [float(e) for e in data["eps"]]
    assert len(eps) > 1
    assert sorted(k for k in data.files if k.startswith("adv__")) == [f"adv__l2__eps{max(eps):g}"]
    assert len(pd.read_csv(tmp_path / "attacks.csv").eps.unique()) == len(eps)  # every budget was still attacked
