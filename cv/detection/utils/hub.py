"""Fetching published weights: download, cache, verify and safely extract a model-zoo tarball.

A zoo tarball holds ONE top-level directory with what ``flow.save`` wrote (``ssd300_vgg16.tar.gz`` ->
``ssd300_vgg16/``). Unlike flowvision's ``load_state_dict_from_url`` (no timeout, size limit or checksum, a bare
``extractall``), this module lets no source write outside the cache or fill the disk, and writes everything through
:func:`cv.detection.utils.fileio.atomic_path`: complete, or not at all. The cache is flowvision's, so a download by
either serves both: ``<cache>/ssd300_vgg16.tar.gz`` (named as in the URL) with its URL in
``ssd300_vgg16.tar.gz.source``, and its extraction ``<cache>/ssd300_vgg16/`` (flowvision looks for the file name up to
its first dot), whose ``.source.json`` records the tarball's SHA-256 and source. oneflow is not imported here.
"""
import errno
import gzip
import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import sys
import tarfile
import urllib.error
import urllib.parse
import urllib.request

from tqdm import tqdm

from cv.detection.utils.fileio import (atomic_path, read_json_object, remove, remove_dead_temporaries,
                                      write_bytes)

TIMEOUT = 30.0  # seconds a connect or one read may stall (per chunk: a slow but steady transfer is not cut off)
CHUNK = 1 << 16
# The most a download may bring, and an extraction unpack (its files' declared sizes), unless the caller says
# otherwise: far above zoo weights (SSD300-VGG16's are 143 MB), it stops a hostile or broken source (an endless
# body, a gzip bomb: kilobytes that unpack to gigabytes) from filling the disk.
MAX_BYTES = 1 << 30
SPACE_MARGIN = 16 << 20  # free space required beyond the bytes themselves: file-system blocks, and everyone else
# Provenance, so that a cached copy stands in only for what it was made from (the zoo's COCO weights and a user's
# own tarball are both "ssd300_vgg16"): in each extraction its tarball's SHA-256 and source, beside each downloaded
# tarball its URL. flow.load and flowvision ignore both.
MARKER, SOURCE = ".source.json", ".source"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_USER_AGENT = "oneflow-model-zoo-ssd300-vgg16/hub (Python urllib)"


def cache_dir():
    """The weights cache, created if missing: ``$FLOWVISION_CACHE``, else ``~/.oneflow/flowvision_cache`` (as for
    flowvision). Temporaries left in it by killed processes of this host are removed."""
    path = os.path.expanduser(os.environ.get("FLOWVISION_CACHE") or "~/.oneflow/flowvision_cache")
    os.makedirs(path, exist_ok=True)
    remove_dead_temporaries(path)
    return path


class DownloadError(RuntimeError):
    """A download failed; ``str(err)`` names the URL, the reason, and how to put the file in place by hand.
    Attributes: ``url``, ``reason`` (HTTP status, refused connection, checksum, size...), ``dest`` (or None)."""

    def __init__(self, url, reason, dest=None):
        self.url, self.reason, self.dest = url, reason, dest
        msg = f"could not download {url}: {reason}."
        if dest is not None:  # behind a firewall, say exactly where a copy fetched elsewhere must go
            folder, name = os.path.split(dest)
            msg += (f" To install it by hand, fetch that file another way and place it at {dest}, or put its "
                    f"extracted directory at {os.path.join(folder, name.split('.')[0])}{os.sep}.")
        super().__init__(msg)

    def __reduce__(self):  # pickled with our __init__'s arguments (raised in DataLoader workers, other ranks)
        return type(self), (self.url, self.reason, self.dest)


class _Missing(DownloadError):
    """Nothing at that address (HTTP 404/410, no such file): for a checksum, "none published"."""


class _NoSpace(ValueError):
    """Too little disk space to extract: the tarball is fine, and the cache keeps it."""


