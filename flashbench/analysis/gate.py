"""The CI regression gate behind ``flashbench check``.

A case regresses when a metric changes past its threshold AND beyond noise (latency changes under
``min_abs_ms`` never count); a status that got worse (``STATUS_RANK``) always fails; a case missing
from the current run is reported, and fails with ``require_all``. Pure: runs in, a
:class:`GateReport` out, which renders itself as markdown, JUnit XML and a DataFrame.
"""
from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import pandas as pd

from ..model.case import TASK_KEY_FIELDS, Case
from .compare import EnvDifference, NotComparableError, environment_differences, gpu_model, run_frame
from .noise import beyond_noise
from ..report.format import compact_shape, fmt_bytes, fmt_num
from ..results.files import Run
from ..model.schema import STATUS_RANK
from .thresholds import Limits, Thresholds

# outcomes, worst first
OUTCOMES = ("status", "regression", "missing", "improved", "new", "pass")


@dataclass
class MetricCheck:
    metric: str                 # latency | tflops | peak_hbm
    old: float
    new: float
    change: float               # relative: new/old - 1 (positive = more time / more TFLOP/s / more memory)
    threshold: float | None
    beyond_noise: bool | None   # None: not tested (memory is exact)
    noise: str                  # the noise verdict in words
    regression: bool
    improvement: bool
    note: str = ""              # why a large change did not count (under min_abs_ms, within noise)

    def words(self) -> str:
        """"9.8% slower", "3.2% fewer TFLOP/s", "12.0% more memory"; factors from 2x on ("418.49x slower")."""
        worse = self.change > 0 if self.metric != "tflops" else self.change < 0
        ratio = 1 + self.change
        if not math.isfinite(ratio):
            return "more memory (baseline 0)"
        if ratio >= 2 or 0 < ratio <= 0.5:
            amount = f"{max(ratio, 1 / ratio):.2f}x"
        else:
            amount = f"{abs(self.change) * 100:.1f}%"
            if amount == "0.0%":
                return "unchanged"
        if self.metric == "latency":
            return f"{amount} {'slower' if worse else 'faster'}"
        if self.metric == "tflops":
            return f"{amount} {'fewer' if worse else 'more'} TFLOP/s"
        return f"{amount} {'more' if worse else 'less'} memory"

    def fmt(self, x: float) -> str:
        return fmt_bytes(x) if self.metric == "peak_hbm" else fmt_num(x) + (" ms" if self.metric == "latency" else "")


@dataclass
class CaseResult:
    key: dict
    outcome: str                # one of OUTCOMES
    failed: bool
    old_status: str | None
    new_status: str | None
    checks: list[MetricCheck] = field(default_factory=list)
    message: str = ""

    @property
    def backend(self) -> str:
        return self.key["backend"]

    @property
    def shape(self) -> str:
        return compact_shape(self.key)

    @property
    def name(self) -> str:
        return f"{self.backend} {self.shape}"


