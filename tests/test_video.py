"""Detection on video (``cv/detection/deploy/video.py``, ``infer.sh --video/--camera``).

The clips are a few small frames cut from the sample dataset's val images and written losslessly (libx264rgb at
qp 0), so that the frames decoded here are exactly the pictures the detector sees. The mechanics (every frame
written with its time, detections equal to the same frames run as images, early ends, stops, full disks, live
sources) run in-process on the tiny SSD of conftest; the programs run end to end (``slow``) with an SSD300 of
random (seeded) weights on 8 frames, through OneFlow and through ONNX Runtime.
"""
import json
import os
import signal
import subprocess
from argparse import Namespace
from fractions import Fraction

import numpy as np
import oneflow as flow
import pytest
from PIL import Image, ImageOps

from cv.detection.utils import cli
from cv.detection.deploy import video
from cv.detection.ssd300_vgg16.detector import Detector, as_records, draw_detections
from cv.detection.ssd300_vgg16.infer import run_on_images
from cv.detection.data.transforms import to_chw_float
from tests.conftest import INFER_SH, import_or_missing, last_line, run, tiny_ssd

av = import_or_missing("av")

WIDTH, HEIGHT, RATE, FRAMES = 320, 240, 5, 8
SHAPES = ["__background__", "circle", "square", "triangle", "ring", "cross", "star"]
TINY_NAMES = ["__background__", "a", "b", "c", "d"]


# --- clips ----------------------------------------------------------------------------------------------------------

def sample_frames(sample_dataset, count=FRAMES, size=(WIDTH, HEIGHT)):
    """``count`` val images of the sample dataset, cropped and resized to ``size``, as uint8 RGB arrays."""
    files = sorted(os.listdir(sample_dataset / "val2017"))
    return [np.asarray(ImageOps.fit(Image.open(sample_dataset / "val2017" / files[i % len(files)]).convert("RGB"),
                                    size, Image.BILINEAR)) for i in range(count)]


