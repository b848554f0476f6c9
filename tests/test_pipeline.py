"""The pipelined per-image loop: :mod:`cv.detection.utils.pipeline` and ``infer.sh``'s images through it
(:func:`run_on_images`), with a stand-in network whose detections are computed from each image's own pixels, so that
an image given another's detections, or written under another's name, shows. Everything runs in well under a
second; the network's threads and the real SSD300 are covered end to end by tests/test_infer.py (slow)."""
import argparse
import io
import json
import os
import threading
from argparse import Namespace

import oneflow as flow
import pytest
from PIL import Image

from cv.detection.ssd300_vgg16 import detector as detector_module
from cv.detection.ssd300_vgg16.detector import Detector
from cv.detection.ssd300_vgg16.infer import run_on_images
from cv.detection.utils import cli
from cv.detection.utils.pipeline import Ahead, Behind

NAMES = ["__background__", "dark", "bright"]


def finishes(fn, seconds=20):
    """``fn()``'s result or exception, failing the test instead of hanging if it takes more than ``seconds``."""
    outcome = {}

    def call():
        try:
            outcome["value"] = fn()
        except BaseException as e:  # noqa: BLE001  (re-raised in the test's thread)
            outcome["error"] = e

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s: a hang"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def no_pipeline_threads():
    return not [t.name for t in threading.enumerate() if t.name.startswith(("read images", "write images"))]


# --- Ahead and Behind ---------------------------------------------------------------------------------------------

def test_ahead_yields_in_order_then_raises_the_iterables_own_error_at_its_place():
    error = ValueError("item 5 is bad")

    def items():
        yield from range(5)
        raise error

    got = []
    with pytest.raises(ValueError) as raised:
        with Ahead(items(), depth=2) as ahead:
            for item in ahead:
                got.append(item)
    assert got == [0, 1, 2, 3, 4] and raised.value is error


def test_ahead_reads_at_most_depth_ahead_and_close_stops_it():
    produced = []

    def endless():
        while True:
            produced.append(len(produced))
            yield produced[-1]

    ahead = Ahead(endless(), depth=3)
    assert [next(ahead) for _ in range(4)] == [0, 1, 2, 3]
    ahead.close()
    assert not ahead.thread.is_alive()
    assert len(produced) <= 4 + 3 + 1  # taken, queued, and the one waiting for room
    assert list(ahead) == []


def test_behind_runs_in_order_and_nothing_after_a_failure():
    done = []

    def work(i):
        if i == 3:
            raise OSError(28, "No space left on device")
        done.append(i)

    with pytest.raises(OSError) as raised:
        with Behind(depth=2) as behind:
            for i in range(8):
                behind.submit(work, i)
    assert done == [0, 1, 2] and raised.value.errno == 28


# --- infer.sh's images ------------------------------------------------------------------------------------------

def stand_in_network(images):
    """Per ``[3, H, W]`` image: one box (its top-left quarter), scored by its mean brightness, labelled bright or
    dark by it."""
    outputs = []
    for image in images:
        h, w = image.shape[-2:]
        mean = float(image.mean().numpy())
        outputs.append({"boxes": flow.tensor([[0.0, 0.0, w / 2, h / 2]]), "scores": flow.tensor([mean]),
                        "labels": flow.tensor([2 if mean > 0.5 else 1], dtype=flow.int64)})
    return outputs


@pytest.fixture
def folder(tmp_path):
    """Seven images of distinct sizes and greys (``00.png`` ... ``06.png``), the third not an image at all."""
    root = tmp_path / "in"
    root.mkdir()
    for i in range(7):
        path = root / f"{i:02d}.png"
        if i == 2:
            path.write_bytes(b"not an image")
        else:
            Image.new("RGB", (40 + 8 * i, 30 + 4 * i), (30 * i + 20,) * 3).save(path)
    return root


GOOD = [0, 1, 3, 4, 5, 6]


def run_folder(folder, out, network=stand_in_network, batch_size=2):
    """infer.sh's images loop on ``folder``, two images per batch: [00, 01], [02 (unreadable), 03], [04, 05], [06]."""
    paths = sorted(str(folder / f) for f in os.listdir(folder))
    args = Namespace(batch_size=batch_size, score_threshold=0.0, output_dir=str(out))
    return run_on_images(Detector(network, NAMES, score_threshold=0.0), paths, args)


