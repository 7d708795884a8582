"""nbdist.Load: a restarting background load beside a foreground launch (the experiment pattern).

::

    load = nbdist.Load("python stress.py --size 8192", gpus=[1], restart=True, restart_delay=2,
                       warmup=10)
    results = nbdist.launch(train, nprocs=1, gpus=[0], background_load=load, monitor=True)
    # -> the record: foreground result, energy (attribution "combined"), the load's runs

The load starts first; ``warmup`` seconds later the foreground starts. Whenever the load exits it
is started again (after ``restart_delay`` seconds) until the foreground ends or fails; then its
whole process group gets SIGTERM and, ``grace`` seconds later, SIGKILL. Each run is one
one-rank supervisor of the C++ process layer (own process group, PDEATHSIG, the process-wide
reaper, pipes always drained), its output in ``<job log dir>/bg/run_<n>.log`` (n from 0).

After the foreground ends, ``<job log dir>/record.json`` (written atomically) holds::

    {"job_id", "status", "started", "ended", "elapsed_s",
     "foreground": {"nprocs", "gpus", "restarts", "result", "error"},
     "energy": {"attribution": "combined", "available", "reason", "total_j", "summary", "csv"},
     "background_load": {"command", "gpus", "runs": [{"run", "pid", "started", "ended",
                         "duration_s", "exit_code", "signal", "how", "stopped_by_nbdist",
                         "log"}], "exit_codes", "restarts", "error"}}
"""

from __future__ import annotations

import json
import math
import os
import shlex
import sys
import threading
import time
from typing import Any, Callable

from ._errors import LaunchError, LaunchValueError
from ._io import atomic_write_json

RECORD_NAME = "record.json"
CSV_NAME = "gpu.csv"


def _core():
    from . import _core as core

    return core.launch


def _number(name: str, value, minimum: float = 0.0) -> float:
    # NaN passes a `< minimum` test: a NaN grace was an immediate SIGKILL, an infinite
    # restart_delay killed the restart thread (Event.wait overflows).
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or value < minimum):
        raise LaunchValueError(f"Load: {name} must be a finite number of seconds >= "
                               f"{minimum:g}, got {value!r}")
    return float(value)


