"""Functions the ranks run (module level, so every start method can find them)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time


def allreduce_rank(scale=1.0):
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    t = torch.tensor([float(dist.get_rank() + 1) * scale])
    dist.all_reduce(t)
    out = (dist.get_rank(), dist.get_world_size(), t.item(), os.environ["LOCAL_RANK"])
    dist.destroy_process_group()
    return out


def nccl_rank():
    """An NCCL all_reduce of ones on this rank's GPU; returns the sum (the world size)."""
    import torch
    import torch.distributed as dist

    local = int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(local)
    dist.init_process_group("nccl")
    t = torch.ones(1 << 20, device=f"cuda:{local}")
    dist.all_reduce(t)
    torch.cuda.synchronize()
    dist.destroy_process_group()
    return t[0].item()


def raise_on_rank1():
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    if dist.get_rank() == 1:
        raise ValueError("rank one is unhappy")
    t = torch.ones(1)
    dist.all_reduce(t)  # rank 0 is stuck here until the teardown
    return "unreachable"


def exit3_on_rank1():
    if os.environ["RANK"] == "1":
        os._exit(3)
    time.sleep(60)


def sys_exit_on_rank1(code):
    if os.environ["RANK"] == "1":
        sys.exit(code)
    time.sleep(60)


def segv_on_rank1():
    if os.environ["RANK"] == "1":
        os.kill(os.getpid(), signal.SIGSEGV)
    time.sleep(60)


def sleep_forever(pid_dir=None):
    if pid_dir:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        with open(os.path.join(pid_dir, f"rank{os.environ['RANK']}.pids"), "w") as f:
            f.write(f"{os.getpid()} {child.pid}\n")
    print(f"rank {os.environ['RANK']} ready", flush=True)
    while True:
        time.sleep(0.5)


def inner_sleep_for_dump():
    time.sleep(600)


def hang_for_timeout():
    inner_sleep_for_dump()


def fail_until_restart(needed):
    count = int(os.environ["NBDIST_RESTART_COUNT"])
    if count < needed and os.environ["RANK"] == "1":
        raise RuntimeError(f"attempt {count} fails")
    return count


def print_a_lot(megabytes):
    line = "x" * 999 + "\n"
    block = line * 1000  # 1 MB
    for _ in range(megabytes):
        sys.stdout.write(block)
    sys.stdout.flush()
    return megabytes


def env_of_rank(names):
    return {n: os.environ.get(n) for n in names}


def say(x):
    print(f"rank {os.environ['RANK']} says {x}", flush=True)
    return x


def wait_then_exit(path):
    while not os.path.exists(path):
        time.sleep(0.01)
    return "done"
