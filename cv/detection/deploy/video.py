"""Detection on videos and cameras: frames in, an annotated video and a JSON-lines file of detections out.

Model-agnostic: :func:`process_video` takes a ``detect`` callable (a batch of RGB frames -> one output per frame),
a ``to_records`` function (one output -> JSON-able detections) and a ``draw`` function (a PIL image and its
detections -> the annotated image). The detector's program supplies them (``ssd300_vgg16/infer.py``).

Reading and writing use PyAV (FFmpeg, bundled in its wheel):

- :class:`VideoSource` reads a file or a V4L2 camera as RGB uint8 frames with their timestamps (seconds since the
  first frame), turned upright as players show them (the display-matrix rotation phones record).
  Unsupported or broken input is a ``ValueError``/``OSError`` naming the file; a stream that breaks after some
  frames ends the iteration, and :attr:`VideoSource.stop_reason` says why.
- :class:`VideoWriter` writes H.264 MP4 (libx264) of the input's size, keeping each frame's timestamp, so the
  frame rate and timing (variable rates included) are the input's.
- :func:`process_video` runs the detector on batches of frames and writes both outputs to temporary names that are
  renamed into place at the end (:func:`cv.detection.utils.fileio.atomic_path`): killed, or out of disk space, nothing
  half-written appears. An input that ends early (damaged or truncated, a stop requested with Ctrl-C or SIGTERM,
  a camera unplugged) still gives complete outputs holding every frame processed.

MP4 layout: files are written with ``movflags=faststart`` (the index first: the most compatible MP4, with the
frame count in the header, playable while downloading); a killed run is simply run again. A camera recording
cannot be: it is written as fragmented MP4 (the index written piece by piece, one fragment a second, flushed as it
goes, and x264 without look-ahead), so that the temporary of a recording killed hard (``kill -9``, power loss)
still plays, all but its last second or so; closing it also needs no rewrite of the file.
"""
import collections
import json
import os
import sys
import threading
import time
from fractions import Fraction

import numpy as np
from PIL import Image

from cv.detection.utils import cli, fileio, pipeline

# libx264 at CRF 20 keeps drawn boxes and label text sharp. "veryfast" rather than x264's default "medium": about a
# third of the encoding time per frame, which would otherwise cost a noticeable share of the frame rate on a CPU
# (numbers in the README's video section), for a slightly less efficient compression.
ENCODER = {"codec": "libx264", "crf": "20", "preset": "veryfast"}
FASTSTART = {"movflags": "faststart"}
# negative_cts_offsets: without an edit list (a fragmented file has none) B-frame reordering would otherwise delay
# every timestamp by two frames; frag_duration: a new fragment at least every second (microseconds);
# flush_packets: written through to the file, not held in FFmpeg's buffer (without it, a recording killed after a
# few seconds had left nothing playable; with it and x264's zerolatency tuning, all but its last moments play).
FRAGMENTED = {"movflags": "frag_keyframe+empty_moov+default_base_moof+negative_cts_offsets",
              "frag_duration": "1000000", "flush_packets": "1"}
# FFmpeg demuxers of still images: they open a photo as a one-frame "video".
IMAGE_FORMATS = ("image2", "image2pipe", "gif_pipe")
# Frame rate assumed for a stream that declares none (only sets the encoder's rate control; timestamps are kept).
DEFAULT_RATE = Fraction(25)


def _av():
    """PyAV, imported when video is first used (the rest of the project runs without it)."""
    try:
        import av
        import av.logging  # noqa: F401
    except ImportError as e:
        raise RuntimeError(f"video needs PyAV ({e}): install it with .venv/bin/python -m pip install av==17.1.0, or "
                           "run scripts/setup.sh") from None
    return av


def _reason(error):
    """FFmpeg's words for ``error``, with the detail its log gave ("moov atom not found"), without the file name."""
    text = getattr(error, "strerror", None) or str(error)
    log = getattr(error, "log", None)
    if log and log[-1]:
        text += f": {str(log[-1]).strip()}"
    return text


