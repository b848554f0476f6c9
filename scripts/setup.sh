#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv with Python 3.10 (>= 3.10.12).
# With --quiet (train.sh and infer.sh use it), prints nothing and only checks the stamp when the environment is up to
# date.
#
# Installs the exact versions of requirements.txt, then this repository as a package in editable mode (pyproject.toml)
# with its extras. Idempotent: a stamp holding the hash of requirements.txt, pyproject.toml and this script makes a
# second run with nothing changed finish in about a second. Safe to run several times at once (two infer.sh started
# together, nodes sharing the checkout): a lock serialises them. A .venv left half-made by an interrupted run (no
# pip, a broken interpreter) is noticed and made again. Ends by proving that `import oneflow` works from the venv
# (except on --quiet's up-to-date path).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
STAMP="$VENV/.requirements.sha256"
QUIET=0
[ "${1:-}" = "--quiet" ] && QUIET=1

# oneflow 0.9.0 has wheels for Python <= 3.10; tarfile's extraction filters (safe extraction) need 3.10.12.
PY_CHECK='import sys, venv; assert sys.version_info[:2] == (3, 10) and sys.version_info >= (3, 10, 12)'

find_python310() {
  local cand
  # A pyenv shim named python3.10 exists even when 3.10 is not the active version, and then fails:
  # so every candidate is run, not just looked up.
  for cand in "${PYTHON:-}" python3.10 "$(command -v pyenv >/dev/null && pyenv root)"/versions/3.10.*/bin/python3.10; do
    [ -n "$cand" ] || continue
    if "$cand" -c "$PY_CHECK" >/dev/null 2>&1; then
      command -v "$cand" 2>/dev/null || echo "$cand"
      return 0
    fi
  done
  return 1
}

# One setup at a time; the lock lives beside .venv (which may not exist yet) and is released when this script ends.
exec 9>"$ROOT/.venv.lock"
flock 9

# The stamp covers this script too: changing how we install also re-installs.
wanted_stamp() {
  cat "$ROOT/requirements.txt" "$ROOT/pyproject.toml" "$ROOT/scripts/setup.sh" | sha256sum | cut -d' ' -f1
}
# train.sh and infer.sh (--quiet) run this before every command: when the stamp, written only once everything below
# has succeeded, matches and the interpreter runs, there is nothing to do and no time to spend proving it again.
if [ "$QUIET" = 1 ] && [ -e "$STAMP" ] && [ "$(cat "$STAMP")" = "$(wanted_stamp)" ] \
    && "$VENV/bin/python" -c "$PY_CHECK" 2>/dev/null; then
  exit 0
fi

if [ -e "$VENV" ] && ! { "$VENV/bin/python" -c "$PY_CHECK" && "$VENV/bin/python" -m pip --version; } >/dev/null 2>&1; then
  echo "setup.sh: $VENV is incomplete or broken (an interrupted setup?); making it again" >&2
  rm -rf "$VENV"
fi
if [ ! -e "$VENV" ]; then
  if ! PY="$(find_python310)"; then
    cat >&2 <<'MSG'
setup.sh: no working Python 3.10 (3.10.12 or later) found (oneflow 0.9.0 has wheels only for Python <= 3.10).
Install one, then run this script again, e.g.:
  pyenv install 3.10.13                          # with pyenv
  sudo apt-get install python3.10 python3.10-venv  # Debian/Ubuntu with 3.10 packaged
or point to an interpreter: PYTHON=/path/to/python3.10 bash scripts/setup.sh
MSG
    exit 1
  fi
  echo "setup.sh: creating $VENV with $PY"
  "$PY" -m venv "$VENV"
fi

want="$(wanted_stamp)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  echo "setup.sh: installing requirements.txt into $VENV (first run downloads about 2.5 GB)"
  rm -f "$STAMP"
  pip=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
  # flowvision 0.2.1 exists only as an sdist whose setup.py imports pkg_resources, which recent setuptools no
  # longer provides in pip's isolated build environments: build it here against a setuptools that has it.
  "${pip[@]}" --upgrade pip==24.3.1 setuptools==69.5.1 wheel==0.44.0
  "${pip[@]}" --no-build-isolation -r "$ROOT/requirements.txt"
  # This repository as the package `cv` (editable: the checkout is what runs), its dependencies already pinned.
  "${pip[@]}" --no-build-isolation --no-deps -e "$ROOT"
  # Earlier versions of this script put the repository on the path with a .pth file of their own.
  rm -f "$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/ssd300_vgg16_repo.pth"
  # cv's preparation of oneflow at interpreter start, so that programs may import oneflow first (cv/_runtime.py).
  (cd / && "$VENV/bin/python" -c 'import sysconfig; from cv import _runtime
_runtime.write_startup_hook(sysconfig.get_paths()["purelib"])')
  echo "$want" > "$STAMP"
fi

# Prove the environment works, from outside the repository, as a user's program would import it.
if ! out="$(cd / && "$VENV/bin/python" -c 'import cv.detection.ssd300_vgg16, oneflow as flow; print(flow.__version__)' 2>&1)"; then
  echo "$out" >&2
  echo "setup.sh: importing oneflow from $VENV failed (output above)" >&2
  exit 1
fi
[ "$QUIET" = 1 ] || echo "setup.sh: $VENV ready (oneflow $(echo "$out" | tail -n 1))"
