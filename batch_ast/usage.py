"""Accounting: what each row consumed of its process — CPU time, peak memory, device time and use.

Measured by the job's own process, never by ``sacct``/``seff``: accounting is often disabled or
throttled (the test cluster has none), and its figures are per job, not per row, when several rows
share a job. A process may hold several rows at once (rows optimised together, a row finished in
the background while the next optimises), so usage is kept as a ledger (``UsageLedger``): at each
row's start, device, optimisation and end, the CPU and wall time since the previous entry are
split evenly among the rows running, and the memory peak since then (read from the kernel, then
reset) goes to each of them. A row alone in its process gets exactly its process's usage; the
rows' sums are the process's usage while it ran rows. Torch-free: the device's probes are handed
in by the row.

Written by hand: psutil reads the same kernel counters but cannot reset the peak (``clear_refs``),
and no library splits a process's usage among the tasks it runs.
"""

from __future__ import annotations

import math
import resource
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# What a row's usage figures cover (the record's ``usage_scope``).
SCOPE_ROW = "row"  # the row had its process to itself; the peak was reset when it started
SCOPE_SHARED = "shared"  # other rows ran in the process meanwhile: CPU split, peak of them all
SCOPE_PROCESS = "process"  # the kernel would not reset the peak: it is the process's since it started
SCOPES = (SCOPE_ROW, SCOPE_SHARED, SCOPE_PROCESS)
SAMPLE_EVERY_S = 1.0  # NVML averages utilisation over up to a second itself

# Figures carried over a requeue in the row's checkpoint (summed, or the larger peak).
CARRIED_SUMS = ("cpu_s", "wall_s", "device_s", "util_sum", "util_samples")
CARRIED_PEAKS = ("peak_rss_bytes", "device_peak_bytes")


class PeakMemory:
    """This process's resident-memory high-water mark since the last ``take``.

    Linux keeps it as ``VmHWM`` and resets it to the current size when "5" is written to
    ``/proc/self/clear_refs`` (kernel 4.0+). Where that is refused (another kernel, a hardened
    /proc), ``resettable`` is False and each figure is the peak since the process started
    (``getrusage``)."""

    def __init__(self, proc: Path = Path("/proc/self")) -> None:
        self.status, self.clear_refs = proc / "status", proc / "clear_refs"
        self.resettable = self._reset() and self._hwm() is not None

    def _reset(self) -> bool:
        try:
            self.clear_refs.write_text("5")
            return True
        except OSError:
            return False

    def _hwm(self) -> int | None:
        try:
            for line in self.status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # the kernel writes kB
        except (OSError, ValueError, IndexError):
            return None
        return None

    def take(self) -> int:
        """Bytes: the peak since the previous ``take`` (reset now), or since the process started."""
        if self.resettable:
            peak = self._hwm()
            if peak is not None and self._reset():
                return peak
            self.resettable = False
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kB


@dataclass
class RowUsage:
    """One row's running totals in the ledger (and, by ``figures``, its record fields)."""

    device: str = "cpu"
    cpu_s: float = 0.0
    wall_s: float = 0.0
    device_s: float = 0.0
    peak_rss_bytes: int = 0
    device_peak_bytes: int = 0
    util_sum: float = 0.0
    util_samples: int = 0
    shared: bool = False
    optimising: bool = False  # GPU utilisation is sampled for a row while it optimises
    carried: dict[str, float] = field(default_factory=dict)

    def totals(self) -> dict[str, float]:
        """Sums and peaks including what was carried over from before a requeue."""
        out: dict[str, float] = {k: getattr(self, k) + self.carried.get(k, 0) for k in CARRIED_SUMS}
        out.update({k: max(getattr(self, k), self.carried.get(k, 0)) for k in CARRIED_PEAKS})
        return out

    def figures(self, peak_resettable: bool) -> dict[str, Any]:
        """The record's usage fields (``Record``); device fields None on the CPU, never made up."""
        t = self.totals()
        on_gpu = self.device.startswith("cuda")
        scope = SCOPE_SHARED if self.shared else SCOPE_ROW if peak_resettable else SCOPE_PROCESS
        return {
            "cpu_s": t["cpu_s"],
            "wall_s": t["wall_s"],
            "peak_rss_bytes": int(t["peak_rss_bytes"]),
            "usage_scope": scope,
            "device_s": t["device_s"] if on_gpu else None,
            "device_peak_bytes": int(t["device_peak_bytes"]) if on_gpu and t["device_peak_bytes"] else None,
            "gpu_util_mean": t["util_sum"] / t["util_samples"] if t["util_samples"] else None,
        }


DevicePeak = Callable[[str], "int | None"]  # bytes peak on a device since the last call (then reset)
Utilisation = Callable[[str], "float | None"]  # a device's utilisation now, in %


