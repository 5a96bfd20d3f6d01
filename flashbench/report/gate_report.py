"""Renderings of a :class:`flashbench.analysis.gate.GateReport`: the headline, the markdown summary
(stdout and $GITHUB_STEP_SUMMARY), JUnit XML (one testcase per case) and a DataFrame (json/csv)."""
from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import pandas as pd

from ..model.case import CASE_FIELDS
from ..model.metrics import LATENCY
from .format import compact_shape, format_value, md_cell

# the outcomes the markdown table lists, worst first (missing cases only when they fail)
TABLE_OUTCOMES = ("status", "regression", "missing", "improved")
# failing missing cases listed one by one at most; the rest are counted (all are in --format json)
MAX_MISSING_LISTED = 20
# cases listed per outcome (status, regression, improved), worst first; the rest are counted. A sweep of
# thousands of cases that all moved must not print thousands of rows, nor pass GitHub's 1 MiB limit on
# $GITHUB_STEP_SUMMARY, which the markdown is appended to
MAX_LISTED = 50


def value_text(check, x: float) -> str:
    """A checked metric's value on its own, unit included: "1.33 ms", "64.0 MiB", "138"."""
    return format_value(check.metric, x, with_unit=True)


def note_text(check) -> str:
    """Why a change past its threshold did not count, in words ("" when it counted or none was past)."""
    if check.ignored == "noise":
        return "within noise"
    if check.ignored != "floor":
        return ""
    key = check.metric.floor_key
    if check.metric.timing:  # the floor is on the median time, in ms: µs read better at this size
        return f"change {check.floor_change * 1000:.1f} µs is under {key} ({check.floor * 1000:g} µs)"
    return f"change {format_value(check.metric, check.floor_change, with_unit=True)} is under {key}"


def _span(values: set[int]) -> str:
    return f"{min(values)}" if len(values) == 1 else f"{min(values)}–{max(values)}"


def _percents(fractions, decimals: int = 0) -> str:
    """Relative amounts as one text: [0.1, 0.15] -> "10%/15%", with one decimal "8.2%/7.1%" ("" for none)."""
    return "/".join(f"{m * 100:.{decimals}f}%" for m in fractions)


def _margins(report) -> str:
    """The single-round margins that stood in for run-to-run noise: "90%" ("" when none did)."""
    return _percents(report.single_round_margins)


def pooled_text(report) -> str:
    """The run-to-run noise pooled per backend, once for the whole gate ("" when no case used it):
    "σ of the round medians pooled per backend: sdpa 0.93% (96 cases), ...; z 3.8 for 656 cases"."""
    pooled = report.pooled
    if pooled is None or not any(m.between is not None and m.between.sigma is not None
                                 for c in report.cases for m in c.checks):
        return ""
    return (f"run-to-run σ pooled per backend over the rounds of the cases compared: {pooled.describe()}"
            f". A timing change must pass z {pooled.z:.2f} × σ × √(1/n_baseline + 1/n_current) (n: rounds), "
            f"z for `family_alpha` {pooled.family_alpha:g} over {pooled.compared} cases (the chance that an unchanged "
            f"sweep raises any false alarm from this test), or the case's own rounds' band where that is wider.")


def rounds_text(report) -> str:
    """"3 rounds each", "baseline 3 rounds, current 1", and when a margin stood in for run-to-run
    noise, that the noise estimate is within-run only."""
    pairs = [c.rounds for c in report.compared if c.rounds]
    if not pairs:
        return ""
    old, new = {a for a, _ in pairs}, {b for _, b in pairs}
    if old == new and len(old) == 1:
        n = next(iter(old))
        text = f"{n} round{'' if n == 1 else 's'} each"
    else:
        text = f"baseline {_span(old)} rounds, current {_span(new)}"
    if _margins(report):
        text += f"; noise within-run only, single-round margin {_margins(report)}"
    elif report.single_round_unit_margins:
        text += f"; noise within-run only, unit margin {_percents(report.single_round_unit_margins)}"
    return text


