"""Summary statistics of timing samples (one implementation, used by every timer)."""
from __future__ import annotations

import math
from dataclasses import dataclass


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method) of already sorted values; q in [0, 100]."""
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


@dataclass(frozen=True)
class Summary:
    median_ms: float
    p20_ms: float
    p80_ms: float
    min_ms: float
    mean_ms: float
    samples: int

    @property
    def spread(self) -> float:
        """(p80 − p20) / median: a scale-free noise measure."""
        return (self.p80_ms - self.p20_ms) / self.median_ms if self.median_ms > 0 else math.nan


def summarize(samples_ms: list[float]) -> Summary:
    if not samples_ms:
        raise ValueError("no timing samples to summarize")
    s = sorted(samples_ms)
    return Summary(
        median_ms=percentile(s, 50),
        p20_ms=percentile(s, 20),
        p80_ms=percentile(s, 80),
        min_ms=s[0],
        mean_ms=sum(s) / len(s),
        samples=len(s),
    )
