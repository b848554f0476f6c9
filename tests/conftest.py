"""Shared fixtures and helpers. The full SSD300 is slow on CPU (~2.5 s per image forward), so tests of mechanics
use :func:`tiny_ssd`, a small model built from the same classes, and the real model is built once per session.

Tests that run the programs end to end in subprocesses (each pays a OneFlow start-up and SSD300's CPU cost) are
marked ``slow``: ``bash scripts/test.sh -m "not slow"`` is the quick inner loop; CI runs everything.
"""
import contextlib
import importlib
import os
import pickle
import socket
import struct
import subprocess
import sys
import uuid
import zlib

import cv  # noqa: F401  (first: it prepares the process for oneflow, see cv/_runtime.py)
import oneflow as flow
import pytest
from oneflow import nn

from cv.detection.models.anchors import DefaultBoxGenerator
from cv.detection.models.layers import Conv2d
from cv.detection.models.ssd import SSD


class TinyBackbone(nn.Module):
    """Three feature maps (8x8, 4x4, 2x2 for a 64x64 input)."""

    out_channels = [8, 16, 16]

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                  Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
                                  Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())
        self.down1 = nn.Sequential(Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.down2 = nn.Sequential(Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU())

    def forward(self, x):
        a = self.stem(x)
        b = self.down1(a)
        return [a, b, self.down2(b)]


def tiny_ssd(num_classes=5, seed=0, **kwargs):
    flow.manual_seed(seed)
    anchors = DefaultBoxGenerator([[2], [2, 3], [2]], scales=[0.15, 0.35, 0.65, 1.0], steps=[8, 16, 32])
    return SSD(TinyBackbone(), anchors, (64, 64), num_classes, image_mean=[0.5] * 3, image_std=[0.25] * 3, **kwargs)


@pytest.fixture(scope="session", autouse=True)
def weights_cache(tmp_path_factory):
    """One flowvision cache (downloads, extractions, ONNX exports) for the whole session, never the user's
    ~/.oneflow: programs run by the tests inherit it, so an export made for one test serves the next."""
    path = tmp_path_factory.mktemp("flowvision_cache")
    previous = os.environ.get("FLOWVISION_CACHE")
    os.environ["FLOWVISION_CACHE"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("FLOWVISION_CACHE", None)
    else:
        os.environ["FLOWVISION_CACHE"] = previous


@pytest.fixture
def tiny():
    return tiny_ssd()


@pytest.fixture(scope="session")
def ssd300_pair():
    """flowvision's ssd300_vgg16 and ours, with identical (random) weights."""
    from flowvision.models.detection import ssd300_vgg16 as flowvision_ssd300_vgg16

    from cv.detection.ssd300_vgg16 import ssd300_vgg16

    flow.manual_seed(0)
    reference = flowvision_ssd300_vgg16(pretrained=False, pretrained_backbone=False)
    ours = ssd300_vgg16()
    ours.load_state_dict(reference.state_dict())
    return ours, reference


@pytest.fixture(scope="session")
def sample_dataset(tmp_path_factory):
    """A small sample dataset (40 train, 12 val images), generated once per test session."""
    from cv.detection.data.sample import make_sample_dataset
    root = tmp_path_factory.mktemp("sample_coco")
    make_sample_dataset(root, seed=0, num_train=40, num_val=12)
    return root


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_SH = os.path.join(REPO, "cv", "detection", "ssd300_vgg16", "train.sh")
INFER_SH = os.path.join(REPO, "cv", "detection", "ssd300_vgg16", "infer.sh")
TRAIN = [sys.executable, "-m", "cv.detection.ssd300_vgg16.train"]


def run(cmd, cwd, env=None, expect=0, timeout=900):
    """Run ``cmd``; assert its exit status is ``expect`` (showing the output's end otherwise); the result."""
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == expect, f"exit {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def quick_args(data, out, *extra):
    """Training flags for a quick CPU run on ``data`` into ``out``."""
    return ["--data-path", str(data), "--output-dir", str(out), "--workers", "0", "--no-pretrained-backbone",
            "--print-freq", "1", *extra]


def last_line(text):
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


class Payload:
    """A pickle that runs ``touch MARKER`` when unpickled, as a crafted checkpoint would run anything."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant_payload(directory, marker):
    """Make the flow.save directory ``directory`` malicious: its pickled_data runs ``touch marker`` if unpickled
    by anything but our safe loader (the tensor folders are left as they were)."""
    with open(os.path.join(directory, "pickled_data"), "wb") as f:
        pickle.dump({"protocol_version": 1, "data": {"model": Payload(marker)}}, f)


def require_all():
    """True where every test must run (CI sets ``CI=true``; ``SSD300_REQUIRE_ALL=1`` asks for the same locally)."""
    return os.environ.get("CI") == "true" or os.environ.get("SSD300_REQUIRE_ALL") == "1"


def missing_capability(what):
    """A test (or a test module) cannot run here for want of ``what`` (root, a package, a CPU feature): skipped
    on a developer's machine, a failure naming ``what`` where :func:`require_all` (so that CI cannot go green by
    skipping). Every capability-dependent test ends up here; nothing else in the suite skips."""
    if require_all():
        pytest.fail(f"missing capability: {what} (CI=true or SSD300_REQUIRE_ALL=1: every test must run)",
                    pytrace=False)
    pytest.skip(f"missing capability: {what}", allow_module_level=True)


def import_or_missing(module):
    """``pytest.importorskip`` that fails where :func:`require_all`."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        missing_capability(f"the Python package {module} ({e})")


@pytest.fixture
def small_disk(tmp_path):
    """``make(megabytes)``: a folder on a tmpfs of that size (a disk that fills up), unmounted afterwards. Mounting
    needs root: without it, :func:`missing_capability`."""
    mounts = []

    def make(megabytes):
        path = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
        path.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(path)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            missing_capability(f"mounting a tmpfs (root): {done.stderr.strip()}")
        mounts.append(path)
        return path

    yield make
    for path in mounts:
        with contextlib.suppress(Exception):
            subprocess.run(["umount", "-l", str(path)], check=False)


def decompression_bomb(path, side=20000):
    """A PNG of side x side grey pixels, all zero: 400 MB of pixels in a file of a few hundred KB, over twice
    Pillow's MAX_IMAGE_PIXELS (89 million), so Pillow refuses it as a decompression bomb."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor, row = zlib.compressobj(9), b"\0" * (side + 1)
    body = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def fresh_python(code, cwd=REPO, startup_hook=None):
    """Run ``code`` in a new interpreter as in an environment without the start-up hook of ``scripts/setup.sh``
    (``-S``: no .pth file runs; this repository and site-packages are put on the path by hand), or with only that
    hook when ``startup_hook`` is a folder holding it; no preset OPENBLAS_CORETYPE. Returns ``(stdout, stderr)``."""
    import site

    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    prelude = (f"import sys, site; sys.path[:0] = [{REPO!r}]; "
               + (f"site.addsitedir({str(startup_hook)!r}); " if startup_hook else "")
               + f"sys.path += {site.getsitepackages()!r}\n")
    out = subprocess.run([sys.executable, "-S", "-c", prelude + code], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout, out.stderr


def rank_weights_env(directory, env=None):
    """``env`` (default: this process's environment) plus what makes every rank of a training program started with
    it write the digests of its weights into ``directory`` when the program compares the ranks
    (``tests/rank_weights/sitecustomize.py``): read them with :func:`rank_weight_digests`."""
    env = dict(os.environ if env is None else env)
    hook = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rank_weights")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [hook, env.get("PYTHONPATH")]))
    env["SSD300_TEST_WEIGHTS_DIR"] = str(directory)
    return env


def rank_weight_digests(directory, ranks=2):
    """Per rank, ``{name: SHA-256 of the tensor's bytes}`` of its model's state dict (see :func:`rank_weights_env`)."""
    import json

    return [json.loads(open(os.path.join(directory, f"rank{r}.json")).read()) for r in range(ranks)]
