"""CPU overhead of GPU monitoring: nbdist's C++ sampler vs what people use today, in one run.

Each phase lasts --seconds while the main thread sleeps, and reads the process's CPU time
(user+system) before and after:

  idle          nothing sampling (the baseline subtracted from the others)
  nbdist        nbdist.Monitor at --hz, energy counter at --energy-hz (nbdist's defaults: 10 and
                1); C++ thread, its own thread CPU time is read too
  pynvml-all    a Python thread polling every field, energy counter included, at --hz with pynvml
                (nvidia-ml-py) -- what notebooks do today -- or, where pynvml is not installed,
                with ctypes calls to the same library
  pynvml        the same Python thread reading the same fields at the same rates as nbdist
                (counter at --energy-hz, the rest at --hz): the like-for-like comparison
  nbdist#2      nbdist again: the driver's cost per query drifts, so both sides of the peer count
  nvidia-smi    `nvidia-smi --query-gpu=power.draw,... --format=csv` in a subprocess once a
                second (--smi-hz), its children's CPU time included

Every method reads power, utilization, memory and temperature of every GPU, and the energy counter
where the GPU has one (nvidia-smi: no counter). The counter is read at a lower rate because it is
the slow query (about 3.7 ms of CPU per call on H100 / driver 580; bench/nvml_call_cost.py).
Prints a table and writes JSON (--out). On a machine without NVML it says so and exits 0.

    python bench/monitor_overhead.py --seconds 12 --hz 10 --energy-hz 1 --out monitor_overhead.json
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
import resource
import shutil
import subprocess
import threading
import time

from nbdist._io import atomic_write_json
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


class _Poller:
    """A peer sampling loop (``_run``) on its own thread; ``stop`` returns its ``_report()``."""

    def __init__(self) -> None:
        self._stop = threading.Event()

    def start(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self, _=None):
        self._stop.set()
        self._thread.join()
        return self._report()


class PythonPoller(_Poller):
    """Polls NVML from a Python thread at a fixed rate, the way notebooks usually do."""

    def __init__(self, hz: float, energy_hz: float, nvml_indices: list[int]):
        super().__init__()
        self.hz, self.energy_hz, self.indices = hz, energy_hz, nvml_indices
        self.samples = 0
        self.energy_reads = 0
        self.thread_cpu_s = 0.0
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

        def read(energy: bool):
            for h in handles:
                nv.nvmlDeviceGetPowerUsage(h)
                if energy:
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

        def read(energy: bool):
            for h in handles:
                lib.nvmlDeviceGetPowerUsage(h, ctypes.byref(u))
                if energy:
                    lib.nvmlDeviceGetTotalEnergyConsumption(h, ctypes.byref(e))
                lib.nvmlDeviceGetUtilizationRates(h, util)
                lib.nvmlDeviceGetMemoryInfo(h, mem)
                lib.nvmlDeviceGetTemperature(h, 0, ctypes.byref(u))

        return read

    def _run(self):
        period = 1.0 / self.hz
        # The same schedule as nbdist's sampler: the counter on the tick nearest each due time.
        energy_period = 1.0 / self.energy_hz if self.energy_hz > 0 else float("inf")
        next_t = time.monotonic()
        last_energy = -float("inf")
        c0 = time.thread_time()
        while not self._stop.is_set():
            now = time.monotonic()
            energy = now >= last_energy + energy_period - period / 2
            if energy:
                last_energy = now
                self.energy_reads += 1
            self._read(energy)
            self.samples += 1
            next_t += period
            self._stop.wait(max(0.0, next_t - time.monotonic()))
        self.thread_cpu_s = time.thread_time() - c0

    def _report(self):
        return {"samples": self.samples, "energy_reads": self.energy_reads,
                "thread_cpu_s": self.thread_cpu_s, "hz": self.hz, "energy_hz": self.energy_hz,
                "note": self.flavour}


class SmiPoller(_Poller):
    """Runs nvidia-smi once per period in a subprocess (the common shell-out peer)."""

    QUERY = "power.draw,utilization.gpu,utilization.memory,memory.used,temperature.gpu"

    def __init__(self, hz: float, nvml_indices: list[int]):
        super().__init__()
        self.hz, self.ids = hz, ",".join(map(str, nvml_indices))
        self.samples = 0
        self.failures = 0

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

    def _report(self):
        return {"samples": self.samples, "hz": self.hz, "energy_hz": 0.0, "failures": self.failures,
                "note": "subprocess per sample; children's CPU included"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    ap.add_argument("--hz", type=float, default=10.0, help="nbdist and pynvml sampling rate")
    ap.add_argument("--energy-hz", type=float, default=None,
                    help="energy-counter reads per second of nbdist and the like-for-like pynvml "
                         "peer (default: nbdist's default, 1 Hz or --hz if lower)")
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
        probe = Monitor(gpus=gpus, hz=args.hz, energy_hz=args.energy_hz)
        energy_hz = probe.energy_hz
        result["energy_hz"] = energy_hz
        nvml_indices = [d["nvml_index"] for d in probe.devices]
        result["gpus"] = probe.devices
        rows = result["results"]
        rows.append(phase("idle", args.seconds, lambda: None, lambda _: None, lambda _: None))

        def nbdist_stop(m):
            m.stop()
            return {"samples": len(m.samples()["t_s"]) // max(1, len(m.gpus)),
                    "energy_reads": m.counter_reads, "hz": args.hz, "energy_hz": energy_hz,
                    "thread_cpu_s": m.sampler_cpu_s, "note": "C++ thread"}

        def nbdist():
            return Monitor(gpus=gpus, hz=args.hz, energy_hz=energy_hz)

        rows.append(phase("nbdist", args.seconds, nbdist, lambda m: m.start(), nbdist_stop))
        rows.append(phase("pynvml-all", args.seconds,
                          lambda: PythonPoller(args.hz, args.hz, nvml_indices),
                          lambda p: p.start(), lambda p: p.stop()))
        rows.append(phase("pynvml", args.seconds,
                          lambda: PythonPoller(args.hz, energy_hz, nvml_indices),
                          lambda p: p.start(), lambda p: p.stop()))
        # The driver's cost per query drifts (clocks settling after a load, first-use set-up), so
        # nbdist runs again after the peer: a fair comparison takes the same conditions for both.
        rows.append(phase("nbdist#2", args.seconds, nbdist, lambda m: m.start(), nbdist_stop))
        if shutil.which("nvidia-smi"):
            rows.append(phase("nvidia-smi", args.seconds,
                              lambda: SmiPoller(args.smi_hz, nvml_indices),
                              lambda p: p.start(), lambda p: p.stop(), children=True))
        else:
            rows.append({"method": "nvidia-smi", "skipped": "nvidia-smi not on PATH"})
        idle = rows[0]["process_cpu_s"] / rows[0]["wall_s"]
        print(f"{len(nvml_indices)} GPU(s), {args.seconds:g} s per phase; {status}")
        print(f"{'method':<11} {'Hz':>5} {'E Hz':>5} {'samples':>7} {'E reads':>7} "
              f"{'proc CPU s':>10} {'% of 1 core':>11} {'thread %':>8} {'CPU ms/sample':>13}  note")
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
            print(f"{r['method']:<11} {r.get('hz', 0):5g} {r.get('energy_hz', 0):5g} "
                  f"{r.get('samples', 0):7d} {r.get('energy_reads', 0):7d} "
                  f"{r['process_cpu_s']:10.3f} {r['overhead_pct_of_core']:11.3f} {thread} "
                  f"{per}  {r.get('note', '')}")
        nb = min((r for r in rows if r["method"].startswith("nbdist")),
                 key=lambda r: r["overhead_pct_of_core"])
        result["nbdist_under_1pct"] = nb["overhead_pct_of_core"] < 1.0
        peer = next(r for r in rows if r["method"] == "pynvml")
        print(f"nbdist (best of its phases): {nb['overhead_pct_of_core']:.3f} % of one core; "
              f"like-for-like pynvml: {peer['overhead_pct_of_core']:.3f} %; target < 1 %: "
              f"{'met' if result['nbdist_under_1pct'] else 'NOT met'}")
    if args.out:
        atomic_write_json(args.out, result, indent=2)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
