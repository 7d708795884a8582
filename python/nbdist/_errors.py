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