def _space_problem(folder, size):
    """Why ``size`` bytes will not fit in ``folder`` (or the nearest existing folder above it), or None."""
    probe = folder
    while not os.path.isdir(probe):
        probe = os.path.dirname(probe)
    free, needed = shutil.disk_usage(probe).free, size + SPACE_MARGIN
    return f"not enough disk space in {folder}: {needed} bytes needed, {free} free" if needed > free else None


def _full_disk(exc, folder):
    """What to say if writing to ``folder`` failed with ``exc`` because its disk is full, else None."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"the disk is full: no space left in {folder} ({exc.strerror})"
    return None


def is_url(source):
    """True for an ``http://``, ``https://`` or ``file://`` URL."""
    return isinstance(source, str) and urllib.parse.urlsplit(source).scheme.lower() in ("http", "https", "file")


def _network_reason(exc):
    """A short, specific description of why a connection or transfer failed."""
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    for kinds, text in ((socket.gaierror, "cannot resolve the host name (no network, or DNS failure)"),
                        (ConnectionRefusedError, "connection refused (is the server up? is there a network?)"),
                        ((socket.timeout, TimeoutError), f"timed out (no data for {TIMEOUT:g} s)"),
                        ((ConnectionError, http.client.IncompleteRead), "connection closed early")):
        if isinstance(reason, kinds):
            return f"{text}: {reason}"
    return f"network error ({reason})"


def _open(url, dest=None):
    """``(stream, size or None)`` for an http(s):// or file:// URL, else DownloadError (``_Missing`` if there is
    nothing there). A body sent with a Content-Encoding is not decoded: zoo servers send tarballs as they are."""
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": _USER_AGENT}),
                                      timeout=TIMEOUT)
    except urllib.error.HTTPError as e:
        e.close()  # the error response holds the connection
        raise (_Missing if e.code in (404, 410) else DownloadError)(url, f"HTTP {e.code} {e.reason}", dest) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        if isinstance(getattr(e, "reason", None), FileNotFoundError):
            raise _Missing(url, f"no such file: {e.reason.filename}", dest) from None
        raise DownloadError(url, _network_reason(e), dest) from e
    length = resp.headers.get("Content-Length", "")
    return resp, int(length) if length.isdigit() else None


def _normalize_sha256(sha256):
    digest = None if sha256 is None else str(sha256).strip().lower()
    if digest is not None and not _HEX64.match(digest):
        raise ValueError(f"not a SHA-256 hex digest (64 hex digits): {sha256!r}")
    return digest