def _only_in(report, outcome: str, where: str) -> str:
    counts = report.per_backend(outcome)
    if not counts:
        return ""
    failing = " (failing: --require-all)" if outcome == "missing" and report.require_all else ""
    return f", {sum(counts.values())} {where}{failing}: " + ", ".join(f"{b} {n}" for b, n in counts.items())


def headline(report) -> str:
    """"PASS: 120 cases compared (3 rounds each), 536 measured only in the baseline: sdpa 100, flex 436, ..."."""
    parts = [f"{report.count(o)} {label}" for o, label in
             (("regression", "regressed"), ("status", "status worse"), ("improved", "improved")) if report.count(o)]
    rounds = rounds_text(report)
    shifted = [s.backend for s in report.failed_shifts]
    if shifted:
        parts.append(f"slower as a whole: {', '.join(shifted)}")
    verdict = "FAIL" if report.failed else "NOT A PASS" if report.not_judged else "PASS"
    text = (f"{verdict}: {len(report.compared)} cases compared" + (f" ({rounds})" if rounds else "")
            + _only_in(report, "missing", "measured only in the baseline") + _only_in(report, "new", "only in the current run")
            + (f", {', '.join(parts)}" if parts else "" if report.not_judged else ", no changes past thresholds"))
    return text + "".join(f"; {why}" for why in report.not_judged)


# the columns of `check --format json|csv`, whatever the report holds (a gate that compared nothing
# still names every column): the case key, the case's outcome, then one metric check per row
GATE_COLUMNS = ("backend", *CASE_FIELDS, "outcome", "failed", "old_status", "new_status", "message", "metric",
                "metric_column", "unit", "old", "new", "change", "threshold", "beyond_noise", "noise", "regression",
                "note", "old_sm_clock_mhz", "new_sm_clock_mhz", "cycles_change")


def _metric_name(check) -> str:
    """A check's metric as reports name it: its thresholds key, or (a decode case's GB/s) its own name."""
    return check.metric.gate_key or check.metric.name


def gate_frame(report) -> pd.DataFrame:
    """One row per case and checked metric (cases without checks: one row, the metric fields empty),
    then a row per backend tested as a whole. ``metric`` is the thresholds file's key (``latency``),
    ``metric_column`` the run's column it checks (``median_ms``, as the metrics table names it) and
    ``unit`` what ``old`` and ``new`` are in; ``change`` is relative (new/old - 1)."""
    rows = []
    for c in report.cases:
        base = {**c.key, "outcome": c.outcome, "failed": c.failed, "old_status": c.old_status,
                "new_status": c.new_status, "message": c.message}
        if c.clock is not None:
            base.update(old_sm_clock_mhz=c.clock.old_mhz, new_sm_clock_mhz=c.clock.new_mhz,
                        cycles_change=c.clock.cycles_change)
        for m in c.checks or [None]:
            row = dict(base)
            if m is not None:
                row.update(metric=_metric_name(m), metric_column=m.metric.column, unit=m.metric.unit, old=m.old,
                           new=m.new, change=m.change, threshold=m.threshold, beyond_noise=m.beyond_noise,
                           noise=m.noise, regression=m.regression, note=note_text(m))
            rows.append(row)
    for shift in report.shifts:  # one row per backend tested as a whole: the geometric mean of its time ratios
        rows.append({"backend": shift.backend, "outcome": "slower_as_a_whole" if shift.failed else "pass",
                     "failed": shift.failed, "metric": "latency_geomean", "metric_column": LATENCY.column,
                     "unit": "ratio", "new": shift.ratio, "old": 1.0, "change": shift.ratio - 1,
                     "threshold": shift.limit, "regression": shift.failed, "message": shift.words()})
    return pd.DataFrame(rows, columns=list(GATE_COLUMNS))




_LABELS = {"status": "❌ status", "regression": "❌ regression", "improved": "🚀 improved", "missing": "❌ missing"}


