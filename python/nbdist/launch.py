"""nbdist.launch: run a function in N ranks from a notebook cell, supervised by the C++ core.

Everything here is ergonomics: argument checks, defaults, the ranks' environment, the choice of
start method and the one preflight line that states those choices. Processes, pipes, the output
pump and the teardown live in C++ (``nbdist._core.launch``).
"""

from __future__ import annotations

import functools
import gc
import math
import os
import queue
import re
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import deque
from typing import Any, Callable

from ._errors import LaunchError, LaunchTimeoutError, LaunchValueError, WorkerError
from .job import Job

START_METHODS = ("auto", "fork", "spawn", "zygote")
DEFAULT_GRACE = 5.0
TAIL_LINES_IN_ERROR = 20

# (job id, pid) of every rank started by this process, newest last: for debugging and for the
# tests' check that no process of a job outlives it.
started_ranks: deque = deque(maxlen=4096)


def _core():
    from . import _core as core

    return core.launch


# -- GPUs, without initializing CUDA in this process ----------------------------------------------

@functools.cache
def _nvml_gpus():
    """(NVML library, device handles), initialised once per process and kept: nvmlInit costs
    milliseconds on VM hosts, and GPUs don't come and go under a running kernel. (None, []) when
    the driver library is absent or refuses to start."""
    import ctypes

    try:
        lib = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return None, []
    if lib.nvmlInit_v2() != 0:
        return None, []
    count = ctypes.c_uint(0)
    if lib.nvmlDeviceGetCount_v2(ctypes.byref(count)) != 0:
        return lib, []
    handles = []
    for i in range(count.value):
        h = ctypes.c_void_p()
        if lib.nvmlDeviceGetHandleByIndex_v2(i, ctypes.byref(h)) == 0:
            handles.append(h)
    return lib, handles


def visible_gpu_count() -> int:
    """GPUs the ranks will see, found without creating a CUDA context here (so fork stays safe):
    CUDA_VISIBLE_DEVICES, else NVML, else ``nvidia-smi -L``."""
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None:
        entries = [e for e in cvd.split(",") if e.strip()]
        if not entries or entries[0].strip().startswith("-"):
            return 0
        return len(entries)
    lib, handles = _nvml_gpus()
    if lib is not None:
        return len(handles)
    return _nvidia_smi_gpu_count()


@functools.cache
def _nvidia_smi_gpu_count() -> int:
    import shutil
    import subprocess

    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
            return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))
        except (OSError, subprocess.SubprocessError):
            return 0
    return 0


def gpus_lack_peer_access(indices: list[int] | None) -> bool:
    """True when some pair of the GPUs cannot reach each other peer-to-peer (e.g. Kaggle 2xT4),
    where NCCL's P2P transport hangs or fails; asked of NVML, never of CUDA."""
    return _pairs_lack_peer_access(None if indices is None else tuple(indices))


@functools.cache
def _pairs_lack_peer_access(indices: tuple | None) -> bool:
    import ctypes

    lib, handles = _nvml_gpus()
    if lib is None:
        return False
    if indices is not None:
        handles = [handles[i] for i in indices if 0 <= i < len(handles)]
    for i in range(len(handles)):
        for j in range(i + 1, len(handles)):
            status = ctypes.c_int(0)
            # NVML_P2P_CAPS_INDEX_READ = 0; NVML_P2P_STATUS_OK = 0
            rc = lib.nvmlDeviceGetP2PStatus(handles[i], handles[j], 0, ctypes.byref(status))
            if rc == 0 and status.value != 0:
                return True
    return False


def cuda_initialized() -> bool:
    """Whether a child forked from this process could not use CUDA.

    torch.cuda.is_initialized() is not enough: torch.cuda.is_available() and device_count()
    (without PYTORCH_NVML_BASED_CUDA_CHECK) run cuInit through cudaGetDeviceCount, and a forked
    child then cannot use CUDA ("Cannot re-initialize CUDA in forked subprocess") while
    is_initialized() stays False; other libraries (CuPy, JAX) can run cuInit too. So the driver
    itself is asked, without initialising it: cuDeviceGetCount answers
    CUDA_ERROR_NOT_INITIALIZED (3) until cuInit ran. A driver not even loaded was never
    initialised. (A throwaway fork asking torch was the first version: 30-40 ms a launch.)
    """
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_initialized():
            return True
    except Exception:
        pass
    return _cuda_driver_initialized()


