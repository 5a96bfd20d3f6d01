"""The CI regression gate behind ``flashbench check``.

A case regresses when a gated metric (:func:`flashbench.model.metrics.gated_metrics`) changes past
its threshold AND, for timing metrics, beyond noise (changes under the metric's floor, e.g.
``min_abs_ms``, never count); a status that got worse (``STATUS_RANK``) always fails; a case missing
from the current run, or measured in the baseline but skipped now, is reported, and fails with ``require_all``. A gate that compared nothing (the
current run has no records, or shares no case with the baseline) or whose current run did not finish
is not a pass: :attr:`GateReport.not_judged` says why, and the exit code is 3 (1 when a regression
was found all the same). Pure: runs in, a
:class:`GateReport` out; :mod:`flashbench.report.gate_report` renders it (markdown, JUnit XML, a
DataFrame).

Beyond noise means beyond both kinds (:func:`flashbench.analysis.compare.timing_verdict`, the
one definition ``flashbench compare`` uses too): the within-run tests on the samples (p20–p80
intervals, rank test) and the run-to-run noise. The run-to-run band of a case is the widest of
(a) its own rounds' range widened by their spread, (b) the single-round margin scaled to the rounds,
``single_round_margin · sqrt((1/n_old + 1/n_new) / 2)`` (:func:`flashbench.analysis.noise.rounds_margin`:
round medians are heavy-tailed, and without it most unchanged sweeps gated with a one-round CI run
raised a false alarm) and (c) the pooled band ``z · σ · sqrt(1/n_old + 1/n_new)`` on
``|log(median_new / median_old)|``: σ is the backend's
run-to-run noise pooled over the round medians of every case compared on timing
(:func:`flashbench.analysis.compare.pooled_noise`, computed once per gate; only from
``MIN_POOLED_DOF`` degrees of freedom on), z the normal quantile of ``1 − family_alpha / M`` over
the M cases compared (the thresholds' ``noise.family_alpha``: the chance that an unchanged sweep
raises any false alarm from this test, were round medians normal; they are not, hence (b)). When
both sides of a case hold a single round the run-to-run noise is unknown: the thresholds'
``single_round_margin`` stands in for it and no pooled band applies; on a CPU (where that margin
is 150%) a backend slower over all its cases fails as a whole (:mod:`flashbench.analysis.backend_shift`).
``tools/gate_false_alarms.py`` measures the false-alarm rate on runs of unchanged code.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from ..model.case import Case
from ..model.metrics import LATENCY, Metric, factor_text, gated_metrics, judged_rate
from .backend_shift import BackendShift, backend_shifts
from .clocks import ClockChange, clock_change
from .noise import PooledNoise, RunToRun
from .compare import (EnvDifference, NotComparableError, environment_differences, gpu_model, join_runs, pooled_noise,
                      timing_verdict)
from ..results.files import Run
from ..model.schema import STATUS_RANK
from ..results.rounds import MEASURED_STATUSES
from .thresholds import Limits, Thresholds, single_round_margin, unit_margin

# outcomes, worst first
OUTCOMES = ("status", "regression", "missing", "improved", "new", "pass")


@dataclass
class MetricCheck:
    metric: Metric
    old: float
    new: float
    change: float               # relative: new/old - 1 (positive = more time / more TFLOP/s / more memory)
    threshold: float | None
    beyond_noise: bool | None   # None: not tested (an exact metric)
    noise: str                  # the noise verdict in words
    regression: bool
    improvement: bool
    ignored: str = ""           # why a change past the threshold did not count: "floor" | "noise" | ""
    floor_change: float = 0.0   # the absolute change held against the floor (ms for timing metrics)
    floor: float = 0.0          # the floor (the limit named by metric.floor_key)
    between: RunToRun | None = None  # the run-to-run part of the noise test (timing metrics)

    def words(self) -> str:
        """"9.8% slower", "3.2% fewer TFLOP/s", "12.0% more memory"; factors from 2x on ("418.49x slower")."""
        worse, better = self.metric.words
        word = worse if self.metric.worse_by(self.change) > 0 else better
        ratio = 1 + self.change
        if not math.isfinite(ratio):
            return f"{word} (baseline 0)"
        if ratio >= 2 or 0 < ratio <= 0.5:
            amount = f"{factor_text(max(ratio, 1 / ratio))}x"
        else:
            amount = f"{abs(self.change) * 100:.1f}%"
            if amount == "0.0%":
                return "unchanged"
        return f"{amount} {word}"


@dataclass
class CaseResult:
    key: dict
    outcome: str                # one of OUTCOMES
    failed: bool
    old_status: str | None
    new_status: str | None
    checks: list[MetricCheck] = field(default_factory=list)
    message: str = ""
    rounds: tuple[int, int] | None = None   # rounds each side holds (baseline, current), for measured cases
    clock: ClockChange | None = None        # the SM clock on each side, where both runs recorded it

    @property
    def backend(self) -> str:
        return self.key["backend"]


@dataclass
class GateReport:
    baseline_label: str
    current_label: str
    cases: list[CaseResult]
    differences: list[EnvDifference]
    warnings: list[str]
    require_all: bool
    thresholds_source: str = ""
    not_judged: list[str] = field(default_factory=list)  # why the gate cannot pass whatever it compared
    pooled: PooledNoise | None = None  # the run-to-run noise pooled per backend over the compared cases
    shifts: list[BackendShift] = field(default_factory=list)  # per backend, CPU runs of one round each

    def count(self, outcome: str) -> int:
        return sum(c.outcome == outcome for c in self.cases)

    def per_backend(self, outcome: str) -> dict[str, int]:
        """Cases with this outcome per backend, in order of appearance ("missing": measured only in
        the baseline, absent from the current run or skipped there; "new": only in the current run)."""
        counts: dict[str, int] = {}
        for c in self.cases:
            if c.outcome == outcome:
                counts[c.backend] = counts.get(c.backend, 0) + 1
        return counts

    @property
    def compared(self) -> list[CaseResult]:
        """The cases present in both runs."""
        return [c for c in self.cases if c.outcome not in ("missing", "new")]

    def _between_runs(self) -> list[RunToRun]:
        """The run-to-run tests of every timing check made."""
        return [m.between for c in self.cases for m in c.checks if m.between is not None]

    @property
    def single_round_margins(self) -> list[float]:
        """The margins that stood in for unknown run-to-run noise (cases with one round on each side)."""
        return sorted({b.spread for b in self._between_runs() if b.basis == "margin"})

    @property
    def unit_margins(self) -> list[float]:
        """The unit margins applied (the runs came from two units of one GPU model)."""
        return sorted({b.unit_margin for b in self._between_runs() if b.unit_margin is not None})

    @property
    def rounds_margins(self) -> list[float]:
        """The single-round margins scaled to the rounds that cases with rounds were held to."""
        return sorted({b.rounds_margin for b in self._between_runs() if b.rounds_margin is not None})

    @property
    def single_round_unit_margins(self) -> list[float]:
        """The unit margins that stood in for unknown run-to-run noise (one round on each side, two units)."""
        return sorted({b.spread for b in self._between_runs() if b.basis == "unit margin"})

    @property
    def failures(self) -> list[CaseResult]:
        return [c for c in self.cases if c.failed]

    @property
    def failed_shifts(self) -> list[BackendShift]:
        return [s for s in self.shifts if s.failed]

    @property
    def failed(self) -> bool:
        """A regression, a worse status or a backend slower as a whole."""
        return bool(self.failures or self.failed_shifts)

    @property
    def passed(self) -> bool:
        return not self.failed and not self.not_judged

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 3 if self.not_judged else 0


def _finite(x) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x)) and pd.notna(x)


def _values(r, column: str) -> tuple[float, float] | None:
    old, new = r[f"{column}_old"], r[f"{column}_new"]
    return (float(old), float(new)) if _finite(old) and _finite(new) else None


def _rounds(value) -> int:
    """A row's rounds (files from before rounds hold one)."""
    return int(value) if _finite(value) else 1


