"""Energy from NVML's total-energy counter, read around the timed batches.

``nvmlDeviceGetTotalEnergyConsumption`` counts the board's energy in mJ since the driver loaded
(monotonic). The timer opens a window when a batch is released to the GPU and closes it when the
batch is done; the energy and the time of every window are summed over a row's batches:

- ``avg_power_w`` = Σ energy / Σ window time: the board's average power while the batches ran
  (the L2 flushes between calls included);
- ``energy_j`` per call = ``avg_power_w`` × the call's median time;
- TFLOP/J = FLOPs / ``energy_j`` / 1e12.

The counter moves in steps (the driver updates it periodically; on A100 and H100 the power sensor
is sampled only part of the time, arXiv 2312.02741), so a window much shorter than a step reads
nothing or a whole step. The meter measures the step once per GPU and reports nothing unless the
summed windows cover at least ``MIN_STEPS`` of them, and the error the steps can add is small: a
window reads a whole number of steps, one more or less than it lasted, so each adds a variance of at
most min(window / step, ¼) steps² (a window shorter than a step reads one with probability window /
step). Many short windows (the batches of a fast kernel) cover ``MIN_STEPS`` steps long before their
sum means anything (20 windows of a tenth of a step read 2 ± 1.3 steps), so the standard error
bound must be within ``MAX_REL_ERROR`` of the energy read. Rows whose sampling is shorter get energy
from ``timing.energy_ms`` (``flashbench run --energy-ms``): the timer then keeps running the call,
outside the samples, until the windows are long enough or that much time has passed. Everything is
None on a CPU or where NVML cannot read the counter.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

MIN_STEPS = 5              # windows must cover this many counter steps
MIN_WINDOW_MS = 10.0       # and at least this long, whatever the step
MAX_REL_ERROR = 0.15       # the steps' standard error bound, relative (one window of MIN_STEPS steps: 0.1)
STEP_PROBE_MS = 300.0      # how long :func:`counter_step_ms` watches the counter at most

ReadMj = Callable[[], "int | None"]


def energy_per_call_j(avg_power_w: float | None, median_ms: float | None) -> float | None:
    if avg_power_w is None or median_ms is None or not avg_power_w > 0 or not median_ms > 0:
        return None
    return avg_power_w * median_ms / 1e3


def tflop_per_j(flops: float | None, energy_j: float | None) -> float | None:
    if flops is None or energy_j is None or not energy_j > 0:
        return None
    return flops / energy_j / 1e12


def counter_step_ms(read_mj: ReadMj, clock: Callable[[], float] = time.perf_counter,
                    sleep: Callable[[float], None] = time.sleep, probe_ms: float = STEP_PROBE_MS) -> float | None:
    """The time between two updates of the counter, watched for at most ``probe_ms`` (an idle GPU
    still draws power, so the counter keeps moving); ``probe_ms`` when it moved less than twice;
    None when it cannot be read."""
    first = read_mj()
    if first is None:
        return None
    t_end = clock() + probe_ms / 1e3
    last, changes = first, []
    while clock() < t_end and len(changes) < 2:
        sleep(0.0005)
        v = read_mj()
        if v is None:
            return None
        if v != last:
            changes.append(clock())
            last = v
    return (changes[1] - changes[0]) * 1e3 if len(changes) == 2 else probe_ms


@dataclass
class EnergyMeter:
    """Sums (energy, time) over windows; ``avg_power_w`` once they are long enough to mean something."""

    read_mj: ReadMj
    step_ms: float | None
    clock: Callable[[], float] = time.perf_counter
    energy_mj: float = 0.0
    window_ms: float = 0.0
    failed: bool = False
    windows: int = 0
    var_steps: float = 0.0     # bound of the variance the counter's steps add to the windows' energy, in steps²
    _open: tuple[float, float] | None = field(default=None, repr=False)

    def reset(self) -> None:
        self.energy_mj, self.window_ms, self.failed, self._open = 0.0, 0.0, False, None
        self.windows, self.var_steps = 0, 0.0

    def begin(self) -> None:
        e = self.read_mj()
        if e is None:
            self.failed = True
        self._open = (e, self.clock()) if e is not None else None

    def end(self) -> None:
        if self._open is None:
            return
        e, t = self.read_mj(), self.clock()
        e0, t0 = self._open
        self._open = None
        if e is None or e < e0:
            self.failed = True
            return
        w = (t - t0) * 1e3
        self.energy_mj += e - e0
        self.window_ms += w
        self.windows += 1
        if self.step_ms is not None:
            self.var_steps += min(w / self._step, 0.25)

    def discard(self) -> None:
        """Forget an open window (its batch did not count)."""
        self._open = None

    @property
    def _step(self) -> float:
        return max(self.step_ms or 0.0, 1e-9)

    @property
    def min_window_ms(self) -> float:
        return max(MIN_WINDOW_MS, MIN_STEPS * (self.step_ms or 0.0))

    @property
    def rel_error(self) -> float:
        """The standard error bound the counter's steps leave in the windows' energy, relative to it."""
        if self.window_ms <= 0:
            return math.inf
        return math.sqrt(self.var_steps) / (self.window_ms / self._step)

    @property
    def short_ms(self) -> float:
        """Window time still missing before ``avg_power_w`` means something (0 when enough, or when no
        amount would help: the counter failed or never moved), assuming more windows like the ones so far."""
        if self.failed or self.step_ms is None:
            return 0.0
        need = self.min_window_ms
        if self.windows:
            # W total ms of windows: sqrt(var_steps + rate·(W − window_ms)) <= MAX_REL_ERROR · W / step
            rate = min(1 / self._step, 0.25 / (self.window_ms / self.windows))  # variance per ms of more windows
            a = (MAX_REL_ERROR / self._step) ** 2
            c = self.var_steps - rate * self.window_ms
            disc = rate * rate + 4 * a * c
            if disc > 0:
                need = max(need, (rate + math.sqrt(disc)) / (2 * a))
        return max(0.0, need - self.window_ms)

    @property
    def avg_power_w(self) -> float | None:
        if self.failed or self.step_ms is None or self.window_ms < self.min_window_ms or not self.energy_mj > 0:
            return None
        if self.rel_error > MAX_REL_ERROR * (1 + 1e-9):
            return None
        return self.energy_mj / self.window_ms  # mJ / ms = W


def nvml_energy_reader(device_uuid: str) -> ReadMj | None:
    """A reader of the GPU's energy counter (mJ), or None where NVML or the counter is missing."""
    from .environment import nvml_reader

    return nvml_reader(device_uuid, lambda nv, handle: nv.nvmlDeviceGetTotalEnergyConsumption(handle))


_STEPS: dict[str, float | None] = {}  # measured once per GPU and process


def meter_for(device_uuid: str) -> EnergyMeter | None:
    read = nvml_energy_reader(device_uuid)
    if read is None:
        return None
    if device_uuid not in _STEPS:
        _STEPS[device_uuid] = counter_step_ms(read)
    return EnergyMeter(read, _STEPS[device_uuid])