def _cuda_driver_initialized() -> bool:
    import ctypes

    try:
        lib = ctypes.CDLL("libcuda.so.1", mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
    except OSError:
        return False
    count = ctypes.c_int(0)
    try:
        return lib.cuDeviceGetCount(ctypes.byref(count)) != 3  # CUDA_ERROR_NOT_INITIALIZED
    except AttributeError:
        return False



def free_port(addr: str = "127.0.0.1") -> int:
    """A TCP port free on ``addr`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((addr, 0))
        except OSError:
            s.bind(("", 0))
        return s.getsockname()[1]


def default_log_dir() -> str:
    return os.path.join(tempfile.gettempdir(), f"nbdist-{os.getuid()}")


def new_job_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


# The default log directory keeps every job's logs for a week, and the newest KEEP_JOBS always.
KEEP_JOBS = 50
KEEP_SECONDS = 7 * 24 * 3600
_JOB_ID = re.compile(r"\d{8}-\d{6}-[0-9a-f]{6}")
_pruned = False  # the default log directory was pruned by this process


def _last_write(path: str) -> float:
    """The newest modification time of a job directory's files (a running job's logs grow)."""
    try:
        with os.scandir(path) as it:
            return max((e.stat(follow_symlinks=False).st_mtime for e in it), default=0.0)
    except OSError:
        return time.time()  # unreadable: treat as in use


def prune_job_dirs(base: str, now: float | None = None) -> list[str]:
    """Deletes job directories under the default log directory that are older than a week, except
    the newest KEEP_JOBS; returns what was deleted. Only names that are job ids are touched, and a
    directory that cannot be read or removed is left alone (another process may be using it)."""
    now = time.time() if now is None else now
    jobs = []
    try:
        with os.scandir(base) as it:
            for entry in it:
                if _JOB_ID.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False):
                    try:
                        jobs.append((entry.stat(follow_symlinks=False).st_mtime, entry.path))
                    except OSError:
                        pass
    except OSError:
        return []
    jobs.sort(reverse=True)
    removed = []
    for mtime, path in jobs[KEEP_JOBS:]:
        if now - mtime > KEEP_SECONDS and now - _last_write(path) > KEEP_SECONDS:
            shutil.rmtree(path, ignore_errors=True)
            if not os.path.exists(path):
                removed.append(path)
    return removed


# -- failed attempts still stopping ----------------------------------------------------------------

# Supervisors of failed jobs whose error was reported while some ranks were still exiting (see
# Job._end_on_failure). Every new attempt waits for them first, so that it never competes with a
# dying rank for GPU memory or a port.
_stopping: list = []
_stopping_lock = threading.Lock()


def add_stopping(sup) -> None:
    with _stopping_lock:
        _stopping[:] = [s for s in _stopping if not s.done()]
        _stopping.append(sup)


def wait_stopping(notice=None) -> None:
    """Waits until the ranks of earlier failed jobs are gone; ``notice`` says so when that takes
    a while (a rank that ignores SIGTERM is killed only after its job's grace)."""
    with _stopping_lock:
        pending = list(_stopping)
    for sup in pending:
        if not sup.wait(1.0) and notice is not None:
            notice("waiting for the ranks of an earlier failed job to exit")
        sup.wait(-1.0)
    with _stopping_lock:
        _stopping[:] = [s for s in _stopping if not s.done()]


# -- the fork thread ------------------------------------------------------------------------------

def _fork_batch(batch: list) -> list[int]:
    """Forks one child per (fds, keep, child) entry; returns their pids. In a child, runs
    ``child()`` and exits with its return value (never returns)."""
    pids: list[int] = []
    core = _core()
    track_fd = core.reaper_control_fd()
    # The children must not collect the parent's garbage cycles: an object still waiting for
    # collection here (a process group held by the traceback of a failed train() in the kernel,
    # say) would be destroyed in a child where its threads do not exist, and its destructor
    # hangs there. Frozen objects are left alone by every collection, the children's included.
    gc.freeze()
    try:
        for fds, keep, child in batch:
            pid = core.fork_interpreter(fds, keep, [], signal.SIGKILL, track_fd)
            if pid == 0:
                code = 1
                try:
                    code = child()
                except BaseException as exc:
                    from ._worker import report_unexpected

                    report_unexpected(exc)
                finally:
                    os._exit(code if isinstance(code, int) else 1)
            pids.append(pid)
    except BaseException:
        for pid in pids:  # a partial batch must not outlive the failed start
            core.kill_group(pid, signal.SIGKILL)
        raise
    finally:
        gc.unfreeze()
        core.unregister_parent_fd(track_fd)
        os.close(track_fd)
    return pids


class _ForkThread:
    """The long-lived Python thread that forks this interpreter for launches started off the
    main thread (background jobs): PR_SET_PDEATHSIG is tied to the forking thread, and CPython's
    fork hooks must run in it. The main thread lives as long as the process, so a foreground
    launch forks there directly."""

    def __init__(self) -> None:
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="nbdist-fork", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            batch, reply = self._requests.get()
            try:
                reply.put(("ok", _fork_batch(batch)))
            except BaseException as exc:
                reply.put(("error", exc))

    def fork_all(self, batch: list) -> list[int]:
        reply: queue.SimpleQueue = queue.SimpleQueue()
        self._requests.put((batch, reply))
        kind, value = reply.get()
        if kind == "error":
            raise value
        return value


_fork_thread: _ForkThread | None = None
_fork_thread_lock = threading.Lock()


def _get_fork_thread() -> _ForkThread:
    global _fork_thread
    with _fork_thread_lock:
        if _fork_thread is None:
            _fork_thread = _ForkThread()
        return _fork_thread


def _after_fork_in_child() -> None:
    """A forked child (a ``fork`` rank that starts a nested launch, os.fork in user code) has none
    of this process's launcher state: the fork thread does not exist there, the ranks of failed
    jobs still stopping are not its children (waiting for them would never end), and a lock may
    have been held by a thread that is gone. (The C++ singletons reset themselves: process.cc.)"""
    global _fork_thread, _fork_thread_lock, _stopping_lock
    _fork_thread = None
    _fork_thread_lock = threading.Lock()
    _stopping.clear()
    _stopping_lock = threading.Lock()
    started_ranks.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


class _HeldInterrupt:
    """Holds back Ctrl-C ("interrupt kernel": SIGINT) while the ranks of an attempt start, and
    raises it once they have all started and the supervisor knows them.

    A KeyboardInterrupt in the middle of starting them lost ranks: one raised after a rank was
    forked but before the supervisor had its pid (``_start_fork`` between ``_fork_batch`` and
    ``attach_rank``; ``_fork_batch`` itself between a fork and ``pids.append``) left that rank
    running unsupervised until the kernel died, since the teardown only reaches ranks it knows.
    With the zygote it was worse: raised while ``Zygote.fork_rank`` waited for the zygote's reply
    (the pid of the rank it had just forked), it left that rank running and the reply unread in
    the socket, so the kernel's next launch read it as the pid of its own rank 0, and every launch
    after was one reply behind: the supervisors watched (and would signal) the wrong processes.

    Starting N ranks takes milliseconds, so holding the interrupt that long costs nothing; once
    the attempt's ranks are attached, the held interrupt is raised and the ordinary path tears
    them down (start_attempt, then Job._interrupted). Only the main thread gets SIGINT and only
    there may a handler be set; elsewhere (a background job's driver) this does nothing, as it
    does when the current handler is not a Python callable (SIG_IGN, SIG_DFL, or one set in C)."""

    def __init__(self) -> None:
        self._previous = None
        self._pending: tuple | None = None

    def _hold(self, signum, frame) -> None:
        self._pending = (signum, frame)

    def __enter__(self) -> _HeldInterrupt:
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGINT)
            if callable(previous):
                try:
                    signal.signal(signal.SIGINT, self._hold)
                    self._previous = previous
                except ValueError:  # not the main interpreter
                    pass
        return self

    def __exit__(self, *exc_info) -> None:
        if self._previous is None:
            return
        signal.signal(signal.SIGINT, self._previous)
        if self._pending is not None:
            self._previous(*self._pending)  # the kernel's handler: raises KeyboardInterrupt


