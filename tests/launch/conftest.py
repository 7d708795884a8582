"""Fixtures of the launcher tests: every test must leave no process of its jobs behind."""

from __future__ import annotations

import importlib
import os
import time

import pytest

launch_mod = importlib.import_module("nbdist.launch")


def processes_with_job_ids(job_ids: set[str]) -> list[tuple[int, str]]:
    """(pid, job id) of every live process whose environment names one of the jobs."""
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


def leftovers(job_ids: set[str], pids: set[int]) -> list:
    return processes_with_job_ids(job_ids) + [(p, "pid") for p in pids if alive(p)]


def wait_gone(job_ids: set[str], pids: set[int], within: float) -> list:
    deadline = time.monotonic() + within
    while True:
        left = leftovers(job_ids, pids)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


@pytest.fixture(autouse=True)
def no_leftover_processes(request):
    """Fails the test when a rank (or a rank's child) of a job it started is still alive."""
    before = len(launch_mod.started_ranks)
    yield
    new = list(launch_mod.started_ranks)[before:]
    job_ids = {j for j, _ in new} | set(getattr(request.node, "extra_job_ids", ()))
    pids = {p for _, p in new} | set(getattr(request.node, "extra_pids", ()))
    left = wait_gone(job_ids, pids, within=10.0)
    assert not left, f"processes of the test's jobs are still alive: {left}"
