"""Download aligned CelebA and preprocess it as the paper did, for the VAE experiment.

    python data/download_celeba.py                          # Google Drive (needs `pip install gdown`)
    python data/download_celeba.py --source img_align_celeba.zip   # a zip (or folder) you fetched yourself
    python data/download_celeba.py --url https://mirror/img_align_celeba.zip

Steps, each resumable:

1. ``img_align_celeba.zip`` (1.4 GB, 202,599 JPEGs of 178x218) goes to ``<root>/celeba/`` and its md5
   (00d2c5bc6d35e252742224ab0c1e8fcb, torchvision's value) is checked. gdown resumes a partial Google Drive
   download; ``--url`` downloads resume with HTTP range requests.
2. Every image is cropped to the box (25, 45, 153, 178) and resized to 64x64 with a Lanczos filter
   (:func:`percept.data.celeba.preprocess`), then written to ``<root>/celeba/64x64/NNNNNN.png``. Images
   already written are skipped; each PNG is written to a temporary name and renamed, so an interruption
   leaves no half-written file.
3. The result is verified: the image count (202,599 for the full dataset) and that every PNG is 64x64 RGB.

CelebA is for non-commercial research use (see its licence). Offline this fails with a message; the
experiment then falls back to the 32-image sample of the offline asset folder.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import sys
import urllib.error
import urllib.request
import zipfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ZIP_NAME = "img_align_celeba.zip"
ZIP_MD5 = "00d2c5bc6d35e252742224ab0c1e8fcb"
GDRIVE_ID = "0B7EVK8r0v71pZjFTYXZWM3FlRnM"
N_IMAGES = 202_599
_ZIPS: dict[str, zipfile.ZipFile] = {}


class DownloadError(RuntimeError):
    pass


def md5sum(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_url(url: str, dest: Path, timeout: float) -> None:
    """HTTP(S) download to ``dest`` that resumes a previous ``dest.part`` with a range request."""
    from tqdm.auto import tqdm

    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # already complete
            part.rename(dest)
            return
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, OSError) as err:
        raise DownloadError(f"{url}: {getattr(err, 'reason', err)}") from err
    with response:
        resumed = response.status == 206
        mode = "ab" if resumed else "wb"
        total = int(response.headers.get("Content-Length") or 0) + (have if resumed else 0)
        with open(part, mode) as out, tqdm(total=total or None, initial=have if resumed else 0, unit="B",
                                           unit_scale=True, desc=dest.name) as bar:  # fmt: skip
            for chunk in iter(lambda: response.read(1 << 20), b""):
                out.write(chunk)
                bar.update(len(chunk))
    part.rename(dest)


def fetch_zip(folder: Path, url: str | None, timeout: float) -> Path:
    """``folder/img_align_celeba.zip`` with a verified md5, downloading it if needed."""
    dest = folder / ZIP_NAME
    folder.mkdir(parents=True, exist_ok=True)
    if dest.is_file():
        print(f"checking md5 of {dest} ...")
        if md5sum(dest) == ZIP_MD5:
            return dest
        print(f"{dest} is incomplete or corrupt (md5 mismatch): fetching it again")
        dest.unlink()
    if url:
        download_url(url, dest, timeout)
    else:
        try:
            import gdown
        except ImportError as err:
            raise DownloadError(
                "downloading from Google Drive needs gdown (`pip install gdown`); or fetch img_align_celeba.zip "
                "yourself (e.g. from the CelebA website) and pass --source PATH, or pass --url of a mirror"
            ) from err
        try:
            out = gdown.download(id=GDRIVE_ID, output=str(dest), quiet=False, resume=True)
        except Exception as err:
            raise DownloadError(f"Google Drive download failed: {type(err).__name__}: {err}") from err
        if not out or not dest.is_file():
            raise DownloadError("Google Drive download failed (quota exceeded or no network?)")
    if md5sum(dest) != ZIP_MD5:
        raise DownloadError(f"{dest} has the wrong md5 (expected {ZIP_MD5}); delete it and try again")
    return dest


def _convert(job: tuple[str, str | None, str, str]) -> str | None:
    """Preprocess one image (from a folder or a zip member) to a 64x64 PNG; returns an error or None."""
    import io

    from PIL import Image

    from percept.data.celeba import preprocess

    source, member, dest, _ = job
    try:
        if member is None:
            image = Image.open(source)
        else:
            if source not in _ZIPS:  # one open archive per worker process: its index has 202,599 entries
                _ZIPS[source] = zipfile.ZipFile(source)
            image = Image.open(io.BytesIO(_ZIPS[source].read(member)))
        out = preprocess(image)
        tmp = dest + ".tmp.png"
        out.save(tmp)
        os.replace(tmp, dest)
    except Exception as err:
        return f"{member or source}: {type(err).__name__}: {err}"
    return None


def list_sources(source: Path) -> list[tuple[str, str | None, str]]:
    """(path, zip member or None, image name) of every JPEG in a folder or zip."""
    if source.is_dir():
        return [(str(p), None, p.stem) for p in sorted(source.rglob("*.jpg"))]
    if zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as z:
            return [(str(source), m, Path(m).stem) for m in sorted(z.namelist()) if m.lower().endswith(".jpg")]
    raise DownloadError(f"{source} is neither a folder of JPEGs nor a zip file")


def preprocess_all(source: Path, out_dir: Path, workers: int) -> int:
    from tqdm.auto import tqdm

    items = list_sources(source)
    if not items:
        raise DownloadError(f"no *.jpg images in {source}")
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(path, member, str(out_dir / f"{name}.png"), name) for path, member, name in items]
    todo = [j for j in jobs if not Path(j[2]).is_file()]
    print(f"{len(jobs):,} images in {source}; {len(jobs) - len(todo):,} already preprocessed, {len(todo):,} to do")
    errors = []
    if todo:
        if workers > 1 and len(todo) > 100:
            with ProcessPoolExecutor(workers) as pool:
                results = pool.map(_convert, todo, chunksize=64)
                errors = [e for e in tqdm(results, total=len(todo), desc="crop+resize", unit="img") if e]
        else:
            errors = [e for e in (_convert(j) for j in tqdm(todo, desc="crop+resize", unit="img")) if e]
    for e in errors[:10]:
        print(f"error: {e}", file=sys.stderr)
    if errors:
        raise DownloadError(f"{len(errors)} images could not be preprocessed (first ones above)")
    return len(jobs)


def verify(out_dir: Path, expected: int) -> None:
    from tqdm.auto import tqdm

    from percept.data import DatasetError
    from percept.data.celeba import read_png

    files = sorted(out_dir.glob("*.png"))
    if len(files) != expected:
        raise DownloadError(f"{out_dir} holds {len(files):,} images, expected {expected:,}")
    bad = []
    for f in tqdm(files, desc="verify", unit="img"):
        try:
            read_png(f)
        except DatasetError as err:
            bad.append(str(err))
    if bad:
        raise DownloadError(f"{len(bad)} corrupt images, e.g. {bad[0]}; delete them and run this script again")


def main(argv: list[str] | None = None) -> int:
    from percept.data import data_root
    from percept.data.celeba import processed_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=None, help=f"data root (default: {data_root()})")
    parser.add_argument(
        "--source",
        type=Path,
        default=None,
        help="an img_align_celeba.zip or folder of aligned JPEGs you already have (no download)",
    )
    parser.add_argument("--url", default=None, help="download img_align_celeba.zip from this URL (resumable)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--timeout", type=float, default=60.0, help="network timeout in seconds")
    parser.add_argument("--keep-zip", action="store_true", help="keep the zip after preprocessing")
    args = parser.parse_args(argv)
    root = (args.root or data_root()).expanduser()
    out_dir = processed_dir(root)
    socket.setdefaulttimeout(args.timeout)
    try:
        if args.source is not None:
            if not args.source.exists():
                raise DownloadError(f"--source {args.source} does not exist")
            source, downloaded = args.source, False
        else:
            source, downloaded = fetch_zip(root / "celeba", args.url, args.timeout), True
        n = preprocess_all(source, out_dir, args.workers)
        verify(out_dir, n)
        if downloaded and n == N_IMAGES and not args.keep_zip:
            source.unlink()
    except DownloadError as err:
        print(
            f"error: {err}.\nWithout the dataset the VAE experiment falls back to the 32-image CelebA sample of the "
            "offline asset folder ($PERCEPT_ASSETS/data/celeba_sample) and says so in its results.",
            file=sys.stderr,
        )
        return 1
    note = "" if n == N_IMAGES else f" (the full dataset has {N_IMAGES:,})"
    print(f"ok: {n:,} 64x64 images in {out_dir}{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