def gated_for(metrics: list[Metric], workload: str) -> list[tuple[Metric, str]]:
    """(metric, its thresholds key) for each gated metric of a case: a decode case's rate is its GB/s (the rate
    decode is read in, :func:`~flashbench.model.metrics.judged_rate`) under the rate's key ``tflops``: the same
    ratio of median times as TFLOP/s, so one threshold serves both."""
    rate = judged_rate([workload])
    return [(rate if m.gate_key == "tflops" else m, m.gate_key) for m in metrics]


def _check(m: Metric, r, limits: Limits, verdict, key: str) -> MetricCheck | None:
    """One gated metric of one case measured ok in both runs, under thresholds key ``key``; None when it is
    not checked."""
    threshold = getattr(limits, key)
    values = _values(r, m.column)
    if threshold is None or values is None:
        return None
    old, new = values
    floor = getattr(limits, m.floor_key) if m.floor_key else 0
    if m.timing:
        # a timing metric is measured only when time is: its floor is on the change of the median time
        times = _values(r, LATENCY.column)
        if times is None or times[0] <= 0 or old <= 0:
            return None
        real, noise, floor_change = verdict.beyond_noise, verdict.describe(), abs(times[1] - times[0])
        between = verdict.between
    else:
        real, noise, floor_change, between = True, "exact", abs(new - old), None
    change = new / old - 1 if old > 0 else (math.inf if new > 0 else 0.0)
    past = m.worse_by(change) > threshold
    better = m.worse_by(change) < -threshold
    tiny = floor_change < floor
    ignored = "floor" if (past or better) and tiny else ("noise" if (past or better) and not real else "")
    return MetricCheck(m, old, new, change, threshold, real if m.timing else None, noise,
                       past and real and not tiny, better and real and not tiny, ignored, floor_change, floor, between)


