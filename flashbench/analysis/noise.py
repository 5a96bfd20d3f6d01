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

The between-run band of a case is the widest of three:

* its own rounds: the new median must leave the old rounds' range widened by their spread
  (max − min) / median (see :func:`run_to_run`);
* the single-round margin scaled to the rounds (:func:`rounds_margin`), when the caller gives a
  margin (the gate does; ``flashbench compare`` does not): round medians are heavy-tailed, so a
  normal band from σ alone admits far less than the rare throttled round moves;
* the pooled band (:func:`pool_rounds`): the run-to-run σ of the case's backend, pooled over the
  rounds of every case compared on timing, and a z that covers all of them at once. The change must
  pass ``|log(median_new / median_old)| > z · σ · sqrt(1/n_old + 1/n_new)`` (n: the rounds each side
  holds), with ``z`` the standard normal quantile of ``1 − family_alpha / M`` over the M cases
  compared (Bonferroni: an unchanged sweep raises a false alarm from this test on any of its M
  cases with probability at most ``family_alpha``, one-sided: the gate fails on slowdowns).

Three round medians a case are a poor estimate of that case's noise (three can land close by luck),
and with hundreds of cases tested at once some case sits in the tail: the pooled σ, from a backend's
hundreds of degrees of freedom, is the estimate to trust, and a case whose own rounds spread wider
keeps its wider band. The pooled band applies only when at least one side of the case holds two
rounds or more (otherwise the single-round margin decides, as there is nothing of this case's kind
to pool) and the backend's pool has at least :data:`MIN_POOLED_DOF` degrees of freedom.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from statistics import NormalDist
from typing import Iterable, Literal, Sequence

from ..measure.stats import percentile
from ..results.rounds import median_of

NoiseMethod = Literal["intervals", "rank", "both"]
NOISE_METHODS = ("intervals", "rank", "both")
DEFAULT_ALPHA = 0.01
# the chance that an unchanged sweep raises any false alarm from the pooled run-to-run test
DEFAULT_FAMILY_ALPHA = 0.05
# A pooled σ from fewer degrees of freedom is itself too uncertain to set a band on: with 10 the
# estimate's relative standard error is about 1/sqrt(2·10) ≈ 22% (so z·σ may be a fifth too
# narrow); below that the cases' own rounds decide alone. Three rounds a case give 2 per case:
# five cases of a backend suffice.
MIN_POOLED_DOF = 10


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
        if self.note and self.method != "unknown":
            parts.append(self.note)
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


def smallest_p(n1: int, n2: int) -> float:
    """The smallest p-value :func:`mann_whitney_u` can give for ``n1`` and ``n2`` samples (every sample
    of one side below every one of the other, no ties): 0.012 for five samples a side, above the
    default alpha of 0.01, so with that few the rank test can never call a change real."""
    if n1 == 0 or n2 == 0:
        return 1.0
    n = n1 + n2
    z = (n1 * n2 / 2 - 0.5) / math.sqrt(n1 * n2 * (n + 1) / 12)
    return min(1.0, math.erfc(max(z, 0.0) / math.sqrt(2)))


def beyond_noise(old_samples: Sequence[float] | None, new_samples: Sequence[float] | None,
                 method: NoiseMethod = "both", alpha: float = DEFAULT_ALPHA,
                 old_interval: tuple[float, float] | None = None,
                 new_interval: tuple[float, float] | None = None) -> NoiseVerdict:
    """Decide whether two sample sets differ beyond noise.

    ``old_interval``/``new_interval`` (p20, p80) are used when raw samples are missing, and the
    intervals decide alone when the samples are too few for the rank test ever to reach ``alpha``
    (:func:`smallest_p`: a run of five samples a case would otherwise never fail the gate).
    """
    if method not in NOISE_METHODS:
        raise ValueError(f"unknown noise method {method!r} (choose from {', '.join(NOISE_METHODS)})")
    old_samples = [x for x in (old_samples or []) if x is not None and math.isfinite(x)]
    new_samples = [x for x in (new_samples or []) if x is not None and math.isfinite(x)]
    ia = interval(old_samples) if old_samples else old_interval
    ib = interval(new_samples) if new_samples else new_interval
    overlap = intervals_overlap(ia, ib) if ia is not None and ib is not None and None not in (*ia, *ib) else None
    p = mann_whitney_u(old_samples, new_samples)[1] if old_samples and new_samples else None
    if p is not None and method != "intervals" and smallest_p(len(old_samples), len(new_samples)) >= alpha:
        # samples on both sides: their intervals are known
        return NoiseVerdict(not overlap, "intervals", overlap, p,
                            f"{len(old_samples)} and {len(new_samples)} samples: too few for the rank test "
                            f"to reach p < {alpha:g}, the p20–p80 intervals decide")
    if method == "intervals" or (method == "both" and p is None):
        if overlap is None:
            return NoiseVerdict(False, "unknown", None, p, "no samples recorded: noise unknown")
        return NoiseVerdict(not overlap, "intervals", overlap, p)
    if p is None:
        return NoiseVerdict(False, "unknown", overlap, None, "no raw samples: rank test impossible")
    if method == "rank":
        return NoiseVerdict(p < alpha, "rank", overlap, p)
    return NoiseVerdict(bool(overlap is False and p < alpha), "both", overlap, p)


