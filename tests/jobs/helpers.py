"""Functions the ranks run (module level, so every start method can find them)."""

from __future__ import annotations

import os
import sys
import time


def rank_times(x):
    print(f"rank {os.environ['RANK']} of {os.environ['WORLD_SIZE']} says {x}", flush=True)
    return int(os.environ["RANK"]) * x


def wait_for_file(path, then=None):
    """Prints a line, then waits until ``path`` exists (the test decides when the rank ends)."""
    print(f"rank {os.environ['RANK']} waiting", flush=True)
    while not os.path.exists(path):
        time.sleep(0.02)
    print(f"rank {os.environ['RANK']} done", flush=True)
    return then


def fail_after_file(path):
    while not os.path.exists(path):
        time.sleep(0.02)
    raise RuntimeError(f"rank {os.environ['RANK']} failed on purpose")


def fail_now():
    raise ValueError("immediate failure")


def flood(megabytes):
    line = "x" * 1023 + "\n"
    block = line * 1024
    for _ in range(megabytes):
        sys.stdout.write(block)
    sys.stdout.flush()
    return megabytes


def gloo_allreduce(tag):
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    t = torch.tensor([float(dist.get_rank() + 1)])
    for _ in range(20):  # several collectives, so the two jobs overlap in time
        dist.all_reduce(t)
        t /= dist.get_world_size()
        t *= 0 + 1
    out = (tag, dist.get_rank(), dist.get_world_size(), os.environ["MASTER_PORT"],
           os.environ.get("CUDA_VISIBLE_DEVICES"))
    dist.destroy_process_group()
    return out


def sleep_with_child(pid_file):
    import subprocess

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(pid_file, "w") as f:
        f.write(f"{os.getpid()} {child.pid}\n")
    while True:
        time.sleep(0.5)


def progress_until_seen(seen_path, within=3.0):
    """A progress line ending in '\\r' (no newline yet), held until the test saw it (bounded),
    then rewritten and ended; returns whether it was seen while still unfinished."""
    print("step 1/2", end="\r", flush=True)
    deadline = time.monotonic() + within
    while not os.path.exists(seen_path) and time.monotonic() < deadline:
        time.sleep(0.02)
    print("step 2/2", end="\r", flush=True)
    print(flush=True)
    return os.path.exists(seen_path)
