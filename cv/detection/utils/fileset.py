"""A set of files served under fixed names and replaced as a whole (publish.py's tarball, digest and cards).

For a set called ``name`` with files ``files`` (``ssd300_vgg16.tar.gz``, ``.tar.gz.sha256``, ``.json``, ``.md``),
``folder`` holds::

    <file>                  for each file: a relative symbolic link to .<name>.current/<file>; never changes
    .<name>.current         a relative symbolic link to the set being served; replaced by one rename
    .<name>.set-<stamp>/    one complete set, written and flushed to disk before it is renamed into place
    .lock                   the folder's lock (:class:`cv.detection.utils.fileio.DirectoryLock`)

Users download the plain names (a web server, ``cp``, ``scp`` and ``load_state_dict_from_url`` follow the links;
``cp -a``, ``rsync -a`` and ``tar`` keep them, hidden folder included, and they still resolve). Switching sets is
the one rename of ``.<name>.current``, so at every instant, and after a crash at any point (a full disk, SIGTERM,
kill -9), the names lead to one complete set, the previous one byte for byte or the new one; never a mix. A
reader who reads two files of a set (a tarball, then its digest) resolves one name once (``os.path.realpath``)
and reads the others beside it; the set a publish replaced is kept until the next publish begins, so that such a
reader can finish. The folder therefore holds up to two sets, and a publish needs room for the new set beside
the one it replaces: it checks that before touching anything.

Recovery, run by every :func:`replace` under the lock before anything else (:func:`recover`):

1. temporaries left by dead processes (a set being built, a link being written) are removed;
2. if ``.<name>.current`` leads to a set: every other set is removed (the one the last publish replaced, or one
   a publish built and was killed before switching to), and the plain names are made links again;
3. if not, every set is removed (none is served), and plain files under the names (a folder written by an
   earlier publish.py, without links) become the current set by hard links, then links replace them one name at
   a time, each name keeping its bytes throughout.

A folder on a file system without symbolic links (FAT, some network shares) cannot hold a set: OSError.
"""
import contextlib
import errno
import os
import re
import secrets
import time

from cv.detection.utils import fileio
from cv.detection.utils.cli import Interrupted, pause_point


class SetNotReplaced(OSError):
    """Replacing the set failed; ``str()`` says why and which set ``folder`` now serves. ``errno``, ``strerror``
    and ``filename`` are the failure's (``filename`` names the published file, never a hidden temporary)."""

    def __init__(self, code, strerror, filename, detail):
        super().__init__(code, strerror, filename)
        self.detail = detail

    def __str__(self):
        return f"{self.strerror}: {self.filename}{self.detail}"


def _pointer(folder, name):
    return os.path.join(folder, f".{name}.current")


def _sets(folder, name):
    """Every finished set of ``name`` in ``folder`` (full paths)."""
    pattern = re.compile(r"^\." + re.escape(name) + r"\.set-[0-9TZ]+-[0-9a-f]+$")
    return [os.path.join(folder, n) for n in sorted(os.listdir(folder)) if pattern.match(n)]


def current(folder, name):
    """The set directory ``folder``'s names lead to, or None (nothing published, or only plain files)."""
    pointer = _pointer(folder, name)
    if not os.path.islink(pointer):
        return None
    target = os.path.join(folder, os.readlink(pointer))
    return target if os.path.isdir(target) else None


def _symlink(target, path):
    """Make ``path`` a symbolic link to ``target`` with one rename (nothing to do if it already is one)."""
    if os.path.islink(path) and os.readlink(path) == target:
        return
    tmp = fileio.temporary_name(path)
    try:
        os.symlink(target, tmp)
    except OSError as e:
        if e.errno in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS):
            raise OSError(e.errno, f"{os.path.dirname(path)} is on a file system without symbolic links, which "
                          "publishing needs; publish into a folder on a Linux file system and copy from there",
                          path) from None
        raise
    try:
        os.replace(tmp, path)
    except BaseException:
        fileio.remove(tmp)
        raise


def _link_names(folder, name, files):
    for f in files:
        _symlink(os.path.join(f".{name}.current", f), os.path.join(folder, f))


def _switch(folder, name, set_dir):
    _symlink(os.path.basename(set_dir), _pointer(folder, name))
    fileio.fsync(folder)


def _new_set_path(folder, name):
    return os.path.join(folder, f".{name}.set-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-"
                                f"{secrets.token_hex(3)}")


