"""The SM clock a case ran at in two runs, and what its time change is in cycles.

A case that got slower may run the same number of cycles at a lower clock: another unit of the
GPU model, a hotter machine, a power limit reached sooner. The gate does not judge by it (a kernel
that draws more power lowers its own clock, and that is a real regression of its time); it shows it
beside each case that moved, so a reader can tell the GPU's change from the code's.
``sm_clock_mhz`` is the median SM clock while the row's timed batches ran
(:mod:`flashbench.measure.sm_clock`); runs recorded before it have none, and then nothing is shown.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..model.metrics import LATENCY, get_metric

CLOCK = get_metric("clock")
# a clock change smaller than this is not worth a reader's attention (NVML reports clocks in steps of
# about 15 MHz, 1% of a Hopper's sustained clock)
NOTABLE = 0.01


@dataclass(frozen=True)
class ClockChange:
    old_mhz: float
    new_mhz: float
    old_ms: float
    new_ms: float

    @property
    def clock_change(self) -> float:
        """new/old − 1 of the clock."""
        return self.new_mhz / self.old_mhz - 1

    @property
    def cycles_change(self) -> float:
        """new/old − 1 of the cycles a call took (median time × clock)."""
        return (self.new_ms * self.new_mhz) / (self.old_ms * self.old_mhz) - 1

    @property
    def notable(self) -> bool:
        return abs(self.clock_change) >= NOTABLE

    def words(self) -> str:
        """"SM clock 1,695 → 1,470 MHz (13.3% lower), cycles a call 2.1% more"."""
        lower = "lower" if self.clock_change < 0 else "higher"
        more = "more" if self.cycles_change > 0 else "fewer"
        return (f"SM clock {self.old_mhz:,.0f} → {self.new_mhz:,.0f} MHz ({abs(self.clock_change) * 100:.1f}% {lower}), "
                f"cycles a call {abs(self.cycles_change) * 100:.1f}% {more}")


def _number(row, column: str) -> float | None:
    if column not in row:
        return None
    x = row[column]
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) and x > 0 else None


def clock_change(row) -> ClockChange | None:
    """The clocks and median times of a case joined from two runs (columns ``<column>_old``/``_new``, as
    :func:`flashbench.analysis.compare.join_runs` names them); None when either side lacks one."""
    values = [_number(row, f"{column}_{side}") for column in (CLOCK.column, LATENCY.column) for side in ("old", "new")]
    if any(v is None for v in values):
        return None
    old_mhz, new_mhz, old_ms, new_ms = values
    return ClockChange(old_mhz, new_mhz, old_ms, new_ms)