def _finite_positive(values: Sequence[float] | None) -> list[float]:
    return [x for x in (values or []) if x is not None and math.isfinite(x) and x > 0]


def pooled_sigma(groups: Iterable[Sequence[float]]) -> tuple[float, int]:
    """(σ, degrees of freedom) of log round medians pooled over groups (one group: one side's
    rounds of one case): ``σ = sqrt(SS / dof)``, SS the sum over groups of the squared deviations
    of each log median from its group's mean, dof the sum of (n − 1). A group of one round adds
    nothing; σ is NaN when dof is 0."""
    ss, dof = 0.0, 0
    for group in groups:
        logs = [math.log(x) for x in _finite_positive(group)]
        if len(logs) < 2:
            continue
        mean = sum(logs) / len(logs)
        ss += sum((x - mean) ** 2 for x in logs)
        dof += len(logs) - 1
    return (math.sqrt(ss / dof) if dof else math.nan), dof


def family_z(family_alpha: float, cases: int) -> float:
    """The one-sided standard normal quantile of ``1 − family_alpha / cases`` (Bonferroni)."""
    return NormalDist().inv_cdf(1 - family_alpha / max(cases, 1))


@dataclass(frozen=True)
class PooledNoise:
    """Run-to-run noise pooled per backend over the round medians of the cases compared."""

    sigma: dict[str, float]        # backend -> pooled σ of log round medians (only dof >= MIN_POOLED_DOF)
    dof: dict[str, int]            # backend -> degrees of freedom (every backend, pooled or not)
    cases: dict[str, int]          # backend -> cases compared on timing
    compared: int                  # M: cases compared on timing, all backends
    z: float                       # family_z(family_alpha, compared)
    family_alpha: float = DEFAULT_FAMILY_ALPHA

    def sigma_of(self, backend: str) -> float | None:
        """The backend's pooled σ; None when its pool is too small to trust."""
        return self.sigma.get(backend)

    def describe(self) -> str:
        """"flex 0.56% (16 cases), sdpa 0.93% (96 cases); too few rounds to pool: naive"."""
        used = ", ".join(f"{b} {s * 100:.2f}% ({self.cases[b]} cases)" for b, s in self.sigma.items())
        unused = ", ".join(b for b in self.cases if b not in self.sigma)
        return "; ".join(x for x in (used, unused and f"too few rounds to pool: {unused}") if x)


def pool_rounds(cases: Iterable[tuple[str, Sequence[float], Sequence[float]]],
                family_alpha: float = DEFAULT_FAMILY_ALPHA) -> PooledNoise:
    """:class:`PooledNoise` from ``(backend, old round medians, new round medians)`` of every case
    compared on timing. Each side of a case is a group of its own, so a real change between the
    runs does not inflate the σ it is tested against."""
    groups: dict[str, list[Sequence[float]]] = {}
    counts: dict[str, int] = {}
    for backend, old, new in cases:
        groups.setdefault(backend, []).extend([old, new])
        counts[backend] = counts.get(backend, 0) + 1
    sigma, dof = {}, {}
    for backend, gs in groups.items():
        s, d = pooled_sigma(gs)
        dof[backend] = d
        if d >= MIN_POOLED_DOF:
            sigma[backend] = s
    m = sum(counts.values())
    return PooledNoise(sigma, dof, counts, m, family_z(family_alpha, m), family_alpha)