def _adopt_plain_files(folder, name, files):
    """Plain files under the names (an earlier publish.py's) become the current set, by hard links (no space)."""
    paths = {f: os.path.join(folder, f) for f in files}
    plain = [f for f, p in paths.items() if os.path.isfile(p) and not os.path.islink(p)]
    if not plain:
        return
    set_dir = _new_set_path(folder, name)
    with fileio.atomic_path(set_dir) as tmp:
        os.mkdir(tmp)
        for f in plain:
            os.link(os.path.join(folder, f), os.path.join(tmp, f))
    _switch(folder, name, set_dir)


def recover(folder, name, files):
    """Bring ``folder`` to the steady state described in the module docstring without changing what its names
    serve; the current set directory, or None. The caller holds the folder's lock."""
    fileio.remove_dead_temporaries(folder)
    served = current(folder, name)
    for stale in _sets(folder, name):
        if stale != served:
            fileio.remove(stale)
    if served is None:
        _adopt_plain_files(folder, name, files)
    if current(folder, name) is not None:
        _link_names(folder, name, files)
    fileio.fsync(folder)
    return current(folder, name)


def describe(set_dir, new_set=None):
    """Which set ``set_dir`` is, for an error message: the new one or the one served before, when it was
    installed and the digest it records (its ``*.sha256`` file, if any)."""
    if set_dir is None:
        return "no published set (as before)"
    which = "the new set" if set_dir == new_set else "the set it served before, unchanged"
    stamp = os.path.basename(set_dir).split(".set-")[1].split("-")[0]
    when = f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]} {stamp[9:11]}:{stamp[11:13]}:{stamp[13:15]} UTC"
    digests = [f for f in os.listdir(set_dir) if f.endswith(".sha256")]
    digest = ""
    if digests:
        with open(os.path.join(set_dir, digests[0])) as fh:
            digest = f", sha256 {(fh.read().split() or ['?'])[0][:16]}..."
    return f"{which} (installed {when}{digest})"


def _check_space(folder, files, need_bytes):
    stat = os.statvfs(folder)
    free = stat.f_bavail * stat.f_frsize
    if free < need_bytes:
        raise SetNotReplaced(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.join(folder, files[0]),
                             f" (the new set needs about {need_bytes / 1e6:.0f} MB beside the one it replaces, "
                             f"{free / 1e6:.0f} MB are free)")


def _explained(exc, folder, name, files, new_set):
    """``exc`` (any failure while replacing) as an error that also says which set ``folder`` now serves."""
    held = f"; {folder} serves {describe(current(folder, name), new_set)}"
    if isinstance(exc, KeyboardInterrupt):
        return Interrupted(2, f"interrupted{held}")
    if isinstance(exc, Interrupted):
        return Interrupted(exc.signum, f"{exc}{held}")
    if isinstance(exc, OSError) and exc.strerror:
        filename = exc.filename
        if filename is None or os.path.basename(str(filename)).startswith("."):  # a hidden temporary: not the user's
            filename = os.path.join(folder, files[0])
        return SetNotReplaced(exc.errno, exc.strerror, filename, getattr(exc, "detail", "") + held)
    return None


@contextlib.contextmanager
def replace(folder, name, files, need_bytes):
    """Yield a hidden, empty directory on ``folder``'s file system to write the new set's ``files`` into; when the
    block ends, the set replaces the one ``folder/<file>`` serves, as a whole (see the module docstring).

    Takes the folder's lock (DirectoryInUseError if another publish holds it) and recovers the folder first;
    fails with ENOSPC before anything is written if fewer than ``need_bytes`` are free. Any failure, in the block
    or after it, leaves the folder serving one complete set and is raised as an error that says which:
    SetNotReplaced (an OSError) for OSErrors, cli.Interrupted for Ctrl-C or an Interrupted raised by a signal
    handler; any other exception propagates unchanged."""
    os.makedirs(folder, exist_ok=True)
    new_set = None
    with fileio.DirectoryLock(folder, "publish"):
        try:
            recover(folder, name, files)
            _check_space(folder, files, need_bytes)
            new_set = _new_set_path(folder, name)
            with fileio.atomic_path(new_set) as staging:
                os.mkdir(staging)
                yield staging
                missing = [f for f in files if not os.path.isfile(os.path.join(staging, f))]
                assert not missing, f"the new set lacks {missing}"
                pause_point("publish:built")
            pause_point("publish:staged")
            _link_names(folder, name, files)
            pause_point("publish:linked")
            _switch(folder, name, new_set)
            pause_point("publish:switched")
        except BaseException as e:
            explained = _explained(e, folder, name, files, new_set)
            if explained is None:
                raise
            raise explained from e
