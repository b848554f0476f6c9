"""Fetching published weights: download, cache, verify and safely extract a model-zoo tarball.

The OneFlow model zoo publishes weights as a gzip tarball holding ONE top-level directory with what ``flow.save``
wrote (``pickled_data`` plus tensor subfolders), e.g. ``.../ssd300_vgg16.tar.gz`` -> ``ssd300_vgg16/``.

Why not just call ``flowvision.models.utils.load_state_dict_from_url``? It downloads without a timeout, keeps no
checksum unless the file name carries one, extracts with ``tarfile.extractall`` (a crafted archive can write
outside the cache), leaves a half-extracted directory behind when interrupted, and needs ``tqdm``. This module
does the same job with the standard library only, and every step either completes or leaves nothing behind.

The cache layout is flowvision's, so both share one cache and a download by either is reused by the other::

    $FLOWVISION_CACHE (default ~/.oneflow/flowvision_cache)/
        ssd300_vgg16.tar.gz      the downloaded tarball, named as in the URL
        ssd300_vgg16/            its extraction (flowvision looks for the file name up to its first dot)

Entry point: :func:`resolve_weights` turns a directory, a tarball path or an ``http(s)://`` / ``file://`` URL into
a local directory that ``flow.load`` accepts. oneflow is not imported here: fetching needs no tensors.
"""
import contextlib
import hashlib
import json
import http.client
import os
import re
import shutil
import socket
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import PurePosixPath

# Seconds a connect or a single read may stall before the download is abandoned. Reads are per chunk, so a slow
# but steady transfer of a large file is not cut off; a server that stops sending is.
TIMEOUT = 30.0
CHUNK = 1 << 16
# Published checksums are tiny text files; never read more than this of one.
_SHA256_FILE_LIMIT = 4096
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_USER_AGENT = "oneflow-model-zoo-ssd300-vgg16/hub (Python urllib)"


def cache_dir():
    """The weights cache: ``$FLOWVISION_CACHE`` if set, else ``~/.oneflow/flowvision_cache`` (user-expanded),
    created if missing. Same rule as flowvision, so both share downloads."""
    path = os.path.expanduser(os.environ.get("FLOWVISION_CACHE") or "~/.oneflow/flowvision_cache")
    os.makedirs(path, exist_ok=True)
    return path


class DownloadError(RuntimeError):
    """A download failed. ``str(err)`` names the URL, the reason, and how to put the file in place by hand.

    Attributes: ``url``, ``reason`` (short, specific: HTTP status, refused connection, checksum...), ``dest``
    (where the file would have been written, or None).
    """

    def __init__(self, url, reason, dest=None):
        self.url, self.reason, self.dest = url, reason, dest
        msg = f"could not download {url}: {reason}."
        if dest is not None:
            # The user may be behind a firewall: tell them exactly where a copy fetched elsewhere must go.
            folder, name = os.path.split(dest)
            msg += (f" To install it by hand, fetch that file another way and place it at {dest}, or put its "
                    f"extracted directory at {os.path.join(folder, name.split('.')[0])}{os.sep}.")
        super().__init__(msg)

    def __reduce__(self):
        # Exceptions are pickled with their args; ours has a custom __init__, so say how to rebuild it
        # (matters when raised inside a DataLoader worker or another process).
        return type(self), (self.url, self.reason, self.dest)


class _MissingFile(DownloadError):
    """A file:// URL names no file (for a checksum file, that just means "no checksum published")."""


# ---------------------------------------------------------------------------------------------------------------
# Opening URLs

def _is_url(source):
    return isinstance(source, str) and urllib.parse.urlsplit(source).scheme.lower() in ("http", "https", "file")


def _file_url_path(url):
    """Local path of a ``file://`` URL (``file:///abs/path`` or ``file://localhost/abs/path``)."""
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise DownloadError(url, f"file:// URLs must name a local path, not host {parts.netloc!r}")
    return urllib.request.url2pathname(parts.path)