@dataclass(frozen=True)
class RunToRun:
    """Is a change of the median past the run-to-run noise of both sides?"""

    beyond: bool
    basis: str          # rounds | baseline rounds | current rounds | margin | unit margin | none (not tested)
    spread: float       # the relative spread used: of the rounds, or the margin
    allowed: float      # the relative change of the median the noise admits, in the direction it moved
    rounds_allowed: float = math.nan  # what the case's own rounds (or the margin) admit
    sigma: float | None = None        # the pooled σ, when a pooled band applied
    z: float | None = None
    pooled_allowed: float = math.nan  # what the pooled band admits, in the direction moved
    unit_margin: float | None = None  # the runs came from two units of the GPU model: the least band
    unit_allowed: float = math.nan    # what the unit margin admits, in the direction moved (with rounds)
    rounds_margin: float | None = None  # the single-round margin scaled to the rounds (:func:`rounds_margin`)
    margin_allowed: float = math.nan  # what rounds_margin admits, in the direction moved

    @property
    def decided_by(self) -> str:
        """"unit" when the unit margin was the widest band of a case with rounds, "margin" when the
        scaled single-round margin was the widest of the others, "pooled" when the pooled band was the
        wider of the rest, else the basis."""
        others = [self.rounds_allowed] + ([self.pooled_allowed] if self.sigma is not None else [])
        others += [self.margin_allowed] if self.rounds_margin is not None else []
        if math.isfinite(self.unit_allowed) and abs(self.unit_allowed) >= max(abs(x) for x in others):
            return "unit"
        if self.rounds_margin is not None and abs(self.margin_allowed) >= max(abs(x) for x in others):
            return "margin"
        if self.sigma is not None and abs(self.pooled_allowed) > abs(self.rounds_allowed):
            return "pooled"
        return self.basis

    def describe(self) -> str:
        if self.basis == "none":
            return ""
        if self.basis == "margin":
            return f"one round each: noise within-run only, single-round margin {self.spread * 100:.0f}%"
        if self.basis == "unit margin":
            return (f"one round each, on two units of the GPU model: noise within-run only, unit margin "
                    f"{self.spread * 100:.0f}%")
        if self.decided_by == "unit":
            return (f"noise up to {self.allowed * 100:+.1f}% by the unit margin (two units of the GPU model), wider "
                    f"than the rounds' {self.rounds_allowed * 100:+.1f}%")
        bands = {self.basis: (f"{self.basis} spread {self.spread * 100:.1f}%", self.rounds_allowed)}
        if self.sigma is not None:
            bands["pooled"] = (f"pooled σ {self.sigma * 100:.2f}% × z {self.z:.1f}", self.pooled_allowed)
        if self.rounds_margin is not None:
            bands["margin"] = (f"single-round margin scaled to the rounds {self.rounds_margin * 100:.1f}%",
                               self.margin_allowed)
        if len(bands) == 1:
            return f"{bands[self.basis][0]}: noise up to {self.allowed * 100:+.1f}%"
        wider = bands.get(self.decided_by, bands[self.basis])
        narrower = "; ".join(f"{text}: {x * 100:+.1f}%" for text, x in bands.values() if text != wider[0])
        return f"noise up to {self.allowed * 100:+.1f}% by {wider[0]}, wider than {narrower}"


def _spread(medians: Sequence[float]) -> float | None:
    """(max − min) / median of the round medians; None with fewer than two rounds."""
    if len(medians) < 2:
        return None
    return (max(medians) - min(medians)) / median_of(list(medians))


def run_to_run(old_rounds: Sequence[float], new_rounds: Sequence[float], margin: float | None,
               sigma: float | None = None, z: float | None = None, unit_margin: float | None = None) -> RunToRun:
    """The between-run test on the round medians of one case (lower is better: times).

    Its own rounds: a side with two rounds or more brings its range [min, max] and its spread
    (max − min) / median. The new median must lie outside the old rounds' range, widened by the
    larger spread of the two sides (the run-to-run noise of both): slower when
    ``median_new > max_old × (1 + spread)``, faster when ``median_new × (1 + spread) < min_old``. A
    side with one round has no range (its median stands in) and no spread: the other side's spread
    stands in, and when neither side has rounds ``margin`` does (None: the between-run part is not
    tested and passes).

    The pooled band: given the backend's pooled ``sigma`` and the family-wise ``z``
    (:func:`pool_rounds`), and when at least one side holds two rounds or more, the change must
    also pass ``|log(median_new / median_old)| > z · sigma · sqrt(1/n_old + 1/n_new)``. The change
    counts only past both bands, i.e. past the wider; with one round on both sides no pooled band
    applies (the margin decides). With rounds on either side, ``margin`` (when given) scaled to the
    rounds (:func:`rounds_margin`) is a third band the change must pass.

    Three rounds a side call about 1% of unchanged cases slower by the own-rounds test alone (normal
    round medians, simulated): over hundreds of cases that is several false alarms, which the pooled
    band bounds to ``family_alpha`` for the whole sweep.

    ``unit_margin``: the runs were measured on two units of one GPU model. Each run's rounds share its
    unit, so neither its rounds nor the pooled band hold what one unit differs from another under load:
    the change must also pass this relative amount (with one round each, the larger of it and
    ``margin`` stands in for the noise).
    """
    old = [x for x in old_rounds if x is not None and math.isfinite(x)]
    new = [x for x in new_rounds if x is not None and math.isfinite(x)]
    if not old or not new:
        return RunToRun(False, "none", math.nan, math.nan)
    if unit_margin is None:
        return _run_to_run(old, new, margin, sigma, z)
    if len(old) < 2 and len(new) < 2:  # one round each: the wider margin stands in for the noise
        if margin is not None and margin > unit_margin:
            return _run_to_run(old, new, margin, sigma, z)
        return replace(_run_to_run(old, new, unit_margin, sigma, z), basis="unit margin", unit_margin=unit_margin)
    v = _run_to_run(old, new, margin, sigma, z)
    med_old, med_new = median_of(old), median_of(new)
    slower = med_new >= med_old
    unit_allowed = unit_margin if slower else 1 / (1 + unit_margin) - 1
    past_unit = med_new > med_old * (1 + unit_margin) if slower else med_new * (1 + unit_margin) < med_old
    allowed = max(v.allowed, unit_allowed) if slower else min(v.allowed, unit_allowed)
    return replace(v, beyond=v.beyond and past_unit, allowed=allowed, unit_margin=unit_margin,
                   unit_allowed=unit_allowed)


