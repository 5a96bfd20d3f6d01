"""Summary statistics of timing samples (one implementation, used by every timer)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from statistics import NormalDist


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


class InvalidSamples(ValueError):
    """Timing samples that no figure may be computed from (see :func:`check_samples`)."""


def check_samples(samples_ms: list[float]) -> None:
    """Raise :class:`InvalidSamples` unless every sample is a finite time >= 0 and their median is > 0.

    An event pair that reads a negative or non-finite time (events recorded out of order, a broken
    clock) has no meaning, and a median of 0 ms would turn every rate into a division by zero: a call
    that ran nothing between its events (it returned a cached result, or computed on the host) is
    reported as such, never as an infinite TFLOP/s."""
    if not samples_ms:
        raise InvalidSamples("no timing samples")
    bad = [x for x in samples_ms if not (math.isfinite(x) and x >= 0)]
    if bad:
        raise InvalidSamples(f"{len(bad)} of {len(samples_ms)} timing samples are negative or not finite "
                             f"(first: {bad[0]!r} ms): the timer's events or clock cannot be trusted")
    median = percentile(sorted(samples_ms), 50)
    if not median > 0:
        raise InvalidSamples(f"the median of {len(samples_ms)} timing samples is 0 ms: the call ran no work "
                             "between its events (nothing was timed)")


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


# --- the median's confidence interval (noise-aware sampling) --------------------------------------
CONFIDENCE = 0.95
_EXACT_UP_TO = 4000  # sample counts above this use the normal approximation of the binomial


@lru_cache(maxsize=None)
def median_ci_ranks(n: int, confidence: float = CONFIDENCE) -> tuple[int, int] | None:
    """1-based ranks (k, n + 1 − k) of the order statistics that bound the median with at least
    ``confidence``, whatever the distribution: the number of samples below the true median is
    Binomial(n, ½), so [x_(k), x_(n+1−k)] misses it with probability 2·P(B ≤ k − 1). The largest such k;
    None when n is too small for any interval at that confidence (n < 6 at 95%)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence: must be in (0, 1), got {confidence}")
    if n < 1:
        return None
    tail = Fraction(1 - confidence) / 2
    if n > _EXACT_UP_TO:
        z = NormalDist().inv_cdf(1 - float(tail))
        k = math.floor((n - z * math.sqrt(n)) / 2)  # P(B <= k - 1) <= tail, normal approximation
        return (k, n + 1 - k) if k >= 1 else None
    limit = tail * (1 << n)          # compare exact integers: P(B <= j) = sum C(n, i) / 2^n
    cumulative, term, k = 0, 1, 0    # term = C(n, j)
    for j in range(n // 2 + 1):
        cumulative += term
        if cumulative > limit:
            break
        k = j + 1                    # P(B <= k - 1) <= tail
        term = term * (n - j) // (j + 1)
    return (k, n + 1 - k) if k >= 1 else None


def median_ci(samples: list[float], confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The distribution-free confidence interval of the median (order statistics); None when there
    are too few samples for one."""
    ranks = median_ci_ranks(len(samples), confidence)
    if ranks is None:
        return None
    s = sorted(samples)
    return s[ranks[0] - 1], s[ranks[1] - 1]


def noise_pct(samples: list[float], confidence: float = CONFIDENCE) -> float | None:
    """Half the width of the median's confidence interval, in % of the median (nvbench's "noise", with
    a distribution-free interval in place of a standard deviation); None with too few samples."""
    ci = median_ci(samples, confidence)
    if ci is None:
        return None
    median = percentile(sorted(samples), 50)
    if not median > 0:
        return None
    return 100.0 * (ci[1] - ci[0]) / 2 / median
