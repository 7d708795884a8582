"""bench/monitor_overhead.py runs end to end: without NVML it says so; with the fake driver it
measures every method it can and writes its JSON (the figures themselves come from the GPU run)."""

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "monitor_overhead.py"


def run(tmp_path, library, *args):
    out = tmp_path / "result.json"
    # PATH without the real nvidia-smi, so that the GPU machine runs this test like any other.
    env = dict(os.environ, NBDIST_NVML_LIBRARY=str(library), PATH=str(tmp_path))
    r = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), *args], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout, json.loads(out.read_text())


def test_bench_reports_no_nvml_cleanly(tmp_path):
    stdout, result = run(tmp_path, tmp_path / "missing" / "libnvidia-ml.so.1", "--seconds", "0.1")
    assert stdout.startswith("no NVML: ")
    assert result["available"] is False and "not found" in result["reason"]
    assert result["results"] == []


def test_bench_measures_each_method_with_the_fake_driver(tmp_path, fake_nvml_path):
    stdout, result = run(tmp_path, fake_nvml_path, "--seconds", "0.5", "--hz", "20")
    rows = {r["method"]: r for r in result["results"]}
    assert list(rows) == ["idle", "nbdist", "pynvml-all", "pynvml", "nbdist#2", "nvidia-smi"]
    assert result["energy_hz"] == 1.0  # nbdist's default, also given to the like-for-like peer
    for name in ("nbdist", "nbdist#2"):
        nb = rows[name]
        assert nb["samples"] >= 5 and nb["thread_cpu_s"] >= 0 and "overhead_pct_of_core" in nb
        assert (nb["hz"], nb["energy_hz"]) == (20, 1.0)
        assert 1 <= nb["energy_reads"] <= 3 < nb["samples"]  # start, stop, maybe one periodic
    everything, same = rows["pynvml-all"], rows["pynvml"]
    assert everything["samples"] >= 5 and everything["energy_reads"] == everything["samples"]
    assert (same["hz"], same["energy_hz"]) == (20, 1.0)
    assert 1 <= same["energy_reads"] <= 2 < same["samples"]
    assert "nvidia-smi not on PATH" in rows["nvidia-smi"]["skipped"]
    assert "nbdist" in stdout and "% of 1 core" in stdout and "like-for-like pynvml" in stdout
