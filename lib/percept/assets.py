"""Where weights and data live, how they are checked, and how they are fetched.

Lookup order for an asset ``weights/czolbe/rgb_watson_fft_trial0.pth`` (paths are relative to an
asset root, with the same layout everywhere):

1. ``$PERCEPT_ASSETS/<relpath>`` when the environment variable is set (an offline folder);
2. ``<cache>/<relpath>`` where ``<cache>`` is ``$PERCEPT_CACHE`` or ``~/.cache/percept``;
3. a copy shipped inside a pip dependency (torchmetrics ships the LPIPS v0.1 linear weights,
   the ``lpips`` package ships v0.0 and v0.1).

Every file found is checked against the sha256 in :data:`ASSETS` before use (see :class:`Asset` for the
checkpoints the project derives from an upstream file). Nothing is downloaded implicitly: a missing file raises :class:`MissingAssetError` naming the file, the folders searched and
the command that fetches it (``make assets`` or ``python -m percept.assets fetch <relpath>``).

>>> from percept import assets
>>> path = assets.locate("weights/czolbe/rgb_watson_fft_trial0.pth")   # doctest: +SKIP
>>> assets.fetch("weights/czolbe/rgb_watson_fft_trial0.pth")           # with internet; checked  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from percept.safe_npy import NPY_MAX_BYTES, UnsafeFileError, read_npy_dict  # noqa: F401 (public here too)

ENV_ASSETS = "PERCEPT_ASSETS"
ENV_CACHE = "PERCEPT_CACHE"

_CZOLBE = "https://raw.githubusercontent.com/SteffenCzolbe/PerceptualSimilarity/master/src/loss/weights/"
_ELPIPS = "https://raw.githubusercontent.com/mkettune/elpips/master/elpips/"
_LPIPS = "https://raw.githubusercontent.com/richzhang/PerceptualSimilarity/master/lpips/weights/"
_TORCHVISION = "https://download.pytorch.org/models/"


@dataclass(frozen=True)
class Asset:
    """One file of the asset layout.

    ``sha256`` is the digest of the file's bytes. Checkpoints that the project derives itself from
    an upstream file (the features part of a torchvision network) cannot be byte-identical across
    torch versions, so they carry ``content_sha256``: a digest of the tensors' names, dtypes, shapes
    and values (see :func:`state_dict_digest`). A file is accepted when it matches either digest.

    ``source_sha256`` is the digest of the upstream file a derived checkpoint is made from; :func:`fetch`
    checks the download against it before deriving and records the derived tensors' digest next to
    the file (``<file>.source.json``), which :func:`verify` then accepts too. That covers a derived
    file whose values are not bit-identical to an offline copy's (the offline AlexNet features were
    recovered from a conversion of the torchvision weights, so their equality is not known).

    ``git_sha1`` is the git blob id of an upstream file whose bytes are not available here but whose
    repository tree is (``sha1(b"blob <size>\\0" + bytes)``, what ``git hash-object`` prints): it verifies
    the exact bytes a download from that repository must have, without knowing their sha256.
    """

    relpath: str
    url: str
    sha256: str | None = None
    content_sha256: str | None = None
    package_copy: tuple[str, ...] = ()  # "module:relative/path" inside an installed package
    derive: str | None = None  # "features": keep the ``features.`` part of a torchvision network
    source_sha256: str | None = None  # digest of the upstream file that ``derive`` starts from
    git_sha1: str | None = None  # git blob id of the file in its upstream repository


def _entries() -> dict[str, Asset]:
    table: list[Asset] = []
    czolbe = {
        "gray_adaptive_trial0.pth": "db9673847841ebdfa130f9d861e6e8a27426cc4f88e5f8b702639eda7a089667",
        "gray_pnet_lin_squeeze_trial0.pth": "09edfe8565911f6c275646e1a5a5a04a17997e8175bb79bbc10c6ca3e87e602a",
        "gray_pnet_lin_vgg_trial0.pth": "bbf8ea727bac61aaaefba7fae63a10547c03d4cd5b81a7ba05d8003a1ca96788",
        "gray_watson_dct_trial0.pth": "6401e9d3a430ac5dac691f93f1b9b61562ce13457a26b4dcb87eea39c5ea7ff4",
        "gray_watson_fft_trial0.pth": "74fda350525e4660671bc957944d6e9773b3989effc5aa9d2b73eccd5943584e",
        "rgb_adaptive_trial0.pth": "3b2d5d28b8468f5e1d119f1fa709199b6c645dc7f58538d939ebc27287fb95d4",
        "rgb_pnet_lin_squeeze_trial0.pth": "7f4c84e909231e6eb253f55f8484e5895c2044178fe3316912ef4ebd50dc7b14",
        "rgb_pnet_lin_vgg_trial0.pth": "df4bad76bf9d8bca8466f4e34adc12289dbce25c6e040cba3a5152c24cdf3682",
        "rgb_watson_dct_trial0.pth": "bde40e0bc1912060da45b4487df660450ba91fa44c031f22a144c661d99488ef",
        "rgb_watson_fft_trial0.pth": "98386c0e0841fc346ab4c7d296788ed0af81f2ca8866a885be4405d03321a717",
    }
    table += [Asset(f"weights/czolbe/{f}", _CZOLBE + f, sha) for f, sha in czolbe.items()]
    # Watson-VGG (about 59 MB each: the VGG-16 trunk is inside). Their sha256 is not known here; their git blob
    # ids are, from the upstream repository's tree at master 3729dd1 (added in 6974fc9, 2019, never changed)
    watson_vgg = {
        "rgb_watson_vgg_trial0.pth": "ad6123a84f603e15cf54bb121bb7eb26f25cbb8f",
        "gray_watson_vgg_trial0.pth": "b4c4cc3e28f69e267e0b38e425a6ee65fe4a1afd",
    }
    table += [Asset(f"weights/czolbe/{f}", _CZOLBE + f, git_sha1=sha1) for f, sha1 in watson_vgg.items()]
    elpips = {
        "squeeze.npy": "9cf7e036dbcac9e8134b45641e5efd32c5e97681f7c3b08b911ab3c78236a4b9",
        "squeeze_full_maxpool.npy": "bcaae2eb93410893fb2f97b5fc57854ef9cc8ebb813304a617a5416b68bedc22",
        "vgg_full_avg.npy": "2f9171c0fb542223efc240fed40c0e56ad3014d5a9153e4a3fdc00cf7b1bb16e",
        "vgg_maxpool.npy": "0466232a296381ec27a580a1e8977dd8bc3bd552f36644b03de41189a8afc03e",
    }
    table += [Asset(f"weights/elpips/{f}", _ELPIPS + f, sha) for f, sha in elpips.items()]
    lpips = {
        "v0.1/alex.pth": "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
        "v0.1/squeeze.pth": "4a5350f23600cb79923ce65bb07cbf57dca461329894153e05a1346bd531cf76",
        "v0.1/vgg.pth": "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
        "v0.0/alex.pth": "18720f55913d0af89042f13faa7e536a6ce1444a0914e6db9461355ece1e8cd5",
        "v0.0/squeeze.pth": "c27abd3a0145541baa50990817df58d3759c3f8154949f42af3b59b4e042d0bf",
        "v0.0/vgg.pth": "b9e4236260c3dd988fc79d2a48d645d885afcbb21f9fd595e6744cf7419b582c",
    }
    for f, sha in lpips.items():
        version, net = f.split("/")
        copies = (f"lpips:weights/{f}",)
        if version == "v0.1":
            copies = (f"torchmetrics:functional/image/lpips_models/{net}",) + copies
        table.append(Asset(f"weights/lpips/{f}", _LPIPS + f, sha, package_copy=copies))
    table += [
        Asset(
            "weights/torchvision/squeezenet1_1_features.pth",
            _TORCHVISION + "squeezenet1_1-b8a52dc0.pth",
            content_sha256="138cd4e05be7cdec1c7c37c6b89958e11ab53d1bd62dba753f05890a2ca6755d",
            derive="features",
        ),
        Asset(  # the offline copy (sha256; see the asset README) or derived from torchvision's full file
            "weights/torchvision/alexnet_features.pth",
            _TORCHVISION + "alexnet-owt-7be5be79.pth",
            "2cdc3ada1b15785eebc8e8471d92914f2f09a71639048f013e7108dac6f47933",
            content_sha256="5f42afbc4c556e78c75305e9043fe36467b8ab4eda92d6a6bf034afd7167ec68",
            derive="features",
            source_sha256="7be5be791159472b1fbf3c69796f7cb30dca7ad8466c2df70058c37116cdee02",
        ),
        Asset(
            "weights/torchvision/alexnet-owt-7be5be79.pth",
            _TORCHVISION + "alexnet-owt-7be5be79.pth",
            "7be5be791159472b1fbf3c69796f7cb30dca7ad8466c2df70058c37116cdee02",
        ),
        Asset(
            "weights/torchvision/vgg16-397923af.pth",
            _TORCHVISION + "vgg16-397923af.pth",
            "397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0",
        ),
    ]
    mnist = {
        "t10k-images-idx3-ubyte.gz": "167310007f03058885c7e95e6c0b19c20de5c7fd3031f4cbdadc9014a523d80b",
        "t10k-labels-idx1-ubyte.gz": "fc607395669ec21321ea83e4b82c0544b7e8e63ff5b34337c06bc0a17cc0da3c",
        "train-labels-idx1-ubyte.gz": "ec02e7948609e5754d47881c09b8afdd8dfa60600b9e5388c8c54a67069ec772",
    }
    table += [
        Asset(f"data/mnist/{f}", "https://ossci-datasets.s3.amazonaws.com/mnist/" + f, sha) for f, sha in mnist.items()
    ]
    # offline-only copies (no upstream file has these bytes): used when the real download is impossible
    table += [
        # the 60,000 MNIST training digits recovered from a public PNG copy (not byte-identical to the
        # official file; within one grey level of it): see percept.data.mnist
        Asset(
            "data/mnist_train_reconstructed/train-images-idx3-ubyte.gz",
            "",
            "0abd94c60aab966d91409bdd2a60e95311efdfe3882db7af62ac64e46bcf1407",
        ),
    ]
    return {a.relpath: a for a in table}


#: every file the project knows, by path relative to an asset root
ASSETS: dict[str, Asset] = _entries()


class MissingAssetError(FileNotFoundError):
    """A weight or data file is not on this machine."""


class ChecksumError(RuntimeError):
    """A file exists but its content is not the expected one (corrupt or a different version)."""


def cache_dir() -> Path:
    """The user cache that ``make assets`` fills: ``$PERCEPT_CACHE`` or ``~/.cache/percept``."""
    return Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "percept").expanduser()


def asset_roots() -> list[Path]:
    """Folders searched, in order: ``$PERCEPT_ASSETS`` (if set), then the cache."""
    roots = []
    if os.environ.get(ENV_ASSETS):
        roots.append(Path(os.environ[ENV_ASSETS]).expanduser())
    roots.append(cache_dir())
    return roots


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def state_dict_digest(state: dict) -> str:
    """sha256 over a state dict's sorted names, dtypes, shapes and raw values."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().contiguous().cpu()
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


