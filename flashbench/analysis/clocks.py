"""The SM clock a case ran at: in two runs (the gate), and for each backend of one run.

A case that got slower may run the same number of cycles at a lower clock: another unit of the
GPU model, a hotter machine, a power limit reached sooner. The gate does not judge by it (a kernel
that draws more power lowers its own clock, and that is a real regression of its time); it shows it
beside each case that moved, so a reader can tell the GPU's change from the code's. Within one run,
backends of a case timed at clocks far apart have a ratio that holds the clocks' difference too:
:func:`clock_gaps` finds them for a note under the run's tables.
``sm_clock_mhz`` is the median SM clock while the row's timed batches ran
(:mod:`flashbench.measure.sm_clock`); runs recorded before it have none, and then nothing is shown.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..model.case import CASE_FIELDS
from ..model.metrics import LATENCY, get_metric

CLOCK = get_metric("clock")
# a clock change smaller than this is not worth a reader's attention (NVML reports clocks in steps of
# about 15 MHz, 1% of a Hopper's sustained clock)
NOTABLE = 0.01
# backends of a case this far apart in clock get a note under a run's tables: a few clock steps, past
# what two readings of one steady clock differ by
GAP = 0.03


def megacycles(ms: float, mhz: float) -> float:
    """The cycles a call takes, in millions: its time × the SM clock it ran at (ms × MHz / 1000)."""
    return ms * mhz / 1e3


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
    def cycles_ratio(self) -> float:
        """new/old of the cycles a call took (median time × clock)."""
        return megacycles(self.new_ms, self.new_mhz) / megacycles(self.old_ms, self.old_mhz)

    @property
    def cycles_change(self) -> float:
        return self.cycles_ratio - 1

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


@dataclass(frozen=True)
class ClockGap:
    case: dict           # the case's fields
    backend: str
    mhz: float
    reference_mhz: float

    @property
    def ratio(self) -> float:
        return self.mhz / self.reference_mhz


def clock_gaps(frame, reference: str, gap: float = GAP) -> tuple[list[ClockGap], int]:
    """The backends whose clock was more than ``gap`` (relative) from ``reference``'s in the same case, widest
    first, and how many cases had a clock for the reference and for some other backend, all measured ok."""
    if CLOCK.column not in frame or frame.empty:
        return [], 0
    ok = frame[(frame["status"] == "ok") & frame[CLOCK.column].notna() & (frame[CLOCK.column] > 0)]
    gaps, compared = [], 0
    for key, group in ok.groupby(list(CASE_FIELDS), sort=False, dropna=False):
        ref = group[group["backend"] == reference]
        others = group[group["backend"] != reference]
        if ref.empty or others.empty:
            continue
        compared += 1
        ref_mhz = float(ref[CLOCK.column].iloc[-1])
        for _, row in others.iterrows():
            mhz = float(row[CLOCK.column])
            if abs(mhz / ref_mhz - 1) > gap:
                gaps.append(ClockGap(dict(zip(CASE_FIELDS, key)), row["backend"], mhz, ref_mhz))
    gaps.sort(key=lambda g: -abs(math.log(g.ratio)))
    return gaps, compared
