"""Regression tests of the launcher review's findings: a bad prefix and a failing display (the
ranks must not be left unsupervised), gpus=[] without nprocs, a relative log_dir and a later
chdir, exceptions whose str() raises, non-finite timeouts and graces, NUL in env values, a launch
nested in a rank, and '\\r' progress lines in the foreground.

Every wait is bounded (a launch timeout, a job.wait timeout) so that a regression fails instead
of hanging the suite.
"""

import io
import math
import os
import sys
import time

import pytest

import nbdist
from nbdist.launch import started_ranks

# -- helpers the ranks run (module level: every start method finds them) -------------------------


def say_hello_and_return():
    print(f"hello from {os.environ['RANK']}", flush=True)
    return int(os.environ["RANK"])


def say_hello_then_sleep(seconds):
    print(f"hello from {os.environ['RANK']}", flush=True)
    time.sleep(seconds)
    return "not torn down"


def fail_first_attempt():
    attempt = int(os.environ["NBDIST_RESTART_COUNT"])
    print(f"attempt {attempt}", flush=True)
    if attempt == 0:
        time.sleep(0.5)  # the test changes directory meanwhile
        raise RuntimeError("first attempt fails")
    return attempt


class BadStr(Exception):
    def __str__(self):
        raise RuntimeError("str broke")


def raise_bad_str():
    raise BadStr()


def inner_pid():
    return os.getpid()


def nested_launch(background):
    """A launch from inside a rank (default start method: fork here, CUDA is never used)."""
    if background:
        job = nbdist.launch(inner_pid, nprocs=2, background=True)
        return job.wait(timeout=30)
    return nbdist.launch(inner_pid, nprocs=2, stream=False)


def fd_is_open(fd):
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def nested_launch_keeps_my_files():
    """Opens files in the rank (they take the numbers of the launcher descriptors the fork
    closed), then checks that a nested fork rank still has them."""
    fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(8)]
    return nbdist.launch(fd_is_open_all, (fds,), nprocs=1, start_method="fork", stream=False)


def fd_is_open_all(fds):
    return [fd for fd in fds if not fd_is_open(fd)]


def progress_then_wait(seen_path):
    """Writes an unfinished '\\r' line, then waits (bounded) until the launcher showed it."""
    sys.stderr.write("\rprogress 1/2")
    sys.stderr.flush()
    deadline = time.monotonic() + 5.0
    while not os.path.exists(seen_path) and time.monotonic() < deadline:
        time.sleep(0.02)
    sys.stderr.write("\rprogress 2/2\n")
    sys.stderr.flush()
    return os.path.exists(seen_path)


def new_ranks(before):
    return [pid for _, pid in list(started_ranks)[before:]]


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


# -- 1. prefix ------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["[{rank}/{world}] ", "{0} {rank}", "{rank}{", "{rank:q}",
                                    "{{rank}}"])
def test_bad_prefix_is_named_before_any_rank_starts(prefix):
    before = len(started_ranks)
    with pytest.raises(nbdist.LaunchValueError, match="prefix"):
        nbdist.launch(say_hello_and_return, nprocs=2, prefix=prefix, timeout=30)
    assert new_ranks(before) == []


def test_good_prefixes_still_work(capfd):
    assert nbdist.launch(say_hello_and_return, nprocs=2, prefix="{rank:>3}| ") == [0, 1]
    out = capfd.readouterr().out
    assert "  0| hello from 0" in out and "  1| hello from 1" in out


def test_notebook_launcher_template_is_checked_up_front():
    before = len(started_ranks)
    with pytest.raises(nbdist.LaunchValueError, match="prefix"):
        nbdist.notebook_launcher(say_hello_and_return, num_processes=1,
                                 log_line_prefix_template="[{local_rank}] ")
    assert new_ranks(before) == []


class _DisplayGone(io.TextIOBase):
    """A stdout whose writes of rank lines fail (a closed notebook stream)."""

    def write(self, text):
        if "[rank" in text:
            raise OSError("the display is gone")
        return len(text)

    def flush(self):
        pass


