"""The energy counter is read at energy_hz (lower than hz: it is the slow NVML query) but always at
start, stop, every mark and every running summary, so window energies stay exact. Driven by the
fake driver (fake_nvml.c), which counts the queries it answers and whose counter is the exact
integral of P_i(t) = 100 + 50 i + 10 t W."""

import csv
import math
import statistics
import threading
import time

import pytest

from nbdist import MonitorValueError
from nbdist.monitor import Monitor


def analytic_energy_j(device: int, t0_ns: int, a_ns: int, b_ns: int) -> float:
    a, b = (a_ns - t0_ns) / 1e9, (b_ns - t0_ns) / 1e9
    return (100.0 + 50.0 * device) * (b - a) + 5.0 * (b * b - a * a)


def gpu_rows(m: Monitor, gpu: int) -> list[dict]:
    cols = m.samples()
    return [dict(zip(cols, row)) for row in zip(*cols.values()) if row[0] == gpu]


def counter_rows(m: Monitor, gpu: int) -> list[dict]:
    return [r for r in gpu_rows(m, gpu) if not math.isnan(r["energy_j"])]


def test_the_counter_is_read_at_energy_hz_and_the_rest_at_hz(fake_nvml_calls):
    m = Monitor(hz=50, energy_hz=5)
    power0, energy0 = fake_nvml_calls()  # after the support probes of construction
    with m:
        time.sleep(1.2)
    power1, energy1 = fake_nvml_calls()
    ticks = len(gpu_rows(m, 0))
    reads = len(counter_rows(m, 0))
    # Every tick queried power on both GPUs; only the counter rows queried the counter.
    assert power1 - power0 == 2 * ticks
    assert energy1 - energy0 == 2 * reads == 2 * m.counter_reads
    assert len(counter_rows(m, 1)) == reads
    # About 1.2 s * 5 Hz periodic reads, plus the forced ones at start and stop, against ~60 ticks.
    assert 3 <= reads <= 10 < ticks
    times = [r["t_s"] for r in counter_rows(m, 0)]
    assert times[0] == 0.0 and times[-1] == gpu_rows(m, 0)[-1]["t_s"]  # start and stop samples
    assert statistics.median(b - a for a, b in zip(times, times[1:-1])) == pytest.approx(
        0.2, rel=0.3)


def test_default_rates_and_energy_hz_zero(fake_nvml_calls):
    assert (Monitor().hz, Monitor().energy_hz) == (10.0, 1.0)
    assert Monitor(hz=0.5).energy_hz == 0.5  # never above hz
    m = Monitor(gpus=0, hz=50, energy_hz=0)
    _, energy0 = fake_nvml_calls()
    with m:
        time.sleep(0.3)
    assert fake_nvml_calls()[1] - energy0 == 2 == m.counter_reads  # start and stop only
    assert "energy_hz=0" in repr(m) and "(energy counter 0 Hz)" in str(m.summary())


def test_energies_between_marks_are_exact_without_periodic_counter_reads(fake_nvml):
    # energy_hz=0: the counter is read only at start, marks and stop, so a window end that was
    # not such a reading would have to be interpolated across the whole run; on this quadratic
    # counter that errs by about 5 J/s^2 * 0.3 s * 0.4 s = 0.6 J, far beyond the tolerance below.
    with Monitor(hz=50, energy_hz=0) as m:
        time.sleep(0.3)
        m.mark("a")
        time.sleep(0.4)
        m.mark("b")
        time.sleep(0.3)
    s = {w: m.summary(*w) for w in [(None, "a"), ("a", "b"), ("b", None), (None, None)]}
    for gpu in (0, 1):
        bounds = [m._start_ns + round(r["t_s"] * 1e9) for r in counter_rows(m, gpu)]
        assert len(bounds) == 4  # start, a, b, stop: each its own reading
        for (w, (lo, hi)) in zip(s, [(0, 1), (1, 2), (2, 3), (0, 3)]):
            g = s[w].gpus[gpu]
            exact = analytic_energy_j(gpu, fake_nvml, bounds[lo], bounds[hi])
            assert g.method == "counter"
            # 1 mJ counter resolution, plus timestamps taken a few us around the query.
            assert g.energy_j == pytest.approx(exact, abs=0.01), (w, gpu)
    parts = sum(s[w].gpus[0].energy_j for w in [(None, "a"), ("a", "b"), ("b", None)])
    assert parts == pytest.approx(s[(None, None)].gpus[0].energy_j, rel=1e-12)
    # The mark's time is the time of its own counter reading.
    assert [t for _, t in m.marks] == [r["t_s"] for r in counter_rows(m, 0)[1:3]]


