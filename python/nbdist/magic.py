"""The ``%%nbdist`` cell magic: run a cell's code in N ranks, in the background or the foreground.

::

    %load_ext nbdist

    %%nbdist --bg --proc train0 --gpus 0 --push cfg,data
    model = train(cfg, data)          # runs in the job's rank(s), not in the kernel
    model.score                       # the final expression is each rank's return value

    train0.wait()                     # later cell: [score of rank 0, ...]

Options: ``--bg`` (return at once; without it the cell streams the ranks' output and waits),
``--proc NAME`` (bind the :class:`nbdist.Job` to ``NAME`` in the notebook), ``--gpus 0,1``,
``--nprocs N`` (default: one per ``--gpus`` entry, else 1), ``--log-dir D``, ``--push x,y``
(notebook variables sent to the ranks by value, with cloudpickle), ``--start-method M``,
``--timeout S``. The cell runs in a fresh namespace in each rank (only the pushed variables are
there). A notebook written with ``%%python --bg --proc NAME`` switches by changing ``python`` to
``nbdist``; ``NAME.wait()`` waits as before.

``%nbdist_jobs`` lists this kernel's jobs; ``%nbdist_kill NAME`` kills the job bound to ``NAME``
(or the job with that id).
"""

from __future__ import annotations

import argparse
import ast
import math
import shlex
import sys

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class


def run_cell(source: str, pushed: bytes, filename: str):
    """What each rank runs: the cell source in a fresh namespace holding the pushed variables;
    returns the value of the final expression (None when the cell ends with a statement)."""
    import builtins
    import linecache

    import cloudpickle

    namespace = {"__name__": "__main__", "__builtins__": builtins}
    namespace.update(cloudpickle.loads(pushed))
    # Tracebacks of the cell's code show its lines.
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    tree = ast.parse(source, filename=filename)
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    exec(compile(tree, filename, "exec"), namespace)
    if last is not None:
        return eval(compile(last, filename, "eval"), namespace)
    return None


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"%%nbdist: {message}\n{self.format_usage().strip()}")

    def exit(self, status=0, message=None):
        raise UsageError(f"%%nbdist: {message or 'bad arguments'}")


def _parser() -> _Parser:
    p = _Parser(prog="%%nbdist", add_help=False,
                description="run the cell's code in nbdist ranks")
    p.add_argument("--bg", action="store_true", help="run in the background")
    p.add_argument("--proc", default=None, help="bind the Job to this variable name")
    p.add_argument("--gpus", default=None, help="GPU indices, e.g. 0 or 0,1")
    p.add_argument("--nprocs", type=int, default=None, help="ranks (default: len(gpus) or 1)")
    p.add_argument("--log-dir", default=None, help="log directory")
    p.add_argument("--push", default=None, help="notebook variables to send, e.g. x,y")
    p.add_argument("--start-method", default="auto", help="auto, fork, spawn or zygote")
    p.add_argument("--timeout", type=float, default=None, help="seconds")
    return p


def parse_line(line: str) -> argparse.Namespace:
    """The magic's options, checked; UsageError names what is wrong."""
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise UsageError(f"%%nbdist: cannot parse the options {line!r}: {exc}") from None
    args = _parser().parse_args(words)
    if args.proc is not None and (not args.proc.isidentifier() or args.proc in ("True", "False",
                                                                                   "None")):
        raise UsageError(f"%%nbdist: --proc must be a Python variable name, got {args.proc!r}")
    if args.nprocs is not None and args.nprocs < 1:
        raise UsageError(f"%%nbdist: --nprocs must be >= 1, got {args.nprocs}")
    if args.gpus is not None:
        try:
            args.gpus = [int(g) for g in args.gpus.split(",") if g.strip()]
        except ValueError:
            raise UsageError(f"%%nbdist: --gpus must be GPU indices like 0 or 0,1, "
                             f"got {args.gpus!r}") from None
        if not args.gpus or any(g < 0 for g in args.gpus):
            raise UsageError(f"%%nbdist: --gpus must be GPU indices like 0 or 0,1, "
                             f"got {line!r}")
        if args.nprocs is not None and args.nprocs != len(args.gpus):
            raise UsageError(f"%%nbdist: --nprocs {args.nprocs} does not match --gpus "
                             f"{','.join(map(str, args.gpus))} (one rank per GPU)")
    if args.timeout is not None and not (math.isfinite(args.timeout) and args.timeout > 0):
        raise UsageError(f"%%nbdist: --timeout must be a finite number of seconds > 0, "
                         f"got {args.timeout}")
    push = []
    if args.push:
        push = [n.strip() for n in args.push.split(",") if n.strip()]
        for n in push:
            if not n.isidentifier():
                raise UsageError(f"%%nbdist: --push takes variable names like x,y; "
                                 f"{n!r} is not one")
    args.push = push
    return args