class Load:
    """A background load: a command (``"python stress.py"`` or ``["python", "stress.py"]``) or a
    Python function (run in a fresh interpreter, cloudpickled), restarted whenever it exits.

    Args:
        command_or_fn: the program (a string is split like a shell would, without a shell) or a
            callable (``args``/``kwargs`` are passed to it).
        gpus: GPU indices for the load (sets CUDA_VISIBLE_DEVICES); None inherits this process's.
        restart: start it again whenever it exits, until stopped.
        restart_delay: seconds between an exit and the next run.
        warmup: seconds the load runs alone before the foreground starts.
        grace: seconds between SIGTERM and SIGKILL when the load is stopped.
        env: extra environment variables for the load.
        max_runs: stop restarting after this many runs (None: no limit).
        cwd: working directory (default: this process's).

    Attributes (live while it runs): ``runs`` (one dict per run: run, pid, started, ended,
    duration_s, exit_code, signal, how, stopped_by_nbdist, log), ``restarts``, ``exit_codes``,
    ``log_dir``, ``running``.
    """

    def __init__(self, command_or_fn, *, gpus=None, restart: bool = True,
                 restart_delay: float = 2.0, warmup: float = 0.0, grace: float = 5.0,
                 env: dict | None = None, args: tuple = (), kwargs: dict | None = None,
                 max_runs: int | None = None, cwd: str | None = None) -> None:
        from .launch import _check_gpus

        if callable(command_or_fn):
            self.fn: Callable | None = command_or_fn
            self.argv: list[str] | None = None
            self.command = getattr(command_or_fn, "__qualname__", repr(command_or_fn))
        else:
            if isinstance(command_or_fn, str):
                argv = shlex.split(command_or_fn)
            elif isinstance(command_or_fn, (list, tuple)) and all(
                    isinstance(a, str) for a in command_or_fn):
                argv = list(command_or_fn)
            else:
                raise LaunchValueError(
                    f"Load: command_or_fn must be a command (str or list of str) or a callable, "
                    f"got {type(command_or_fn).__name__}")
            if not argv:
                raise LaunchValueError("Load: the command is empty")
            self.fn, self.argv = None, argv
            self.command = shlex.join(argv)
        if not isinstance(restart, bool):
            raise LaunchValueError(f"Load: restart must be True or False, got {restart!r}")
        if not isinstance(args, (tuple, list)):
            raise LaunchValueError(f"Load: args must be a tuple, got {type(args).__name__}")
        if kwargs is not None and not isinstance(kwargs, dict):
            raise LaunchValueError(f"Load: kwargs must be a dict, got {type(kwargs).__name__}")
        if env is not None and (not isinstance(env, dict) or not all(
                isinstance(k, str) and k and "=" not in k for k in env)):
            raise LaunchValueError(f"Load: env must be a dict of variable names to values, "
                                   f"got {env!r}")
        if max_runs is not None and (isinstance(max_runs, bool) or not isinstance(max_runs, int)
                                     or max_runs < 1):
            raise LaunchValueError(f"Load: max_runs must be an int >= 1 or None, got {max_runs!r}")
        try:
            self.gpus = _check_gpus(gpus)
        except LaunchValueError as exc:
            raise LaunchValueError(f"Load: {exc}") from None
        self.restart = restart
        self.restart_delay = _number("restart_delay", restart_delay)
        self.warmup = _number("warmup", warmup)
        self.grace = _number("grace", grace)
        self.env = {k: str(v) for k, v in (env or {}).items()}
        self.args, self.kwargs = tuple(args), dict(kwargs or {})
        self.max_runs = max_runs
        self.cwd = cwd
        self.runs: list[dict] = []
        self.error: str | None = None
        self.log_dir: str | None = None
        self._job_id = ""
        self._payload: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sup = None
        self._lock = threading.Lock()
        self._first = threading.Event()
        self._first_error: BaseException | None = None

    # -- public --------------------------------------------------------------------------------

    @property
    def restarts(self) -> int:
        """Runs started after the first."""
        return max(0, len(self.runs) - 1)

    @property
    def exit_codes(self) -> list:
        """Each finished run's exit code (None where it died from a signal)."""
        return [r["exit_code"] for r in self.runs if r["ended"] is not None]

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, log_dir: str, job_id: str = "load") -> Load:
        """Starts the first run (output in ``<log_dir>/bg/run_0.log``) and the restart loop.
        Raises :class:`nbdist.LaunchError` when the first run cannot be started. A Load is started
        once."""
        if self._thread is not None:
            raise LaunchError(f"Load {self.command!r} was already started; make a new Load")
        self.log_dir = os.path.join(os.fspath(log_dir), "bg")
        os.makedirs(self.log_dir, mode=0o700, exist_ok=True)
        self._job_id = job_id
        if self.fn is not None:
            from .launch import _write_payload

            self._payload = _write_payload(self.log_dir, self.fn, self.args, self.kwargs)
        self._thread = threading.Thread(target=self._loop, name=f"nbdist-load-{job_id}",
                                        daemon=True)
        self._thread.start()
        self._first.wait()
        if self._first_error is not None:
            raise self._first_error
        return self

    def stop(self, grace: float | None = None) -> None:
        """Stops the load: no more restarts; the current run's process group gets SIGTERM, then
        SIGKILL after ``grace`` seconds (default: the Load's). Returns once it is gone. A Load
        never started has nothing to stop (and can still be started)."""
        g = self.grace if grace is None else _number("stop: grace", grace)
        if self._thread is None:
            return
        with self._lock:
            self._stop.set()
            sup = self._sup
        if sup is not None:
            sup.kill(g)
        if self._thread is not None:
            self._thread.join()

    def to_dict(self) -> dict:
        return {"command": self.command, "gpus": self.gpus, "restart": self.restart,
                "restart_delay": self.restart_delay, "warmup": self.warmup, "grace": self.grace,
                "log_dir": self.log_dir, "runs": [dict(r) for r in self.runs],
                "exit_codes": self.exit_codes, "restarts": self.restarts, "error": self.error}

    def __repr__(self) -> str:
        state = "running" if self.running else ("stopped" if self.runs else "not started")
        return f"<nbdist.Load {self.command!r} {state} runs={len(self.runs)}>"

    # -- the restart loop ----------------------------------------------------------------------

    def _env(self, run: int) -> list[str]:
        env = dict(os.environ)
        if self.gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in self.gpus)
        env["NBDIST_JOB_ID"] = self._job_id
        env["NBDIST_LOAD_RUN"] = str(run)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.update(self.env)
        if self.fn is not None:
            env["NBDIST_RESULT_FD"] = "3"
        return [f"{k}={v}" for k, v in env.items()]

    def _start_run(self, n: int):
        core = _core()
        name = f"run_{n}.log"
        sup = core.Supervisor(job_id=f"{self._job_id}-load-{n}", log_dir=self.log_dir, nranks=1,
                              tail_bytes=16 * 1024, line_queue_bytes=0, stream=False,
                              grace_s=self.grace, timeout_s=0.0, dump_wait_s=0.0,
                              log_names=[name])
        argv = ([sys.executable, "-m", "nbdist._worker", self._payload] if self.fn is not None
                else self.argv)
        try:
            sup.open_rank(0, False)
            pid = sup.spawn_rank(0, argv, self._env(n), self.cwd or os.getcwd(), 3)
        finally:
            sup.seal()
        return sup, pid, os.path.join(self.log_dir, name)

    def _loop(self) -> None:
        core = _core()
        n = 0
        while not self._stop.is_set():
            try:
                sup, pid, log = self._start_run(n)
            except BaseException as exc:
                msg = f"background load {self.command!r}: run {n} could not start: {exc}"
                self.error = msg
                if n == 0:
                    self._first_error = LaunchError(msg)
                    self._first_error.__cause__ = exc
                break
            run = {"run": n, "pid": pid, "started": time.time(), "ended": None,
                   "duration_s": None, "exit_code": None, "signal": None, "how": None,
                   "stopped_by_nbdist": False, "log": log}
            with self._lock:
                self._sup = sup
                self.runs.append(run)
                stopping = self._stop.is_set()
            if stopping:
                sup.kill(self.grace)
            self._first.set()
            sup.wait(-1.0)
            st = sup.ranks()[0]
            ws = st.wait_status
            run["ended"] = time.time()
            run["duration_s"] = round(run["ended"] - run["started"], 3)
            if os.WIFEXITED(ws):
                run["exit_code"] = os.WEXITSTATUS(ws)
            elif os.WIFSIGNALED(ws):
                run["signal"] = core.signal_name(os.WTERMSIG(ws))
            run["how"] = core.describe_wait_status(ws)
            run["stopped_by_nbdist"] = bool(st.after_teardown)
            with self._lock:
                self._sup = None
            n += 1
            if not self.restart or (self.max_runs is not None and n >= self.max_runs):
                break
            # Event.wait raises OverflowError past TIMEOUT_MAX (a finite but huge delay).
            self._stop.wait(min(self.restart_delay, threading.TIMEOUT_MAX))
        self._first.set()

    def _wait_warmup(self, job) -> None:
        end = time.monotonic() + self.warmup
        while time.monotonic() < end and job._kill_grace is None:
            time.sleep(min(0.05, max(0.0, end - time.monotonic())))