def clock_words(case) -> str:
    """The SM clock change of a case, when it is worth a reader's attention ("" otherwise)."""
    return case.clock.words() if case.clock is not None and case.clock.notable else ""


def clock_note(report) -> str:
    """How many cases that got slower (a timing metric regressed: peak memory is no clock's doing) ran at a clock
    lower by at least their slowdown ("" when none did)."""
    slower = [c for c in report.cases if c.outcome == "regression" and any(m.regression and m.metric.timing
                                                                            for m in c.checks)]
    slowed = [c for c in slower if c.clock is not None and c.clock.notable and c.clock.clock_change < 0
              and c.clock.cycles_change <= 0]
    if not slowed:
        return ""
    return (f"{len(slowed)} of the {len(slower)} cases that got slower ran at a lower SM clock than in the baseline "
            f"and took no more cycles a call (median ms × SM MHz): the GPU's clock, not the code, may have slowed them")


def _how_far(case) -> float:
    """How far a case moved past its thresholds, in the direction of its outcome (the order of the table)."""
    counted = [m for m in case.checks if (m.regression if case.outcome == "regression" else m.improvement)]
    moves = [abs(m.metric.worse_by(m.change)) for m in counted]
    return max((x for x in moves if not math.isnan(x)), default=0.0)


def gate_markdown(report) -> str:
    icon = "✅" if report.passed else "❌"
    lines = [f"## {icon} flashbench check: {headline(report)}", "",
             f"baseline `{report.baseline_label}` → current `{report.current_label}`"
             + (f"; thresholds `{report.thresholds_source}`" if report.thresholds_source else ""), ""]
    for d in report.differences:
        lines.append(f"> ⚠️ **{d.message()}**" if d.loud else f"> note: {d.message()}")
    for w in report.warnings:
        lines.append(f"> ⚠️ {w}")
    margins = _margins(report)
    if margins:
        lines.append(f"> note: one round per case on both sides, so the noise estimate is within-run only: a timing "
                     f"change counts only past the single-round margin ({margins}, `single_round_margin` in the "
                     f"thresholds file). Runs with rounds (`flashbench run --rounds 3`, "
                     f"or `flashbench baseline save` of several runs) measure the run-to-run noise instead.")
    units = _percents(report.unit_margins)
    if units:
        lines.append(f"> note: the runs come from two units of the GPU model, which differ under load by more than "
                     f"either run's rounds show: a timing change counts only past the unit margin ({units}, "
                     f"`unit_margin` in the thresholds file). Record the baseline on the unit that runs the "
                     f"check to gate finer.")
    scaled = report.rounds_margins
    if scaled:
        lines.append(f"> note: round medians are heavy-tailed (a throttled round moves a case by several %): with "
                     f"rounds, a timing change must also pass the single-round margin scaled to the rounds, "
                     f"√((1/n_baseline + 1/n_current) / 2) of `single_round_margin`: {_percents(scaled, 1)}.")
    pooled = pooled_text(report)
    if pooled:
        lines.append(f"> note: {pooled}")
    clocks = clock_note(report)
    if clocks:
        lines.append(f"> note: {clocks}")
    for shift in report.shifts:
        lines.append(f"> ❌ slower as a whole: {shift.words()}" if shift.failed else f"> note: {shift.words()}")
    for why in report.not_judged:
        lines.append(f"> ❌ not a pass: {why}")
    if report.differences or report.warnings or margins or scaled or pooled or clocks or report.shifts or report.not_judged:
        lines.append("")
    missing = [c for c in report.cases if c.outcome == "missing" and c.failed]
    shown, unlisted = [], {}
    for outcome in ("status", "regression", "improved"):
        cases = sorted((c for c in report.cases if c.outcome == outcome), key=_how_far, reverse=True)
        shown += cases[:MAX_LISTED]
        unlisted[outcome] = len(cases) - len(cases[:MAX_LISTED])
    shown += missing[:MAX_MISSING_LISTED]
    shown.sort(key=lambda c: TABLE_OUTCOMES.index(c.outcome))  # stable: worst first within an outcome
    if shown:
        lines += ["| result | backend | shape | change | baseline | current | threshold | noise |",
                  "|---|---|---|---|---|---|---|---|"]
        for c in shown:
            label = _LABELS[c.outcome] if c.outcome != "missing" or c.failed else "⚠️ missing"
            checks = [m for m in c.checks if (m.regression if c.outcome == "regression" else m.improvement)]
            backend, shape = md_cell(c.backend), md_cell(compact_shape(c.key))
            if checks:
                for m in checks:
                    # beside a timing change, the clock: the GPU's share of it (peak memory is exact, no clock's doing)
                    noise = "; ".join(x for x in (m.noise, clock_words(c) if m.metric.timing else "") if x)
                    lines.append(f"| {label} | {backend} | {shape} | {m.words()} | {value_text(m, m.old)} | "
                                 f"{value_text(m, m.new)} | {m.threshold * 100:.0f}% | {md_cell(noise)} |")
            else:
                lines.append(f"| {label} | {backend} | {shape} | {md_cell(c.message)} | {c.old_status or '–'} | "
                             f"{c.new_status or '–'} | | |")
        for outcome, n in unlisted.items():
            if n:
                lines.append(f"| {_LABELS[outcome]} | | {n} more | the {MAX_LISTED} largest changes are listed "
                             "(every case: --format json or --junit) | | | | |")
        if len(missing) > MAX_MISSING_LISTED:
            lines.append(f"| ❌ missing | | {len(missing) - MAX_MISSING_LISTED} more | missing from (or skipped in) the current run "
                         "(every case: --format json) | | | | |")
        lines.append("")
    return "\n".join(lines) + "\n"