def test_an_error_in_the_foreground_driver_tears_the_ranks_down(monkeypatch):
    before = len(started_ranks)
    monkeypatch.setattr(sys, "stdout", _DisplayGone())
    t0 = time.monotonic()
    with pytest.raises(OSError, match="the display is gone"):
        nbdist.launch(say_hello_then_sleep, (30,), nprocs=2, grace=1.0, timeout=60)
    monkeypatch.undo()
    pids = new_ranks(before)
    assert len(pids) == 2
    # Gone when the error arrives, not 30 s later (or never, unsupervised).
    assert [p for p in pids if alive(p)] == []
    assert time.monotonic() - t0 < 20
    job = nbdist.jobs()[-1]
    assert job.done() and job.status == "failed"


# -- 2. gpus=[] -----------------------------------------------------------------------------------


@pytest.mark.parametrize("gpus", [[], ""])
def test_empty_gpus_without_nprocs_is_a_clear_error(gpus):
    with pytest.raises(nbdist.LaunchValueError, match="gpus"):
        nbdist.launch(say_hello_and_return, gpus=gpus)


# -- 3. relative log_dir --------------------------------------------------------------------------


def test_relative_log_dir_is_made_absolute_and_survives_chdir(tmp_path, monkeypatch):
    start, elsewhere = tmp_path / "start", tmp_path / "elsewhere"
    start.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(start)
    job = nbdist.launch(fail_first_attempt, nprocs=1, log_dir="rel_logs", max_restarts=1,
                        background=True)
    os.chdir(elsewhere)  # %cd in a later cell, while the job runs and before its restart
    assert os.path.isabs(job.log_dir)
    assert job.log_dir.startswith(str(start / "rel_logs"))
    assert job.wait(timeout=60) == [1]
    assert job.restarts == 1
    logs = job.logs()
    assert "attempt 0" in logs and "attempt 1" in logs and "first attempt fails" in logs


def test_empty_log_dir_is_rejected():
    with pytest.raises(nbdist.LaunchValueError, match="log_dir"):
        nbdist.launch(say_hello_and_return, nprocs=1, log_dir="")


# -- 4. an exception whose str() raises ---------------------------------------------------------


@pytest.mark.parametrize("method", ["fork", "zygote", "spawn"])
def test_exception_with_a_broken_str_still_reports_type_and_traceback(method):
    with pytest.raises(nbdist.WorkerError) as info:
        nbdist.launch(raise_bad_str, nprocs=1, start_method=method, stream=False, timeout=60)
    err = info.value
    assert err.exc_type is not None and err.exc_type.endswith("BadStr")
    assert "str() of the" in err.exc_message
    assert "raise_bad_str" in err.remote_traceback and "raise BadStr()" in err.remote_traceback
    assert "BadStr" in str(err)
    # The error is reported as soon as the outcome arrived; the rank writes the traceback to its
    # log right after.
    deadline = time.monotonic() + 10.0
    while True:
        with open(os.path.join(err.log_dir, "rank_0.log")) as f:
            log = f.read()
        if "raise BadStr()" in log or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert "raise BadStr()" in log and "BadStr" in log


# -- 5. non-finite numbers, NUL in env values -----------------------------------------------------


@pytest.mark.parametrize("field, value", [
    ("timeout", math.nan), ("timeout", math.inf), ("grace", math.nan), ("grace", math.inf),
])
def test_non_finite_timeout_and_grace_are_rejected(field, value):
    before = len(started_ranks)
    with pytest.raises(nbdist.LaunchValueError, match=field):
        nbdist.launch(say_hello_and_return, nprocs=1, stream=False, **{field: value})
    assert new_ranks(before) == []


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_nul_in_an_env_value_names_the_variable(method):
    before = len(started_ranks)
    with pytest.raises(nbdist.LaunchValueError, match=r"env\['MY_VAR'\].*NUL"):
        nbdist.launch(say_hello_and_return, nprocs=1, start_method=method,
                      env={"MY_VAR": "x\0y"})
    assert new_ranks(before) == []


