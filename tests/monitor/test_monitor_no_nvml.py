"""The monitor where NVML cannot be used: the real dlopen / dlsym / nvmlInit failure paths.

Nothing here is mocked: the C++ loader really fails to open a missing file, really finds a library
without NVML's symbols, and really gets an error code from a (fake) driver's nvmlInit_v2.
"""

import csv

import pytest

import nbdist
from nbdist.monitor import Monitor


@pytest.fixture
def missing_library(monkeypatch, tmp_path):
    path = tmp_path / "nowhere" / "libnvidia-ml.so.1"
    monkeypatch.setenv("NBDIST_NVML_LIBRARY", str(path))
    return path


def test_available_is_false_with_the_dlopen_reason(missing_library):
    status = Monitor.available()
    assert not status
    assert status.available is False
    assert f"{missing_library} not found" in status.reason
    assert "No such file" in status.reason  # dlerror()'s own words travel with it
    assert str(status).startswith("NVML unavailable: ")


def test_default_library_name_is_the_driver_soname(monkeypatch):
    monkeypatch.delenv("NBDIST_NVML_LIBRARY", raising=False)
    status = Monitor.available()
    assert status.library == "libnvidia-ml.so.1"
    if status:
        pytest.skip("this machine has an NVIDIA driver; the failure path is covered above")
    assert status.reason.startswith("libnvidia-ml.so.1 not found")


def test_monitor_without_nvml_records_nothing_and_says_why(missing_library, tmp_path):
    with Monitor(hz=50) as m:
        m.mark("half")
        assert m.running
    assert not m.active and not m.running
    assert "not found" in m.reason
    summary = m.summary()
    assert summary.available is False
    assert summary.total_j is None  # never 0 J
    assert str(summary) == f"no GPU monitor: {m.reason}"
    assert str(m.summary(start="half")).startswith("no GPU monitor: ")
    assert all(v == [] for v in m.samples().values())
    path = m.to_csv(tmp_path / "gpu.csv")
    with open(path) as f:
        assert list(csv.reader(f)) == [
            ["gpu", "t_s", "power_w", "energy_j", "util_gpu", "util_mem", "mem_used_mib",
             "temp_c"]]
    fig = m.plot(tmp_path / "gpu.png")
    assert (tmp_path / "gpu.png").stat().st_size > 0
    assert "no GPU monitor" in fig.axes[0].texts[0].get_text()
    assert "inactive" in repr(m)


def test_asking_for_gpus_without_nvml_is_not_an_error(missing_library):
    # A notebook written for a GPU machine must still run where there is none.
    with Monitor(gpus=[0, 3]) as m:
        pass
    assert str(m.summary()).startswith("no GPU monitor: ")


def test_a_library_without_nvml_symbols_is_reported(monkeypatch, empty_library_path):
    monkeypatch.setenv("NBDIST_NVML_LIBRARY", str(empty_library_path))
    status = Monitor.available()
    assert not status
    assert "is not a usable NVML library: symbol nvmlInit_v2 is missing" in status.reason


def test_nvml_init_failure_is_reported_with_the_driver_message(fake_nvml, monkeypatch):
    monkeypatch.setenv("FAKE_NVML_INIT_ERROR", "9")
    status = Monitor.available()
    assert not status
    assert "nvmlInit failed" in status.reason
    assert "Driver Not Loaded (NVML code 9)" in status.reason
    with Monitor() as m:
        pass
    assert "Driver Not Loaded" in str(m.summary())


def test_the_rest_of_nbdist_works_without_nvml(missing_library):
    assert isinstance(nbdist.Monitor, type)
    from nbdist import _core

    with pytest.raises(nbdist.LaunchValueError):
        _core._raise_for_test("launch", "invalid", "still mapped")


def test_sample_clock_is_pythons_monotonic_clock():
    # Marks are taken with time.monotonic_ns() and compared with the C++ sample timestamps.
    import time

    from nbdist import _core

    a = time.monotonic_ns()
    b = _core.monitor.now_ns()
    c = time.monotonic_ns()
    assert a <= b <= c
