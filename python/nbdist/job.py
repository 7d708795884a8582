"""nbdist.Job: a handle on a launch running in the background (and, underneath, every launch).

Every launch is a Job. Its driver runs the attempts (restarts, one retry on a fresh port when the
rendezvous port was taken): on a small thread of its own for a background job, so that it makes
progress while the cell is free, or in the caller's thread for a foreground launch, which then
also prints the ranks' lines (no thread hand-off between the call and the ranks, and Ctrl-C lands
in the driver itself).
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
import weakref
from collections import deque

from ._errors import LaunchError, NbdistTimeoutError
from ._job_ext import JobExtensions, register


def _wait_seconds(name: str, timeout):
    """None (no limit) or a finite number of seconds >= 0: NaN would time out at once."""
    if timeout is None:
        return None
    from .launch import check_seconds

    return check_seconds(f"{name}: timeout", timeout)


STATES = ("starting", "running", "succeeded", "failed", "killed", "timed_out")

_live_jobs: weakref.WeakSet = weakref.WeakSet()
# This process's (kernel's) Jobs, oldest first: nbdist.jobs() (see _job_ext.register).
_registry: list = []


class Job(JobExtensions):
    """A launch in progress or finished.

    Attributes: ``id``, ``status`` (one of ``starting``, ``running``, ``succeeded``, ``failed``,
    ``killed``, ``timed_out``), ``pids`` (the current attempt's rank pids), ``gpus``, ``log_dir``
    (this job's directory of ``rank_<r>.log`` files), ``started`` / ``ended`` (``time.time()``
    values, ``ended`` None while running), ``elapsed`` (seconds), ``restarts`` (attempts redone).
    """

    def __init__(self, plan) -> None:
        self._plan = plan
        self.id: str = plan.job_id
        self.log_dir: str = plan.job_dir
        self.gpus = plan.gpus
        self.nprocs: int = plan.nprocs
        self.started: float = time.time()
        self.ended: float | None = None
        self.restarts = 0
        self._status = "starting"
        self._sup = None
        self._pids: list[int] = []
        self._results: list | None = None
        self._error: BaseException | None = None
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._pending: deque = deque()
        self._kill_grace: float | None = None
        self._thread = threading.Thread(target=self._drive, name=f"nbdist-job-{self.id}",
                                         daemon=True)
        _live_jobs.add(self)
        # Extensions (background load, monitor, record; see _job_ext.py): callables run in
        # the driver thread before the first attempt, and in _finish before done() turns true.
        self._on_start: list = []
        self._on_finish: list = []
        self._ext: dict = {}
        self._stream_offsets: dict = {}
        register(self)

    def _start(self) -> None:
        self._thread.start()

    # -- public API --------------------------------------------------------------------------

    @property
    def status(self) -> str:
        return self._status

    @property
    def pids(self) -> list[int]:
        return list(self._pids)

    @property
    def elapsed(self) -> float:
        return (self.ended if self.ended is not None else time.time()) - self.started

    def poll(self) -> str:
        """The current status, without waiting."""
        return self._status

    def done(self) -> bool:
        """True once the job's outcome is final: every rank of the final attempt has exited, or
        a rank failed and the others are being stopped (SIGTERM, SIGKILL after the grace; the
        next launch in this process waits until they are gone)."""
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> list:
        """Waits for the job; returns the ranks' results (index = local rank) or raises the
        launcher's error (:class:`nbdist.WorkerError`, its timeout subclass, or
        :class:`nbdist.LaunchError`). Raises ``TimeoutError`` if ``timeout`` seconds pass first."""
        if not self._done.wait(_wait_seconds("Job.wait", timeout)):
            raise NbdistTimeoutError(
                f"job {self.id} is still {self._status} after waiting {timeout} s"
            )
        if self._error is not None:
            raise self._error
        return list(self._results or [])

    def result(self, timeout: float | None = None) -> list:
        """Same as :meth:`wait`."""
        return self.wait(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Waits like :meth:`wait`; returns the job's error, or None when it succeeded."""
        if not self._done.wait(_wait_seconds("Job.exception", timeout)):
            raise NbdistTimeoutError(
                f"job {self.id} is still {self._status} after waiting {timeout} s"
            )
        return self._error

    def kill(self, grace: float = 5.0) -> None:
        """Tears every rank down (SIGTERM to each rank's process group, ``grace`` seconds, then
        SIGKILL) and waits until they are gone. No restart follows."""
        from .launch import check_seconds

        grace = check_seconds("Job.kill: grace", grace)
        with self._lock:
            self._kill_grace = grace
            sup = self._sup
        if sup is not None:
            sup.kill(grace)
        self._done.wait(grace + 10.0)
        if sup is not None:
            sup.wait(grace + 10.0)  # a failed job's ranks may still be on their way out

    def logs(self, rank: int | None = None, tail: int | None = None) -> str:
        """The ranks' output from the log files (stdout and stderr interleaved). ``rank`` None:
        every rank, each line prefixed ``[rank r]``; ``tail``: only the last ``tail`` lines."""
        ranks = range(self.nprocs) if rank is None else [rank]
        if rank is not None and not 0 <= rank < self.nprocs:
            raise LaunchError(f"Job.logs: rank {rank} is not in 0..{self.nprocs - 1}")
        out: list[str] = []
        for r in ranks:
            path = os.path.join(self.log_dir, f"rank_{r}.log")
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    lines = f.read().splitlines()
            except FileNotFoundError:
                lines = []
            if tail is not None:
                lines = lines[-tail:] if tail > 0 else []
            out.extend(lines if rank is not None else [f"[rank {r}] {ln}" for ln in lines])
        return "\n".join(out) + ("\n" if out else "")

    def __repr__(self) -> str:
        return (f"<nbdist.Job {self.id} {self._status} nprocs={self.nprocs} "
                f"elapsed={self.elapsed:.1f}s>")

    # -- driver ------------------------------------------------------------------------------

    def _take_lines(self, max_lines: int = 10000) -> list:
        with self._lock:
            lines = list(self._pending)
            self._pending.clear()
            sup = self._sup
        if sup is not None:
            lines.extend(sup.take_lines(max_lines))
        return lines

    def _drive(self, show=None) -> None:
        """Runs the attempts until the job ends. Background jobs run it on their own thread;
        a foreground launch runs it in the caller's thread with ``show`` printing the lines
        (no thread hand-offs on the way to the ranks, and Ctrl-C arrives right here)."""
        plan = self._plan
        port_retried = False
        restart = 0
        try:
            for hook in self._on_start:
                hook(self)
            while True:
                with self._lock:
                    if self._kill_grace is not None:
                        self._finish("killed", None, LaunchError(f"job {self.id} was killed"))
                        return
                sup, pids, start_error = plan.start_attempt(restart, self)
                self._pids = pids
                self._follow(sup, show, or_failed=True)
                if not sup.done() and self._end_on_failure(sup, start_error, restart,
                                                           port_retried, show):
                    return
                self._follow(sup, show)
                with self._lock:
                    self._pending.extend(sup.take_lines(1 << 30))
                if show is not None:
                    show(self._take_lines())
                state, results, error = plan.collect(sup, start_error)
                if state == "succeeded":
                    self._finish(state, results, None)
                    return
                if state in ("killed", "timed_out") or self._kill_grace is not None:
                    self._finish(state, None, error)
                    return
                if not port_retried and plan.port_taken(error):
                    port_retried = True
                    old = plan.master_port
                    plan.new_port()
                    plan.notice(f"port {old} was taken; retrying on port {plan.master_port}")
                    continue
                if restart < plan.max_restarts:
                    restart += 1
                    self.restarts = restart
                    plan.notice(f"attempt {restart} of {plan.max_restarts} restarts after: "
                                f"{str(error).splitlines()[0]}")
                    continue
                self._finish("failed", None, error)
                return
        except KeyboardInterrupt:
            if show is None:
                raise
            self._interrupted(show)
            raise
        except BaseException as exc:  # a launcher bug or a start failure must still end the job
            self._stop_ranks_after_error()
            self._finish("failed", None, exc)

    def _stop_ranks_after_error(self) -> None:
        """The driver itself failed (the display raised, a launcher bug): the ranks must not run
        on unsupervised. Tears them down (SIGTERM, the grace, SIGKILL) and waits until they are
        gone, so that the error reaches the caller only after the ranks did."""
        with self._lock:
            sup = self._sup
        if sup is None:
            return
        grace = self._plan.grace
        try:
            sup.kill(grace)
            if not sup.wait(grace + 10.0):
                sup.kill(0.0)
                sup.wait(10.0)
        except BaseException:  # a second Ctrl-C, or the supervisor itself broken: no grace
            try:
                sup.kill(0.0)
                sup.wait(10.0)
            except BaseException:
                pass

    def _follow(self, sup, show, or_failed: bool = False) -> None:
        """Waits until the attempt is done (or, with ``or_failed``, its failure is known),
        showing the ranks' lines as they come when ``show`` is given."""
        if show is None:
            sup.wait(-1.0, or_failed)
            return
        while not (sup.done() or (or_failed and sup.failed())):
            sup.wait_activity(0.1, or_failed)
            show(self._take_lines())

    def _end_on_failure(self, sup, start_error, restart: int, port_retried: bool,
                        show) -> bool:
        """A rank failed and the others are being stopped. When nothing follows (no restart, no
        port retry, no kill), the job ends now with the error: the ranks still exiting (a CUDA
        context takes a few hundred ms to tear down) finish in the background, and the next
        attempt of any job waits for them (launch.wait_stopping). Returns whether it ended."""
        from .launch import add_stopping

        plan = self._plan
        if self._kill_grace is not None or start_error is not None:
            return False
        state, results, error = plan.collect(sup, start_error)
        if state != "failed" or restart < plan.max_restarts or (
                not port_retried and plan.port_taken(error)):
            return False
        add_stopping(sup)
        with self._lock:
            self._pending.extend(sup.take_lines(1 << 30))
        if show is not None:
            show(self._take_lines())
        self._finish("failed", None, error)
        return True

    def _interrupted(self, show) -> None:
        """Ctrl-C in the foreground: tear every rank down (a second Ctrl-C skips the grace)."""
        grace = self._plan.grace
        with self._lock:
            self._kill_grace = grace
            sup = self._sup
        print(f"nbdist: interrupted; stopping the ranks of job {self.id} "
              f"(SIGTERM, then SIGKILL after {grace:g} s)", file=sys.stderr, flush=True)
        try:
            if sup is not None:
                sup.kill(grace)
                self._follow(sup, show)
        except KeyboardInterrupt:
            if sup is not None:
                sup.kill(0.0)
                sup.wait(30.0)
        show(self._take_lines())
        self._finish("killed", None, LaunchError(f"job {self.id} was interrupted"))

    def _finish(self, state: str, results, error) -> None:
        self._plan.discard_payload()
        self._results = results
        self._error = error
        self.ended = time.time()
        self._status = state
        for hook in self._on_finish:
            try:
                hook(self)
            except BaseException as exc:  # a failing extension must not leave the job undone
                self._ext.setdefault("hook_errors", []).append(f"{type(exc).__name__}: {exc}")
        self._done.set()


_OWNER_PID = os.getpid()


def _after_fork_in_child() -> None:
    """A forked child owns none of its parent's jobs (their supervisors do not run there), and
    the jobs it starts itself are its own to kill at exit."""
    global _OWNER_PID
    _OWNER_PID = os.getpid()
    _live_jobs.clear()
    _registry.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


@atexit.register
def _kill_live_jobs() -> None:
    if os.getpid() != _OWNER_PID:
        return  # a forked child exiting: the jobs belong to its parent
    for job in list(_live_jobs):
        if not job.done():
            try:
                job.kill(grace=1.0)
            except Exception:
                pass
    from .launch import wait_stopping

    wait_stopping()  # failed jobs' ranks still exiting: their grace still holds
