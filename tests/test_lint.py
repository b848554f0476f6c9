"""The code style that a linter can check stays checked: ruff with the settings of pyproject.toml (line length 120,
pyflakes and pycodestyle), over the whole repository, in the test suite that CI runs."""
import os
import subprocess
import sys

from tests.conftest import REPO


def test_ruff_finds_nothing():
    ruff = os.path.join(os.path.dirname(sys.executable), "ruff")
    out = subprocess.run([ruff, "check", "--no-cache", "--output-format", "concise", REPO], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-1000:]
