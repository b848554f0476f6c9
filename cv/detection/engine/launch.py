"""Start one training process per GPU of this node (one on a CPU-only machine) and see them through to the end.

    python -m cv.detection.engine.launch MODULE [ARGS ...]          (train.sh does this)

Configured like OneFlow's and PyTorch's launchers, from the environment: ``NPROC_PER_NODE`` (default: the GPUs
``nvidia-smi`` lists, restricted to ``CUDA_VISIBLE_DEVICES`` when that is set; 1 without a GPU), ``NNODES``
(default 1), ``NODE_RANK`` (0), ``MASTER_ADDR`` (127.0.0.1), ``MASTER_PORT`` (29500). Each process gets OneFlow's
``MASTER_ADDR``, ``MASTER_PORT``, ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``.

Why not ``python -m oneflow.distributed.launch``: it ends every failure with its own ``CalledProcessError``
traceback (after our message, which then scrolls away), and on SIGTERM or Ctrl-C it kills its children and exits
within a second, so a preempted run loses the epoch in progress. Here:

* SIGINT and SIGTERM are passed on to the training processes, which finish the iteration in progress, save a
  resumable checkpoint and exit; the launcher waits for them. Each process runs in its own session, so a Ctrl-C
  in the terminal reaches it once, through the launcher, and never its DataLoader workers directly. If the
  launcher itself dies, its processes get SIGTERM (``PR_SET_PDEATHSIG``) and stop the same way.
* When a process fails, the others (and their loader workers) are killed two seconds later
  (``CV_LAUNCH_GRACE_SECONDS`` sets another delay): they would wait forever for it in the next collective. The
  exit status is the failed process's, and with several processes the last line is its one-line error
  (:mod:`cv.detection.utils.cli` writes it to ``$CV_ERROR_FILE``), naming the rank; of processes failing within
  those two seconds (a bad flag fails them all), the lowest rank is reported.
* On node 0, a ``MASTER_PORT`` already in use is reported before anything starts.
"""
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

PR_SET_PDEATHSIG = 1
_GRACE_SECONDS = 2.0  # for the other processes to fail on their own before they are killed


def _grace_seconds():
    """The delay between a process failing and the others being killed (tests lengthen it, so that failures that
    follow one another are seen as such on a machine of any speed)."""
    text = os.environ.get("CV_LAUNCH_GRACE_SECONDS", "")
    try:
        return float(text) if text else _GRACE_SECONDS
    except ValueError:
        raise SystemExit(f"error: CV_LAUNCH_GRACE_SECONDS={text!r} is not a number of seconds") from None


