"""percept.evaluate: 2AFC score, JND mAP, the harness and 2AFC tuning.

No BAPPS with human judgements is available offline: the folders below are SYNTHETIC, in the BAPPS
layout, built from real patches (asset photographs) with hand-chosen distortion levels and judge / same
values. Expected numbers are computed by hand from those choices, and the score functions are compared
with the LPIPS reference code (``lpips`` 0.1.4).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image
from scripts import load_script

import percept
from percept import evaluate as ev
from percept.assets import locate
from percept.data import bapps
from percept.metrics.watson import WatsonDFT

ROOT = Path(__file__).resolve().parents[1]

# (level of p0, level of p1, judge = fraction choosing p1); p = clip(ref + level * delta)
TRIPLETS = [(0.1, 0.3, 0.2), (0.4, 0.2, 0.6), (0.2, 0.2, 0.4), (0.0, 0.5, 1.0), (0.5, 0.1, 0.8)]
# by hand: d0 < d1 -> 1 - h, d1 < d0 -> h, tie -> 0.5
TRIPLET_SCORES = [0.8, 0.6, 0.5, 0.0, 0.8]
HUMAN = [0.68, 0.52, 0.52, 1.0, 0.68]  # h^2 + (1 - h)^2
# JND: (level of p1 against p0, same); sorted by level the "same" sequence is 1, 2/3, 0, 1/3
PAIRS = [(0.2, 0.0), (0.0, 1.0), (0.3, 1 / 3), (0.1, 2 / 3)]
JND_MAP = 31 / 36  # VOC AP of that sequence, worked out by hand (see test_jnd_map_by_hand)


@pytest.fixture(scope="module")
def refs(assets_dir) -> torch.Tensor:
    """(5, 3, 64, 64) real patches: crops of the E-LPIPS photographs and the LPIPS example reference."""
    out = [bapps.load_patch(assets_dir / "data/images/lpips_examples/ex_ref.png", mode="none")]
    for name, (top, left) in (("cat", (90, 200)), ("dog", (120, 100)), ("adv_teddy", (150, 150)), ("cat", (200, 30))):
        with Image.open(assets_dir / "data" / "images" / "elpips" / f"{name}.png") as im:
            x = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).float() / 255
        out.append(x[:, top : top + 64, left : left + 64])
    return torch.stack(out)


def _distorted(ref: torch.Tensor, level: float, seed: int) -> torch.Tensor:
    delta = torch.randn(ref.shape, generator=torch.Generator().manual_seed(seed)).clamp(-2, 2) * 0.25
    return (ref + level * delta).clamp(0, 1)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, refs) -> Path:
    """A SYNTHETIC BAPPS-layout folder: 2AFC val/traditional + train/mix (TRIPLETS), JND val/traditional (PAIRS)."""
    root = tmp_path_factory.mktemp("bapps_synthetic")
    p0 = [_distorted(refs[i], a, i) for i, (a, _, _) in enumerate(TRIPLETS)]
    p1 = [_distorted(refs[i], b, i) for i, (_, b, _) in enumerate(TRIPLETS)]
    judge = [h for _, _, h in TRIPLETS]
    for split, subset in (("val", "traditional"), ("train", "mix")):
        bapps.write_2afc_subset(root / "2afc" / split / subset, refs, p0, p1, judge)
    bapps.write_jnd_subset(
        root / "jnd" / "val" / "traditional",
        refs[:4],
        [_distorted(refs[i], lv, 10 + i) for i, (lv, _) in enumerate(PAIRS)],
        [s for _, s in PAIRS],
    )
    bapps.mark_synthetic(root, "tests/test_evaluate.py: hand-chosen levels and judges")
    return root


# ------------------------------------------------------------------------------------------- scores
def test_2afc_score_by_hand():
    d0, d1 = [1.0, 2.0, 3.0, 3.0, 7.0], [2.0, 1.0, 3.0, 5.0, 1.0]
    judge = [0.2, 0.6, 0.4, 1.0, 0.8]
    np.testing.assert_allclose(ev.twoafc_scores(d0, d1, judge), TRIPLET_SCORES)
    assert ev.twoafc_score(d0, d1, judge) == pytest.approx(0.54)
    np.testing.assert_allclose(ev.human_agreement(judge), HUMAN)
    with pytest.raises(ValueError, match="NaN"):
        ev.twoafc_scores([math.nan], [1.0], [0.5])


def test_jnd_map_by_hand():
    # same sorted by distance: 1, 0, 1, 0 -> precision 1, 1/2, 2/3, 1/2 at recall 1/2, 1/2, 1, 1;
    # envelope and delta-recall: 1/2 * 1 + 1/2 * 2/3 = 5/6
    assert ev.jnd_map([0.1, 0.2, 0.3, 0.4], [1, 0, 1, 0]) == pytest.approx(5 / 6)
    assert ev.jnd_map([0.4, 0.3, 0.2, 0.1], [0, 1, 0, 1]) == pytest.approx(5 / 6)
    # soft labels 2/3, 1/3, 0: precision 2/3, 1/2, 1/3 at recall 2/3, 1, 1 -> 2/3 * 2/3 + 1/3 * 1/2 = 11/18
    assert ev.jnd_map([1.0, 2.0, 3.0], [2 / 3, 1 / 3, 0]) == pytest.approx(11 / 18)
    # 1, 2/3, 0, 1/3: TP 1, 5/3, 5/3, 2; FP 0, 1/3, 4/3, 2 -> P 1, 5/6, 5/9, 1/2 at R 1/2, 5/6, 5/6, 1
    # -> 1/2 * 1 + 1/3 * 5/6 + 1/6 * 1/2 = 31/36
    assert ev.jnd_map([0.0, 0.1, 0.2, 0.3], [1, 2 / 3, 0, 1 / 3]) == pytest.approx(JND_MAP)


def test_scores_equal_the_lpips_reference_code():
    import lpips
    from lpips import trainer

    class Loader:  # the reference's data-loader interface; func returns the stored distances
        def __init__(self, batches):
            self.batches = batches

        def load_data(self):
            return self.batches

    g = torch.Generator().manual_seed(0)
    n = 300
    d0, d1 = torch.rand(2, n, generator=g).round(decimals=2)  # rounded: ties happen
    judge = torch.randint(0, 6, (n,), generator=g) / 5.0
    batches = [
        {"ref": None, "p0": d0[i : i + 50], "p1": d1[i : i + 50], "judge": judge[i : i + 50]} for i in range(0, n, 50)
    ]
    ref_score, _ = trainer.score_2afc_dataset(Loader(batches), lambda ref, p: p)
    assert ev.twoafc_score(d0, d1, judge) == pytest.approx(ref_score, abs=1e-12)
    # JND with distinct distances (the reference's quicksort leaves the order of ties unspecified)
    d = torch.randperm(n, generator=g).double() / n
    same = torch.randint(0, 4, (n,), generator=g).double() / 3.0
    ref_map, _ = trainer.score_jnd_dataset(Loader([{"p0": None, "p1": d, "same": same}]), lambda a, b: b)
    assert ev.jnd_map(d, same) == pytest.approx(ref_map, abs=1e-12)
    rec, prec = np.sort(np.random.default_rng(0).random(20)), np.random.default_rng(1).random(20)
    assert ev.voc_ap(rec, prec) == pytest.approx(lpips.voc_ap(rec, prec), abs=1e-12)


# ------------------------------------------------------------------------------------------ harness
def test_harness_grey_is_bt601_and_similarities_are_negated(refs):
    x, y = refs[:2], refs[2:4]
    grey = ev.build_metric("l2", "grey")
    luma = lambda t: 0.299 * t[:, 0] + 0.587 * t[:, 1] + 0.114 * t[:, 2]  # noqa: E731
    torch.testing.assert_close(grey(x, y), (luma(x) - luma(y)).square().mean(dim=(1, 2)))
    psnr = ev.build_metric("psnr", "rgb")
    mse = (x - y).square().mean(dim=(1, 2, 3))
    torch.testing.assert_close(psnr(x, y), 10 * torch.log10(mse))  # -PSNR: lower = closer


def test_watson_luminance_per_image_or_pooled_over_the_batch(refs):
    x, y = refs, _distorted(refs, 0.3, 0)
    per_image = ev.build_metric("watson-dft", "grey")
    pooled = ev.build_metric("watson-dft", "grey", batch_luminance=True)
    torch.testing.assert_close(per_image(y[:1], x[:1]), per_image(y, x)[:1])
    torch.testing.assert_close(pooled(y[:1], x[:1]), per_image(y[:1], x[:1]))  # a batch of one: the same
    assert not torch.allclose(pooled(y, x)[:1], pooled(y[:1], x[:1]))  # the original's batch coupling


def test_metric_preferring_the_less_distorted_patch_scores_as_computed_by_hand(folder):
    metrics = {
        ("l2", "rgb"): ev.build_metric("l2", "rgb"),
        ("psnr", "rgb"): ev.build_metric("psnr", "rgb"),
        ("l2", "grey"): ev.build_metric("l2", "grey"),
    }
    result = ev.evaluate_bapps(
        metrics, folder, subsets=["traditional"], jnd_subsets=["traditional"], batch_size=2, progress=False
    )
    scores = {(r["metric"], r["colorspace"]): r["score"] for r in result.scores}
    # every distance metric here ranks the patches by distortion level, so it scores the hand computation
    for key in metrics:
        assert scores[key] == pytest.approx(np.mean(TRIPLET_SCORES), abs=1e-6)
    assert scores[("human", "n/a")] == pytest.approx(np.mean(HUMAN), abs=1e-6)
    maps = {(r["metric"], r["colorspace"]): r["map"] for r in result.jnd}
    for key in metrics:
        assert maps[key] == pytest.approx(JND_MAP, abs=1e-6)
    assert result.counts == {"2afc/val/traditional": 5, "jnd/val/traditional": 4}
    # without the negation PSNR would prefer the more distorted patch: the complement on the non-ties
    raw = percept.get_metric("psnr", reduction="none")
    data = bapps.TwoAFCDataset(folder, "val", "traditional")
    items = [data[i] for i in range(len(data))]
    d0 = [raw(it["p0"][None], it["ref"][None]).item() for it in items]
    d1 = [raw(it["p1"][None], it["ref"][None]).item() for it in items]
    assert ev.twoafc_score(d0, d1, [h for *_, h in TRIPLETS]) == pytest.approx(np.mean([0.2, 0.4, 0.5, 1.0, 0.2]))


# ------------------------------------------------------------------------------------------- tuning
def test_heads():
    import lpips

    ours, theirs = ev.RankingHead(), lpips.Dist2LogitLayer()
    ours.load_state_dict(theirs.state_dict())  # same architecture and keys as the reference
    d0, d1 = torch.rand(7) * 3, torch.rand(7) * 3
    torch.testing.assert_close(ours(d0, d1), theirs(d0.view(-1, 1, 1, 1), d1.view(-1, 1, 1, 1)).view(-1))
    head = ev.WeightedSigmoidHead()
    d0 = torch.tensor([3.0, 0.0, 1.0], requires_grad=True)
    d1 = torch.tensor([1.0, 0.0, 1.0])
    p = head(d0, d1)
    torch.testing.assert_close(p, torch.tensor([1 / (1 + math.exp(-math.e * 0.5)), 0.5, 0.5]))
    p.sum().backward()
    assert torch.isfinite(d0.grad).all() and torch.isfinite(head.w_tild.grad)


def test_learning_rate_schedule():
    watson = [ev.lr_at_epoch(e, 2e-4, 10, 10) for e in range(1, 21)]
    assert watson[:11] == [2e-4] * 11
    np.testing.assert_allclose(watson[11:], [2e-4 * k / 10 for k in range(9, 0, -1)])
    lpips_rates = [ev.lr_at_epoch(e, 1e-4, 5, 5) for e in range(1, 11)]
    np.testing.assert_allclose(lpips_rates, [1e-4] * 6 + [0.8e-4, 0.6e-4, 0.4e-4, 0.2e-4])


def test_one_watson_training_step_end_to_end(folder, tmp_path):
    config = ev.TuneConfig("watson-dft", "rgb", nepoch=1, nepoch_decay=0, batch_size=5, train_subsets=("mix",))
    assert (config.head, config.lr, config.beta1) == ("weighted-sigmoid", 2e-4, 0.5)
    result = ev.tune_2afc(config, folder, tmp_path, progress=False)
    assert [h["epoch"] for h in result["history"]] == [1] and result["history"][0]["triplets"] == 5
    saved = torch.load(result["weights"], map_location="cpu", weights_only=True)
    shipped = torch.load(locate("weights/czolbe/rgb_watson_fft_trial0.pth"), weights_only=True)
    assert {k: tuple(v.shape) for k, v in saved.items()} == {k: tuple(v.shape) for k, v in shipped.items()}
    # the original key format round-trips through WatsonDFT(weights=path)
    loaded = WatsonDFT(weights=str(result["weights"]), reduction="none")
    ckpt = torch.load(result["checkpoint"], weights_only=True)
    torch.testing.assert_close(loaded.t_tild, ckpt["metric"]["metric.t_tild"])
    torch.testing.assert_close(loaded.channel_logits, ckpt["metric"]["metric.channel_logits"])
    untrained = WatsonDFT(pretrained=False)
    assert not torch.equal(loaded.t_tild, untrained.t_tild)  # one Adam step moved every threshold
    assert ckpt["epoch"] == 1 and set(ckpt) >= {"optimizer", "head", "rng", "history", "config"}


def test_one_lpips_training_step_clamps_and_saves_the_lpips_format(folder, tmp_path):
    config = ev.TuneConfig(
        "lpips-squeeze",
        "rgb",
        nepoch=1,
        nepoch_decay=0,
        batch_size=5,
        train_subsets=("mix",),
        backbone_weights="random",
    )
    assert (config.head, config.lr) == ("ranked", 1e-4)
    initial = [c.weight.detach().clone() for c in ev.lin_layers(ev.build_tunable(config).metric)]
    assert any((w < 0).any() for w in initial)  # PyTorch's signed default init, as the reference
    result = ev.tune_2afc(config, folder, tmp_path, progress=False)
    saved = torch.load(result["weights"], weights_only=True)
    channels = [64, 128, 256, 384, 384, 512, 512]
    assert list(saved) == [f"lin{i}.model.1.weight" for i in range(7)]
    assert [tuple(v.shape) for v in saved.values()] == [(1, c, 1, 1) for c in channels]
    assert all((v >= 0).all() for v in saved.values())  # clamped after the step
    metric = percept.get_metric("lpips-squeeze", lin_weights=str(result["weights"]), backbone_weights="random")
    torch.testing.assert_close(metric.distance.lins[3].weight, saved["lin3.model.1.weight"])
    # the trunk is frozen: the step changed only the linear layers (and the head)
    ckpt = torch.load(result["checkpoint"], weights_only=True)
    assert sorted(ckpt["metric"]) == [f"metric.distance.lins.{i}.weight" for i in range(7)]


def test_resume_continues_where_it_stopped(folder, tmp_path):
    config = ev.TuneConfig("watson-dct", "grey", nepoch=1, nepoch_decay=1, batch_size=2, train_subsets=("mix",))
    straight = ev.tune_2afc(config, folder, tmp_path / "a", progress=False)
    ev.tune_2afc(config, folder, tmp_path / "b", progress=False, until_epoch=1)
    resumed = ev.tune_2afc(config, folder, tmp_path / "b", progress=False, resume=True)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    a = torch.load(straight["weights"], weights_only=True)
    b = torch.load(resumed["weights"], weights_only=True)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0)
    other = ev.TuneConfig("watson-dct", "grey", lr=1e-3, nepoch=1, nepoch_decay=1, batch_size=2, train_subsets=("mix",))
    with pytest.raises(ValueError, match="different configuration"):
        ev.tune_2afc(other, folder, tmp_path / "b", progress=False, resume=True)


# ------------------------------------------------------------------------------------------- driver
def _driver():
    return load_script("experiments/2afc/run.py", "run_2afc")


def test_driver_writes_the_csvs_and_says_the_data_are_synthetic(folder, tmp_path):
    run = _driver()
    out = tmp_path / "out"
    args = [
        "--data",
        str(folder),
        "--metrics",
        "l2",
        "ms-ssim",
        "--colorspaces",
        "rgb",
        "--subsets",
        "traditional",
        "--jnd-subsets",
        "traditional",
        "--out",
        str(out),
        "--no-progress",
        "--workers",
        "0",
    ]
    assert run.main(args) == 0
    lines = (out / "scores.csv").read_text().splitlines()
    assert lines[0] == "metric,colorspace,subset,score"
    assert "human,n/a,traditional,0.680000" in lines and "l2,rgb,traditional,0.540000" in lines
    assert (out / "jnd.csv").read_text().splitlines()[0] == "metric,colorspace,subset,map"
    info = json.loads((out / "run.json").read_text())
    assert info["synthetic"] is True and "NOT human" in info["data_note"]
    assert (out / bapps.SYNTHETIC_MARKER).is_file()
    assert "ms-ssim/rgb" in info["evaluation"]["skipped"]  # 64x64 is too small for MS-SSIM: reported, not fatal
    assert "torch" in info["machine"]
    # a second run replaces its own rows and keeps the others; tuned weights replace shipped ones by one flag
    weights = tmp_path / "w"
    weights.mkdir()
    torch.save(WatsonDFT(pretrained=False).original_state_dict(), weights / "rgb_watson_fft_trial0.pth")
    assert run.main(args[:2] + ["--metrics", "watson-dft", "--weights", str(weights)] + args[5:]) == 0
    metrics = {line.split(",")[0] for line in (out / "scores.csv").read_text().splitlines()[1:]}
    assert metrics == {"human", "l2", "watson-dft+tuned"}


def test_driver_scores_the_lpips_papers_lab_baselines(folder, tmp_path):
    """--colorspaces lab: l2 and ssim-skimage compare the patches in CIELAB (the paper's table); metrics
    without a Lab variant are reported as skipped, not fatal. The CSV equals the distances computed here."""
    run = _driver()
    out = tmp_path / "out"
    common = ["--data", str(folder), "--subsets", "traditional", "--jnd-subsets", "--out", str(out)]
    args = ["--metrics", "l2", "ssim-skimage", "psnr", "--colorspaces", "lab", "rgb"] + common
    assert run.main(args + ["--no-progress", "--workers", "0"]) == 0
    rows = {
        tuple(line.split(",")[:2]): float(line.split(",")[3]) for line in (out / "scores.csv").read_text().split()[1:]
    }
    assert {("l2", "lab"), ("ssim-skimage", "lab"), ("ssim-skimage", "rgb"), ("psnr", "rgb")} <= set(rows)
    assert ("psnr", "lab") not in rows
    info = json.loads((out / "run.json").read_text())
    assert "no Lab variant" in info["evaluation"]["skipped"]["psnr/lab"]
    # the lab rows from the metrics applied here to the patches as the loader reads them, scored by hand
    data = bapps.TwoAFCDataset(folder, "val", "traditional")
    items = [data[i] for i in range(len(data))]
    ref, p0, p1 = (torch.stack([item[k] for item in items]) for k in ("ref", "p0", "p1"))
    judge = data.labels()
    for name in ("l2", "ssim-skimage"):
        metric = percept.get_metric(name, colorspace="lab", reduction="none")
        d0, d1 = metric(p0, ref).numpy(), metric(p1, ref).numpy()
        expected = np.mean(np.where(d0 < d1, 1 - judge, np.where(d1 < d0, judge, 0.5)))
        assert rows[(name, "lab")] == pytest.approx(expected, abs=1e-6)
        rgb = percept.get_metric(name, reduction="none")
        assert not np.allclose(rgb(p0, ref).numpy(), d0)  # Lab is not RGB under another name


def test_driver_passes_the_lpips_version_and_weight_choices(folder, tmp_path, refs):
    """--lpips-version, --lpips-baseline and --backbone-weights reach the LPIPS metric and name the rows."""
    run = _driver()
    parser = run.build_parser()
    args = parser.parse_args(
        [
            "--metrics",
            "lpips-squeeze",
            "--colorspaces",
            "rgb",
            "--lpips-version",
            "0.0",
            "--lpips-baseline",
            "--backbone-weights",
            "random",
        ]
    )
    metrics, details, skipped = run._build_all(args, "cpu", ["lpips-squeeze", "l2"], None)
    assert not skipped
    harness = metrics[("lpips-squeeze+v0.0+baseline+random", "rgb")]
    assert harness.metric.version == "0.0" and harness.metric.lin is False
    assert details["lpips-squeeze+v0.0+baseline+random/rgb"]["version"] == "0.0"
    assert ("l2", "rgb") in metrics  # the LPIPS flags leave other metrics alone
    distances = {}
    for flags, label, version in (
        (["--lpips-version", "0.0"], "lpips-squeeze+v0.0", "0.0"),
        ([], "lpips-squeeze", "0.1"),
    ):
        args = parser.parse_args(["--metrics", "lpips-squeeze", "--colorspaces", "rgb"] + flags)
        metrics, _, _ = run._build_all(args, "cpu", ["lpips-squeeze"], None)
        harness = metrics[(label, "rgb")]
        assert harness.metric.version == version and harness.metric.lin is True
        with torch.no_grad():
            distances[version] = harness(refs[1:], refs[:-1])
        expected = percept.get_metric("lpips-squeeze", version=version, reduction="none")(refs[1:], refs[:-1])
        torch.testing.assert_close(distances[version], expected)
    assert not torch.allclose(distances["0.0"], distances["0.1"], rtol=1e-3)  # other weights, other values
    # end to end: both versions' rows side by side in one folder
    out = tmp_path / "out"
    common = [
        "--data",
        str(folder),
        "--metrics",
        "lpips-squeeze",
        "--colorspaces",
        "rgb",
        "--subsets",
        "traditional",
        "--jnd-subsets",
        "traditional",
        "--out",
        str(out),
        "--no-progress",
        "--workers",
        "0",
    ]
    assert run.main(common) == 0 and run.main(common + ["--lpips-version", "0.0"]) == 0
    jnd = {line.split(",")[0]: float(line.split(",")[3]) for line in (out / "jnd.csv").read_text().split()[1:]}
    assert set(jnd) == {"lpips-squeeze", "lpips-squeeze+v0.0"}


def test_driver_tunes_then_scores_the_tuned_weights(folder, tmp_path):
    run = _driver()
    out = tmp_path / "out"
    args = [
        "--train",
        "--data",
        str(folder),
        "--metrics",
        "watson-dft",
        "--colorspaces",
        "grey",
        "--nepoch",
        "1",
        "--nepoch-decay",
        "0",
        "--train-subsets",
        "mix",
        "--subsets",
        "traditional",
        "--jnd-subsets",
        "--out",
        str(out),
        "--no-progress",
        "--workers",
        "0",
    ]
    assert run.main(args) == 0
    weights = out / "tuned" / "weights" / "gray_watson_fft_trial0.pth"
    assert weights.is_file() and (out / "tuned" / "watson-dft_grey" / "checkpoints" / "last.pt").is_file()
    WatsonDFT(colorspace="grey", weights=str(weights))  # loads in the original format
    info = json.loads((out / "run.json").read_text())
    assert info["synthetic"] is True and list(info["tuning"]["runs"]) == ["watson-dft/grey"]
    lines = (out / "scores.csv").read_text().splitlines()
    assert any(line.startswith("watson-dft+tuned,grey,traditional,") for line in lines)
    assert run.main(args + ["--resume"]) == 0  # a finished run resumes to nothing new
    assert json.loads((out / "run.json").read_text())["tuning"]["runs"]["watson-dft/grey"]["final_epoch"]["epoch"] == 1


def test_elpips_2afc_shares_each_random_draw_between_p0_and_p1(refs):
    """E-LPIPS's 2AFC protocol (spec D4) evaluates (p0, p1) against the reference as one correlated tuple: in
    every draw both patches get the same transformation and dropout masks. Identical p0 and p1 therefore tie
    exactly in every triplet (independent draws would make them differ), and the scores of the harness equal
    the metric's own paired estimate."""
    torch.manual_seed(0)
    metric = ev.build_metric("elpips-squeeze", n=3)
    assert metric.metric.stochastic and metric.metric.n == 3
    ref = refs[:4]
    p = _distorted(ref, 0.1, seed=1)
    q = _distorted(ref, 0.2, seed=2)
    judge = torch.full((4,), 0.5)
    loader = [{"ref": ref, "p0": p, "p1": p.clone(), "judge": judge}, {"ref": ref, "p0": p, "p1": q, "judge": judge}]
    with torch.no_grad():
        dists, _ = ev.twoafc_distances({"e": metric}, loader, progress=False)
    d0, d1 = dists["e"]
    assert np.array_equal(d0[:4], d1[:4]) and (d0[:4] > 0).all()
    assert ev.twoafc_score(d0[:4], d1[:4], np.full(4, 0.8)) == 0.5  # every tie scores 0.5
    # the second batch: the same draws as the metric's own sample_distances with the same generator state
    metric.metric.generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        a, b = metric.pair(p, q, ref)
        want = metric.metric.sample_distances((p, q), ref, generator=torch.Generator().manual_seed(7)).mean(0)
    torch.testing.assert_close(torch.stack([a, b]), want)
    # a deterministic metric still scores p0 and p1 in one batch, as before
    l2 = ev.build_metric("l2")
    with torch.no_grad():
        a, b = l2.pair(p, q, ref)
    torch.testing.assert_close(a, (p - ref).square().flatten(1).mean(1))
    torch.testing.assert_close(b, (q - ref).square().flatten(1).mean(1))


# -------------------------------------------------------------------- lin / tune / scratch, DPS tuning
def _batch(refs):
    """One batch of the TRIPLETS: (ref, p0, p1, judge), float64."""
    p0 = torch.stack([_distorted(refs[i], a, i) for i, (a, _, _) in enumerate(TRIPLETS)])
    p1 = torch.stack([_distorted(refs[i], b, i) for i, (_, b, _) in enumerate(TRIPLETS)])
    judge = torch.tensor([h for _, _, h in TRIPLETS])
    return refs.double(), p0.double(), p1.double(), judge.double()


def _lpips_trainer(net: str):
    """The lpips 0.1.4 package's Trainer in training mode, trunk trainable, on CPU (random trunk: no download)."""
    import contextlib
    import io
    import warnings

    from lpips.trainer import Trainer

    trainer = Trainer()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        trainer.initialize(model="lpips", net=net, pnet_rand=True, pnet_tune=True, use_gpu=False, is_train=True)
    return trainer


def _trainer_state(trainer) -> dict:
    """The reference trainer's trunk (by torchvision feature index), linear and head weights."""
    out = {}
    for name, module in trainer.net.net.named_children():
        if name.startswith("slice"):
            for key, value in module.state_dict().items():
                out[f"trunk.{key}"] = value
    for k, lin in enumerate(trainer.net.lins):
        out[f"lin.{k}"] = lin.model[1].weight
    for key, value in trainer.rankLoss.net.state_dict().items():
        out[f"head.{key}"] = value
    return out


def _percept_state(harness, head) -> dict:
    out = {f"trunk.{k}": v for k, v in ev.metric_trunk(harness.metric).body.state_dict().items()}
    out.update({f"lin.{k}": conv.weight for k, conv in enumerate(ev.lin_layers(harness.metric))})
    out.update({f"head.{k}": v for k, v in head.state_dict().items()})
    return out


@pytest.mark.parametrize("mode", ["lin", "tune"])
def test_lin_and_tune_steps_equal_the_lpips_trainer(refs, mode):
    """LPIPS's trainer (``--train_trunk`` for tune: the trunk in the optimiser) and percept's steps agree after
    two Adam steps from the same weights on the real ImageNet AlexNet, in float64 with dropout off (its masks are
    random draws): trunk, linear layers and ranking head."""
    config = ev.TuneConfig("lpips-alex", "rgb", mode=mode)
    assert (config.lr, config.beta1, config.batch_size, config.backbone_weights) == (1e-4, 0.5, 50, "imagenet")
    harness = ev.build_tunable(config).double()
    harness.metric.distance.dropout = 0.0
    head = ev.RankingHead().double()
    trainer = _lpips_trainer("alex")
    trainer.net.double()
    trainer.rankLoss.double()
    for m in trainer.net.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    # its ScalingLayer (x - shift) / scale on x = 2 z - 1, with the float32 constants percept stores for the
    # same map z * a + b (the packages round them differently, 1e-7 relative, which Adam amplifies)
    a, b = _imagenet_affine()
    trainer.net.scaling_layer.scale = 2 / a
    trainer.net.scaling_layer.shift = -1 - b * (2 / a)
    with torch.no_grad():  # the same initial weights: percept's trunk and lins, the reference's head
        ours, theirs = _percept_state(harness, head), _trainer_state(trainer)
        assert set(ours) == set(theirs)
        for key in ours:
            if key.startswith("head."):
                ours[key].copy_(theirs[key])
            else:
                theirs[key].copy_(ours[key])
    if mode == "lin":  # the reference without --train_trunk (pnet_tune=False): the trunk gets no gradient
        trainer.net.net.requires_grad_(False)
    optimizer = ev.tune_optimizer(harness, head, config)
    ref, p0, p1, judge = _batch(refs)
    harness.train()
    for _ in range(2):
        ev.tune_step(harness, head, optimizer, ref, p0, p1, judge)
        trainer.set_input({"ref": 2 * ref - 1, "p0": 2 * p0 - 1, "p1": 2 * p1 - 1, "judge": judge.view(-1, 1, 1, 1)})
        trainer.optimize_parameters()
    ours, theirs = _percept_state(harness, head), _trainer_state(trainer)
    initial = ev.build_tunable(config)
    moved = set()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key].to(ours[key].dtype), rtol=1e-7, atol=1e-10, msg=key)
        if key.startswith("trunk."):
            before = ev.metric_trunk(initial.metric).body.state_dict()[key[len("trunk.") :]].double()
            if not torch.equal(ours[key], before):
                moved.add(key)
    assert bool(moved) == (mode == "tune")  # tune trains every trunk layer, lin none
    if mode == "tune":
        assert len(moved) == 10  # AlexNet's 5 convolutions, weight and bias


