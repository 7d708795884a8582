"""The background-job side of :class:`nbdist.Job`: attach to its output (``stream()``), ``await``,
an HTML status for notebooks, the GPU energy and plot of a monitored job, the record of a job with
a background load; and :func:`nbdist.jobs` / :func:`nbdist.wait_all`.

Kept apart from job.py (the launcher's driver) as a mixin so both can change independently.
"""

from __future__ import annotations

import html
import os
import sys
import time

from ._errors import LaunchValueError, NbdistTimeoutError

# stream() shows at most this much of the output written before it attached (per rank); the log
# files keep everything.
STREAM_BACKLOG_BYTES = 64 * 1024
_STREAM_POLL_S = 0.1

def _line_splitter():
    """A rank log's bytes -> the lines a terminal shows, as the supervisor splits its pipes (a
    progress line ending in '\r' is sent unfinished, marked by that '\r')."""
    from ._core import launch

    return launch.LineSplitter()


_STATUS_COLORS = {"starting": "#6c757d", "running": "#0d6efd", "succeeded": "#198754",
                  "failed": "#dc3545", "killed": "#fd7e14", "timed_out": "#dc3545"}


class JobExtensions:
    """Mixed into :class:`nbdist.Job`."""

    # -- attach --------------------------------------------------------------------------------

    def _read_new_output(self, first: bool) -> list[tuple]:
        """New output of every rank's log since the last call, as the supervisor queues it for a
        foreground launch: (rank, 1, text without its newline), a text ending in '\\r' being a
        progress line not finished yet. The log files interleave stdout and stderr."""
        lines: list[tuple] = []
        for r in range(self.nprocs):
            path = os.path.join(self.log_dir, f"rank_{r}.log")
            offset, splitter = self._stream_offsets.get(r, (0, None))
            try:
                size = os.path.getsize(path)
            except OSError:
                continue
            if splitter is None or size < offset:  # the file is new, or was replaced
                offset, splitter = 0, _line_splitter()
            if first and offset == 0 and size > STREAM_BACKLOG_BYTES:
                lines.append((r, 1, f"... ({size - STREAM_BACKLOG_BYTES} bytes earlier output "
                                    f"in {path})".encode()))
                offset = size - STREAM_BACKLOG_BYTES
                skip_to_newline = True
            else:
                skip_to_newline = False
            if size == offset:
                continue
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read(size - offset)
            offset += len(data)
            if skip_to_newline:
                cut = data.find(b"\n")
                data = data[cut + 1:] if cut >= 0 else b""
            lines.extend((r, 1, line) for line in splitter.feed(data))
            self._stream_offsets[r] = (offset, splitter)
        return lines

    def _flush_partials(self) -> list[tuple]:
        return [(r, 1, line) for r, (_, splitter) in self._stream_offsets.items()
                for line in splitter.flush()]

    def stream(self, file=None) -> str:
        """Attaches to the job: prints its ranks' output (``[rank r] ...`` lines) live in the
        current cell until the job ends, and returns its final status. A progress line rewritten
        with ``'\\r'`` (tqdm) is shown as it changes, as in a foreground launch.

        The first call starts with the output written so far (its last 64 KiB per rank), later
        calls continue where the previous one stopped. Interrupting the cell (Ctrl-C, the stop
        button) detaches and returns the current status: the job keeps running.
        """
        from .launch import _LiveLines

        display = _LiveLines("[rank {rank}] ", file=file if file is not None else sys.stdout)
        first = not self._stream_offsets
        try:
            while True:
                finished = self.done()
                lines = self._read_new_output(first)
                first = False
                if finished:
                    lines += self._flush_partials()
                display(lines)
                if finished:
                    break
                self._done.wait(_STREAM_POLL_S)
        except KeyboardInterrupt:
            display.close()  # the message below starts a line of its own
            print(f"nbdist: detached from job {self.id} ({self.status}); it keeps running: "
                  f"job.stream() attaches again, job.kill() stops it", file=sys.stderr,
                  flush=True)
            return self.status
        display.close()
        err = self._error
        if err is not None:
            print(f"nbdist: job {self.id} {self.status}: {str(err).splitlines()[0]}",
                  file=sys.stderr, flush=True)
        return self.status

    # -- asyncio -------------------------------------------------------------------------------

    async def _wait_async(self):
        # Imported here: asyncio is a third of `import nbdist`, which every spawned rank pays.
        import asyncio

        while not self._done.is_set():
            await asyncio.sleep(0.05)
        return self.wait()

    def __await__(self):
        """``results = await job``: waits without blocking the event loop (the kernel's loop in
        a notebook cell), then returns :meth:`wait`'s results or raises its error."""
        return self._wait_async().__await__()

    # -- display -------------------------------------------------------------------------------

    def _repr_html_(self) -> str:
        status = self.status
        color = _STATUS_COLORS.get(status, "#6c757d")
        gpus = "-" if self.gpus is None else ",".join(str(g) for g in self.gpus)
        cells = [
            f"<b>nbdist.Job</b> <code>{html.escape(self.id)}</code>",
            f"<span style='color:{color};font-weight:bold'>{html.escape(status)}</span>",
            f"{self.nprocs} rank{'s' if self.nprocs != 1 else ''}",
            f"GPUs {html.escape(gpus)}",
            f"{self.elapsed:.1f} s",
        ]
        if self.restarts:
            cells.append(f"{self.restarts} restart{'s' if self.restarts != 1 else ''}")
        load = self._ext.get("load")
        if load is not None:
            cells.append(f"load: {len(load.runs)} run(s)")
        if status in ("starting", "running") and self.pids:
            cells.append("pids " + ",".join(str(p) for p in self.pids))
        err = self._error
        row = " &middot; ".join(cells)
        extra = ""
        if err is not None:
            first = html.escape(str(err).splitlines()[0] if str(err) else type(err).__name__)
            extra = f"<div style='color:#dc3545'>{first}</div>"
        return (f"<div style='font-family:monospace;font-size:90%'>{row}"
                f"<div style='color:#6c757d'>logs {html.escape(self.log_dir)}</div>{extra}</div>")

    # -- monitor and record --------------------------------------------------------------------

    def _monitor(self):
        mon = self._ext.get("monitor")
        if mon is None:
            raise LaunchValueError(f"job {self.id} has no GPU monitor: pass monitor=True to "
                                   "nbdist.launch")
        return mon

    def energy(self):
        """The GPU energy of a job launched with ``monitor=True``: an
        :class:`nbdist.monitor.MonitorSummary` (joules per GPU and in total, mean/peak power, mean
        utilization, peak memory) over the job so far, or over all of it once it ended. Without
        a GPU or NVML the summary says why (``summary.available`` is False, ``summary.reason``)."""
        return self._monitor().summary()

    def plot(self, path=None):
        """Power, utilization and memory of the job's GPUs over time (a matplotlib Figure;
        saved to ``path`` when given). Needs ``monitor=True``."""
        return self._monitor().plot(path)

    @property
    def record(self) -> dict | None:
        """The record of a job launched with a background load or a monitor (also in
        ``<log_dir>/record.json``); None until the job ended or when it has neither."""
        return self._ext.get("record")

    @property
    def load(self):
        """The :class:`nbdist.Load` running beside this job, or None."""
        return self._ext.get("load")


