"""The sampler and the energy math, driven by a fake NVIDIA driver library (see fake_nvml.c).

The fake is a C shared library compiled by the test fixture and loaded by nbdist's real C++ loader
(dlopen via NBDIST_NVML_LIBRARY); the sampler thread, the support probing, the counter and
trapezoid energy, the CUDA_VISIBLE_DEVICES mapping and the CSV are all nbdist's own code. Only the
driver is replaced, by one whose power curve is known exactly:
P_i(t) = 100 + 50 i + 10 t watts, with an energy counter that is its exact integral.
"""

import csv
import math
import os
import statistics
import time

import pytest

from nbdist import MonitorError, MonitorValueError
from nbdist.monitor import Monitor


def analytic_energy_j(device: int, t0_ns: int, a_ns: int, b_ns: int) -> float:
    """The exact integral of the fake device's power over [a, b] (CLOCK_MONOTONIC ns)."""
    a, b = (a_ns - t0_ns) / 1e9, (b_ns - t0_ns) / 1e9
    return (100.0 + 50.0 * device) * (b - a) + 5.0 * (b * b - a * a)


def sample_times(m: Monitor, gpu: int) -> list[float]:
    cols = m.samples()
    return [t for g, t in zip(cols["gpu"], cols["t_s"]) if g == gpu]


def test_available_with_the_fake_driver(fake_nvml):
    status = Monitor.available()
    assert status and status.device_count == 2
    assert status.driver_version == "999.99-fake"


def test_counter_and_integrated_energy_match_the_analytic_value(fake_nvml, monkeypatch):
    monkeypatch.setenv("FAKE_NVML_NO_ENERGY", "1")
    with Monitor(hz=50) as m:
        time.sleep(0.6)
    s = m.summary()
    assert [g.method for g in s.gpus] == ["counter", "integrated"]
    start_ns = m._start_ns
    for g in s.gpus:
        times = sample_times(m, g.gpu)
        a = start_ns + round(times[0] * 1e9)
        b = start_ns + round(times[-1] * 1e9)
        exact = analytic_energy_j(g.gpu, fake_nvml, a, b)
        assert g.energy_j == pytest.approx(exact, rel=2e-3)
        assert g.integrated_j == pytest.approx(exact, rel=2e-3)
    assert s.gpus[0].counter_j == pytest.approx(s.gpus[0].integrated_j, rel=2e-3)
    assert s.gpus[0].energy_j == s.gpus[0].counter_j
    assert s.gpus[1].counter_j is None
    assert s.total_j == pytest.approx(s.gpus[0].energy_j + s.gpus[1].energy_j)
    # Mean power of a linear ramp is its value at the window's midpoint.
    for g in s.gpus:
        times = sample_times(m, g.gpu)
        mid = ((times[0] + times[-1]) / 2 * 1e9 + start_ns - fake_nvml) / 1e9
        assert g.mean_power_w == pytest.approx(100 + 50 * g.gpu + 10 * mid, rel=2e-3)
        assert g.peak_power_w >= g.mean_power_w
    assert "counter" in str(s) and "integrated" in str(s) and "total:" in str(s)


def test_support_matrix_and_a_gpu_without_power_is_never_0_joules(fake_nvml, monkeypatch):
    monkeypatch.setenv("FAKE_NVML_DEVICES", "3")
    monkeypatch.setenv("FAKE_NVML_NO_ENERGY", "1,2")
    monkeypatch.setenv("FAKE_NVML_NO_POWER", "2")
    with Monitor(hz=50) as m:
        time.sleep(0.2)
    full = {"power": True, "energy": True, "utilization": True, "memory": True,
            "temperature": True}
    assert m.support == {0: full, 1: dict(full, energy=False),
                         2: dict(full, energy=False, power=False)}
    s = m.summary()
    g2 = s.gpus[2]
    assert (g2.method, g2.energy_j, g2.mean_power_w) == ("none", None, None)
    assert s.total_j is None
    assert "total: unknown (GPU 2: no energy counter and no power reading)" in str(s)
    assert g2.mean_util_gpu == pytest.approx(70.0) and g2.peak_mem_mib == pytest.approx(3072)
    assert g2.peak_temp_c == 42
    assert all(math.isnan(x) for g, x in zip(m.samples()["gpu"], m.samples()["energy_j"])
               if g == 2)


def test_sampling_rate_follows_hz(fake_nvml):
    with Monitor(gpus=[0], hz=20) as m:
        time.sleep(1.0)
    times = sample_times(m, 0)
    gaps = [b - a for a, b in zip(times, times[1:])]
    # The median is robust to a scheduling hiccup on a loaded machine; the bound is loose on
    # purpose (it checks the rate, not the machine's speed).
    assert statistics.median(gaps) == pytest.approx(0.05, rel=0.3)
    assert len(times) >= 10
    assert times == sorted(times)