# -- the plan of a launch -------------------------------------------------------------------------

class _Plan:
    """Everything decided before the first rank starts; starts attempts and reads their outcome."""

    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)

    def notice(self, text: str) -> None:
        if self.stream:
            print(f"nbdist: {text}", flush=True)

    def new_port(self) -> None:
        self.master_port = free_port(self.master_addr)

    def port_taken(self, error) -> bool:
        if self.nnodes != 1 or not isinstance(error, WorkerError):
            return False
        text = str(error).lower()
        return "eaddrinuse" in text or "address already in use" in text

    def rank_env(self, local_rank: int, restart: int) -> dict[str, str]:
        rank = self.node_rank * self.nprocs + local_rank
        env = {
            "RANK": str(rank),
            "LOCAL_RANK": str(local_rank),
            "WORLD_SIZE": str(self.nnodes * self.nprocs),
            "LOCAL_WORLD_SIZE": str(self.nprocs),
            "GROUP_RANK": str(self.node_rank),
            "NODE_RANK": str(self.node_rank),
            "GROUP_WORLD_SIZE": str(self.nnodes),
            "ROLE_RANK": str(rank),
            "ROLE_WORLD_SIZE": str(self.nnodes * self.nprocs),
            "ROLE_NAME": "default",
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(self.master_port),
            "NBDIST_JOB_ID": self.job_id,
            "NBDIST_RESTART_COUNT": str(restart),
            "TORCHELASTIC_RESTART_COUNT": str(restart),
        }
        env.update(self.extra_env)
        return env

    def start_attempt(self, restart: int, job: Job):
        core = _core()
        wait_stopping(self.notice)
        sup = core.Supervisor(
            job_id=self.job_id, log_dir=self.job_dir, nranks=self.nprocs, tail_bytes=64 * 1024,
            line_queue_bytes=16 << 20, stream=self.stream, grace_s=self.grace,
            timeout_s=float(self.timeout or 0.0), dump_wait_s=1.0,
        )
        with job._lock:
            job._sup = sup
            # "running" before the first rank starts: a rank's output (or its log line) must
            # never be observable while the job still says "starting".
            if job._status == "starting":
                job._status = "running"
            if job._kill_grace is not None:
                sup.kill(job._kill_grace)
        if restart:
            for r in range(self.nprocs):
                with open(sup.log_path(r), "a") as f:
                    f.write(f"--- nbdist: restart {restart} ---\n")
        pids: list[int] = []
        start_error = None
        try:
            method = self.start_method
            if method == "zygote":
                from ._zygote import get_zygote

                get_zygote()  # a first start imports torch (seconds): stays interruptible
            # Ctrl-C is held while the ranks start (see _HeldInterrupt) and raised right after.
            with _HeldInterrupt():
                if method == "fork":
                    pids = self._start_fork(sup, restart)
                elif method == "zygote":
                    pids = self._start_zygote(sup, restart)
                else:
                    pids = self._start_spawn(sup, restart)
        except KeyboardInterrupt:
            sup.kill(0.0)
            sup.seal()
            raise
        except BaseException as exc:
            start_error = exc
            sup.kill(0.0)
        finally:
            sup.seal()
        for pid in pids:
            started_ranks.append((self.job_id, pid))
        return sup, pids, start_error

    def _start_spawn(self, sup, restart: int) -> list[int]:
        base = dict(os.environ)
        pids = []
        for r in range(self.nprocs):
            env = dict(base)
            env.update(self.rank_env(r, restart))
            if self.argv is None:
                argv = [sys.executable, "-m", "nbdist._worker", self.payload_path]
                env["NBDIST_RESULT_FD"] = "3"
            else:
                argv = list(self.argv)
                env.setdefault("PYTHONUNBUFFERED", "1")
            sup.open_rank(r, False)
            pids.append(sup.spawn_rank(r, argv, [f"{k}={v}" for k, v in env.items()],
                                       self.cwd, 3))
        return pids

    def _start_fork(self, sup, restart: int) -> list[int]:
        from . import _worker

        fn, args, kwargs = self.fn, self.args, self.kwargs
        handlers = _worker.stream_handlers()
        batch = []
        for r in range(self.nprocs):
            fds = sup.open_rank(r, False)
            env = self.rank_env(r, restart)
            result_w = fds.result_w

            def child(env=env, result_w=result_w):
                try:
                    os.environ.update(env)
                    _worker.setup_rank(fresh_streams=True, stream_handlers=handlers)
                    _worker.set_torch_threads(after_fork_of_caller=True)
                except BaseException as exc:
                    return _worker.report_start_failure(exc, result_w)
                code = _worker.run_rank(fn, args, kwargs, result_w)
                sys.stdout.flush()
                sys.stderr.flush()
                return code

            batch.append(([(fds.stdout_w, 1), (fds.stderr_w, 2)], [result_w], child))
        if threading.current_thread() is threading.main_thread():
            pids = _fork_batch(batch)
        else:
            pids = _get_fork_thread().fork_all(batch)
        for r, pid in enumerate(pids):
            sup.attach_rank(r, pid)
        return pids

    def _start_zygote(self, sup, restart: int) -> list[int]:
        from ._zygote import get_zygote

        zygote = get_zygote()
        base = dict(os.environ)
        pids = []
        core = _core()
        track_fd = core.reaper_control_fd()  # this process's reaper, even for zygote children
        try:
            for r in range(self.nprocs):
                fds = sup.open_rank(r, True)
                env = dict(base)
                env.update(self.rank_env(r, restart))
                pid = zygote.fork_rank(self.payload_path, env, self.cwd,
                                       [fds.stdout_w, fds.stderr_w, fds.result_w, fds.status_w,
                                        track_fd])
                sup.attach_rank(r, pid)
                pids.append(pid)
        finally:
            core.unregister_parent_fd(track_fd)
            os.close(track_fd)
        return pids

    # -- outcome ----------------------------------------------------------------------------

    def discard_payload(self) -> None:
        """Deletes the pickled fn and args once no attempt will read them again: arguments can be
        large (a dataset passed by value), and the logs directory lives on."""
        if self.payload_path is None:
            return
        for path in (self.payload_path, self.payload_path + ".path"):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def collect(self, sup, start_error):
        """(state, results, error) of a finished attempt."""
        from . import _worker

        core = _core()
        state = sup.state().name
        if state == "running" and sup.failed():
            state = "failed"  # reported while the other ranks are still being stopped
        ranks = sup.ranks()
        outcomes = {}
        for rs in ranks:
            try:
                outcomes[rs.rank] = _worker.decode_outcome(sup.result(rs.rank))
            except Exception as exc:  # a result that does not unpickle in the parent
                outcomes[rs.rank] = (_worker.EXCEPTION, rs.exit_time, {
                    "type": type(exc).__name__,
                    "message": "the rank's return value cannot be unpickled here: "
                               + _worker.safe_str(exc),
                    "traceback": "", "exception": None})
        if start_error is not None:
            if isinstance(start_error, (LaunchError, KeyboardInterrupt)):
                return "failed", None, start_error
            err = LaunchError(f"job {self.job_id}: could not start the ranks "
                              f"({self.start_method}): {type(start_error).__name__}: "
                              f"{start_error}")
            err.__cause__ = start_error
            return "failed", None, err
        if state == "succeeded":
            results = []
            for rs in ranks:
                out = outcomes.get(rs.rank)
                results.append(out[2] if out is not None and out[0] == _worker.RESULT else None)
            return state, results, None
        return state, None, self._error(sup, state, ranks, outcomes, core)

    def _error(self, sup, state, ranks, outcomes, core) -> BaseException:
        from . import _worker

        def reported(rs):
            """The exception a rank sent, or None."""
            out = outcomes.get(rs.rank)
            return out[2] if out is not None and out[0] == _worker.EXCEPTION else None

        def failed(rs) -> bool:
            if reported(rs) is not None:
                return True  # possibly still exiting: its exit code came with the exception
            if not rs.exited:
                return False
            if rs.lost:
                return True
            return os.WIFSIGNALED(rs.wait_status) or os.WEXITSTATUS(rs.wait_status) != 0

        def fail_time(rs) -> float:
            out = outcomes.get(rs.rank)
            t = rs.exit_time if rs.exited else float("inf")
            if out is not None and out[0] == _worker.EXCEPTION:
                t = min(t, out[1])
            return t

        def exit_code(rs):
            if not rs.exited:
                return reported(rs).get("exit_code", 1)
            if not rs.lost and os.WIFEXITED(rs.wait_status):
                return os.WEXITSTATUS(rs.wait_status)
            return None

        def how(rs) -> str:
            if not rs.exited:
                return f"exit code {exit_code(rs)}"
            if rs.lost:
                return "lost (its zygote died; exit status unknown)"
            return core.describe_wait_status(rs.wait_status)

        def grank(local: int) -> int:
            return self.node_rank * self.nprocs + local

        failures = [rs for rs in ranks if failed(rs)]
        causes = [rs for rs in failures if not rs.after_teardown] or failures
        root = min(causes, key=fail_time) if causes else None
        failure_dicts = []
        for rs in failures:
            info = reported(rs)
            failure_dicts.append({
                "rank": grank(rs.rank), "pid": rs.pid,
                "exit_code": exit_code(rs),
                "signal": core.signal_name(os.WTERMSIG(rs.wait_status))
                if rs.exited and not rs.lost and os.WIFSIGNALED(rs.wait_status) else None,
                "exc_type": info["type"] if info else None,
                "exc_message": info["message"] if info else None,
                "collateral": rs.after_teardown and rs is not root,
                "how": how(rs),
            })
        # Ranks still running when the failure is reported (the error does not wait for them:
        # they are being stopped, and the next launch waits until they are gone).
        for rs in ranks:
            if rs.attached and not rs.exited and not failed(rs):
                failure_dicts.append({
                    "rank": grank(rs.rank), "pid": rs.pid, "exit_code": None, "signal": None,
                    "exc_type": None, "exc_message": None, "collateral": True,
                    "how": "being stopped (SIGTERM, then SIGKILL after the grace)",
                })

        world = self.nnodes * self.nprocs
        if state == "timed_out":
            dumps = {grank(rs.rank): sup.dump(rs.rank).decode("utf-8", "replace")
                     for rs in ranks}
            parts = [f"job {self.job_id} timed out after {self.timeout} s ({world} ranks); "
                     f"Python stacks of every rank at the timeout:"]
            for rs in ranks:
                text = dumps[grank(rs.rank)].rstrip()
                if not text:
                    # A script or command rank has no handler for the dump signal: it ends by it.
                    text = (f"(no stack dump: the rank ended by {how(rs)})" if rs.exited
                            else "(no stack dump received)")
                parts.append(f"--- rank {grank(rs.rank)} ---\n{text}")
            parts.append(f"logs: {self.job_dir}")
            return LaunchTimeoutError("\n".join(parts), job_id=self.job_id,
                                      log_dir=self.job_dir, failures=failure_dicts, dumps=dumps)
        if state == "killed":
            return LaunchError(f"job {self.job_id} was killed")
        if root is None:
            return WorkerError(f"job {self.job_id} failed without a failed rank (no rank ran)",
                               job_id=self.job_id, log_dir=self.job_dir)
        root_dict = next(d for d in failure_dicts if d["rank"] == grank(root.rank))
        info = reported(root)
        head = f"rank {grank(root.rank)} (of {world}) failed"
        if info:
            head += f" with {info['type']}: {info['message']} ({how(root)})"
        else:
            head += f": {how(root)}"
        parts = [f"{head}; job {self.job_id}"]
        if info and info["traceback"]:
            parts.append(f"Remote traceback of rank {grank(root.rank)}:\n"
                         + info["traceback"].rstrip())
        tail = sup.tail(root.rank).decode("utf-8", "replace").splitlines()
        fatal = [i for i, line in enumerate(tail) if line.startswith("Fatal Python error")]
        if fatal and len(tail) - fatal[-1] <= 5 * TAIL_LINES_IN_ERROR:
            tail = tail[fatal[-1]:]  # a crash: keep faulthandler's whole report
        else:
            tail = tail[-TAIL_LINES_IN_ERROR:]
        if tail and not (info and info["traceback"]):
            parts.append(f"Last output of rank {grank(root.rank)}:\n" + "\n".join(tail))
        summary = []
        for d in failure_dicts:
            what = d["how"]
            if d["exc_type"]:
                what = f"{d['exc_type']}: {d['exc_message']} ({what})"
            if d["collateral"]:
                what += f" - stopped by nbdist after rank {grank(root.rank)} failed"
            summary.append(f"  rank {d['rank']}: {what}")
        parts.append("Failed ranks:\n" + "\n".join(summary))
        parts.append(f"Logs: {self.job_dir}/rank_<r>.log")
        remote = None
        if info and info.get("exception"):
            try:
                import cloudpickle

                remote = cloudpickle.loads(info["exception"])
            except Exception:
                remote = None
        return WorkerError(
            "\n".join(parts), rank=grank(root.rank), exit_code=root_dict["exit_code"],
            signal=root_dict["signal"], exc_type=info["type"] if info else None,
            exc_message=info["message"] if info else None,
            remote_traceback=info["traceback"] if info else None, remote_exception=remote,
            failures=failure_dicts, job_id=self.job_id, log_dir=self.job_dir,
        )


