import pytest

pytest.importorskip("torch")

try:
    from nbdist import launch as _launch  # the real launcher, once it is on this branch
except ImportError:  # pragma: no cover - until nbdist.launch lands
    from _launch_shim import launch as _launch


@pytest.fixture(scope="session")
def launch():
    """nbdist.launch(fn, args, nprocs) -> per-rank results (or the temporary shim)."""
    return _launch
