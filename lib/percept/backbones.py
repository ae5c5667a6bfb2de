"""Frozen feature extractors ("backbones", "loss networks") for the deep metrics.

A backbone is a torchvision classification network flattened into an ordered list of its top-level
children (the ``features`` part for AlexNet/VGG/SqueezeNet/DenseNet/MobileNet/EfficientNet, the whole
model for ResNet/GoogLeNet/Inception/...). Layer index ``k`` means "the output of child ``k``" (0-based),
the convention of Sjögren et al. and Pihlgren et al.; LPIPS's taps are such indices too
(:data:`LPIPS_LAYERS`). Only children ``0 .. max(layers)`` are kept and run.

>>> from percept.backbones import build_backbone  # doctest: +SKIP
>>> trunk = build_backbone("squeeze")                          # LPIPS taps, ImageNet weights  # doctest: +SKIP
>>> feats = trunk(x)                                           # list of (N, C_l, H_l, W_l)  # doctest: +SKIP
>>> r18 = build_backbone("resnet18", layers=(2, 4, 5, 7), weights="random")  # doctest: +SKIP

Weights (``weights=``):

- ``"imagenet"``: torchvision's ImageNet checkpoint (``IMAGENET1K_V1``, what LPIPS and the loss-network
  studies used). Looked up, in order, as a features-only checkpoint in the asset folder
  (``weights/torchvision/<arch>_features.pth``), as torchvision's full file in the asset folder, then in
  torch's hub cache (``$TORCH_HOME/hub/checkpoints``). Every file is sha256-checked (the full digest where
  the project knows it, else torchvision's hash prefix in the file name). Nothing is downloaded unless
  ``allow_download=True``; a missing file raises :class:`percept.assets.MissingAssetError` saying how to
  fetch it.
- ``"random"``: torchvision's own random initialisation (seed it with ``torch.manual_seed``). Only when
  asked for explicitly.
- a path (or a state dict): a full-model or a features-only checkpoint, loaded strictly: every parameter
  and buffer of the kept layers must be present with the right shape, and no key may be foreign to the
  architecture. ``sha256=`` checks the file.

Every parameter is frozen (``requires_grad=False``) and the module stays in eval mode even when a parent
calls ``.train()`` (batch-norm statistics never move), unless built with ``frozen=False``.

Everything about the network is settled when it is built: the layers kept, the pooling
(``pooling="floor"``/``"avg"`` for E-LPIPS), the first-layer convolutions with a faster input gradient
(new :class:`StemConv2d` modules sharing the torchvision convolutions' parameters; no class is changed in
place) and the weights' memory format (contiguous). A forward pass changes no parameter, buffer or module; on CPU it only chooses the layout of
each child's *input* from its size (:meth:`FeatureExtractor.memory_format_for`).

Inputs are whatever the network expects (ImageNet-normalised images); scaling is the metric's job.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn as nn

from percept import assets
from percept.stem_conv import StemConv2d, with_stem_convs  # noqa: F401 (public here too)

__all__ = [
    "LPIPS_NETS",
    "LPIPS_LAYERS",
    "LPIPS_CHANNELS",
    "PIHLGREN_LAYERS",
    "POOLINGS",
    "FeatureExtractor",
    "StemConv2d",
    "build_backbone",
    "canonical_arch",
    "flatten_children",
    "imagenet_checkpoint",
    "load_checkpoint",
    "lpips_net",
    "with_stem_convs",
]

#: LPIPS's short network names -> torchvision architecture
LPIPS_NETS = {"alex": "alexnet", "vgg": "vgg16", "vgg16": "vgg16", "squeeze": "squeezenet1_1"}

#: LPIPS tap layers (indices into ``features``; each is the last module of one LPIPS "slice")
LPIPS_LAYERS: dict[str, tuple[int, ...]] = {
    "alexnet": (1, 4, 7, 9, 11),  # relu1 .. relu5
    "vgg16": (3, 8, 15, 22, 29),  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
    "squeezenet1_1": (1, 4, 7, 9, 10, 11, 12),  # relu1, fire3, fire5, fire6, fire7, fire8, fire9
}

#: channel counts of the LPIPS taps
LPIPS_CHANNELS: dict[str, tuple[int, ...]] = {
    "alexnet": (64, 192, 384, 256, 256),
    "vgg16": (64, 128, 256, 512, 512),
    "squeezenet1_1": (64, 128, 256, 384, 384, 512, 512),
}

#: the four extraction layers per architecture of Pihlgren et al. 2023 (``layers_in_experiments``)
PIHLGREN_LAYERS: dict[str, tuple[int, ...]] = {
    "alexnet": (1, 4, 7, 11),
    "vgg11": (1, 4, 9, 19),
    "vgg16": (3, 8, 15, 29),
    "vgg16_bn": (5, 12, 22, 42),
    "vgg19": (3, 8, 17, 35),
    "densenet121": (2, 4, 6, 10),
    "resnet18": (2, 4, 5, 7),
    "resnet50": (2, 4, 5, 7),
    "resnext50_32x4d": (2, 4, 5, 7),
    "googlenet": (0, 5, 8, 15),
    "inception_v3": (2, 7, 9, 14),
    "squeezenet1_1": (1, 3, 7, 12),
    "efficientnet_b0": (0, 1, 4, 7),
    "efficientnet_b7": (0, 1, 4, 7),
}

# smallest square input for which every LPIPS tap has at least one position (checked by a test against
# the probe in FeatureExtractor.min_size)
_LPIPS_MIN_SIZE = {"alexnet": 31, "vgg16": 16, "squeezenet1_1": 17}

# architectures whose loss-network children are those of ``model.features``; the others use the whole model
_FEATURE_FAMILIES = ("alexnet", "vgg", "squeezenet", "densenet", "mobilenet", "efficientnet", "convnext")
# auxiliary classifier heads: never part of a feature trunk
_AUX_HEADS = {"aux1", "aux2", "AuxLogits"}
# constructor options: keep aux heads in the skeleton so ImageNet checkpoints load strictly
_BUILD_KWARGS = {
    "googlenet": {"aux_logits": True, "init_weights": True},
    "inception_v3": {"aux_logits": True, "init_weights": True},
}
# their blocks are not a sequence of (N, C, H, W) feature maps
_TRANSFORMERS = ("vit_", "swin_", "swin3d", "maxvit")
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,})\.")


def lpips_net(net: str, allowed: Sequence[str] = ("alex", "vgg", "squeeze"), *, metric: str = "LPIPS") -> str:
    """The LPIPS short name ("alex", "vgg" or "squeeze") of any spelling :func:`canonical_arch` accepts for
    AlexNet, VGG-16 or SqueezeNet 1.1; ``allowed`` limits the networks ``metric`` exists for."""
    short = {arch: name for name, arch in LPIPS_NETS.items() if name != "vgg16"}.get(canonical_arch(net))
    if short not in allowed:
        raise ValueError(f"{metric} exists for net {' or '.join(map(repr, allowed))}, got {net!r}")
    return short


def canonical_arch(name: str) -> str:
    """``"alex"`` -> ``"alexnet"``, ``"vgg"`` -> ``"vgg16"``, ``"squeeze"`` -> ``"squeezenet1_1"``; any other
    name must be a torchvision classification model (``torchvision.models.list_models``)."""
    import torchvision
    from torchvision.models import list_models

    key = str(name).strip().lower().replace("-", "_")
    key = LPIPS_NETS.get(key, key)
    known = [m for m in list_models(module=torchvision.models) if not m.startswith(_TRANSFORMERS)]
    if key not in known:
        why = " (transformer backbones are not supported)" if key.startswith(_TRANSFORMERS) else ""
        raise ValueError(
            f"unknown backbone {name!r}{why}: use 'alex', 'vgg', 'squeeze' or a convolutional torchvision "
            f"classification model ({', '.join(sorted(known))})"
        )
    return key


def _attribute_path(arch: str) -> str:
    if arch.startswith(_FEATURE_FAMILIES):
        return "features"
    if arch.startswith("mnasnet"):
        return "layers"
    if arch.startswith("regnet"):
        return "regnet"
    return ""


def flatten_children(model: nn.Module, arch: str) -> list[tuple[str, nn.Module]]:
    """The ordered top-level children of a torchvision classification model, as the loss-network papers
    index them, with their full-model state-dict prefixes (``("features.3", module)``).

    ``features`` for AlexNet/VGG/SqueezeNet/DenseNet/MobileNet/EfficientNet, ``layers`` for MNASNet,
    ``stem`` then the blocks of ``trunk_output`` for RegNet, the model itself otherwise. Children that
    are ``None`` and auxiliary classifier heads (GoogLeNet ``aux1``/``aux2``, Inception ``AuxLogits``) are
    skipped. Model-level preprocessing in ``forward`` (Inception's ``transform_input``) and functional ops
    (flatten) are not part of the list.
    """
    path = _attribute_path(arch)
    if path == "regnet":
        out = [("stem", model.stem)]
        out += [(f"trunk_output.{n}", m) for n, m in model.trunk_output.named_children()]
        return out
    parent = getattr(model, path) if path else model
    prefix = f"{path}." if path else ""
    return [(prefix + n, m) for n, m in parent.named_children() if m is not None and n not in _AUX_HEADS]


def _construct(arch: str, *, meta: bool) -> nn.Module:
    from torchvision.models import get_model

    kwargs = dict(_BUILD_KWARGS.get(arch, {}))
    if meta:
        try:
            with torch.device("meta"):
                return get_model(arch, weights=None, **kwargs)
        except (NotImplementedError, RuntimeError):  # a constructor that needs real data (RegNet)
            pass
    return get_model(arch, weights=None, **kwargs)


def _construct_random(arch: str) -> nn.Module:
    """torchvision's random initialisation. AlexNet and VGG are built without allocating their large
    classifiers (only ``features`` is ever used), applying torchvision's own init to the features."""
    if not arch.startswith(("alexnet", "vgg")):
        return _construct(arch, meta=False)
    model = _construct(arch, meta=True)
    model.features.to_empty(device="cpu")
    for m in model.features.modules():
        if isinstance(m, nn.Conv2d):
            if arch.startswith("vgg"):  # torchvision VGG.__init__
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            else:  # AlexNet keeps PyTorch's default init
                m.reset_parameters()
        elif isinstance(m, nn.BatchNorm2d):
            m.reset_parameters()
            m.reset_running_stats()
    return model


#: ``pooling`` options of :class:`FeatureExtractor`
POOLINGS = ("torchvision", "floor", "avg")


def _with_pooling(module: nn.Module, pooling: str) -> None:
    """Replace every max pooling below ``module``: "floor" rounds the output size down ('VALID', as TensorFlow;
    torchvision's SqueezeNet rounds up), "avg" averages over the same window (rounding down)."""
    for name, child in module.named_children():
        if isinstance(child, nn.MaxPool2d):
            k, s, p = child.kernel_size, child.stride, child.padding
            setattr(module, name, nn.AvgPool2d(k, s, p) if pooling == "avg" else nn.MaxPool2d(k, s, p, child.dilation))
        else:
            _with_pooling(child, pooling)


class FeatureExtractor(nn.Module):
    """Runs ``children[0 .. max(layers)]`` in sequence and returns the outputs at ``layers``.

    Args:
        children: ``(state-dict prefix, module)`` pairs in execution order (:func:`flatten_children`).
        layers: increasing child indices to tap; -1 taps the input itself (as E-LPIPS does).
        name: architecture name, for messages.
        frozen: freeze parameters and keep eval mode (default).
        channels_last: on CPU, run children whose input has at least ``CL_MIN_POSITIONS`` positions in
            channels-last memory format (outputs are the same up to float rounding).
        pooling: "torchvision" (the pooling as built), "floor" (max pooling rounding its output size down,
            as TensorFlow's 'VALID') or "avg" (average pooling over the same windows, rounding down).

    Attributes:
        layers, channels (per tap), layer_names (per tap), min_size (smallest H and W that give every
        tap at least one position).

    ``forward(x)`` takes (N, 3, H, W) and returns a list of (N, C_l, H_l, W_l) tensors. It changes no state:
    the modules, the parameters and their (contiguous) memory format are fixed when the extractor is built.
    """

    #: on CPU, channels-last is used for inputs of at least this many positions (H*W). Measured with oneDNN
    #: on 2 cores: max pooling and convolutions on larger maps are faster in channels-last, convolutions on
    #: 3x3 and 4x4 maps (AlexNet conv3-5, VGG block 5) faster in NCHW. oneDNN runs a convolution in the
    #: layout of its input (the weights stay contiguous: converting them per child was not measurably faster).
    #: Other devices run NCHW (not measured).
    CL_MIN_POSITIONS = 25

    def __init__(
        self,
        children: Sequence[tuple[str, nn.Module]],
        layers: Sequence[int],
        *,
        name: str = "backbone",
        frozen: bool = True,
        channels_last: bool = True,
        pooling: str = "torchvision",
    ):
        super().__init__()
        layers = tuple(int(k) for k in layers)
        if not layers:
            raise ValueError(f"{name}: no layers to tap")
        if list(layers) != sorted(set(layers)):
            raise ValueError(f"{name}: layers must be strictly increasing, got {layers}")
        if layers[0] < -1 or layers[-1] >= len(children):
            raise ValueError(f"{name}: layer indices must be in [-1, {len(children) - 1}], got {layers}")
        if pooling not in POOLINGS:
            raise ValueError(f"{name}: unknown pooling {pooling!r}: use one of {', '.join(POOLINGS)}")
        kept = list(children[: layers[-1] + 1])
        self.name = name
        self.layers = layers
        self.pooling = pooling
        self.prefixes = tuple(p for p, _ in kept)  # full-model state-dict prefix of each kept child
        self.layer_names = tuple("input" if k < 0 else f"{kept[k][0]} ({type(kept[k][1]).__name__})" for k in layers)
        self.body = nn.Sequential(OrderedDict((str(i), m) for i, (_, m) in enumerate(kept)))
        self.frozen = frozen
        self.channels_last = bool(channels_last)
        self._disable_inplace_after_taps()
        with_stem_convs(self.body)
        if pooling != "torchvision":
            _with_pooling(self.body, pooling)
        if frozen:
            self.requires_grad_(False)
            super().train(False)
        self._min_size: int | None = None
        self._channels: tuple[int, ...] | None = None

    def _disable_inplace_after_taps(self) -> None:
        # a tapped output must not be overwritten by an in-place op of the next child (e.g. a conv tap
        # followed by ReLU(inplace=True)); the ops inside the children only touch their own tensors
        for k in self.layers:
            if k + 1 < len(self.body):
                nxt = self.body[k + 1]
                first = next(iter(nxt.children()), None) if isinstance(nxt, nn.Sequential) else None
                for m in (nxt, first):
                    if m is not None and getattr(m, "inplace", False):
                        m.inplace = False

    def memory_format_for(self, x: torch.Tensor) -> torch.memory_format:
        """The layout a child runs the (N, C, H, W) input ``x`` in: channels-last on CPU when ``channels_last``
        and H*W >= ``CL_MIN_POSITIONS``, else NCHW (contiguous)."""
        cl = self.channels_last and x.device.type == "cpu" and x.shape[-2] * x.shape[-1] >= self.CL_MIN_POSITIONS
        return torch.channels_last if cl else torch.contiguous_format

    def train(self, mode: bool = True) -> FeatureExtractor:
        return super().train(mode and not self.frozen)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = [x] if self.layers[0] == -1 else []
        for i, module in enumerate(self.body):
            if x.dim() == 4:
                x = x.contiguous(memory_format=self.memory_format_for(x))
            x = module(x)
            if i in self.layers:
                out.append(x)
        return out

    # ----------------------------------------------------------------- shapes, probed on the meta device
    def _probe(self, size: int) -> list[torch.Size] | None:
        meta = {k: torch.empty_like(v, device="meta") for k, v in self.body.state_dict(keep_vars=True).items()}
        x = torch.empty(1, 3, size, size, device="meta")
        try:
            outs = torch.func.functional_call(self, {f"body.{k}": v for k, v in meta.items()}, (x,))
        except (RuntimeError, ValueError, IndexError):
            return None
        shapes = [o.shape for o in outs]
        if any(len(s) != 4 or s[2] < 1 or s[3] < 1 for s in shapes):
            return None
        return shapes

    @property
    def min_size(self) -> int:
        """Smallest square input size (pixels) for which every tap has at least one position."""
        if self._min_size is None:
            known = _LPIPS_MIN_SIZE.get(self.name)
            if known is not None and LPIPS_LAYERS.get(self.name) == self.layers and self.pooling == "torchvision":
                self._min_size = known
            else:
                lo, hi = 1, 1024
                if self._probe(hi) is None:
                    raise ValueError(f"{self.name}: layers {self.layers} give no 4-D feature map even at {hi}px")
                while lo < hi:
                    mid = (lo + hi) // 2
                    if self._probe(mid) is None:
                        lo = mid + 1
                    else:
                        hi = mid
                self._min_size = lo
        return self._min_size

    @property
    def channels(self) -> tuple[int, ...]:
        """Channel count of each tap."""
        if self._channels is None:
            known = LPIPS_CHANNELS.get(self.name)
            if known is not None and LPIPS_LAYERS.get(self.name) == self.layers:
                self._channels = known
            else:
                shapes = self._probe(max(self.min_size, 64))
                if shapes is None:
                    raise ValueError(f"{self.name}: layers {self.layers} do not all give 4-D feature maps")
                self._channels = tuple(int(s[1]) for s in shapes)
        return self._channels

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, layers={self.layers}, frozen={self.frozen}, channels_last={self.channels_last}, "
            f"pooling={self.pooling!r}"
        )


