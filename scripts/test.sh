#!/usr/bin/env bash
# Run the whole test suite, setting up the environment first if needed (scripts/setup.sh).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k nms -x`.
#
# The tests run in parallel processes, one per core up to 4 (pytest-xdist): many of them wait on programs they
# start, so one process leaves cores idle. A file's tests stay together in one process (its fixtures are made
# once). `-n 0` runs everything in this process.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
cores="$(nproc)"
exec .venv/bin/python -m pytest -n "$(( cores < 4 ? cores : 4 ))" --dist loadfile "$@"
