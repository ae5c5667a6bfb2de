"""Backbones: LPIPS taps, the loss networks of Pihlgren et al., weight loading and its checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from percept import assets
from percept import backbones as B


def _probe_min_size(fx: B.FeatureExtractor) -> int:
    fx._min_size = None
    saved = B._LPIPS_MIN_SIZE.pop(fx.name, None)
    try:
        return fx.min_size
    finally:
        if saved is not None:
            B._LPIPS_MIN_SIZE[fx.name] = saved


@pytest.mark.parametrize(
    "net, names, sizes64",
    [
        ("alex", ("1", "4", "7", "9", "11"), (15, 7, 3, 3, 3)),
        ("vgg", ("3", "8", "15", "22", "29"), (64, 32, 16, 8, 4)),
        ("squeeze", ("1", "4", "7", "9", "10", "11", "12"), (31, 15, 7, 3, 3, 3, 3)),
    ],
)
def test_lpips_taps_channels_sizes_and_min_size(net, names, sizes64):
    fx = B.build_backbone(net, weights="random")
    arch = B.canonical_arch(net)
    assert fx.layers == B.LPIPS_LAYERS[arch]
    assert [n.split(" ")[0] for n in fx.layer_names] == [f"features.{k}" for k in names]
    with torch.no_grad():
        outs = fx(torch.rand(2, 3, 64, 64))
    assert tuple(o.shape[1] for o in outs) == B.LPIPS_CHANNELS[arch] == fx.channels
    assert tuple(o.shape[2] for o in outs) == sizes64
    # the tabulated minimum size is what the shape probe finds, and really is the minimum
    m = B._LPIPS_MIN_SIZE[arch]
    assert _probe_min_size(fx) == m
    with torch.no_grad():
        fx(torch.rand(1, 3, m, m))
        with pytest.raises(RuntimeError):
            fx(torch.rand(1, 3, m - 1, m - 1))


@pytest.mark.parametrize(
    "arch, channels, sizes64",
    [
        ("resnet18", (64, 64, 128, 512), (32, 16, 8, 2)),
        ("vgg16_bn", (64, 128, 256, 512), (64, 32, 16, 4)),
        ("efficientnet_b0", (32, 16, 80, 320), (32, 32, 4, 2)),
        ("densenet121", (64, 256, 512, 1024), (32, 16, 8, 2)),
    ],
)
def test_pihlgren_loss_networks(arch, channels, sizes64):
    torch.manual_seed(0)
    fx = B.build_backbone(arch, weights="random")  # Pihlgren et al.'s default layers
    assert fx.layers == B.PIHLGREN_LAYERS[arch]
    with torch.no_grad():
        outs = fx(torch.rand(1, 3, 64, 64))
    assert tuple(o.shape[1] for o in outs) == channels == fx.channels
    assert tuple(o.shape[2] for o in outs) == sizes64
    assert not any(p.requires_grad for p in fx.parameters())


def test_user_chosen_layers_and_googlenet_inception():
    fx = B.build_backbone("vgg19", layers=(3, 8, 17, 35), weights="random")
    assert fx.channels == (64, 128, 256, 512)
    g = B.build_backbone("googlenet", weights="random")
    assert g.channels == (64, 256, 512, 1024)
    assert [n.split(" ")[0] for n in g.layer_names] == ["conv1", "inception3a", "inception4a", "inception5b"]
    inc = B.build_backbone("inception_v3", weights="random")
    assert inc.channels == (64, 256, 288, 768)
    assert not any("AuxLogits" in n for n in inc.layer_names)


def test_frozen_and_eval_even_after_train():
    fx = B.build_backbone("vgg16_bn", layers=(5, 12), weights="random")
    parent = nn.Sequential(fx)
    parent.train()
    assert not fx.training and not any(m.training for m in fx.modules())
    assert not any(p.requires_grad for p in fx.parameters())
    x = torch.rand(2, 3, 32, 32)
    before = [b.clone() for b in fx.buffers()]
    fx(x)
    assert all(torch.equal(a, b) for a, b in zip(before, fx.buffers()))  # BN statistics untouched


def test_conv_tap_not_clobbered_by_inplace_relu():
    fx = B.build_backbone("vgg16", layers=(2, 3), weights="random")  # conv1_2 and its in-place ReLU
    with torch.no_grad():
        conv, relu = fx(torch.rand(1, 3, 16, 16))
    assert conv.min() < 0  # pre-activation kept
    torch.testing.assert_close(relu, conv.clamp_min(0))


def test_channels_last_same_values():
    torch.manual_seed(0)
    fx = B.build_backbone("alex", weights="random")
    x = torch.rand(2, 3, 40, 40)
    with torch.no_grad():
        a = fx(x)
        fx.channels_last = False
        b = fx(x)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, atol=1e-5, rtol=1e-5)


def test_imagenet_squeezenet_from_assets(assets_dir):
    fx = B.build_backbone("squeeze")
    state = torch.load(assets_dir / "weights/torchvision/squeezenet1_1_features.pth", weights_only=True)
    own = fx.body.state_dict()
    assert set(own) == set(state)
    for k in state:
        assert torch.equal(own[k], state[k]), k


def test_checkpoint_path_full_model(tmp_path):
    from torchvision.models import resnet18

    torch.manual_seed(0)
    full = resnet18().eval()
    path = tmp_path / "r18.pth"
    torch.save(full.state_dict(), path)
    fx = B.build_backbone("resnet18", layers=(2, 4), weights=path, sha256=assets.file_sha256(path))
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        relu = full.relu(full.bn1(full.conv1(x)))
        layer1 = full.layer1(full.maxpool(relu))
        a, b = fx(x)
    torch.testing.assert_close(a, relu)
    torch.testing.assert_close(b, layer1)
    with pytest.raises(assets.ChecksumError):
        B.build_backbone("resnet18", layers=(2, 4), weights=path, sha256="0" * 64)


def test_strict_loading_errors():
    state = B.build_backbone("squeeze", weights="random").body.state_dict()
    missing = {k: v for k, v in state.items() if not k.startswith("12.")}
    with pytest.raises(RuntimeError, match="lacks"):
        B.build_backbone("squeeze", weights=missing)
    foreign = {**state, "classifier.9.weight": torch.zeros(1)}
    with pytest.raises(RuntimeError, match="unexpected"):
        B.build_backbone("squeeze", weights=foreign)
    wrong = dict(state)
    wrong["0.weight"] = torch.zeros(64, 3, 5, 5)
    with pytest.raises(RuntimeError, match="shape"):
        B.build_backbone("squeeze", weights=wrong)
    alex = B.build_backbone("alex", weights="random").body.state_dict()
    with pytest.raises(RuntimeError):
        B.build_backbone("squeeze", weights=alex)


def test_missing_imagenet_weights_raise(tmp_path, monkeypatch):
    monkeypatch.setenv("PERCEPT_ASSETS", str(tmp_path / "assets"))
    monkeypatch.setenv("PERCEPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(assets.MissingAssetError, match="alexnet-owt-7be5be79.pth") as err:
        B.build_backbone("alex")
    assert "percept.assets fetch" in str(err.value)
    with pytest.raises(assets.MissingAssetError, match="get_weight"):
        B.build_backbone("resnet18")
    # a corrupt file in torch's hub cache is rejected by its hash prefix
    hub = tmp_path / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "resnet18-f37072fd.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(assets.ChecksumError):
        B.build_backbone("resnet18")


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown backbone"):
        B.build_backbone("notanet", weights="random")
    with pytest.raises(ValueError, match="transformer"):
        B.build_backbone("vit_b_16", weights="random")
    with pytest.raises(ValueError, match="increasing"):
        B.build_backbone("alex", layers=(4, 1), weights="random")
    with pytest.raises(ValueError, match="indices"):
        B.build_backbone("alex", layers=(1, 99), weights="random")
    with pytest.raises(ValueError, match="default layers"):
        B.build_backbone("mobilenet_v2", weights="random")
    fx = B.build_backbone("resnet18", layers=(2, 9), weights="random")  # 9 = fc: not a feature map
    with pytest.raises(ValueError, match="4-D"):
        _ = fx.channels


@pytest.mark.parametrize(
    "k, s, p, size", [(11, 4, 2, (35, 38)), (3, 2, 0, (17, 20)), (7, 2, 3, (16, 13)), (11, 4, 2, (33, 31))]
)
def test_stem_conv_gradients(k, s, p, size):
    torch.manual_seed(0)
    ref = nn.Conv2d(3, 5, k, stride=s, padding=p).double()
    conv = nn.Conv2d(3, 5, k, stride=s, padding=p).double()
    conv.load_state_dict(ref.state_dict())
    stem = B.with_stem_convs(conv)
    assert isinstance(stem, B.StemConv2d) and set(stem.state_dict()) == {"weight", "bias"}
    assert stem.weight is conv.weight and type(conv) is nn.Conv2d  # a new module on the same parameters
    x = torch.randn(1, 3, *size, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(stem, (x,))
    g = torch.randn_like(ref(x))
    want = torch.autograd.grad(ref(x), [x, *ref.parameters()], g)
    got = torch.autograd.grad(stem(x), [x, *stem.parameters()], g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_stem_conv_used_for_first_layers():
    assert isinstance(B.build_backbone("alex", weights="random").body[0], B.StemConv2d)
    assert isinstance(B.build_backbone("squeeze", weights="random").body[0], B.StemConv2d)
    assert type(B.build_backbone("vgg", weights="random").body[0]) is nn.Conv2d  # stride 1: unchanged


def _state_layout(module: nn.Module) -> tuple:
    """Every submodule's name and class, and every state-dict tensor's name, shape, strides and storage."""
    classes = [(name, type(m)) for name, m in module.named_modules()]
    tensors = [(k, tuple(v.shape), v.stride(), v.data_ptr()) for k, v in module.state_dict(keep_vars=True).items()]
    return classes, tensors


@pytest.mark.parametrize("net", ["alex", "squeeze", "resnet18"])
def test_forward_changes_no_state(net):
    """A forward pass, with and without autograd, on maps above and below the channels-last threshold, leaves the
    modules, their classes and every parameter's and buffer's memory format and storage as built (contiguous):
    state that DDP or torch.compile captured is never rewritten under them."""
    torch.manual_seed(0)
    fx = B.build_backbone(net, weights="random")
    before = _state_layout(fx)
    assert all(v.is_contiguous() for v in fx.state_dict().values())
    for size in (40, 224):
        x = torch.rand(2, 3, size, size, requires_grad=True)
        fx(x)[-1].sum().backward()
        with torch.no_grad():
            fx(x.detach())
        assert _state_layout(fx) == before, size
