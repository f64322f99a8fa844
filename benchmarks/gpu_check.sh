#!/usr/bin/env bash
# Issue 17's GPU check, at most 8 minutes, no network: run it on a machine with a CUDA GPU whose python3
# already holds PyTorch. Needs CNNLAB_CIFAR10 (a local CIFAR-10 archive). Python packages cnnlab needs
# that such a machine may lack (platformdirs, filelock) can be given as wheels in $CNNLAB_WHEELS.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${CNNLAB_WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/cnnlab-site "$CNNLAB_WHEELS"/*.whl
  export PYTHONPATH="/tmp/cnnlab-site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 480 python3 benchmarks/gpu_check.py "$@"
