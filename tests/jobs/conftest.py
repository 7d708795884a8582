"""Fixtures of the background-job tests: no test may leave a process of its jobs (ranks, their
children, background loads) behind."""

from __future__ import annotations

import pytest


@pytest.fixture
def kill_running_jobs() -> bool:
    """A failed assertion must not leave a background job running (and counted as a leftover)."""
    return True


@pytest.fixture(autouse=True)
def _no_leftovers(no_leftover_processes):
    """The check itself lives in tests/conftest.py."""


@pytest.fixture
def log_dir(tmp_path):
    return str(tmp_path / "logs")