def _imagenet_affine() -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet normalisation (z - mean) / std as z * a + b, (1, 3, 1, 1) float64 holding float32 constants (as
    percept stores them)."""
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, 3, 1, 1)
    return (1 / std).float().double(), (-mean / std).float().double()


def _plain_dps(trunk: nn.Sequential, taps, lins, x, y, branches):
    """Sjögren et al.'s DistanceMetric (``analysis.py``/``experiment.py``) written out: ImageNet-normalised
    inputs, per-branch modifier (sort: each channel's values over positions ascending; mean: the channel means),
    F.normalize over channels, squared difference, 1x1 linear weights, mean over positions, sum."""
    a, b = _imagenet_affine()

    def feats(z):
        out, h = [], z * a + b
        for i, m in enumerate(trunk):
            h = m(h)
            if i in taps:
                out.append(h)
        return out

    fx, fy = feats(x), feats(y)
    total, k = 0, 0
    for branch in branches:
        for a, b in zip(fx, fy):
            if branch == "sort":
                a, b = a.flatten(2).sort(dim=2).values, b.flatten(2).sort(dim=2).values
            elif branch == "mean":
                a, b = a.flatten(2).mean(2, keepdim=True), b.flatten(2).mean(2, keepdim=True)
            else:
                a, b = a.flatten(2), b.flatten(2)
            a, b = nn.functional.normalize(a, dim=1), nn.functional.normalize(b, dim=1)
            total = total + ((a - b).square() * lins[k].view(1, -1, 1)).sum(1).mean(1)
            k += 1
    return total


@pytest.mark.parametrize("mode", ["tune", "scratch"])
def test_dps_tune_and_scratch_steps_equal_a_plain_computation(refs, mode):
    """DPS spatial+sort on AlexNet with its linear layers (one per branch and layer) and the trunk trained: two
    steps of percept's tuning equal the same two steps written out with torch (Sjögren et al.'s Adam lr 1e-3,
    betas (0.5, 0.999), BCE through LPIPS's ranking head, lins clamped to >= 0), float64, dropout off."""
    import copy

    config = ev.TuneConfig("dps-alex", "rgb", mode=mode, metric_options={"method": "spatial+sort"})
    assert (config.lr, config.batch_size, config.nepoch, config.nepoch_decay) == (1e-3, 256, 5, 5)
    assert config.backbone_weights == ("imagenet" if mode == "tune" else "random")
    harness = ev.build_tunable(config).double()
    harness.metric.distance.dropout = 0.0
    assert harness.metric.method == "spatial+sort" and len(ev.lin_layers(harness.metric)) == 10
    head = ev.RankingHead().double()
    fx = ev.metric_trunk(harness.metric)
    trunk = nn.Sequential(*[copy.deepcopy(m) for m in fx.body]).double()
    trunk.requires_grad_(True)
    for m in trunk.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
        if type(m).__name__ == "StemConv2d":
            m.__class__ = nn.Conv2d
    lins = [conv.weight.detach().clone().view(-1).requires_grad_(True) for conv in ev.lin_layers(harness.metric)]
    plain_head = copy.deepcopy(head)
    params = list(trunk.parameters()) + lins + list(plain_head.parameters())
    plain_opt = torch.optim.Adam(params, lr=1e-3, betas=(0.5, 0.999))
    optimizer = ev.tune_optimizer(harness, head, config)
    ref, p0, p1, judge = _batch(refs)
    harness.train()
    for _ in range(2):
        ev.tune_step(harness, head, optimizer, ref, p0, p1, judge)
        d0 = _plain_dps(trunk, fx.layers, lins, ref, p0, ("spatial", "sort"))
        d1 = _plain_dps(trunk, fx.layers, lins, ref, p1, ("spatial", "sort"))
        loss = nn.functional.binary_cross_entropy(plain_head(d0, d1), judge)
        plain_opt.zero_grad()
        loss.backward()
        plain_opt.step()
        with torch.no_grad():
            for w in lins:
                w.clamp_(min=0)
    for (key, ours), theirs in zip(fx.body.state_dict().items(), trunk.state_dict().values()):
        torch.testing.assert_close(ours, theirs, rtol=1e-7, atol=1e-10, msg=key)
    for conv, w in zip(ev.lin_layers(harness.metric), lins):
        torch.testing.assert_close(conv.weight.view(-1), w.detach(), rtol=1e-7, atol=1e-10)
        assert (conv.weight >= 0).all()


def test_tuning_modes_are_checked():
    with pytest.raises(ValueError, match="has none"):
        ev.TuneConfig("watson-dft", mode="tune")
    with pytest.raises(ValueError, match="random trunk"):
        ev.TuneConfig("lpips-alex", mode="scratch", backbone_weights="imagenet")
    with pytest.raises(ValueError, match="scratch"):
        ev.TuneConfig("lpips-alex", mode="tune", backbone_weights="random")
    with pytest.raises(ValueError, match="unknown tuning mode"):
        ev.TuneConfig("lpips-alex", mode="finetune")
    assert ev.TuneConfig("lpips-squeeze", mode="scratch").tag == "lpips-squeeze_rgb_scratch"
    assert ev.TuneConfig("lpips-squeeze").tag == "lpips-squeeze_rgb"  # lin keeps its former names
    dps = ev.TuneConfig("dps-squeeze", "grey", metric_options={"method": "spatial+mean", "channel_norm": False})
    assert dps.tag == "dps-squeeze_spatial-mean_nonorm_grey"
    assert dps.weight_file == "gray_dps_squeeze_spatial-mean_nonorm.pth" and dps.trunk_file is None
    tuned = ev.TuneConfig("lpips-alex", mode="tune")
    assert (tuned.weight_file, tuned.trunk_file) == ("rgb_lpips_alex_tune.pth", "rgb_lpips_alex_tune_trunk.pth")
    assert ev.TuneConfig("lpips-alex").weight_file == "rgb_lpips_alex.pth"


def test_scratch_run_writes_a_trunk_that_rebuilds_the_tuned_metric(folder, tmp_path, refs):
    """tune_2afc in mode scratch: a seeded random SqueezeNet trunk trained with the linear layers; both files load
    back into LPIPS (``lin_weights`` + ``backbone_weights``) and give the tuned harness's distances."""
    config = ev.TuneConfig(
        "lpips-squeeze", "rgb", mode="scratch", nepoch=1, nepoch_decay=0, batch_size=5, train_subsets=("mix",)
    )
    start = ev.metric_trunk(ev.build_tunable(config).metric).body.state_dict()
    again = ev.metric_trunk(ev.build_tunable(config).metric).body.state_dict()
    imagenet = percept.get_metric("lpips-squeeze").backbone.body.state_dict()
    assert all(torch.equal(start[k], again[k]) for k in start)  # seeded
    assert not torch.allclose(start["0.weight"], imagenet["0.weight"])  # random, not ImageNet
    result = ev.tune_2afc(config, folder, tmp_path, progress=False)
    assert result["weights"].name == "rgb_lpips_squeeze_scratch.pth"
    assert result["trunk"].name == "rgb_lpips_squeeze_scratch_trunk.pth"
    trunk = torch.load(result["trunk"], weights_only=True)
    assert "features.0.weight" in trunk and "features.12.expand3x3.bias" in trunk
    assert not torch.equal(trunk["features.0.weight"], start["0.weight"])  # the trunk trained
    ckpt = torch.load(result["checkpoint"], weights_only=True)
    assert "metric.distance.backbone.body.0.weight" in ckpt["metric"]  # and it is in the resumable state
    rebuilt = percept.get_metric(
        "lpips-squeeze", lin_weights=str(result["weights"]), backbone_weights=str(result["trunk"]), reduction="none"
    )
    tuned = ev.build_tunable(config)
    ev.tuning._load_trainable_state(tuned, ckpt["metric"])
    tuned.eval()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(refs[1:], refs[:-1]), tuned(refs[1:], refs[:-1]))