# -- the record ------------------------------------------------------------------------------------

def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        if isinstance(value, (list, tuple)):
            return [_jsonable(v) for v in value]
        if isinstance(value, dict):
            return {str(k): _jsonable(v) for k, v in value.items()}
        return repr(value)


def write_json_atomic(path: str, data: Any) -> str:
    """Writes ``data`` as JSON to ``path`` atomically (temporary file, fsync, rename)."""
    return atomic_write_json(path, data, indent=2, allow_nan=False, default=repr)


def _clean_floats(value: Any) -> Any:
    """NaN/inf are not JSON: they become None."""
    import math

    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean_floats(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean_floats(v) for v in value]
    return value


def build_record(job) -> dict:
    load: Load | None = job._ext.get("load")
    mon = job._ext.get("monitor")
    err = job._error
    record = {
        "job_id": job.id, "status": job.status, "started": job.started, "ended": job.ended,
        "elapsed_s": round(job.elapsed, 3),
        "foreground": {"nprocs": job.nprocs, "gpus": job.gpus, "restarts": job.restarts,
                       "result": _jsonable(job._results) if job._results is not None else None,
                       "error": None if err is None else f"{type(err).__name__}: {err}"},
    }
    energy: dict[str, Any] = {"attribution": "combined"}
    if mon is None:
        energy.update(available=False, reason="launched without monitor=True", total_j=None)
    else:
        s = mon.summary()
        energy.update(available=bool(s.available), reason=s.reason or None, total_j=s.total_j,
                      summary=s.to_dict(), csv=job._ext.get("csv"))
        if s.available:
            energy["window"] = ("from the load's start (or the foreground's, without a load) to "
                                "the foreground's end")
    record["energy"] = energy
    record["background_load"] = None if load is None else load.to_dict()
    if job._ext.get("hook_errors"):
        record["errors"] = list(job._ext["hook_errors"])
    return _clean_floats(record)


