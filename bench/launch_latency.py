"""Launch latency and crash-to-error latency: nbdist against torch.multiprocessing, accelerate and
torchrun, all in one run, from a process that already imported torch (like a notebook kernel).

For each launcher and each rank count it measures
  * entry: from the launcher call to the moment the LAST rank is inside fn (every rank writes
    time.time() on entry; the call's time.time() is subtracted);
  * crash: from rank 1's crash (it writes time.time() and raises) to the error in the parent
    (the other ranks wait in fn meanwhile); for torchrun, to the torchrun process's exit.

    python bench/launch_latency.py --ranks 2,4 --out bench/results/launch_latency_cpu.json
    python bench/launch_latency.py --ranks 2 --nccl --out /tmp/launch_latency_gpu.json

With --nccl every rank does an NCCL all_reduce on its GPU inside fn (after the entry stamp).
Prints a table (medians) and the target ratios, and writes everything to --out as JSON.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import torch  # noqa: F401  (the launcher's process has torch imported, like a notebook kernel)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_body(rec_dir: str, crash: bool, nccl: bool, rank: int | None = None) -> float:
    """What every rank runs. The entry stamp comes first; torch is referenced so that launchers
    that start fresh interpreters pay for importing it before fn, as real training code does."""
    entered = time.time()
    if rank is None:
        rank = int(os.environ["RANK"])
    with open(os.path.join(rec_dir, f"enter_{rank}"), "w") as f:
        f.write(repr(entered))
    if nccl:
        import torch.distributed as dist

        local = int(os.environ.get("LOCAL_RANK", rank))
        torch.cuda.set_device(local)
        dist.init_process_group("nccl")
        t = torch.ones(1 << 20, device=f"cuda:{local}")
        dist.all_reduce(t)
        torch.cuda.synchronize()
        dist.destroy_process_group()
    else:
        torch.zeros(1).add_(1)
    if crash:
        if rank == 1:
            with open(os.path.join(rec_dir, "crash"), "w") as f:
                f.write(repr(time.time()))
            raise RuntimeError("rank 1 crashes on purpose")
        time.sleep(120)
    return entered


def mp_entry(i: int, rec_dir: str, crash: bool, nccl: bool, nprocs: int, port: int) -> None:
    os.environ.update(RANK=str(i), LOCAL_RANK=str(i), WORLD_SIZE=str(nprocs),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    rank_body(rec_dir, crash, nccl, rank=i)


def read_stamp(path: str) -> float:
    with open(path) as f:
        return float(f.read())


def wait_for_files(rec_dir: str, names: list[str], timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(os.path.exists(os.path.join(rec_dir, n)) for n in names):
        if time.monotonic() > deadline:
            raise TimeoutError(f"missing stamps {names} in {rec_dir}")
        time.sleep(0.001)


# -- launchers: each runs fn once (crash or not) and returns when the launcher returns -----------

def run_nbdist(method):
    def run(nprocs, rec_dir, crash, nccl):
        import nbdist

        nbdist.launch(rank_body, (rec_dir, crash, nccl), nprocs=nprocs, start_method=method,
                      stream=False, grace=2.0)
    return run


def run_torch_mp(method):
    def run(nprocs, rec_dir, crash, nccl):
        import torch.multiprocessing as mp

        mp.start_processes(mp_entry, args=(rec_dir, crash, nccl, nprocs, free_port()),
                           nprocs=nprocs, start_method=method)
    return run


def run_accelerate(nprocs, rec_dir, crash, nccl):
    import contextlib
    import io

    from accelerate import notebook_launcher

    with contextlib.redirect_stdout(io.StringIO()):
        notebook_launcher(rank_body, (rec_dir, crash, nccl), num_processes=nprocs,
                          use_port=str(free_port()))


def run_torchrun(nprocs, rec_dir, crash, nccl):
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nprocs}",
           f"--master-port={free_port()}", os.path.abspath(__file__), "--rank-entry", rec_dir,
           "crash" if crash else "ok", "nccl" if nccl else "cpu"]
    res = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if res.returncode != 0:
        tail = " | ".join(line for line in res.stderr.splitlines()[-400:]
                          if "Error" in line or "error" in line)[-600:]
        raise RuntimeError(f"torchrun exited with {res.returncode}: {tail}")


LAUNCHERS = {
    "nbdist fork": run_nbdist("fork"),
    "nbdist zygote (warm)": run_nbdist("zygote"),
    "nbdist spawn": run_nbdist("spawn"),
    "torch.mp fork": run_torch_mp("fork"),
    "torch.mp spawn": run_torch_mp("spawn"),
    "accelerate.notebook_launcher": run_accelerate,
    "torchrun": run_torchrun,
}
SLOW = {"nbdist spawn", "torch.mp spawn", "accelerate.notebook_launcher", "torchrun"}


def settle() -> float:
    """Seconds until the ranks of nbdist's last failed launch are gone. nbdist reports a failure
    before the other ranks have exited (their CUDA teardown goes on in the background, and its
    next launch waits for it); the other launchers return after it. Called after each crash
    measurement, outside the timed region, so that an entry time never includes the previous
    crash's teardown; reported separately as teardown_after_error."""
    import importlib

    t0 = time.time()
    importlib.import_module("nbdist.launch").wait_stopping()
    return time.time() - t0


