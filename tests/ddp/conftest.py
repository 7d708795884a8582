import sys

import pytest

pytest.importorskip("torch")

from nbdist import launch as _launch  # noqa: E402


@pytest.fixture(scope="session")
def launch():
    """nbdist.launch(fn, args, nprocs) -> per-rank results."""
    import cloudpickle

    # The rank functions live in test modules that a fresh rank process cannot import (tests/ddp
    # is not a package on its sys.path), so they travel by value.
    for name, module in list(sys.modules.items()):
        if name.startswith(("test_ddp_", "_ddp_models")) and module is not None:
            cloudpickle.register_pickle_by_value(module)
    return _launch