def test_stop_is_prompt_even_at_a_low_rate(fake_nvml):
    m = Monitor(hz=0.1).start()  # one tick every 10 s
    time.sleep(0.2)
    began = time.monotonic()
    m.stop()
    # A sleep loop would take up to 10 s here; a condition variable returns at once. The bound is
    # generous so that it only catches that failure, not a slow machine.
    assert time.monotonic() - began < 5.0
    assert len(sample_times(m, 0)) == 2  # the start and stop samples
    n = len(m.samples()["t_s"])
    time.sleep(0.15)
    assert len(m.samples()["t_s"]) == n  # nothing sampled after stop()
    assert m.sampler_cpu_s >= 0


def test_a_rate_too_low_for_the_sampler_clock_is_refused(fake_nvml):
    # 1 / hz seconds overflowed the sampler's int64 nanoseconds: the thread spun instead.
    with pytest.raises(MonitorValueError, match=r"hz=1e-300\): hz must be >= 1e-06"):
        Monitor(hz=1e-300)
    m = Monitor(hz=1e-6).start()  # the lowest rate: one sample every 11.6 days
    time.sleep(0.2)
    m.stop()
    assert len(sample_times(m, 0)) == 2  # the start and stop samples, nothing in between


def test_marks_split_the_energy_into_windows_that_add_up(fake_nvml):
    with Monitor(hz=50) as m:
        time.sleep(0.3)
        m.mark("a")
        time.sleep(0.3)
        m.mark("b")
        time.sleep(0.1)
    whole = m.summary().gpus[0].energy_j
    first = m.summary(end="a").gpus[0].energy_j
    middle = m.summary(start="a", end="b").gpus[0].energy_j
    last = m.summary(start="b").gpus[0].energy_j
    assert first + middle + last == pytest.approx(whole, rel=1e-9)
    a_ns, b_ns = (m._start_ns + round(t * 1e9) for _, t in m.marks)
    assert middle == pytest.approx(analytic_energy_j(0, fake_nvml, a_ns, b_ns), rel=5e-3)
    assert m.summary(start="a", end="b").duration_s == pytest.approx((b_ns - a_ns) / 1e9)
    assert [label for label, _ in m.marks] == ["a", "b"]
    with pytest.raises(MonitorValueError, match=r"summary\(start='zz'\): no such mark .*'a', 'b'"):
        m.summary(start="zz")
    with pytest.raises(MonitorValueError, match="end mark comes before the start mark"):
        m.summary(start="b", end="a")


def test_summary_while_running(fake_nvml):
    with Monitor(hz=50) as m:
        time.sleep(0.2)
        early = m.summary()
        time.sleep(0.2)
        later = m.summary()
    assert 0 < early.gpus[0].energy_j < later.gpus[0].energy_j < m.summary().gpus[0].energy_j


def test_csv_has_every_sample_and_is_written_atomically(fake_nvml, monkeypatch, tmp_path):
    monkeypatch.setenv("FAKE_NVML_NO_POWER", "1")
    monkeypatch.setenv("FAKE_NVML_NO_ENERGY", "1")
    path = tmp_path / "gpu.csv"
    path.write_text("old contents\n")
    with Monitor(hz=50) as m:
        time.sleep(0.2)
    assert m.to_csv(path) == str(path)
    with open(path) as f:
        rows = list(csv.DictReader(f))
    cols = m.samples()
    assert len(rows) == len(cols["t_s"]) == 2 * len(sample_times(m, 0))
    assert [r["gpu"] for r in rows] == [str(g) for g in cols["gpu"]]
    assert sorted(tmp_path.iterdir()) == [path]  # no temporary file left behind
    gpu0 = [r for r in rows if r["gpu"] == "0"]
    gpu1 = [r for r in rows if r["gpu"] == "1"]
    assert float(gpu0[0]["energy_j"]) == 0.0
    # The counter is read at energy_hz (1 Hz by default), so most rows leave energy_j empty.
    energies = [float(r["energy_j"]) for r in gpu0 if r["energy_j"] != ""]
    assert energies == sorted(energies) and energies[-1] > 0 and len(energies) < len(gpu0)
    assert float(gpu0[-1]["energy_j"]) == pytest.approx(m.summary().gpus[0].energy_j, rel=1e-4)
    assert all(r["power_w"] == "" and r["energy_j"] == "" for r in gpu1)
    assert {r["util_gpu"] for r in gpu1} == {"60"}
    assert {r["mem_used_mib"] for r in gpu1} == {"2048.0"}
    assert float(gpu0[0]["power_w"]) == pytest.approx(100 + 10 * (m._start_ns - fake_nvml) / 1e9,
                                                      abs=0.05)


