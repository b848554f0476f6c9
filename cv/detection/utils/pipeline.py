"""Overlapping the stages of a per-item loop with threads, in the items' order (standard library only).

``infer.sh`` reads and decodes an image (or a video frame), runs the network on it, then draws and writes the
result. Done in line, each stage waits for the others. Pillow's decoding and encoding, FFmpeg's, file writes and
fsync, and the network (ONNX Runtime, OneFlow) release the GIL for most of their time, so threads let them overlap
without a process per item:

- :class:`Ahead` iterates an iterable in a background thread, a bounded number of items ahead of its consumer
  (decoding the next images while the network runs);
- :class:`Behind` runs calls in one background thread, in the order they were submitted, a bounded number behind
  the submitter (drawing and writing the last results while the network runs).

What this gains is the time a core would otherwise wait: where the network already keeps every core busy (ONNX
Runtime on a small, loaded CPU), the threads only share the cores with it.

Both keep the order, hold at most ``depth`` items (memory stays bounded), and re-raise a background exception in
the consumer's thread: the same exception object, so that it ends a program with the same one line as if the work
had been done in line. Leaving either (its ``with`` block, or :meth:`Ahead.close`) stops its thread before going on,
so no background work outlives the loop that started it: nothing is left writing when a program ends.
"""
import collections
import queue
import threading
from concurrent.futures import CancelledError, ThreadPoolExecutor

_END = object()


class Ahead:
    """Iterate ``iterable`` in a background thread, at most ``depth`` items ahead of the consumer.

    Yields the same items in the same order. An exception raised by the iterable is raised by ``next`` at its
    place in the sequence, after the items before it. :meth:`close` (also on leaving a ``with`` block) stops the
    thread and waits for it: once the item being produced is done, no more are produced.
    """

    def __init__(self, iterable, depth=2, name="ahead"):
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self._items, self._stop = queue.Queue(maxsize=depth), threading.Event()
        self._done = False
        self.thread = threading.Thread(target=self._fill, args=(iterable,), name=name, daemon=True)
        self.thread.start()

    def _fill(self, iterable):
        try:
            for item in iterable:
                if not self._put((item, None)):
                    return
        except BaseException as e:  # noqa: BLE001  (handed to the consumer, who raises it)
            self._put((_END, e))
            return
        self._put((_END, None))

    def _put(self, entry):
        """Queue ``entry`` unless a close is requested meanwhile (then False)."""
        while not self._stop.is_set():
            try:
                self._items.put(entry, timeout=0.05)  # a bounded wait: close() is noticed while the queue is full
                return True
            except queue.Full:
                pass
        return False

    def __iter__(self):
        return self

    def __next__(self):
        if self._done:
            raise StopIteration
        item, error = self._items.get()
        if item is _END:
            self._done = True
            self.thread.join()
            if error is not None:
                raise error
            raise StopIteration
        return item

    def close(self):
        """Stop producing and wait for the thread to end (it finishes the item it is producing)."""
        self._done = True
        self._stop.set()
        self.thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Behind:
    """Run calls in one background thread, in the order submitted, at most ``depth`` of them pending.

    :meth:`submit` returns at once unless ``depth`` calls are pending; it raises the exception of an earlier call
    that failed, and after a failure no later call runs (as a loop doing the work in line would have stopped).
    Leaving the ``with`` block waits for the pending calls, as in line they would have been done before the block
    ended: normally, a failure among them is raised; with an exception (Ctrl-C included), that exception goes on.
    """

    def __init__(self, depth=2, name="behind"):
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self.depth = depth
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._pending = collections.deque()
        self._failed = threading.Event()

    def _call(self, fn, args):
        if self._failed.is_set():
            raise CancelledError
        try:
            return fn(*args)
        except BaseException:
            self._failed.set()
            raise

    def submit(self, fn, *args):
        """Queue ``fn(*args)`` after the calls submitted before it."""
        self._pending.append(self._executor.submit(self._call, fn, args))
        while self._pending and (self._pending[0].done() or len(self._pending) > self.depth):
            self._result(self._pending.popleft())

    def finish(self):
        """Wait for every pending call, raising the first failure."""
        while self._pending:
            self._result(self._pending.popleft())

    @staticmethod
    def _result(future):
        try:
            future.result()
        except CancelledError:  # dropped after an earlier failure, which was raised first
            pass

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        try:
            self.finish()
        except Exception:
            if kind is None:
                raise  # else the exception that ended the block comes first
        finally:
            self._failed.set()  # only left queued by a second Ctrl-C during finish(): dropped
            self._executor.shutdown(wait=True, cancel_futures=True)
