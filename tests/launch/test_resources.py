"""A finished job keeps what the user reads (results, tails, logs) and nothing else: no
descriptor of its supervisor (epoll, wake-up eventfd, pidfds, pipes, log files) stays open, so a
long kernel session can keep hundreds of finished job handles."""

import os

import nbdist

from . import helpers


def open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


def test_finished_jobs_release_their_descriptors():
    # Launcher state made once per process (the reaper's control pipe) is not per job.
    assert nbdist.launch(helpers.say, ("warm-up",), nprocs=1, start_method="fork",
                         stream=False) == ["warm-up"]
    before = open_fds()
    jobs = [nbdist.launch(helpers.say, (i,), nprocs=2, start_method="fork", background=True)
            for i in range(50)]
    for i, job in enumerate(jobs):
        assert job.wait(timeout=120) == [i, i]
    leaked = open_fds() - before
    # Each of the 50 supervisors held at least an epoll and an eventfd (100 descriptors) before
    # they were released at the end of the job; a few unrelated descriptors may come and go.
    assert len(leaked) < 10, f"{len(leaked)} descriptors opened by 50 finished jobs: {leaked}"
    # Everything a user reads from a finished job is still there.
    assert jobs[7].status == "succeeded" and jobs[7].wait() == [7, 7]
    assert jobs[7].logs(rank=1) == "rank 1 says 7\n"
    assert jobs[-1].logs() == "[rank 0] rank 0 says 49\n[rank 1] rank 1 says 49\n"


def test_failed_job_error_keeps_its_tail_after_release():
    job = nbdist.launch(helpers.segv_on_rank1, nprocs=2, start_method="fork", background=True)
    err = job.exception(timeout=120)
    assert isinstance(err, nbdist.WorkerError) and err.signal == "SIGSEGV"
    assert "Segmentation fault" in str(err)  # read from the supervisor's tail after the job ended
    assert "Segmentation fault" in job.logs(rank=1)