# Finished jobs kept listed by nbdist.jobs(); older finished ones are dropped (each finished Job
# still holds its supervisor's descriptors, so an unbounded list would leak them). Running jobs
# are always listed.
MAX_FINISHED_JOBS = 64


def register(job) -> None:
    from .job import _registry

    _registry.append(job)
    _prune()


def _prune() -> None:
    from .job import _registry

    finished = [j for j in _registry if j.done()]
    excess = len(finished) - MAX_FINISHED_JOBS
    if excess > 0:
        drop = {id(j) for j in finished[:excess]}
        _registry[:] = [j for j in _registry if id(j) not in drop]


def jobs() -> list:
    """The :class:`nbdist.Job` objects started in this kernel (process), oldest first: every
    running one and the last 64 finished ones."""
    from .job import _registry

    _prune()
    return list(_registry)


def wait_all(*jobs_, timeout: float | None = None) -> list:
    """Waits for several jobs (``wait_all(a, b)`` or ``wait_all([a, b])``; none given: every job
    of this kernel) and returns their results in that order. As soon as one fails, raises its
    error (the earliest failure when several are found at once); the other jobs keep running.
    ``timeout`` (seconds) raises :class:`nbdist.NbdistTimeoutError` naming the unfinished jobs."""
    from .job import Job

    if len(jobs_) == 1 and isinstance(jobs_[0], (list, tuple)):
        jobs_ = tuple(jobs_[0])
    if not jobs_:
        jobs_ = tuple(jobs())
    for i, j in enumerate(jobs_):
        if not isinstance(j, Job):
            raise LaunchValueError(f"wait_all: argument {i} is a {type(j).__name__}, "
                                   "not an nbdist.Job")
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        failed = [j for j in jobs_ if j.done() and j._error is not None]
        if failed:
            first = min(failed, key=lambda j: j.ended or 0.0)
            raise first._error
        pending = [j for j in jobs_ if not j.done()]
        if not pending:
            return [j.wait() for j in jobs_]
        if deadline is not None and time.monotonic() >= deadline:
            raise NbdistTimeoutError(
                "wait_all: still running after " f"{timeout} s: "
                + ", ".join(f"{j.id} ({j.status})" for j in pending))
        step = 0.05 if deadline is None else max(0.0, min(0.05, deadline - time.monotonic()))
        pending[0]._done.wait(step)


__all__ = ["JobExtensions", "jobs", "wait_all"]