def test_driver_scores_dps_methods_norms_layers_and_networks(refs):
    run = _driver()
    args = run.build_parser().parse_args(
        ["--metrics", "dps-squeeze", "--colorspaces", "rgb", "--dps-methods", "spatial", "sort", "spatial+mean"]
        + ["--dps-channel-norm", "on", "off", "--dps-layers", "1", "4", "7"]
    )
    metrics, details, skipped = run._build_all(args, "cpu", ["dps-squeeze", "l2"], None)
    assert not skipped
    labels = sorted(label for label, _ in metrics if label.startswith("dps"))
    assert len(labels) == 6 and "dps-squeeze+spatial+mean+nonorm+layers-1-4-7" in labels
    assert "dps-squeeze+layers-1-4-7" in labels  # spatial with channel norm: the paper's defaults, no tag
    harness = metrics[("dps-squeeze+sort+nonorm+layers-1-4-7", "rgb")]
    assert harness.metric.method == "sort" and harness.metric.channel_norm is False
    assert harness.metric.backbone.layers == (1, 4, 7)
    want = percept.get_metric("dps-squeeze", method="sort", channel_norm=False, layers=(1, 4, 7), reduction="none")
    with torch.no_grad():
        torch.testing.assert_close(harness(refs[1:], refs[:-1]), want(refs[1:], refs[:-1]))
    # any torchvision network: dps-<name>, here a random ResNet-18 on Pihlgren et al.'s layers
    assert run._canonical("dps-resnet18") == "dps-resnet18" and run._canonical("DPS-Alex") == "dps-alex"
    with pytest.raises(KeyError):
        run._canonical("dps-nonet")
    args = run.build_parser().parse_args(["--colorspaces", "rgb", "--backbone-weights", "random"])
    metrics, details, skipped = run._build_all(args, "cpu", ["dps-resnet18"], None)
    (label, _), harness = next(iter(metrics.items()))
    assert label == "dps-resnet18+random" and harness.metric.backbone.name == "resnet18"


