"""The notebook tests run a real kernel: one stuck cell must fail its test in minutes, not eat the
whole suite's time (nbclient's own per-cell timeout is longer than a whole notebook should take)."""

from __future__ import annotations

import os

import pytest

# Each notebook takes under 15 s on a loaded 2-core machine; 120 s leaves room for a cold start.
NOTEBOOK_TEST_TIMEOUT_S = 120
HERE = os.path.dirname(os.path.abspath(__file__))


def pytest_collection_modifyitems(config, items):
    for item in items:
        if str(item.path).startswith(HERE + os.sep) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(NOTEBOOK_TEST_TIMEOUT_S))
