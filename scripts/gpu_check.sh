#!/usr/bin/env bash
# Check the CUDA paths on this GPU machine (about two minutes): `bash scripts/gpu_check.sh` from any directory.
# Prepares the environment if needed, then compares detections, AMP, graph mode and (with two GPUs) two-process
# training on the GPU against the CPU and eager float32 paths, and prints a report to paste into an issue.
# Exit status 0 when every check passes (or no CUDA device is visible: nothing to check), 1 otherwise.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh" --quiet >&2
exec "$ROOT/.venv/bin/python" -m cv.detection.engine.gpu_check "$@"