@magics_class
class NbdistMagics(Magics):
    """``%%nbdist``, ``%nbdist_jobs``, ``%nbdist_kill``."""

    def __init__(self, shell):
        super().__init__(shell)
        self._names: dict[str, str] = {}  # job id -> the name it was bound to

    @cell_magic
    def nbdist(self, line: str, cell: str):
        """Run the cell in nbdist ranks: ``%%nbdist [--bg] [--proc NAME] [--gpus 0,1]
        [--nprocs N] [--log-dir D] [--push x,y] [--start-method M] [--timeout S]``."""
        from . import _pickle
        from ._errors import NbdistValueError
        from .job import _registry
        from .launch import launch

        args = parse_line(line)
        try:
            ast.parse(cell, filename="<cell>")
        except SyntaxError as exc:
            raise UsageError(f"%%nbdist: the cell does not parse: {exc}") from None
        ns = self.shell.user_ns
        missing = [n for n in args.push if n not in ns]
        if missing:
            raise UsageError(f"%%nbdist: --push names variable(s) not defined in the notebook: "
                             f"{', '.join(missing)}")
        pushed = {n: ns[n] for n in args.push}
        try:
            blob = _pickle.dumps(pushed)
        except Exception as exc:
            bad = []
            for n, v in pushed.items():
                try:
                    _pickle.dumps(v)
                except Exception:
                    bad.append(f"{n} ({type(v).__name__})")
            raise UsageError(f"%%nbdist: --push: cannot send {', '.join(bad) or 'the variables'}"
                             f" to the ranks (cloudpickle: {type(exc).__name__}: {exc})") from None
        nprocs = args.nprocs or (len(args.gpus) if args.gpus else 1)
        filename = f"<nbdist cell {args.proc}>" if args.proc else "<nbdist cell>"
        before = _registry[-1] if _registry else None
        try:
            out = launch(run_cell, (cell, blob, filename), nprocs=nprocs,
                                 gpus=args.gpus, log_dir=args.log_dir,
                                 start_method=args.start_method, timeout=args.timeout,
                                 background=args.bg)
        except NbdistValueError as exc:
            raise UsageError(f"%%nbdist: {exc}") from None
        finally:
            job = _registry[-1] if _registry and _registry[-1] is not before else None
            if job is not None and args.proc:
                ns[args.proc] = job
                self._names[job.id] = args.proc
        if args.bg:
            print(f"nbdist: job {out.id} started in the background "
                  f"({nprocs} rank{'s' if nprocs != 1 else ''}); "
                  + (f"{args.proc}.wait() waits for it" if args.proc else "nbdist.jobs() lists it"),
                  file=sys.stderr, flush=True)
            return None
        if all(r is None for r in out):
            return None
        return out[0] if nprocs == 1 else out

    @line_magic
    def nbdist_jobs(self, line: str = ""):
        """List this kernel's nbdist jobs."""
        from ._job_ext import jobs

        rows = []
        for j in jobs():
            gpus = "-" if j.gpus is None else ",".join(map(str, j.gpus))
            rows.append((self._names.get(j.id, ""), j.id, j.status, str(j.nprocs), gpus,
                         f"{j.elapsed:.1f}s"))
        if not rows:
            print("no nbdist jobs in this kernel")
            return
        head = ("name", "id", "status", "ranks", "gpus", "elapsed")
        widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
        for r in [head] + rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())

    @line_magic
    def nbdist_kill(self, line: str):
        """``%nbdist_kill NAME [GRACE]``: kill the job bound to NAME (or with that job id)."""
        from ._job_ext import jobs
        from .job import Job

        words = line.split()
        if not words or len(words) > 2:
            raise UsageError("%nbdist_kill: usage: %nbdist_kill NAME [GRACE_SECONDS]")
        target = words[0]
        grace = 5.0
        if len(words) == 2:
            try:
                grace = float(words[1])
            except ValueError:
                grace = float("nan")
            if not (math.isfinite(grace) and grace >= 0):
                raise UsageError(f"%nbdist_kill: GRACE must be a finite number of seconds >= 0, "
                                 f"got {words[1]!r}")
        job = self.shell.user_ns.get(target)
        if not isinstance(job, Job):
            job = next((j for j in jobs() if j.id == target), None)
        if job is None:
            raise UsageError(f"%nbdist_kill: {target!r} is neither a variable holding an "
                             "nbdist.Job nor a job id (see %nbdist_jobs)")
        job.kill(grace=grace)
        print(f"nbdist: job {job.id} {job.status}")


def load_ipython_extension(ipython) -> None:
    ipython.register_magics(NbdistMagics)
