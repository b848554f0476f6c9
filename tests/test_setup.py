"""scripts/setup.sh: a clear stop without Python 3.10, and nothing reinstalled when nothing changed."""
import os
import shutil
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_without_python_3_10_it_says_what_to_install(tmp_path):
    # A copy of the scripts without .venv, run where neither python3.10 nor pyenv can be found.
    (tmp_path / "scripts").mkdir()
    shutil.copy(os.path.join(REPO, "scripts", "setup.sh"), tmp_path / "scripts")
    shutil.copy(os.path.join(REPO, "requirements.txt"), tmp_path)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    if any(os.path.exists(os.path.join(d, "python3.10")) for d in ("/usr/bin", "/bin")):
        env["PATH"] = str(tmp_path)  # a machine with a system 3.10: hide it (bash is called by full path)
    out = subprocess.run(["/bin/bash", str(tmp_path / "scripts" / "setup.sh")], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 1
    assert "no working Python 3.10 found" in out.stderr and "pyenv install 3.10" in out.stderr
    assert "PYTHON=/path/to/python3.10 bash scripts/setup.sh" in out.stderr
    assert not (tmp_path / ".venv").exists()


def test_a_second_run_installs_nothing():
    out = subprocess.run(["bash", os.path.join(REPO, "scripts", "setup.sh")], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "installing" not in out.stdout + out.stderr and "ready (oneflow 0.9.0)" in out.stdout
    quiet = subprocess.run(["bash", os.path.join(REPO, "scripts", "setup.sh"), "--quiet"], capture_output=True,
                           text=True, timeout=120)
    assert quiet.returncode == 0 and quiet.stdout == ""
