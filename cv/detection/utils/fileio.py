"""Writing outputs so that no reader ever sees a partial one (standard library only: worker-side code uses it).

Every file or directory this project writes for others to read (checkpoints, their index, results files, the
sample dataset, downloads, extracted weights, published tarballs, ONNX exports) goes through :func:`atomic_path`:
written under a temporary name beside its final place, flushed to disk, then renamed into place. Killed at any
point, or out of disk space, the final name holds the old content or the new, never a mix, and a failure removes
the temporary.
"""
import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import socket
import time

TMP_MARK = ".tmp-"


def temporary_name(path):
    """A hidden name beside ``path``, unique to this host, process and call:
    ``<dir>/.<name>.tmp-<host>-<pid>-<random>``. It names its owner, so nobody deletes another run's temporary."""
    folder, name = os.path.split(os.path.abspath(path))
    host = socket.gethostname().split(".")[0] or "host"
    return os.path.join(folder, f".{name}{TMP_MARK}{host}-{os.getpid()}-{secrets.token_hex(3)}")


def fsync(path):
    """Flush ``path`` (a file, or a folder's entries: the renames just made in it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path):
    """Flush ``path`` (a file, or a directory with everything in it) to disk."""
    fsync(path)
    for root, dirs, files in os.walk(path):
        for name in files + dirs:
            fsync(os.path.join(root, name))


def remove(path):
    """Remove a file or a directory tree if it exists (a missing one is fine)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


@contextlib.contextmanager
def atomic_path(path, mode=0o644):
    """Yield a temporary path beside ``path`` to write a file, or a directory, into; when the block ends without
    an error, the result is flushed to disk and renamed to ``path``, replacing what was there.

    On any exception (a full disk, ``KeyboardInterrupt``...) the temporary is removed, ``path`` is left as it was, and
    the exception propagates (an OSError that names no file is given ``path``). A file gets ``mode`` (temporary files
    are private by default). Replacing an existing *directory* takes two renames (the old one aside, the new one in): a
    crash between them leaves ``path`` absent and the old directory under a hidden ``.tmp-`` name, never a partial
    directory at ``path``.
    """
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        if os.path.isfile(tmp):
            os.chmod(tmp, mode)
        _fsync_tree(tmp)
        if os.path.isdir(path) and not os.path.islink(path):
            old = temporary_name(path)
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        fsync(os.path.dirname(path))  # the rename itself
    except BaseException as e:
        remove(tmp)
        if isinstance(e, OSError) and e.filename is None and e.strerror:
            e.filename = path  # "No space left on device" alone does not say where
        raise


def write_bytes(path, data):
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_json(path, obj, indent=None):
    """``obj`` as JSON in ``path``, atomically."""
    write_bytes(path, (json.dumps(obj, indent=indent) + "\n").encode())


def read_json_object(path):
    """The JSON object in ``path``, or None when the file is absent, unreadable, not JSON or not an object: for the
    small records we keep beside data (indexes, markers, meta files), where any of those means "no record"."""
    try:
        with open(path) as f:
            obj = json.load(f)
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_dead_temporaries(directory):
    """Remove the temporaries that processes of this host, now dead, left in ``directory`` (killed while
    writing); returns their names. Another host's, or a live process's, are never touched."""
    host = socket.gethostname().split(".")[0] or "host"
    pattern = re.compile(r"^\..+" + re.escape(TMP_MARK) + re.escape(host) + r"-(\d+)-[0-9a-f]+$")
    removed = []
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        m = pattern.match(name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            remove(os.path.join(directory, name))
            removed.append(name)
    return removed


class DirectoryInUseError(RuntimeError):
    """Another live process holds the directory's lock (the message names the directory and the holder)."""


class DirectoryLock:
    """An exclusive lock on ``directory`` for as long as this process holds it: ``flock`` on ``<directory>/.lock``.

    The kernel releases the lock when its holder dies, however it dies (kill -9 included), so a crashed run never
    leaves it stuck; the file only records who holds it, for the message of whoever finds it taken.
    """

    NAME = ".lock"

    def __init__(self, directory, what="run"):
        self.directory, self.what, self.fd = directory, what, None

    def acquire(self):
        os.makedirs(self.directory, exist_ok=True)
        path = os.path.join(self.directory, self.NAME)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode(errors="replace").strip() or "unknown process"
            os.close(fd)
            raise DirectoryInUseError(f"{self.directory} is in use by another {self.what} ({holder}); wait for it "
                                      "to finish or choose another directory") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
                 .encode())
        self.fd = fd
        return self

    def release(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
