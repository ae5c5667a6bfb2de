"""percept.evaluate: 2AFC score, JND mAP, the harness and 2AFC tuning.

No BAPPS with human judgements is available offline: the folders below are SYNTHETIC, in the BAPPS
layout, built from real patches (asset photographs) with hand-chosen distortion levels and judge / same
values. Expected numbers are computed by hand from those choices, and the score functions are compared
with the LPIPS reference code (``lpips`` 0.1.4).
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

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
    spec = importlib.util.spec_from_file_location("run_2afc", ROOT / "experiments" / "2afc" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
