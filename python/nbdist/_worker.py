"""What runs inside every rank: set up the rank, call ``fn(*args, **kwargs)``, send the outcome.

The outcome travels on its own pipe (never on stdout): one byte (``R`` result, ``E`` exception),
the rank's CLOCK_MONOTONIC time as a little-endian double (the supervisor uses it to find the rank
that failed first), the payload's length (u64), then the cloudpickle payload. The length lets the
supervisor (csrc/launch/supervisor.cc, which reads this header too) tell a complete exception from
one still arriving, so that a failure is reported before the rank has exited but never half-read.

``python -m nbdist._worker PAYLOAD`` is the ``spawn`` start method: it reads the cloudpickled
payload file written by the launcher. The ``fork`` and ``zygote`` methods call :func:`run_rank`
in a forked child instead.
"""

from __future__ import annotations

import faulthandler
import io
import os
import signal
import struct
import sys
import time
import traceback

RESULT = b"R"
EXCEPTION = b"E"
HEADER = struct.Struct("<cdQ")


def setup_rank(fresh_streams: bool, stream_handlers: list | None = None) -> None:
    """Signals and streams of a rank. ``fresh_streams``: replace sys.stdout/stderr (a forked
    child of a Jupyter kernel would otherwise write into the kernel's ZMQ streams);
    ``stream_handlers``: the parent's logging handlers on those streams (found by
    :func:`stream_handlers` before fork, where it is cheap) to point at the new ones."""
    if fresh_streams:
        old_out, old_err = sys.stdout, sys.stderr
        sys.stdout = io.TextIOWrapper(
            io.FileIO(1, "w", closefd=False), encoding="utf-8", errors="backslashreplace",
            line_buffering=True,
        )
        sys.stderr = io.TextIOWrapper(
            io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="backslashreplace",
            line_buffering=True,
        )
        sys.__stdout__, sys.__stderr__ = sys.stdout, sys.stderr
        if stream_handlers is None:
            stream_handlers = _stream_handlers(old_out, old_err)
        for handler, which in stream_handlers:
            handler.stream = sys.stdout if which == 1 else sys.stderr
    else:
        # Pipes make Python block-buffer stdout: lines would reach the cell only at exit.
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.reconfigure(line_buffering=True)
            except (AttributeError, ValueError):
                pass
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # A crash prints the Python stack; SIGUSR2 (sent on timeout) prints every thread's stack.
    faulthandler.enable(file=sys.stderr, all_threads=True)
    faulthandler.register(signal.SIGUSR2, file=sys.stderr, all_threads=True, chain=False)


def _stream_handlers(out=None, err=None) -> list:
    """(handler, 1 or 2) for every logging StreamHandler writing to sys.stdout / sys.stderr.
    Called in the parent before fork: walking every logger in a forked child costs copy-on-write
    faults (a millisecond with torch's loggers)."""
    logging = sys.modules.get("logging")
    if logging is None:
        return []
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    found = []
    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    for lg in loggers:
        for h in lg.handlers:
            stream = getattr(h, "stream", None)
            if isinstance(h, logging.StreamHandler) and stream is not None:
                if stream is out:
                    found.append((h, 1))
                elif stream is err:
                    found.append((h, 2))
    return found


stream_handlers = _stream_handlers


def _send(fd: int, kind: bytes, payload: bytes) -> None:
    data = HEADER.pack(kind, time.monotonic(), len(payload)) + payload
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    try:
        return f"{cls.__module__}.{cls.__qualname__}".removeprefix("builtins.")
    except BaseException:
        return object.__repr__(cls)


def _describe_failure(what: str, err: BaseException) -> str:
    """``<what failed: ErrType>`` without calling anything of ``err`` but its type's name (its
    str() may be the very thing that raises)."""
    try:
        name = type(err).__qualname__
    except BaseException:
        name = "?"
    return f"<{what} failed: {name}>"


def safe_str(exc: BaseException) -> str:
    """str(exc); user exceptions may raise in __str__ (or return a non-str)."""
    try:
        text = str(exc)
        if isinstance(text, str):
            return text
    except BaseException as err:
        return _describe_failure(f"str() of the {_type_name(exc)}", err)
    return f"<str() of the {_type_name(exc)} returned a non-str>"


def format_exception(exc: BaseException) -> str:
    """The traceback text of ``exc``, whatever its __str__/__repr__ do: at worst the stack
    without the message, and always the exception's type."""
    try:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        if isinstance(text, str):
            return text
    except BaseException as err:
        failure = _describe_failure("formatting the exception", err)
    else:
        failure = "<formatting the exception returned a non-str>"
    try:
        stack = "".join(traceback.format_tb(exc.__traceback__))
    except BaseException as err:
        stack = _describe_failure("formatting the stack", err) + "\n"
    return (f"Traceback (most recent call last):\n{stack}"
            f"{_type_name(exc)}: {safe_str(exc)} {failure}\n")


def _exception_payload(exc: BaseException, formatted: str, exit_code: int) -> bytes:
    """``exit_code``: what the rank is about to exit with, so that the launcher can report the
    failure before the process is gone (tearing down a CUDA context takes a while). Never
    raises for a strange exception (a __str__ that raises, an unpicklable one): its type and
    traceback always get through."""
    from . import _pickle

    info = {
        "type": _type_name(exc),
        "message": safe_str(exc),
        "traceback": formatted,
        "exception": None,
        "exit_code": exit_code,
    }
    try:
        info["exception"] = _pickle.dumps(exc)
    except BaseException:  # an unpicklable exception still reports its type, message, traceback
        pass
    try:
        return _pickle.dumps(info)
    except BaseException:
        import pickle

        info["exception"] = None
        return pickle.dumps(info)


