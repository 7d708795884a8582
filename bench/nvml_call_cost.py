"""Cost of each NVML query on this machine (CPU time per call), to size the monitor's sampler.

    python bench/nvml_call_cost.py [--calls 50] [--out nvml_call_cost.json]
"""
import argparse
import ctypes
import json
import time


class Util(ctypes.Structure):
    _fields_ = [("gpu", ctypes.c_uint), ("memory", ctypes.c_uint)]


class Mem(ctypes.Structure):
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong),
                ("used", ctypes.c_ulonglong)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--out")
    a = ap.parse_args()
    lib = ctypes.CDLL("libnvidia-ml.so.1")
    assert lib.nvmlInit_v2() == 0
    dev = ctypes.c_void_p()
    assert lib.nvmlDeviceGetHandleByIndex_v2(0, ctypes.byref(dev)) == 0
    u = ctypes.c_uint()
    ull = ctypes.c_ulonglong()
    util = Util()
    mem = Mem()
    calls = {
        "power": lambda: lib.nvmlDeviceGetPowerUsage(dev, ctypes.byref(u)),
        "energy": lambda: lib.nvmlDeviceGetTotalEnergyConsumption(dev, ctypes.byref(ull)),
        "utilization": lambda: lib.nvmlDeviceGetUtilizationRates(dev, ctypes.byref(util)),
        "memory": lambda: lib.nvmlDeviceGetMemoryInfo(dev, ctypes.byref(mem)),
        "temperature": lambda: lib.nvmlDeviceGetTemperature(dev, 0, ctypes.byref(u)),
    }
    res = {}
    for name, fn in calls.items():
        rc = fn()
        c0, w0 = time.process_time(), time.perf_counter()
        for _ in range(a.calls):
            fn()
        res[name] = {"rc": rc, "cpu_ms": (time.process_time() - c0) * 1e3 / a.calls,
                     "wall_ms": (time.perf_counter() - w0) * 1e3 / a.calls}
    print(f"{'query':12} {'rc':>3} {'cpu ms/call':>12} {'wall ms/call':>13}")
    for k, v in res.items():
        print(f"{k:12} {v['rc']:>3} {v['cpu_ms']:>12.3f} {v['wall_ms']:>13.3f}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
