"""``nbdist run``: torchrun-style launcher for scripts and modules, on nbdist's supervisor.

    nbdist run --nprocs 2 train.py --lr 3e-4
    nbdist run --nprocs 2 --gpus 0,1 -m my_package.train

Each rank gets torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE,
GROUP_RANK, MASTER_ADDR, MASTER_PORT...), so training scripts need no change. The exit code is
the root-cause rank's (128 + signal number when it died from a signal; 124 on --timeout;
130 on Ctrl-C).
"""

from __future__ import annotations

import argparse
import signal
import sys

from ._errors import LaunchError, LaunchValueError, WorkerError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nbdist", description="nbdist command line")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a script or module in N supervised ranks")
    run.add_argument("--nprocs", "--nproc-per-node", "--nproc_per_node", type=int, default=None,
                     help="ranks on this node (default: one per visible GPU)")
    run.add_argument("--gpus", default=None, help="GPU indices, e.g. 0,1 (CUDA_VISIBLE_DEVICES)")
    run.add_argument("--max-restarts", "--max_restarts", type=int, default=0)
    run.add_argument("--log-dir", "--log_dir", default=None)
    run.add_argument("--timeout", type=float, default=None, help="seconds before a stack dump "
                     "and teardown")
    run.add_argument("--master-addr", "--master_addr", default="127.0.0.1")
    run.add_argument("--master-port", "--master_port", type=int, default=None)
    run.add_argument("--nnodes", type=int, default=1)
    run.add_argument("--node-rank", "--node_rank", type=int, default=0)
    run.add_argument("--grace", type=float, default=5.0)
    run.add_argument("--quiet", action="store_true", help="do not print the preflight line")
    run.add_argument("-m", dest="module", default=None, help="run a module like python -m")
    run.add_argument("target", nargs=argparse.REMAINDER,
                     help="script.py and its arguments (or, with -m, the module's arguments)")
    from .experiment import add_parser as add_experiment  # nbdist experiment (jobs engineer)

    add_experiment(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from .job import Job
    from .launch import _plan, run_foreground

    args = _parser().parse_args(argv)
    if args.command == "experiment":
        from .experiment import main_cli

        return main_cli(args)
    rest = list(args.target)
    if rest and rest[0] == "--":
        rest = rest[1:]
    if args.module:
        cmd = [sys.executable, "-m", args.module, *rest]
    elif rest:
        cmd = [sys.executable, rest[0], *rest[1:]]
    else:
        print("nbdist run: give a script (nbdist run --nprocs 2 train.py) or -m module",
              file=sys.stderr)
        return 2
    try:
        plan = _plan(None, (), None, args.nprocs, start_method="spawn", gpus=args.gpus, env=None,
                     timeout=args.timeout, max_restarts=args.max_restarts,
                     log_dir=args.log_dir, master_addr=args.master_addr,
                     master_port=args.master_port, nnodes=args.nnodes, node_rank=args.node_rank,
                     stream=True, grace=args.grace, argv=cmd, caller="nbdist run")
    except LaunchValueError as exc:
        print(f"nbdist run: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        print("nbdist: " + ", ".join(plan.decisions), file=sys.stderr, flush=True)
    job = Job(plan)
    try:
        run_foreground(job, "[rank {rank}] ")
    except KeyboardInterrupt:
        print("nbdist run: interrupted; every rank was stopped", file=sys.stderr)
        return 130
    except WorkerError as exc:
        print(f"nbdist run: {exc}", file=sys.stderr)
        if isinstance(exc, TimeoutError):
            return 124  # like timeout(1)
        if exc.exit_code:
            return exc.exit_code
        if exc.signal:
            sig = getattr(signal, exc.signal, None)
            return 128 + int(sig) if sig is not None else 1
        return 1
    except LaunchError as exc:
        print(f"nbdist run: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