@dataclass
class GateReport:
    baseline_label: str
    current_label: str
    cases: list[CaseResult]
    differences: list[EnvDifference]
    warnings: list[str]
    require_all: bool
    thresholds_source: str = ""

    def count(self, outcome: str) -> int:
        return sum(c.outcome == outcome for c in self.cases)

    @property
    def failures(self) -> list[CaseResult]:
        return [c for c in self.cases if c.failed]

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def headline(self) -> str:
        parts = [f"{self.count(o)} {label}" for o, label in
                 (("regression", "regressed"), ("status", "status worse"), ("missing", "missing"),
                  ("improved", "improved"), ("new", "new")) if self.count(o)]
        compared = len([c for c in self.cases if c.outcome not in ("missing", "new")])
        verdict = "PASS" if self.passed else "FAIL"
        return f"{verdict}: {compared} cases compared" + (f", {', '.join(parts)}" if parts else ", no changes past thresholds")

    # --- renderings ----------------------------------------------------------------------------
    def frame(self) -> pd.DataFrame:
        rows = []
        for c in self.cases:
            base = {**c.key, "outcome": c.outcome, "failed": c.failed, "old_status": c.old_status,
                    "new_status": c.new_status, "message": c.message}
            for m in c.checks or [None]:
                row = dict(base)
                if m is not None:
                    row.update(metric=m.metric, old=m.old, new=m.new, change=m.change, threshold=m.threshold,
                               beyond_noise=m.beyond_noise, noise=m.noise, regression=m.regression, note=m.note)
                rows.append(row)
        return pd.DataFrame(rows)

    def markdown(self) -> str:
        icon = "✅" if self.passed else "❌"
        lines = [f"## {icon} flashbench check: {self.headline()}", "",
                 f"baseline `{self.baseline_label}` → current `{self.current_label}`"
                 + (f"; thresholds `{self.thresholds_source}`" if self.thresholds_source else ""), ""]
        for d in self.differences:
            lines.append(f"> ⚠️ **{d.message()}**" if d.loud else f"> note: {d.message()}")
        for w in self.warnings:
            lines.append(f"> ⚠️ {w}")
        if self.differences or self.warnings:
            lines.append("")
        shown = [c for c in self.cases if c.outcome in ("status", "regression", "missing", "improved")]
        shown.sort(key=lambda c: OUTCOMES.index(c.outcome))
        if shown:
            lines += ["| result | backend | shape | change | baseline | current | threshold | noise |",
                      "|---|---|---|---|---|---|---|---|"]
            for c in shown:
                label = {"status": "❌ status", "regression": "❌ regression", "improved": "🚀 improved",
                         "missing": "❌ missing" if c.failed else "⚠️ missing"}[c.outcome]
                checks = [m for m in c.checks if (m.regression if c.outcome == "regression" else m.improvement)]
                if checks:
                    for m in checks:
                        lines.append(f"| {label} | {c.backend} | {c.shape} | {m.words()} | {m.fmt(m.old)} | "
                                     f"{m.fmt(m.new)} | {m.threshold * 100:.0f}% | {m.noise} |")
                else:
                    lines.append(f"| {label} | {c.backend} | {c.shape} | {_md(c.message)} | {c.old_status or '–'} | "
                                 f"{c.new_status or '–'} | | |")
            lines.append("")
        new = [c for c in self.cases if c.outcome == "new"]
        if new:
            lines.append(f"<details><summary>{len(new)} cases only in the current run</summary>\n")
            lines += [f"- {c.name}" for c in new]
            lines.append("\n</details>\n")
        return "\n".join(lines) + "\n"

    def junit_xml(self) -> str:
        """JUnit XML: one testcase per case key; failures for regressions, worse statuses and (with
        require_all) missing cases; skipped for cases that could not be compared."""
        suite = ET.Element("testsuite", name="flashbench check", tests=str(len(self.cases)),
                           failures=str(len(self.failures)),
                           skipped=str(sum(1 for c in self.cases if not c.failed and c.outcome in ("missing", "new")
                                           or (c.outcome == "pass" and c.message))))
        for c in self.cases:
            tc = ET.SubElement(suite, "testcase", classname=f"flashbench.{c.backend}", name=c.shape)
            detail = "\n".join(f"{m.metric}: {m.fmt(m.old)} -> {m.fmt(m.new)} ({m.words()}, threshold "
                               f"{m.threshold * 100:.0f}%, {m.noise}){' ' + m.note if m.note else ''}"
                               for m in c.checks)
            if c.failed:
                f = ET.SubElement(tc, "failure", message=c.message, type=c.outcome)
                f.text = detail or c.message
            elif c.outcome in ("missing", "new") or (c.outcome == "pass" and c.message):
                ET.SubElement(tc, "skipped", message=c.message)
            elif detail:
                ET.SubElement(tc, "system-out").text = detail
        root = ET.Element("testsuites", name="flashbench", tests=suite.get("tests"), failures=suite.get("failures"))
        root.append(suite)
        ET.indent(root)
        return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _finite(x) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x)) and pd.notna(x)


def _check_timing(r, limits: Limits, thresholds: Thresholds) -> list[MetricCheck]:
    verdict = beyond_noise(r["samples_ms_old"], r["samples_ms_new"], thresholds.noise.method, thresholds.noise.alpha,
                           (r["p20_ms_old"], r["p80_ms_old"]), (r["p20_ms_new"], r["p80_ms_new"]))
    real = verdict.beyond_noise
    checks = []
    old_ms, new_ms = r["median_ms_old"], r["median_ms_new"]
    if not (_finite(old_ms) and _finite(new_ms) and old_ms > 0):
        return checks
    tiny = abs(new_ms - old_ms) < limits.min_abs_ms
    floor_note = f"change {abs(new_ms - old_ms) * 1000:.1f} µs is under min_abs_ms ({limits.min_abs_ms * 1000:g} µs)"
    if limits.latency is not None:
        change = new_ms / old_ms - 1
        past = change > limits.latency
        better = change < -limits.latency
        note = floor_note if (past or better) and tiny else ("within noise" if (past or better) and not real else "")
        checks.append(MetricCheck("latency", float(old_ms), float(new_ms), change, limits.latency, real,
                                  verdict.describe(), past and real and not tiny, better and real and not tiny, note))
    old_t, new_t = r["tflops_old"], r["tflops_new"]
    if limits.tflops is not None and _finite(old_t) and _finite(new_t) and old_t > 0:
        change = new_t / old_t - 1
        past = change < -limits.tflops
        better = change > limits.tflops
        note = floor_note if (past or better) and tiny else ("within noise" if (past or better) and not real else "")
        checks.append(MetricCheck("tflops", float(old_t), float(new_t), change, limits.tflops, real,
                                  verdict.describe(), past and real and not tiny, better and real and not tiny, note))
    return checks


