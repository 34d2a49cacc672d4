#!/usr/bin/env bash
# One command for the GPU check of the Triton path (see benchmarks/gpu_check.py): installs nothing,
# uses no network, stays within 8 minutes on one H200 (the script's own deadline skips optional
# parts after 420 s; this hard limit keeps the partial JSON it has written so far).
#   bash benchmarks/gpu_check.sh [OUT.json]      (default $OUT/gpu_check.json, else ./gpu_check.json)
set -euo pipefail
cd "$(dirname "$0")/.."
exec timeout --signal=TERM --kill-after=10 470 python3 benchmarks/gpu_check.py "$@"