# --------------------------------------------------------------------------------------------- weights
def _weights_enum(arch: str):
    from torchvision.models import get_model_weights

    enum = get_model_weights(arch)
    return getattr(enum, "IMAGENET1K_V1", None) or enum.DEFAULT


def imagenet_checkpoint(arch: str, *, allow_download: bool = False) -> Path:
    """Path of a verified ImageNet checkpoint of ``arch`` (see the module docstring for the search order).

    Raises :class:`percept.assets.MissingAssetError` when there is none and ``allow_download`` is False,
    and :class:`percept.assets.ChecksumError` when a file found is not the expected one.
    """
    arch = canonical_arch(arch)
    weights = _weights_enum(arch)
    filename = os.path.basename(weights.url)
    searched: list[str] = []
    full_sha = None
    for rel in (f"weights/torchvision/{arch}_features.pth", f"weights/torchvision/{filename}"):
        if rel in assets.ASSETS:
            full_sha = full_sha or (assets.ASSETS[rel].sha256 if rel.endswith(filename) else None)
            try:
                return assets.locate(rel)
            except assets.MissingAssetError:
                searched += [str(root / rel) for root in assets.asset_roots()]
    hub = Path(torch.hub.get_dir()) / "checkpoints" / filename
    searched.append(str(hub))
    if not hub.is_file() and allow_download:
        weights.get_state_dict(progress=True, check_hash=True)  # downloads into the hub cache
    if hub.is_file():
        got = assets.file_sha256(hub)
        prefix = _HASH_IN_NAME.search(filename)
        ok = got == full_sha if full_sha else (prefix is not None and got.startswith(prefix.group(1)))
        if not ok:
            expected = full_sha or (f"a digest starting {prefix.group(1)}" if prefix else "a known digest")
            raise assets.ChecksumError(
                f"{hub} does not match its checksum (expected {expected}, got {got}); delete it and fetch it again"
            )
        return hub
    known = f"weights/torchvision/{filename}"
    fetch = (
        f"`python -m percept.assets fetch {known}`"
        if known in assets.ASSETS
        else f"`python -c \"import torchvision; torchvision.models.get_weight('{weights}').get_state_dict()\"`"
    )
    raise assets.MissingAssetError(
        f"missing ImageNet weights for {arch} ({filename}). Looked in: {'; '.join(searched)}. Fetch them with "
        f"{fetch}, pass allow_download=True, point {assets.ENV_ASSETS} at an offline asset folder, or build the "
        "backbone with weights='random' if a random network is really what you want."
    )


