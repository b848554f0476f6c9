#!/usr/bin/env bash
# Run the whole test suite, setting up the environment first if needed (scripts/setup.sh).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k nms -x`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec .venv/bin/python -m pytest "$@"
