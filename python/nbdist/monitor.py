"""The GPU monitor: power, energy, utilization, memory and temperature of GPUs over time.

::

    with nbdist.Monitor() as m:          # every visible GPU, 10 samples per second
        train()
        m.mark("eval")
        evaluate()
    print(m.summary())                   # joules per GPU and in total, mean/peak power, ...
    print(m.summary(start="eval"))       # the window from the "eval" mark to the end
    m.to_csv("gpu.csv"); m.plot("gpu.png")

A C++ thread samples NVML (the NVIDIA driver's management library, loaded at run time, so nbdist
needs no driver to build or import). Where NVML is missing -- a CPU machine, a container without
the driver -- a Monitor still works as a context manager but records nothing, and its summary says
``no GPU monitor: <reason>``; :meth:`Monitor.available` says so up front.

Energy: the delta of the GPU's total-energy counter where NVML has one (method ``"counter"``,
Volta and newer), otherwise the trapezoidal integral of the sampled power (method
``"integrated"``); a GPU with neither reports ``None`` joules and method ``"none"``, never 0 J.
Both figures are in every summary (``counter_j``, ``integrated_j``) to cross-check each other. Note
that on Ampere (except A100) and newer GPUs, H100/H200 included, NVML's power reading is itself an
average over the last second, so a window's integrated energy is smeared by about half a second at
each end; the counter has no such lag, which is why it is preferred.

Rates: power, utilization, memory and temperature are read ``hz`` times a second (default 10); the
energy counter only ``energy_hz`` times a second (default 1), because that one NVML query is slow:
about 3.7 ms of CPU per call on an H100 with driver 580, against about 0.01 ms for the other four
together, so reading it at 10 Hz would alone cost 3.7 % of a core per GPU. The counter is still
read at :meth:`Monitor.start`, :meth:`Monitor.stop`, every :meth:`Monitor.mark` and every
:meth:`Monitor.summary` of a running monitor, in the very sample that defines the window's end, so a
window's counter energy is an exact delta, with no interpolation. In :meth:`Monitor.samples` and the
CSV the cumulative energy of a counter GPU is therefore filled only on the samples that read the
counter (NaN, or an empty CSV cell, on the others).

GPU numbering: ``gpus=[0, 1]`` means CUDA device 0 and 1 *as this process sees them*, i.e. after
``CUDA_VISIBLE_DEVICES``, whereas NVML always enumerates every device of the machine in PCI bus
order. The mapping, in order of preference:

1. If torch has already initialised CUDA in this process and NVML knows every torch device's UUID,
   that UUID decides (exact; nbdist never initialises CUDA itself, which would break fork-started
   ranks).
2. Otherwise ``CUDA_VISIBLE_DEVICES`` is parsed as CUDA does: comma-separated entries, each a
   device index or a ``GPU-<uuid>`` (a unique prefix is enough); the list ends at the first entry
   that is invalid, repeated or names no device (so ``-1`` hides every GPU). An index is taken to be
   NVML's (PCI bus) order, which is what CUDA uses with ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` and, in
   practice, on machines whose GPUs are all the same model. MIG instances are not supported.
3. Without ``CUDA_VISIBLE_DEVICES``, CUDA device *i* is NVML device *i*.
"""

from __future__ import annotations

import atexit
import math
import numbers
import operator
import os
import sys
import time
import weakref
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from ._errors import MonitorError, MonitorValueError
from ._io import atomic_write

__all__ = ["GpuEnergy", "Monitor", "MonitorSummary", "NvmlStatus"]

# The NVML library symbols live in nbdist._core.monitor; imported lazily by _native() so that a
# broken build is reported as a monitor problem rather than breaking `import nbdist`.
_CSV_COLUMNS = ("gpu", "t_s", "power_w", "energy_j", "util_gpu", "util_mem", "mem_used_mib",
                "temp_c")
_MAX_HZ = 1000.0
# The C++ sampler converts 1 / hz seconds to int64 nanoseconds of the steady clock: below ~1e-10 Hz
# that overflows into a negative period and the thread spins, sampling millions of times a second.
# One sample per 11.6 days keeps the period (and clock + period) far inside the range.
_MIN_HZ = 1e-6
# Energy-counter reads per second by default: see "Rates" in the module docstring.
_DEFAULT_ENERGY_HZ = 1.0

# Running monitors, stopped at interpreter exit so that no sampler thread is inside the driver
# while the process tears down its libraries.
_RUNNING: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _stop_running_monitors() -> None:
    for m in list(_RUNNING):
        try:
            m.stop()
        except Exception:
            pass