def _check_memory(r, limits: Limits) -> list[MetricCheck]:
    old_b, new_b = r["peak_hbm_bytes_old"], r["peak_hbm_bytes_new"]
    if limits.peak_hbm is None or not (_finite(old_b) and _finite(new_b)):
        return []
    grew = new_b - old_b
    change = new_b / old_b - 1 if old_b > 0 else (math.inf if new_b > 0 else 0.0)
    tiny = abs(grew) < limits.min_abs_hbm_bytes
    past, better = change > limits.peak_hbm, change < -limits.peak_hbm
    note = f"change {fmt_bytes(abs(grew))} is under min_abs_hbm_bytes" if (past or better) and tiny else ""
    return [MetricCheck("peak_hbm", float(old_b), float(new_b), change, limits.peak_hbm, None, "exact",
                        past and not tiny, better and not tiny, note)]


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
    if current.meta.get("finished") is False:
        warnings.append(f"{current_label}: the run did not finish (interrupted?): missing cases are expected")
    a, b = run_frame(baseline), run_frame(current)
    keys = list(TASK_KEY_FIELDS)
    joined = a.merge(b, on=keys, how="outer", suffixes=("_old", "_new"), indicator=True)
    cases = []
    for _, r in joined.iterrows():
        key = {k: r[k] for k in keys}
        for k in ("batch", "heads", "kv_heads", "seq_len_q", "seq_len_kv", "head_dim"):
            key[k] = int(key[k])
        key["causal"] = bool(key["causal"])
        if r["_merge"] == "left_only":
            cases.append(CaseResult(key, "missing", require_all, r["status_old"], None,
                                    message=f"missing from the current run (baseline: {r['status_old']})"))
            continue
        if r["_merge"] == "right_only":
            cases.append(CaseResult(key, "new", False, None, r["status_new"], message="not in the baseline"))
            continue
        so, sn = r["status_old"], r["status_new"]
        limits = thresholds.for_case(key["backend"], Case(**{k: key[k] for k in keys if k != "backend"}))
        if STATUS_RANK.get(sn, 3) > STATUS_RANK.get(so, 3):
            reason = f": {r['reason_new']}" if isinstance(r["reason_new"], str) and r["reason_new"] else ""
            failed = not (sn == "mismatch" and not limits.correctness)
            cases.append(CaseResult(key, "status" if failed else "pass", failed, so, sn,
                                    message=f"status got worse: {so} → {sn}{reason}"
                                    + ("" if failed else " (correctness not gated for this case)")))
            continue
        if not (so == "ok" and sn == "ok"):
            msg = "" if so == sn == "skipped" else (f"not compared: {so} → {sn}" if so != sn else f"not compared: {sn}")
            cases.append(CaseResult(key, "pass", False, so, sn, message=msg))
            continue
        checks = _check_timing(r, limits, thresholds) + _check_memory(r, limits)
        regressed = [m for m in checks if m.regression]
        improved = [m for m in checks if m.improvement]
        if regressed:
            cases.append(CaseResult(key, "regression", True, so, sn, checks,
                                    "; ".join(f"{m.words()} (threshold {m.threshold * 100:.0f}%)" for m in regressed)))
        elif improved:
            cases.append(CaseResult(key, "improved", False, so, sn, checks, "; ".join(m.words() for m in improved)))
        else:
            cases.append(CaseResult(key, "pass", False, so, sn, checks))
    return GateReport(baseline_label, current_label, cases, [d for d in diffs if d.kind not in ("gpu", "schema")],
                      warnings, require_all, thresholds_source)


__all__ = ["check_runs", "GateReport", "CaseResult", "MetricCheck", "NotComparableError", "gpu_model"]
