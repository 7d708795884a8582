"""The package foundation: the extensions import, and C++ errors reach Python as the right class."""

import pytest

import nbdist
from nbdist import _core


@pytest.mark.parametrize(
    ("subsystem", "kind", "cls", "builtin"),
    [
        ("launch", "invalid", nbdist.LaunchValueError, ValueError),
        ("launch", "failure", nbdist.LaunchError, RuntimeError),
        ("arc", "invalid", nbdist.ArcValueError, ValueError),
        ("ddp", "failure", nbdist.DDPError, RuntimeError),
        ("monitor", "timeout", nbdist.NbdistTimeoutError, TimeoutError),
        ("unknown", "failure", nbdist.NbdistError, Exception),
    ],
)
def test_cpp_errors_map_to_python_classes(subsystem, kind, cls, builtin):
    with pytest.raises(cls, match="field x of task t") as info:
        _core._raise_for_test(subsystem, kind, "field x of task t")
    assert isinstance(info.value, builtin)
    assert isinstance(info.value, nbdist.NbdistError)


def test_ddp_extension_matches_the_installed_torch():
    torch = pytest.importorskip("torch")
    from nbdist import _ddp

    assert torch.__version__.startswith(_ddp._torch_version())
