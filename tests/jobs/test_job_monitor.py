"""launch(..., monitor=True) with an active monitor, on machines without a GPU: the monitor team's
fake NVIDIA driver (tests/monitor/fake_nvml.c, a real shared library nbdist dlopens through
NBDIST_NVML_LIBRARY) stands in for the driver; nbdist's loader, sampler and energy math are real.
Checks job.energy(), gpu.csv in the job's log dir, job.plot(), and the record's energy."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

import nbdist

from . import helpers

FAKE_SOURCE = Path(__file__).resolve().parents[1] / "monitor" / "fake_nvml.c"


@pytest.fixture
def fake_driver(tmp_path, monkeypatch):
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None or not FAKE_SOURCE.exists():
        pytest.skip("needs a C compiler and tests/monitor/fake_nvml.c")
    lib = tmp_path / "libnvidia-ml.so.1"
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", str(lib), str(FAKE_SOURCE)],
                   check=True)
    monkeypatch.setenv("NBDIST_NVML_LIBRARY", str(lib))
    monkeypatch.setenv("FAKE_NVML_T0_NS", str(time.monotonic_ns()))
    monkeypatch.setenv("FAKE_NVML_DEVICES", "2")
    for var in ("FAKE_NVML_NO_ENERGY", "FAKE_NVML_NO_POWER", "FAKE_NVML_INIT_ERROR",
                "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(var, raising=False)
    return lib


def test_monitored_job_with_a_load_records_combined_energy(fake_driver, log_dir, tmp_path):
    gate = str(tmp_path / "go")
    load = nbdist.Load("sleep 600", gpus=[1], grace=0.5)
    job = nbdist.launch(helpers.wait_for_file, (gate, "done"), nprocs=1, gpus=[0],
                        background=True, log_dir=log_dir, background_load=load, monitor=True)
    deadline = time.monotonic() + 60
    while job.status != "running" or job.energy().duration_s < 0.5:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    live = job.energy()  # while the job runs
    assert live.available and {g.gpu for g in live.gpus} == {0, 1}
    open(gate, "w").close()
    assert job.wait(timeout=60) == ["done"]
    summary = job.energy()
    assert summary.available and summary.total_j is not None and summary.total_j > 0
    assert summary.duration_s >= live.duration_s
    energy = job.record["energy"]
    assert energy["attribution"] == "combined" and energy["available"] is True
    assert energy["total_j"] == pytest.approx(summary.total_j)
    assert energy["csv"] == os.path.join(job.log_dir, "gpu.csv")
    with open(energy["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert {r["gpu"] for r in rows} == {"0", "1"} and all(r["power_w"] for r in rows)
    fig = job.plot(str(tmp_path / "gpu.png"))
    assert fig is not None and os.path.getsize(tmp_path / "gpu.png") > 0
    assert job.record["background_load"]["runs"][0]["stopped_by_nbdist"] is True
