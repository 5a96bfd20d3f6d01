"""Is a change between two timing sample sets real, or within noise?

The one implementation used by ``flashbench compare`` and ``flashbench check``. Two tests on the
raw samples recorded in results.json:

* ``intervals``: the p20–p80 intervals of the two sample sets do not overlap;
* ``rank``: a two-sided Mann-Whitney U test (normal approximation with tie and continuity
  corrections) rejects "same distribution" at ``alpha``;
* ``both`` (the default): both of the above. Disjoint intervals alone can come from three samples
  each; a rank test alone flags a 0.5% shift as "significant" given a thousand samples. Requiring
  both keeps the gate quiet on noise without hiding real shifts.

Records without raw samples (a CSV-only run) fall back to their recorded p20/p80.

Samples inside one run are far more alike than runs are to each other (clocks, placement,
allocator, other processes change between runs, not between samples), so these tests alone call
run-to-run drift "significant". :func:`run_to_run` adds the between-run part, from the medians of
the rounds each side holds (``flashbench run --rounds N``, or baselines merged from several runs),
or, when both sides hold one round, from an assumed margin; the gate needs both parts to agree.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

from ..measure.stats import percentile
from ..results.rounds import median_of

NoiseMethod = Literal["intervals", "rank", "both"]
NOISE_METHODS = ("intervals", "rank", "both")
DEFAULT_ALPHA = 0.01


@dataclass(frozen=True)
class NoiseVerdict:
    beyond_noise: bool
    method: str                      # the test that decided: intervals | rank | both | unknown
    intervals_overlap: bool | None   # None: no intervals known
    p_value: float | None            # None: rank test not run (no raw samples)
    note: str = ""                   # e.g. "no samples recorded"

    def details(self) -> list[str]:
        """What the tests saw: "p20–p80 disjoint", "p=0.0002"."""
        parts = []
        if self.intervals_overlap is not None:
            parts.append("p20–p80 overlap" if self.intervals_overlap else "p20–p80 disjoint")
        if self.p_value is not None:
            parts.append(f"p={self.p_value:.2g}")
        return parts

    def describe(self) -> str:
        if self.method == "unknown":
            return self.note or "noise unknown"
        parts = self.details()
        return ("beyond noise" if self.beyond_noise else "within noise") + (f" ({', '.join(parts)})" if parts else "")


def interval(samples: Sequence[float]) -> tuple[float, float]:
    s = sorted(samples)
    return percentile(s, 20), percentile(s, 80)


def intervals_overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def _average_ranks(values: list[float]) -> tuple[list[float], float]:
    """Ranks (1-based, ties get their average rank) and the tie term Σ(t³ − t)."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    ties = 0.0
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        avg = (i + j) / 2 + 1
        for k in range(i, j + 1):
            ranks[order[k]] = avg
        t = j - i + 1
        ties += t ** 3 - t
        i = j + 1
    return ranks, ties


