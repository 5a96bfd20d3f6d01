"""The SM clock while a row's timed batches ran, read from NVML.

A backend that takes longer may be doing more work, or the same work at a lower clock: a GPU at its
power limit lowers its SM clock by as much as the kernel's power needs, and a sweep's short samples
may catch the clock still falling from its boost (README, "What the numbers mean"). The row's
``sm_clock_mhz`` says which: the median of NVML's SM clock read while the GPU ran the timed batches.
The sampler is armed over the windows the energy meter reads (from a held batch's release to the GPU
until it is done, :mod:`flashbench.measure.timer`; for an unheld batch, from the end of its enqueueing,
whose gaps its samples time and whose GIL the thread must not take); a thread reads the clock a whole
``interval_s`` into a window and every ``interval_s`` after while it is open, and once more as it
closes, so a window shorter than the interval still counts. A discarded window (a held batch that
timed out, a call or a synchronisation that raised) leaves no readings.

Nothing is read between windows, while the host enqueues the next batch (the GPU then idles behind
the hold and its clock recovers): the thread waits on an event then, holding no GIL. Everything is
None on a CPU or where NVML cannot read the clock.
"""
from __future__ import annotations

import statistics
import threading
import time
from typing import Callable

READ_INTERVAL_S = 0.01  # a row sampled for 150 ms gets about 15 readings, and one as each batch ends

ReadMhz = Callable[[], "int | None"]


class ClockSampler:
    """``begin()``/``end()`` around each window the GPU runs a batch in; ``median_mhz`` over the windows
    since ``reset()``. One sampler (and one thread, started at the first window) per GPU and process."""

    def __init__(self, read_mhz: ReadMhz, interval_s: float = READ_INTERVAL_S):
        self._read, self.interval_s = read_mhz, interval_s
        self._lock = threading.Lock()
        self._armed = threading.Event()
        self._window = 0                 # the open window's number (a reading counts only in the window it began in)
        self._current: list[int] = []    # the open window's readings
        self.readings: list[int] = []    # the closed windows' readings
        self._thread: threading.Thread | None = None

    def reset(self) -> None:
        with self._lock:
            self._armed.clear()
            self._current, self.readings = [], []

    def begin(self) -> None:
        with self._lock:
            self._window += 1
            self._current = []
            self._armed.set()
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, daemon=True, name="flashbench-sm-clock")
            self._thread.start()

    def end(self) -> None:
        """Close the window with a last reading: the clock the batch ended at."""
        with self._lock:
            if not self._armed.is_set():
                return
            window = self._window
        value = self._safe_read()
        with self._lock:
            if not self._armed.is_set() or self._window != window:
                return
            self._armed.clear()
            if value is not None:
                self._current.append(value)
            self.readings.extend(self._current)
            self._current = []

    def discard(self) -> None:
        """Close the window and forget its readings (its batch did not count)."""
        with self._lock:
            self._armed.clear()
            self._current = []

    @property
    def median_mhz(self) -> float | None:
        with self._lock:
            return float(statistics.median(self.readings)) if self.readings else None

    def _safe_read(self) -> int | None:
        try:
            return self._read()
        except Exception:  # noqa: BLE001 - watching must never disturb what is watched
            return None

    def _take(self, window: int) -> None:
        """A reading for ``window``, if it is still the open one."""
        with self._lock:
            if not self._armed.is_set() or self._window != window:
                return
        value = self._safe_read()
        with self._lock:
            # a reading that began in this window and returned while it is still open
            if value is not None and self._armed.is_set() and self._window == window:
                self._current.append(value)

    def _loop(self) -> None:
        while True:
            self._armed.wait()
            with self._lock:
                window = self._window
            # a whole interval into the window first (the reading at its start would be the clock of the idle
            # gap), and only in that window: one that closed during the sleep takes no reading from the next
            time.sleep(self.interval_s)
            self._take(window)


def nvml_clock_reader(device_uuid: str) -> ReadMhz | None:
    """A reader of the GPU's current SM clock (MHz), or None where NVML or the GPU is missing."""
    from .environment import nvml_reader

    return nvml_reader(device_uuid, lambda nv, handle: nv.nvmlDeviceGetClockInfo(handle, nv.NVML_CLOCK_SM))


_SAMPLERS: dict[str, ClockSampler | None] = {}  # one per GPU and process: its thread lives as long as the process


def sampler_for(device_uuid: str) -> ClockSampler | None:
    if device_uuid not in _SAMPLERS:
        read = nvml_clock_reader(device_uuid)
        _SAMPLERS[device_uuid] = ClockSampler(read) if read is not None else None
    return _SAMPLERS[device_uuid]
