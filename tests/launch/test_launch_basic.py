"""Ranks run, talk over Gloo and return their values, with every start method."""

import importlib
import os
import time

import pytest
import torch  # noqa: F401  (the launcher's process has torch imported, like a notebook)

import nbdist

from . import helpers


@pytest.mark.parametrize("nprocs", [2, 4])
def test_gloo_allreduce_returns_every_rank_value(nprocs):
    results = nbdist.launch(helpers.allreduce_rank, (2.0,), nprocs=nprocs, start_method="fork")
    total = 2.0 * nprocs * (nprocs + 1) / 2
    assert results == [(r, nprocs, total, str(r)) for r in range(nprocs)]


@pytest.mark.parametrize("method", ["spawn", "zygote"])
def test_fresh_interpreter_methods_run_gloo_and_lambdas(method):
    assert nbdist.launch(helpers.allreduce_rank, nprocs=2, start_method=method) == [
        (0, 2, 3.0, "0"), (1, 2, 3.0, "1")]
    offset = 40
    assert nbdist.launch(lambda x: int(os.environ["RANK"]) + x + offset, (2,), nprocs=2,
                         start_method=method) == [42, 43]


@pytest.mark.parametrize("method", ["spawn", "zygote"])
def test_pickled_arguments_are_deleted_when_the_job_ends(method, tmp_path):
    big = b"x" * (1 << 20)  # passed by value through the payload file
    job = nbdist.launch(len, (big,), nprocs=1, start_method=method, log_dir=str(tmp_path),
                        background=True)
    assert job.wait(timeout=120) == [1 << 20]
    assert sorted(os.listdir(job.log_dir)) == ["rank_0.log"]  # payload gone, the log stays