# -- argument checks ------------------------------------------------------------------------------

def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise LaunchValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise LaunchValueError(f"{name} must be >= {minimum}, got {value}")
    return value


# What rank_env sets for each rank (env= may not override them).
_PER_RANK_ENV = frozenset({
    "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "NODE_RANK",
    "GROUP_WORLD_SIZE", "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR",
    "MASTER_PORT", "NBDIST_JOB_ID", "NBDIST_RESTART_COUNT", "TORCHELASTIC_RESTART_COUNT"})


def check_seconds(name: str, value) -> float:
    """A teardown grace or a wait: a finite number of seconds >= 0 (a NaN grace would never
    expire, a NaN wait ends at once)."""
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or value < 0):
        raise LaunchValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
    return float(value)


def _check_prefix(prefix, require_rank: bool) -> str:
    """The live-line prefix is formatted with ``rank=`` only (see _LiveLines): a trial format
    now, so that a bad one is named here instead of failing while the ranks run."""
    import string

    if not isinstance(prefix, str):
        raise LaunchValueError(f"prefix must be a str like '[rank {{rank}}] ', "
                               f"got {type(prefix).__name__}")
    try:
        prefix.format(rank=0)
        fields = [name for _, name, _, _ in string.Formatter().parse(prefix) if name is not None]
    except Exception as exc:
        raise LaunchValueError(
            f"prefix {prefix!r} cannot be formatted ({type(exc).__name__}: {exc}): its only "
            f"field is {{rank}} (the global rank); write a literal brace as {{{{ or }}}}") from None
    if require_rank and not any(name == "rank" or name.startswith(("rank.", "rank["))
                                for name in fields):
        raise LaunchValueError(f"prefix must contain '{{rank}}' (the global rank), "
                               f"got {prefix!r}")
    return prefix


