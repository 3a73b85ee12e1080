#!/usr/bin/env bash
# Builds the peers' own virtual environment (.bench/peers-venv): MLServer 1.7.1 and, for the naive
# FastAPI + ONNX Runtime server, FastAPI and uvicorn (MLServer already brings both). Kept apart from
# the project venv so the peers' pins (uvloop<0.22: MLServer 1.7.1 fails on newer) never touch it.
# Idempotent: does nothing when the venv already imports everything. Usage:
#   benchmarks/peers/install_peers.sh [VENV]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
venv=${1:-$root/.bench/peers-venv}
check='import mlserver, fastapi, uvicorn, onnxruntime, numpy, uvloop; assert mlserver.__version__ == "1.7.1"'
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "$check" 2>/dev/null; then
  echo "peers venv ready: $venv"; exit 0
fi
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "mlserver==1.7.1" "uvloop<0.22" onnxruntime fastapi "uvicorn[standard]" numpy
"$venv/bin/python" -c "$check"
echo "peers venv ready: $venv"
