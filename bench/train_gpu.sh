#!/usr/bin/env bash
# GPU check of the train step: ViT-B-32, bf16 autocast, batch 512, ours vs a plain
# open_clip + ClipLoss step on the same in-memory batches (bench/train.py).
# Prints samples/s of both; the last line is one JSON object.
# Usage: bash bench/train_gpu.sh   (from the repo root; uses .venv/bin/python if present)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
exec "$PY" bench/train.py --model ViT-B-32 --device cuda --precision amp_bf16 --batch-size 512 \
    --steps "${STEPS:-40}" --rounds 4 --batches 4
