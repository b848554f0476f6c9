"""scripts/setup.sh and packaging: a clear stop without Python 3.10, nothing reinstalled when nothing changed, one
setup at a time, a half-made .venv made again; and the model through OneFlow's hub from a clone."""
import fcntl
import os
import shutil
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO


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
    assert "no working Python 3.10 (3.10.12 or later) found" in out.stderr and "pyenv install 3.10" in out.stderr
    assert "PYTHON=/path/to/python3.10 bash scripts/setup.sh" in out.stderr
    assert not (tmp_path / ".venv").exists()


@pytest.mark.slow
def test_a_second_run_installs_nothing():
    out = subprocess.run(["bash", os.path.join(REPO, "scripts", "setup.sh")], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "installing" not in out.stdout + out.stderr and "ready (oneflow 0.9.0)" in out.stdout
    quiet = subprocess.run(["bash", os.path.join(REPO, "scripts", "setup.sh"), "--quiet"], capture_output=True,
                           text=True, timeout=120)
    assert quiet.returncode == 0 and quiet.stdout == ""


@pytest.mark.slow
def test_one_setup_at_a_time():
    """While another setup holds the lock, setup.sh waits for it (two infer.sh started at once, or nodes sharing
    the checkout, must not pip-install into one venv together), then goes on."""
    path = os.path.join(REPO, ".venv.lock")
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = subprocess.Popen(["bash", os.path.join(REPO, "scripts", "setup.sh"), "--quiet"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        while not waiting_for_lock(path):  # an event (the kernel's list of blocked lock requests), not a duration
            assert proc.poll() is None, "setup.sh ended while another setup held the lock"
            time.sleep(0.01)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0 and out == "", err


def waiting_for_lock(path):
    """True while a process is blocked waiting for a lock on ``path``: a ``->`` line of /proc/locks naming its
    device and inode."""
    st = os.stat(path)
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    with open("/proc/locks") as f:
        return any("->" in line and key in line.split() for line in f)


def fresh_clone(tmp_path):
    """The committed repository, as a user clones it (no .venv)."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", REPO, str(clone)], check=True, timeout=120)
    return clone


@pytest.mark.slow
def test_a_half_made_venv_is_made_again(tmp_path):
    """A setup killed after creating .venv but before pip existed in it leaves a .venv that cannot install
    anything: the next run notices, makes it again, and ends ready (from the pip cache: no real download)."""
    clone = fresh_clone(tmp_path)
    base = subprocess.run([os.path.join(REPO, ".venv", "bin", "python"), "-c",
                           "import sys; print(sys._base_executable)"], capture_output=True, text=True).stdout.strip()
    subprocess.run([base, "-m", "venv", "--without-pip", str(clone / ".venv")], check=True, timeout=120)
    out = subprocess.run(["bash", str(clone / "scripts" / "setup.sh")], capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "is incomplete or broken (an interrupted setup?); making it again" in out.stderr
    assert "ready (oneflow 0.9.0)" in out.stdout
    check = subprocess.run([str(clone / ".venv" / "bin" / "python"), "-c", "import cv; print(cv.__file__)"],
                           capture_output=True, text=True, cwd="/")
    assert check.stdout.strip() == str(clone / "cv" / "__init__.py")  # the clone's code, installed editable


@pytest.mark.slow
def test_oneflow_hub_loads_the_model_from_a_local_clone(tmp_path):
    """flow.hub.load(clone, "ssd300_vgg16", source="local", pretrained=True), as torch.hub users know it; the
    published weights come from $SSD300_VGG16_URL (here a zoo tarball of ours on disk)."""
    import oneflow as flow

    from cv.detection.ssd300_vgg16 import ssd300_vgg16
    from cv.detection.ssd300_vgg16.publish import publish

    flow.manual_seed(4)
    model = ssd300_vgg16()
    flow.save(model.state_dict(), str(tmp_path / "weights"))
    publish(str(tmp_path / "weights"), str(tmp_path / "zoo"))
    clone = fresh_clone(tmp_path)
    code = (f"import oneflow as flow; m = flow.hub.load({str(clone)!r}, 'ssd300_vgg16', source='local', "
            "pretrained=True); import cv; print(type(m).__module__, cv.__file__, m.num_classes); "
            f"flow.save(m.state_dict(), {str(tmp_path / 'loaded')!r})")
    env = dict(os.environ, SSD300_VGG16_URL=f"file://{tmp_path / 'zoo' / 'ssd300_vgg16.tar.gz'}",
               FLOWVISION_CACHE=str(tmp_path / "cache"))
    env.pop("PYTHONPATH", None)
    # As a user of the clone would run it: an interpreter whose packages are oneflow's and the others', without this
    # repository's (its venv imports its own cv at start-up: scripts/setup.sh's hook), so cv comes from the clone.
    import site

    prelude = f"import sys; sys.path += {site.getsitepackages()!r}\n"
    out = subprocess.run([sys.executable, "-S", "-c", prelude + code], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-3:] == ["cv.detection.models.ssd", str(clone / "cv" / "__init__.py"), "91"]
    from cv.detection.engine import checkpoint as ckpt

    loaded = ckpt.load(tmp_path / "loaded")
    for key, value in model.state_dict().items():
        assert (loaded[key].numpy() == value.numpy()).all(), key
