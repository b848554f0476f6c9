"""cv.detection.utils.hub: download, cache, verify and safely extract zoo tarballs.

Everything runs against a local HTTP server on 127.0.0.1 (or file:// URLs) and a cache under tmp_path; the real
home cache and any other address are never touched.
"""
import builtins
import errno
import gzip
import hashlib
import http.server
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
import types
import urllib.error
import urllib.request

import pytest

from cv.detection.utils import hub
from cv.detection.engine.checkpoint import load  # every test reads weights the way the programs do: safely

NAME = "ssd300_vgg16"


# ---------------------------------------------------------------------------------------------------------------
# Fixtures

@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Cache in tmp_path; no proxy, so requests for 127.0.0.1 go straight to the test server."""
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    cache = tmp_path / "cache"
    monkeypatch.setenv("FLOWVISION_CACHE", str(cache))
    return cache


def make_weights_tarball(folder, top=NAME, value=1.0):
    """``folder/<top>.tar.gz`` holding ``<top>/`` as written by flow.save; returns (path, sha256)."""
    import oneflow as flow

    src = folder / "src"
    src.mkdir(exist_ok=True)
    flow.save({"w": flow.ones(3) * value}, str(src / top))
    path = folder / f"{NAME}.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(src / top, arcname=top)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


class Server:
    """A ThreadingHTTPServer on 127.0.0.1 serving ``root``, with a few misbehaving paths for error cases."""

    def __init__(self, root):
        self.root, self.requests = root, []
        self.release = threading.Event()  # frees handlers that hang
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append(self.path)
                body = b"x" * 1000
                if self.path.startswith("/truncated/"):
                    # Announce more than is sent, then close: what a dropped connection looks like.
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body) + 5000))
                    self.end_headers()
                    self.wfile.write(body)
                    self.close_connection = True
                elif self.path.startswith("/chunked-broken/"):
                    # Chunked transfer that stops without the final 0-length chunk.
                    self.protocol_version = "HTTP/1.1"
                    self.send_response(200)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(body), body))
                    self.wfile.write(b"%x\r\nabc" % 1000)  # a chunk cut short
                    self.close_connection = True
                elif self.path.startswith("/hang/"):
                    server.release.wait(10)
                elif self.path.startswith("/huge/"):
                    # Announces 10 GB, sends a little, then waits: a client that reads the body hangs.
                    self.send_response(200)
                    self.send_header("Content-Length", str(10 ** 10))
                    self.end_headers()
                    self.wfile.write(body)
                    server.release.wait(10)
                elif self.path.startswith(("/endless/", "/endless-chunked/")):
                    # 32 MiB with no Content-Length: delimited by closing the connection, or chunked.
                    chunked = self.path.startswith("/endless-chunked/")
                    if chunked:
                        self.protocol_version = "HTTP/1.1"
                    self.send_response(200)
                    if chunked:
                        self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    block = b"z" * (1 << 16)
                    try:
                        for _ in range(512):
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block) if chunked else block)
                        if chunked:
                            self.wfile.write(b"0\r\n\r\n")
                    except (BrokenPipeError, ConnectionResetError):
                        pass  # the client stopped reading: what it should do
                    self.close_connection = True
                elif self.path.startswith("/error500/"):
                    self.send_error(500, "boom")
                else:
                    super().do_GET()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path):
        return f"http://127.0.0.1:{self.port}/{path}"

    def stop(self):
        if self.thread is not None:
            self.release.set()
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread = None


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    server = Server(root)
    yield server
    server.stop()


def free_port():
    """A port nobody listens on (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listing(path):
    """Everything under ``path``, relative, sorted (empty if it does not exist)."""
    if not os.path.exists(path):
        return []
    out = []
    for root, dirs, files in os.walk(path):
        for n in dirs + files:
            out.append(os.path.relpath(os.path.join(root, n), path))
    return sorted(out)


def add_member(tar, name, type=tarfile.REGTYPE, data=b"", **attrs):
    info = tarfile.TarInfo(name)
    info.type = type
    for k, v in attrs.items():
        setattr(info, k, v)
    if type == tarfile.REGTYPE:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    else:
        tar.addfile(info)


def crafted_tarball(path, members):
    """A tar.gz of ``members``: (name, type, data, attrs) tuples."""
    with tarfile.open(path, "w:gz") as tar:
        for name, type, data, attrs in members:
            add_member(tar, name, type, data, **attrs)
    return path


DIR = tarfile.DIRTYPE
REG = tarfile.REGTYPE
OK_MEMBERS = [(f"{NAME}", DIR, b"", {}), (f"{NAME}/pickled_data", REG, b"data", {})]


# ---------------------------------------------------------------------------------------------------------------
# cache_dir

def test_cache_dir_honours_env_and_creates_it(isolated, monkeypatch, tmp_path):
    assert not isolated.exists()
    assert hub.cache_dir() == str(isolated)
    assert isolated.is_dir()
    monkeypatch.delenv("FLOWVISION_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert hub.cache_dir() == str(tmp_path / "home" / ".oneflow" / "flowvision_cache")


# ---------------------------------------------------------------------------------------------------------------
# resolve_weights over HTTP: layout, cache reuse, checksums

def test_download_extract_load_then_offline_from_cache(served, isolated, capsys):

    _, sha = make_weights_tarball(served.root)
    url = served.url(f"{NAME}.tar.gz")
    path = hub.resolve_weights(url, progress=False)
    assert path == str(isolated / NAME)
    # The tarball, the URL it came from, the extraction: no .part or staging leftovers.
    assert sorted(os.listdir(isolated)) == [NAME, f"{NAME}.tar.gz", f"{NAME}.tar.gz.source"]
    assert hashlib.sha256((isolated / f"{NAME}.tar.gz").read_bytes()).hexdigest() == sha
    assert load(path)["w"].numpy().tolist() == [1.0, 1.0, 1.0]
    assert "downloaded" in capsys.readouterr().out
    assert served.requests == [f"/{NAME}.tar.gz.sha256", f"/{NAME}.tar.gz"]

    served.stop()  # a second call must not need the network
    assert hub.resolve_weights(url, progress=False) == path
    assert "found in cache" in capsys.readouterr().out
    assert len(served.requests) == 2


def test_flowvision_loader_finds_our_extraction(served, isolated):
    from flowvision.models.utils import load_state_dict_from_url

    make_weights_tarball(served.root)
    url = served.url(f"{NAME}.tar.gz")
    hub.resolve_weights(url, progress=False)
    served.stop()
    state = load_state_dict_from_url(url, model_dir=str(isolated))
    assert state["w"].numpy().tolist() == [1.0, 1.0, 1.0]


def test_uses_flowvision_extraction_without_network(isolated):
    import oneflow as flow

    isolated.mkdir()
    flow.save({"w": flow.zeros(2)}, str(isolated / NAME))  # as flowvision leaves it (tarball deleted)
    url = f"http://127.0.0.1:{free_port()}/{NAME}.tar.gz"  # nobody listens
    assert hub.resolve_weights(url, progress=False) == str(isolated / NAME)


def test_published_sha256_is_verified(served, isolated):
    _, sha = make_weights_tarball(served.root)
    (served.root / f"{NAME}.tar.gz.sha256").write_text(f"{sha}  {NAME}.tar.gz\n")
    url = served.url(f"{NAME}.tar.gz")
    assert hub.known_sha256(url) == sha
    assert hub.resolve_weights(url, progress=False) == str(isolated / NAME)


def test_wrong_published_sha256_fails_and_leaves_nothing(served, isolated):
    make_weights_tarball(served.root)
    (served.root / f"{NAME}.tar.gz.sha256").write_text("0" * 64 + f"  {NAME}.tar.gz\n")
    url = served.url(f"{NAME}.tar.gz")
    with pytest.raises(hub.DownloadError) as e:
        hub.resolve_weights(url, progress=False)
    msg = str(e.value)
    assert url in msg and "checksum" in msg and "0" * 64 in msg
    assert str(isolated / f"{NAME}.tar.gz") in msg and str(isolated / NAME) in msg  # how to place it by hand
    assert listing(isolated) == []


def test_wrong_given_sha256_fails_and_leaves_nothing(served, isolated):
    _, sha = make_weights_tarball(served.root)
    url = served.url(f"{NAME}.tar.gz")
    wrong = "f" * 64
    with pytest.raises(hub.DownloadError, match="checksum") as e:
        hub.resolve_weights(url, sha256=wrong, progress=False)
    assert url in str(e.value) and sha in str(e.value) and wrong in str(e.value)
    assert listing(isolated) == []
    assert f"/{NAME}.tar.gz.sha256" not in served.requests  # the caller's checksum wins


def test_given_sha256_accepted_and_validated(served, isolated):
    _, sha = make_weights_tarball(served.root)
    url = served.url(f"{NAME}.tar.gz")
    assert hub.resolve_weights(url, sha256=sha.upper(), progress=False) == str(isolated / NAME)
    with pytest.raises(ValueError, match="SHA-256"):
        hub.known_sha256(url, "not-a-digest")


def test_stale_cached_tarball_is_downloaded_again(served, isolated):

    _, sha = make_weights_tarball(served.root, value=2.0)
    isolated.mkdir()
    (isolated / f"{NAME}.tar.gz").write_bytes(b"an older or broken download")
    path = hub.resolve_weights(served.url(f"{NAME}.tar.gz"), sha256=sha, progress=False)
    assert served.requests == [f"/{NAME}.tar.gz"]
    assert load(path)["w"].numpy().tolist() == [2.0, 2.0, 2.0]
    assert hashlib.sha256((isolated / f"{NAME}.tar.gz").read_bytes()).hexdigest() == sha


def test_cached_tarball_checked_against_published_sha256(served, isolated):

    # A cached tarball (not yet extracted) whose checksum differs from the published one is replaced.
    make_weights_tarball(served.root / "..", value=3.0)  # the stale one, built elsewhere
    isolated.mkdir()
    os.replace(served.root.parent / f"{NAME}.tar.gz", isolated / f"{NAME}.tar.gz")
    _, sha = make_weights_tarball(served.root, value=4.0)
    (served.root / f"{NAME}.tar.gz.sha256").write_text(sha + "\n")
    path = hub.resolve_weights(served.url(f"{NAME}.tar.gz"), progress=False)
    assert load(path)["w"].numpy().tolist() == [4.0, 4.0, 4.0]
    assert served.requests == [f"/{NAME}.tar.gz.sha256", f"/{NAME}.tar.gz"]


def test_cached_tarball_extracted_without_download(served, isolated, capsys):
    _, sha = make_weights_tarball(served.root)
    isolated.mkdir()
    (isolated / f"{NAME}.tar.gz").write_bytes((served.root / f"{NAME}.tar.gz").read_bytes())
    (served.root / f"{NAME}.tar.gz.sha256").write_text(sha + "\n")
    assert hub.resolve_weights(served.url(f"{NAME}.tar.gz"), progress=False) == str(isolated / NAME)
    assert served.requests == [f"/{NAME}.tar.gz.sha256"]  # verified, not downloaded again
    assert "in cache (checksum verified)" in capsys.readouterr().out


def test_top_level_dir_named_differently_is_found_offline(served, isolated):
    make_weights_tarball(served.root, top="weights_v2")
    url = served.url(f"{NAME}.tar.gz")
    path = hub.resolve_weights(url, progress=False)
    assert path == str(isolated / "weights_v2")
    served.stop()
    assert hub.resolve_weights(url, progress=False) == path


def test_url_file_name_cannot_escape_cache(served, isolated, tmp_path):
    make_weights_tarball(served.root)
    path = hub.resolve_weights(served.url(f"sub/..%2F{NAME}.tar.gz"), progress=False)
    assert path == str(isolated / NAME)
    assert sorted(os.listdir(tmp_path)) == ["cache", "www"]  # nothing written beside the cache
    with pytest.raises(ValueError, match="file name"):
        hub.resolve_weights(served.url(".tar.gz"), progress=False)


# ---------------------------------------------------------------------------------------------------------------
# known_sha256

def test_known_sha256_missing_or_failing_means_unknown(served, capsys):
    assert hub.known_sha256(served.url(f"{NAME}.tar.gz")) is None  # 404
    assert capsys.readouterr().err == ""  # nothing published is normal, no note
    assert hub.known_sha256(served.url("error500/x.tar.gz")) is None
    assert "HTTP 500" in capsys.readouterr().err
    (served.root / "bad.tar.gz.sha256").write_text("SHA256 (bad.tar.gz) = abc\n")
    assert hub.known_sha256(served.url("bad.tar.gz")) is None
    assert hub.known_sha256(f"http://127.0.0.1:{free_port()}/x.tar.gz") is None


def test_unreachable_server_still_raises(isolated):
    # known_sha256 swallows the failed checksum request; the download must still fail loudly.
    url = f"http://127.0.0.1:{free_port()}/{NAME}.tar.gz"
    with pytest.raises(hub.DownloadError, match="connection refused") as e:
        hub.resolve_weights(url, progress=False)
    assert url in str(e.value)
    assert listing(isolated) == []


# ---------------------------------------------------------------------------------------------------------------
# download: failure modes

def test_download_404(served, tmp_path):
    url = served.url("missing.tar.gz")
    dest = tmp_path / "dl" / "missing.tar.gz"
    with pytest.raises(hub.DownloadError, match="404") as e:
        hub.download(url, str(dest), progress=False)
    assert url in str(e.value) and str(dest) in str(e.value)
    assert listing(dest.parent) == []


def test_download_connection_refused(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/{NAME}.tar.gz"
    with pytest.raises(hub.DownloadError, match="connection refused"):
        hub.download(url, str(tmp_path / "x.tar.gz"), progress=False)
    assert not (tmp_path / "x.tar.gz").exists()


def test_download_dns_failure(tmp_path, monkeypatch):
    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)  # simulated: no resolver is ever asked
    with pytest.raises(hub.DownloadError, match="resolve"):
        hub.download("http://weights.invalid/x.tar.gz", str(tmp_path / "x.tar.gz"), progress=False)


@pytest.mark.parametrize("path", ["truncated/x.tar.gz", "chunked-broken/x.tar.gz"])
def test_download_truncated_body_leaves_nothing(served, tmp_path, path):
    dest = tmp_path / "dl" / "x.tar.gz"
    with pytest.raises(hub.DownloadError, match="truncated|closed early") as e:
        hub.download(served.url(path), str(dest), progress=False)
    assert served.url(path) in str(e.value)
    assert listing(dest.parent) == []


def test_download_timeout(served, tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "TIMEOUT", 0.3)
    with pytest.raises(hub.DownloadError, match="timed out"):
        hub.download(served.url("hang/x.tar.gz"), str(tmp_path / "x.tar.gz"), progress=False)
    assert listing(tmp_path) == ["www"]


def test_download_keeps_previous_file_on_failure(served, tmp_path):
    dest = tmp_path / "x.tar.gz"
    dest.write_bytes(b"previous")
    with pytest.raises(hub.DownloadError):
        hub.download(served.url("truncated/x.tar.gz"), str(dest), progress=False)
    assert dest.read_bytes() == b"previous"
    assert sorted(os.listdir(tmp_path)) == ["www", "x.tar.gz"]


def test_download_progress_on_stderr(served, tmp_path, capsys):
    (served.root / "blob").write_bytes(os.urandom(300_000))
    hub.download(served.url("blob"), str(tmp_path / "blob"), progress=True)
    err = capsys.readouterr().err
    assert "Downloading blob" in err and "100%" in err  # tqdm's bar
    assert len(err.splitlines()) <= 12  # coarse steps when not a terminal
    hub.download(served.url("blob"), str(tmp_path / "blob2"), progress=False)
    assert capsys.readouterr().err == ""


def test_download_error_pickles():
    import pickle

    e = pickle.loads(pickle.dumps(hub.DownloadError("http://x/y.tar.gz", "HTTP error 404", "/c/y.tar.gz")))
    assert e.reason == "HTTP error 404" and "/c/y" in str(e)


# ---------------------------------------------------------------------------------------------------------------
# file:// URLs and local sources

def test_file_url(tmp_path, isolated):

    tar, sha = make_weights_tarball(tmp_path)
    url = tar.as_uri()
    assert url.startswith("file:///")
    assert hub.known_sha256(url) is None  # no .sha256 beside it
    path = hub.resolve_weights(url, progress=False)
    assert path == str(isolated / NAME) and (isolated / f"{NAME}.tar.gz").is_file()
    assert load(path)["w"].numpy().tolist() == [1.0, 1.0, 1.0]
    (tmp_path / f"{NAME}.tar.gz.sha256").write_text(sha + "\n")
    assert hub.known_sha256(url) == sha


def test_missing_file_url(tmp_path, isolated):
    url = (tmp_path / "nowhere" / f"{NAME}.tar.gz").as_uri()
    with pytest.raises(hub.DownloadError, match="no such file") as e:
        hub.resolve_weights(url, progress=False)
    assert url in str(e.value)
    assert listing(isolated) == []


def test_local_directory_and_tarball(tmp_path, isolated):
    tar, sha = make_weights_tarball(tmp_path)
    weights = tmp_path / "src" / NAME
    assert hub.resolve_weights(str(weights)) == str(weights)
    with pytest.raises(ValueError, match="pickled_data") as e:
        hub.resolve_weights(str(tmp_path / "src"))
    assert str(tmp_path / "src") in str(e.value)
    with pytest.raises(FileNotFoundError):
        hub.resolve_weights(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="checksum"):
        hub.resolve_weights(str(tar), sha256="0" * 64)
    assert listing(isolated) == []
    path = hub.resolve_weights(tar, sha256=sha)  # PathLike accepted
    assert path == str(isolated / NAME)
    mtime = os.stat(os.path.join(path, "pickled_data")).st_mtime_ns
    assert hub.resolve_weights(str(tar)) == path  # existing extraction reused
    assert os.stat(os.path.join(path, "pickled_data")).st_mtime_ns == mtime


def test_a_published_name_is_verified_against_the_digest_of_its_own_set(tmp_path, isolated, capsys):
    """A published folder's tarball name is a link into one set (cv.detection.utils.fileset): the tarball is
    checked against the .sha256 of that set, where the link leads, not against whatever the folder's other name
    leads to by then (here another set's digest: what a republish between the two reads would give)."""
    from cv.detection.utils import fileset

    tar, sha = make_weights_tarball(tmp_path)
    folder = tmp_path / "zoo"
    files = [f"{NAME}.tar.gz", f"{NAME}.tar.gz.sha256"]
    with fileset.replace(str(folder), NAME, files, 0) as staging:
        shutil.copy(tar, os.path.join(staging, files[0]))
        with open(os.path.join(staging, files[1]), "w") as f:
            f.write(f"{sha}  {files[0]}\n")
    os.remove(folder / files[1])
    (folder / files[1]).write_text(f"{'0' * 64}  {files[0]}\n")  # the other set's digest
    assert hub.resolve_weights(str(folder / files[0])) == str(isolated / NAME)
    assert f"using tarball {folder / files[0]} (checksum verified)" in capsys.readouterr().out


def test_tarball_without_weights_rejected(tmp_path, isolated):
    tar = crafted_tarball(tmp_path / "w.tar.gz", [(NAME, DIR, b"", {}), (f"{NAME}/model.pth", REG, b"x", {})])
    with pytest.raises(ValueError, match="pickled_data"):
        hub.resolve_weights(str(tar))
    assert listing(isolated) == []


# ---------------------------------------------------------------------------------------------------------------
# safe_extract

def test_safe_extract_ok_with_dot_prefix(tmp_path):
    tar = crafted_tarball(tmp_path / "ok.tar.gz", [("./", DIR, b"", {}), (f"./{NAME}/sub/a", REG, b"A", {}),
                                                   (f"./{NAME}/pickled_data", REG, b"P", {})])
    dest = tmp_path / "dest"
    out = hub.safe_extract(str(tar), str(dest))
    assert out == str(dest / NAME)
    assert listing(dest) == [NAME, f"{NAME}/pickled_data", f"{NAME}/sub", f"{NAME}/sub/a"]
    assert (dest / NAME / "sub" / "a").read_bytes() == b"A"
    with pytest.raises(FileExistsError):  # never overwrites
        hub.safe_extract(str(tar), str(dest))
    assert (dest / NAME / "pickled_data").read_bytes() == b"P"


UNSAFE = {
    "dotdot": ([(f"{NAME}/../evil", REG, b"pwned", {})], "'..'"),
    "dotdot-top": ([("../evil", REG, b"pwned", {})], "'..'"),
    "absolute": ([(f"{NAME}", DIR, b"", {}), ("{ABS}", REG, b"pwned", {})], "absolute"),
    "symlink": ([(f"{NAME}/link", tarfile.SYMTYPE, b"", {"linkname": "../../evil"}),
                 (f"{NAME}/link/x", REG, b"pwned", {})], "symbolic link"),
    "hardlink": ([(f"{NAME}/pickled_data", REG, b"p", {}),
                  (f"{NAME}/hard", tarfile.LNKTYPE, b"", {"linkname": "/etc/passwd"})], "hard link"),
    "chardev": ([(f"{NAME}/dev", tarfile.CHRTYPE, b"", {"devmajor": 1, "devminor": 3})], "character device"),
    "blockdev": ([(f"{NAME}/blk", tarfile.BLKTYPE, b"", {"devmajor": 8, "devminor": 0})], "block device"),
    "fifo": ([(f"{NAME}/fifo", tarfile.FIFOTYPE, b"", {})], "FIFO"),
    "two-tops": ([(f"{NAME}/pickled_data", REG, b"p", {}), ("other/x", REG, b"x", {})], "more than one"),
    "top-file": ([("evil", REG, b"x", {})], "is a file"),
}


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_safe_extract_refuses(tmp_path, case):
    members, reason = UNSAFE[case]
    outside = tmp_path / "evil-abs"  # the absolute member points here, outside the destination
    members = [(name.replace("{ABS}", str(outside)), *rest) for name, *rest in members]
    # Safe members first, so a careless extractor would already have written something.
    if case not in ("two-tops", "top-file"):
        members_to_write = OK_MEMBERS + members
    else:  # the valid members would already make a second top-level entry
        members_to_write = members
    tar = crafted_tarball(tmp_path / "bad.tar.gz", members_to_write)
    dest = tmp_path / "a" / "dest"
    dest.mkdir(parents=True)
    (dest / "keep").write_text("mine")
    before = listing(tmp_path)
    with pytest.raises(ValueError, match=reason) as e:
        hub.safe_extract(str(tar), str(dest))
    assert str(tar) in str(e.value) and any(repr(m[0]) in str(e.value) for m in members)
    assert listing(tmp_path) == before
    assert not outside.exists()


def test_safe_extract_failure_midway_leaves_nothing(tmp_path):
    # Passes vetting but cannot be extracted: a file, then a member that needs it to be a directory.
    tar = crafted_tarball(tmp_path / "odd.tar.gz", OK_MEMBERS + [(f"{NAME}/a", REG, b"1", {}),
                                                                 (f"{NAME}/a/b", REG, b"2", {})])
    dest = tmp_path / "dest"
    with pytest.raises(ValueError, match=rf"malformed tarball .*odd.tar.gz: member '{NAME}/a/b' conflicts"):
        hub.safe_extract(str(tar), str(dest))
    assert not dest.exists()  # not even the destination it created


def test_safe_extract_corrupt_archive(tmp_path):
    good, _ = make_weights_tarball(tmp_path)
    data = good.read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(data[: len(data) // 2])
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(ValueError, match="readable"):
        hub.safe_extract(str(cut), str(dest))
    assert listing(dest) == []
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(ValueError, match="readable"):
        hub.safe_extract(str(tmp_path / "junk.tar.gz"), str(dest))


# ---------------------------------------------------------------------------------------------------------------
# Same name, other weights: a cached copy stands in only for what it was made from


def load_value(directory):

    return float(load(directory)["w"][0])


def test_a_local_tarball_replaces_an_extraction_of_another_tarball_with_its_name(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    a, _ = make_weights_tarball(first, value=1.0)
    b, b_sha = make_weights_tarball(second, value=2.0)
    assert load_value(hub.resolve_weights(str(a))) == 1.0
    d = hub.resolve_weights(str(b), sha256=b_sha)  # same top-level name "ssd300_vgg16", other weights
    assert load_value(d) == 2.0
    assert load_value(hub.resolve_weights(str(a))) == 1.0  # and back
    assert not [n for n in os.listdir(os.path.dirname(d)) if n.startswith(".")]  # nothing set aside is left


def test_a_url_does_not_get_the_cached_copy_of_another_url_with_the_same_file_name(tmp_path, served):
    (served.root / "one").mkdir()
    (served.root / "two").mkdir()
    make_weights_tarball(served.root / "one", value=1.0)
    make_weights_tarball(served.root / "two", value=2.0)
    one, two = served.url(f"one/{NAME}.tar.gz"), served.url(f"two/{NAME}.tar.gz")
    assert load_value(hub.resolve_weights(one)) == 1.0
    assert load_value(hub.resolve_weights(two)) == 2.0
    served.stop()
    # The second URL's copy is now the cached one and serves offline; the first URL would need the network.
    assert load_value(hub.resolve_weights(two)) == 2.0
    with pytest.raises(hub.DownloadError):
        hub.resolve_weights(one)



# ---------------------------------------------------------------------------------------------------------------
# Hostile sizes: gzip bombs, endless bodies, full disks

CAP = 16 << 20  # max_bytes in these tests; each bomb unpacks to 64 MiB


class Zeros(io.RawIOBase):
    """``size`` zero bytes, produced as read: a member's data without holding it in memory."""

    def __init__(self, size):
        self.left = size

    def readable(self):
        return True

    def readinto(self, b):
        n = min(len(b), self.left)
        b[:n] = bytes(n)
        self.left -= n
        return n


def bomb(path, sizes):
    """A tar.gz of weights whose members of zeros (one per entry of ``sizes``) unpack to far more than it weighs."""
    with tarfile.open(path, "w:gz", compresslevel=9) as tar:
        for name, type, data, attrs in OK_MEMBERS:
            add_member(tar, name, type, data, **attrs)
        for i, size in enumerate(sizes):
            info = tarfile.TarInfo(f"{NAME}/zeros{i}")
            info.size = size
            tar.addfile(info, Zeros(size))
    return path


@pytest.fixture(scope="module")
def bombs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bombs")
    made = {"one member": bomb(folder / "one.tar.gz", [64 << 20]),
            "many members": bomb(folder / "many.tar.gz", [4 << 20] * 16)}
    assert all(path.stat().st_size < 200_000 for path in made.values())  # kilobytes, for 64 MiB
    return made


@pytest.fixture
def decompressed(monkeypatch):
    """The number of bytes gzip decompresses from now on (reads and seeks alike go through _GzipReader.read)."""
    count = [0]
    read = gzip._GzipReader.read

    def counting(self, size=-1):
        data = read(self, size)
        count[0] += len(data)
        return data

    monkeypatch.setattr(gzip._GzipReader, "read", counting)
    return count


@pytest.mark.parametrize("kind", ["one member", "many members"])
def test_safe_extract_refuses_a_gzip_bomb_before_decompressing_it(bombs, kind, tmp_path, decompressed):
    dest = tmp_path / "dest"
    with pytest.raises(ValueError, match=r"limit \(max_bytes\) of 16777216") as e:
        hub.safe_extract(str(bombs[kind]), str(dest), max_bytes=CAP)
    assert str(bombs[kind]) in str(e.value) and f"'{NAME}/zeros" in str(e.value)
    # Refused at the header that crosses the cap: at most about max_bytes of the 64 MiB were decompressed.
    assert 0 < decompressed[0] < CAP + (1 << 20)
    assert not dest.exists()


def test_safe_extract_bounds_what_tarfile_reads_by_itself(tmp_path, decompressed):
    # A PAX header is read whole before the member it describes is seen: 8 MiB of it here, for 1 byte of data.
    tar = tmp_path / "pax.tar.gz"
    with tarfile.open(tar, "w:gz", format=tarfile.PAX_FORMAT) as out:
        add_member(out, NAME, DIR)
        add_member(out, f"{NAME}/pickled_data", REG, b"p", pax_headers={"comment": "a" * (8 << 20)})
    assert tar.stat().st_size < 100_000
    with pytest.raises(ValueError, match="headers included") as e:
        hub.safe_extract(str(tar), str(tmp_path / "dest"), max_bytes=1 << 20)
    assert str(tar) in str(e.value)
    assert 0 < decompressed[0] < 1 << 20  # refused before the header was decompressed
    assert not (tmp_path / "dest").exists()


@pytest.mark.parametrize("over", ["path", "http"])
def test_resolve_weights_refuses_a_gzip_bomb(bombs, over, served, isolated, decompressed):
    source = str(bombs["one member"])
    if over == "http":
        shutil.copy(source, served.root / f"{NAME}.tar.gz")
        source = served.url(f"{NAME}.tar.gz")
    with pytest.raises(ValueError, match="limit"):
        hub.resolve_weights(source, progress=False, max_bytes=CAP)
    assert 0 < decompressed[0] < 1 << 20  # the bomb's header comes first
    assert listing(isolated) == []  # no extraction, and the downloaded bomb is not kept


def test_download_refuses_an_announced_size_above_the_cap_before_reading(served, tmp_path):
    dest = tmp_path / "dl" / "x.tar.gz"
    # The server then stalls: reading the body would end in a timeout, not this error.
    with pytest.raises(hub.DownloadError, match=r"10000000000 bytes announced, more than the limit") as e:
        hub.download(served.url("huge/x.tar.gz"), str(dest), progress=False, max_bytes=CAP)
    assert str(dest) in str(e.value)
    assert listing(dest.parent) == []


@pytest.mark.parametrize("path", ["endless/x.tar.gz", "endless-chunked/x.tar.gz"])
def test_download_stops_a_body_that_streams_past_the_cap(served, isolated, path):
    with pytest.raises(hub.DownloadError, match="stopped after .* more than the limit") as e:
        hub.download(served.url(path), str(isolated / "x.tar.gz"), progress=False, max_bytes=1 << 20)
    assert served.url(path) in str(e.value)
    assert listing(isolated) == []
    with pytest.raises(hub.DownloadError, match="more than the limit"):
        hub.resolve_weights(served.url(path), progress=False, max_bytes=1 << 20)
    assert listing(isolated) == []


def disk_with_free(free):
    return lambda path: types.SimpleNamespace(total=1 << 40, used=(1 << 40) - free, free=free)


def test_too_little_free_space_is_refused_up_front(served, tmp_path, isolated, monkeypatch):
    (served.root / "blob").write_bytes(b"b" * 300_000)
    tar = crafted_tarball(tmp_path / "w.tar.gz", OK_MEMBERS + [(f"{NAME}/big", REG, b"w" * 300_000, {})])
    monkeypatch.setattr(shutil, "disk_usage", disk_with_free(1000))
    dest = tmp_path / "dl"
    with pytest.raises(hub.DownloadError, match="not enough disk space") as e:
        hub.download(served.url("blob"), str(dest / "blob"), progress=False)
    assert f"in {dest}: {300_000 + hub.SPACE_MARGIN} bytes needed, 1000 free" in str(e.value)
    assert listing(dest) == []
    with pytest.raises(ValueError, match="not enough disk space") as e:
        hub.safe_extract(str(tar), str(tmp_path / "out"))
    assert f"in {tmp_path / 'out'}: {300_004 + hub.SPACE_MARGIN} bytes needed, 1000 free" in str(e.value)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match=f"not enough disk space in {isolated}"):
        hub.resolve_weights(str(tar))
    assert listing(isolated) == []


class FillingDisk:
    """Files opened for writing through :meth:`open` share ``room`` bytes, then fail as a full disk does."""

    def __init__(self, room):
        self.room = room

    def open(self, path, mode="r", *args, **kwargs):
        f = builtins.open(path, mode, *args, **kwargs)
        return FillingDisk.File(f, self) if "w" in mode else f

    class File:
        def __init__(self, f, disk):
            self.f, self.disk = f, disk

        def write(self, data):
            if len(data) > self.disk.room:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.disk.room -= len(data)
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()


def test_full_disk_during_download(served, isolated, monkeypatch):
    (served.root / f"{NAME}.tar.gz").write_bytes(os.urandom(300_000))
    monkeypatch.setattr(hub, "open", FillingDisk(100_000).open, raising=False)  # the download's own writes
    with pytest.raises(hub.DownloadError, match=f"the disk is full: no space left in {isolated}"):
        hub.resolve_weights(served.url(f"{NAME}.tar.gz"), progress=False)
    assert listing(isolated) == []


def test_full_disk_during_extraction(tmp_path, isolated, served, monkeypatch):
    tar = crafted_tarball(tmp_path / "w.tar.gz", OK_MEMBERS + [(f"{NAME}/big", REG, os.urandom(300_000), {})])
    monkeypatch.setattr(tarfile, "bltn_open", FillingDisk(100_000).open)  # what tarfile writes members with
    dest = tmp_path / "a" / "dest"
    dest.mkdir(parents=True)
    with pytest.raises(ValueError, match=f"the disk is full: no space left in {dest}") as e:
        hub.safe_extract(str(tar), str(dest))
    assert str(tar) in str(e.value)
    assert listing(dest) == []
    with pytest.raises(ValueError, match="the disk is full"):
        hub.resolve_weights(str(tar))
    assert listing(isolated) == []
    # Downloaded: the tarball is sound, so the cache keeps it for when there is room (and nothing else).
    shutil.copy(tar, served.root / f"{NAME}.tar.gz")
    with pytest.raises(ValueError, match="the disk is full"):
        hub.resolve_weights(served.url(f"{NAME}.tar.gz"), progress=False)
    assert listing(isolated) == [f"{NAME}.tar.gz", f"{NAME}.tar.gz.source"]


def test_the_planted_payload_runs_under_plain_pickle_and_not_under_our_loader(tmp_path):
    """The malicious checkpoint of the refusal tests (conftest.plant_payload) is live: plain ``pickle.load`` runs
    its command. So when those tests find no marker, it is our loader that refused it, not an inert payload."""
    import pickle

    from tests.conftest import plant_payload

    directory, marker = tmp_path / "evil", tmp_path / "pwned"
    directory.mkdir()
    plant_payload(directory, marker)
    with pytest.raises(ValueError):
        load(str(directory))
    assert not marker.exists()
    with open(directory / "pickled_data", "rb") as f:
        pickle.load(f)
    assert marker.exists()


@pytest.fixture
def small_disk(small_disk):
    """A real 1 MiB file system (conftest's tmpfs)."""
    return small_disk(1)


def test_full_disk_for_real(small_disk, served, tmp_path, monkeypatch):
    with pytest.raises(hub.DownloadError, match=f"the disk is full: no space left in {small_disk}"):
        hub.download(served.url("endless/x.tar.gz"), str(small_disk / "x.tar.gz"), progress=False)
    assert listing(small_disk) == []
    tar = crafted_tarball(tmp_path / "w.tar.gz", OK_MEMBERS + [(f"{NAME}/big", REG, os.urandom(2 << 20), {})])
    monkeypatch.setattr(shutil, "disk_usage", disk_with_free(1 << 40))  # get past the up-front check
    with pytest.raises(ValueError, match=f"the disk is full: no space left in {small_disk}"):
        hub.safe_extract(str(tar), str(small_disk))
    assert listing(small_disk) == []


# ---------------------------------------------------------------------------------------------------------------
# Local checksums, the marker, closed connections, leftovers


def test_local_tarball_is_checked_against_the_sha256_file_beside_it(tmp_path, isolated, capsys):
    tar, sha = make_weights_tarball(tmp_path)
    sums = tmp_path / f"{NAME}.tar.gz.sha256"
    sums.write_text("0" * 64 + f"  {NAME}.tar.gz\n")  # as publish.py writes it
    with pytest.raises(ValueError, match="checksum mismatch") as e:
        hub.resolve_weights(str(tar))
    assert str(tar) in str(e.value) and str(sums) in str(e.value) and sha in str(e.value)
    assert listing(isolated) == []
    assert hub.resolve_weights(str(tar), sha256=sha) == str(isolated / NAME)  # an explicit sha256 wins
    sums.write_text(f"{sha}  {NAME}.tar.gz\n")
    capsys.readouterr()
    assert hub.resolve_weights(str(tar)) == str(isolated / NAME)
    assert "(checksum verified)" in capsys.readouterr().out


def test_marker_is_inside_the_extraction_when_it_appears(tmp_path, isolated, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, a_sha = make_weights_tarball(tmp_path / "a", value=1.0)
    b, b_sha = make_weights_tarball(tmp_path / "b", value=2.0)
    seen = []
    for name in ("rename", "replace"):
        def spy(src, dst, *args, _real=getattr(os, name), **kwargs):
            if os.path.abspath(dst) == str(isolated / NAME):  # the extraction takes its final name
                marker = os.path.join(src, hub.MARKER)
                with open(marker) if os.path.isfile(marker) else io.StringIO("{}") as f:
                    seen.append(json.load(f).get("sha256"))
            return _real(src, dst, *args, **kwargs)
        monkeypatch.setattr(os, name, spy)
    hub.resolve_weights(str(a))  # appears
    hub.resolve_weights(str(b))  # replaces a's
    assert seen == [a_sha, b_sha]


def test_http_error_responses_are_closed(monkeypatch, tmp_path):
    bodies = []

    def refuse(request, timeout):
        bodies.append(io.BytesIO(b"not here"))
        raise urllib.error.HTTPError(request.full_url, 404, "Not Found", {}, bodies[-1])

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    with pytest.raises(hub.DownloadError, match="HTTP 404"):
        hub.download("http://127.0.0.1:9/x.tar.gz", str(tmp_path / "x.tar.gz"), progress=False)
    assert hub.known_sha256("http://127.0.0.1:9/x.tar.gz") is None
    assert len(bodies) == 2 and all(body.closed for body in bodies)


def test_unwritable_destination_fails_before_connecting(served, tmp_path, monkeypatch):
    (served.root / "blob").write_bytes(b"b" * 1000)

    def read_only(path, mode="r", *args, **kwargs):  # as root, permissions would not stop us: simulate
        if "w" in mode:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return builtins.open(path, mode, *args, **kwargs)

    monkeypatch.setattr(hub, "open", read_only, raising=False)
    with pytest.raises(hub.DownloadError, match="cannot write to .*Permission denied"):
        hub.download(served.url("blob"), str(tmp_path / "dl" / "blob"), progress=False)
    assert served.requests == []  # no connection was opened, so none can leak
    assert listing(tmp_path / "dl") == []


def test_cache_dir_removes_what_killed_processes_left(isolated):
    from cv.detection.utils import fileio

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)
    mine = fileio.temporary_name(str(isolated / f"{NAME}.tar.gz"))
    left = mine.replace(f"-{os.getpid()}-", f"-{dead}-")
    isolated.mkdir()
    for path in (mine, left):
        with open(path, "wb") as f:
            f.write(b"partial")
    hub.cache_dir()
    assert os.path.exists(mine) and not os.path.exists(left)