def _check_gpus(gpus) -> list[int] | None:
    if gpus is None:
        return None
    if isinstance(gpus, str):
        try:
            gpus = [int(g) for g in gpus.split(",") if g.strip()]
        except ValueError:
            raise LaunchValueError(
                f"gpus must be GPU indices like [0, 1] or '0,1', got {gpus!r}") from None
    if isinstance(gpus, int) and not isinstance(gpus, bool):
        gpus = [gpus]
    try:
        gpus = list(gpus)
    except TypeError:
        raise LaunchValueError(f"gpus must be a list of GPU indices, got {gpus!r}") from None
    for g in gpus:
        if isinstance(g, bool) or not isinstance(g, int) or g < 0:
            raise LaunchValueError(f"gpus must hold non-negative ints, got {g!r} in {gpus!r}")
    if len(set(gpus)) != len(gpus):
        raise LaunchValueError(f"gpus lists a GPU twice: {gpus!r}")
    return gpus


def _plan(target, args, kwargs, nprocs, *, start_method, gpus, env, timeout, max_restarts,
          log_dir, master_addr, master_port, nnodes, node_rank, stream, grace, argv=None,
          cwd=None, caller="launch") -> _Plan:
    if argv is None and not callable(target):
        raise LaunchValueError(f"{caller}: fn must be callable, got {type(target).__name__}")
    if not isinstance(args, (tuple, list)):
        raise LaunchValueError(f"args must be a tuple or list, got {type(args).__name__}")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise LaunchValueError(f"kwargs must be a dict or None, got {type(kwargs).__name__}")
    if start_method not in START_METHODS:
        raise LaunchValueError(f"start_method must be one of {START_METHODS}, "
                               f"got {start_method!r}")
    gpus_arg, gpus = gpus, _check_gpus(gpus)
    if env is not None:
        if not isinstance(env, dict):
            raise LaunchValueError(f"env must be a dict of str to str, got {type(env).__name__}")
        for k, v in env.items():
            if not isinstance(k, str) or not k or "=" in k or "\0" in k:
                raise LaunchValueError(f"env: bad variable name {k!r}")
            if k in _PER_RANK_ENV:
                # Overriding them gives every rank the same value (two ranks 0, say).
                raise LaunchValueError(
                    f"env[{k!r}]: the launcher sets it for each rank"
                    + (f"; use launch({k.lower()}=...)" if k.startswith("MASTER_") else ""))
            if not isinstance(v, (str, int, float)) or isinstance(v, bool):
                raise LaunchValueError(f"env[{k!r}] must be a str, got {type(v).__name__}")
            if "\0" in str(v):
                # os.environ refuses it in a forked rank, execve would cut the value short.
                raise LaunchValueError(f"env[{k!r}]: the value contains a NUL byte ('\\0'), "
                                       f"which an environment variable cannot hold")
    if timeout is not None:
        if (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                or not math.isfinite(timeout) or timeout <= 0):
            raise LaunchValueError(f"timeout must be a finite positive number of seconds or None, "
                                   f"got {timeout!r}")
    _check_int("max_restarts", max_restarts, 0)
    _check_int("nnodes", nnodes, 1)
    _check_int("node_rank", node_rank, 0)
    if node_rank >= nnodes:
        raise LaunchValueError(f"node_rank must be < nnodes ({nnodes}), got {node_rank}")
    if not isinstance(master_addr, str) or not master_addr:
        raise LaunchValueError(f"master_addr must be a host name or address, got {master_addr!r}")
    if master_port is not None:
        _check_int("master_port", master_port, 1)
        if master_port > 65535:
            raise LaunchValueError(f"master_port must be <= 65535, got {master_port}")
    elif nnodes > 1:
        raise LaunchValueError("master_port must be given when nnodes > 1 (every node's launcher "
                               "must rendezvous on the same port)")
    check_seconds("grace", grace)
    if not isinstance(stream, bool):
        raise LaunchValueError(f"stream must be True or False, got {stream!r}")

    decisions = []
    if nprocs is None:
        if gpus is not None:
            if not gpus:
                raise LaunchValueError(f"gpus={gpus_arg!r} lists no GPU, so it cannot set the "
                                       f"number of ranks: give GPU indices (gpus=[0, 1]), or "
                                       f"nprocs=")
            nprocs = len(gpus)
        else:
            nprocs = visible_gpu_count()
            if nprocs == 0:
                raise LaunchValueError("nprocs must be given: no GPU is visible "
                                       "(CUDA_VISIBLE_DEVICES, NVML and nvidia-smi found none)")
        decisions.append(f"{nprocs} ranks (one per visible GPU)")
    else:
        _check_int("nprocs", nprocs, 1)
        decisions.append(f"{nprocs} ranks")
    if nnodes > 1:
        decisions[-1] += f" on node {node_rank} of {nnodes}"

    cuda_on = cuda_initialized()
    if argv is not None:
        if start_method not in ("auto", "spawn"):
            raise LaunchValueError(f"start_method must be 'spawn' for a script, "
                                   f"got {start_method!r}")
        method, why = "spawn", "a script"
    elif start_method == "auto":
        method, why = ("zygote", "CUDA is initialized here") if cuda_on else (
            "fork", "CUDA not initialized here")
    else:
        method, why = start_method, "asked"
        if method == "fork" and cuda_on:
            raise LaunchValueError("start_method='fork' is unsafe: CUDA is already initialized "
                                   "in this process; use 'zygote' (or 'auto') instead")
    decisions.append(f"start method {method} ({why})")

    extra_env: dict[str, str] = {}
    if gpus is not None:
        extra_env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
        decisions.append(f"CUDA_VISIBLE_DEVICES={extra_env['CUDA_VISIBLE_DEVICES']}")
    user_env = {k: str(v) for k, v in (env or {}).items()}
    if "OMP_NUM_THREADS" not in os.environ and "OMP_NUM_THREADS" not in user_env:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1)
        extra_env["OMP_NUM_THREADS"] = str(max(1, cores // nprocs))
        decisions.append(f"OMP_NUM_THREADS={extra_env['OMP_NUM_THREADS']}")
    if method == "fork" and "torch" in sys.modules:
        # See _worker.set_torch_threads: OpenMP does not survive fork.
        decisions.append("torch ops 1 thread per rank (fork; 'zygote' keeps OMP_NUM_THREADS)")
    if nprocs > 1 and "NCCL_P2P_DISABLE" not in os.environ and "NCCL_P2P_DISABLE" not in user_env:
        try:
            lacks_p2p = gpus_lack_peer_access(gpus)
        except Exception:
            lacks_p2p = False
        if lacks_p2p:
            extra_env["NCCL_P2P_DISABLE"] = "1"
            decisions.append("NCCL_P2P_DISABLE=1 (GPUs lack peer access)")
    extra_env.update(user_env)

    if master_port is None:
        master_port = free_port(master_addr)
        decisions.append(f"master {master_addr}:{master_port} (free port)")
    else:
        decisions.append(f"master {master_addr}:{master_port}")

    job_id = new_job_id()
    base = log_dir if log_dir is not None else default_log_dir()
    if not isinstance(base, (str, os.PathLike)) or isinstance(os.fspath(base), bytes):
        raise LaunchValueError(f"log_dir must be a path, got {log_dir!r}")
    if not os.fspath(base) or "\0" in os.fspath(base):
        raise LaunchValueError(f"log_dir must be a directory path, got {log_dir!r}")
    # Absolute now: the job's logs, restarts and stream() must not depend on a later chdir
    # (%cd in a notebook) while it runs.
    base = os.path.abspath(os.fspath(base))
    job_dir = os.path.join(base, job_id)
    try:
        os.makedirs(os.fspath(base), mode=0o700, exist_ok=True)
        if log_dir is None and os.stat(base).st_uid != os.getuid():
            # The payload file in there is code the ranks will run: never use a shared /tmp
            # directory someone else created under our name.
            raise LaunchValueError(f"the default log_dir {base!r} belongs to another user; "
                                   f"pass log_dir=")
        os.makedirs(job_dir, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise LaunchValueError(f"log_dir {os.fspath(base)!r} cannot be used: {exc}") from exc
    global _pruned
    if log_dir is None and not _pruned:  # once per process; a log_dir the caller chose is theirs
        _pruned = True
        prune_job_dirs(base)
    decisions.append(f"logs {job_dir}")

    plan = _Plan(
        fn=target, args=tuple(args), kwargs=dict(kwargs or {}), nprocs=nprocs,
        start_method=method, gpus=gpus, extra_env=extra_env, timeout=timeout,
        max_restarts=max_restarts, job_id=job_id, job_dir=job_dir, master_addr=master_addr,
        master_port=master_port, nnodes=nnodes, node_rank=node_rank, stream=stream,
        grace=float(grace), argv=argv, cwd=cwd or os.getcwd(), payload_path=None,
        decisions=decisions,
    )
    if argv is None and method in ("spawn", "zygote"):
        plan.payload_path = _write_payload(job_dir, target, args, kwargs)
    return plan


def _write_payload(job_dir: str, fn, args, kwargs) -> str:
    import pickle

    from ._pickle import dumps

    try:
        data = dumps({"fn": fn, "args": tuple(args), "kwargs": dict(kwargs or {})})
    except Exception as exc:
        raise LaunchValueError(
            f"fn, args and kwargs must be picklable for the spawn and zygote start methods "
            f"(cloudpickle failed: {type(exc).__name__}: {exc})") from exc
    path = os.path.join(job_dir, "payload.pkl")
    for p, blob in ((path, data), (path + ".path", pickle.dumps(list(sys.path)))):
        tmp = p + ".tmp"
        with open(tmp, "wb") as f:
            f.write(blob)
        os.replace(tmp, p)
    return path


# -- foreground -----------------------------------------------------------------------------------

class _LiveLines:
    """Prints the ranks' lines into the cell (or terminal) with their prefix. A line the supervisor
    marks unfinished (a trailing '\\r': a progress bar rewriting itself) is shown at once without
    its newline and rewritten in place (a leading '\\r') by the same rank's next text on that
    stream; any other line ends it first. Foreground launches feed it the supervisor's lines,
    Job.stream() the lines it reads from the log files."""

    def __init__(self, prefix: str, file=None) -> None:
        self.prefix = prefix
        # Where every line goes (Job.stream(file=): the log files interleave the two streams);
        # None: stdout or stderr, as the rank wrote it.
        self.file = file
        self.open: tuple | None = None  # (rank, stream) whose unfinished line is on screen
        self.open_width = 0
        self.open_text = ""
        # (rank, stream) -> its unfinished text that another line ended on screen: the same
        # text arriving finished (the bar's final newline) is there already.
        self.ended_early: dict = {}

    def __call__(self, lines) -> None:
        chunks: list = []  # [stream, [text, ...]] in order

        def put(stream: int, text: str) -> None:
            if chunks and chunks[-1][0] == stream:
                chunks[-1][1].append(text)
            else:
                chunks.append([stream, [text]])

        for rank, stream, raw in lines:
            text = raw.decode("utf-8", "replace")
            head = "nbdist: " if rank < 0 else self.prefix.format(rank=rank)
            unfinished = text.endswith("\r")
            key = (rank, stream)
            early = self.ended_early.pop(key, None)
            if not unfinished and early == text and self.open != key:
                continue
            shown = head + (text[:-1] if unfinished else text)
            if self.open == key:
                # Rewrite in place; spaces cover a longer earlier text in a terminal.
                shown = "\r" + shown + " " * max(0, self.open_width - len(shown))
            else:
                self._end_open(put)
            if unfinished:
                self.open, self.open_width = key, len(head) + len(text) - 1
                self.open_text = text[:-1]
                put(stream, shown)
            else:
                self.open = None
                put(stream, shown + "\n")
        self._write(chunks)

    def _end_open(self, put) -> None:
        if self.open is not None:
            put(self.open[1], "\n")
            self.ended_early[self.open] = self.open_text
            self.open = None

    def close(self) -> None:
        """Ends an unfinished line still on screen (the job is over, or stream() detaches)."""
        chunks: list = []
        self._end_open(lambda stream, text: chunks.append([stream, [text]]))
        self._write(chunks)

    def _write(self, chunks) -> None:
        for stream, parts in chunks:
            out = self.file if self.file is not None else (
                sys.stderr if stream == 2 else sys.stdout)
            out.write("".join(parts))
            out.flush()


def run_foreground(job: Job, prefix: str) -> list:
    """Runs the job in this thread, printing the ranks' lines into the cell; Ctrl-C tears the
    ranks down and re-raises KeyboardInterrupt."""
    offset = job._plan.node_rank * job._plan.nprocs
    display = _LiveLines(prefix)

    def show(lines):
        if offset:
            lines = [(r + offset if r >= 0 else r, s, t) for r, s, t in lines]
        display(lines)

    try:
        job._drive(show)
    finally:
        try:
            display.close()
        except Exception:
            pass
    return job.wait()


def launch(
    fn: Callable,
    args: tuple = (),
    kwargs: dict | None = None,
    nprocs: int | None = None,
    *,
    start_method: str = "auto",
    gpus=None,
    env: dict | None = None,
    timeout: float | None = None,
    max_restarts: int = 0,
    log_dir: str | None = None,
    master_addr: str = "127.0.0.1",
    master_port: int | None = None,
    nnodes: int = 1,
    node_rank: int = 0,
    stream: bool = True,
    background: bool = False,
    grace: float = DEFAULT_GRACE,
    prefix: str = "[rank {rank}] ",
    monitor: bool = False,
    background_load=None,
):
    """Runs ``fn(*args, **kwargs)`` in ``nprocs`` ranks and returns their results.

    Args:
        fn: the function each rank calls. Functions and lambdas defined in a notebook cell work
            with every start method (cloudpickle sends them by value).
        args, kwargs: its arguments (pickled for ``spawn``/``zygote``).
        nprocs: ranks on this node; default: the number of visible GPUs (required without GPUs).
        start_method: ``"fork"`` (fastest; refused once CUDA is initialized here), ``"spawn"``
            (a fresh interpreter per rank), ``"zygote"`` (ranks forked from a warm, clean
            interpreter with torch imported; works after the kernel used CUDA) or ``"auto"``
            (fork while CUDA is not initialized here, zygote after).
        gpus: GPU indices for the ranks (``[0, 1]`` or ``"0,1"``): sets CUDA_VISIBLE_DEVICES.
        env: extra environment variables for every rank (this process's stays unchanged).
        timeout: seconds; when they pass, every rank dumps its Python stacks (faulthandler on
            SIGUSR2), the ranks are torn down and :class:`nbdist.LaunchTimeoutError` is raised.
        max_restarts: times the whole group is restarted after a failure (NBDIST_RESTART_COUNT
            tells the ranks which attempt they are).
        log_dir: where ``<job-id>/rank_<r>.log`` go; default ``$TMPDIR/nbdist-<uid>``, where
            job directories older than a week are deleted (the newest 50 always stay).
        master_addr, master_port: the rendezvous (a free port by default; a launch that fails
            because the port was taken is retried once on a free port, single node only).
        nnodes, node_rank: static multi-node rendezvous: global RANK = node_rank*nprocs + local.
        stream: print the ranks' output live into the cell as ``[rank r] ...`` lines.
        background: return a :class:`nbdist.Job` at once instead of waiting.
        grace: seconds between SIGTERM and SIGKILL when the ranks are torn down.
        prefix: format of the live line prefix (``{rank}`` is the global rank).
        monitor: sample the GPUs' power, energy, utilization and memory while the job runs
            (:meth:`nbdist.Job.energy`, :meth:`nbdist.Job.plot`, ``gpu.csv`` in the job's log dir).
        background_load: an :class:`nbdist.Load` started first and restarted until the ranks
            end; then a foreground launch returns the record (see :mod:`nbdist.load`) instead of
            the results (which are in ``record["foreground"]["result"]``).

    Returns:
        The ranks' return values, index = local rank (a :class:`nbdist.Job` if ``background``).

    Raises:
        nbdist.WorkerError: a rank failed; names the root-cause rank, its exit code or signal,
            the remote exception and traceback, and every failed rank. It is raised as soon as
            the failure is known (no restart left): ranks still running are listed as being
            stopped and go down in the background (SIGTERM, SIGKILL after ``grace``); the next
            launch in this process waits until they are gone.
        nbdist.LaunchTimeoutError: ``timeout`` passed (a WorkerError and a TimeoutError).
        nbdist.LaunchValueError: a bad argument (named in the message).
        KeyboardInterrupt: after tearing the ranks down, when the cell was interrupted.
    """
    if not isinstance(background, bool):
        raise LaunchValueError(f"background must be True or False, got {background!r}")
    _check_prefix(prefix, require_rank=True)
    plan = _plan(fn, args, kwargs, nprocs, start_method=start_method, gpus=gpus, env=env,
                 timeout=timeout, max_restarts=max_restarts, log_dir=log_dir,
                 master_addr=master_addr, master_port=master_port, nnodes=nnodes,
                 node_rank=node_rank, stream=stream and not background, grace=grace)
    if monitor or background_load is not None:  # background-jobs extensions (nbdist.load)
        from .load import launch_extended

        return launch_extended(plan, background, prefix, monitor, background_load)
    return start_plan(plan, background, prefix)


def start_plan(plan: _Plan, background: bool, prefix: str = "[rank {rank}] ", setup=None):
    _check_prefix(prefix, require_rank=False)  # notebook_launcher's template comes here directly
    if plan.stream:
        print("nbdist: " + ", ".join(plan.decisions), flush=True)
    job = Job(plan)
    if setup is not None:
        setup(job)
    if background:
        job._start()
        return job
    try:
        return run_foreground(job, prefix)
    except WorkerError as exc:
        raise exc.with_traceback(None) from None
