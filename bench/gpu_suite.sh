#!/usr/bin/env bash
# Every GPU figure in one call of at most 8 minutes (bench/gpu_suite.py says what it measures):
#   bash bench/gpu_suite.sh            on a GPU machine: bench/results/gpu/<device>.json
#   bash bench/gpu_suite.sh --dry-run  the same steps on tiny shapes on the CPU (seconds)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
if [ "${1:-}" = "--dry-run" ]; then
    shift
    exec timeout 300 "$PY" bench/gpu_suite.py --dry-run --budget 120 "$@"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec timeout 470 "$PY" bench/gpu_suite.py --budget 420 "$@"
