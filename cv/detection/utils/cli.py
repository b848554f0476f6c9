"""What the command-line programs share: argument checks at parse time, and ending in one line, not a traceback.

:func:`run` is every program's entry point. Errors a user can act on (a bad flag, an unreadable file, a damaged
checkpoint, a full disk, an output directory in use...) are raised as ``ValueError`` or ``OSError`` (or a subclass)
with a message that names the file, image id or flag; :func:`run` prints that message as the last line,
``error: ...``, and exits with status 1. An error raised inside a DataLoader worker reaches the main process
wrapped in the worker's traceback; only its final line, the original message, is shown. Any other exception is a
bug: its traceback is printed, then the one-line summary. ``CV_TRACEBACK=1`` prints tracebacks for every error.

Under :mod:`cv.detection.engine.launch`, each process also writes its error line to ``$CV_ERROR_FILE`` so that the
launcher can repeat the first failure as the last line of the whole run.
"""
import argparse
import json
import os
import signal
import sys
import tempfile
import traceback

# Exit status of a run stopped by a signal (SIGINT/SIGTERM): 128 + the signal, as a shell reports a process killed
# by it, so schedulers see a non-zero, recognisable status.
EXIT_INTERRUPTED = {2: 130, 15: 143}


class UserError(Exception):
    """An error whose message says everything the user needs (raise it where no ValueError/OSError fits)."""


class Interrupted(Exception):
    """A run stopped on a signal after saving what it could: ``str(self)`` says what was kept and how to go on;
    :func:`run` exits with 128 + ``signum``."""

    def __init__(self, signum, message):
        super().__init__(message)
        self.signum = signum or 15


class StopRequest:
    """SIGINT (Ctrl-C) and SIGTERM (a scheduler's preemption) as a request to stop at the program's next safe point,
    where it keeps what it has done; a second Ctrl-C stops at once (``KeyboardInterrupt``). ``action`` says what
    the program will do, once, from the first process of a run only.

    A context manager for the main thread (installed before DataLoader workers start: they set their own
    handlers); it restores the previous handlers. ``stop()`` or ``stop.requested`` tell whether a stop was asked.
    """

    def __init__(self, action):
        self.action, self.signum, self._previous = action, None, {}

    def __enter__(self):
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.signum is None and os.environ.get("RANK", "0") in ("0", "-1"):
            print(f"\n{signal.Signals(signum).name} received: {self.action} (Ctrl-C again to stop at once)",
                  file=sys.stderr, flush=True)
        self.signum = signum

    @property
    def requested(self):
        return self.signum is not None

    __call__ = requested.fget

    @property
    def name(self):
        """The signal's name; SIGTERM where another process of the run received the request."""
        return signal.Signals(self.signum or signal.SIGTERM).name


def one_line(exc):
    """The user-facing message of ``exc``: for an exception re-raised from a DataLoader worker, the original
    message (the last line of the worker's traceback) rather than the traceback; whitespace collapsed."""
    text = str(exc).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        name, _, message = last.partition(": ")
        text = message if message and name.replace(".", "").replace("_", "").isalnum() else last
    if isinstance(exc, OSError) and exc.strerror and text.startswith("[Errno"):  # "[Errno 28] ...: '/x'" as
        text = exc.strerror + (f": {exc.filename}" if exc.filename else "")  # "No space left on device: /x"
    elif isinstance(exc, OSError) and exc.filename and str(exc.filename) not in text:
        text += f": {exc.filename}"
    return " ".join(text.split())


def _report(message, prefix="error"):
    line = f"{prefix}: {message}"
    print(line, file=sys.stderr, flush=True)
    path = os.environ.get("CV_ERROR_FILE")
    if path:
        try:
            with open(path, "w") as f:
                f.write(line + "\n")
        except OSError:
            pass


def run(main, parser, argv=None):
    """Parse ``argv`` with ``parser``, call ``main(args)`` and exit: 0 on success, 1 after an error (one line, see
    the module docstring), 128 + the signal after an interruption (130 for Ctrl-C, 143 for SIGTERM). A flag that
    argparse refuses exits with its status 2, after the usage and one line ``error: argument --flag: ...``."""
    def refuse(message):  # argparse's own "prog: error: ..." would never reach the launcher's last line
        parser.print_usage(sys.stderr)
        _report(message)
        sys.exit(2)

    parser.error = refuse
    args = parser.parse_args(argv)
    debug = os.environ.get("CV_TRACEBACK") == "1"
    try:
        main(args)
    except Interrupted as e:
        _report(str(e), prefix="stopped")
        sys.exit(128 + e.signum)
    except KeyboardInterrupt:
        _report("interrupted")
        sys.exit(EXIT_INTERRUPTED[2])
    except (ValueError, OSError, UserError, RuntimeError) as e:
        # RuntimeError: our own (DownloadError, NonFiniteLossError, DirectoryInUseError...) and OneFlow's, whose
        # messages are what the user needs; a bug in our code rarely raises one.
        if debug:
            traceback.print_exc()
        _report(one_line(e))
        sys.exit(1)
    except Exception as e:  # a bug: keep the traceback for the report, end with one line anyway
        traceback.print_exc()
        _report(f"internal error ({type(e).__name__}: {one_line(e)}); please report it with the traceback above")
        sys.exit(1)
    sys.exit(0)


# --- argument types: bad values are refused by argparse, naming the flag -------------------------------------------

def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def nonnegative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def positive_float(text):
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def nonnegative_float(text):
    value = float(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def fraction(text):
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def writable_dir(path, flag):
    """Create ``path`` if needed and check that files can be created in it; ValueError naming ``flag`` if not."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{flag} {path} is a file, not a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{flag} {path} cannot be created ({e.strerror})") from None
    try:  # a real write: permissions, a read-only file system and a full disk all show up here
        with tempfile.TemporaryFile(dir=path) as f:
            f.write(b"x")
            f.flush()
    except OSError as e:
        raise ValueError(f"{flag} {path} is not writable ({e.strerror})") from None
    return path


# --- test hooks --------------------------------------------------------------------------------------------------

def pause_point(step):
    """Where a program reaches ``step`` (e.g. ``publish:switched``, ``video:batch``, ``train:step``): if
    ``$CV_PAUSE_AT`` (comma-separated) names it, the process stops itself there (SIGSTOP), so that a test can look at
    its outputs at that very point, then kill it, signal it, or let it go on (SIGCONT): events instead of sleeps,
    whatever the machine's speed. The message names the process, which need not be the test's child (a training
    process under the launcher). Nothing happens otherwise."""
    if step in os.environ.get("CV_PAUSE_AT", "").split(","):
        print(f"paused at {step} (pid {os.getpid()})", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGSTOP)


def trace(event, **values):
    """If ``$CV_TRACE_DIR`` names a directory, append ``{"event": event, **values}`` as a JSON line to this process's
    file there (``rank<RANK>.jsonl``), so that a test can compare what two runs did step by step (which images each
    training step read, before and after a resume). Nothing happens otherwise."""
    directory = os.environ.get("CV_TRACE_DIR")
    if directory:
        with open(os.path.join(directory, f"rank{os.environ.get('RANK', '0')}.jsonl"), "a") as f:
            f.write(json.dumps({"event": event, **values}) + "\n")
