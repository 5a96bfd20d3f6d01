"""The SM clock in the gate: shown beside each case that moved, with its change in cycles a call, never a
verdict of its own (a kernel that draws more power lowers its own clock: that slowdown is real)."""
import math

import pandas as pd
import pytest

from flashbench.analysis.clocks import ClockChange, clock_change
from flashbench.analysis.gate import check_runs
from flashbench.report.gate_report import gate_frame, gate_junit_xml, gate_markdown
from flashbench.results.files import load_run
from synthetic import case, record, write_run

CASES = [case(n) for n in (1024, 4096)]


def sweep(directory, seed, scale=1.0, mhz=None, peak=64 << 20):
    recs = []
    for i, c in enumerate(CASES):
        r = record("triton_fa2", c, (1.0 + i) * scale, seed=seed * 10 + i, rounds=3, drift=0.001, peak_hbm=peak)
        r.sm_clock_mhz = mhz
        recs.append(r)
    return load_run(write_run(directory, recs))


def test_a_clock_change_in_words_and_in_cycles():
    c = ClockChange(old_mhz=1_695.0, new_mhz=1_470.0, old_ms=1.0, new_ms=1.12)
    assert c.clock_change == pytest.approx(1_470 / 1_695 - 1)
    assert c.cycles_change == pytest.approx(1.12 * 1_470 / 1_695 - 1)
    assert c.notable and c.words() == "SM clock 1,695 → 1,470 MHz (13.3% lower), cycles a call 2.9% fewer"
    up = ClockChange(1_500.0, 1_530.0, 1.0, 1.0)
    assert up.words() == "SM clock 1,500 → 1,530 MHz (2.0% higher), cycles a call 2.0% more"
    assert not ClockChange(1_500.0, 1_510.0, 1.0, 1.2).notable  # under 1%: one of NVML's clock steps


def test_a_side_without_a_clock_or_a_time_has_no_clock_change():
    row = pd.Series({"sm_clock_mhz_old": 1_695.0, "sm_clock_mhz_new": 1_470.0, "median_ms_old": 1.0,
                     "median_ms_new": 1.1})
    assert clock_change(row) == ClockChange(1_695.0, 1_470.0, 1.0, 1.1)
    for column, bad in (("sm_clock_mhz_old", math.nan), ("sm_clock_mhz_new", None), ("median_ms_new", 0.0),
                        ("sm_clock_mhz_new", "fast"), ("median_ms_old", math.inf)):
        assert clock_change(pd.Series({**row.to_dict(), column: bad})) is None, column
    assert clock_change(row.drop("sm_clock_mhz_old")) is None  # a frame from before the column


def test_a_slowdown_the_clock_explains_still_fails_and_says_so(tmp_path):
    base = sweep(tmp_path / "base", 1, mhz=1_695.0)
    slow = sweep(tmp_path / "slow", 2, scale=1.2, mhz=1_350.0)  # 20% slower at a clock 20% lower: fewer cycles
    report = check_runs(base, slow)
    assert report.failed and report.count("regression") == len(CASES)  # the gate judges time, not cycles
    md = gate_markdown(report)
    assert (f"> note: {len(CASES)} of the {len(CASES)} cases that got slower ran at a lower SM clock than in the "
            "baseline and took no more cycles a call") in md
    assert "SM clock 1,695 → 1,350 MHz (20.4% lower), cycles a call" in md
    assert "SM clock 1,695 → 1,350 MHz" in gate_junit_xml(report)
    frame = gate_frame(report)
    assert set(frame["old_sm_clock_mhz"]) == {1_695.0} and set(frame["new_sm_clock_mhz"]) == {1_350.0}
    assert (frame["cycles_change"] < 0).all()


def test_a_slowdown_at_the_same_clock_is_the_codes_and_no_note_says_otherwise(tmp_path):
    base = sweep(tmp_path / "base", 1, mhz=1_695.0)
    slow = sweep(tmp_path / "slow", 2, scale=1.2, mhz=1_690.0)  # one clock step: not worth showing
    report = check_runs(base, slow)
    md = gate_markdown(report)
    assert report.failed and "SM clock" not in md and "SM clock" not in gate_junit_xml(report)
    assert (gate_frame(report)["cycles_change"] > 0.15).all()  # the machines still get the figures


def test_runs_recorded_before_the_clock_show_nothing(tmp_path):
    report = check_runs(sweep(tmp_path / "base", 1), sweep(tmp_path / "slow", 2, scale=1.2, mhz=1_350.0))
    assert report.failed and "SM clock" not in gate_markdown(report)
    assert gate_frame(report)["old_sm_clock_mhz"].isna().all()


def test_a_memory_regression_at_another_clock_is_not_put_down_to_the_clock(tmp_path):
    """Peak memory is exact and no clock's doing: neither the note nor its row mentions the clock."""
    base = sweep(tmp_path / "base", 1, mhz=1_695.0)
    more = sweep(tmp_path / "more", 1, mhz=1_500.0, peak=128 << 20)  # the same times, twice the memory
    report = check_runs(base, more)
    assert report.failed and report.count("regression") == len(CASES)
    md = gate_markdown(report)
    assert "more memory" in md and "SM clock" not in md and "got slower" not in md
