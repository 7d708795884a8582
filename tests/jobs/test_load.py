"""nbdist.Load beside a foreground launch: restarts, per-run logs, the stop (TERM, grace, KILL),
warmup ordering, the record, and the monitor's absence stated plainly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

import nbdist

from . import helpers

# A load that ignores SIGTERM: only the SIGKILL after the grace period stops it.
STUBBORN = ("import signal, sys, time\n"
            "def on_term(*_):\n"
            "    print('got SIGTERM, ignoring it', flush=True)\n"
            "signal.signal(signal.SIGTERM, on_term)\n"
            "print('stubborn load up', flush=True)\n"
            "while True:\n"
            "    time.sleep(0.05)\n")


def read_record(job_dir: str) -> dict:
    with open(os.path.join(job_dir, "record.json")) as f:
        return json.load(f)


def test_load_that_exits_at_once_is_restarted_and_counted(log_dir, tmp_path):
    gate = str(tmp_path / "go")
    load = nbdist.Load("sh -c 'echo load run $NBDIST_LOAD_RUN; exit 7'", restart_delay=0.05,
                       grace=1)
    job = nbdist.launch(helpers.wait_for_file, (gate, "fg done"), nprocs=1, background=True,
                        log_dir=log_dir, background_load=load)
    assert job.load is load
    deadline = time.monotonic() + 60
    while len(load.runs) < 4:  # the foreground waits until the load has restarted 3 times
        assert time.monotonic() < deadline, load.runs
        time.sleep(0.02)
    open(gate, "w").close()
    assert job.wait(timeout=60) == ["fg done"]
    assert not load.running
    rec = job.record
    assert rec == read_record(job.log_dir)
    bg = rec["background_load"]
    n = len(bg["runs"])
    assert n >= 4 and bg["restarts"] == n - 1 == load.restarts
    finished = [r for r in bg["runs"] if not r["stopped_by_nbdist"]]
    assert len(finished) >= 3
    assert all(r["exit_code"] == 7 and r["how"] == "exit code 7" for r in finished)
    for r in bg["runs"]:
        assert r["log"] == os.path.join(job.log_dir, "bg", f"run_{r['run']}.log")
    with open(os.path.join(job.log_dir, "bg", "run_2.log")) as f:
        assert f.read() == "load run 2\n"
    assert rec["foreground"]["result"] == ["fg done"] and rec["foreground"]["error"] is None
    assert rec["status"] == "succeeded"


def wait_for_load_line(log_dir, text, run=0):
    """Foreground rank: returns once the load's run ``run`` printed ``text``."""
    path = os.path.join(log_dir, os.environ["NBDIST_JOB_ID"], "bg", f"run_{run}.log")
    while True:
        if os.path.exists(path):
            with open(path) as f:
                if text in f.read():
                    return "fg"
        time.sleep(0.02)


def test_load_ignoring_sigterm_is_killed_after_the_grace_period(log_dir):
    load = nbdist.Load([sys.executable, "-c", STUBBORN], grace=0.5)
    job = nbdist.launch(wait_for_load_line, (log_dir, "stubborn load up"), nprocs=1,
                        background=True, log_dir=log_dir, background_load=load)
    assert job.wait(timeout=60) == ["fg"]
    runs = job.record["background_load"]["runs"]
    assert len(runs) == 1
    run = runs[0]
    assert run["signal"] == "SIGKILL" and run["exit_code"] is None
    assert run["stopped_by_nbdist"] is True
    with open(run["log"]) as f:
        assert "got SIGTERM, ignoring it" in f.read()  # TERM came first, then KILL


def test_warmup_starts_the_load_before_the_foreground(log_dir, tmp_path):
    marker = str(tmp_path / "load-started")
    load = nbdist.Load(["sh", "-c", f"touch {marker}; exec sleep 600"], warmup=1.0, grace=0.5)

    def fg(path):
        return os.path.exists(path)

    got = nbdist.launch(fg, (marker,), nprocs=1, log_dir=log_dir, background_load=load,
                        stream=False)
    assert isinstance(got, dict)  # a foreground launch with a load returns the record
    assert got["foreground"]["result"] == [True]
    assert got["background_load"]["runs"][0]["signal"] == "SIGTERM"


def test_load_is_stopped_when_the_foreground_fails(log_dir):
    load = nbdist.Load("sleep 600", grace=0.5)
    job = nbdist.launch(helpers.fail_now, nprocs=1, background=True, log_dir=log_dir,
                        background_load=load)
    with pytest.raises(nbdist.WorkerError, match="immediate failure"):
        job.wait(timeout=60)
    assert not load.running
    rec = read_record(job.log_dir)
    assert rec["status"] == "failed"
    assert "immediate failure" in rec["foreground"]["error"]
    assert rec["background_load"]["runs"][0]["stopped_by_nbdist"] is True