def test_images_keep_their_order_and_get_what_each_gets_alone(folder, tmp_path, capsys):
    out = tmp_path / "out"
    records = finishes(lambda: run_folder(folder, out))
    grey = {i: 30 * i + 20 for i in GOOD}
    assert capsys.readouterr().out.splitlines() == [
        f"{folder / '00.png'}: 1 detection (dark {grey[0] / 255:.2f})",
        f"{folder / '01.png'}: 1 detection (dark {grey[1] / 255:.2f})",
        f"{folder / '02.png'}: skipped, cannot be read: cannot identify image file '{folder / '02.png'}'",
        f"{folder / '03.png'}: 1 detection (dark {grey[3] / 255:.2f})",
        f"{folder / '04.png'}: 1 detection (bright {grey[4] / 255:.2f})",
        f"{folder / '05.png'}: 1 detection (bright {grey[5] / 255:.2f})",
        f"{folder / '06.png'}: 1 detection (bright {grey[6] / 255:.2f})",
        "1 of 7 images could not be read and were skipped"]
    assert [(r["image"], r["width"], r["height"], r["detections"][0]["box"]) for r in records] == \
        [(str(folder / f"{i:02d}.png"), 40 + 8 * i, 30 + 4 * i, [0.0, 0.0, (40 + 8 * i) / 2, (30 + 4 * i) / 2])
         for i in GOOD]
    assert sorted(os.listdir(out)) == sorted(f"{i:02d}.{ext}" for i in GOOD for ext in ("json", "jpg"))
    # Each image alone, in line (its own predict call, then written as infer.sh writes): the same bytes.
    alone = Detector(stand_in_network, NAMES, score_threshold=0.0)
    for i in GOOD:
        found = alone.predict(str(folder / f"{i:02d}.png"))
        assert (out / f"{i:02d}.json").read_text() == json.dumps(found.to_json(), indent=1) + "\n"
        jpeg = io.BytesIO()
        found.draw().save(jpeg, format="JPEG", quality=92)
        assert (out / f"{i:02d}.jpg").read_bytes() == jpeg.getvalue()
    assert no_pipeline_threads()


@pytest.mark.parametrize("where", ["reading", "writing"])
def test_an_error_in_a_worker_thread_is_the_same_one_line_and_stops_the_run(folder, tmp_path, capsys, monkeypatch,
                                                                            where):
    """An unexpected error while reading image 04 (not an unreadable file: those are skipped), or a full disk
    while writing its picture: the one line ``error: ...`` of :func:`cli.run`, the images before it written whole
    (and, as in line, 04's JSON, written before its picture), none after it, no thread left running."""
    failing, out = str(folder / "04.png"), tmp_path / "out"
    read, draw = detector_module.read_as_seen, detector_module.Detections.draw

    def crashing_read(path):
        if path == failing:
            raise RuntimeError(f"{path}: the decoder crashed")
        return read(path)

    def full_disk_draw(found):
        if found.path == failing:
            raise OSError(28, "No space left on device")
        return draw(found)

    if where == "reading":
        monkeypatch.setattr(detector_module, "read_as_seen", crashing_read)
        expected, written = f"error: {failing}: the decoder crashed", []
    else:
        monkeypatch.setattr(detector_module.Detections, "draw", full_disk_draw)
        expected, written = f"error: No space left on device: {out / '04.jpg'}", ["04.json"]
    with pytest.raises(SystemExit) as exit_:
        finishes(lambda: cli.run(lambda args: run_folder(folder, out), argparse.ArgumentParser(), []))
    captured = capsys.readouterr()
    assert exit_.value.code == 1 and captured.err.splitlines()[-1] == expected
    assert [line.split(": ")[0] for line in captured.out.splitlines()] == [str(folder / f"{i:02d}.png")
                                                                          for i in range(4)]
    assert sorted(os.listdir(out)) == sorted([f"{i:02d}.{ext}" for i in (0, 1, 3) for ext in ("json", "jpg")]
                                             + written)
    assert no_pipeline_threads()


def test_ctrl_c_keeps_the_images_done_whole_and_leaves_no_thread(folder, tmp_path):
    """Ctrl-C while the network runs on the second batch: the first batch's outputs are written whole, as they were
    before the network started again in line, and nothing else is."""
    calls = []

    def interrupted(images):
        calls.append(len(images))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return stand_in_network(images)

    with pytest.raises(KeyboardInterrupt):
        finishes(lambda: run_folder(folder, tmp_path / "out", interrupted))
    assert calls == [2, 1]  # the second batch: 02 is unreadable
    assert sorted(os.listdir(tmp_path / "out")) == ["00.jpg", "00.json", "01.jpg", "01.json"]
    assert json.loads((tmp_path / "out" / "01.json").read_text())["width"] == 48
    assert no_pipeline_threads()
