#!/usr/bin/env bash
# Detect objects in images, or evaluate on a COCO-format val split:
#   cd cv/detection && bash ssd300_vgg16/infer.sh [--images PATH ...] [--weights SRC | --pretrained] [flags]
# Works from any directory and prepares the environment if needed. See `--help` for every flag.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
bash "$ROOT/scripts/setup.sh" --quiet >&2
exec "$ROOT/.venv/bin/python" -m cv.detection.ssd300_vgg16.infer "$@"
