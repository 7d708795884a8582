"""CPU overhead of GPU monitoring: nbdist's C++ sampler vs what people use today, in one run.

Each phase lasts --seconds while the main thread sleeps, and reads the process's CPU time
(user+system) before and after:

  idle          nothing sampling (the baseline subtracted from the others)
  nbdist        nbdist.Monitor at --hz (C++ thread; its own thread CPU time is read too)
  pynvml        a Python thread polling the same NVML fields at --hz with pynvml (nvidia-ml-py),
                or, where pynvml is not installed, with ctypes calls to the same library
  nvidia-smi    `nvidia-smi --query-gpu=power.draw,... --format=csv` in a subprocess once a
                second (--smi-hz), its children's CPU time included

Every method reads power, energy counter, utilization, memory and temperature of every GPU.
Prints a table and writes JSON (--out). On a machine without NVML it says so and exits 0.

    python bench/monitor_overhead.py --seconds 20 --hz 10 --out monitor_overhead.json
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import resource
import shutil
import subprocess
import threading
import time

from nbdist.monitor import Monitor


def cpu_s(children: bool = False) -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    total = r.ru_utime + r.ru_stime
    if children:
        c = resource.getrusage(resource.RUSAGE_CHILDREN)
        total += c.ru_utime + c.ru_stime
    return total


def phase(name: str, seconds: float, make, start, stop, children: bool = False) -> dict:
    """Runs one method for `seconds`. `make` (NVML initialisation, handles) is outside the
    measurement: the claim is about the cost of sampling, not of a one-off setup."""
    ctx = make()
    c0, t0 = cpu_s(children), time.monotonic()
    start(ctx)
    time.sleep(seconds)
    extra = stop(ctx) or {}
    c1, t1 = cpu_s(children), time.monotonic()
    return {"method": name, "wall_s": t1 - t0, "process_cpu_s": c1 - c0, **extra}


class PythonPoller:
    """Polls NVML from a Python thread at a fixed rate, the way notebooks usually do."""

    def __init__(self, hz: float, nvml_indices: list[int]):
        self.hz, self.indices = hz, nvml_indices
        self.samples = 0
        self.thread_cpu_s = 0.0
        self._stop = threading.Event()
        try:
            import pynvml

            self.flavour = "pynvml " + getattr(pynvml, "__version__", "")
            self._read = self._pynvml_reader(pynvml)
        except ImportError:
            self.flavour = "python ctypes (pynvml not installed)"
            self._read = self._ctypes_reader()

    def _pynvml_reader(self, nv):
        nv.nvmlInit()
        handles = [nv.nvmlDeviceGetHandleByIndex(i) for i in self.indices]

        def read():
            for h in handles:
                nv.nvmlDeviceGetPowerUsage(h)
                try:
                    nv.nvmlDeviceGetTotalEnergyConsumption(h)
                except nv.NVMLError:
                    pass
                nv.nvmlDeviceGetUtilizationRates(h)
                nv.nvmlDeviceGetMemoryInfo(h)
                nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)

        return read

    def _ctypes_reader(self):
        lib = ctypes.CDLL(os.environ.get("NBDIST_NVML_LIBRARY") or "libnvidia-ml.so.1")
        lib.nvmlInit_v2()
        handles = []
        for i in self.indices:
            h = ctypes.c_void_p()
            lib.nvmlDeviceGetHandleByIndex_v2(ctypes.c_uint(i), ctypes.byref(h))
            handles.append(h)
        u = ctypes.c_uint()
        e = ctypes.c_ulonglong()
        util = (ctypes.c_uint * 2)()
        mem = (ctypes.c_ulonglong * 3)()

        def read():
            for h in handles:
                lib.nvmlDeviceGetPowerUsage(h, ctypes.byref(u))
                lib.nvmlDeviceGetTotalEnergyConsumption(h, ctypes.byref(e))
                lib.nvmlDeviceGetUtilizationRates(h, util)
                lib.nvmlDeviceGetMemoryInfo(h, mem)
                lib.nvmlDeviceGetTemperature(h, 0, ctypes.byref(u))

        return read

    def _run(self):
        period = 1.0 / self.hz
        next_t = time.monotonic()
        c0 = time.thread_time()
        while not self._stop.is_set():
            self._read()
            self.samples += 1
            next_t += period
            self._stop.wait(max(0.0, next_t - time.monotonic()))
        self.thread_cpu_s = time.thread_time() - c0

    def start(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self, _=None):
        self._stop.set()
        self._thread.join()
        return {"samples": self.samples, "thread_cpu_s": self.thread_cpu_s, "hz": self.hz,
                "note": self.flavour}


class SmiPoller:
    """Runs nvidia-smi once per period in a subprocess (the common shell-out peer)."""

    QUERY = "power.draw,utilization.gpu,utilization.memory,memory.used,temperature.gpu"

    def __init__(self, hz: float, nvml_indices: list[int]):
        self.hz, self.ids = hz, ",".join(map(str, nvml_indices))
        self.samples = 0
        self.failures = 0
        self._stop = threading.Event()

    def _run(self):
        period = 1.0 / self.hz
        next_t = time.monotonic()
        while not self._stop.is_set():
            r = subprocess.run(["nvidia-smi", f"--id={self.ids}", f"--query-gpu={self.QUERY}",
                                "--format=csv,noheader,nounits"], capture_output=True, text=True)
            self.samples += 1
            self.failures += r.returncode != 0
            next_t += period
            self._stop.wait(max(0.0, next_t - time.monotonic()))

    def start(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self, _=None):
        self._stop.set()
        self._thread.join()
        return {"samples": self.samples, "hz": self.hz, "failures": self.failures,
                "note": "subprocess per sample; children's CPU included"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    ap.add_argument("--hz", type=float, default=10.0, help="nbdist and pynvml sampling rate")
    ap.add_argument("--smi-hz", type=float, default=1.0, help="nvidia-smi polling rate")
    ap.add_argument("--gpus", type=str, default=None,
                    help="comma-separated CUDA indices (default: every visible GPU)")
    ap.add_argument("--out", type=str, default=None, help="JSON result path")
    args = ap.parse_args()

    status = Monitor.available()
    result: dict = {"bench": "monitor_overhead", "host": platform.node(),
                    "seconds": args.seconds, "hz": args.hz, "nvml": str(status),
                    "available": bool(status), "results": []}
    if not status:
        print(f"no NVML: {status.reason}")
        result["reason"] = status.reason
    else:
        gpus = None if args.gpus is None else [int(g) for g in args.gpus.split(",")]
        probe = Monitor(gpus=gpus, hz=args.hz)
        nvml_indices = [d["nvml_index"] for d in probe.devices]
        result["gpus"] = probe.devices
        rows = result["results"]
        rows.append(phase("idle", args.seconds, lambda: None, lambda _: None, lambda _: None))

        def nbdist_stop(m):
            m.stop()
            return {"samples": len(m.samples()["t_s"]) // max(1, len(m.gpus)), "hz": args.hz,
                    "thread_cpu_s": m.sampler_cpu_s, "note": "C++ thread"}

        rows.append(phase("nbdist", args.seconds, lambda: Monitor(gpus=gpus, hz=args.hz),
                          lambda m: m.start(), nbdist_stop))
        rows.append(phase("pynvml", args.seconds, lambda: PythonPoller(args.hz, nvml_indices),
                          lambda p: p.start(), lambda p: p.stop()))
        if shutil.which("nvidia-smi"):
            rows.append(phase("nvidia-smi", args.seconds,
                              lambda: SmiPoller(args.smi_hz, nvml_indices),
                              lambda p: p.start(), lambda p: p.stop(), children=True))
        else:
            rows.append({"method": "nvidia-smi", "skipped": "nvidia-smi not on PATH"})
        idle = rows[0]["process_cpu_s"] / rows[0]["wall_s"]
        print(f"{len(nvml_indices)} GPU(s), {args.seconds:g} s per phase; {status}")
        print(f"{'method':<11} {'Hz':>5} {'samples':>7} {'proc CPU s':>10} "
              f"{'% of 1 core':>11} {'thread %':>8} {'CPU ms/sample':>13}  note")
        for r in rows:
            if "skipped" in r:
                print(f"{r['method']:<11} skipped: {r['skipped']}")
                continue
            over = max(0.0, r["process_cpu_s"] / r["wall_s"] - idle)
            r["overhead_pct_of_core"] = 100 * over
            if "thread_cpu_s" in r:
                r["thread_pct_of_core"] = 100 * r["thread_cpu_s"] / r["wall_s"]
            if r.get("samples"):
                r["cpu_ms_per_sample"] = 1e3 * over * r["wall_s"] / r["samples"]
            thread = (f"{r['thread_pct_of_core']:8.3f}" if "thread_pct_of_core" in r
                      else f"{'-':>8}")
            per = (f"{r['cpu_ms_per_sample']:13.3f}" if "cpu_ms_per_sample" in r
                   else f"{'-':>13}")
            print(f"{r['method']:<11} {r.get('hz', 0):5g} {r.get('samples', 0):7d} "
                  f"{r['process_cpu_s']:10.3f} {r['overhead_pct_of_core']:11.3f} {thread} "
                  f"{per}  {r.get('note', '')}")
        nb = next(r for r in rows if r["method"] == "nbdist")
        result["nbdist_under_1pct"] = nb["overhead_pct_of_core"] < 1.0
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, args.out)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