def set_torch_threads(after_fork_of_caller: bool) -> None:
    """torch reads OMP_NUM_THREADS once, at import: a rank that starts with torch already imported
    gets the launcher's count here. A rank forked from the caller's process (which may have run
    torch's OpenMP pool) gets 1: libgomp keeps its pool's state across fork but not its threads,
    and the first parallel region with more than one thread deadlocks. The zygote never runs
    torch work, so its ranks can have more."""
    torch = sys.modules.get("torch")
    if torch is None:
        return
    if after_fork_of_caller:
        torch.set_num_threads(1)
        return
    count = os.environ.get("OMP_NUM_THREADS", "")
    if count.isdigit() and int(count) > 0:
        torch.set_num_threads(int(count))


def _exit_code_is_success(code) -> bool:
    """sys.exit(None) / sys.exit(0): the rank succeeded (with None). Any object may be the code:
    its == must not break the report."""
    try:
        return code is None or bool(code == 0)
    except BaseException:
        return False


def exit_status(code: int) -> int:
    """What a rank that failed with ``sys.exit(code)`` exits with: the low byte, as the OS keeps
    it (-1 -> 255), except that a failure never reads as success (256 -> 1, where Python's own
    exit would give 0)."""
    return (code & 0xFF) or 1


def report_unexpected(exc: BaseException) -> None:
    """Last resort of a forked rank whose reporting itself failed: the traceback to fd 2 (the
    log), never raising."""
    try:
        text = "nbdist: the rank failed while reporting its outcome:\n" + format_exception(exc)
        os.write(2, text.encode("utf-8", "backslashreplace"))
    except BaseException:
        pass


def run_rank(fn, args, kwargs, result_fd: int) -> int:
    """Calls fn and sends its outcome; returns the exit code for the rank."""
    from . import _pickle

    code = 0
    formatted = ""
    try:
        value = fn(*args, **(kwargs or {}))
        try:
            payload = _pickle.dumps(value)
        except Exception as exc:
            raise TypeError(
                f"the return value of {getattr(fn, '__name__', 'fn')!r} "
                f"({type(value).__name__}) cannot be pickled: {safe_str(exc)}"
            ) from exc
        kind = RESULT
    except SystemExit as exc:
        if _exit_code_is_success(exc.code):
            kind, payload = RESULT, _pickle.dumps(None)
        else:
            formatted = format_exception(exc)
            code = exit_status(exc.code) if isinstance(exc.code, int) else 1
            kind, payload = EXCEPTION, _exception_payload(exc, formatted, code)
    except BaseException as exc:  # KeyboardInterrupt in a rank is a failure like any other
        formatted = format_exception(exc)
        kind, payload = EXCEPTION, _exception_payload(exc, formatted, 1)
        code = 1
    # The outcome goes first: the supervisor starts tearing the other ranks down on an exception
    # as soon as it arrives. The traceback then goes to stderr for the logs.
    try:
        sys.stdout.flush()
    except Exception:
        pass
    try:
        _send(result_fd, kind, payload)
    except OSError:
        code = code or 1
    try:
        if formatted:
            sys.stderr.write(formatted)
        sys.stderr.flush()
    except Exception:
        pass
    return code


def report_start_failure(exc: BaseException, result_fd: int) -> int:
    """A rank failed before fn ran (its set-up, unpickling the payload): send the exception like
    one raised by fn, and write the traceback straight to fd 2 (sys.stderr may be the broken
    part). Returns the exit code."""
    formatted = "nbdist: the rank failed before calling fn:\n" + format_exception(exc)
    try:
        _send(result_fd, EXCEPTION, _exception_payload(exc, formatted, 1))
    except Exception:
        pass
    try:
        os.write(2, formatted.encode("utf-8", "backslashreplace"))
    except OSError:
        pass
    return 1


def decode_outcome(data: bytes):
    """(kind, monotonic time, payload object) of a rank's result pipe; None when it is empty or
    cut short (the rank died while sending)."""
    import cloudpickle

    if len(data) < HEADER.size:
        return None
    kind, when, size = HEADER.unpack_from(data)
    if len(data) < HEADER.size + size:
        return None
    try:
        return kind, when, cloudpickle.loads(data[HEADER.size:HEADER.size + size])
    except Exception as exc:
        if kind == EXCEPTION:
            return kind, when, {"type": "unknown", "message": f"(undecodable: {exc})",
                                "traceback": "", "exception": None}
        raise


def run_payload(path: str, result_fd: int) -> int:
    import cloudpickle

    try:
        with open(path, "rb") as f:
            payload = cloudpickle.loads(f.read())
    except BaseException as exc:  # e.g. fn's module does not import here
        return report_start_failure(exc, result_fd)
    return run_rank(payload["fn"], payload["args"], payload["kwargs"], result_fd)


def load_sys_path(path: str) -> None:
    """Puts the launcher's sys.path in front so that its modules import here too."""
    import pickle

    with open(path + ".path", "rb") as f:
        entries = pickle.load(f)
    sys.path[:0] = [p for p in entries if p not in sys.path]


def main() -> None:
    setup_rank(fresh_streams=False)
    path = sys.argv[1]
    load_sys_path(path)
    result_fd = int(os.environ.get("NBDIST_RESULT_FD", "3"))
    code = run_payload(path, result_fd)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