def test_a_running_summary_reads_the_counter_for_its_end(fake_nvml):
    with Monitor(gpus=[1], hz=50, energy_hz=0) as m:
        time.sleep(0.3)
        s = m.summary()
        time.sleep(0.1)
    g = s.gpus[0]
    end_ns = m._start_ns + round(s.duration_s * 1e9)
    assert m.counter_reads == 3  # start, the summary, stop
    assert g.energy_j == pytest.approx(analytic_energy_j(1, fake_nvml, m._start_ns, end_ns),
                                       abs=0.01)


def test_concurrent_marks_keep_the_series_ordered(fake_nvml):
    with Monitor(hz=200, energy_hz=20) as m:
        def marker(name):
            for i in range(20):
                m.mark(f"{name}{i}")
                time.sleep(0.005)

        threads = [threading.Thread(target=marker, args=(n,)) for n in "xy"]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for gpu in (0, 1):
        times = [r["t_s"] for r in gpu_rows(m, gpu)]
        assert all(a < b for a, b in zip(times, times[1:]))
        # The counter counts whole millijoules (as NVML's does): two marks of the two threads
        # within ~10 us of each other may read the same value, never a smaller one.
        energies = [r["energy_j"] for r in counter_rows(m, gpu)]
        assert all(a <= b for a, b in zip(energies, energies[1:]))
        assert energies[-1] > energies[0]
    labels = [label for label, _ in sorted(m.marks, key=lambda x: x[1])]
    windows = [m.summary(a, b).gpus[0].energy_j for a, b in zip(labels, labels[1:])]
    assert sum(windows) == pytest.approx(m.summary(labels[0], labels[-1]).gpus[0].energy_j,
                                         rel=1e-9)


def test_csv_and_plot_with_a_sparse_counter(fake_nvml, tmp_path):
    with Monitor(hz=50, energy_hz=2) as m:
        time.sleep(0.6)
        m.mark("x")
        time.sleep(0.3)
    with open(m.to_csv(tmp_path / "gpu.csv")) as f:
        rows = [r for r in csv.DictReader(f) if r["gpu"] == "0"]
    filled = [r for r in rows if r["energy_j"] != ""]
    assert len(filled) == m.counter_reads < len(rows)
    assert all(r["power_w"] != "" for r in rows)  # power stays at the full rate
    energies = [float(r["energy_j"]) for r in filled]
    assert energies[0] == 0.0 and energies == sorted(energies)
    assert rows[-1]["energy_j"] != ""  # the stop sample read the counter
    assert energies[-1] == pytest.approx(m.summary().gpus[0].energy_j, abs=1e-3)
    fig = m.plot(tmp_path / "gpu.png")
    assert (tmp_path / "gpu.png").stat().st_size > 1000
    power = fig.axes[0].get_lines()[0].get_ydata()
    assert len(power) == len(rows) and not any(math.isnan(p) for p in power)
    s = m.summary()
    assert "(energy counter 2 Hz)" in str(s) and s.to_dict()["energy_hz"] == 2.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hz": 10, "energy_hz": 20}, r"energy_hz=20\): energy_hz must be a number in \[0, hz\]"),
        ({"energy_hz": -1}, r"energy_hz=-1\)"),
        ({"energy_hz": float("nan")}, r"energy_hz=nan\)"),
        ({"energy_hz": "1"}, r"energy_hz='1'\)"),
        ({"energy_hz": True}, r"energy_hz=True\)"),
    ],
)
def test_bad_energy_hz_is_named(fake_nvml, kwargs, message):
    with pytest.raises(MonitorValueError, match=message):
        Monitor(**kwargs)
