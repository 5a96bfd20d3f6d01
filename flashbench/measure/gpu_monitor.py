"""Watch the GPU while a sweep runs: clocks, throttling and other processes, sampled in a thread.

A state read before and after a sweep misses what happens during it: a clock dip or another job
on the GPU for a few seconds slows the cases measured then, and nothing else in the results says
so. The monitor samples NVML every ``interval_s`` and keeps a small summary (lowest SM clock,
throttle reasons with the time they were seen, the most compute processes on the GPU at once),
which the runner stores in ``results.json`` as ``gpu_monitor`` and turns into warnings.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

from .environment import BENIGN_THROTTLE, _nvml, gpu_state

MAX_EVENTS = 50


def compute_processes(index: int = 0) -> int | None:
    """How many processes hold a compute context on this GPU (None without NVML)."""
    nv = _nvml()
    if nv is None:
        return None
    try:
        return len(nv.nvmlDeviceGetComputeRunningProcesses(nv.nvmlDeviceGetHandleByIndex(index)))
    except Exception:
        return None


class PeriodicSampler:
    """Calls ``sample()`` every ``interval_s`` in a daemon thread between ``__enter__`` and ``__exit__``;
    a sample that raises is skipped (watching must never disturb what is watched)."""

    interval_s: float = 0.5

    def __enter__(self):
        self._t0 = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name=f"flashbench-{type(self).__name__}")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> bool:
        self._stop.set()
        self._thread.join(timeout=5)
        return False

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except Exception:  # noqa: BLE001
                pass
            self._stop.wait(self.interval_s)

    def sample(self) -> None:
        raise NotImplementedError


class GpuMonitor(PeriodicSampler):
    """``with GpuMonitor(0) as m: ...`` then ``m.summary()`` and ``m.warnings(expected_processes)``."""

    def __init__(self, index: int = 0, interval_s: float = 0.5,
                 read_state: Callable[[int], dict] = gpu_state,
                 read_processes: Callable[[int], int | None] = compute_processes):
        self.index, self.interval_s = index, interval_s
        self._read_state, self._read_processes = read_state, read_processes
        self._t0 = 0.0
        self.samples = 0
        self.min_sm_clock_mhz: int | None = None
        self.max_sm_clock_mhz: int | None = None
        self.max_temperature_c: int | None = None
        self.max_processes: int | None = None
        self.events: list[dict] = []  # first time each (reason) was seen, and clock dips (MAX_EVENTS at most)
        # reason -> seconds in when first seen, kept whatever the event list holds: a long sweep whose clock
        # sank in many small dips fills that list, and a throttle seen after it must still be warned of
        self.throttles: dict[str, float] = {}

    def _event(self, kind: str, detail: str) -> None:
        if len(self.events) < MAX_EVENTS:
            self.events.append({"t_s": round(time.perf_counter() - self._t0, 1), "kind": kind, "detail": detail})

    def sample(self) -> None:
        st = self._read_state(self.index)
        if not st:
            return
        self.samples += 1
        sm, top, temp = st.get("sm_clock_mhz"), st.get("max_sm_clock_mhz"), st.get("temperature_c")
        if temp is not None:
            self.max_temperature_c = max(temp, self.max_temperature_c or temp)
        if top is not None:
            self.max_sm_clock_mhz = top
        busy = "gpu_idle" not in (st.get("throttle_reasons") or [])
        if sm is not None and busy:  # an idle GPU clocks down by design: not a dip
            if self.min_sm_clock_mhz is None or sm < self.min_sm_clock_mhz:
                if top and sm < 0.9 * top:
                    self._event("clock_dip", f"SM clock {sm} MHz of {top}")
                self.min_sm_clock_mhz = sm
        for reason in st.get("throttle_reasons") or []:
            if reason not in BENIGN_THROTTLE and reason not in self.throttles:
                self.throttles[reason] = round(time.perf_counter() - self._t0, 1)
                self._event("throttle", reason)
        n = self._read_processes(self.index)
        if n is not None:
            if n > 1 and n > (self.max_processes or 0):
                self._event("processes", f"{n} processes on the GPU")
            self.max_processes = max(n, self.max_processes or 0)

    def summary(self) -> dict:
        return {"index": self.index, "interval_s": self.interval_s, "samples": self.samples,
                "min_sm_clock_mhz": self.min_sm_clock_mhz, "max_sm_clock_mhz": self.max_sm_clock_mhz,
                "max_temperature_c": self.max_temperature_c, "max_compute_processes": self.max_processes,
                "events": list(self.events)}

    def clock_fell(self) -> bool:
        """Whether the SM clock, while busy, fell below 90% of its maximum during the sweep."""
        return bool(self.min_sm_clock_mhz and self.max_sm_clock_mhz
                    and self.min_sm_clock_mhz < 0.9 * self.max_sm_clock_mhz)

    def warnings(self, expected_processes: int) -> list[str]:
        """What a reader of the results should know; ``expected_processes``: flashbench's own."""
        out = []
        throttles = sorted(self.throttles)
        if throttles:
            first = min(self.throttles.values())
            out.append(f"GPU {self.index} was throttled during the sweep ({', '.join(throttles)}, first "
                       f"{first} s in): timings measured then may be low")
        if self.clock_fell():
            out.append(f"GPU {self.index}'s SM clock fell to {self.min_sm_clock_mhz} MHz (max "
                       f"{self.max_sm_clock_mhz}) while busy during the sweep")
        if self.max_processes is not None and self.max_processes > expected_processes:
            out.append(f"{self.max_processes} processes used GPU {self.index} at once during the sweep "
                       f"(flashbench's own: {expected_processes}): another job may have slowed some cases")
        return out