def check_runs(baseline: Run, current: Run, thresholds: Thresholds | None = None, require_all: bool = False,
               baseline_label: str = "baseline", current_label: str = "current",
               thresholds_source: str = "") -> GateReport:
    """Gate ``current`` against ``baseline``. Raises :class:`NotComparableError` when the runs are
    from different GPU models or schema versions (exit code 3)."""
    thresholds = thresholds or Thresholds()
    diffs = environment_differences(baseline.meta, current.meta)
    blocking = [d for d in diffs if d.kind in ("gpu", "schema")]
    if blocking:
        raise NotComparableError([f"{d.message()}: timings are not comparable; record a baseline on this GPU "
                                  f"(flashbench baseline save)" for d in blocking])
    warnings = list(current.meta.get("warnings") or [])
    joined = join_runs(baseline, current)
    pooled = pooled_noise(joined, thresholds.noise.family_alpha)
    device = (current.meta.get("environment") or {}).get("device")  # "cpu" or a CUDA device
    other_unit = any(d.kind == "device" for d in diffs)  # two units of one GPU model
    metrics = gated_metrics()
    cases = []
    for _, r in joined.iterrows():
        case = Case.from_values(r)
        key = {"backend": r["backend"], **case.as_dict()}
        if r["_merge"] == "left_only":
            cases.append(CaseResult(key, "missing", require_all, r["status_old"], None,
                                    message=f"missing from the current run (baseline: {r['status_old']})"))
            continue
        if r["_merge"] == "right_only":
            cases.append(CaseResult(key, "new", False, None, r["status_new"], message="not in the baseline"))
            continue
        so, sn = r["status_old"], r["status_new"]
        if so == "ok" and sn == "skipped":  # measured before, not now (a backend that lost its kernels skips every
            # case): as missing as a case absent from the run, never a silent pass
            reason = f": {r['reason_new']}" if isinstance(r["reason_new"], str) and r["reason_new"] else ""
            cases.append(CaseResult(key, "missing", require_all, so, sn,
                                    message=f"skipped in the current run (baseline: ok){reason}"))
            continue
        limits = thresholds.for_case(key["backend"], case)
        # rows whose timings are compared: a mismatch row is timed too, and with correctness not gated
        # its timing is all that is gated (a case gone wrong and 2x slower must not pass unseen)
        timed = ("ok",) if limits.correctness else MEASURED_STATUSES
        note = ""
        if STATUS_RANK.get(sn, 3) > STATUS_RANK.get(so, 3):
            reason = f": {r['reason_new']}" if isinstance(r["reason_new"], str) and r["reason_new"] else ""
            note = f"status got worse: {so} → {sn}{reason}"
            if not (sn in timed and so in timed):
                failed = not (sn == "mismatch" and not limits.correctness)
                cases.append(CaseResult(key, "status" if failed else "pass", failed, so, sn,
                                        message=note + ("" if failed else " (correctness not gated for this case)")))
                continue
            note += " (correctness not gated for this case)"
        if not (so in timed and sn in timed):
            msg = "" if so == sn == "skipped" else (f"not compared: {so} → {sn}" if so != sn else f"not compared: {sn}")
            cases.append(CaseResult(key, "pass", False, so, sn, message=msg))
            continue
        old_ms, new_ms = r[f"{LATENCY.column}_old"], r[f"{LATENCY.column}_new"]
        if _finite(old_ms) and not _finite(new_ms):  # an edited or cut file: its time cannot pass unseen
            cases.append(CaseResult(key, "missing", require_all, so, sn,
                                    message=f"no median time in the current run (baseline: {float(old_ms):.4g} ms): "
                                            "its timing was not compared"))
            continue
        verdict = timing_verdict(r, thresholds.noise.method, thresholds.noise.alpha,
                                 single_round_margin(limits, device), pooled, unit_margin(limits, device, other_unit))
        checks = [c for c in (_check(m, r, limits, verdict, key) for m, key in gated_for(metrics, case.workload))
                  if c is not None]
        regressed = [m for m in checks if m.regression]
        improved = [m for m in checks if m.improvement]
        rounds, clock = (_rounds(r["rounds_old"]), _rounds(r["rounds_new"])), clock_change(r)
        if regressed:
            message = "; ".join(f"{m.words()} (threshold {m.threshold * 100:.0f}%)" for m in regressed)
            cases.append(CaseResult(key, "regression", True, so, sn, checks, _joined(message, note), rounds, clock))
        elif improved:
            cases.append(CaseResult(key, "improved", False, so, sn, checks,
                                    _joined("; ".join(m.words() for m in improved), note), rounds, clock))
        else:
            cases.append(CaseResult(key, "pass", False, so, sn, checks, note, rounds=rounds, clock=clock))
    return GateReport(baseline_label, current_label, cases, [d for d in diffs if d.kind not in ("gpu", "schema")],
                      warnings, require_all, thresholds_source, _not_judged(current, current_label, cases), pooled,
                      backend_shifts(cases, thresholds, device))


def _joined(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def _not_judged(current: Run, label: str, cases: list[CaseResult]) -> list[str]:
    """Why comparing ``current`` cannot be a pass: nothing was compared, or the run is unfinished."""
    reasons = []
    if not current.records:
        reasons.append(f"{label} has no records: nothing was compared")
    elif not any(c.outcome not in ("missing", "new") for c in cases):
        reasons.append(f"{label} measured no case the baseline measured ({sum(c.outcome == 'missing' for c in cases)} "
                       f"baseline cases missing or skipped, {sum(c.outcome == 'new' for c in cases)} not in the "
                       "baseline): nothing was compared")
    if current.meta.get("finished") is False:
        total = current.meta.get("tasks_total")
        rows = f"{len(current.records)} of {total}" if total else f"{len(current.records)}"
        reasons.append(f"{label} did not finish (finished: false, {rows} tasks have rows): finish it with "
                       f"flashbench run CONFIG --resume {label}, then gate it")
    return reasons


__all__ = ["check_runs", "GateReport", "CaseResult", "MetricCheck", "BackendShift", "NotComparableError", "gpu_model"]
