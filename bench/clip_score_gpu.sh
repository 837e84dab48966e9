#!/usr/bin/env bash
# clip_score on one GPU: ViT-B-32 (random weights: no hub needed), fp16 autocast,
# batch 1024, synthetic JPEGs (1024 distinct, repeated). Prints the stage's pairs/s
# (JPEG bytes -> scores, decode threads feeding the model), a bare open_clip forward
# loop on ready tensors, GPU utilisation sampled by nvidia-smi during the stage, and
# last a JSON line. Target on an H200-class GPU: >= 10,000 pairs/s.
#   bash bench/clip_score_gpu.sh [PAIRS]      (default 16384; ~1-2 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
PAIRS=${1:-16384}
THREADS=$(( $(nproc) > 3 ? $(nproc) - 2 : 1 ))
command -v nvidia-smi >/dev/null || { echo '{"bench": "clip_score_gpu", "error": "nvidia-smi not found"}'; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
exec "$PY" bench/clip_score.py --device cuda --precision fp16 --batch-size 1024 --batches-per-task 4 \
    --pairs "$PAIRS" --unique-images 1024 --decode-workers "$THREADS" --repeats 2 --gpu-util
