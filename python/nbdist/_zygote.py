"""The zygote: a clean, pre-started interpreter with torch imported that forks ranks on demand.

Started once per kernel (``python -m nbdist._zygote``, fd 3 a SOCK_SEQPACKET socket to the
kernel) and kept warm, it never runs user code itself: each request carries the rank's pipe ends
(SCM_RIGHTS) and a payload file, the zygote forks, and the child unpickles and runs the payload.
Because the zygote never touched CUDA, ranks forked from it may use CUDA even after the kernel did.

The kernel's supervisor watches the ranks' pipes directly; the zygote reaps each rank (sweeping
its process group first) and writes the wait status into the rank's status pipe. The zygote dies
with the kernel (PR_SET_PDEATHSIG), and its ranks die with it.
"""

from __future__ import annotations

import atexit
import os
import pickle
import selectors
import signal
import socket
import struct
import sys
import threading

MAX_MESSAGE = 1 << 20


def _serve(sock: socket.socket) -> None:
    from nbdist import _core, _worker

    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ, None)
    children: dict[int, tuple[int, int]] = {}  # pidfd -> (pid, status_w)
    while True:
        for key, _ in sel.select():
            if key.data is None:
                try:
                    msg, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE, 8)
                except OSError:
                    os._exit(0)
                if not msg:
                    os._exit(0)  # the kernel closed the socket
                req = pickle.loads(msg)
                out_w, err_w, res_w, status_w, track_w = fds
                keep_open = [st for _, st in children.values()] + list(children)
                try:
                    # track_w: the kernel's reaper pipe. The rank tracks its own group there
                    # before running anything, so its children die with the kernel even when
                    # the kernel dies before it has heard this pid.
                    pid = _core.launch.fork_interpreter(
                        [(out_w, 1), (err_w, 2)], [res_w],
                        [sock.fileno(), status_w, track_w, *keep_open, *_selector_fds(sel)],
                        signal.SIGKILL, track_w,
                    )
                except Exception as exc:  # report, never die: other jobs use this zygote
                    for fd in fds:
                        os.close(fd)
                    sock.send(pickle.dumps({"error": f"{type(exc).__name__}: {exc}"}))
                    continue
                if pid == 0:
                    code = 1
                    try:
                        try:
                            os.environ.clear()
                            os.environ.update(req["env"])
                            if req["cwd"]:
                                os.chdir(req["cwd"])
                            _worker.setup_rank(fresh_streams=True)
                            _worker.set_torch_threads(after_fork_of_caller=False)
                            _worker.load_sys_path(req["payload"])
                        except BaseException as exc:
                            code = _worker.report_start_failure(exc, res_w)
                            os._exit(code)
                        code = _worker.run_payload(req["payload"], res_w)
                        sys.stdout.flush()
                        sys.stderr.flush()
                    except BaseException as exc:
                        _worker.report_unexpected(exc)
                    finally:
                        os._exit(code if isinstance(code, int) else 1)
                for fd in (out_w, err_w, res_w, track_w):
                    os.close(fd)
                pidfd = os.pidfd_open(pid)
                children[pidfd] = (pid, status_w)
                sel.register(pidfd, selectors.EVENT_READ, pid)
                sock.send(pickle.dumps({"pid": pid}))
            else:
                pidfd = key.fd
                pid, status_w = children.pop(pidfd)
                sel.unregister(pidfd)
                try:
                    os.killpg(pid, signal.SIGKILL)  # grandchildren, while the zombie holds the id
                except OSError:
                    pass
                _, status = os.waitpid(pid, 0)
                try:
                    os.write(status_w, struct.pack("i", status))
                except OSError:
                    pass
                os.close(status_w)
                os.close(pidfd)


def _selector_fds(sel) -> list[int]:
    try:
        return [sel.fileno()]
    except (AttributeError, OSError):
        return []


def main() -> None:
    sock = socket.socket(fileno=3, family=socket.AF_UNIX, type=socket.SOCK_SEQPACKET)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    have_torch = False
    try:
        import torch  # noqa: F401  (the point of the zygote: ranks start with torch imported)
        import torch.distributed  # noqa: F401

        have_torch = True
    except ImportError:
        pass
    import cloudpickle  # noqa: F401

    from nbdist import _worker  # noqa: F401

    sock.send(pickle.dumps({"ready": True, "torch": have_torch, "pid": os.getpid()}))
    _serve(sock)


class Zygote:
    """The kernel's handle on its zygote process (one per kernel, started on first use)."""

    def __init__(self) -> None:
        from nbdist import _core

        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            env = [f"{k}={v}" for k, v in os.environ.items()]
            self.pid = _core.launch.spawn(
                [sys.executable, "-m", "nbdist._zygote"], env, os.getcwd(),
                [(child.fileno(), 3)], signal.SIGKILL, True,
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        self._sock = parent
        _core.launch.register_parent_fd(parent.fileno())
        self._lock = threading.Lock()
        self._owner = os.getpid()
        try:
            # Its start imports torch (seconds): Ctrl-C lands here most of all, and a zygote
            # left half-started would live as long as the kernel (the traceback keeps the socket).
            reply = self._recv()
            if not reply.get("ready"):
                raise RuntimeError(f"the zygote did not start: {reply}")
            self.has_torch = reply["torch"]
        except BaseException:
            self.close()
            raise

    def _recv(self) -> dict:
        msg = self._sock.recv(MAX_MESSAGE)
        if not msg:
            raise ConnectionError("the zygote exited")
        return pickle.loads(msg)

    def alive(self) -> bool:
        try:
            pid, _ = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            return False
        return pid == 0

    def fork_rank(self, payload: str, env: dict, cwd: str, fds: list[int]) -> int:
        with self._lock:
            socket.send_fds(
                self._sock, [pickle.dumps({"payload": payload, "env": env, "cwd": cwd})], fds
            )
            reply = self._recv()
        if "error" in reply:
            raise RuntimeError(f"the zygote could not fork a rank: {reply['error']}")
        return reply["pid"]

    def close(self) -> None:
        from nbdist import _core

        if os.getpid() != self._owner:
            return  # a forked child: the zygote belongs to the parent

        _core.launch.unregister_parent_fd(self._sock.fileno())
        self._sock.close()
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


_zygote: Zygote | None = None
_zygote_lock = threading.Lock()


def _after_fork_in_child() -> None:
    """A forked child does not own its parent's zygote (get_zygote starts its own) and must not
    inherit the lock held by some other thread of the parent. The old handle's socket is
    detached: fork_interpreter closes that descriptor in a rank, whose own files then reuse the
    number, and the handle, once dropped, must not close it again."""
    global _zygote, _zygote_lock
    _zygote_lock = threading.Lock()
    old, _zygote = _zygote, None
    if old is not None:
        try:
            old._sock.detach()
        except OSError:
            pass


os.register_at_fork(after_in_child=_after_fork_in_child)


@atexit.register
def _close_zygote() -> None:
    if _zygote is not None:
        _zygote.close()


def get_zygote() -> Zygote:
    """The kernel's zygote, started (or restarted, if it died) on demand."""
    global _zygote
    with _zygote_lock:
        if _zygote is None or not _zygote.alive():
            if _zygote is not None:
                _zygote.close()
            _zygote = Zygote()
        return _zygote


if __name__ == "__main__":
    main()