def _network_reason(exc):
    """A short, specific description of why a connection or transfer failed."""
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, socket.gaierror):
        return f"cannot resolve the host name (no network or DNS failure: {reason})"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused (is the server up? is there a network connection?)"
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return f"timed out (no data for {TIMEOUT:g} s)"
    if isinstance(reason, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
        return f"connection closed early ({reason})"
    if isinstance(reason, http.client.IncompleteRead):
        return f"truncated body: connection closed early after {len(reason.partial)} bytes of a chunk"
    if isinstance(reason, http.client.HTTPException):
        return f"bad HTTP response ({type(reason).__name__}: {reason})"
    return f"network error ({reason})"


def _open(url):
    """``(stream, size or None)`` for an http(s):// or file:// URL; raises DownloadError. ``urllib.error.HTTPError``
    is let through so that callers can tell a 404 from other failures."""
    if urllib.parse.urlsplit(url).scheme.lower() == "file":
        # Opened directly rather than through urllib to report a missing file plainly.
        path = _file_url_path(url)
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            raise _MissingFile(url, f"no such file: {path}") from None
        except OSError as e:
            raise DownloadError(url, f"cannot read {path} ({e})") from None
        return f, os.fstat(f.fileno()).st_size
    req = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        resp = urllib.request.urlopen(req, timeout=TIMEOUT)
    except urllib.error.HTTPError:
        raise
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise DownloadError(url, _network_reason(e)) from e
    length = resp.headers.get("Content-Length")
    try:
        size = int(length) if length is not None else None
    except ValueError:
        size = None
    # A body sent with Content-Encoding would arrive re-encoded; urllib does not decode it, and the size and
    # checksum then describe the encoded bytes. Zoo servers send tarballs as is, so this is not handled.
    return resp, size


# ---------------------------------------------------------------------------------------------------------------
# Checksums

def _normalize_sha256(sha256):
    if sha256 is None:
        return None
    digest = str(sha256).strip().lower()
    if not _HEX64.match(digest):
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
    """The SHA-256 to verify ``url`` against, or None when unknown.

    The caller's ``sha256`` wins (validated: 64 hex digits, else ValueError). Otherwise the checksum published beside
    the file is fetched: ``<url>.sha256``, a text file whose first token is the hex digest (what ``sha256sum``
    writes). A missing checksum file (HTTP 404/410, missing file:// path) means "unknown". Any other failure of
    that small request also returns None, with a note on stderr: the checksum is optional, and if the server is
    really unreachable, the download that follows fails with its own precise DownloadError.
    """
    if sha256 is not None:
        return _normalize_sha256(sha256)
    sums_url = url + ".sha256"
    try:
        stream, _ = _open(sums_url)
        with stream:
            text = stream.read(_SHA256_FILE_LIMIT).decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        if e.code not in (404, 410):
            print(f"hub: note: could not fetch {sums_url} (HTTP {e.code}); the download will not be verified",
                  file=sys.stderr)
        return None
    except _MissingFile:
        return None
    except DownloadError as e:
        print(f"hub: note: could not fetch {sums_url} ({e.reason}); the download will not be verified",
                  file=sys.stderr)
        return None
    except (OSError, http.client.HTTPException) as e:  # failures while reading the body
        print(f"hub: note: could not read {sums_url} ({_network_reason(e)}); the download will not be verified",
              file=sys.stderr)
        return None
    tokens = text.split()
    digest = tokens[0].lower() if tokens else ""
    if not _HEX64.match(digest):
        # Published but unreadable: say so rather than silently skip verification.
        print(f"hub: note: {sums_url} does not start with a SHA-256 digest; the download will not be verified",
              file=sys.stderr)
        return None
    return digest


# ---------------------------------------------------------------------------------------------------------------
# Download

class _Progress:
    """A percentage on stderr: redrawn in place on a terminal, one line per 10 % otherwise (a log file should
    not get thousands of lines). Unknown sizes report megabytes."""

    def __init__(self, enabled, total, label):
        self.enabled, self.total, self.label = enabled, total, label
        self.tty = enabled and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
        self.last_step, self.last_draw, self.closed, self.text = -1, 0.0, False, ""

    def update(self, done):
        if not self.enabled:
            return
        if self.total:
            fraction = min(done / self.total, 1.0)
            text = f"{self.label}: {fraction * 100:5.1f}% ({done / 1e6:.1f} / {self.total / 1e6:.1f} MB)"
            step = int(fraction * 10)
        else:
            text = f"{self.label}: {done / 1e6:.1f} MB"
            step = int(done // 50e6)  # a line per 50 MB when the size is unknown
        if self.tty:
            if self.total:
                text += f" [{'#' * int(30 * fraction):<30}]"
            self.text = text
            now = time.monotonic()
            if now - self.last_draw >= 0.1:  # redrawing per chunk would cost more than the download
                sys.stderr.write("\r" + text)
                sys.stderr.flush()
                self.last_draw = now
        elif step > self.last_step:
            sys.stderr.write(text + "\n")
            sys.stderr.flush()
            self.last_step = step

    def close(self):
        if self.enabled and self.tty and not self.closed:
            self.closed = True
            sys.stderr.write(f"\r{self.text}\n")  # the final state, which throttling may have skipped
            sys.stderr.flush()


def download(url, dest, sha256=None, progress=True):
    """Download ``url`` (http://, https:// or file://) to ``dest`` and return ``dest``.

    The body goes to a temporary file beside ``dest`` (``<dest>.part-<random>``) that is renamed into place only
    when the whole body arrived (as many bytes as Content-Length announced, when it did) and its SHA-256 equals
    ``sha256`` (when given). An existing ``dest`` is replaced only then. On any failure the temporary file is
    removed and :class:`DownloadError` is raised with the reason: DNS failure / no network, connection refused,
    timeout (``TIMEOUT`` seconds without data), HTTP error status, truncated body, checksum mismatch, missing
    file:// path. Progress goes to stderr when ``progress`` is true.
    """
    expected = _normalize_sha256(sha256)
    dest = os.path.abspath(os.path.expanduser(os.fspath(dest)))
    folder = os.path.dirname(dest)
    os.makedirs(folder, exist_ok=True)
    try:
        stream, size = _open(url)
    except urllib.error.HTTPError as e:
        raise DownloadError(url, f"HTTP error {e.code} {e.reason}", dest) from None
    except DownloadError as e:
        raise DownloadError(url, e.reason, dest) from e.__cause__
    # Same directory as dest so the final rename stays on one file system (and so is atomic). A random suffix:
    # two processes (ranks of a distributed job) may download at once; each renames its own complete copy.
    fd, part = tempfile.mkstemp(prefix=os.path.basename(dest) + ".part-", dir=folder)
    bar = _Progress(progress, size, f"Downloading {os.path.basename(dest)}")
    try:
        h = hashlib.sha256()
        done = 0
        with stream, os.fdopen(fd, "wb") as out:
            bar.update(0)
            while True:
                try:
                    block = stream.read(CHUNK)
                except (OSError, http.client.HTTPException) as e:
                    raise DownloadError(url, _network_reason(e) + f" after {done} bytes", dest) from e
                if not block:
                    break
                out.write(block)
                h.update(block)
                done += len(block)
                bar.update(done)
        # http.client returns a short body without complaint when the server closes early, so count.
        if size is not None and done != size:
            raise DownloadError(url, f"truncated body: received {done} of {size} bytes (connection closed early)",
                                dest)
        got = h.hexdigest()
        if expected is not None and got != expected:
            raise DownloadError(url, f"checksum mismatch: expected SHA-256 {expected}, got {got}", dest)
        # mkstemp creates the file private (0600); a cache may be shared, and extracted files get default modes.
        os.chmod(part, 0o644)
        os.replace(part, dest)
    except BaseException:
        # Also on KeyboardInterrupt: a half-written .part must not pile up in the cache.
        try:
            os.remove(part)
        except FileNotFoundError:
            pass
        raise
    finally:
        bar.close()  # end the in-place progress line before any message
    return dest


# ---------------------------------------------------------------------------------------------------------------
# Extraction

def _member_parts(tar_path, member):
    """The member's path components, vetted: relative, no ``..``; ``.`` components dropped."""
    name = member.name
    path = PurePosixPath(name)
    if path.is_absolute() or re.match(r"^[A-Za-z]:", name) or name.startswith("\\"):
        raise ValueError(f"unsafe tarball {tar_path}: member {name!r} has an absolute path")
    parts = [p for p in path.parts if p != "."]
    if ".." in parts:
        raise ValueError(f"unsafe tarball {tar_path}: member {name!r} contains '..'")
    return parts


def _member_kind(member):
    for test, kind in ((member.issym, "a symbolic link"), (member.islnk, "a hard link"),
                       (member.ischr, "a character device"), (member.isblk, "a block device"),
                       (member.isfifo, "a FIFO")):
        if test():
            return kind
    return "of an unsupported type"


def _vet_members(tar_path, tar):
    """``(top, [(parts, member)])`` for a tarball whose members are all regular files and directories under one
    top-level directory; raises ValueError (naming the tarball and the member) otherwise."""
    vetted, tops = [], {}
    for member in tar.getmembers():
        parts = _member_parts(tar_path, member)
        if not (member.isreg() or member.isdir()):
            # Links could point anywhere (even outside the cache), devices and FIFOs have no place in weights.
            raise ValueError(f"unsafe tarball {tar_path}: member {member.name!r} is {_member_kind(member)}")
        if not parts:  # the archive root "./"
            if member.isdir():
                continue
            raise ValueError(f"unsafe tarball {tar_path}: member {member.name!r} has an empty path")
        tops.setdefault(parts[0], member.name)
        if len(tops) > 1:
            raise ValueError(f"tarball {tar_path} has more than one top-level entry ({', '.join(map(repr, tops))}; "
                             f"member {member.name!r}); expected a single directory")
        if len(parts) == 1 and not member.isdir():
            raise ValueError(f"tarball {tar_path}: top-level member {member.name!r} is a file; expected a single "
                             "directory")
        vetted.append((parts, member))
    if not tops:
        raise ValueError(f"tarball {tar_path} is empty")
    return next(iter(tops)), vetted


def _open_tar(tar_path):
    try:
        return tarfile.open(tar_path, "r:*")
    except (tarfile.TarError, EOFError, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{tar_path} is not a readable tar(.gz) archive ({e})") from e


def tar_top_level(tar_path):
    """The single top-level directory name of a tarball, after vetting every member as :func:`safe_extract` does
    (ValueError if unsafe or unreadable). Reads the whole archive; writes nothing."""
    with _open_tar(tar_path) as tar:
        try:
            return _vet_members(tar_path, tar)[0]
        except (tarfile.TarError, EOFError, OSError) as e:  # truncated/corrupt gzip stream
            raise ValueError(f"{tar_path} is not a readable tar(.gz) archive ({e})") from e


def safe_extract(tar_path, dest_root):
    """Extract ``tar_path`` (a ``.tar.gz``, or a plain tar) into ``dest_root`` and return ``dest_root/<top>``.

    Contract:
      * all members must be regular files or directories under ONE top-level directory; absolute paths, ``..``
        components, symlinks, hard links, device files, FIFOs, several top-level entries or a top-level file
        raise ValueError naming the tarball and the member, before anything is written; an unreadable or
        corrupt archive raises ValueError too;
      * nothing is ever written outside ``dest_root``; files get default permissions (the archive's owners,
        modes and setuid bits are not applied);
      * extraction happens in a temporary directory inside ``dest_root``, and the top-level directory is then
        renamed into place, so ``dest_root/<top>`` appears complete or not at all. On any failure, ``dest_root``
        holds exactly what it held before;
      * an existing ``dest_root/<top>`` is never overwritten: FileExistsError (a concurrent extraction by another
        process ends this way too; the caller decides whether the existing directory will do).
    """
    tar_path = os.fspath(tar_path)
    dest_root = os.path.abspath(os.path.expanduser(os.fspath(dest_root)))
    with _open_tar(tar_path) as tar:
        try:
            top, members = _vet_members(tar_path, tar)
        except (tarfile.TarError, EOFError, OSError) as e:
            raise ValueError(f"{tar_path} is not a readable tar(.gz) archive ({e})") from e
        final = os.path.join(dest_root, top)
        if os.path.lexists(final):
            raise FileExistsError(f"{final} already exists; not overwriting it with {tar_path}")
        created_root = not os.path.isdir(dest_root)
        os.makedirs(dest_root, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=f".{top}.extract-", dir=dest_root)
        try:
            real_staging = os.path.realpath(staging)
            for parts, member in members:
                target = os.path.join(staging, *parts)
                # Belt and braces: vetting already excludes escapes, and no links are ever created.
                if os.path.commonpath([real_staging, os.path.realpath(target)]) != real_staging:
                    raise ValueError(f"unsafe tarball {tar_path}: member {member.name!r} leaves the destination")
                try:
                    if member.isdir():
                        os.makedirs(target, exist_ok=True)
                        continue
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    source = tar.extractfile(member)
                    with source, open(target, "wb") as out:
                        shutil.copyfileobj(source, out, CHUNK)
                except (FileExistsError, NotADirectoryError, IsADirectoryError) as e:
                    # Only a malformed archive gets here (staging is ours alone): a file and a directory at one path.
                    raise ValueError(f"malformed tarball {tar_path}: member {member.name!r} conflicts with an "
                                     f"earlier member ({e.strerror})") from None
            try:
                # rename(2) would silently replace an empty directory that appeared meanwhile; the check above
                # covers the common case, and a non-empty one raises OSError here.
                os.rename(os.path.join(staging, top), final)
            except OSError as e:
                if os.path.isdir(final):
                    raise FileExistsError(f"{final} already exists; not overwriting it with {tar_path}") from e
                raise
        except (tarfile.TarError, EOFError) as e:
            raise ValueError(f"{tar_path} is not a readable tar(.gz) archive ({e})") from e
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            if created_root:
                try:
                    os.rmdir(dest_root)  # only succeeds if the extraction failed and left it empty
                except OSError:
                    pass
    return final


# ---------------------------------------------------------------------------------------------------------------
# Resolving a weights source

def is_weights_dir(path):
    """True if ``path`` is a directory written by ``flow.save`` (it holds ``pickled_data``)."""
    return os.path.isfile(os.path.join(path, "pickled_data"))


def _say(message):
    print(f"hub: {message}", flush=True)


# Provenance, so that a cached copy stands in only for what it was made from: every extraction holds MARKER
# (the tarball's SHA-256 and source), every downloaded tarball has a SOURCE sidecar (its URL). Names collide
# easily: the zoo's COCO weights and a user's own tarball are both "ssd300_vgg16". flow.load and flowvision's
# loader ignore the extra file.
MARKER = ".source.json"
SOURCE = ".source"


def _marker(directory):
    try:
        with open(os.path.join(directory, MARKER)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _extract_into_cache(tar_path, cache, label, source, digest=None):
    """The extraction of ``tar_path`` in the cache: an existing one of the same top-level name is reused only if
    its marker says it came from this very tarball (same SHA-256); otherwise it is replaced."""
    digest = digest or file_sha256(tar_path)
    top = tar_top_level(tar_path)
    existing = os.path.join(cache, top)
    if is_weights_dir(existing) and (_marker(existing) or {}).get("sha256") == digest:
        _say(f"{label}; using the extraction found in cache: {existing}")
        return existing
    if os.path.lexists(existing):
        # Made from another tarball of the same name (or by hand, or by another tool): set it aside, extract
        # ours, then delete it, so that the cache never holds a half-written directory under the real name.
        aside = os.path.join(cache, f".{top}.replaced-{os.getpid()}")
        os.rename(existing, aside)
        _say(f"{existing} came from another tarball: replacing it")
    else:
        aside = None
    try:
        extracted = safe_extract(tar_path, cache)
    except FileExistsError:
        if is_weights_dir(existing) and (_marker(existing) or {}).get("sha256") == digest:
            return existing  # another process extracted the same tarball meanwhile
        raise ValueError(f"{existing} appeared while extracting {tar_path}; retry") from None
    finally:
        if aside:
            shutil.rmtree(aside, ignore_errors=True)
    if not is_weights_dir(extracted):
        shutil.rmtree(extracted, ignore_errors=True)  # do not leave a useless directory to be found next time
        raise ValueError(f"{tar_path} does not hold flow.save weights: no pickled_data in its top-level "
                         f"directory {top!r}")
    with open(os.path.join(extracted, MARKER), "w") as f:
        json.dump({"sha256": digest, "source": source}, f)
    _say(f"{label}; extracted to {extracted}")
    return extracted


def _discard_cached(tar_path, cache, stem_dir):
    """Remove a cached tarball that failed verification, and what was extracted from it."""
    doomed = {stem_dir}
    try:
        doomed.add(os.path.join(cache, tar_top_level(tar_path)))
    except (ValueError, OSError):
        pass
    for d in doomed:
        if os.path.isdir(d) and not os.path.islink(d):
            shutil.rmtree(d, ignore_errors=True)
    for f in (tar_path, tar_path + SOURCE):
        with contextlib.suppress(FileNotFoundError):  # another process may have removed it first
            os.remove(f)


def _resolve_url(url, sha256, progress):
    # Decode before taking the last component: an encoded "..%2F" must not become a path out of the cache.
    name = os.path.basename(urllib.parse.unquote(urllib.parse.urlsplit(url).path))
    if not name.split(".")[0] or "\\" in name:  # the stem names a cache subdirectory; it must not be empty
        raise ValueError(f"cannot tell a usable file name from the URL {url!r}")
    cache = cache_dir()
    tar_path = os.path.join(cache, name)
    stem_dir = os.path.join(cache, name.split(".")[0])  # where flowvision looks for the extraction
    user_sha = _normalize_sha256(sha256)

    # A checksum from the caller can vet a cached tarball without the network. On mismatch the tarball is stale
    # or corrupt, and so is anything extracted from it.
    if user_sha is not None and os.path.isfile(tar_path):
        got = file_sha256(tar_path)
        if got != user_sha:
            _say(f"cached {tar_path} has SHA-256 {got}, expected {user_sha}; downloading it again")
            _discard_cached(tar_path, cache, stem_dir)

    # A cached tarball downloaded from another address is not this URL's, whatever its name.
    if os.path.isfile(tar_path):
        try:
            with open(tar_path + SOURCE) as f:
                cached_from = f.read().strip()
        except FileNotFoundError:
            cached_from = url  # placed by hand (as our error messages suggest) or by flowvision: trusted
        if cached_from != url:
            _say(f"cached {tar_path} came from {cached_from}, not {url}; downloading")
            _discard_cached(tar_path, cache, stem_dir)

    # An extraction this function made from this URL (its marker says so) is used as is, without any network
    # access: offline use after the first download. One without a marker (placed by hand, as our error messages
    # suggest, or made by flowvision) is trusted too; one made from another source is not.
    marker = _marker(stem_dir) or {}
    if is_weights_dir(stem_dir) and marker.get("source", url) == url and \
            (user_sha is None or marker.get("sha256", user_sha) == user_sha):
        _say(f"using weights found in cache: {stem_dir} (for {url})")
        return stem_dir

    label, got, expected = None, None, None
    if os.path.isfile(tar_path):
        try:
            tar_top_level(tar_path)
        except ValueError as e:
            # Our downloads are renamed into place only when complete, so this is a file placed by hand or
            # damaged on disk: fetch a good copy rather than fail on it forever.
            _say(f"cached {tar_path} is unusable ({e}); downloading it again")
            _discard_cached(tar_path, cache, stem_dir)
    if os.path.isfile(tar_path):
        expected = known_sha256(url, user_sha)
        got = file_sha256(tar_path) if expected is not None else None
        if expected is not None and got != expected:
            _say(f"cached {tar_path} has SHA-256 {got}, expected {expected}; downloading it again")
            _discard_cached(tar_path, cache, stem_dir)
        else:
            label = f"found {tar_path} in cache" + (" (checksum verified)" if expected else "")
    if label is None:
        if expected is None:  # not asked yet (asking twice would not tell more)
            expected = known_sha256(url, user_sha)
        sys.stderr.write(f"Downloading {url} to {tar_path}\n")
        download(url, tar_path, expected, progress)
        with open(tar_path + SOURCE, "w") as f:
            f.write(url + "\n")
        label = f"downloaded {url} to {tar_path}" + (" (checksum verified)" if expected else " (no checksum known)")
        got = expected  # download() verified the file against it (None: unknown, hashed for the marker)
    return _extract_into_cache(tar_path, cache, label, url, got)


def resolve_weights(source, sha256=None, progress=True):
    """A local directory of ``flow.save``d weights (ready for ``flow.load``) for ``source``, which is one of:

    * a directory holding ``pickled_data``: returned as is (a directory without it: ValueError naming it);
    * a local tarball (``.tar.gz``): extracted into :func:`cache_dir` as ``<cache>/<top-level dir>/`` (an existing
      extraction is reused only if its marker names this tarball's SHA-256, else replaced); ``sha256``, if given,
      must match the file (else ValueError);
    * an ``http(s)://`` or ``file://`` URL of a tarball: downloaded to ``<cache>/<file name>`` unless already
      there, verified against :func:`known_sha256` (the caller's ``sha256``, else the ``<url>.sha256`` published
      beside it; a cached tarball that does not match is downloaded again), then extracted to
      ``<cache>/<top-level dir>/``. An extraction already at ``<cache>/<file name up to the first dot>/``
      (flowvision's convention, so either tool's download serves both) is used without any network access, unless
      its marker shows it was made from another source (or does not match ``sha256``); a cached tarball that was
      downloaded from another URL is downloaded again.

    Prints one line saying what was used. Raises DownloadError (network, HTTP, checksum), ValueError (unsafe or
    unusable archive, not weights), FileNotFoundError (no such path).
    """
    if _is_url(source):
        return _resolve_url(source, sha256, progress)
    path = os.path.abspath(os.path.expanduser(os.fspath(source)))
    if os.path.isdir(path):
        if not is_weights_dir(path):
            raise ValueError(f"{path} is not a flow.save directory (no pickled_data in it)")
        _say(f"using weights directory {path}")
        return path
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such weights directory, tarball or URL: {source}")
    expected = _normalize_sha256(sha256)
    got = file_sha256(path)
    if expected is not None and got != expected:
        raise ValueError(f"checksum mismatch for {path}: expected SHA-256 {expected}, got {got}")
    return _extract_into_cache(path, cache_dir(), f"using tarball {path}", path, got)
