"""Fixtures for the monitor tests: a fake NVIDIA driver library built from fake_nvml.c.

The fake is a real shared library that nbdist's C++ loader opens with dlopen (through
NBDIST_NVML_LIBRARY) and samples from its C++ thread; it replaces the driver, not our code.
"""

import shutil
import subprocess
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _compile(tmp: Path, name: str, source: Path) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler (cc) to build the fake NVML library")
    out = tmp / name
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", str(out), str(source)], check=True)
    return out


@pytest.fixture(scope="session")
def fake_nvml_path(tmp_path_factory) -> Path:
    # Named like the real soname so that messages and paths look as they will on a GPU machine.
    return _compile(tmp_path_factory.mktemp("fake_nvml"), "libnvidia-ml.so.1",
                    HERE / "fake_nvml.c")


@pytest.fixture(scope="session")
def empty_library_path(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("empty_lib")
    src = tmp / "empty.c"
    src.write_text("int not_nvml(void) { return 0; }\n")
    return _compile(tmp, "libempty.so", src)


@pytest.fixture
def fake_nvml(fake_nvml_path, monkeypatch):
    """Points nbdist at the fake driver: 2 devices by default, power P_i(t) = 100 + 50 i + 10 t W
    with t in seconds since T0 (returned), every field supported. Tests adjust FAKE_NVML_* vars."""
    t0 = time.monotonic_ns()
    monkeypatch.setenv("NBDIST_NVML_LIBRARY", str(fake_nvml_path))
    monkeypatch.setenv("FAKE_NVML_T0_NS", str(t0))
    for var in ("FAKE_NVML_DEVICES", "FAKE_NVML_NO_ENERGY", "FAKE_NVML_NO_POWER",
                "FAKE_NVML_INIT_ERROR", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(var, raising=False)
    return t0



@pytest.fixture
def fake_nvml_calls(fake_nvml, fake_nvml_path):
    """Returns a function giving (power queries, energy-counter queries) answered so far by the fake
    driver: the same loaded library nbdist uses (dlopen of one path yields one copy)."""
    import ctypes

    lib = ctypes.CDLL(str(fake_nvml_path))
    power = ctypes.c_ulonglong.in_dll(lib, "fake_nvml_power_calls")
    energy = ctypes.c_ulonglong.in_dll(lib, "fake_nvml_energy_calls")
    return lambda: (power.value, energy.value)
