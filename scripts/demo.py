"""Demo of nbdist.launch: an all_reduce across ranks, a failing rank, a background job.

Uses every visible GPU with NCCL, or 2 CPU ranks with Gloo when there is no GPU.
"""

import os
import time

import nbdist
from nbdist.launch import visible_gpu_count


def all_reduce(backend):
    import torch
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    device = "cpu"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        device = f"cuda:{os.environ['LOCAL_RANK']}"
    dist.init_process_group(backend)
    t = torch.full((1024,), float(rank + 1), device=device)
    dist.all_reduce(t)
    print(f"all_reduce on {device}: {t[0].item()}")
    dist.destroy_process_group()
    return {"rank": rank, "world": int(os.environ["WORLD_SIZE"]), "sum": t[0].item()}


def fail_on_last_rank():
    if int(os.environ["RANK"]) == int(os.environ["WORLD_SIZE"]) - 1:
        raise RuntimeError("this rank fails on purpose")
    time.sleep(30)


def main():
    ngpu = visible_gpu_count()
    nprocs, backend = (ngpu, "nccl") if ngpu >= 1 else (2, "gloo")
    print(f"== nbdist demo: {nprocs} ranks, {backend}")

    t0 = time.perf_counter()
    results = nbdist.launch(all_reduce, (backend,), nprocs=nprocs)
    print(f"== results ({time.perf_counter() - t0:.2f} s): {results}")
    expected = nprocs * (nprocs + 1) / 2
    assert all(r["sum"] == expected for r in results), results

    t0 = time.perf_counter()
    try:
        nbdist.launch(fail_on_last_rank, nprocs=nprocs, stream=False)
    except nbdist.WorkerError as err:
        print(f"== a failing rank, reported in {time.perf_counter() - t0:.2f} s: rank {err.rank} "
              f"raised {err.exc_type}: {err.exc_message}")

    job = nbdist.launch(all_reduce, (backend,), nprocs=nprocs, background=True)
    print(f"== background job {job.id}: {job.status}")
    print(f"== background results: {job.wait(timeout=300)} ({job.status})")
    print("== demo ok")


if __name__ == "__main__":
    main()
