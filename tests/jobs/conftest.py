"""Fixtures of the background-job tests: no test may leave a process of its jobs (ranks, their
children, background loads) behind."""

from __future__ import annotations

import importlib
import os
import time

import pytest

launch_mod = importlib.import_module("nbdist.launch")
job_mod = importlib.import_module("nbdist.job")


def processes_with_job_ids(job_ids: set[str]) -> list[tuple[int, str]]:
    """(pid, job id) of every live process whose environment names one of the jobs (ranks and
    loads both carry NBDIST_JOB_ID)."""
    found = []
    needles = {f"NBDIST_JOB_ID={j}".encode(): j for j in job_ids}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{name}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if state == b"Z":
            continue
        for needle, job in needles.items():
            if needle in env:
                found.append((int(name), job))
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def wait_gone(job_ids: set[str], pids: set[int], within: float) -> list:
    deadline = time.monotonic() + within
    while True:
        left = processes_with_job_ids(job_ids) + [(p, "pid") for p in pids if alive(p)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


@pytest.fixture(autouse=True)
def no_leftover_processes(request):
    before = {id(j) for j in job_mod._registry}
    yield
    jobs = [j for j in job_mod._registry if id(j) not in before]
    for j in jobs:  # a failed assertion must not leave a job running
        if not j.done():
            j.kill(grace=0.5)
    job_ids = {j.id for j in jobs}
    pids = set(getattr(request.node, "extra_pids", ()))
    for j in jobs:
        load = j.load
        if load is not None:
            pids |= {r["pid"] for r in load.runs}
    left = wait_gone(job_ids, pids, within=10.0)
    assert not left, f"processes of the test's jobs are still alive: {left}"


@pytest.fixture
def log_dir(tmp_path):
    return str(tmp_path / "logs")