def test_function_load_and_the_energy_record_without_a_gpu(log_dir):
    def spin(seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            pass
        return "spun"

    load = nbdist.Load(spin, args=(0.1,), restart_delay=0.0, grace=1)
    # the foreground ends once run 1 started, i.e. after run 0 (the function) returned
    job = nbdist.launch(wait_for_load_line, (log_dir, "", 1), nprocs=1, background=True,
                        log_dir=log_dir, background_load=load, monitor=True)
    assert job.wait(timeout=60) == ["fg"]
    energy = job.record["energy"]
    assert energy["attribution"] == "combined"
    if not nbdist.Monitor.available():
        assert energy["available"] is False and energy["total_j"] is None
        assert energy["reason"]  # says why there is no figure, never 0 J
        summary = job.energy()
        assert not summary.available and summary.reason == energy["reason"]
    assert job.record["background_load"]["runs"][0]["exit_code"] == 0


def test_record_without_monitor_says_why_there_is_no_energy(log_dir):
    load = nbdist.Load("true", restart=False)
    job = nbdist.launch(helpers.rank_times, (1,), nprocs=1, background=True, log_dir=log_dir,
                        background_load=load)
    job.wait(timeout=60)
    assert job.record["energy"] == {"attribution": "combined", "available": False,
                                    "reason": "launched without monitor=True", "total_j": None}
    assert job.record["background_load"]["restarts"] == 0
    assert job.record["background_load"]["exit_codes"] == [0]
    with pytest.raises(nbdist.LaunchValueError, match="monitor=True"):
        job.energy()


def test_a_load_that_cannot_start_fails_the_job_clearly(log_dir):
    load = nbdist.Load("/nonexistent/stress-program --size 1")
    job = nbdist.launch(helpers.rank_times, (1,), nprocs=1, background=True, log_dir=log_dir,
                        background_load=load)
    with pytest.raises(nbdist.LaunchError, match="stress-program.*could not start"):
        job.wait(timeout=60)
    assert job.status == "failed"
    assert "could not start" in read_record(job.log_dir)["background_load"]["error"]


@pytest.mark.parametrize("kwargs, match", [
    ({"command_or_fn": 42}, "command_or_fn must be a command"),
    ({"command_or_fn": ""}, "the command is empty"),
    ({"command_or_fn": "x", "restart_delay": -1}, "restart_delay must be a finite number"),
    ({"command_or_fn": "x", "warmup": "5"}, "warmup must be a finite number"),
    ({"command_or_fn": "x", "gpus": "a,b"}, "Load: gpus must be"),
    ({"command_or_fn": "x", "max_runs": 0}, "max_runs must be"),
    ({"command_or_fn": "x", "grace": float("nan")}, "grace must be a finite number"),
    ({"command_or_fn": "x", "restart_delay": float("inf")}, "restart_delay must be a finite"),
])
def test_bad_load_arguments(kwargs, match):
    with pytest.raises(nbdist.LaunchValueError, match=match):
        nbdist.Load(**kwargs)


def test_background_load_must_be_a_load(log_dir):
    with pytest.raises(nbdist.LaunchValueError, match="background_load must be an nbdist.Load"):
        nbdist.launch(helpers.rank_times, (1,), nprocs=1, log_dir=log_dir,
                      background_load="sleep 1")


def test_kill_during_warmup_stops_the_load_and_never_starts_the_foreground(log_dir):
    load = nbdist.Load("sleep 600", warmup=600, grace=0.5)
    job = nbdist.launch(helpers.rank_times, (1,), nprocs=1, background=True, log_dir=log_dir,
                        background_load=load)
    deadline = time.monotonic() + 60
    while not load.runs:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    job.kill(grace=0.5)
    assert job.done() and job.status == "killed"
    assert job.pids == []  # the foreground never started
    assert not load.running
    assert job.record["background_load"]["runs"][0]["stopped_by_nbdist"] is True


def test_standalone_load_with_max_runs(tmp_path):
    load = nbdist.Load(["sh", "-c", "echo run $NBDIST_LOAD_RUN"], restart_delay=0.0, max_runs=3)
    load.start(str(tmp_path), "standalone")
    deadline = time.monotonic() + 60
    while load.running:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert [r["exit_code"] for r in load.runs] == [0, 0, 0] and load.restarts == 2
    assert sorted(os.listdir(tmp_path / "bg")) == ["run_0.log", "run_1.log", "run_2.log"]
    assert (tmp_path / "bg" / "run_1.log").read_text() == "run 1\n"
    with pytest.raises(nbdist.LaunchError, match="already started"):
        load.start(str(tmp_path))
    load.stop()  # stopping a finished load is harmless


def test_a_huge_restart_delay_waits_instead_of_ending_the_restart_loop(tmp_path):
    load = nbdist.Load("true", restart_delay=1e300, grace=0.5)
    load.start(str(tmp_path), "huge-delay")
    try:
        deadline = time.monotonic() + 30
        while load.runs[0]["ended"] is None:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.2)
        # Waiting for the next run, not dead of an OverflowError in Event.wait.
        assert load.running and load.error is None
    finally:
        began = time.monotonic()
        load.stop()
    assert time.monotonic() - began < 5.0
    assert not load.running and load.exit_codes == [0]


def test_stop_before_start_does_not_disable_the_load_and_a_bad_grace_is_named(tmp_path):
    load = nbdist.Load("sleep 600", grace=0.5)
    load.stop()  # nothing to stop yet
    load.start(str(tmp_path), "stopped-early")
    try:
        assert load.running and len(load.runs) == 1
        with pytest.raises(nbdist.LaunchValueError, match="stop: grace must be a finite number"):
            load.stop(grace=float("nan"))  # NaN was an immediate SIGKILL
        assert load.running
    finally:
        load.stop()
    assert not load.running and load.runs[0]["signal"] == "SIGTERM"


def test_a_launch_refused_before_it_started_does_not_delay_exit(tmp_path):
    # The Job was made before its extensions were checked; left among the live jobs, the exit
    # handler waited 11 s for a driver that never ran.
    code = ("import nbdist\n"
            "try:\n"
            f"    nbdist.launch(print, nprocs=1, log_dir={str(tmp_path)!r},\n"
            "                  background_load='sleep 1')\n"
            "except nbdist.LaunchValueError as exc:\n"
            "    print('refused:', exc)\n"
            "print('jobs:', nbdist.jobs())\n")
    began = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    took = time.monotonic() - began
    assert proc.returncode == 0, proc.stderr
    assert "refused: background_load must be an nbdist.Load" in proc.stdout
    assert "jobs: []" in proc.stdout
    assert took < 6.0, f"exit took {took:.1f} s"