def gate_junit_xml(report) -> str:
    """JUnit XML: one testcase per case key; failures for regressions, worse statuses and (with
    require_all) missing cases; skipped for cases that could not be compared."""
    def skipped(c) -> bool:
        return not c.failed and c.outcome in ("missing", "new") or (c.outcome == "pass" and bool(c.message)
                                                                    and not c.checks)  # not compared

    suite = ET.Element("testsuite", name="flashbench check", tests=str(len(report.cases)),
                       failures=str(len(report.failures)), skipped=str(sum(1 for c in report.cases if skipped(c))))
    for c in report.cases:
        tc = ET.SubElement(suite, "testcase", classname=f"flashbench.{c.backend}", name=compact_shape(c.key))
        detail = "\n".join([f"{_metric_name(m)}: {value_text(m, m.old)} -> {value_text(m, m.new)} ({m.words()}, "
                            f"threshold {m.threshold * 100:.0f}%, {m.noise}){' ' + note_text(m) if note_text(m) else ''}"
                            for m in c.checks] + ([clock_words(c)] if c.checks and clock_words(c) else []))
        if c.failed:
            f = ET.SubElement(tc, "failure", message=c.message, type=c.outcome)
            f.text = detail or c.message
        elif skipped(c):
            ET.SubElement(tc, "skipped", message=c.message)
        elif detail:
            ET.SubElement(tc, "system-out").text = "\n".join(x for x in (c.message, detail) if x)
    for shift in report.failed_shifts:
        tc = ET.SubElement(suite, "testcase", classname=f"flashbench.{shift.backend}", name="all cases")
        ET.SubElement(tc, "failure", message=shift.words(), type="slower_as_a_whole").text = shift.words()
    if report.not_judged:  # a gate that judged nothing must not read as green in a JUnit viewer
        tc = ET.SubElement(suite, "testcase", classname="flashbench.gate", name="comparable")
        ET.SubElement(tc, "failure", message=report.not_judged[0], type="not_judged").text = "\n".join(report.not_judged)
    # the counts of what the suite holds: cases, backends slower as a whole, the not-judged testcase
    suite.set("tests", str(len(suite.findall("testcase"))))
    suite.set("failures", str(len(suite.findall("testcase/failure"))))
    root = ET.Element("testsuites", name="flashbench", tests=suite.get("tests"), failures=suite.get("failures"))
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
