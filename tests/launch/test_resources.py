"""A finished job keeps what the user reads (results, tails, logs) and nothing else: no
descriptor of its supervisor (epoll, wake-up eventfd, pidfds, pipes, log files) stays open, so a
long kernel session can keep hundreds of finished job handles."""

import os
import time

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


def test_rank_reaped_by_someone_else_still_ends_the_job(tmp_path):
    """User code in the kernel that reaps children itself (waitpid) can take a rank's exit
    status before the supervisor reads it: the job must still end (the rank counts as lost)
    instead of waiting forever. Whoever wins the race, the job ends."""
    import threading

    go = tmp_path / "go"
    job = nbdist.launch(helpers.wait_then_exit, (str(go),), nprocs=1, start_method="fork",
                        background=True)
    deadline = time.monotonic() + 60
    while not job.pids and time.monotonic() < deadline:
        time.sleep(0.01)
    (pid,) = job.pids
    stolen = []

    def steal():
        try:
            stolen.append(os.waitpid(pid, 0))
        except ChildProcessError:
            stolen.append(None)  # the supervisor won the race

    thief = threading.Thread(target=steal)
    thief.start()
    time.sleep(0.2)  # the thief is blocked in waitpid before the rank exits
    go.touch()
    err = None
    try:
        job.wait(timeout=60)
    except nbdist.NbdistTimeoutError:
        raise AssertionError("the job never ended after its rank was reaped") from None
    except nbdist.WorkerError as exc:
        err = exc  # the thief won: the rank's exit status is unknown
    thief.join(10)
    assert stolen and (err is None) == (stolen[0] is None), (stolen, err)


def test_zygote_status_arriving_before_attach_is_kept(tmp_path):
    """A zygote can fork a short rank, reap it and write its exit status before the launcher has
    attached the rank (it is still reading the zygote's reply). The status read early must be
    applied at attach, or the job waits forever (the hang seen in the notebook tests)."""
    import struct
    import subprocess

    from nbdist._core import launch as core

    sup = core.Supervisor(job_id="early", log_dir=str(tmp_path), nranks=1, tail_bytes=1024,
                          line_queue_bytes=1 << 20, stream=False, grace_s=1.0, timeout_s=0.0,
                          dump_wait_s=1.0)
    fds = sup.open_rank(0, True)
    os.write(fds.status_w, struct.pack("i", 0))  # what the zygote writes: exit code 0
    time.sleep(0.5)  # the supervisor reads it now, before the attach below
    proc = subprocess.Popen(["true"])  # a real pid, already reaped (as the zygote's rank was)
    proc.wait()
    sup.attach_rank(0, proc.pid)
    sup.seal()
    assert sup.wait(30.0), "the job never ended: the status read before attach was dropped"
    assert sup.state().name == "succeeded"
