"""Two single-GPU jobs at once (the ARC Prize pattern): nbdist background jobs vs the peer,
``%%python --bg``-style subprocesses (what IPython's script magic starts), and vs running the two
one after the other.

Each job imports torch, multiplies matrices on its only visible GPU for ``--seconds`` and returns
the number of iterations. Reported per method (median of ``--reps``): wall time until both jobs
finished, and the time until each job's first output line appeared (start latency). Without a
GPU it runs on CPU (then both jobs share the cores; still a valid latency comparison).

    python bench/background_jobs.py --seconds 5 --reps 3 --out bench/out/background_jobs.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from nbdist._io import atomic_write_json

WORK = r'''
import sys, time
print("job started", flush=True)
import torch
dev = "cuda" if torch.cuda.is_available() else "cpu"
n = {size} if dev == "cuda" else 256
a = torch.randn(n, n, device=dev)
end = time.time() + {seconds}
iters = 0
while time.time() < end:
    a = torch.tanh(a @ a)
    iters += 1
if dev == "cuda":
    torch.cuda.synchronize()
print("iters", iters, dev, flush=True)
'''


def work_fn(src):
    exec(compile(src, "<bench work>", "exec"), {"__name__": "__bench__"})
    return True


def first_line_time(path: str, t0: float, deadline: float) -> float:
    while time.time() < deadline:
        try:
            if os.path.getsize(path) > 0:
                return time.time() - t0
        except OSError:
            pass
        time.sleep(0.002)
    return float("nan")


def run_nbdist(src: str, gpus: list[int], log_dir: str, concurrent: bool) -> dict:
    import nbdist

    t0 = time.time()
    firsts = []
    if concurrent:
        jobs = [nbdist.launch(work_fn, (src,), nprocs=1, gpus=[g], background=True,
                              log_dir=log_dir) for g in gpus]
        for j in jobs:
            firsts.append(first_line_time(os.path.join(j.log_dir, "rank_0.log"), t0, t0 + 300))
        nbdist.wait_all(*jobs, timeout=600)
    else:
        for g in gpus:
            t1 = time.time()
            j = nbdist.launch(work_fn, (src,), nprocs=1, gpus=[g], background=True,
                              log_dir=log_dir)
            firsts.append(first_line_time(os.path.join(j.log_dir, "rank_0.log"), t1, t1 + 300))
            j.wait(timeout=600)
    return {"wall_s": time.time() - t0, "first_line_s": firsts}


def run_popen(src: str, gpus: list[int], tmp: str) -> dict:
    script = os.path.join(tmp, "work.py")
    with open(script, "w") as f:
        f.write(src)
    t0 = time.time()
    procs, logs = [], []
    for i, g in enumerate(gpus):
        log = os.path.join(tmp, f"popen_{i}_{time.time_ns()}.log")
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=str(g), PYTHONUNBUFFERED="1")
        with open(log, "w") as out:
            procs.append(subprocess.Popen([sys.executable, script], stdout=out,
                                          stderr=subprocess.STDOUT, env=env))
        logs.append(log)
    firsts = [first_line_time(log, t0, t0 + 300) for log in logs]
    codes = [p.wait(timeout=600) for p in procs]
    assert codes == [0, 0], codes
    return {"wall_s": time.time() - t0, "first_line_s": firsts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="work per job, seconds")
    ap.add_argument("--size", type=int, default=4096, help="matrix size on GPU")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", required=True, help="JSON output path")
    args = ap.parse_args()

    from nbdist.launch import visible_gpu_count

    ngpu = visible_gpu_count()
    gpus = [0, 1] if ngpu >= 2 else [0, 0]
    src = WORK.format(size=args.size, seconds=args.seconds)
    tmp = tempfile.mkdtemp(prefix="nbdist-bench-jobs-")
    rows = {"nbdist background (concurrent)": [], "subprocess --bg peer (concurrent)": [],
            "nbdist one after the other": []}
    for _ in range(args.reps):
        rows["nbdist background (concurrent)"].append(run_nbdist(src, gpus, tmp, True))
        rows["subprocess --bg peer (concurrent)"].append(run_popen(src, gpus, tmp))
        rows["nbdist one after the other"].append(run_nbdist(src, gpus, tmp, False))
    result = {"gpus_visible": ngpu, "job_gpus": gpus, "seconds_per_job": args.seconds,
              "size": args.size, "reps": args.reps, "methods": {}}
    print(f"two jobs of {args.seconds:g} s each on GPUs {gpus} ({ngpu} visible), "
          f"median of {args.reps}")
    print(f"{'method':<36} {'wall s':>8} {'first line s':>13}")
    for name, runs in rows.items():
        wall = statistics.median(r["wall_s"] for r in runs)
        first = statistics.median(max(r["first_line_s"]) for r in runs)
        result["methods"][name] = {"wall_s_median": wall, "first_line_s_median": first,
                                   "runs": runs}
        print(f"{name:<36} {wall:>8.2f} {first:>13.3f}")
    atomic_write_json(args.out, result, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