_verified: dict[tuple[str, float, int], bool] = {}


def git_blob_sha1(path: Path) -> str:
    """The git blob id of a file's bytes (``git hash-object path``)."""
    h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _provenance_path(path: Path) -> Path:
    return path.with_name(path.name + ".source.json")


def _recorded_content(path: Path, asset: Asset) -> str | None:
    """The tensor digest that :func:`fetch` recorded when it derived ``path`` from a verified upstream file."""
    record = _provenance_path(path)
    if asset.source_sha256 is None or not record.is_file():
        return None
    try:
        info = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    if info.get("source_sha256") != asset.source_sha256:
        return None
    return info.get("content_sha256")


def verify(path: Path, asset: Asset) -> None:
    """Raise :class:`ChecksumError` unless ``path`` holds exactly ``asset``.

    Accepted: the file's sha256 equals ``asset.sha256``; or its git blob id equals ``asset.git_sha1``; or
    its tensors' digest (:func:`state_dict_digest`) equals ``asset.content_sha256`` or the digest
    :func:`fetch` recorded when it derived the file from the verified upstream file."""
    st = path.stat()
    key = (str(path), st.st_mtime, st.st_size)
    if _verified.get(key):
        return
    expected, got = [], []
    if asset.sha256 is not None:
        expected.append(f"sha256 {asset.sha256}")
        digest = file_sha256(path)
        got.append(f"sha256 {digest}")
        if digest == asset.sha256:
            _verified[key] = True
            return
    if asset.git_sha1 is not None:
        expected.append(f"git blob {asset.git_sha1}")
        digest = git_blob_sha1(path)
        got.append(f"git blob {digest}")
        if digest == asset.git_sha1:
            _verified[key] = True
            return
    contents = [c for c in (asset.content_sha256, _recorded_content(path, asset)) if c is not None]
    if contents:
        import torch

        try:
            digest = state_dict_digest(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as err:  # unreadable pickle: report it as a corrupt file
            raise ChecksumError(f"{path} cannot be read as a checkpoint ({err}); delete it and fetch it again") from err
        expected += [f"tensor digest {c}" for c in contents]
        got.append(f"tensor digest {digest}")
        if digest in contents:
            _verified[key] = True
            return
    raise ChecksumError(
        f"{path} does not match its checksum (expected {' or '.join(expected)}; got {', '.join(got)}). The file is "
        f"corrupt or a different version; delete it and run: python -m percept.assets fetch {asset.relpath}"
    )


def _package_file(spec: str) -> Path | None:
    module, rel = spec.split(":", 1)
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        return None
    for location in found.submodule_search_locations:
        candidate = Path(location) / rel
        if candidate.is_file():
            return candidate
    return None


def _lookup(relpath: str) -> Asset:
    try:
        return ASSETS[relpath]
    except KeyError:
        raise KeyError(f"unknown asset {relpath!r}; known assets: {', '.join(sorted(ASSETS))}") from None


def locate(relpath: str) -> Path:
    """Return the verified local path of an asset, or raise :class:`MissingAssetError`.

    Never downloads. See the module docstring for the search order.
    """
    asset = _lookup(relpath)
    searched = []
    for root in asset_roots():
        path = root / relpath
        searched.append(str(path))
        if path.is_file():
            verify(path, asset)
            return path
    for spec in asset.package_copy:
        path = _package_file(spec)
        searched.append(f"package {spec}")
        if path is not None:
            verify(path, asset)
            return path
    raise MissingAssetError(
        f"missing asset {relpath}. Looked in: {'; '.join(searched)}. "
        f"Fetch it with `python -m percept.assets fetch {relpath}` (or `make assets` for everything), "
        f"or point {ENV_ASSETS} at an offline copy of the asset folder."
    )


def data_dir(relpath: str) -> Path | None:
    """The first asset root holding folder ``relpath`` (e.g. ``data/celeba_sample``), or None."""
    for root in asset_roots():
        if (root / relpath).is_dir():
            return root / relpath
    return None


def _source_asset(asset: Asset) -> Asset | None:
    """The table's entry for the upstream file a derived asset is made from (same URL), if any."""
    for other in ASSETS.values():
        if other is not asset and other.url == asset.url and other.derive is None:
            return other
    return None


def fetch(relpath: str, *, progress: bool = True) -> Path:
    """Download an asset into the cache (if no verified copy exists yet) and return its path.

    A derived asset (``derive="features"``) is made from its upstream file: a verified local copy of that
    file when there is one, else a download checked against ``source_sha256``; the features are saved
    with a ``.source.json`` record of where they came from and of their tensor digest."""
    asset = _lookup(relpath)
    try:
        return locate(relpath)
    except MissingAssetError:
        if not asset.url:
            raise MissingAssetError(
                f"{relpath} is an offline-only asset (no upstream file has these bytes): it cannot be "
                f"downloaded; point {ENV_ASSETS} at an asset folder that holds it"
            ) from None
    dest = cache_dir() / relpath
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        source = None
        if asset.derive is not None:
            upstream = _source_asset(asset)
            if upstream is not None:
                try:
                    source = locate(upstream.relpath)
                except MissingAssetError:
                    source = None
        if source is None:
            source = Path(tmp) / Path(asset.url).name
            _download(asset.url, source, progress=progress)
        if asset.derive == "features":
            import torch

            if asset.source_sha256 is not None:
                got = file_sha256(source)
                if got != asset.source_sha256:
                    raise ChecksumError(
                        f"{asset.url} does not match its checksum (expected sha256 {asset.source_sha256}, got {got})"
                    )
            state = torch.load(source, map_location="cpu", weights_only=True)
            features = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
            if not features:
                raise ChecksumError(f"{asset.url} holds no 'features.' tensors: not the expected checkpoint")
            derived = Path(tmp) / "derived.pth"
            torch.save(features, derived)
            record = None
            if asset.source_sha256 is not None:
                record = {
                    "derived_from": asset.url,
                    "source_sha256": asset.source_sha256,
                    "content_sha256": state_dict_digest(features),
                }
                _provenance_path(derived).write_text(json.dumps(record, indent=1) + "\n")
            verify(derived, asset)
            if record is not None:
                shutil.move(str(_provenance_path(derived)), _provenance_path(dest))
            shutil.move(str(derived), dest)
        else:
            verify(source, asset)
            shutil.move(str(source), dest)
    return dest


def _download(url: str, dest: Path, *, progress: bool) -> None:
    from tqdm.auto import tqdm

    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar:
                for chunk in iter(lambda: response.read(1 << 16), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
    except OSError as err:
        raise MissingAssetError(
            f"could not download {url} ({err}). Offline? Point {ENV_ASSETS} at an offline copy of the asset folder."
        ) from err


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m percept.assets", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="show every asset and where it is found")
    fetch_p = sub.add_parser("fetch", help="download assets into the cache (all when none is named)")
    fetch_p.add_argument("relpath", nargs="*")
    fetch_p.add_argument("--skip-missing", action="store_true", help="report failures but exit 0")
    args = parser.parse_args(argv)
    if args.command == "list":
        for relpath in sorted(ASSETS):
            try:
                where = str(locate(relpath))
            except (MissingAssetError, ChecksumError) as err:
                where = f"MISSING ({type(err).__name__})"
            print(f"{relpath:55s} {where}")
        return 0
    failures = 0
    for relpath in args.relpath or sorted(ASSETS):
        try:
            print(f"{relpath}: {fetch(relpath)}")
        except (MissingAssetError, ChecksumError) as err:
            failures += 1
            print(f"{relpath}: FAILED: {err}", file=sys.stderr)
    return 0 if failures == 0 or args.skip_missing else 1


if __name__ == "__main__":
    sys.exit(main())
