#!/usr/bin/env bash
# make gpu-kit: assemble, on a machine with network, what a lent GPU machine needs for `make bench-gpu`.
# The GPU machine has its own python and torch, no network, and sees only this working tree plus the
# ignored paths a run carries (64 MiB in all). The kit is two ignored folders:
#   .whl/        peer wheels: lpips, pytorch-msssim, and for the original code torch-dct and setuptools
#                (its pkg_resources);
#   .gpu/assets/ the asset files the bench and the runtime rows read (Czolbe et al.'s weights, the LPIPS
#                linear weights, the AlexNet/SqueezeNet features, the CelebA sample), copied from
#                PERCEPT_ASSETS: a transport copy for one run, never committed;
#   .gpu/orig/   the original code's src/loss, when ORIGINAL_REPO names a checkout of
#                SteffenCzolbe/PerceptualSimilarity (its losses are timed beside ours).
# On the GPU machine, carrying [".whl", ".gpu"]:
#   RESULTS=$OUT PERCEPT_ASSETS=$PWD/.gpu/assets ORIGINAL=.gpu/orig/src/loss bash benchmarks/bench_gpu.sh
# KIT_ROOT (default: this checkout) is where .whl/ and .gpu/ are made. `gpu_kit.sh wheels` (make gpu-wheels)
# downloads the wheels only.
set -euo pipefail
cd "${KIT_ROOT:-$(dirname "$0")/..}"
PYTHON=${PYTHON:-python3}

download_wheels() {
    mkdir -p .whl
    $PYTHON -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
        lpips==0.1.4 pytorch-msssim==1.0.0 torch-dct==0.1.6 "setuptools<81"
}

if [ "${1:-}" = wheels ]; then
    download_wheels
    exit 0
fi
: "${PERCEPT_ASSETS:?set PERCEPT_ASSETS to the offline asset folder (see shared/assets/README.md)}"
ASSETS="weights/czolbe weights/lpips weights/torchvision weights/elpips data/celeba_sample"
rm -rf .gpu/assets
for rel in $ASSETS; do
    if [ ! -e "$PERCEPT_ASSETS/$rel" ]; then
        echo "gpu-kit: $PERCEPT_ASSETS/$rel is missing" >&2
        exit 1
    fi
    mkdir -p ".gpu/assets/$(dirname "$rel")"
    cp -r "$PERCEPT_ASSETS/$rel" ".gpu/assets/$rel"
done
if [ -n "${ORIGINAL_REPO:-}" ]; then
    if [ ! -f "$ORIGINAL_REPO/src/loss/loss_provider.py" ]; then
        echo "gpu-kit: $ORIGINAL_REPO has no src/loss/loss_provider.py" >&2
        exit 1
    fi
    rm -rf .gpu/orig && mkdir -p .gpu/orig/src
    cp -r "$ORIGINAL_REPO/src/loss" .gpu/orig/src/loss
fi
download_wheels
size=$(du -scm .gpu .whl | tail -1 | cut -f1)
echo "gpu-kit: .gpu and .whl hold ${size} MiB (a run carries at most 64 MiB)"
if [ "$size" -ge 64 ]; then
    echo "gpu-kit: too large to carry" >&2
    exit 1
fi
