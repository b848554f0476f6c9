#!/usr/bin/env bash
# Train SSD300-VGG16: `cd cv/detection && bash ssd300_vgg16/train.sh [flags]` (works from any directory).
# Prepares the environment if needed, then starts one training process per GPU (one on a CPU-only machine)
# through oneflow.distributed.launch. Every argument goes to the training program: see `--help`.
# Multi-node: NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT; NPROC_PER_NODE overrides the processes per node.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
bash "$ROOT/scripts/setup.sh" --quiet >&2
PY="$ROOT/.venv/bin/python"
if [ -z "${NPROC_PER_NODE:-}" ]; then
  NPROC_PER_NODE="$(nvidia-smi --list-gpus 2>/dev/null | grep -c '^GPU' || true)"
  [ "${NPROC_PER_NODE:-0}" -gt 0 ] || NPROC_PER_NODE=1
fi
exec "$PY" -m oneflow.distributed.launch --nproc_per_node "$NPROC_PER_NODE" --nnodes "${NNODES:-1}" \
  --node_rank "${NODE_RANK:-0}" --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" \
  -m cv.detection.ssd300_vgg16.train "$@"