def load_checkpoint(source: str | os.PathLike | Mapping, *, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Read a state dict from a file (checked against ``sha256`` when given) or pass a mapping through."""
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source).expanduser()
    if not path.is_file():
        raise assets.MissingAssetError(f"checkpoint {path} not found")
    if sha256 is not None:
        got = assets.file_sha256(path)
        if got != sha256.lower():
            raise assets.ChecksumError(f"{path} does not match its checksum (expected sha256 {sha256}, got {got})")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
    return dict(state)


def _load_into(extractor: FeatureExtractor, skeleton_keys: set[str], state: Mapping, arch: str, where: str) -> None:
    """Strictly load the kept children's parameters and buffers from a full-model or features-only state."""
    path = _attribute_path(arch)
    if path == "features" and not any(k.startswith("features.") for k in state):
        state = {f"features.{k}": v for k, v in state.items()}  # features-only checkpoint
    state = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}
    foreign = sorted(k for k in state if k not in skeleton_keys)
    if foreign:
        raise RuntimeError(
            f"{where} is not a {arch} checkpoint: unexpected keys {foreign[:5]}{' ...' if len(foreign) > 5 else ''}"
        )
    target = extractor.body.state_dict()
    mapped = {}
    missing = []
    for key in target:
        idx, rest = key.split(".", 1)
        full = f"{extractor.prefixes[int(idx)]}.{rest}"
        if full not in state:
            missing.append(full)
            continue
        value = state[full]
        if tuple(value.shape) != tuple(target[key].shape):
            raise RuntimeError(
                f"{where}: {full} has shape {tuple(value.shape)}, expected {tuple(target[key].shape)} for {arch}"
            )
        mapped[key] = value.contiguous()  # the weights' memory format is settled here, never in forward
    if missing:
        raise RuntimeError(
            f"{where} lacks {len(missing)} tensors of {arch}'s kept layers: {missing[:5]}{' ...' if len(missing) > 5 else ''}"
        )
    extractor.body.load_state_dict(mapped, strict=True, assign=True)


