"""Fixtures shared by the test directories (helpers they import live in support.py)."""

from __future__ import annotations

import importlib

import pytest
from support import wait_gone

launch_mod = importlib.import_module("nbdist.launch")
job_mod = importlib.import_module("nbdist.job")


@pytest.fixture
def kill_running_jobs() -> bool:
    """Whether no_leftover_processes kills the test's jobs still running at its end (a directory's
    conftest overrides it) instead of counting their processes as left behind."""
    return False


@pytest.fixture
def no_leftover_processes(request, kill_running_jobs):
    """Fails the test when a process of a job it started (a rank, a rank's child, a background
    load) is still alive after it. ``request.node.extra_job_ids`` / ``extra_pids`` add jobs
    started elsewhere (a launcher in another process) and processes known by pid."""
    before_ranks = len(launch_mod.started_ranks)
    before_jobs = {id(j) for j in job_mod._registry}
    yield
    jobs = [j for j in job_mod._registry if id(j) not in before_jobs]
    if kill_running_jobs:
        for j in jobs:
            if not j.done():
                j.kill(grace=0.5)
    new = list(launch_mod.started_ranks)[before_ranks:]
    job_ids = ({j for j, _ in new} | {j.id for j in jobs}
               | set(getattr(request.node, "extra_job_ids", ())))
    pids = {p for _, p in new} | set(getattr(request.node, "extra_pids", ()))
    for j in jobs:
        load = j.load
        if load is not None:
            pids |= {r["pid"] for r in load.runs}
    left = wait_gone(job_ids, pids, within=10.0)
    assert not left, f"processes of the test's jobs are still alive: {left}"
