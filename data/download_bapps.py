"""Download and verify the BAPPS dataset (Zhang et al. 2018): 2AFC train/val and JND val.

    python data/download_bapps.py [--root data/bapps] [--parts val jnd train] [--keep-archives]

About 6.6 GB in all (2AFC train 5.3 GB, 2AFC val 1.1 GB, JND 0.2 GB). Downloads resume where they
stopped (HTTP range requests on a ``.partial`` file). Each archive is checked against its sha256
(recorded here; an archive without a recorded digest, currently the JND one, is extracted
only with ``--sha256 PART=HEX`` or ``--allow-unverified``), then extracted, and the extracted folders are checked for the official
layout (``2afc/{train,val}/<subset>/{ref,p0,p1,judge}``, ``jnd/val/<subset>/{p0,p1,same}``) with
matching file counts. Run it again to repair an interrupted or partial download.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tarfile
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

BASE = "https://perceptual-similarity.s3.us-west-2.amazonaws.com/dataset/"
#: sha256 of jnd.tar.gz. NOT YET RECORDED: it could not be computed where this check was written (no
#: network). Fill it in from a trusted download (``sha256sum jnd.tar.gz``). Until then the JND archive is
#: extracted only with ``--sha256 jnd=<hex>`` (a digest you trust) or ``--allow-unverified``.
JND_SHA256: str | None = None
ARCHIVES = {
    # part: (file, sha256 (None: not recorded yet), folder it extracts into, {subset: required sub-folders})
    "val": (
        "twoafc_val.tar.gz",
        "41486671b06de923e7ba277c4797d4d9d86d609863ba35ecdb576133f8b9d859",
        "2afc/val",
        {s: ("ref", "p0", "p1", "judge") for s in ("traditional", "cnn", "superres", "deblur", "color", "frameinterp")},
    ),
    "train": (
        "twoafc_train.tar.gz",
        "b4f5c772c7cd88ac44bcb4ff0741745d434c05f0094f2bfb262ddcd0055bf393",
        "2afc/train",
        {s: ("ref", "p0", "p1", "judge") for s in ("traditional", "cnn", "mix")},
    ),
    "jnd": ("jnd.tar.gz", JND_SHA256, "jnd/val", {s: ("p0", "p1", "same") for s in ("traditional", "cnn")}),
}


def download(url: str, dest: Path) -> None:
    """Download ``url`` to ``dest``, resuming a ``dest.partial`` left by an earlier run."""
    partial = dest.with_name(dest.name + ".partial")
    start = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except OSError as err:
        raise SystemExit(f"could not download {url}: {err}. Offline? Copy the archive to {dest} by hand.") from err
    with response:
        resumed = response.status == 206
        total = int(response.headers.get("Content-Length") or 0) + (start if resumed else 0)
        with (
            open(partial, "ab" if resumed else "wb") as out,
            tqdm(
                total=total or None, initial=start if resumed else 0, unit="B", unit_scale=True, desc=dest.name
            ) as bar,
        ):
            for chunk in iter(lambda: response.read(1 << 20), b""):
                out.write(chunk)
                bar.update(len(chunk))
    partial.rename(dest)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f, tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc="sha256") as bar:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest()


def check_layout(folder: Path, subsets: dict[str, tuple[str, ...]]) -> list[str]:
    """Problems with an extracted folder: missing sub-folders or sub-folders of unequal size."""
    problems = []
    for subset, parts in subsets.items():
        counts = {}
        for part in parts:
            path = folder / subset / part
            counts[part] = sum(1 for _ in path.iterdir()) if path.is_dir() else 0
        if min(counts.values()) == 0:
            problems.append(f"{folder / subset}: missing or empty {[p for p, n in counts.items() if n == 0]}")
        elif len(set(counts.values())) != 1:
            problems.append(f"{folder / subset}: unequal file counts {counts}")
    return problems


def fetch_part(part: str, root: Path, keep: bool, *, sha256_override: str | None = None,
               allow_unverified: bool = False) -> None:
    name, digest, folder, subsets = ARCHIVES[part]
    digest = sha256_override or digest
    target = root / folder
    if target.is_dir() and not check_layout(target, subsets):
        print(f"{part}: {target} is complete")
        return
    root.mkdir(parents=True, exist_ok=True)
    archive = root / name
    if not archive.exists():
        download(BASE + name, archive)
    got = sha256(archive)
    if digest is None and not allow_unverified:
        raise SystemExit(
            f"{name}: no sha256 is recorded for this archive, so it is not extracted (its sha256 is {got}). Compare "
            f"it with a trusted source, then pass --sha256 {part}={got} (or record it in {Path(__file__).name}), "
            "or pass --allow-unverified to extract it anyway"
        )
    if digest is not None and got != digest:
        archive.rename(archive.with_name(name + ".corrupt"))
        raise SystemExit(f"{name}: sha256 {got} != {digest}; moved aside as .corrupt, run again to re-download")
    if digest is None:
        print(f"warning: extracting {name} without a recorded checksum (--allow-unverified); sha256 {got}",
              file=sys.stderr)
    target.parent.mkdir(parents=True, exist_ok=True)
    # the 2AFC archives hold train/... or val/..., the JND archive holds jnd/val/...
    into = root if folder.startswith("jnd") else target.parent
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        for member in tqdm(members, desc=f"extract {name}", unit="file"):
            tar.extract(member, into, filter="data")
    problems = check_layout(target, subsets)
    if problems:
        raise SystemExit(f"{name} extracted but incomplete:\n  " + "\n  ".join(problems))
    if not keep:
        archive.unlink()
    print(f"{part}: extracted and verified into {target}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent / "bapps")
    parser.add_argument("--parts", nargs="+", choices=sorted(ARCHIVES), default=["val", "jnd", "train"])
    parser.add_argument("--keep-archives", action="store_true")
    parser.add_argument("--sha256", action="append", default=[], metavar="PART=HEX",
                        help="expected sha256 of a part's archive (e.g. jnd=..., from a trusted source)")
    parser.add_argument("--allow-unverified", action="store_true",
                        help="extract an archive that has no recorded sha256 (the JND archive until it is recorded)")
    args = parser.parse_args(argv)
    expected = {}
    for item in args.sha256:
        part, _, hexdigest = item.partition("=")
        if part not in ARCHIVES or len(hexdigest) != 64 or any(c not in "0123456789abcdef" for c in hexdigest.lower()):
            parser.error(f"--sha256 {item!r}: use PART=HEX with PART one of {', '.join(sorted(ARCHIVES))} and 64 hex digits")
        expected[part] = hexdigest.lower()
    for part in args.parts:
        fetch_part(part, args.root, args.keep_archives, sha256_override=expected.get(part),
                   allow_unverified=args.allow_unverified)
    return 0


if __name__ == "__main__":
    sys.exit(main())