def build_backbone(
    arch: str,
    layers: Sequence[int] | None = None,
    *,
    weights: str | os.PathLike | Mapping = "imagenet",
    sha256: str | None = None,
    allow_download: bool = False,
    frozen: bool = True,
    channels_last: bool = True,
    pooling: str = "torchvision",
) -> FeatureExtractor:
    """Build a frozen :class:`FeatureExtractor`.

    Args:
        arch: ``"alex"``, ``"vgg"``, ``"squeeze"`` or any torchvision classification model name
            (``"vgg16_bn"``, ``"resnet18"``, ``"efficientnet_b0"``, ``"densenet121"``, ``"inception_v3"``, ...).
        layers: child indices to tap (see :func:`flatten_children`); default: the LPIPS taps for
            AlexNet/VGG-16/SqueezeNet 1.1, Pihlgren et al.'s four layers for the other networks they used.
        weights: ``"imagenet"``, ``"random"``, a checkpoint path, or a state dict (see module docstring).
        sha256: expected digest of a checkpoint file given as ``weights``.
        allow_download: let torchvision download ImageNet weights into its hub cache if missing.
        frozen, channels_last, pooling: see :class:`FeatureExtractor`.
    """
    arch = canonical_arch(arch)
    if layers is None:
        layers = LPIPS_LAYERS.get(arch) or PIHLGREN_LAYERS.get(arch)
        if layers is None:
            raise ValueError(f"{arch}: no default layers; pass layers=(...) (indices into flatten_children)")
    options = {"name": arch, "frozen": frozen, "channels_last": channels_last, "pooling": pooling}
    if isinstance(weights, str) and weights == "random":
        model = _construct_random(arch)
        extractor = FeatureExtractor(flatten_children(model, arch), layers, **options)
    else:
        if isinstance(weights, str) and weights == "imagenet":
            path = imagenet_checkpoint(arch, allow_download=allow_download)
            state, where = load_checkpoint(path), str(path)
        elif isinstance(weights, (str, os.PathLike, Mapping)):
            state = load_checkpoint(weights, sha256=sha256)
            where = "state dict" if isinstance(weights, Mapping) else str(weights)
        else:
            raise TypeError(f"weights must be 'imagenet', 'random', a path or a state dict, got {type(weights)}")
        model = _construct(arch, meta=True)
        skeleton = set(model.state_dict())
        extractor = FeatureExtractor(flatten_children(model, arch), layers, **options)
        _load_into(extractor, skeleton, state, arch, where)
        if frozen:
            extractor.requires_grad_(False)
    return extractor
