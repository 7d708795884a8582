"""Background jobs: every Job method, stream/detach, await, the HTML status, jobs(), wait_all,
100 MB of unread output, two concurrent 2-rank gloo jobs, kill."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import threading
import time

import pytest
from support import alive

import nbdist

from . import helpers


def read_when_complete(path: str, within: float = 60.0) -> str:
    deadline = time.monotonic() + within
    while True:
        if os.path.exists(path):
            with open(path) as f:
                text = f.read()
            if text.endswith("\n"):
                return text
        assert time.monotonic() < deadline, f"{path} never completed"
        time.sleep(0.05)


def test_background_job_every_method(log_dir, tmp_path):
    gate = str(tmp_path / "go")
    job = nbdist.launch(helpers.wait_for_file, (gate, "ok"), nprocs=2, background=True,
                        log_dir=log_dir)
    assert isinstance(job, nbdist.Job)
    assert job.status in ("starting", "running")
    assert job.poll() == job.status
    assert not job.done()
    assert job.ended is None
    assert job.log_dir.startswith(log_dir) and job.id in job.log_dir
    assert job.gpus is None and job.restarts == 0
    with pytest.raises(TimeoutError, match=job.id):
        job.wait(timeout=0.2)
    with pytest.raises(TimeoutError):
        job.exception(timeout=0.1)
    deadline = time.monotonic() + 60
    while "rank 1 waiting" not in job.logs() or "rank 0 waiting" not in job.logs():
        assert time.monotonic() < deadline, job.logs()
        time.sleep(0.05)
    assert job.status == "running"
    assert len(job.pids) == 2 and all(alive(p) for p in job.pids)
    assert job.logs(rank=1) == "rank 1 waiting\n"
    assert job.logs(tail=1).count("\n") == 2  # the last line of each rank
    html = job._repr_html_()
    assert job.id in html and "running" in html and "2 ranks" in html
    assert job in nbdist.jobs()
    open(gate, "w").close()
    assert job.wait(timeout=60) == ["ok", "ok"]
    assert job.result() == ["ok", "ok"]
    assert job.exception() is None
    assert job.done() and job.status == "succeeded" and job.poll() == "succeeded"
    assert job.ended >= job.started and job.elapsed == pytest.approx(job.ended - job.started)
    assert "[rank 0] rank 0 done" in job.logs()
    assert "succeeded" in job._repr_html_()
    with pytest.raises(nbdist.LaunchError, match="rank 5"):
        job.logs(rank=5)


def test_stream_prints_live_then_returns_status(log_dir, tmp_path):
    gate = str(tmp_path / "go")
    job = nbdist.launch(helpers.wait_for_file, (gate,), nprocs=2, background=True,
                        log_dir=log_dir)
    out = io.StringIO()
    seen_live = threading.Event()

    def release_when_seen():
        # the gate opens only after stream() has printed the ranks' first lines: live output
        while "rank 1 waiting" not in out.getvalue() or "rank 0 waiting" not in out.getvalue():
            time.sleep(0.02)
        seen_live.set()
        open(gate, "w").close()

    t = threading.Thread(target=release_when_seen, daemon=True)
    t.start()
    assert job.stream(file=out) == "succeeded"
    assert seen_live.is_set()
    text = out.getvalue()
    assert "[rank 0] rank 0 waiting" in text and "[rank 1] rank 1 done" in text
    # a second attach prints nothing new
    out2 = io.StringIO()
    assert job.stream(file=out2) == "succeeded" and out2.getvalue() == ""


class _SeenRecorder(io.TextIOBase):
    """A file for stream() that tells the rank, through a file, when ``needle`` was shown."""

    def __init__(self, needle: str, seen_path: str) -> None:
        self.needle = needle
        self.seen_path = seen_path
        self.text = ""

    def write(self, text):
        self.text += text
        if self.needle in self.text and not os.path.exists(self.seen_path):
            open(self.seen_path, "w").close()
        return len(text)


def test_stream_shows_carriage_return_progress_before_the_newline(log_dir, tmp_path):
    seen = str(tmp_path / "seen")
    job = nbdist.launch(helpers.progress_until_seen, (seen,), nprocs=1, background=True,
                        log_dir=log_dir, timeout=60)
    out = _SeenRecorder("[rank 0] step 1/2", seen)
    assert job.stream(file=out) == "succeeded"
    assert job.wait() == [True], out.text  # shown while the line was still unfinished
    # Rewritten in place, then ended by the rank's newline; the prefix stays on the line.
    assert out.text.startswith("[rank 0] step 1/2\r[rank 0] step 2/2"), out.text
    assert out.text.endswith("step 2/2\n") and out.text.count("\n") == 1, out.text


def test_interrupting_stream_detaches_without_killing(log_dir, tmp_path, capsys):
    gate = str(tmp_path / "go")
    job = nbdist.launch(helpers.wait_for_file, (gate,), nprocs=1, background=True,
                        log_dir=log_dir)
    out = io.StringIO()

    def interrupt():
        while "rank 0 waiting" not in out.getvalue():
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGINT)  # what the notebook's stop button does

    threading.Thread(target=interrupt, daemon=True).start()
    assert job.stream(file=out) == "running"
    assert "detached from job" in capsys.readouterr().err
    assert not job.done() and all(alive(p) for p in job.pids)
    open(gate, "w").close()
    assert job.wait(timeout=60) == [None]


def test_await_job(log_dir):
    async def main():
        job = nbdist.launch(helpers.rank_times, (7,), nprocs=2, background=True, log_dir=log_dir)
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        t = asyncio.ensure_future(ticker())
        results = await job
        t.cancel()
        return results, ticks

    results, ticks = asyncio.run(main())
    assert results == [0, 7]
    assert ticks >= 1  # the event loop kept running while the job ran


def test_await_raises_the_jobs_error(log_dir):
    job = nbdist.launch(helpers.fail_now, nprocs=1, background=True, log_dir=log_dir)

    async def main():
        return await job

    with pytest.raises(nbdist.WorkerError, match="immediate failure"):
        asyncio.run(main())


def test_wait_all_returns_results_and_raises_first_failure(log_dir, tmp_path):
    a = nbdist.launch(helpers.rank_times, (2,), nprocs=2, background=True, log_dir=log_dir)
    b = nbdist.launch(helpers.rank_times, (3,), nprocs=1, background=True, log_dir=log_dir)
    assert nbdist.wait_all(a, b) == [[0, 2], [0]]
    assert nbdist.wait_all([a, b]) == [[0, 2], [0]]

    gate = str(tmp_path / "never")
    slow = nbdist.launch(helpers.wait_for_file, (gate,), nprocs=1, background=True,
                         log_dir=log_dir)
    bad = nbdist.launch(helpers.fail_now, nprocs=1, background=True, log_dir=log_dir)
    with pytest.raises(nbdist.WorkerError, match="immediate failure"):
        nbdist.wait_all(slow, bad)
    assert not slow.done()  # the others keep running
    with pytest.raises(TimeoutError, match=slow.id):
        nbdist.wait_all(slow, timeout=0.2)
    with pytest.raises(nbdist.LaunchValueError, match="argument 1"):
        nbdist.wait_all(slow, "not a job")
    slow.kill(grace=0.5)
    assert slow.status == "killed"
    jobs = nbdist.jobs()
    assert [j for j in jobs if j in (a, b, slow, bad)] == [a, b, slow, bad]


def test_kill_tears_down_ranks_and_their_children(log_dir, tmp_path, request):
    pid_file = str(tmp_path / "pids")
    job = nbdist.launch(helpers.sleep_with_child, (pid_file,), nprocs=1, background=True,
                        log_dir=log_dir)
    rank_pid, child_pid = map(int, read_when_complete(pid_file).split())
    request.node.extra_pids = [rank_pid, child_pid]
    assert alive(child_pid)
    job.kill(grace=1.0)
    assert job.done() and job.status == "killed"
    assert isinstance(job.exception(), nbdist.LaunchError)
    with pytest.raises(nbdist.LaunchError, match="killed"):
        job.wait()
    # the no-leftover fixture checks rank and child are gone


def test_100mb_of_output_nobody_reads_finishes(log_dir):
    job = nbdist.launch(helpers.flood, (100,), nprocs=1, background=True, log_dir=log_dir)
    assert job.wait(timeout=240) == [100]
    size = os.path.getsize(os.path.join(job.log_dir, "rank_0.log"))
    assert size == 100 * 1024 * 1024
    assert job.logs(tail=2).count("x" * 1023) == 2


def test_two_concurrent_two_rank_gloo_jobs(log_dir):
    a = nbdist.launch(helpers.gloo_allreduce, ("a",), nprocs=2, gpus=[0, 1], background=True,
                      log_dir=log_dir)
    b = nbdist.launch(helpers.gloo_allreduce, ("b",), nprocs=2, gpus=[2, 3], background=True,
                      log_dir=log_dir)
    ra, rb = nbdist.wait_all(a, b, timeout=240)
    assert [r[:3] for r in ra] == [("a", 0, 2), ("a", 1, 2)]
    assert [r[:3] for r in rb] == [("b", 0, 2), ("b", 1, 2)]
    port_a, port_b = ra[0][3], rb[0][3]
    assert port_a == ra[1][3] and port_b == rb[1][3] and port_a != port_b
    assert ra[0][4] == "0,1" and rb[0][4] == "2,3"  # each job its own GPUs' environment
    assert a.gpus == [0, 1] and b.gpus == [2, 3]


def test_jobs_lists_running_jobs_and_the_last_finished_ones(log_dir, tmp_path, monkeypatch):
    from nbdist import _job_ext

    monkeypatch.setattr(_job_ext, "MAX_FINISHED_JOBS", 2)
    gate = str(tmp_path / "go")
    running = nbdist.launch(helpers.wait_for_file, (gate,), nprocs=1, background=True,
                            log_dir=log_dir)
    finished = []
    for i in range(4):
        j = nbdist.launch(helpers.rank_times, (i,), nprocs=1, background=True, log_dir=log_dir)
        j.wait(timeout=60)
        finished.append(j)
    listed = nbdist.jobs()
    assert running in listed  # never dropped while it runs
    assert finished[0] not in listed and finished[1] not in listed
    assert finished[3] in listed
    open(gate, "w").close()
    running.wait(timeout=60)