class VideoSource:
    """Frames of a video file (:meth:`open`) or a camera (:meth:`camera`), read with PyAV.

    Iterating yields ``(rgb, seconds)``: an ``[H, W, 3]`` uint8 RGB array, upright, and its time in seconds since
    the first frame (from the frame's own timestamp). Attributes: ``name`` (what was opened), ``width`` and
    ``height`` (upright), ``rate`` (the declared frame rate, a Fraction), ``time_base`` (of the timestamps),
    ``total`` (frames, or an estimate from the duration, None if unknown), ``live`` (a camera: frames the consumer
    is too slow for are dropped, counted in ``dropped``, so that it always gets the newest ones), ``rotation``
    (degrees counter-clockwise applied to turn the stored frames upright) and, after the iteration,
    ``stop_reason``: None when the input ended normally, else why it ended early.
    """

    def __init__(self, name, container, live=False):
        self.name, self.container, self.live = name, container, live
        self.stream = container.streams.video[0]
        self.stop_reason, self.dropped, self.rotation = None, 0, 0
        self._first, self._frames, self._stop, self._thread = None, None, threading.Event(), None
        self._ahead = None
        self._t0, self._count = None, 0
        cc = self.stream.codec_context
        self.width, self.height = cc.width, cc.height
        self.rate = self.stream.average_rate or self.stream.guessed_rate or DEFAULT_RATE
        self.time_base = self.stream.time_base or 1 / self.rate
        self.total = self.stream.frames or None
        if not self.total and self.stream.duration and not live:
            self.total = round(float(self.stream.duration * self.stream.time_base * self.rate)) or None

    # --- opening --------------------------------------------------------------------------------------------------

    @classmethod
    def open(cls, path):
        """The video file ``path``, checked: its first frame is decoded here, so a file that FFmpeg opens but that
        is not a video (text, a still image, audio only), or a video without frames, is a ``ValueError`` naming
        it before any work starts."""
        av = _av()
        path = os.fspath(path)
        if os.path.isdir(path):
            raise ValueError(f"{path}: a directory, not a video file")
        if not os.path.exists(path):
            raise ValueError(f"{path}: no such file or directory")
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            raise ValueError(f"{path}: an empty file (0 bytes)")
        container = _open_logged(av, path)
        try:
            kind = container.format.name
            if kind == "tty":
                raise ValueError(f"{path}: not a video (FFmpeg reads it as a text file)")
            if kind in IMAGE_FORMATS or kind.endswith("_pipe"):
                raise ValueError(f"{path}: a still image, not a video")
            if not container.streams:
                raise ValueError(f"{path}: contains no streams (a zero-length video?)")
            if not container.streams.video:
                other = sorted({s.type for s in container.streams})
                raise ValueError(f"{path}: has no video stream (only {', '.join(other)})")
            source = cls(path, container)
            source._frames = source._decode()
            source._first = next(source._frames, None)
            if source._first is None:
                raise ValueError(f"{path}: " + (f"no frame can be decoded ({source.stop_reason})" if source.stop_reason
                                                else "a zero-length video (its video stream has no frames)"))
            source.height, source.width = source._first[0].shape[:2]
            return source
        except BaseException:
            container.close()
            raise

    @classmethod
    def camera(cls, index):
        """The V4L2 camera ``/dev/video<index>`` (Linux), as a live source; an ``OSError`` saying so where there is
        none or it cannot be opened."""
        av = _av()
        device = f"/dev/video{index}"
        try:
            container = av.open(device, format="v4l2")
        except av.error.FFmpegError as e:
            if isinstance(e, FileNotFoundError):
                raise OSError(e.errno, f"camera {index}: {device} does not exist (no camera connected, or no "
                                       "V4L2 driver for it)") from None
            raise OSError(e.errno, f"camera {index}: {device} cannot be opened as a V4L2 camera ({e.strerror})") \
                from None
        if not container.streams.video:
            container.close()
            raise OSError(f"camera {index}: {device} delivers no video")
        return cls(device, container, live=True)

    def close(self):
        self._stop.set()
        if self._ahead is not None:
            self._ahead.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            if self._thread.is_alive():  # blocked in the device: closing now could free what it is reading into
                return
        self.container.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- reading --------------------------------------------------------------------------------------------------

    def _convert(self, frame):
        """``(upright RGB array, seconds since the first frame)`` of a decoded frame."""
        rgb = frame.to_ndarray(format="rgb24", threads=1)  # FFmpeg's own threads only slow a busy small CPU down
        if self._t0 is None:
            self.rotation = round((frame.rotation or 0) / 90) % 4 * 90
        if self.rotation:
            rgb = np.ascontiguousarray(np.rot90(rgb, k=self.rotation // 90))
        t = frame.time
        if t is None:  # no timestamp: its place at the declared rate
            t = (self._t0 or 0.0) + self._count / float(self.rate)
        if self._t0 is None:
            self._t0 = t
        self._count += 1
        return rgb, t - self._t0

    def _decode(self):
        """Decoded frames until the end, or until the stream breaks (then ``stop_reason`` says how)."""
        av = _av()
        stream = self.stream
        try:
            for packet in self.container.demux(stream):
                if self._stop.is_set():
                    return
                for frame in stream.decode(packet):
                    yield self._convert(frame)
        except av.error.FFmpegError as e:
            if self.live and isinstance(e, OSError) and e.errno in (19, 5):  # ENODEV, EIO
                self.stop_reason = f"the camera stopped delivering frames ({e.strerror}: unplugged?)"
            else:
                self.stop_reason = f"the input is damaged or truncated: FFmpeg: {_reason(e)}"
            try:  # frames the decoder still holds (reordering) are whole: keep them
                for frame in stream.decode(None):
                    yield self._convert(frame)
            except av.error.FFmpegError:
                pass

    def __iter__(self):
        if self._frames is None:
            self._frames = self._decode()
        if self._first is not None:  # decoded by open() to check the file
            first, self._first = self._first, None
            yield first
        yield from self._frames

    def batches(self, size, stop=lambda: False):
        """Lists of up to ``size`` ``(rgb, seconds)`` until the input ends or ``stop()`` is true, read in a thread.
        A file is decoded up to a batch ahead; for a live source each batch is the newest frames (older ones are
        dropped, counted in ``dropped``)."""
        if not self.live:
            batch = []
            # Decoded in a thread, a batch ahead of the consumer; close() stops it before closing the container.
            self._ahead = pipeline.Ahead(self, depth=size, name=f"decode {self.name}")
            with self._ahead as frames:
                for item in frames:
                    batch.append(item)
                    if len(batch) == size:
                        yield batch
                        batch = []
                        if stop():
                            return
            if batch:
                yield batch
            return
        newest = collections.deque(maxlen=size)
        ready, ended = threading.Condition(), []

        def read():
            try:
                for item in self:
                    with ready:
                        self.dropped += len(newest) == newest.maxlen
                        newest.append(item)
                        ready.notify()
            except Exception as e:  # noqa: BLE001  (reported as the reason the camera stopped)
                self.stop_reason = f"reading the camera failed ({e})"
            finally:
                with ready:
                    ended.append(True)
                    ready.notify()

        self._thread = threading.Thread(target=read, name=f"read {self.name}", daemon=True)
        self._thread.start()
        while not stop():
            with ready:
                while not newest and not ended and not stop():
                    ready.wait(0.2)
                batch = list(newest)
                newest.clear()
            if batch:
                yield batch
            elif ended:
                return
        self._stop.set()


def _open_logged(av, path):
    """``av.open(path)`` with FFmpeg's error log captured, so that the error names the cause ("moov atom not
    found"); a ``ValueError``/``OSError`` naming the file."""
    level = av.logging.get_level()
    av.logging.set_level(av.logging.ERROR)
    try:
        with av.logging.Capture():  # kept for the exception, not printed
            return av.open(path)
    except av.error.EOFError:
        raise ValueError(f"{path}: empty or truncated before its first frame (FFmpeg: end of file)") from None
    except av.error.FFmpegError as e:
        if isinstance(e, OSError) and not isinstance(e, av.error.InvalidDataError):
            raise OSError(e.errno, f"{path}: cannot be read ({e.strerror})") from None
        if "moov atom not found" in _reason(e):
            raise ValueError(f"{path}: an unfinished MP4 (FFmpeg: moov atom not found): its index was never "
                             "written, as when a recording was cut off or is still going on") from None
        raise ValueError(f"{path}: not a video FFmpeg can read, or a damaged one (FFmpeg: {_reason(e)})") from None
    finally:
        av.logging.set_level(level)


class VideoWriter:
    """An H.264 MP4 of ``width`` x ``height`` RGB frames, each written at its own time in seconds.

    Timestamps are kept in ``time_base`` (the input's: its timing is reproduced exactly); a frame whose time is not
    after the previous one's is placed one frame period later. ``rate`` is the declared frame rate. 4:2:0 chroma
    (what every player decodes) for even sizes, 4:4:4 for odd ones, which 4:2:0 cannot have. ``fragmented``: see
    the module docstring. ``path`` may have any name (temporaries have no extension): the container is MP4.
    """

    def __init__(self, path, width, height, rate, time_base=None, fragmented=False):
        av = _av()
        self.rate = Fraction(rate) if rate else DEFAULT_RATE
        self.time_base = Fraction(time_base) if time_base else 1 / self.rate
        self.period = max(1, round(1 / (self.rate * self.time_base)))  # one frame, in time_base units
        self.container = av.open(os.fspath(path), "w", format="mp4", options=FRAGMENTED if fragmented else FASTSTART)
        try:
            stream = self.container.add_stream(ENCODER["codec"], rate=self.rate)
            stream.width, stream.height = width, height
            stream.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
            stream.options = {k: v for k, v in ENCODER.items() if k != "codec"}
            if fragmented:  # no look-ahead: frames reach the file (see FRAGMENTED) as they are written
                stream.options = dict(stream.options, tune="zerolatency")
            cc = stream.codec_context
            cc.time_base = stream.time_base = self.time_base
            # Converted with BT.601 and tagged so: untagged, players assume BT.709 for HD sizes and shift colours.
            cc.colorspace = cc.color_primaries = cc.color_trc = 6  # SMPTE 170M (BT.601)
            cc.color_range = 1  # limited (MPEG) range
        except BaseException:
            self.container.close()
            raise
        self.stream, self.width, self.height, self.last_pts, self.frames = stream, width, height, None, 0

    def write(self, rgb, seconds):
        av = _av()
        pts = round(seconds / self.time_base)
        if self.last_pts is not None and pts <= self.last_pts:
            pts = self.last_pts + self.period
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(
            width=self.width, height=self.height, format=self.stream.pix_fmt, dst_colorspace="itu601",
            dst_color_range="MPEG", threads=1)
        frame.pts, frame.time_base = pts, self.time_base
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.last_pts = pts
        self.frames += 1

    def close(self):
        """Flush the encoder and finish the file (raises on a write error: a full disk...)."""
        for packet in self.stream.encode(None):
            self.container.mux(packet)
        self.container.close()

    def abort(self):
        """Release the file without caring whether it is complete (it is about to be removed)."""
        try:
            self.container.close()
        except Exception:  # noqa: BLE001  (a write error is why we abort)
            pass


class VideoResult:
    """What :func:`process_video` did: ``frames`` written, ``detections`` in them, ``seconds`` taken, and
    ``stop_reason`` (None: the input ended normally), ``dropped`` (live sources), the output paths."""

    def __init__(self, source, frames, detections, seconds, stop_reason, video_path, jsonl_path):
        self.name, self.frames, self.detections, self.seconds = source.name, frames, detections, seconds
        self.stop_reason, self.dropped, self.total = stop_reason, source.dropped, source.total
        self.video_path, self.jsonl_path = video_path, jsonl_path

    def __str__(self):
        rate = self.frames / self.seconds if self.seconds > 0 else 0.0
        dropped = f", {self.dropped} camera frames skipped while busy" if self.dropped else ""
        outputs = f"{self.video_path} and {self.jsonl_path}"
        if self.stop_reason:
            return (f"{self.name}: stopped after {self.frames} frame{'s' * (self.frames != 1)} ({self.stop_reason}); "
                    f"{outputs} hold those frames ({self.detections} detections, {rate:.2f} frames/s{dropped})")
        return (f"{self.name}: {self.frames} frames, {self.detections} detections, {rate:.2f} frames/s{dropped} -> "
                f"{outputs}")


def _frame_records(batch, detections, video, first, fields):
    """The JSON lines of a batch of ``(rgb, seconds)`` frames, numbered from ``first``."""
    return [{"video": video, "frame": first + i, "time": round(seconds, 6), "width": rgb.shape[1],
             "height": rgb.shape[0], **fields, "detections": dets}
            for i, ((rgb, seconds), dets) in enumerate(zip(batch, detections))]


class NoFrames(ValueError):
    """The input gave no frame at all: nothing is written."""


def process_video(source, detect, to_records, draw, video_path, jsonl_path, batch_size=4, fields=None, stop=None,
                  progress=True):
    """Detect objects in every frame of ``source`` (a :class:`VideoSource`), ``batch_size`` frames per ``detect``
    call; write the annotated video to ``video_path`` and one JSON line per frame to ``jsonl_path``.

    Args:
        detect: list of ``[H, W, 3]`` uint8 RGB arrays -> one output per frame.
        to_records: one output -> list of JSON-able detections (dicts).
        draw: ``(PIL RGB image, detections)`` -> the annotated PIL image.
        fields: extra keys for every JSON line (e.g. the score threshold).
        stop: a callable, true when a stop was requested (:class:`cv.detection.utils.cli.StopRequest`); checked
            between batches, its ``name`` attribute (if any) is given as the reason.
        progress: a progress bar on stderr (frames done, frames per second, time left when the length is known).

    Each JSON line: ``{"video", "frame", "time", "width", "height", **fields, "detections"}``: the frame's index in
    the written video, its time in seconds since the first frame, the upright size. Both files appear at their
    final paths only when complete; if the input ends early they hold every frame processed until then, and the
    result's ``stop_reason`` says why. :class:`NoFrames` (a ValueError) if there was not a single frame.
    """
    from tqdm import tqdm

    stop = stop or (lambda: False)
    fields = dict(fields or {})
    name = source.name if source.live else os.path.abspath(source.name)
    tty = getattr(sys.stderr, "isatty", lambda: False)()
    start = time.perf_counter()
    frames = detections = 0
    writer = None
    with fileio.atomic_path(video_path) as video_tmp, fileio.atomic_path(jsonl_path) as jsonl_tmp, \
            open(jsonl_tmp, "w") as lines, \
            tqdm(total=source.total, desc=os.path.basename(source.name), unit="frame", file=sys.stderr,
                 disable=not progress, mininterval=0.5 if tty else 10, dynamic_ncols=True) as bar:

        def write(batch, records):  # in the drawing thread, a batch behind the detector
            for (rgb, seconds), record in zip(batch, records):
                lines.write(json.dumps(record) + "\n")
                writer.write(np.asarray(draw(Image.fromarray(rgb), record["detections"])), seconds)
            lines.flush()
            bar.update(len(batch))

        try:
            with pipeline.Behind(depth=1, name="draw and encode") as behind:
                for batch in source.batches(batch_size, stop):
                    outputs = detect([rgb for rgb, _ in batch])
                    if writer is None:  # sized by the first frame (upright); any other size is scaled to it
                        height, width = batch[0][0].shape[:2]
                        writer = VideoWriter(video_tmp, width, height, source.rate, source.time_base,
                                             fragmented=source.live)
                    records = _frame_records(batch, [to_records(out) for out in outputs], name, frames, fields)
                    frames += len(records)
                    detections += sum(len(r["detections"]) for r in records)
                    behind.submit(write, batch, records)
                    cli.pause_point("video:batch")
            if frames == 0:
                raise NoFrames(f"{source.name}: no frame was read" + (f" ({source.stop_reason})"
                                                                      if source.stop_reason else ""))
            writer.close()
        except BaseException:
            if writer is not None:  # the drawing thread has ended (leaving Behind waits for it)
                writer.abort()
            raise
    reason = source.stop_reason
    if stop():
        name = getattr(stop, "name", None)
        reason = f"{name} received" if name else "a stop was requested"
    return VideoResult(source, frames, detections, time.perf_counter() - start, reason, os.path.abspath(video_path),
                       os.path.abspath(jsonl_path))