def file_sha256(path):
    """Hex SHA-256 of a file's contents."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def known_sha256(url, sha256=None):
    """The SHA-256 to verify ``url`` against: the caller's ``sha256`` (64 hex digits, else ValueError), else the
    first token of ``<url>.sha256`` beside it (as ``sha256sum`` and publish.py write it), else None. A missing
    checksum file means "unknown"; so does one that cannot be read or holds no digest, with a note on stderr (if
    the server is really down, the download that follows fails with its own DownloadError)."""
    if sha256 is not None:
        return _normalize_sha256(sha256)
    try:
        stream, _ = _open(url + ".sha256")
        with stream:  # a tiny text file: never read much of it
            token = (stream.read(4096).decode("utf-8", "replace").split() or [""])[0].lower()
        if _HEX64.match(token):
            return token
        reason = "it does not start with a SHA-256 digest"
    except _Missing:
        return None
    except (DownloadError, OSError, http.client.HTTPException) as e:  # the latter two while reading the body
        reason = e.reason if isinstance(e, DownloadError) else _network_reason(e)
    print(f"hub: note: could not use {url}.sha256 ({reason}); the tarball will not be verified", file=sys.stderr)
    return None


def download(url, dest, sha256=None, progress=True, max_bytes=MAX_BYTES):
    """Download ``url`` (http://, https:// or file://) to ``dest`` and return ``dest``.

    The body goes to a temporary file beside ``dest``, renamed into place (replacing any ``dest``) only when all of
    it arrived (as many bytes as Content-Length announced, if it did) and its SHA-256 is ``sha256`` (if given).
    Otherwise the temporary is removed and :class:`DownloadError` says why: DNS failure, connection refused, timeout
    (``TIMEOUT`` s without data), HTTP status, truncated body, checksum mismatch, missing file, more than
    ``max_bytes`` (announced: refused before the body is read; else stopped there), too little free space for the
    announced size, a full disk, an unwritable ``dest`` (found before connecting). Progress on stderr (tqdm).
    """
    expected = _normalize_sha256(sha256)
    dest = os.path.abspath(os.path.expanduser(os.fspath(dest)))
    folder = os.path.dirname(dest)
    tty = getattr(sys.stderr, "isatty", lambda: False)()
    try:  # the destination is opened first: an unwritable cache fails with no connection to leak
        with atomic_path(dest) as part, open(part, "wb") as out:
            stream, size = _open(url, dest)
            with stream, tqdm(total=size, desc=f"Downloading {os.path.basename(dest)}", file=sys.stderr, unit="B",
                              unit_scale=True, unit_divisor=1024, disable=not progress,
                              mininterval=0.1 if tty else 10) as bar:  # a log file gets a few lines, not thousands
                if size is not None:
                    problem = (f"{size} bytes announced, more than the limit (max_bytes) of {max_bytes}"
                               if size > max_bytes else _space_problem(folder, size))
                    if problem:
                        raise DownloadError(url, problem, dest)
                h, done = hashlib.sha256(), 0
                while True:
                    try:
                        block = stream.read(CHUNK)
                    except (OSError, http.client.HTTPException) as e:
                        raise DownloadError(url, f"{_network_reason(e)} after {done} bytes", dest) from e
                    if not block:
                        break
                    done += len(block)
                    if done > max_bytes:
                        raise DownloadError(url, f"stopped after {done} bytes, more than the limit (max_bytes) of "
                                                 f"{max_bytes}", dest)
                    out.write(block)
                    h.update(block)
                    bar.update(len(block))
            if size is not None and done != size:  # http.client ends a short body without complaint
                raise DownloadError(url, f"truncated body: received {done} of {size} bytes", dest)
            if expected is not None and h.hexdigest() != expected:
                raise DownloadError(url, f"checksum mismatch: expected SHA-256 {expected}, got {h.hexdigest()}", dest)
    except OSError as e:  # writing (reading failures are DownloadErrors already)
        raise DownloadError(url, _full_disk(e, folder) or f"cannot write to {folder} ({e})", dest) from e
    return dest


_KINDS = {tarfile.SYMTYPE: "a symbolic link", tarfile.LNKTYPE: "a hard link", tarfile.CHRTYPE: "a character device",
          tarfile.BLKTYPE: "a block device", tarfile.FIFOTYPE: "a FIFO"}


def _vet(tar_path, member):
    """The member's path components (``.`` dropped), after refusing what has no place in weights."""
    name, parts = member.name, [p for p in member.name.split("/") if p not in ("", ".")]
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        why = "has an absolute path"
    elif ".." in parts:
        why = "contains '..'"
    elif not (member.isreg() or member.isdir()):  # a link could point anywhere, even inside: weights need none
        why = "is " + _KINDS.get(member.type, "of an unsupported type")
    elif not parts and not member.isdir():
        why = "has an empty path"
    else:
        return parts
    raise ValueError(f"unsafe tarball {tar_path}: member {name!r} {why}")


def _marker(directory):
    return read_json_object(os.path.join(directory, MARKER)) or {}


def _in_the_way(final, marker):
    """Whether ``final`` stops an extraction: anything does for safe_extract; in the cache (``marker`` given), only
    an extraction of the same tarball (same SHA-256), which is then used; another tarball's is replaced."""
    return os.path.lexists(final) and (marker is None or is_weights_dir(final) and
                                       _marker(final).get("sha256") == marker["sha256"])


class _CappedTar:
    """A tarball's decompressed stream, in which tarfile may not read or seek past ``limit``. The cap on declared
    sizes only sees members; this one also bounds what tarfile reads whole by itself (PAX, GNU long-name headers)."""

    def __init__(self, tar_path, limit):
        self.raw, self.tar_path, self.limit = open(tar_path, "rb"), tar_path, limit
        gzipped = self.raw.read(2) == b"\x1f\x8b"
        self.raw.seek(0)
        self.f = gzip.GzipFile(fileobj=self.raw) if gzipped else self.raw

    def _check(self, end):  # before anything past ``limit`` is decompressed
        if end > self.limit:
            raise ValueError(f"tarball {self.tar_path} unpacks to more than {self.limit} bytes, headers included")

    def seek(self, pos):
        self._check(pos)
        return self.f.seek(pos)

    def read(self, size):  # tarfile always says how much
        self._check(self.f.tell() + size)
        return self.f.read(size)

    def tell(self):
        return self.f.tell()


def _extract(tar_path, dest_root, max_bytes, marker=None):
    """``(dest_root/<top>, reused)``: :func:`safe_extract`, or with ``marker`` (the tarball's ``sha256`` and
    ``source``) the cache's variant (see :func:`_in_the_way`), where the tarball must hold weights and ``marker``
    is written into the extraction before it takes its name."""
    tar_path, dest_root = os.fspath(tar_path), os.path.abspath(os.path.expanduser(os.fspath(dest_root)))
    stream = _CappedTar(tar_path, max_bytes + max_bytes // 8 + (1 << 20))  # room for ~1.5 KiB of headers a member
    try:
        tar = tarfile.open(fileobj=stream, mode="r:")
    except BaseException as e:
        stream.raw.close()
        if not isinstance(e, (tarfile.TarError, EOFError, OSError)):
            raise
        raise ValueError(f"{tar_path} is not a readable tar(.gz) archive ({e})") from e
    with stream.raw, tar:
        # Every header is vetted before anything is written. They are read one at a time, a member's data being
        # decompressed only to reach the next header, so the cap stops a bomb at its header.
        top, members, total = None, [], 0
        try:
            for member in tar:
                parts = _vet(tar_path, member)
                if not parts:
                    continue  # the archive root "./"
                if top is None:
                    top, final = parts[0], os.path.join(dest_root, parts[0])
                    if marker and _in_the_way(final, marker):
                        return final, True  # the tarball was vetted when that extraction was made
                if parts[0] != top:
                    raise ValueError(f"tarball {tar_path} has more than one top-level entry ({top!r}, "
                                     f"{parts[0]!r}; member {member.name!r}); expected a single directory")
                if len(parts) == 1 and not member.isdir():
                    raise ValueError(f"tarball {tar_path}: top-level member {member.name!r} is a file; expected "
                                     "a single directory")
                total += member.size
                if total > max_bytes:
                    raise ValueError(f"tarball {tar_path} unpacks to more than the limit (max_bytes) of {max_bytes} "
                                     f"bytes: member {member.name!r} brings it to {total}")
                if len(parts) > 1:  # named below the staging directory, which becomes dest_root/<top>
                    members.append((member, member.replace(name="/".join(parts[1:]), deep=False)))
        except (tarfile.TarError, EOFError, OSError) as e:
            raise ValueError(f"{tar_path} is not a readable tar(.gz) archive ({e})") from e
        if top is None:
            raise ValueError(f"tarball {tar_path} is empty")
        if marker and not any(inner.name == "pickled_data" and inner.isreg() for _, inner in members):
            raise ValueError(f"{tar_path} does not hold flow.save weights: no pickled_data in its top-level "
                             f"directory {top!r}")
        problem = _space_problem(dest_root, total)
        if problem:
            raise _NoSpace(f"cannot extract {tar_path}: {problem}")
        created = not os.path.isdir(dest_root)
        try:
            if _in_the_way(final, marker):
                raise FileExistsError(f"{final} already exists; not overwriting it with {tar_path}")
            with atomic_path(final) as staging:
                os.mkdir(staging)
                for member, inner in members:
                    try:  # tarfile's "data" filter checks each path again; no owners, modes or times are applied
                        tar.extract(inner, staging, set_attrs=False, filter="data")
                    except (FileExistsError, NotADirectoryError, IsADirectoryError) as e:
                        raise ValueError(f"malformed tarball {tar_path}: member {member.name!r} conflicts with an "
                                         f"earlier member ({e.strerror})") from None
                if marker:
                    with open(os.path.join(staging, MARKER), "w") as f:
                        json.dump(marker, f)
                if _in_the_way(final, marker):  # another process was quicker; atomic_path would replace its work
                    raise FileExistsError(f"{final} already exists; not overwriting it with {tar_path}")
        except BaseException as e:
            if created and os.path.isdir(dest_root) and not os.listdir(dest_root):
                os.rmdir(dest_root)  # made for nothing
            if marker and isinstance(e, FileExistsError):
                return final, True
            if _full_disk(e, dest_root):
                raise _NoSpace(f"cannot extract {tar_path}: {_full_disk(e, dest_root)}") from e
            raise
    return final, False


def safe_extract(tar_path, dest_root, max_bytes=MAX_BYTES):
    """Extract ``tar_path`` (a ``.tar.gz``, or a plain tar) into ``dest_root`` and return ``dest_root/<top>``.

    * All members must be regular files or directories under ONE top-level directory: absolute paths, ``..``,
      symbolic or hard links, devices, FIFOs, several top-level entries or a top-level file raise ValueError naming
      the tarball and the member; so does an unreadable archive. Files get default permissions (the archive's
      owners, modes and setuid bits are not applied), and tarfile's "data" filter checks each path again.
    * The members' declared sizes may sum to ``max_bytes`` at most, checked header by header: a gzip bomb is
      refused (ValueError) having decompressed about ``max_bytes`` at most. The free space must exceed that sum by
      ``SPACE_MARGIN``, else ValueError naming ``dest_root``, the bytes needed and free; so does a full disk.
    * Refusals come before anything is written; the extraction is staged beside ``dest_root/<top>`` and renamed
      into place, so it appears complete or not at all, and on any failure ``dest_root`` is left as it was.
    * An existing ``dest_root/<top>`` is never overwritten: FileExistsError (also when a concurrent extraction by
      another process finishes first; the caller decides whether that directory will do).
    """
    return _extract(tar_path, dest_root, max_bytes)[0]


def is_weights_dir(path):
    """True if ``path`` is a directory written by ``flow.save`` (it holds ``pickled_data``)."""
    return os.path.isfile(os.path.join(path, "pickled_data"))


def _extract_into_cache(tar_path, label, source, digest, max_bytes):
    path, reused = _extract(tar_path, cache_dir(), max_bytes, {"sha256": digest, "source": source})
    print(f"hub: {label}; " + (f"using the extraction found in cache: {path}" if reused else f"extracted to {path}"),
          flush=True)
    return path


def _resolve_url(url, sha256, progress, max_bytes):
    # Decode before taking the last component: an encoded "..%2F" must not become a path out of the cache.
    name = os.path.basename(urllib.parse.unquote(urllib.parse.urlsplit(url).path))
    if not name.split(".")[0] or "\\" in name:  # the stem names a cache subdirectory; it must not be empty
        raise ValueError(f"cannot tell a usable file name from the URL {url!r}")
    cache, user_sha = cache_dir(), _normalize_sha256(sha256)
    tar_path, stem_dir = os.path.join(cache, name), os.path.join(cache, name.split(".")[0])

    # An extraction made from this URL (its marker says so) serves with no network access: offline use after the
    # first download. One without a marker (placed by hand, as our messages suggest, or by flowvision) is trusted
    # too; one made from another source, or not matching ``sha256``, is not.
    marker = _marker(stem_dir)
    if is_weights_dir(stem_dir) and marker.get("source", url) == url and \
            (user_sha is None or marker.get("sha256", user_sha) == user_sha):
        print(f"hub: using weights found in cache: {stem_dir} (for {url})", flush=True)
        return stem_dir

    expected = known_sha256(url, user_sha)
    if os.path.isfile(tar_path):
        try:  # without its URL beside it, placed by hand or by flowvision: trusted
            with open(tar_path + SOURCE) as f:
                cached_from = f.read().strip()
        except FileNotFoundError:
            cached_from = url
        got = file_sha256(tar_path) if cached_from == url else None
        why = (f"came from {cached_from}, not {url}" if cached_from != url else
               f"has SHA-256 {got}, expected {expected}" if expected not in (None, got) else None)
        if why is None:
            label = f"found {tar_path} in cache" + (" (checksum verified)" if expected else "")
            try:
                return _extract_into_cache(tar_path, label, url, got, max_bytes)
            except _NoSpace:
                raise
            except ValueError as e:  # our downloads are complete: damaged on disk, or placed by hand
                why = f"is unusable ({e})"
        print(f"hub: cached {tar_path} {why}; downloading it again", flush=True)
        for path in (tar_path, tar_path + SOURCE, stem_dir):  # and what was extracted from it
            remove(path)

    sys.stderr.write(f"Downloading {url} to {tar_path}\n")
    download(url, tar_path, expected, progress, max_bytes)
    write_bytes(tar_path + SOURCE, (url + "\n").encode())
    label = f"downloaded {url} to {tar_path}" + (" (checksum verified)" if expected else " (no checksum known)")
    try:
        return _extract_into_cache(tar_path, label, url, expected or file_sha256(tar_path), max_bytes)
    except ValueError as e:
        if not isinstance(e, _NoSpace):  # refused: not to be found next time
            remove(tar_path)
            remove(tar_path + SOURCE)
        raise


def resolve_weights(source, sha256=None, progress=True, max_bytes=MAX_BYTES):
    """A local directory of ``flow.save``d weights, ready for ``flow.load``, for ``source``, which is one of:

    * a directory holding ``pickled_data``: returned as is (one without it: ValueError naming it);
    * a local tarball: checked against ``sha256`` if given, else against ``<tarball>.sha256`` if that file is beside
      it (a mismatch is a ValueError naming both), then extracted into :func:`cache_dir` as ``<top-level dir>/``;
      an extraction there is reused only if its marker names this tarball's SHA-256 (else it is replaced);
    * an ``http(s)://`` or ``file://`` URL of a tarball: downloaded to ``<cache>/<file name>`` unless there already,
      checked against :func:`known_sha256` (a cached tarball that does not match, or came from another URL, is
      downloaded again), then extracted likewise. An extraction at ``<cache>/<file name up to the first dot>/``
      (flowvision's convention) is used with no network access unless its marker names another source or
      SHA-256. A downloaded tarball that is refused is not kept.

    Downloads and extractions are capped at ``max_bytes`` (:func:`download`, :func:`safe_extract`). Prints one line
    saying what was used. Raises DownloadError (network, HTTP, checksum, size, full disk), ValueError (unsafe,
    unusable or too large archive, not weights, local checksum mismatch, no space to extract), FileNotFoundError.
    """
    if is_url(source):
        return _resolve_url(source, sha256, progress, max_bytes)
    path = os.path.abspath(os.path.expanduser(os.fspath(source)))
    if os.path.isdir(path):
        if not is_weights_dir(path):
            raise ValueError(f"{path} is not a flow.save directory (no pickled_data in it)")
        print(f"hub: using weights directory {path}", flush=True)
        return path
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such weights directory, tarball or URL: {source}")
    # A published folder's names are links into its current set (cv.detection.utils.fileset): read the tarball and
    # its digest where the link leads, so that a republish between the two reads cannot pair different sets.
    real = os.path.realpath(path)
    read = real if real != path and os.path.exists(real + ".sha256") else path
    got, expected = file_sha256(read), known_sha256("file://" + urllib.request.pathname2url(read), sha256)
    if expected is not None and got != expected:
        said = "the given sha256" if sha256 is not None else f"{path}.sha256"
        raise ValueError(f"checksum mismatch for {path}: {said} says SHA-256 {expected}, the file has {got}")
    label = f"using tarball {path}" + (" (checksum verified)" if expected else "")
    return _extract_into_cache(read, label, path, got, max_bytes)
