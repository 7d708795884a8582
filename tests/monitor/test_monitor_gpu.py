"""The monitor on real GPUs (run by bench/device.sh on the GPU machine; skipped without CUDA)."""

import os
import time

import pytest

from nbdist.monitor import Monitor

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA GPUs"),
]


def _matmul_load(device: int, seconds: float) -> int:
    """Keeps one GPU busy with bf16 matmuls for about `seconds`; returns the iterations run."""
    with torch.cuda.device(device):
        a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        torch.cuda.synchronize()
        end = time.monotonic() + seconds
        n = 0
        while time.monotonic() < end:
            for _ in range(10):
                a @ b
            n += 10
            torch.cuda.synchronize()
        return n


def test_monitor_samples_every_visible_gpu():
    count = torch.cuda.device_count()
    for i in range(count):
        torch.ones(1, device=f"cuda:{i}")  # initialise CUDA so the UUID mapping is exact
    with Monitor(hz=10) as m:
        _matmul_load(0, 2.0)
    assert m.gpus == list(range(count))
    for i, dev in enumerate(m.devices):
        assert dev["uuid"].lower().endswith(str(torch.cuda.get_device_properties(i).uuid).lower())
    s = m.summary()
    print(s)
    print("support:", m.support)
    for g in s.gpus:
        assert g.support["power"], f"GPU {g.gpu} reports no power"
        assert g.energy_j is not None and g.energy_j > 0
        assert g.peak_mem_mib is not None and g.peak_mem_mib > 0
        assert g.samples >= 10
    assert s.gpus[0].mean_util_gpu > 10  # the load ran on GPU 0
    assert s.total_j == pytest.approx(sum(g.energy_j for g in s.gpus))


def test_counter_and_integrated_power_agree_on_a_30s_matmul_load(tmp_path):
    seconds = float(os.environ.get("NBDIST_MONITOR_LOAD_S", "30"))
    torch.ones(1, device="cuda:0")
    m = Monitor(gpus=0, hz=10)
    if not m.support[0]["energy"]:
        pytest.skip("GPU 0 has no NVML energy counter")
    with m:
        # Idle margins on both sides: the driver may average power over ~1 s, which shifts the
        # ramps in time but preserves their area when the window covers them whole.
        time.sleep(2.0)
        m.mark("load")
        _matmul_load(0, seconds)
        m.mark("idle")
        time.sleep(3.0)
    g = m.summary().gpus[0]
    print(m.summary())
    print(f"counter {g.counter_j:.1f} J, integrated {g.integrated_j:.1f} J, "
          f"diff {100 * (g.integrated_j - g.counter_j) / g.counter_j:+.2f} %")
    assert g.method == "counter"
    assert g.integrated_j == pytest.approx(g.counter_j, rel=0.02)
    # The slow counter query ran at ~1 Hz (plus start, marks, stop), the other fields at 10 Hz.
    assert 4 <= m.counter_reads < g.samples / 5
    load = m.summary(start="load", end="idle").gpus[0]
    assert load.mean_power_w > m.summary(end="load").gpus[0].mean_power_w
    m.to_csv(tmp_path / "gpu.csv")
    m.plot(tmp_path / "gpu.png")