def write_clip(path, frames, rate=RATE, times=None, rotation=None):
    """``frames`` as a lossless H.264 MP4 (libx264rgb, qp 0, index first), at ``rate`` or at ``times`` (seconds,
    in milliseconds' time base); ``rotation``: a display rotation for players (degrees counter-clockwise)."""
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream("libx264rgb", rate=rate)
        stream.width, stream.height, stream.pix_fmt, stream.options = width, height, "rgb24", {"qp": "0"}
        if times is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i if times is None else round(times[i] * 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def decode(path):
    """``(frames as RGB arrays, times in s, info)`` of a video, read plainly with PyAV (stopping at an error)."""
    frames, times = [], []
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        info = {"rate": stream.average_rate, "width": stream.codec_context.width,
                "height": stream.codec_context.height, "declared_frames": stream.frames}
        try:
            for frame in c.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
                times.append(frame.time)
        except av.error.InvalidDataError:
            pass
    return frames, times, info


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def cut_inside_packet(path, out, index):
    """A copy of ``path`` (index-first MP4) cut in the middle of its ``index``-th video packet (file order)."""
    with av.open(str(path)) as c:
        packets = [p for p in c.demux(video=0) if p.size]
    packet = sorted(packets, key=lambda p: p.pos)[index]
    data = open(path, "rb").read()
    out.write_bytes(data[:packet.pos + packet.size // 2])
    return out


def clip_of(frames, folder, count, size=(64, 48)):
    """A clip of ``count`` small frames (the sample frames cropped to ``size``, repeated)."""
    small = [np.ascontiguousarray(rgb[:size[1], :size[0]]) for rgb in frames]
    return write_clip(folder / f"small{count}.mp4", [small[i % len(small)] for i in range(count)])


@pytest.fixture(scope="module")
def frames(sample_dataset):
    return sample_frames(sample_dataset)


@pytest.fixture(scope="module")
def clip(frames, tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", frames)


# --- the tiny detector, in-process -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_detector():
    model = tiny_ssd().eval()

    @flow.no_grad()
    def detect(images):
        return model([flow.tensor(to_chw_float(rgb)) for rgb in images])

    detect.model = model
    return detect


def records_of(threshold=0.0, names=TINY_NAMES):
    return lambda output: as_records(output, names, threshold)


def process(path, detect, out_dir, batch_size=3, threshold=0.0, **kwargs):
    with video.VideoSource.open(path) as source:
        return video.process_video(source, detect, records_of(threshold), draw_detections, out_dir / "v.mp4",
                                   out_dir / "v.jsonl", batch_size, fields={"score_threshold": threshold}, **kwargs)


def as_images(frames, detector, names, folder, batch_size, threshold):
    """The detections of ``frames`` saved as PNG files and run through infer's image path: ``[detections]``."""
    folder.mkdir()
    paths = []
    for i, rgb in enumerate(frames):
        paths.append(str(folder / f"{i:03d}.png"))
        Image.fromarray(rgb).save(paths[-1])
    args = Namespace(batch_size=batch_size, score_threshold=threshold, output_dir=str(folder / "out"))
    return [r["detections"] for r in run_on_images(Detector(detector, names, threshold), paths, args)]


def no_temporaries(folder):
    return [name for name in os.listdir(folder) if ".tmp-" in name] == []


def test_clips_are_lossless(clip, frames):
    decoded, times, info = decode(clip)
    assert len(decoded) == FRAMES and all((a == b).all() for a, b in zip(decoded, frames))
    assert times == [i / RATE for i in range(FRAMES)] and info["rate"] == RATE


def test_every_frame_is_written_with_its_time_and_the_detections_it_gets_as_an_image(clip, frames, tiny_detector,
                                                                                      tmp_path, capsys):
    out = tmp_path / "out"
    result = process(clip, tiny_detector, out)
    assert (result.frames, result.stop_reason) == (FRAMES, None)
    assert f"{clip}: {FRAMES} frames, " in str(result)
    assert "8/8" in capsys.readouterr().err  # the progress bar: frames done, of how many

    written, times, info = decode(out / "v.mp4")
    assert (len(written), info["width"], info["height"], info["rate"], info["declared_frames"]) == \
        (FRAMES, WIDTH, HEIGHT, RATE, FRAMES)
    assert times == [i / RATE for i in range(FRAMES)]
    lines = read_jsonl(out / "v.jsonl")
    assert [(r["frame"], r["time"], r["width"], r["height"]) for r in lines] == \
        [(i, i / RATE, WIDTH, HEIGHT) for i in range(FRAMES)]
    assert {r["video"] for r in lines} == {str(clip)} and {r["score_threshold"] for r in lines} == {0.0}

    # The frames decoded by PyAV, saved as pictures and run through infer's image path (same batches of 3): the
    # same detections, exactly.
    expected = as_images(decode(clip)[0], tiny_detector.model, TINY_NAMES, tmp_path / "images", 3, 0.0)
    assert [r["detections"] for r in lines] == expected and all(len(d) == 200 for d in expected)

    # The written frames are the pictures with their boxes drawn as for images: encoded alike, the same video up to
    # x264's rounding (bit-identical when encoded alone; interleaved with OneFlow's work, within ~1 grey level).
    drawn = [np.asarray(draw_detections(Image.fromarray(rgb), dets)) for rgb, dets in zip(frames, expected)]
    writer = video.VideoWriter(tmp_path / "drawn.mp4", WIDTH, HEIGHT, RATE, Fraction(1, 10240))  # the clip's
    for i, rgb in enumerate(drawn):
        writer.write(rgb, i / RATE)
    writer.close()
    for got, again, rgb, other in zip(written, decode(tmp_path / "drawn.mp4")[0], frames, drawn[1:] + drawn[:1]):
        got = got.astype(np.float32)
        assert np.abs(got - again).mean() < 2 < 10 < min(np.abs(got - rgb).mean(), np.abs(got - other).mean())
    assert no_temporaries(out)


def test_the_writer_keeps_size_rate_times_and_colours(tmp_path):
    colours = [(230, 30, 40), (30, 200, 60), (40, 60, 220), (128, 128, 128), (250, 250, 250), (5, 5, 5)]
    patches = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    for i, colour in enumerate(colours):
        patches[:, i * 53:(i + 1) * 53] = colour
    writer = video.VideoWriter(tmp_path / "v.mp4", WIDTH, HEIGHT, Fraction(30000, 1001), Fraction(1, 30000))
    times = [i * 1001 / 30000 for i in range(4)]
    for t in times:
        writer.write(patches, t)
    writer.close()
    written, written_times, info = decode(tmp_path / "v.mp4")
    assert (info["width"], info["height"], info["rate"], written_times) == (WIDTH, HEIGHT, Fraction(30000, 1001),
                                                                           times)
    # Within 2 levels of each colour (converted with BT.601 and tagged so); read as BT.709, as untagged HD video
    # is, the red would come back as (245, 48, 37).
    for i, colour in enumerate(colours):
        assert np.abs(written[0][HEIGHT // 2, i * 53 + 26].astype(int) - colour).max() <= 2, colour


def test_variable_frame_timing_is_kept(frames, tiny_detector, tmp_path):
    times = [0.0, 0.2, 0.5, 0.55, 1.3]
    path = write_clip(tmp_path / "vfr.mp4", frames[:5], times=times)
    result = process(path, tiny_detector, tmp_path / "out", batch_size=2)
    assert result.frames == 5
    assert [r["time"] for r in read_jsonl(tmp_path / "out" / "v.jsonl")] == times
    assert decode(tmp_path / "out" / "v.mp4")[1] == times


def test_a_phone_video_is_detected_upright(frames, tiny_detector, tmp_path):
    """A portrait phone video stores landscape pixels and a display rotation (-90: turn clockwise): it is detected
    and written as players show it, upright."""
    path = write_clip(tmp_path / "phone.mp4", frames[:3], rotation=-90)
    process(path, tiny_detector, tmp_path / "out", batch_size=3)
    upright = [np.ascontiguousarray(np.rot90(rgb, k=-1)) for rgb in frames[:3]]
    written, _, info = decode(tmp_path / "out" / "v.mp4")
    assert (info["width"], info["height"]) == (HEIGHT, WIDTH)
    lines = read_jsonl(tmp_path / "out" / "v.jsonl")
    assert {(r["width"], r["height"]) for r in lines} == {(HEIGHT, WIDTH)}
    assert [r["detections"] for r in lines] == as_images(upright, tiny_detector.model, TINY_NAMES,
                                                         tmp_path / "images", 3, 0.0)


def test_odd_sizes_are_kept(frames, tiny_detector, tmp_path):
    odd = [np.ascontiguousarray(rgb[:101, :151]) for rgb in frames[:2]]  # 4:2:0 cannot hold 151x101
    process(write_clip(tmp_path / "odd.mp4", odd), tiny_detector, tmp_path / "out")
    written, _, info = decode(tmp_path / "out" / "v.mp4")
    assert (len(written), info["width"], info["height"]) == (2, 151, 101)


def test_a_truncated_video_keeps_the_frames_before_the_cut(clip, tiny_detector, tmp_path):
    cut = cut_inside_packet(clip, tmp_path / "cut.mp4", 4)
    before = decode(cut)[0]
    assert 0 < len(before) < FRAMES
    result = process(cut, tiny_detector, tmp_path / "out")
    assert result.frames == len(before) and result.stop_reason.startswith("the input is damaged or truncated")
    assert f"stopped after {len(before)} frames (the input is damaged or truncated" in str(result)
    assert len(decode(tmp_path / "out" / "v.mp4")[0]) == len(read_jsonl(tmp_path / "out" / "v.jsonl")) == len(before)


def test_a_stop_signal_ends_with_complete_outputs(clip, tiny_detector, tmp_path):
    """SIGTERM (a scheduler) arriving during the second batch: that batch is finished, the outputs are closed."""
    calls = []

    def detect(images):
        calls.append(len(images))
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return tiny_detector(images)

    handler = signal.getsignal(signal.SIGTERM)
    with cli.StopRequest("finishing the frames in progress") as stop:
        result = process(clip, detect, tmp_path / "out", batch_size=2, stop=stop)
    assert signal.getsignal(signal.SIGTERM) is handler  # restored
    assert (result.frames, result.stop_reason, calls) == (4, "SIGTERM received", [2, 2])
    assert len(decode(tmp_path / "out" / "v.mp4")[0]) == len(read_jsonl(tmp_path / "out" / "v.jsonl")) == 4


def test_an_abrupt_end_leaves_nothing_half_written(clip, tiny_detector, tmp_path):
    """A second Ctrl-C (KeyboardInterrupt) mid-video: neither output appears, no temporary remains."""
    calls = []

    def detect(images):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return tiny_detector(images)

    with pytest.raises(KeyboardInterrupt):
        process(clip, detect, tmp_path / "out", batch_size=2)
    assert os.listdir(tmp_path / "out") == []


def test_a_full_disk_is_an_error_and_leaves_nothing(frames, tiny_detector, tmp_path, small_disk):
    disk = small_disk(1)
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    (disk / "filler").write_bytes(b"x" * (free - 100_000))  # 100 KB left: ~7 frames of 200 detections each
    with pytest.raises(OSError) as e:
        process(clip_of(frames, tmp_path, 16), tiny_detector, disk / "out", batch_size=4)
    assert e.value.errno == 28 and os.listdir(disk / "out") == []


def test_a_live_source_skips_the_frames_it_has_no_time_for(clip, tiny_detector, tmp_path):
    """A camera delivers frames whether or not the detector keeps up: each batch is the newest frames, the others
    are counted as skipped, and each written frame keeps its own time (here a file read as if live)."""
    def slow(images):  # busy until the "camera" has delivered every frame (an event, not a duration)
        source._thread.join()
        return tiny_detector(images)

    source = video.VideoSource(str(clip), av.open(str(clip)), live=True)
    with source:
        result = video.process_video(source, slow, records_of(), draw_detections, tmp_path / "v.mp4",
                                     tmp_path / "v.jsonl", batch_size=2)
    lines = read_jsonl(tmp_path / "v.jsonl")
    times = [r["time"] for r in lines]
    assert 0 < result.frames == len(lines) < FRAMES and result.frames + result.dropped == FRAMES
    assert times == sorted(set(times)) and set(times) <= {i / RATE for i in range(FRAMES)}
    assert times[-1] == (FRAMES - 1) / RATE  # the newest frame is never skipped
    assert "camera frames skipped while busy" in str(result)
    written, written_times, _ = decode(tmp_path / "v.mp4")  # fragmented MP4
    assert written_times == times and len(written) == len(lines)


def test_files_that_are_not_videos_are_errors_naming_them(frames, tmp_path):
    (tmp_path / "notes.txt").write_text("Once upon a time\n" * 40)  # FFmpeg's "tty" demuxer opens this
    (tmp_path / "empty.mp4").write_bytes(b"")
    Image.fromarray(frames[0]).save(tmp_path / "photo.jpg")
    with av.open(str(tmp_path / "sound.wav"), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in [*stream.encode(frame), *stream.encode()]:
            out.mux(packet)
    with av.open(str(tmp_path / "zero.avi"), "w") as out:  # a video stream without frames
        stream = out.add_stream("mjpeg", rate=5)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuvj420p"
        out.start_encoding()
    plain = tmp_path / "plain.mp4"  # index at the end: cut, it has none
    with av.open(str(plain), "w") as out:
        stream = out.add_stream("libx264", rate=5)
        stream.width, stream.height = WIDTH, HEIGHT
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    (tmp_path / "unfinished.mp4").write_bytes(plain.read_bytes()[:plain.stat().st_size // 2])

    for name, message in (("notes.txt", "not a video (FFmpeg reads it as a text file)"),
                          ("empty.mp4", "an empty file (0 bytes)"),
                          ("photo.jpg", "a still image, not a video"),
                          ("sound.wav", "has no video stream (only audio)"),
                          ("zero.avi", "a zero-length video (its video stream has no frames)"),
                          ("unfinished.mp4", "an unfinished MP4 (FFmpeg: moov atom not found)"),
                          ("missing.mp4", "no such file or directory"),
                          (".", "a directory, not a video file")):
        with pytest.raises(ValueError) as e:
            video.VideoSource.open(tmp_path / name)
        assert str(e.value).startswith(f"{tmp_path / name}: {message}"), str(e.value)


def test_no_camera_is_an_error_saying_so():
    for index in range(8):  # a device number no camera has here
        if not os.path.exists(f"/dev/video{index}"):
            break
    with pytest.raises(OSError) as e:
        video.VideoSource.camera(index)
    assert str(e.value).endswith(f"camera {index}: /dev/video{index} does not exist (no camera connected, or no "
                                 "V4L2 driver for it)")


# --- infer.sh, end to end ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """An SSD300-VGG16 checkpoint with random (seeded) weights and the sample's six shape classes."""
    from cv.detection.ssd300_vgg16 import ssd300_vgg16

    flow.manual_seed(0)
    model = ssd300_vgg16(num_classes=len(SHAPES))
    path = tmp_path_factory.mktemp("weights") / "checkpoint"
    flow.save({"model": model.state_dict(), "meta": {"label_names": SHAPES}}, str(path))
    return path


def env_with_cache(cache):
    return dict(os.environ, FLOWVISION_CACHE=str(cache))


@pytest.fixture(scope="module")
def oneflow_run(weights, clip, tmp_path_factory):
    out = tmp_path_factory.mktemp("oneflow")
    res = run(["bash", INFER_SH, "--weights", weights, "--video", clip, "--batch-size", "3", "--backend", "oneflow",
               "--output-dir", out], cwd=out)
    return res, out


@pytest.mark.slow
def test_infer_sh_video_with_oneflow(oneflow_run, weights, clip, tmp_path):
    from cv.detection.ssd300_vgg16.detector import load_model

    res, out = oneflow_run
    assert f"{clip}: {FRAMES} frames, " in res.stdout and "frames/s -> " in res.stdout
    assert f"{FRAMES}/{FRAMES}" in res.stderr and "frame/s" in res.stderr  # progress
    written, times, info = decode(out / "clip.mp4")
    assert (len(written), info["width"], info["height"], info["rate"]) == (FRAMES, WIDTH, HEIGHT, RATE)
    lines = read_jsonl(out / "clip.jsonl")
    assert [r["time"] for r in lines] == times == [i / RATE for i in range(FRAMES)]
    assert set(lines[0]) == {"video", "frame", "time", "width", "height", "score_threshold", "detections"}
    model, names, _ = load_model(str(weights))
    expected = as_images(decode(clip)[0], model, names, tmp_path / "images", 3, 0.3)
    assert [r["detections"] for r in lines] == expected and sum(map(len, expected)) > 0
    assert {d["name"] for dets in expected for d in dets} <= set(SHAPES[1:])


@pytest.mark.slow
def test_infer_sh_video_with_onnxruntime(oneflow_run, weights, clip, tmp_path):
    from cv.detection.deploy.onnx_backend import OnnxRuntimeSSD
    from cv.detection.ssd300_vgg16.detector import load_model

    out = tmp_path / "ort"
    res = run(["bash", INFER_SH, "--weights", weights, "--video", clip, "--backend", "onnxruntime", "--output-dir",
               out], cwd=tmp_path, env=env_with_cache(tmp_path / "cache"))
    assert "backend onnxruntime" in res.stdout and f"{clip}: {FRAMES} frames, " in res.stdout
    lines = read_jsonl(out / "clip.jsonl")
    assert len(decode(out / "clip.mp4")[0]) == len(lines) == FRAMES
    # Exactly what the same detector finds in the frames as images...
    model, names, _ = load_model(str(weights))
    onnx = [f for f in os.listdir(tmp_path / "cache" / "onnx") if f.endswith(".onnx")]
    detector = OnnxRuntimeSSD(model, str(tmp_path / "cache" / "onnx" / onnx[0]))
    expected = as_images(decode(clip)[0], detector, names, tmp_path / "images", 4, 0.3)
    assert [r["detections"] for r in lines] == expected
    # ... and what OneFlow finds, up to the rounding of the files (see test_infer).
    for ours, theirs in zip(lines, read_jsonl(oneflow_run[1] / "clip.jsonl")):
        assert [d["label"] for d in ours["detections"]] == [d["label"] for d in theirs["detections"]]
        np.testing.assert_allclose([d["box"] for d in ours["detections"]], [d["box"] for d in theirs["detections"]],
                                   atol=0.0101)


@pytest.mark.slow
def test_infer_sh_truncated_video_keeps_what_was_before_the_cut(weights, clip, tmp_path):
    cut = cut_inside_packet(clip, tmp_path / "cut.mp4", 3)
    kept = len(decode(cut)[0])
    assert 0 < kept < FRAMES
    res = run(["bash", INFER_SH, "--weights", weights, "--video", cut, "--output-dir", tmp_path / "out"],
              cwd=tmp_path)
    assert f"{cut}: stopped after {kept} frames (the input is damaged or truncated: FFmpeg: Invalid data found " \
           "when processing input)" in res.stdout
    assert "(1 ended early, see above)" in last_line(res.stdout)
    assert len(decode(tmp_path / "out" / "cut.mp4")[0]) == len(read_jsonl(tmp_path / "out" / "cut.jsonl")) == kept
    assert no_temporaries(tmp_path / "out")


@pytest.mark.slow
def test_infer_sh_bad_inputs_are_one_line_errors(weights, clip, tmp_path):
    def fails(*args, expect=1):
        res = run(["bash", INFER_SH, "--weights", weights, "--output-dir", tmp_path / "out", *args], cwd=tmp_path,
                  expect=expect)
        assert "Traceback" not in res.stderr
        return last_line(res.stderr)

    (tmp_path / "notes.txt").write_text("Once upon a time\n" * 40)
    assert fails("--video", clip, tmp_path / "notes.txt") == \
        f"error: {tmp_path / 'notes.txt'}: not a video (FFmpeg reads it as a text file)"
    with av.open(str(tmp_path / "zero.avi"), "w") as out:
        stream = out.add_stream("mjpeg", rate=5)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuvj420p"
        out.start_encoding()
    assert fails("--video", tmp_path / "zero.avi") == \
        f"error: {tmp_path / 'zero.avi'}: a zero-length video (its video stream has no frames)"
    assert not os.path.exists(tmp_path / "out") or os.listdir(tmp_path / "out") == []  # checked before any work
    absent = next(i for i in range(64, 4096) if not os.path.exists(f"/dev/video{i}"))  # a camera nobody has
    assert fails("--camera", str(absent)) == \
        f"error: camera {absent}: /dev/video{absent} does not exist (no camera connected, or no V4L2 driver for it)"
    assert fails("--video", clip, "--images", clip, expect=2).endswith(
        "argument --images: not allowed with argument --video")


@pytest.mark.slow
def test_infer_sh_ctrl_c_keeps_the_frames_done(weights, frames, tmp_path):
    """Ctrl-C during a video: the batch in progress is finished, both outputs hold those frames, the videos after
    it are not started, exit status 130. The program stops itself after each batch (CV_PAUSE_AT) and gets the
    Ctrl-C at the first stop: on any machine the outputs hold exactly the batches it stopped after. (Which batch
    the program sees the Ctrl-C before depends on which of its threads the kernel delivers it to, so the count of
    stops, not a fixed number, is what the frames are checked against.)"""
    path = write_clip(tmp_path / "long.mp4", [np.ascontiguousarray(rgb[:120, :160]) for rgb in frames] * 3)
    out = tmp_path / "out"
    with open(tmp_path / "stderr", "w") as err:
        proc = subprocess.Popen(["bash", INFER_SH, "--weights", str(weights), "--video", str(path), str(path),
                                 "--batch-size", "2", "--output-dir", str(out)], cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=err, text=True,
                                env=dict(os.environ, CV_PAUSE_AT="video:batch"))
        try:
            stops = 0
            while True:
                _, status = os.waitpid(proc.pid, os.WUNTRACED)  # infer.sh execs python: the same process
                if not os.WIFSTOPPED(status):
                    proc.returncode = os.waitstatus_to_exitcode(status)
                    break
                stops += 1
                if stops == 1:
                    proc.send_signal(signal.SIGINT)
                proc.send_signal(signal.SIGCONT)
            stdout = proc.stdout.read()
            assert proc.returncode == 130
        finally:
            proc.kill()
    stderr = (tmp_path / "stderr").read_text()
    lines = read_jsonl(out / "long.jsonl")
    assert stops >= 1 and len(lines) == 2 * stops < 3 * FRAMES  # the batches done, each finished
    assert f"{path}: stopped after {len(lines)} frames (SIGINT received)" in stdout
    assert last_line(stderr) == (f"stopped: by SIGINT; {path}: its outputs hold the {len(lines)} frames "
                                 f"processed; not started: {path}")
    assert len(decode(out / "long.mp4")[0]) == len(lines)
    assert sorted(os.listdir(out)) == ["long.jsonl", "long.mp4"]