def test_rank_environment_is_torchrun_compatible(monkeypatch):
    names = ["RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "NODE_RANK",
             "MASTER_ADDR", "MASTER_PORT", "NBDIST_JOB_ID", "OMP_NUM_THREADS",
             "CUDA_VISIBLE_DEVICES", "EXTRA", "NBDIST_RESTART_COUNT"]
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = dict(os.environ)
    envs = nbdist.launch(helpers.env_of_rank, (names,), nprocs=2, gpus=[3, 1],
                         env={"EXTRA": "yes"}, master_port=29999)
    assert dict(os.environ) == before  # the launcher's environment is never changed
    cores = len(os.sched_getaffinity(0))
    for r, e in enumerate(envs):
        assert e["RANK"] == e["LOCAL_RANK"] == str(r)
        assert e["WORLD_SIZE"] == e["LOCAL_WORLD_SIZE"] == "2"
        assert e["GROUP_RANK"] == e["NODE_RANK"] == "0"
        assert (e["MASTER_ADDR"], e["MASTER_PORT"]) == ("127.0.0.1", "29999")
        assert e["CUDA_VISIBLE_DEVICES"] == "3,1"
        assert e["EXTRA"] == "yes"
        assert e["OMP_NUM_THREADS"] == str(max(1, cores // 2))
        assert e["NBDIST_RESTART_COUNT"] == "0"
    assert envs[0]["NBDIST_JOB_ID"] == envs[1]["NBDIST_JOB_ID"]


def test_live_lines_are_rank_prefixed_and_logged(capfd):
    def talk():
        print(f"hello from {os.environ['RANK']}")
        return 0

    nbdist.launch(talk, nprocs=2, start_method="fork", prefix="<{rank}> ")
    out = capfd.readouterr().out
    assert "<0> hello from 0" in out and "<1> hello from 1" in out


def test_multi_node_two_launchers_form_one_job():
    from nbdist.launch import free_port

    port = free_port()
    jobs = [nbdist.launch(helpers.allreduce_rank, nprocs=2, nnodes=2, node_rank=n,
                          master_port=port, background=True) for n in (0, 1)]
    node0, node1 = (j.wait(timeout=120) for j in jobs)
    assert node0 == [(0, 4, 10.0, "0"), (1, 4, 10.0, "1")]
    assert node1 == [(2, 4, 10.0, "0"), (3, 4, 10.0, "1")]


def test_background_job_handle():
    job = nbdist.launch(helpers.allreduce_rank, nprocs=2, background=True)
    assert isinstance(job, nbdist.Job)
    assert job.wait(timeout=120) == [(0, 2, 3.0, "0"), (1, 2, 3.0, "1")]
    assert job.status == "succeeded" and job.done() and job.exception() is None
    assert job.ended >= job.started and job.elapsed > 0
    assert len(job.pids) == 2

    job = nbdist.launch(helpers.sleep_forever, nprocs=2, background=True)
    import time

    deadline = time.monotonic() + 60
    while "ready" not in job.logs(rank=1) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.status == "running" and not job.done()
    assert "[rank 0] rank 0 ready" in job.logs()
    assert job.logs(rank=1, tail=1) == "rank 1 ready\n"
    job.kill(grace=1)
    assert job.status == "killed"
    with pytest.raises(nbdist.LaunchError, match="killed"):
        job.wait()


def test_forked_copy_of_the_launcher_leaves_the_job_alone():
    """A child forked by user code (torch.multiprocessing, DataLoader) inherits the launcher's
    objects; collecting them or running its exit hooks must neither crash nor kill the job."""
    import gc
    import time

    import nbdist.job as job_mod

    job = nbdist.launch(helpers.sleep_forever, nprocs=2, background=True)
    deadline = time.monotonic() + 60
    while "ready" not in job.logs(rank=1) and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            job._sup = None  # drop the child's reference to the C++ supervisor
            gc.collect()
            job_mod._kill_live_jobs()  # what atexit would run in the child
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    time.sleep(0.2)
    assert job.status == "running"
    job.kill(grace=1)
    assert job.status == "killed"


def test_logging_handlers_of_the_launcher_write_into_the_rank_output(capfd):
    import logging
    import sys

    logger = logging.getLogger("nbdist_test_logger")
    handler = logging.StreamHandler(sys.stderr)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        nbdist.launch(lambda: logger.info("logged in rank %s", os.environ["RANK"]), nprocs=2,
                      start_method="fork")
    finally:
        logger.removeHandler(handler)
    err = capfd.readouterr().err
    assert "[rank 0] logged in rank 0" in err and "[rank 1] logged in rank 1" in err


def _layer_norm_threads() -> int:
    # A parallel region (more than 32k elements): it deadlocks in a rank forked from a process
    # whose OpenMP pool ran, unless the rank runs torch on one thread.
    torch.nn.functional.layer_norm(torch.randn(4096, 64), (64,)).sum()
    return torch.get_num_threads()


@pytest.mark.parametrize("method", ["fork", "zygote"])
def test_ranks_survive_the_callers_openmp_pool(method):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        a = torch.randn(512, 512)
        (a @ a).sum()  # the caller's OpenMP pool now has threads that a fork does not copy
        torch.nn.functional.layer_norm(torch.randn(4096, 64), (64,)).sum()
        threads = nbdist.launch(_layer_norm_threads, nprocs=2, start_method=method, timeout=60,
                                env={"OMP_NUM_THREADS": "2"})
    finally:
        torch.set_num_threads(before)
    # fork: one thread is the only safe count; the zygote's ranks get OMP_NUM_THREADS.
    assert threads == ([1, 1] if method == "fork" else [2, 2])


def test_default_log_dir_keeps_a_week_and_the_newest_jobs(tmp_path, monkeypatch):
    launch_mod = importlib.import_module("nbdist.launch")  # nbdist.launch is also the function
    now = time.time()
    jobs = []
    for i in range(launch_mod.KEEP_JOBS + 5):  # all a month old; the higher i, the older
        job = tmp_path / f"20261001-{i:06d}-{i:06x}"
        job.mkdir()
        (job / "rank_0.log").write_text("x")
        age = now - 30 * 86400 - i
        os.utime(job / "rank_0.log", (age, age))
        os.utime(job, (age, age))
        jobs.append(job)
    kept, old = jobs[:launch_mod.KEEP_JOBS], jobs[launch_mod.KEEP_JOBS:]
    growing = old[0]  # an old job whose log is still being written
    os.utime(growing / "rank_0.log", (now, now))
    (tmp_path / "not-a-job").mkdir()
    removed = launch_mod.prune_job_dirs(str(tmp_path), now)
    assert sorted(removed) == sorted(str(p) for p in old[1:])
    assert all(p.exists() for p in kept) and growing.exists()
    assert (tmp_path / "not-a-job").exists()
    # launch() prunes the default log dir: its new job pushes the oldest kept one out.
    monkeypatch.setattr(launch_mod, "default_log_dir", lambda: str(tmp_path))
    monkeypatch.setattr(launch_mod, "_pruned", False)  # it prunes once per process
    nbdist.launch(os.getpid, nprocs=1, start_method="fork")
    assert not kept[-1].exists() and kept[-2].exists() and growing.exists()
