"""The launcher (``cv.detection.engine.launch``, what train.sh runs): how many processes, their environment, and how a
run ends when one fails or a signal arrives. Child programs here are small modules written by the tests."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from cv.detection.engine import launch
from tests.conftest import free_port, last_line

GPUS = 8


@pytest.fixture
def fake_nvidia_smi(tmp_path, monkeypatch):
    """An ``nvidia-smi`` on PATH that lists 8 GPUs, as on an 8-GPU machine."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    lines = "\n".join(f"GPU {i}: NVIDIA A100-SXM4-80GB (UUID: GPU-{i:08d}-aaaa-bbbb-cccc-dddddddddddd)"
                      for i in range(GPUS))
    script = bin_dir / "nvidia-smi"
    script.write_text(f'#!/bin/sh\n[ "$1" = "--list-gpus" ] || exit 9\ncat <<EOF\n{lines}\nEOF\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


@pytest.mark.parametrize("visible,expected", [
    (None, 8), ("0,1", 2), ("", 0), ("3", 1), ("6,7,2", 3), ("1,99,2", 1), ("-1", 0), ("2,2", 1),
    ("GPU-00000005-aaaa-bbbb-cccc-dddddddddddd,4", 2), ("GPU-nonexistent", 0),
])
def test_visible_gpus_respects_cuda_visible_devices(fake_nvidia_smi, monkeypatch, visible, expected):
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert launch.visible_gpus() == expected


def test_no_nvidia_smi_means_no_gpu(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert launch.visible_gpus() == 0


CHILD = """
import json, os, signal, sys, time
rank = int(os.environ["RANK"])
out = {out!r}
env = {{k: os.environ.get(k) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                                       "OMP_NUM_THREADS")}}
mode = sys.argv[1]


def announce():  # this process's pid, for the processes that wait for it to be gone
    with open(os.path.join(out, f".pid{{rank}}"), "w") as f:
        f.write(str(os.getpid()))
    os.replace(os.path.join(out, f".pid{{rank}}"), os.path.join(out, f"pid{{rank}}"))


def after(other):  # returns once the launcher has reaped process `other` (until then, even dead, it answers kill 0)
    path = os.path.join(out, f"pid{{other}}")
    while not os.path.exists(path):
        time.sleep(0.01)
    with open(path) as f:
        pid = int(f.read())
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.01)


def fail(message, status):
    from cv.detection.utils import cli
    cli._report(message)
    sys.exit(status)


announce()
if mode == "fail" and rank == 1:
    fail("image 7 (/data/x.jpg) cannot be read", 1)
if mode == "same":  # a bad flag: every process fails the same way, the highest rank first
    if rank + 1 < int(os.environ["WORLD_SIZE"]):
        after(rank + 1)
    fail("--epochs must be positive", 2)
if mode == "cascade":  # rank 2 fails; rank 0 fails after it, because of it, with another message; then rank 1
    if rank != 2:
        after(2 if rank == 0 else 0)
    fail("image 7 (/data/x.jpg) cannot be read" if rank == 2 else "process 2 is gone", 1)
if mode == "signal":
    signal.signal(signal.SIGTERM, lambda *a: (open(os.path.join(out, f"stopped{{rank}}"), "w").close(), sys.exit(143)))
with open(os.path.join(out, f"rank{{rank}}.json"), "w") as f:
    json.dump(dict(env, argv=sys.argv[1:]), f)
while mode != "ok":
    signal.pause()  # never ends on its own: only the launcher (or a signal it passes on) ends it
"""


def launch_child(tmp_path, mode, **env):
    (tmp_path / "child_mod.py").write_text(textwrap.dedent(CHILD.format(out=str(tmp_path))))
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
                "MASTER_PORT": str(free_port()), **env}
    return subprocess.Popen([sys.executable, "-m", "cv.detection.engine.launch", "child_mod", mode], cwd=tmp_path,
                            env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_one_process_per_visible_gpu_with_the_environment_oneflow_reads(tmp_path, fake_nvidia_smi):
    proc = launch_child(tmp_path, "ok", CUDA_VISIBLE_DEVICES="0,1", NNODES="2", NODE_RANK="1",
                        MASTER_ADDR="10.0.0.1")
    proc.communicate(timeout=120)
    assert proc.returncode == 0
    import json

    ranks = sorted((json.loads(p.read_text()) for p in tmp_path.glob("rank*.json")), key=lambda r: r["RANK"])
    assert [(r["RANK"], r["LOCAL_RANK"], r["WORLD_SIZE"]) for r in ranks] == [("2", "0", "4"), ("3", "1", "4")]
    assert {r["MASTER_ADDR"] for r in ranks} == {"10.0.0.1"} and all(r["argv"] == ["ok"] for r in ranks)
    assert {r["OMP_NUM_THREADS"] for r in ranks} == {str(max(1, (os.cpu_count() or 1) // 2))}


@pytest.mark.slow
def test_a_failing_process_stops_the_others_and_its_message_is_the_last_line(tmp_path):
    """The others never end on their own (see CHILD): that the launcher ends at all shows it stopped them."""
    proc = launch_child(tmp_path, "fail", NPROC_PER_NODE="3")
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 1
    assert last_line(err) == "error: image 7 (/data/x.jpg) cannot be read (process 1 of 3)"
    assert "Traceback" not in err


@pytest.mark.slow
@pytest.mark.parametrize("mode, line", [
    ("same", "error: --epochs must be positive (process 0 of 3)"),  # the same last line every run
    ("cascade", "error: image 7 (/data/x.jpg) cannot be read (process 2 of 3)"),  # the cause, not its echo
])
def test_which_failure_the_last_line_names(tmp_path, mode, line):
    """The processes fail one after another, each once the launcher has seen the previous one end (see CHILD),
    all within the grace period, made long so that this holds on a machine of any speed."""
    proc = launch_child(tmp_path, mode, NPROC_PER_NODE="3", CV_LAUNCH_GRACE_SECONDS="3600")
    _, err = proc.communicate(timeout=600)
    assert last_line(err) == line and proc.returncode == (2 if mode == "same" else 1)


def test_sigterm_is_passed_on_and_waited_for(tmp_path):
    proc = launch_child(tmp_path, "signal", NPROC_PER_NODE="2")
    deadline = time.monotonic() + 600  # a guard against hanging, far beyond any machine's start-up
    while len(list(tmp_path.glob("rank*.json"))) < 2:  # both have started and installed their handler
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert (tmp_path / "stopped0").exists() and (tmp_path / "stopped1").exists()


@pytest.mark.parametrize("env,message", [
    ({"NNODES": "2", "NODE_RANK": "2"}, "error: NODE_RANK=2 must be below NNODES=2"),
    ({"NPROC_PER_NODE": "two"}, "error: NPROC_PER_NODE='two' is not a whole number"),
    ({"NPROC_PER_NODE": "0"}, "error: NPROC_PER_NODE=0 must be at least 1"),
    ({"MASTER_PORT": "70000"}, "error: MASTER_PORT=70000 is not a port number (1-65535)"),
])
def test_bad_launch_settings_are_one_line(tmp_path, env, message):
    proc = launch_child(tmp_path, "ok", **env)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and last_line(err) == message


def test_master_addr_must_be_a_reachable_ipv4_address(tmp_path):
    for env, message in (({"NNODES": "2", "MASTER_ADDR": "127.0.0.1"}, "error: MASTER_ADDR=127.0.0.1 is a loopback "
                           "address; with NNODES=2 it must be node 0's address as the other nodes reach it"),
                         ({"MASTER_ADDR": "no-such-host.invalid"}, "error: MASTER_ADDR='no-such-host.invalid' is not "
                          "an IPv4 address or a host name this node can resolve")):
        proc = launch_child(tmp_path, "ok", **env)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 1 and last_line(err) == message
    proc = launch_child(tmp_path, "ok", MASTER_ADDR="localhost")  # a name is resolved to the address OneFlow needs
    proc.communicate(timeout=60)
    assert proc.returncode == 0
    import json

    assert json.loads((tmp_path / "rank0.json").read_text())["MASTER_ADDR"] == "127.0.0.1"