def test_driver_tunes_dps_and_lpips_variants_then_scores_them(folder, tmp_path):
    run = _driver()
    out = tmp_path / "out"
    common = ["--train", "--data", str(folder), "--colorspaces", "rgb", "--nepoch", "1", "--nepoch-decay", "0"]
    common += ["--train-subsets", "mix", "--subsets", "traditional", "--jnd-subsets", "--out", str(out)]
    common += ["--no-progress", "--workers", "0", "--batch-size", "5"]
    assert run.main(common + ["--metrics", "dps-squeeze", "--dps-methods", "sort", "--variants", "lin", "tune"]) == 0
    assert run.main(common + ["--metrics", "lpips-squeeze", "--variants", "scratch"]) == 0
    weights = sorted(p.name for p in (out / "tuned" / "weights").iterdir())
    assert weights == [
        "rgb_dps_squeeze_sort.pth",
        "rgb_dps_squeeze_sort_tune.pth",
        "rgb_dps_squeeze_sort_tune_trunk.pth",
        "rgb_lpips_squeeze_scratch.pth",
        "rgb_lpips_squeeze_scratch_trunk.pth",
    ]
    rows = {line.split(",")[0] for line in (out / "scores.csv").read_text().splitlines()[1:]}
    assert rows == {"human", "dps-squeeze+sort+tuned", "dps-squeeze+sort+tune", "lpips-squeeze+scratch"}
    info = json.loads((out / "run.json").read_text())
    assert set(info["tuning"]["runs"]) == {"lpips-squeeze+scratch/rgb"}
    assert info["tuning"]["runs"]["lpips-squeeze+scratch/rgb"]["config"]["backbone_weights"] == "random"
    details = info["evaluation"]["metrics"]["lpips-squeeze+scratch/rgb"]
    assert details["variant"] == "scratch" and details["backbone_weights"].endswith("_scratch_trunk.pth")