def test_job_kill_rejects_a_non_finite_grace():
    job = nbdist.launch(say_hello_then_sleep, (30,), nprocs=1, background=True)
    try:
        for bad in (math.nan, math.inf, -1.0, "1"):
            with pytest.raises(nbdist.LaunchValueError, match="grace"):
                job.kill(grace=bad)
        assert not job.done()
    finally:
        job.kill(grace=0.5)
    assert job.status == "killed"


def test_job_wait_rejects_a_non_finite_timeout():
    job = nbdist.launch(say_hello_then_sleep, (30,), nprocs=1, background=True)
    try:
        for bad in (math.nan, -1.0, "1"):  # NaN used to time out at once
            with pytest.raises(nbdist.LaunchValueError, match="Job.wait: timeout"):
                job.wait(timeout=bad)
            with pytest.raises(nbdist.LaunchValueError, match="Job.exception: timeout"):
                job.exception(timeout=bad)
        with pytest.raises(nbdist.NbdistTimeoutError):
            job.wait(timeout=0.1)
    finally:
        job.kill(grace=0.5)


# The launcher sets these for each rank; env= used to override them (both ranks RANK=0).
@pytest.mark.parametrize("name", ["RANK", "WORLD_SIZE", "MASTER_PORT"])
def test_env_may_not_override_the_rank_variables(name):
    before = len(started_ranks)
    with pytest.raises(nbdist.LaunchValueError, match=f"env\\['{name}'\\]: the launcher sets"):
        nbdist.launch(say_hello_and_return, nprocs=2, env={name: "0"})
    assert new_ranks(before) == []


def test_magic_rejects_a_non_finite_timeout():
    from IPython.core.error import UsageError

    from nbdist.magic import parse_line

    for bad in ("nan", "inf", "-inf"):
        with pytest.raises(UsageError, match="--timeout"):
            parse_line(f"--timeout {bad}")
    assert parse_line("--timeout 2.5").timeout == 2.5


# -- 6. a launch nested in a rank ----------------------------------------------------------------


@pytest.mark.parametrize("method", ["fork", "spawn", "zygote"])
@pytest.mark.parametrize("background", [False, True])
def test_nested_launch_in_a_rank_works(method, background):
    # The parent has used a background job (its fork thread exists) and failed a job: a forked
    # rank must not inherit either as its own.
    nbdist.launch(inner_pid, nprocs=1, background=True).wait(timeout=30)
    with pytest.raises(nbdist.WorkerError):
        nbdist.launch(raise_bad_str, nprocs=1, stream=False)
    [inner] = nbdist.launch(nested_launch, (background,), nprocs=1, start_method=method,
                            stream=False, timeout=20)
    assert len(inner) == 2 and len(set(inner)) == 2
    assert os.getpid() not in inner


def test_nested_fork_launch_keeps_the_ranks_own_descriptors():
    # The outer rank closed its parent's launcher descriptors; its own files reuse the numbers,
    # which a nested fork must not then close in its ranks as if they were still the launcher's.
    assert nbdist.launch(nested_launch_keeps_my_files, nprocs=2, start_method="fork",
                         stream=False, timeout=20) == [[[]], [[]]]


# -- 7. '\r' progress lines in the foreground ----------------------------------------------------


class _Recorder(io.TextIOBase):
    """A stderr that records what the launcher shows and says so to the rank through a file."""

    def __init__(self, seen_path):
        self.seen_path = seen_path
        self.text = ""

    def write(self, text):
        self.text += text
        if "progress 1/2" in self.text and not os.path.exists(self.seen_path):
            open(self.seen_path, "w").close()
        return len(text)

    def flush(self):
        pass


def test_carriage_return_progress_is_shown_before_the_newline(tmp_path, monkeypatch):
    seen = str(tmp_path / "seen")
    recorder = _Recorder(seen)
    monkeypatch.setattr(sys, "stderr", recorder)
    results = nbdist.launch(progress_then_wait, (seen,), nprocs=1, timeout=60)
    monkeypatch.undo()
    assert results == [True], recorder.text  # shown while the line was still unfinished
    # Rewritten in place, then ended by the rank's newline; the prefix stays on the line.
    assert "[rank 0] progress 1/2" in recorder.text
    assert "\r[rank 0] progress 2/2" in recorder.text
    assert recorder.text.endswith("progress 2/2\n")
