"""A failing rank: the error names the root cause, and no rank survives it."""

import os
import signal
import time

import pytest
import torch  # noqa: F401

import nbdist

from . import helpers


@pytest.mark.parametrize("method", ["fork", "zygote"])
def test_rank_exception_reaches_parent_with_traceback(method):
    with pytest.raises(nbdist.WorkerError) as info:
        nbdist.launch(helpers.raise_on_rank1, nprocs=2, start_method=method, stream=False)
    err = info.value
    assert err.rank == 1 and err.exit_code == 1 and err.signal is None
    assert err.exc_type == "ValueError" and err.exc_message == "rank one is unhappy"
    assert "in raise_on_rank1" in err.remote_traceback
    assert isinstance(err.remote_exception, ValueError)
    assert "rank 1 (of 2) failed with ValueError: rank one is unhappy" in str(err)
    assert "raise ValueError" in str(err)
    # rank 0, stuck in all_reduce, was stopped by the teardown and is listed as collateral
    ranks = {f["rank"]: f for f in err.failures}
    assert ranks[1]["exc_type"] == "ValueError"
    assert ranks[0]["collateral"]


def test_exit_code_of_root_cause():
    with pytest.raises(nbdist.WorkerError) as info:
        nbdist.launch(helpers.exit3_on_rank1, nprocs=2, stream=False)
    assert info.value.rank == 1 and info.value.exit_code == 3
    assert "exit code 3" in str(info.value)


@pytest.mark.parametrize("code, status", [(256, 1), (-1, 255), (258, 2)])
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_sys_exit_code_is_what_the_os_would_keep_but_never_success(method, code, status):
    # sys.exit(256) in a plain Python process exits with status 0; a rank that failed must not.
    with pytest.raises(nbdist.WorkerError) as info:
        nbdist.launch(helpers.sys_exit_on_rank1, args=(code,), nprocs=2, stream=False,
                      start_method=method)
    assert info.value.rank == 1 and info.value.exit_code == status, str(info.value)
    assert f"exit code {status}" in str(info.value)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_segfault_names_the_signal(method):
    with pytest.raises(nbdist.WorkerError) as info:
        nbdist.launch(helpers.segv_on_rank1, nprocs=2, start_method=method, stream=False)
    err = info.value
    assert err.rank == 1 and err.signal == "SIGSEGV" and err.exit_code is None
    assert "signal SIGSEGV" in str(err)
    assert "Segmentation fault" in str(err)  # faulthandler's dump from the rank's tail


def test_sigkill_of_one_rank_names_the_signal():
    job = nbdist.launch(helpers.sleep_forever, nprocs=2, background=True)
    deadline = time.monotonic() + 60
    while "ready" not in job.logs(rank=1) and time.monotonic() < deadline:
        time.sleep(0.05)
    import os

    os.kill(job.pids[1], signal.SIGKILL)
    with pytest.raises(nbdist.WorkerError) as info:
        job.wait(timeout=30)
    assert info.value.rank == 1 and info.value.signal == "SIGKILL"
    assert "signal SIGKILL" in str(info.value)
    assert job.status == "failed"


def test_timeout_dumps_every_rank_stack_then_kills():
    t0 = time.monotonic()
    with pytest.raises(nbdist.LaunchTimeoutError) as info:
        nbdist.launch(helpers.hang_for_timeout, nprocs=2, timeout=1.5, grace=1, stream=False)
    err = info.value
    assert isinstance(err, TimeoutError) and isinstance(err, nbdist.WorkerError)
    assert set(err.dumps) == {0, 1}
    for r in (0, 1):
        assert "inner_sleep_for_dump" in err.dumps[r] and "hang_for_timeout" in err.dumps[r]
    assert "timed out after 1.5 s" in str(err)
    assert time.monotonic() - t0 < 60


def test_restarts_rerun_the_whole_group():
    assert nbdist.launch(helpers.fail_until_restart, (2,), nprocs=2, max_restarts=2,
                         stream=False) == [2, 2]
    with pytest.raises(nbdist.WorkerError, match="attempt 1 fails"):
        nbdist.launch(helpers.fail_until_restart, (2,), nprocs=2, max_restarts=1, stream=False)


def test_taken_port_is_retried_once_on_a_free_port(capfd):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = nbdist.launch(port_user, nprocs=2, master_port=port)
    assert all(p != str(port) for p in out)
    assert f"port {port} was taken" in capfd.readouterr().out


