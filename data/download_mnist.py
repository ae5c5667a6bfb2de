"""Download MNIST (the paper's 60,000 / 10,000 split) for the VAE experiment.

    python data/download_mnist.py                  # -> data/mnist/MNIST/raw (torchvision's layout)
    python data/download_mnist.py --root /data     # -> /data/mnist/...; set PERCEPT_DATA=/data for the loaders

torchvision fetches the four IDX files, checks their md5 and unpacks them; files already present and
intact are not fetched again, so an interrupted download resumes file by file. The loader
(:func:`percept.data.mnist.load_mnist`) then reads the files and the script verifies the split sizes.

Offline this fails with a message: the experiment then falls back to the MNIST test set of the offline
asset folder (``$PERCEPT_ASSETS/data/mnist``), or copy the four ``*-ubyte.gz`` files into
``<root>/mnist/MNIST/raw``.
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from percept.data import data_root

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=None, help=f"data root (default: {data_root()})")
    parser.add_argument(
        "--mirror",
        action="append",
        default=None,
        help="base URL to fetch the files from instead of torchvision's mirrors (repeatable)",
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="network timeout in seconds")
    args = parser.parse_args(argv)
    root = (args.root or data_root()).expanduser()
    folder = root / "mnist"  # torchvision adds MNIST/raw

    from torchvision.datasets import MNIST

    from percept.data import DatasetError
    from percept.data.mnist import load_mnist

    if args.mirror:
        MNIST.mirrors = [m if m.endswith("/") else m + "/" for m in args.mirror]
    socket.setdefaulttimeout(args.timeout)
    print(f"MNIST -> {folder / 'MNIST' / 'raw'}")
    try:
        for train in (True, False):
            MNIST(str(folder), train=train, download=True)
    except Exception as err:  # URLError, RuntimeError (all mirrors failed / md5 mismatch), OSError
        first = str(err).strip().splitlines()
        print(
            f"error: could not download MNIST ({type(err).__name__}: {' '.join(first[:3])[:400]}).\n"
            f"Offline? The VAE experiment falls back to the MNIST test set in the offline asset folder "
            f"($PERCEPT_ASSETS/data/mnist; it says so in its results), or copy train-images-idx3-ubyte.gz, "
            f"train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz into "
            f"{folder / 'MNIST' / 'raw'} and run this script again to verify them.",
            file=sys.stderr,
        )
        return 1
    try:
        sizes = {split: len(load_mnist(split, root=root, offline=False)) for split in ("train", "test")}
    except DatasetError as err:
        print(f"error: the downloaded files do not load: {err}", file=sys.stderr)
        return 1
    if sizes != {"train": 60_000, "test": 10_000}:
        print(f"error: unexpected split sizes {sizes} (expected 60,000 / 10,000)", file=sys.stderr)
        return 1
    print(f"ok: {sizes['train']:,} training and {sizes['test']:,} test digits (md5 verified by torchvision)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
