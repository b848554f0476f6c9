#!/usr/bin/env bash
# Train SSD300-VGG16: `cd cv/detection && bash ssd300_vgg16/train.sh [flags]` (works from any directory).
# Prepares the environment if needed, then starts one training process per GPU (CUDA_VISIBLE_DEVICES respected;
# one on a CPU-only machine) through cv.detection.engine.launch. Every argument goes to the training program: see `--help`.
# Multi-node: NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT; NPROC_PER_NODE overrides the processes per node.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
bash "$ROOT/scripts/setup.sh" --quiet >&2
exec "$ROOT/.venv/bin/python" -m cv.detection.engine.launch cv.detection.ssd300_vgg16.train "$@"