def _native():
    from . import _core

    return _core.monitor


def _none_if_nan(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


@dataclass(frozen=True)
class NvmlStatus:
    """Whether the GPU monitor can work here. Truthy when it can; ``reason`` says why not."""

    available: bool
    reason: str
    library: str
    driver_version: str
    device_count: int

    def __bool__(self) -> bool:
        return self.available

    def __str__(self) -> str:
        if self.available:
            return (f"NVML available: {self.device_count} GPU(s), driver {self.driver_version} "
                    f"({self.library})")
        return f"NVML unavailable: {self.reason}"


@dataclass
class GpuEnergy:
    """One GPU's statistics over a monitor window; ``None`` where the GPU lacks the field."""

    gpu: int  # CUDA index as this process sees it
    nvml_index: int
    uuid: str
    name: str
    method: str  # "counter", "integrated" or "none"
    energy_j: float | None
    counter_j: float | None  # energy-counter delta (None without a counter)
    integrated_j: float | None  # integral of sampled power (None without power readings)
    mean_power_w: float | None
    peak_power_w: float | None
    mean_util_gpu: float | None  # percent
    mean_util_mem: float | None  # percent
    peak_mem_mib: float | None
    peak_temp_c: float | None
    samples: int
    support: dict[str, bool] = field(default_factory=dict)


@dataclass
class MonitorSummary:
    """What a :class:`Monitor` measured over a window: per-GPU figures and the total energy.

    ``total_j`` is ``None`` when some GPU's energy is unknown (no counter and no power reading), so
    a missing figure is never summed as 0 J. ``str()`` gives a table.
    """

    available: bool
    reason: str
    duration_s: float
    hz: float
    gpus: list[GpuEnergy]
    total_j: float | None
    window: tuple[str | None, str | None] = (None, None)
    read_errors: int = 0
    last_error: str = ""
    energy_hz: float | None = None  # energy-counter reads per second (start/stop/marks aside)

    def to_dict(self) -> dict[str, Any]:
        """The summary as plain JSON-ready data."""
        return asdict(self)

    def __str__(self) -> str:
        if not self.available:
            return f"no GPU monitor: {self.reason}"

        def fmt(x: float | None, spec: str) -> str:
            return "n/a" if x is None else format(x, spec)

        counter = "" if self.energy_hz is None else f" (energy counter {self.energy_hz:g} Hz)"
        lines = [f"GPU monitor: {len(self.gpus)} GPU(s), {self.duration_s:.1f} s at {self.hz:g} Hz"
                 + counter
                 + (f", window {self.window[0] or 'start'} -> {self.window[1] or 'end'}"
                    if self.window != (None, None) else "")]
        lines.append(f"{'gpu':>3}  {'name':<24} {'energy J':>10} {'method':<10} {'mean W':>7} "
                     f"{'peak W':>7} {'util %':>6} {'mem MiB':>8}")
        for g in self.gpus:
            lines.append(f"{g.gpu:>3}  {g.name[:24]:<24} {fmt(g.energy_j, '10.1f'):>10} "
                         f"{g.method:<10} {fmt(g.mean_power_w, '7.1f'):>7} "
                         f"{fmt(g.peak_power_w, '7.1f'):>7} {fmt(g.mean_util_gpu, '6.1f'):>6} "
                         f"{fmt(g.peak_mem_mib, '8.0f'):>8}")
        if self.total_j is None:
            unknown = [str(g.gpu) for g in self.gpus if g.energy_j is None]
            lines.append(f"total: unknown (GPU {', '.join(unknown)}: no energy counter and no "
                         "power reading)")
        else:
            lines.append(f"total: {self.total_j:.1f} J")
        if self.read_errors:
            lines.append(f"{self.read_errors} failed NVML read(s); last: {self.last_error}")
        return "\n".join(lines)

    __repr__ = __str__


def _as_index_list(gpus: Any) -> list[int]:
    """gpus as a list of ints: an int, or any iterable of ints (numpy integers included)."""

    def index(x: Any) -> int:
        if isinstance(x, bool):
            raise TypeError
        return operator.index(x)

    try:
        if not isinstance(gpus, (str, bytes)) and not hasattr(gpus, "__iter__"):
            return [index(gpus)]
        if isinstance(gpus, (str, bytes)):
            raise TypeError
        return [index(g) for g in gpus]
    except TypeError:
        raise MonitorValueError(
            f"Monitor(gpus={gpus!r}): gpus must be None, an int or a list of ints "
            "(CUDA device indices)") from None


def _now_ns() -> int:
    # CLOCK_MONOTONIC, the clock of the samples; Python's monotonic clock is the same one on Linux.
    return time.monotonic_ns()


def _status() -> NvmlStatus:
    try:
        native = _native()
    except ImportError as e:  # a broken build: say so, and let the rest of nbdist work
        return NvmlStatus(False, f"nbdist._core could not be imported: {e}", "", "", 0)
    p = native.probe()
    return NvmlStatus(p["available"], p["reason"], p["library"], p["driver_version"],
                      p["device_count"])


def _torch_uuids() -> list[str] | None:
    """UUIDs of the CUDA devices torch already initialised, or None (never initialises CUDA)."""
    torch = sys.modules.get("torch")
    try:
        if torch is None or not torch.cuda.is_initialized():
            return None
        uuids = []
        for i in range(torch.cuda.device_count()):
            u = str(torch.cuda.get_device_properties(i).uuid)
            uuids.append(u if u.startswith("GPU-") else f"GPU-{u}")
        return uuids
    except Exception:  # an old torch without .uuid, a broken CUDA: fall back to the environment
        return None


def _visible_nvml_indices(devices: list[dict], env: str | None) -> list[int]:
    """NVML indices of CUDA devices 0, 1, ... of this process (see the module docstring)."""
    uuids = _torch_uuids()
    by_uuid = {d["uuid"].lower(): d["index"] for d in devices}
    # Only when NVML knows every torch device (MIG instances and other drivers' devices do not
    # show up in NVML's device list); otherwise the environment is the better guide.
    if uuids and all(u.lower() in by_uuid for u in uuids):
        return [by_uuid[u.lower()] for u in uuids]
    if env is None:
        return [d["index"] for d in devices]
    out: list[int] = []
    for entry in env.split(","):
        entry = entry.strip().lower()
        if entry.lstrip("+").isdigit():
            index = int(entry)
            found = index if index < len(devices) else None
        elif entry.startswith("gpu-"):
            hits = [i for u, i in by_uuid.items() if u.startswith(entry)]
            found = hits[0] if len(hits) == 1 else None
        else:
            found = None  # "-1", "MIG-...", garbage: CUDA stops here too
        if found is None or found in out:
            break
        out.append(found)
    return out


class Monitor:
    """Samples GPU power, energy, utilization, memory and temperature in a background C++ thread.

    Args:
        gpus: CUDA device indices as this process sees them (after ``CUDA_VISIBLE_DEVICES``), one
            index, or None for every visible GPU.
        hz: samples per second per GPU of power, utilization, memory and temperature (default 10,
            from 1e-6 to 1000).
        energy_hz: reads per second of the GPU's energy counter, at most ``hz`` (default 1, or
            ``hz`` when that is lower; 0 reads it only at start, stop, marks and summaries). Lower
            than ``hz`` because that NVML query costs ~3.7 ms of CPU (H100, driver 580) against
            ~0.01 ms for the other fields; window energies stay exact (see the module docstring).

    Use as a context manager or call :meth:`start` / :meth:`stop`. A Monitor is started once.
    Without NVML it records nothing and :meth:`summary` says why; a GPU index that does not exist
    raises :class:`nbdist.MonitorValueError` naming it.
    """

    def __init__(self, gpus: int | Iterable[int] | None = None, hz: float = 10.0,
                 energy_hz: float | None = None):
        if isinstance(hz, bool) or not isinstance(hz, numbers.Real) or not (0 < hz <= _MAX_HZ):
            raise MonitorValueError(f"Monitor(hz={hz!r}): hz must be a number in (0, {_MAX_HZ:g}]")
        if hz < _MIN_HZ:
            raise MonitorValueError(f"Monitor(hz={hz!r}): hz must be >= {_MIN_HZ:g} (one sample "
                                    f"every {1 / _MIN_HZ / 86400:.1f} days)")
        if energy_hz is None:
            energy_hz = min(_DEFAULT_ENERGY_HZ, float(hz))
        if (isinstance(energy_hz, bool) or not isinstance(energy_hz, numbers.Real)
                or not (0 <= energy_hz <= hz)):
            raise MonitorValueError(
                f"Monitor(hz={hz!r}, energy_hz={energy_hz!r}): energy_hz must be a number in "
                f"[0, hz] (the energy counter is read on sampling ticks)")
        if gpus is not None:
            gpus = _as_index_list(gpus)
            if len(set(gpus)) != len(gpus):
                raise MonitorValueError(f"Monitor(gpus={gpus!r}): a GPU is listed twice")
            if any(g < 0 for g in gpus):
                raise MonitorValueError(f"Monitor(gpus={gpus!r}): GPU indices are >= 0")
        self._hz = float(hz)
        self._energy_hz = float(energy_hz)
        self._requested = None if gpus is None else list(gpus)
        self._sampler = None
        self._gpus: list[int] = []
        self._devices: list[dict] = []
        self._marks: list[tuple[str, int, int | None]] = []  # label, t_ns, sample row
        self._start_ns: int | None = None
        self._stop_ns: int | None = None
        self._reason = ""
        # One NVML initialisation here and one in the sampler: nvmlInit can take a good fraction
        # of a second on a machine without persistence mode, so no separate availability probe.
        try:
            native = _native()
            devices = native.list_devices()
        except ImportError as e:
            self._reason = f"nbdist._core could not be imported: {e}"
            return
        except MonitorError as e:
            self._reason = str(e)
            return
        env = os.environ.get("CUDA_VISIBLE_DEVICES")
        visible = _visible_nvml_indices(devices, env)
        where = (f"CUDA_VISIBLE_DEVICES={env!r}" if env is not None else
                 "CUDA_VISIBLE_DEVICES unset") + f", NVML sees {len(devices)}"
        if self._requested is None:
            self._gpus = list(range(len(visible)))
        else:
            for g in self._requested:
                if g >= len(visible):
                    raise MonitorValueError(
                        f"Monitor(gpus={self._requested!r}): GPU {g} does not exist; this process "
                        f"sees {len(visible)} GPU(s) ({where})")
            self._gpus = list(self._requested)
        if not self._gpus:
            self._reason = f"no visible GPU ({where})"
            return
        nvml_indices = [visible[g] for g in self._gpus]
        reserve = int(min(self._hz * 3600, 1 << 20))
        self._sampler = native.Sampler(nvml_indices, self._hz, self._energy_hz, reserve)
        self._devices = self._sampler.devices

    # -- availability ------------------------------------------------------------------------
    @staticmethod
    def available() -> NvmlStatus:
        """Whether NVML can be used here: truthy if so, else ``.reason`` says why (never raises)."""
        return _status()

    @property
    def active(self) -> bool:
        """True when this monitor samples at least one GPU (NVML present and a GPU visible)."""
        return self._sampler is not None

    @property
    def reason(self) -> str:
        """Why this monitor records nothing ("" when it is active)."""
        return "" if self.active else self._reason

    @property
    def gpus(self) -> list[int]:
        """The monitored GPUs (CUDA indices of this process)."""
        return list(self._gpus)

    @property
    def hz(self) -> float:
        """Samples per second of power, utilization, memory and temperature."""
        return self._hz

    @property
    def energy_hz(self) -> float:
        """Energy-counter reads per second (besides those at start, stop, marks, summaries)."""
        return self._energy_hz

    @property
    def counter_reads(self) -> int:
        """Samples so far that read the energy counter (0 when inactive)."""
        return self._sampler.counter_reads if self._sampler is not None else 0

    @property
    def support(self) -> dict[int, dict[str, bool]]:
        """Per GPU, which fields NVML reports: power, energy, utilization, memory, temperature."""
        return {g: dict(d["support"]) for g, d in zip(self._gpus, self._devices)}

    @property
    def devices(self) -> list[dict]:
        """Per monitored GPU: CUDA index, NVML index, UUID, name, total memory, support matrix."""
        return [dict(d, gpu=g, nvml_index=d["index"]) for g, d in zip(self._gpus, self._devices)]

    @property
    def sampler_cpu_s(self) -> float:
        """CPU seconds used so far by the sampler thread (0 when inactive)."""
        return self._sampler.thread_cpu_s if self._sampler is not None else 0.0

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._start_ns is not None and self._stop_ns is None

    def start(self) -> Monitor:
        """Starts sampling (the first sample is taken before this returns). Returns self."""
        if self._start_ns is not None:
            raise MonitorError(
                "this Monitor was already started; create a new one to measure again")
        self._start_ns = _now_ns()
        if self._sampler is not None:
            self._sampler.start()
            _RUNNING.add(self)
            self._start_ns = self._sampler.row_t_ns(0, 0)
        return self

    def stop(self) -> Monitor:
        """Stops sampling (a last sample is taken first); idempotent. Returns self."""
        if self._start_ns is None:
            raise MonitorError("Monitor.stop(): the monitor was never started")
        if self._stop_ns is None:
            if self._sampler is not None:
                self._sampler.stop()
                _RUNNING.discard(self)
            self._stop_ns = _now_ns()
        return self

    def __enter__(self) -> Monitor:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def mark(self, label: str) -> None:
        """Records the current time under ``label``; :meth:`summary` takes marks as window ends.

        Takes a sample of every GPU on the calling thread, energy counter included (a few ms per
        GPU), so that a window ending or starting here gets an exact counter delta."""
        if not isinstance(label, str) or not label:
            raise MonitorValueError(f"Monitor.mark({label!r}): the label must be a non-empty str")
        if any(label == m for m, _, _ in self._marks):
            raise MonitorValueError(f"Monitor.mark({label!r}): this label is already used")
        if not self.running:
            raise MonitorError(f"Monitor.mark({label!r}): the monitor is not running")
        if self._sampler is None:
            self._marks.append((label, _now_ns(), None))
            return
        row = self._sampler.mark()
        self._marks.append((label, self._sampler.row_t_ns(0, row), row))

    @property
    def marks(self) -> list[tuple[str, float]]:
        """The marks as (label, seconds since start)."""
        return [(m, (t - (self._start_ns or 0)) / 1e9) for m, t, _ in self._marks]

    # -- results -----------------------------------------------------------------------------
    def _mark_row(self, which: str, label: str | None, default: int | None) -> int | None:
        if label is None:
            return default
        for m, _, row in self._marks:
            if m == label:
                return row
        known = ", ".join(repr(m) for m, _, _ in self._marks) or "none"
        raise MonitorValueError(f"Monitor.summary({which}={label!r}): no such mark "
                                f"(marks: {known})")

    def summary(self, start: str | None = None, end: str | None = None) -> MonitorSummary:
        """Energy and statistics per GPU between two marks (default: the whole run so far).

        On a running monitor, a window that ends now takes a sample first (as :meth:`mark`
        does), so its counter energy is exact too."""
        if not self.active:
            return MonitorSummary(False, self.reason, 0.0, self._hz, [], None, (start, end),
                                  energy_hz=self._energy_hz)
        if self._start_ns is None:
            raise MonitorError("Monitor.summary(): the monitor was never started")
        row0 = self._mark_row("start", start, 0)
        row1 = self._mark_row("end", end, None)
        if row1 is None:
            row1 = self._end_row()
        if row1 < row0:
            raise MonitorValueError(f"Monitor.summary(start={start!r}, end={end!r}): the end "
                                    "mark comes before the start mark")
        gpus = []
        t0 = t1 = 0
        for slot, (g, dev) in enumerate(zip(self._gpus, self._devices)):
            s = self._sampler.stats_rows(slot, row0, row1)
            if slot == 0:
                t0, t1 = s["t0_ns"], s["t1_ns"]
            mem = _none_if_nan(s["peak_mem_used"])
            gpus.append(GpuEnergy(
                gpu=g, nvml_index=dev["index"], uuid=dev["uuid"], name=dev["name"],
                method=s["method"], energy_j=_none_if_nan(s["energy_j"]),
                counter_j=_none_if_nan(s["counter_j"]),
                integrated_j=_none_if_nan(s["integrated_j"]),
                mean_power_w=_none_if_nan(s["mean_power_w"]),
                peak_power_w=_none_if_nan(s["peak_power_w"]),
                mean_util_gpu=_none_if_nan(s["mean_util_gpu"]),
                mean_util_mem=_none_if_nan(s["mean_util_mem"]),
                peak_mem_mib=None if mem is None else mem / 2**20,
                peak_temp_c=_none_if_nan(s["peak_temp_c"]), samples=s["samples"],
                support=dict(dev["support"])))
        energies = [g.energy_j for g in gpus]
        total = None if any(e is None for e in energies) else float(sum(energies))
        return MonitorSummary(True, "", (t1 - t0) / 1e9, self._hz, gpus, total, (start, end),
                              self._sampler.read_errors, self._sampler.last_error,
                              self._energy_hz)

    def _end_row(self) -> int:
        """The row that ends a window at "now": the final sample once stopped, else a fresh one."""
        if self.running:
            try:
                return self._sampler.mark()
            except MonitorError:  # stopped by another thread meanwhile: its final sample ends it
                pass
        return self._sampler.sample_count - 1

    def samples(self) -> dict[str, list]:
        """All samples as columns (one row per GPU per tick): gpu, t_s (seconds since start),
        power_w, energy_j (cumulative since start, by the GPU's method), util_gpu, util_mem (%),
        mem_used_mib, temp_c. Unsupported fields are NaN, and so is energy_j of a counter GPU on
        the samples that did not read the counter (see ``energy_hz``)."""
        cols: dict[str, list] = {c: [] for c in _CSV_COLUMNS}
        if not self.active or self._start_ns is None:
            return cols
        for slot, g in enumerate(self._gpus):
            s = self._sampler.series(slot)
            n = len(s["t_ns"])
            cols["gpu"] += [g] * n
            cols["t_s"] += [(t - self._start_ns) / 1e9 for t in s["t_ns"]]
            cols["power_w"] += s["power_w"]
            cols["energy_j"] += s["energy_j"]
            cols["util_gpu"] += s["util_gpu"]
            cols["util_mem"] += s["util_mem"]
            cols["mem_used_mib"] += [m / 2**20 for m in s["mem_used"]]
            cols["temp_c"] += s["temp_c"]
        return cols

    def to_csv(self, path: str | os.PathLike) -> str:
        """Writes :meth:`samples` as CSV (empty cells for unsupported fields and for energy_j on the
        samples that did not read the energy counter), atomically: the file is either the previous
        one or complete. Returns the path."""
        path = os.fspath(path)
        cols = self.samples()
        rows = zip(*(cols[c] for c in _CSV_COLUMNS))

        # Fixed decimals per column: %g would round the time of a long run to whole seconds.
        formats = {"t_s": "{:.4f}", "power_w": "{:.3f}", "energy_j": "{:.3f}",
                   "mem_used_mib": "{:.1f}"}

        def cell(column: str, x) -> str:
            if isinstance(x, float):
                return "" if math.isnan(x) else formats.get(column, "{:g}").format(x)
            return str(x)

        lines = [",".join(_CSV_COLUMNS)]
        lines += [",".join(cell(c, x) for c, x in zip(_CSV_COLUMNS, row)) for row in rows]
        return atomic_write(path, "\n".join(lines) + "\n")

    def plot(self, path: str | os.PathLike | None = None):
        """Power, utilization and memory over time (one line per GPU, marks as vertical lines).
        Saves to ``path`` when given; returns the matplotlib Figure (shown by notebooks)."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=(9, 7), layout="constrained")
        axes = fig.subplots(3, 1, sharex=True)
        if not self.active:
            axes[0].text(0.5, 0.5, f"no GPU monitor: {self.reason}", ha="center", va="center",
                         transform=axes[0].transAxes, wrap=True)
        cols = self.samples()
        for g in self._gpus:
            idx = [i for i, x in enumerate(cols["gpu"]) if x == g]
            t = [cols["t_s"][i] for i in idx]
            label = f"GPU {g}"
            axes[0].plot(t, [cols["power_w"][i] for i in idx], label=label)
            axes[1].plot(t, [cols["util_gpu"][i] for i in idx], label=label)
            axes[2].plot(t, [cols["mem_used_mib"][i] / 1024 for i in idx], label=label)
        for ax, ylabel in zip(axes, ("power (W)", "GPU utilization (%)", "memory used (GiB)")):
            ax.set_ylabel(ylabel)
            ax.grid(True, alpha=0.3)
            for _, t in self.marks:
                ax.axvline(t, color="grey", linestyle="--", linewidth=0.8)
        for label, t in self.marks:
            axes[0].annotate(label, (t, 1), xycoords=("data", "axes fraction"), fontsize=8,
                             va="bottom")
        if self._gpus:
            axes[0].legend(loc="upper right", fontsize=8)
        axes[2].set_xlabel("time since start (s)")
        if self.active and self._start_ns is not None:
            s = self.summary()
            total = "unknown" if s.total_j is None else f"{s.total_j:.0f} J"
            fig.suptitle(f"{len(s.gpus)} GPU(s), {s.duration_s:.1f} s, energy {total}")
        if path is not None:
            fig.savefig(os.fspath(path))
        return fig

    def __repr__(self) -> str:
        state = ("running" if self.running else "stopped" if self._stop_ns is not None
                 else "not started")
        if not self.active:
            return f"<nbdist.Monitor inactive: {self.reason}>"
        return (f"<nbdist.Monitor gpus={self._gpus} hz={self._hz:g} "
                f"energy_hz={self._energy_hz:g} {state}>")
