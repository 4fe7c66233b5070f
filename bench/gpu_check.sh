#!/usr/bin/env bash
# The packing check for a lent GPU machine, under 8 minutes: samples/s of one FSD trial on a whole GPU vs
# four trials at --gpus-per-trial 0.25, live teacher vs teacher-output cache, and peak memory per trial
# (bert-base-sized teacher, BERT6 student, random weights, batch 32, length 128). Needs torch and
# transformers only. Extra arguments go to bench/gpu_check.py (e.g. --compile, --steps 100).
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
PYTHONUNBUFFERED=1 timeout 450 python3 bench/gpu_check.py "$@"
