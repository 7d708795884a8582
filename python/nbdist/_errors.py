"""The nbdist exception hierarchy.

Every error derives from :class:`NbdistError` and from the builtin that matches what went wrong,
so ``except ValueError`` keeps working for bad input and ``except TimeoutError`` for deadlines.
C++ errors reach Python through :func:`error_class` (called by the extension's translator).
"""

from __future__ import annotations


class NbdistError(Exception):
    """Base class of every error nbdist raises."""


class NbdistValueError(NbdistError, ValueError):
    """Bad input (an argument, a file, a field); the message says what and where."""


class NbdistTimeoutError(NbdistError, TimeoutError):
    """A deadline passed."""


class LaunchError(NbdistError, RuntimeError):
    """The launcher could not start or supervise the ranks (environment, system call, port)."""


class LaunchValueError(LaunchError, ValueError):
    """A bad argument to :func:`nbdist.launch` or the CLI."""


class WorkerError(LaunchError):
    """One or more ranks failed. Names the root-cause rank (the first to fail), its exit code or
    signal name, the remote exception's type, message and full traceback, and every failed rank.

    Attributes: ``rank`` (root-cause rank, global), ``exit_code`` (int or None), ``signal``
    (e.g. ``"SIGSEGV"`` or None), ``exc_type`` / ``exc_message`` / ``remote_traceback`` (None
    when the rank died without raising), ``remote_exception`` (the unpickled exception when that
    worked), ``failures`` (one dict per failed rank), ``job_id`` and ``log_dir``.
    """

    def __init__(self, message: str, **fields):
        super().__init__(message)
        self.rank = fields.get("rank")
        self.exit_code = fields.get("exit_code")
        self.signal = fields.get("signal")
        self.exc_type = fields.get("exc_type")
        self.exc_message = fields.get("exc_message")
        self.remote_traceback = fields.get("remote_traceback")
        self.remote_exception = fields.get("remote_exception")
        self.failures = fields.get("failures", [])
        self.job_id = fields.get("job_id")
        self.log_dir = fields.get("log_dir")
        self.dumps = fields.get("dumps", {})

    def __reduce__(self):
        fields = {k: v for k, v in self.__dict__.items() if k != "remote_exception"}
        return (_rebuild_worker_error, (type(self), str(self), fields))


def _rebuild_worker_error(cls, message, fields):
    return cls(message, **fields)


class LaunchTimeoutError(WorkerError, TimeoutError):
    """The launch's ``timeout`` passed; ``dumps`` maps each rank to its Python stack dump."""


class MonitorError(NbdistError, RuntimeError):
    """The GPU monitor failed (NVML present but broken, sampler thread)."""


class MonitorValueError(MonitorError, ValueError):
    """A bad argument to the GPU monitor."""


class DDPError(NbdistError, RuntimeError):
    """A failure inside nbdist.ddp (collectives, checkpoints, non-finite loss)."""


class DDPValueError(DDPError, ValueError):
    """A bad model, config, dataset or process group handed to nbdist.ddp."""


class ArcError(NbdistError, RuntimeError):
    """A failure inside nbdist.arc."""


class ArcValueError(ArcError, ValueError):
    """Bad ARC data (a grid, a task file, a submission, a key); names the file, task and field."""


_BY_SUBSYSTEM = {
    "nbdist": {"failure": NbdistError, "invalid": NbdistValueError, "timeout": NbdistTimeoutError},
    "launch": {"failure": LaunchError, "invalid": LaunchValueError, "timeout": NbdistTimeoutError},
    "monitor": {"failure": MonitorError, "invalid": MonitorValueError,
                "timeout": NbdistTimeoutError},
    "ddp": {"failure": DDPError, "invalid": DDPValueError, "timeout": NbdistTimeoutError},
    "arc": {"failure": ArcError, "invalid": ArcValueError, "timeout": NbdistTimeoutError},
}


def error_class(subsystem: str, kind: str) -> type[NbdistError]:
    """The Python class for a C++ error of ``subsystem`` and ``kind`` (failure/invalid/timeout)."""
    return _BY_SUBSYSTEM.get(subsystem, _BY_SUBSYSTEM["nbdist"]).get(kind, NbdistError)