def test_plot_draws_power_utilization_and_memory(fake_nvml, tmp_path):
    with Monitor(hz=50) as m:
        time.sleep(0.1)
        m.mark("x")
        time.sleep(0.1)
    fig = m.plot(tmp_path / "gpu.png")
    assert (tmp_path / "gpu.png").stat().st_size > 1000
    assert [ax.get_ylabel() for ax in fig.axes] == [
        "power (W)", "GPU utilization (%)", "memory used (GiB)"]
    assert [len(ax.get_lines()) for ax in fig.axes] == [2 + 1] * 3  # 2 GPUs + the mark
    assert "energy" in fig._suptitle.get_text()


@pytest.mark.parametrize(
    ("visible", "nvml_indices"),
    [
        ("2,0", [2, 0]),
        ("GPU-fa4e0000-0000-4000-8000-000000000001", [1]),
        ("GPU-fa4e0000-0000-4000-8000-000000000002,0", [2, 0]),
        ("1,-1,0", [1]),  # CUDA stops at the first invalid entry
        ("1,7,0", [1]),
        ("1,1", [1]),
        ("GPU-fa4e", []),  # an ambiguous UUID prefix matches nothing
    ],
)
def test_cuda_visible_devices_maps_cuda_indices_to_nvml(fake_nvml, monkeypatch, visible,
                                                        nvml_indices):
    monkeypatch.setenv("FAKE_NVML_DEVICES", "3")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    m = Monitor()
    assert [d["nvml_index"] for d in m.devices] == nvml_indices
    assert m.gpus == list(range(len(nvml_indices)))
    if not nvml_indices:
        assert not m.active and "no visible GPU (CUDA_VISIBLE_DEVICES='GPU-fa4e'" in m.reason
        with m:
            pass
        assert str(m.summary()).startswith("no GPU monitor: no visible GPU")


def test_a_gpu_that_does_not_exist_is_named(fake_nvml, monkeypatch):
    with pytest.raises(MonitorValueError, match=r"GPU 2 does not exist; this process sees 2 GPU"):
        Monitor(gpus=[0, 2])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    with pytest.raises(MonitorValueError,
                       match=r"GPU 1 does not exist; this process sees 1 GPU\(s\) "
                             r"\(CUDA_VISIBLE_DEVICES='1', NVML sees 2\)"):
        Monitor(gpus=1)
    m = Monitor(gpus=0)
    assert m.devices[0]["nvml_index"] == 1 and m.devices[0]["name"] == "Fake GPU 1"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hz": 0}, r"hz=0\): hz must be a number in \(0, 1000\]"),
        ({"hz": -1.5}, r"hz=-1.5\)"),
        ({"hz": float("nan")}, r"hz=nan\)"),
        ({"hz": "10"}, r"hz='10'\)"),
        ({"hz": True}, r"hz=True\)"),
        ({"hz": 5000}, r"hz=5000\)"),
        ({"gpus": "0"}, r"gpus='0'\): gpus must be None, an int or a list of ints"),
        ({"gpus": [0, 1.0]}, r"gpus=\[0, 1.0\]\)"),
        ({"gpus": [True]}, r"gpus=\[True\]\)"),
        ({"gpus": [0, 0]}, r"a GPU is listed twice"),
        ({"gpus": [-1]}, r"GPU indices are >= 0"),
    ],
)
def test_bad_arguments_are_named(fake_nvml, kwargs, message):
    with pytest.raises(MonitorValueError, match=message):
        Monitor(**kwargs)


def test_lifecycle_errors(fake_nvml):
    m = Monitor(hz=50)
    with pytest.raises(MonitorError, match="never started"):
        m.stop()
    with pytest.raises(MonitorError, match=r"mark\('a'\): the monitor is not running"):
        m.mark("a")
    with pytest.raises(MonitorError, match="never started"):
        m.summary()
    m.start()
    with pytest.raises(MonitorError, match="already started; create a new one"):
        m.start()
    m.mark("a")
    with pytest.raises(MonitorValueError, match=r"mark\('a'\): this label is already used"):
        m.mark("a")
    with pytest.raises(MonitorValueError, match=r"mark\(''\): the label must be a non-empty str"):
        m.mark("")
    m.stop()
    m.stop()  # idempotent
    assert "stopped" in repr(m)


def test_gpus_accepts_any_iterable_of_integers(fake_nvml):
    numpy = pytest.importorskip("numpy")
    assert Monitor(gpus=range(2)).gpus == [0, 1]
    assert Monitor(gpus=numpy.int64(1), hz=numpy.float32(5)).gpus == [1]
    assert Monitor(gpus=(1, 0)).gpus == [1, 0]


def test_a_running_monitor_does_not_block_interpreter_exit(fake_nvml_path, tmp_path):
    import subprocess
    import sys

    code = ("import nbdist, time\n"
            "m = nbdist.Monitor(hz=100).start()\n"
            "time.sleep(0.2)\n"
            "print(m.summary().gpus[0].method)\n")
    env = dict(os.environ, NBDIST_NVML_LIBRARY=str(fake_nvml_path))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "counter"
