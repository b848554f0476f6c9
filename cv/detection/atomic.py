"""Writing files so that readers never see a partial one (standard library only: used by worker-side code too)."""
import contextlib
import json
import os
import tempfile


def write_json_atomically(path, obj, indent=None):
    """Write ``obj`` as JSON to ``path``: a temporary file in the same directory (a rename within one file system
    is atomic), flushed to disk, then renamed over ``path``. Killed at any point, ``path`` holds the old or the new
    content, never a mix; the temporary file is removed on errors."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            os.chmod(tmp, 0o644)  # mkstemp creates it private; outputs are meant to be shared like any file
            json.dump(obj, f, indent=indent)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
