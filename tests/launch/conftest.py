"""Fixtures of the launcher tests: every test must leave no process of its jobs behind."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_leftovers(no_leftover_processes):
    """The check itself lives in tests/conftest.py."""
