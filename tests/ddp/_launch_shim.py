"""Temporary stand-in for nbdist.launch (delete once the real launcher is on this branch).

Same contract: launch(fn, args, nprocs) runs fn(*args) in nprocs fresh processes with RANK,
WORLD_SIZE, MASTER_ADDR and MASTER_PORT set, returns the per-rank results in rank order, and on the
first failed rank kills the others and raises naming it.
"""

from __future__ import annotations

import os
import pickle
import queue
import socket
import traceback

import cloudpickle
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, nprocs, port, payload, results):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nprocs),
                      LOCAL_WORLD_SIZE=str(nprocs), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        fn, args = cloudpickle.loads(payload)
        # Plain pickle bytes: torch's queue would share tensors through fds that die with us.
        results.put((rank, True, pickle.dumps(fn(*args))))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        results.put((rank, False, f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))


class ShimLaunchError(RuntimeError):
    pass


def launch(fn, args=(), nprocs=2, timeout=240.0):
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = _free_port()
    # cloudpickle, like nbdist.launch: functions defined in a notebook cell travel by value.
    payload = cloudpickle.dumps((fn, tuple(args)))
    procs = [ctx.Process(target=_worker, args=(r, nprocs, port, payload, results), daemon=True)
             for r in range(nprocs)]
    for p in procs:
        p.start()
    out = {}
    import time
    deadline = time.monotonic() + timeout
    try:
        while len(out) < nprocs:
            try:
                rank, ok, value = results.get(timeout=0.2)
            except queue.Empty:
                for r, p in enumerate(procs):
                    if r not in out and p.exitcode is not None:
                        # A rank died without reporting (e.g. SIGKILL): drain once more, then fail.
                        try:
                            rank, ok, value = results.get(timeout=1.0)
                        except queue.Empty:
                            raise ShimLaunchError(f"rank {r} died with exit code {p.exitcode}")
                        break
                else:
                    if time.monotonic() > deadline:
                        raise ShimLaunchError("launch timed out")
                    continue
            if not ok:
                raise ShimLaunchError(f"rank {rank} failed: {value}")
            out[rank] = pickle.loads(value)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        for p in procs:
            p.join(5)
    return [out[r] for r in range(nprocs)]