class UsageLedger:
    """This process's CPU time, wall time and memory peaks, split among the rows it runs.

    ``enter(key)`` when a row starts, ``assign`` its device once known, ``optimising`` while it
    optimises, ``leave(key)`` when it ends (its figures), ``drop`` for a row that pauses (its
    totals so far, for its checkpoint, come from ``so_far``). Thread-safe: a row finished in a
    background thread leaves while the next one enters."""

    def __init__(self, cpu: Callable[[], float] = time.process_time,
                 wall: Callable[[], float] = time.monotonic, memory: PeakMemory | None = None,
                 device_peak: DevicePeak | None = None, utilisation: Utilisation | None = None,
                 sample_every_s: float = SAMPLE_EVERY_S) -> None:
        self._cpu, self._wall = cpu, wall
        self.memory = memory or PeakMemory()
        self.device_peak, self.utilisation = device_peak, utilisation
        self.sample_every_s = sample_every_s
        self._rows: dict[str, RowUsage] = {}
        self._paused: dict[str, RowUsage] = {}
        self._lock = threading.Lock()
        self._last = (cpu(), wall())
        self._util: dict[str, tuple[float, int]] = {}  # per device, since the last settle
        self._sampler: threading.Thread | None = None

    def enter(self, key: str) -> None:
        """A row starts in this process (on the CPU until ``assign`` says its device)."""
        with self._settled():
            self._paused.pop(key, None)  # resumed in this process (a test, a retry): counted afresh
            self._rows[key] = RowUsage()
            for row in self._rows.values():
                row.shared = row.shared or len(self._rows) > 1

    def assign(self, key: str, device: str | None = None, carried: dict[str, float] | None = None) -> None:
        """The row's device, and the usage it had before a requeue (from its checkpoint)."""
        with self._settled():
            row = self._rows.get(key)
            if row is None:
                return
            if device is not None:
                row.device = device
            if carried is not None:
                row.carried = dict(carried)
            if row.device.startswith("cuda") and self.utilisation is not None:
                self._start_sampler()

    def optimising(self, key: str, on: bool) -> None:
        """The row starts (or stops) optimising: utilisation samples count for it meanwhile."""
        with self._settled():
            if (row := self._rows.get(key)) is not None:
                row.optimising = on

    def so_far(self, key: str) -> dict[str, float]:
        """A running row's totals (carried ones included), as its checkpoint keeps them."""
        with self._settled():
            row = self._rows.get(key)
            return row.totals() if row else {}

    def leave(self, key: str) -> dict[str, Any]:
        """The row's record fields (``RowUsage.figures``); {} for a row the ledger does not hold."""
        with self._settled():
            row = self._rows.pop(key, None) or self._paused.pop(key, None)
            return row.figures(self.memory.resettable) if row else {}

    def drop(self, key: str) -> None:
        """The row paused: it stops counting (a failed record written later still gets its figures)."""
        with self._settled():
            if (row := self._rows.pop(key, None)) is not None:
                self._paused[key] = row

    @contextmanager
    def _settled(self) -> Iterator[None]:
        """Every entry of a row: under the lock, after handing out what the process used so far."""
        with self._lock:
            self._settle()
            yield

    def _settle(self) -> None:
        """Hand out what the process used since the previous entry to the rows running (lock held)."""
        cpu, wall = self._cpu(), self._wall()
        d_cpu, d_wall = cpu - self._last[0], wall - self._last[1]
        self._last = (cpu, wall)
        peak = self.memory.take()
        rows = list(self._rows.values())
        devices = {r.device for r in rows if r.device.startswith("cuda")}
        device_peaks = {d: self._device_peak(d) for d in devices}
        util, self._util = self._util, {}
        on_device = {d: sum(r.device == d for r in rows) for d in devices}
        for row in rows:
            row.cpu_s += d_cpu / len(rows)
            row.wall_s += d_wall / len(rows)
            row.peak_rss_bytes = max(row.peak_rss_bytes, peak)
            if row.device in devices:
                row.device_s += d_wall / on_device[row.device]
                row.device_peak_bytes = max(row.device_peak_bytes, device_peaks[row.device] or 0)
            if row.optimising:
                total, n = util.get(row.device, (0.0, 0))
                row.util_sum, row.util_samples = row.util_sum + total, row.util_samples + n

    def _device_peak(self, device: str) -> int | None:
        try:
            return self.device_peak(device) if self.device_peak else None
        except Exception:  # noqa: BLE001 - a probe that fails measures nothing; the row goes on
            return None

    # GPU utilisation: one thread samples every device while rows optimise on it ---------------
    def _start_sampler(self) -> None:
        if self._sampler is None or not self._sampler.is_alive():
            self._sampler = threading.Thread(target=self._sample_loop, name="usage-sampler", daemon=True)
            self._sampler.start()

    def sample(self) -> None:
        """One utilisation reading of each device rows run on (the sampler thread's step)."""
        with self._lock:
            devices = {r.device for r in self._rows.values() if r.device.startswith("cuda") and r.optimising}
        readings = {}
        for device in devices:
            try:
                value = self.utilisation(device) if self.utilisation else None
            except Exception:  # noqa: BLE001 - NVML gone or refused: no reading, never a failed row
                value = None
            if value is not None and math.isfinite(value):
                readings[device] = value
        with self._lock:
            for device, value in readings.items():
                total, n = self._util.get(device, (0.0, 0))
                self._util[device] = (total + value, n + 1)

    def _sample_loop(self) -> None:
        while True:
            time.sleep(self.sample_every_s)
            with self._lock:
                if not any(r.device.startswith("cuda") for r in self._rows.values()):
                    self._sampler = None
                    return
            self.sample()


def carried_usage(value: Any) -> dict[str, float]:
    """The usage figures a checkpoint carries (a stranger's file): finite non-negative numbers of
    known names, anything else left out (a bad figure costs only its own count)."""
    if not isinstance(value, dict):
        return {}
    return {k: float(v) for k, v in value.items()
            if k in (*CARRIED_SUMS, *CARRIED_PEAKS) and isinstance(v, (int, float))
            and not isinstance(v, bool) and math.isfinite(v) and v >= 0}


_LEDGER: UsageLedger | None = None
_LEDGER_LOCK = threading.Lock()


def process_ledger(**probes: Any) -> UsageLedger:
    """The one ledger of this process (rows of one process share its counters); ``probes``
    (``device_peak``, ``utilisation``) are set on first use."""
    global _LEDGER
    with _LEDGER_LOCK:
        if _LEDGER is None:
            _LEDGER = UsageLedger(**probes)
        return _LEDGER
