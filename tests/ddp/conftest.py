import sys
import types

import pytest

pytest.importorskip("torch")

try:
    from nbdist import launch as _launch  # the real launcher, once it is on this branch

    if isinstance(_launch, types.ModuleType):
        _launch = _launch.launch
except (ImportError, AttributeError):  # pragma: no cover - until nbdist.launch lands
    from _launch_shim import launch as _launch


@pytest.fixture(scope="session")
def launch():
    """nbdist.launch(fn, args, nprocs) -> per-rank results (or the temporary shim)."""
    import cloudpickle

    # The rank functions live in test modules that a fresh rank process cannot import (tests/ddp
    # is not a package on its sys.path), so they travel by value.
    for name, module in list(sys.modules.items()):
        if name.startswith(("test_ddp_", "_ddp_models")) and module is not None:
            cloudpickle.register_pickle_by_value(module)
    return _launch