# -- the hooks a launch installs on its Job --------------------------------------------------------

def _forget(job) -> None:
    """A Job that will never start: at exit it must not be waited for (kill() would wait 11 s
    for a driver that never ran), and nbdist.jobs() must not list it as "starting"."""
    from .job import _live_jobs, _registry

    _live_jobs.discard(job)
    if job in _registry:
        _registry.remove(job)


def attach(job, *, monitor: bool, background_load: Load | None) -> None:
    """Installs the monitor, the background load and the record on a Job not yet started; when
    that fails (a bad argument, a GPU the monitor cannot see) the Job is forgotten and the error
    raised."""
    try:
        _attach(job, monitor, background_load)
    except BaseException:
        _forget(job)
        raise


def _attach(job, monitor: bool, background_load: Load | None) -> None:
    if background_load is not None and not isinstance(background_load, Load):
        raise LaunchValueError(f"background_load must be an nbdist.Load, "
                               f"got {type(background_load).__name__}")
    if background_load is not None and background_load._thread is not None:
        raise LaunchValueError("background_load: this Load was already started; make a new one")
    if not isinstance(monitor, bool):
        raise LaunchValueError(f"monitor must be True or False, got {monitor!r}")
    if monitor:
        from .monitor import Monitor

        gpus = None  # every visible GPU, unless both sides name theirs
        load_gpus = None if background_load is None else background_load.gpus
        if job.gpus is not None and (background_load is None or load_gpus is not None):
            gpus = sorted(set(job.gpus) | set(load_gpus or []))
        job._ext["monitor"] = Monitor(gpus=gpus)
    if background_load is not None:
        job._ext["load"] = background_load

    def on_start(job) -> None:
        mon = job._ext.get("monitor")
        if mon is not None:
            mon.start()
        load = job._ext.get("load")
        if load is not None:
            load.start(job.log_dir, job.id)
            if mon is not None and mon.active:
                mon.mark("load_started")
            load._wait_warmup(job)
        if mon is not None and mon.active:
            mon.mark("foreground_started")

    def on_finish(job) -> None:
        mon = job._ext.get("monitor")
        try:
            if mon is not None and mon.running:
                mon.stop()
        finally:
            load = job._ext.get("load")
            if load is not None:
                load.stop()
        if mon is not None and mon.active:
            job._ext["csv"] = mon.to_csv(os.path.join(job.log_dir, CSV_NAME))
        record = build_record(job)
        job._ext["record"] = record
        write_json_atomic(os.path.join(job.log_dir, RECORD_NAME), record)

    job._on_start.append(on_start)
    job._on_finish.append(on_finish)


def launch_extended(plan, background: bool, prefix: str, monitor: bool, background_load):
    """``nbdist.launch`` with ``monitor`` and/or ``background_load``: the Job gets the hooks;
    a foreground launch with a background load returns the record instead of the results."""
    from .launch import start_plan

    made = []

    def setup(job) -> None:
        attach(job, monitor=monitor, background_load=background_load)
        made.append(job)

    out = start_plan(plan, background, prefix, setup=setup)
    if background or background_load is None:
        return out
    return made[0].record
