"""``nbdist.notebook_launcher``: accelerate's ``notebook_launcher`` signature on nbdist's launcher.

A notebook switches by changing one import: ``from nbdist import notebook_launcher``. Unlike
accelerate's launcher it works after the kernel used CUDA (zygote), returns the ranks' results,
and raises :class:`nbdist.WorkerError` naming the failing rank.

Port choice: accelerate always uses ``use_port`` (default "29500"). nbdist uses ``use_port`` when
the caller passed it explicitly; when it is left at the default and 29500 is busy (another job, a
previous launch still closing), nbdist picks a free port instead of failing.
"""

from __future__ import annotations

import socket

from ._errors import LaunchValueError
from .launch import _plan, start_plan

_DEFAULT_PORT = "29500"
_PRECISIONS = ("no", "fp16", "bf16", "fp8")


def _port_busy(addr: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((addr, port))
        except OSError:
            return True
    return False


def notebook_launcher(
    function,
    args=(),
    num_processes=None,
    mixed_precision="no",
    use_port=_DEFAULT_PORT,
    master_addr="127.0.0.1",
    node_rank=0,
    num_nodes=1,
    rdzv_backend="static",
    rdzv_endpoint="",
    rdzv_conf=None,
    rdzv_id="none",
    max_restarts=0,
    monitor_interval=0.1,
    log_line_prefix_template=None,
    **launch_kwargs,
):
    """Runs ``function(*args)`` in ``num_processes`` ranks like ``accelerate.notebook_launcher``
    and returns the list of the ranks' return values.

    Accepts every parameter of accelerate's launcher. ``rdzv_backend`` must be ``"static"``
    (nbdist's rendezvous is static); ``monitor_interval`` and ``rdzv_conf``/``rdzv_id`` are
    accepted and ignored (nbdist's supervisor is event driven). ``log_line_prefix_template``
    uses accelerate's ``{rank}`` placeholder. Extra keyword arguments go to :func:`nbdist.launch`
    (``start_method``, ``timeout``, ``gpus``...).
    """
    precision = str(mixed_precision).lower()
    if precision not in _PRECISIONS:
        raise LaunchValueError(f"mixed_precision must be one of {_PRECISIONS}, "
                               f"got {mixed_precision!r}")
    if rdzv_backend not in ("static", None):
        raise LaunchValueError(f"rdzv_backend={rdzv_backend!r} is not supported: nbdist uses a "
                               f"static rendezvous (master_addr, use_port)")
    try:
        port = int(use_port)
    except (TypeError, ValueError):
        raise LaunchValueError(f"use_port must be a port number, got {use_port!r}") from None
    if rdzv_endpoint:
        host, _, p = str(rdzv_endpoint).rpartition(":")
        if host:
            master_addr = host
        if p:
            port = int(p)
    master_port = port
    if str(use_port) == _DEFAULT_PORT and num_nodes == 1 and not rdzv_endpoint:
        if _port_busy(master_addr, port):
            master_port = None  # the default was never a choice of the user's: take a free one
    env = dict(launch_kwargs.pop("env", None) or {})
    env.setdefault("ACCELERATE_MIXED_PRECISION", precision)
    env.setdefault("MIXED_PRECISION", precision)
    prefix = launch_kwargs.pop("prefix", None) or log_line_prefix_template or "[rank {rank}] "
    background = launch_kwargs.pop("background", False)
    plan = _plan(function, args, None, num_processes,
                 start_method=launch_kwargs.pop("start_method", "auto"),
                 gpus=launch_kwargs.pop("gpus", None), env=env,
                 timeout=launch_kwargs.pop("timeout", None), max_restarts=max_restarts,
                 log_dir=launch_kwargs.pop("log_dir", None), master_addr=master_addr,
                 master_port=master_port, nnodes=num_nodes, node_rank=node_rank,
                 stream=launch_kwargs.pop("stream", True) and not background,
                 grace=launch_kwargs.pop("grace", 5.0), caller="notebook_launcher")
    if launch_kwargs:
        raise LaunchValueError(f"notebook_launcher: unknown arguments {sorted(launch_kwargs)}")
    return start_plan(plan, background, prefix)
