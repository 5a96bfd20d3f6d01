"""The skip and failure lines under a run's or a profile's tables stay bounded: a sweep with thousands of
failed rows says what failed and how often in at most MAX_SUMMARY_LINES lines, never a line a row."""
import pandas as pd

from flashbench.report.format import MAX_SUMMARY_LINES, failure_lines, skipped_summary
from flashbench.results.files import records_frame
from synthetic import case, record


def rows(n, status="error", backend="b", reason="boom") -> list:
    return [record(backend, case(n=64 + i), status=status, reason=reason) for i in range(n)]


def frame(records) -> pd.DataFrame:
    return records_frame(records)


def test_few_failures_are_listed_one_a_row():
    lines = failure_lines(frame(rows(3) + [record("b", case(n=64))]))
    assert len(lines) == 3 and all(line.startswith("error: b ") and line.endswith(": boom") for line in lines)


def test_many_failures_are_grouped_with_counts():
    df = frame(rows(900) + rows(300, status="oom", reason="out of memory") + [record("b", case(n=64))])
    lines = failure_lines(df)
    assert lines == [" 900 × error: b: boom", " 300 × oom: b: out of memory"]


def test_many_kinds_of_failure_stay_within_the_limit_and_count_the_rest():
    df = frame([r for i in range(100) for r in rows(2 if i < 50 else 1, reason=f"reason {i}")])
    lines = failure_lines(df)
    assert len(lines) == MAX_SUMMARY_LINES
    assert lines[0] == "   2 × error: b: reason 0"  # the most frequent first
    shown = sum(int(line.split("×")[0]) for line in lines[:-1])
    assert lines[-1] == f"{150 - shown:>4} × more failures ({100 - MAX_SUMMARY_LINES + 1} kinds): see results.csv"


def test_skip_reasons_stay_within_the_limit():
    df = frame([r for i in range(60) for r in rows(1, status="skipped", reason=f"N={i} too long")])
    lines = skipped_summary(df)
    assert len(lines) == MAX_SUMMARY_LINES and lines[-1].startswith(f"{60 - MAX_SUMMARY_LINES + 1:>4} × more skips")
    assert skipped_summary(frame(rows(3, status="skipped"))) == ["   3 × b: boom"]