def visible_gpus():
    """The number of GPUs this node's processes may use (0 without ``nvidia-smi`` or a GPU).

    ``nvidia-smi --list-gpus`` lists the machine's GPUs (``GPU 0: <name> (UUID: GPU-...)``). Where
    ``CUDA_VISIBLE_DEVICES`` is set, CUDA exposes only its entries (indices or UUIDs), up to the first one that
    names no GPU; an empty value hides them all.
    """
    try:
        out = subprocess.run(["nvidia-smi", "--list-gpus"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    gpus = [line for line in out.stdout.splitlines() if line.startswith("GPU ")] if out.returncode == 0 else []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return len(gpus)
    count, seen = 0, set()
    for entry in (e.strip() for e in visible.split(",")):
        index = int(entry) if entry.isdigit() else next(
            (i for i, line in enumerate(gpus) if entry and f"UUID: {entry}" in line), None)
        if index is None or index >= len(gpus) or index in seen:
            break
        seen.add(index)
        count += 1
    return count


def _env_int(name, default, minimum):
    text = os.environ.get(name, "")
    try:
        value = int(text) if text.strip() else default
    except ValueError:
        raise SystemExit(f"error: {name}={text!r} is not a whole number") from None
    if value < minimum:
        raise SystemExit(f"error: {name}={value} must be at least {minimum}")
    return value


def _master_address(name, nnodes):
    """``MASTER_ADDR`` as the IPv4 address OneFlow needs (it takes no host names and no IPv6). With several nodes
    it must be node 0's address as the others reach it: OneFlow tells nodes apart by the address their connections
    come from, and node 0 tells the others to reach it at ``MASTER_ADDR``."""
    try:
        addr = socket.gethostbyname(name)
    except OSError:
        raise SystemExit(f"error: MASTER_ADDR={name!r} is not an IPv4 address or a host name this node can "
                         "resolve") from None
    if nnodes > 1 and addr.startswith("127."):
        raise SystemExit(f"error: MASTER_ADDR={name} is a loopback address; with NNODES={nnodes} it must be node "
                         "0's address as the other nodes reach it")
    return addr


def _check_port_free(addr, port):
    try:
        with socket.socket() as s:
            s.bind((addr, port))
    except OSError as e:
        raise SystemExit(f"error: MASTER_PORT {port} on MASTER_ADDR {addr} cannot be used ({e.strerror}): another "
                         "training run may hold it; set MASTER_PORT to a free port, or MASTER_ADDR to this "
                         "node's address") from None


def _die_with_parent():
    """In the child, before exec: SIGTERM when the launcher dies (a graceful stop, as for a scheduler's SIGTERM)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _read_error(errors, rank):
    """The one-line error that process ``rank`` left in the launcher's ``errors`` directory ('' without one)."""
    try:
        with open(os.path.join(errors, str(rank))) as f:
            return f.read().strip()
    except OSError:
        return ""


def _status(returncode):
    """A shell-style exit status: a process killed by signal N gives 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def main(argv):
    if not argv or argv[0].startswith("-"):
        raise SystemExit("usage: python -m cv.detection.engine.launch MODULE [ARGS ...] (see the module docstring)")
    nproc = _env_int("NPROC_PER_NODE", visible_gpus() or 1, 1)
    nnodes = _env_int("NNODES", 1, 1)
    node_rank = _env_int("NODE_RANK", 0, 0)
    if node_rank >= nnodes:
        raise SystemExit(f"error: NODE_RANK={node_rank} must be below NNODES={nnodes}")
    addr = _master_address(os.environ.get("MASTER_ADDR") or "127.0.0.1", nnodes)
    port = _env_int("MASTER_PORT", 29500, 1)
    if port > 65535:
        raise SystemExit(f"error: MASTER_PORT={port} is not a port number (1-65535)")
    if node_rank == 0:
        _check_port_free(addr, port)
    world, grace = nproc * nnodes, _grace_seconds()
    errors = tempfile.mkdtemp(prefix="cv-launch-")
    children = {}  # pid -> (rank, Popen)
    stopping = []

    def forward(signum, frame):
        stopping.append(signum)
        for _, child in children.values():
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    try:
        for local_rank in range(nproc):
            rank = node_rank * nproc + local_rank
            env = dict(os.environ, MASTER_ADDR=addr, MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                       LOCAL_RANK=str(local_rank), CV_ERROR_FILE=os.path.join(errors, str(rank)))
            if nproc > 1 and "OMP_NUM_THREADS" not in os.environ:
                # Processes sharing a node share its cores (as OneFlow's launcher does).
                env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
            child = subprocess.Popen([sys.executable, "-u", "-m", argv[0], *argv[1:]], env=env,
                                     start_new_session=True, preexec_fn=_die_with_parent)
            children[child.pid] = (rank, child)
        failed = {}  # rank -> exit status of the processes that failed on their own
        kill_at = None
        while any(child.returncode is None for _, child in children.values()):
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            if pid == 0:  # nothing has ended yet
                if kill_at is not None and time.monotonic() >= kill_at:
                    kill_at = None
                    for _, other in children.values():
                        if other.returncode is None:
                            os.killpg(other.pid, signal.SIGKILL)
                time.sleep(0.05)
                continue
            if pid not in children:
                continue
            rank, child = children[pid]
            child.returncode = os.waitstatus_to_exitcode(wait_status)
            if child.returncode != 0 and (not failed or kill_at is not None or stopping):
                if not failed and not stopping:  # a real failure: the others would wait for this rank forever
                    kill_at = time.monotonic() + grace
                failed[rank] = child.returncode
        for _, child in children.values():  # loader workers left behind by a killed process
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if not failed:
            return 0
        first = next(iter(failed))  # dicts keep insertion order: the first to fail, the likely cause
        message = _read_error(errors, first)
        # A flag or data error fails every process the same way at nearly the same moment; naming the lowest
        # of those ranks keeps the last line the same from one run to the next.
        rank = min(r for r in failed if r == first or (message and _read_error(errors, r) == message))
        returncode = failed[rank]
        if not message:
            how = (f"was killed by {signal.Signals(-returncode).name}" if returncode < 0
                   else f"exited with status {returncode}")
            print(f"error: training process {rank} of {world} {how}, without a message of its own (see above)",
                  file=sys.stderr, flush=True)
        elif world > 1:  # the line of cli.run: "error: ..." or "stopped: ..."
            print(f"{message} (process {rank} of {world})", file=sys.stderr, flush=True)
        return _status(returncode)
    finally:
        shutil.rmtree(errors, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