def mann_whitney_u(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Two-sided Mann-Whitney U test: (U of ``a``, p-value), normal approximation with tie and
    continuity corrections (matches ``scipy.stats.mannwhitneyu(method="asymptotic")``)."""
    n1, n2 = len(a), len(b)
    if n1 == 0 or n2 == 0:
        raise ValueError("the rank test needs samples on both sides")
    ranks, ties = _average_ranks([*a, *b])
    u1 = sum(ranks[:n1]) - n1 * (n1 + 1) / 2
    n = n1 + n2
    mu = n1 * n2 / 2
    var = n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1))) if n > 1 else 0.0
    if var <= 0:  # every value equal
        return u1, 1.0
    z = (abs(u1 - mu) - 0.5) / math.sqrt(var)
    p = math.erfc(max(z, 0.0) / math.sqrt(2))
    return u1, min(1.0, p)


def beyond_noise(old_samples: Sequence[float] | None, new_samples: Sequence[float] | None,
                 method: NoiseMethod = "both", alpha: float = DEFAULT_ALPHA,
                 old_interval: tuple[float, float] | None = None,
                 new_interval: tuple[float, float] | None = None) -> NoiseVerdict:
    """Decide whether two sample sets differ beyond noise.

    ``old_interval``/``new_interval`` (p20, p80) are used when raw samples are missing.
    """
    if method not in NOISE_METHODS:
        raise ValueError(f"unknown noise method {method!r} (choose from {', '.join(NOISE_METHODS)})")
    old_samples = [x for x in (old_samples or []) if x is not None and math.isfinite(x)]
    new_samples = [x for x in (new_samples or []) if x is not None and math.isfinite(x)]
    ia = interval(old_samples) if old_samples else old_interval
    ib = interval(new_samples) if new_samples else new_interval
    overlap = intervals_overlap(ia, ib) if ia is not None and ib is not None and None not in (*ia, *ib) else None
    p = mann_whitney_u(old_samples, new_samples)[1] if old_samples and new_samples else None
    if method == "intervals" or (method == "both" and p is None):
        if overlap is None:
            return NoiseVerdict(False, "unknown", None, p, "no samples recorded: noise unknown")
        return NoiseVerdict(not overlap, "intervals", overlap, p)
    if p is None:
        return NoiseVerdict(False, "unknown", overlap, None, "no raw samples: rank test impossible")
    if method == "rank":
        return NoiseVerdict(p < alpha, "rank", overlap, p)
    return NoiseVerdict(bool(overlap is False and p < alpha), "both", overlap, p)


@dataclass(frozen=True)
class RunToRun:
    """Is a change of the median past the run-to-run noise of both sides?"""

    beyond: bool
    basis: str          # rounds | baseline rounds | current rounds | margin | none (not tested)
    spread: float       # the relative spread used: of the rounds, or the margin
    allowed: float      # the relative change of the median the noise admits, in the direction it moved

    def describe(self) -> str:
        if self.basis == "none":
            return ""
        if self.basis == "margin":
            return f"one round each: noise within-run only, single-round margin {self.spread * 100:.0f}%"
        return f"{self.basis} spread {self.spread * 100:.1f}%: noise up to {self.allowed * 100:+.1f}%"


def _spread(medians: Sequence[float]) -> float | None:
    """(max − min) / median of the round medians; None with fewer than two rounds."""
    if len(medians) < 2:
        return None
    return (max(medians) - min(medians)) / median_of(list(medians))


def run_to_run(old_rounds: Sequence[float], new_rounds: Sequence[float], margin: float | None) -> RunToRun:
    """The between-run test on the round medians of one case (lower is better: times).

    A side with two rounds or more brings its range [min, max] and its spread (max − min) / median.
    The new median must lie outside the old rounds' range, widened by the larger spread of the two
    sides (the run-to-run noise of both): slower when ``median_new > max_old × (1 + spread)``,
    faster when ``median_new × (1 + spread) < min_old``. A side with one round has no range (its
    median stands in) and no spread: the other side's spread stands in, and when neither side has
    rounds ``margin`` does (None: the between-run part is not tested and passes).

    Three rounds a side call about 1% of unchanged cases slower by this test alone (normal round
    medians, simulated); two rounds, about 7%; the threshold and the within-run tests come on top.
    """
    old = [x for x in old_rounds if x is not None and math.isfinite(x)]
    new = [x for x in new_rounds if x is not None and math.isfinite(x)]
    if not old or not new:
        return RunToRun(False, "none", math.nan, math.nan)
    med_old, med_new = median_of(old), median_of(new)
    spreads = {"baseline rounds": _spread(old), "current rounds": _spread(new)}
    known = [x for x in spreads.values() if x is not None]
    spread = max(known) if known else None
    basis = "rounds" if len(known) == 2 else next((k for k, x in spreads.items() if x is not None), "")
    if spread is None:
        if margin is None:
            return RunToRun(True, "none", math.nan, math.nan)
        spread, basis = margin, "margin"
    if med_new >= med_old:
        bound = max(old) * (1 + spread)
        return RunToRun(med_new > bound, basis, spread, bound / med_old - 1)
    bound = min(old) / (1 + spread)
    return RunToRun(med_new < bound, basis, spread, bound / med_old - 1)


@dataclass(frozen=True)
class CaseNoise:
    """Both parts of the noise test of one case: the change counts when both call it real."""

    within: NoiseVerdict
    between: RunToRun

    @property
    def beyond_noise(self) -> bool:
        return self.within.beyond_noise and self.between.beyond

    def describe(self) -> str:
        between = self.between.describe()
        if not between:
            return self.within.describe()
        word = "beyond noise" if self.beyond_noise else "within noise"
        within = self.within.details() if self.within.method != "unknown" else [self.within.describe()]
        return f"{word} ({'; '.join([', '.join(within), between] if within else [between])})"
