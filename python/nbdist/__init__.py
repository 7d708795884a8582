"""nbdist: start multi-GPU PyTorch work from a notebook cell, in the foreground or the background.

The public API is re-exported here; the C++ core lives in the private ``nbdist._core`` (no torch)
and ``nbdist._ddp`` (LibTorch) extensions.
"""

from ._errors import (
    ArcError,
    ArcValueError,
    DDPError,
    DDPValueError,
    LaunchError,
    LaunchTimeoutError,
    LaunchValueError,
    MonitorError,
    NbdistError,
    NbdistTimeoutError,
    NbdistValueError,
    WorkerError,
)
from ._job_ext import jobs, wait_all
from .accelerate_compat import notebook_launcher
from .job import Job
from .launch import launch
from .load import Load
from .monitor import Monitor, MonitorValueError

__version__ = "0.1.0"

__all__ = [
    "ArcError",
    "ArcValueError",
    "DDPError",
    "DDPValueError",
    "Job",
    "LaunchError",
    "LaunchTimeoutError",
    "LaunchValueError",
    "Load",
    "Monitor",
    "MonitorError",
    "MonitorValueError",
    "NbdistError",
    "NbdistTimeoutError",
    "NbdistValueError",
    "WorkerError",
    "__version__",
    "jobs",
    "launch",
    "load_ipython_extension",
    "notebook_launcher",
    "wait_all",
]


def load_ipython_extension(ipython) -> None:
    """``%load_ext nbdist``: registers the ``%%nbdist`` cell magic, ``%nbdist_jobs`` and
    ``%nbdist_kill``."""
    from .magic import load_ipython_extension as load

    load(ipython)