def measure_entry(run, nprocs, nccl) -> float:
    with tempfile.TemporaryDirectory(prefix="nbdist-bench-") as rec_dir:
        t0 = time.time()
        run(nprocs, rec_dir, False, nccl)
        wait_for_files(rec_dir, [f"enter_{r}" for r in range(nprocs)])
        return max(read_stamp(os.path.join(rec_dir, f"enter_{r}")) for r in range(nprocs)) - t0


def measure_crash(run, nprocs, nccl) -> float:
    with tempfile.TemporaryDirectory(prefix="nbdist-bench-") as rec_dir:
        try:
            run(nprocs, rec_dir, True, nccl)
        except BaseException as exc:  # every launcher reports the crash its own way
            if isinstance(exc, KeyboardInterrupt):
                raise
            t_err = time.time()
        else:
            raise RuntimeError("the crash was not reported")
        crashed = read_stamp(os.path.join(rec_dir, "crash"))
        return t_err - crashed, settle()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--rank-entry":
        rank_body(sys.argv[2], sys.argv[3] == "crash", sys.argv[4] == "nccl")
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ranks", default="2,4", help="comma-separated rank counts")
    ap.add_argument("--repeats", type=int, default=15, help="timed runs of the fast launchers")
    ap.add_argument("--slow-repeats", type=int, default=2,
                    help="timed runs of launchers that start fresh interpreters")
    ap.add_argument("--nccl", action="store_true", help="NCCL all_reduce on the GPUs inside fn")
    ap.add_argument("--only", default="", help="comma-separated launcher names to run")
    ap.add_argument("--out", default="", help="write the JSON results here")
    args = ap.parse_args()

    import nbdist
    from nbdist._io import atomic_write_json

    ranks = [int(r) for r in args.ranks.split(",")]
    load_before = os.getloadavg()
    names = [n for n in LAUNCHERS if not args.only or n in args.only.split(",")]
    rows = []
    for nprocs in ranks:
        # Round-robin over the launchers, so that load changes on a shared machine hit all alike.
        entry: dict = {n: [] for n in names}
        crash: dict = {n: [] for n in names}
        teardown: dict = {n: [] for n in names}
        failed: dict = {}
        for name in names:
            if name.startswith("nbdist") or name == "torch.mp fork":
                try:
                    measure_entry(LAUNCHERS[name], nprocs, args.nccl)  # warm-up: zygote, threads
                except Exception as exc:
                    failed[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        for rep in range(max(args.repeats, args.slow_repeats)):
            for name in names:
                if rep >= (args.slow_repeats if name in SLOW else args.repeats):
                    continue
                if name in failed:
                    continue
                try:
                    entry[name].append(measure_entry(LAUNCHERS[name], nprocs, args.nccl))
                    to_error, after = measure_crash(LAUNCHERS[name], nprocs, args.nccl)
                    crash[name].append(to_error)
                    teardown[name].append(after)
                except Exception as exc:  # a launcher that cannot run here (accelerate after
                    # CUDA was touched, say) is a result to report, not a reason to stop
                    failed[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        for name in names:
            if not entry[name] or not crash[name]:
                rows.append({"launcher": name, "nprocs": nprocs, "failed": failed.get(name)})
                print(f"{name:30s} {nprocs} ranks: FAILED {failed.get(name)}", flush=True)
                continue
            row = {"launcher": name, "nprocs": nprocs, "entry_s": entry[name],
                   "crash_s": crash[name],
                   "entry_median_ms": 1e3 * statistics.median(entry[name]),
                   "crash_median_ms": 1e3 * statistics.median(crash[name]),
                   "entry_min_ms": 1e3 * min(entry[name]),
                   "crash_min_ms": 1e3 * min(crash[name]),
                   # ranks still exiting after the error was raised (nbdist only; the next
                   # launch would wait for them)
                   "teardown_after_error_median_ms": 1e3 * statistics.median(teardown[name])}
            if name in failed:
                row["failed"] = failed[name]
            rows.append(row)
            print(f"{name:30s} {nprocs} ranks: entry {row['entry_median_ms']:9.1f} ms   "
                  f"crash->error {row['crash_median_ms']:9.1f} ms", flush=True)

    def med(name, nprocs, key):
        for r in rows:
            if r["launcher"] == name and r["nprocs"] == nprocs:
                return r.get(key)
        return None

    ratios, targets = {}, {}
    for n in ranks:
        def ratio(a, b, key, n=n):
            x, y = med(a, n, key), med(b, n, key)
            return None if x is None or y is None or y == 0 else x / y

        r = {
            "entry nbdist fork / torch.mp fork": ratio("nbdist fork", "torch.mp fork",
                                                       "entry_median_ms"),
            "entry nbdist zygote / torch.mp fork": ratio("nbdist zygote (warm)", "torch.mp fork",
                                                         "entry_median_ms"),
            "entry nbdist spawn / nbdist zygote": ratio("nbdist spawn", "nbdist zygote (warm)",
                                                        "entry_median_ms"),
            "crash nbdist fork / torch.mp fork": ratio("nbdist fork", "torch.mp fork",
                                                       "crash_median_ms"),
            "crash accelerate / nbdist fork": ratio("accelerate.notebook_launcher",
                                                    "nbdist fork", "crash_median_ms"),
        }
        limits = {
            "entry nbdist fork / torch.mp fork": ("<=", 1.0),
            "entry nbdist zygote / torch.mp fork": ("<=", 3.0),
            "entry nbdist spawn / nbdist zygote": (">=", 20.0),
            "crash nbdist fork / torch.mp fork": ("<=", 1.0),
            "crash accelerate / nbdist fork": (">=", 50.0),
        }
        ratios[n] = r
        targets[n] = {k: (None if v is None else
                          (v <= limits[k][1] if limits[k][0] == "<=" else v >= limits[k][1]))
                      for k, v in r.items()}

    print()
    print(f"{'launcher':30s} {'ranks':>5s} {'entry ms':>10s} {'(min)':>8s} "
          f"{'crash->error ms':>16s} {'(min)':>8s} {'then gone ms':>13s}   medians; min in "
          f"parentheses; 'then gone': error -> the other ranks exited")
    for row in rows:
        if "entry_median_ms" not in row:
            print(f"{row['launcher']:30s} {row['nprocs']:5d}  failed: {row.get('failed')}")
            continue
        print(f"{row['launcher']:30s} {row['nprocs']:5d} {row['entry_median_ms']:10.1f} "
              f"{row['entry_min_ms']:8.1f} {row['crash_median_ms']:16.1f} "
              f"{row['crash_min_ms']:8.1f} {row['teardown_after_error_median_ms']:13.1f}")
    print()
    for n in ranks:
        for k, v in ratios[n].items():
            ok = targets[n][k]
            print(f"{n} ranks  {k:40s} {'n/a' if v is None else f'{v:8.2f}x'}  "
                  f"{'' if ok is None else ('target met' if ok else 'TARGET MISSED')}")

    result = {
        "benchmark": "launch_latency",
        "nccl": args.nccl,
        "host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "torch": torch.__version__, "nbdist": nbdist.__version__,
        "gpus": torch.cuda.device_count() if args.nccl else 0,
        "repeats": args.repeats, "slow_repeats": args.slow_repeats,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "rows": rows, "ratios": {str(k): v for k, v in ratios.items()},
        "targets_met": {str(k): v for k, v in targets.items()},
    }
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        atomic_write_json(args.out, result, indent=1)
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