def rounds_margin(margin: float, n_old: int, n_new: int) -> float:
    """The single-round margin scaled to the rounds each side holds: ``margin · sqrt((1/n_old + 1/n_new) / 2)``
    (the margin itself for one round each, 82% of it for three against one, 58% for three each).

    Why a case with rounds still needs it: the run-to-run noise of round medians is heavy-tailed. In
    unchanged default sweeps on an H200 (``results/evidence/h200/gate_default/``, the rounds of A and
    B, and of X and Y) half the rounds of a case sit within 0.2% of its median, while 1 in 100 lands
    4-5% away and the widest 6-9% (a throttled round). The pooled σ's normal band covers the first,
    not the second: regrouped into a baseline of two or three rounds against a current run of one,
    most of those unchanged sweeps raised a false alarm. The margin is what one round against one
    admits; a median of more rounds moves less (the same √(1/n_old + 1/n_new) as the pooled band).
    """
    return margin * math.sqrt((1 / n_old + 1 / n_new) / 2)


def _run_to_run(old: list[float], new: list[float], margin: float | None, sigma: float | None,
                z: float | None) -> RunToRun:
    """``run_to_run`` on finite, non-empty round medians, without a unit margin."""
    med_old, med_new = median_of(old), median_of(new)
    spreads = {"baseline rounds": _spread(old), "current rounds": _spread(new)}
    known = [x for x in spreads.values() if x is not None]
    spread = max(known) if known else None
    basis = "rounds" if len(known) == 2 else next((k for k, x in spreads.items() if x is not None), "")
    if spread is None:
        if margin is None:
            return RunToRun(True, "none", math.nan, math.nan)
        spread, basis = margin, "margin"
    slower = med_new >= med_old
    bound = max(old) * (1 + spread) if slower else min(old) / (1 + spread)
    own_beyond = med_new > bound if slower else med_new < bound
    own_allowed = bound / med_old - 1
    v = RunToRun(own_beyond, basis, spread, own_allowed, own_allowed)
    if basis == "margin":
        return v
    if margin is not None:  # the scaled single-round margin: the least band a change of the median must pass
        m = rounds_margin(margin, len(old), len(new))
        past = med_new > med_old * (1 + m) if slower else med_new * (1 + m) < med_old
        margin_allowed = m if slower else 1 / (1 + m) - 1
        v = replace(v, beyond=v.beyond and past, rounds_margin=m, margin_allowed=margin_allowed,
                    allowed=max(v.allowed, margin_allowed) if slower else min(v.allowed, margin_allowed))
    if sigma is None or z is None or not math.isfinite(sigma) or med_old <= 0 or med_new <= 0:
        return v
    band = z * sigma * math.sqrt(1 / len(old) + 1 / len(new))
    pooled_allowed = math.expm1(band if slower else -band)
    allowed = max(v.allowed, pooled_allowed) if slower else min(v.allowed, pooled_allowed)
    beyond = v.beyond and abs(math.log(med_new / med_old)) > band
    return replace(v, beyond=beyond, allowed=allowed, sigma=sigma, z=z, pooled_allowed=pooled_allowed)


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
