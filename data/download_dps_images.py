"""Fetch and verify the test images of Sjögren et al. 2022 (their repository's ``images/`` folder, 90 files).

    python data/download_dps_images.py                       # from GitHub into data/dps_images/
    python data/download_dps_images.py --from PATH/images    # copy from a local checkout instead (offline)

The images are not redistributed with percept: they come from github.com/guspih/deep_perceptual_similarity_analysis
at the commit the analysis was published with (da8fa05, 2022-07-07), which has no licence file. Every file is
checked against its git blob id in that commit (``experiments/dps_analysis/original_images.tsv``), so a changed,
truncated or foreign file is refused. ``experiments/dps_analysis/run.py`` reads ``data/dps_images/`` when it is
there (else it generates labelled stand-in images) and reports whether every file matched.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "experiments" / "dps_analysis" / "original_images.tsv"
DEFAULT_DEST = ROOT / "data" / "dps_images"
COMMIT = "da8fa052c6ae8c7446fc5effa42389e68c8cfad2"
BASE = f"https://raw.githubusercontent.com/guspih/deep_perceptual_similarity_analysis/{COMMIT}/images/"


def read_manifest(path: Path = MANIFEST) -> dict[str, tuple[int, str]]:
    """{relative path: (bytes, git blob id)} of the original ``images/`` folder."""
    out = {}
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        rel, size, blob = line.split("\t")
        out[rel] = (int(size), blob)
    return out


def git_blob_id(data: bytes) -> str:
    """What ``git hash-object`` prints for a file with these bytes."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _fetch(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.read()
    except OSError as err:
        raise SystemExit(f"could not download {url}: {err}. Offline? Use --from with a local checkout.") from err


def fetch_images(dest: Path = DEFAULT_DEST, source: Path | None = None) -> int:
    """Put every manifest file into ``dest`` (from ``source`` or GitHub), verified; returns the number written."""
    manifest = read_manifest()
    written = 0
    for rel, (size, blob) in manifest.items():
        target = dest / rel
        if target.is_file() and git_blob_id(target.read_bytes()) == blob:
            continue
        if source is not None:
            path = Path(source) / rel
            if not path.is_file():
                raise SystemExit(f"{path} is missing (expected the original images/ folder)")
            data = path.read_bytes()
        else:
            data = _fetch(BASE + rel)
        got = git_blob_id(data)
        if got != blob:
            raise SystemExit(f"{rel}: git blob id {got} ({len(data)} bytes), expected {blob} ({size} bytes)")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_bytes(data)
        tmp.replace(target)
        written += 1
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dest", type=Path, default=DEFAULT_DEST, help="target folder (default data/dps_images)")
    p.add_argument("--from", dest="source", type=Path, default=None, help="copy from this images/ folder")
    args = p.parse_args(argv)
    if args.source is not None and args.source.resolve() == args.dest.resolve():
        raise SystemExit("--from and --dest are the same folder")
    n = fetch_images(args.dest, args.source)
    print(f"{args.dest}: {len(read_manifest())} images verified ({n} written)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