def port_user():
    import os

    helpers.allreduce_rank()
    return os.environ["MASTER_PORT"]


def test_rank_printing_100_mb_completes(tmp_path):
    job = nbdist.launch(helpers.print_a_lot, (100,), nprocs=1, log_dir=str(tmp_path),
                        background=True)
    assert job.wait(timeout=240) == [100]
    assert os_size(job.log_dir + "/rank_0.log") >= 100 * 1000 * 1000


def test_rank_printing_100_mb_streamed_into_the_cell(capfd):
    assert nbdist.launch(helpers.print_a_lot, (100,), nprocs=1) == [100]
    out = capfd.readouterr()
    assert "[rank 0] xxx" in out.out


def os_size(path):
    import os

    return os.path.getsize(path)


def fail_at_once_on_rank1():
    if os.environ["RANK"] == "1":
        raise RuntimeError("fails before the others even started")
    time.sleep(600)


@pytest.mark.parametrize("method", ["fork", "zygote"])
def test_ranks_failing_during_start_tear_down_without_waiting_for_the_grace(method):
    # A rank that fails while the others are still being forked: the teardown must reach ranks
    # that had not made their process group yet (they were once left to the SIGKILL deadline).
    for _ in range(3):
        t0 = time.monotonic()
        with pytest.raises(nbdist.WorkerError) as info:
            nbdist.launch(fail_at_once_on_rank1, nprocs=4, start_method=method, grace=120,
                          stream=False)
        assert info.value.rank == 1
        assert time.monotonic() - t0 < 60  # far below the 120 s grace


def test_fn_that_cannot_be_unpickled_in_the_rank_is_reported(tmp_path):
    # fn lives in a module only the launcher can import: the spawn rank fails before calling it.
    import sys

    mod = tmp_path / "only_here_mod.py"
    mod.write_text("def f():\n    return 1\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import only_here_mod

        os.rename(mod, tmp_path / "gone.py")
        with pytest.raises(nbdist.WorkerError) as info:
            nbdist.launch(only_here_mod.f, nprocs=1, start_method="spawn", stream=False)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("only_here_mod", None)
    err = info.value
    assert err.rank == 0 and err.exc_type == "ModuleNotFoundError"
    assert "before calling fn" in err.remote_traceback


def stubborn_rank0_then_fail(flag_dir):
    """Rank 0 ignores SIGTERM (so only the grace's SIGKILL ends it); rank 1 fails once it has."""
    rank = os.environ["RANK"]
    if rank == "0":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        open(os.path.join(flag_dir, "ignoring"), "w").close()
        time.sleep(600)
    while not os.path.exists(os.path.join(flag_dir, "ignoring")):
        time.sleep(0.01)
    raise RuntimeError("rank 1 gives up")


def pid_alive(pid):
    return os.path.exists(f"/proc/{pid}")


def test_error_is_raised_while_slow_ranks_are_still_being_stopped(tmp_path, capfd):
    # The error does not wait for the other ranks to exit (a CUDA context takes a few hundred ms
    # to tear down, a rank ignoring SIGTERM the whole grace); the next launch waits for them.
    with pytest.raises(nbdist.WorkerError) as info:
        nbdist.launch(stubborn_rank0_then_fail, (str(tmp_path),), nprocs=2, grace=3,
                      start_method="fork", stream=False)
    err = info.value
    assert err.rank == 1 and err.exc_type == "RuntimeError" and err.exit_code == 1
    stopping = {f["rank"]: f for f in err.failures}[0]
    assert stopping["collateral"] and "being stopped" in stopping["how"]
    assert pid_alive(stopping["pid"])  # still inside its grace when the error arrived
    # The next launch starts only once that rank is gone, and says why it waits.
    assert nbdist.launch(pid_alive, (stopping["pid"],), nprocs=1) == [False]
    assert "waiting for the ranks of an earlier failed job" in capfd.readouterr().out


def test_background_job_fails_fast_and_kill_finishes_the_teardown(tmp_path):
    job = nbdist.launch(stubborn_rank0_then_fail, (str(tmp_path),), nprocs=2, grace=60,
                        background=True)
    with pytest.raises(nbdist.WorkerError, match="rank 1 gives up"):
        job.wait(timeout=60)
    assert job.status == "failed" and job.done()
    rank0 = job.pids[0]
    assert pid_alive(rank0)  # its grace (60 s) has not passed
    job.kill(grace=0)  # shortens the teardown and waits for it
    assert not pid_alive(rank0)
