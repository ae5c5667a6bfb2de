#!/usr/bin/env bash
# One-shot GPU check (make bench-gpu): runs with the machine's own python and torch (no venv, no network).
#   1. installs the peer packages from .whl/ when present (make gpu-wheels or make gpu-kit downloads them);
#   2. benchmarks/bench_gpu.py: every metric on CUDA against CPU, then the training-step bench
#      -> $RESULTS/bench_gpu/{parity.csv,bench.csv,machine.json}, written row by row;
#   3. the runtime experiment's paper rows on CUDA (what time is left) -> $RESULTS/runtime_gpu/.
# Environment: RESULTS (default results), PYTHON (default python3), ORIGINAL (the original code's src/loss,
# optional: its losses are timed too), RUNTIME_LIMIT (seconds for step 3, default 120).
# For a machine without network, `make gpu-kit` prepares .whl/ and .gpu/ (assets, original code) to carry.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
RESULTS=${RESULTS:-results}
export PYTHONPATH="$PWD/lib${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" > /dev/null; then
    $PYTHON -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/percept-site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/percept-site"
fi
nvidia-smi -L 2>/dev/null || true
$PYTHON -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
DEVICE=${DEVICE:-cuda}
$PYTHON benchmarks/bench_gpu.py --device "$DEVICE" --out "$RESULTS/bench_gpu" ${ORIGINAL:+--original "$ORIGINAL"} ${BENCH_ARGS:-}
timeout "${RUNTIME_LIMIT:-120}" $PYTHON experiments/runtime/run.py --device "$DEVICE" --metrics paper --no-scaling \
    --out "$RESULTS/runtime_gpu" ${RUNTIME_ARGS:-} || echo "runtime rows stopped (limit or error): see $RESULTS/runtime_gpu"
