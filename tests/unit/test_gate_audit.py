"""Audit of the regression gate against the committed H200 runs: its false-alarm rate on unchanged
sweeps (A/A), its power on a backend made 10% slower, and the edge cases of its statistics, status
transitions, case matching and reports."""
import json
import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from flashbench.analysis.gate import check_runs
from flashbench.analysis.noise import rounds_margin, run_to_run
from flashbench.analysis.thresholds import load_thresholds
from flashbench.results.files import Run, load_run
from flashbench.results.rounds import merge_rounds, merge_runs, regroup_rounds, split_rounds

ROOT = Path(__file__).resolve().parents[2]
EVIDENCE = ROOT / "results" / "evidence" / "h200" / "gate_default"


# --- A/A: unchanged sweeps regrouped from their rounds ----------------------------------------------

@pytest.fixture(scope="module")
def tool():
    """tools/gate_false_alarms.py, the A/A measurement as users run it."""
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import gate_false_alarms
    finally:
        sys.path.remove(str(ROOT / "tools"))
    return gate_false_alarms


@pytest.fixture(scope="module")
def xy():
    """Runs X (3 rounds) and Y (2 rounds): the default sweep twice on one H200, unchanged code, merged as a
    baseline of 5 rounds a task."""
    merged = merge_runs([load_run(EVIDENCE / "X"), load_run(EVIDENCE / "Y")], ["X", "Y"])
    assert len(merged.records) == 656 and {r.rounds for r in merged.records} == {5}
    return merged


def slower(run, backend, factor):
    """``run`` with every timing of ``backend`` ``factor`` times longer (rates follow)."""
    records = []
    for r in run.records:
        if r.backend == backend and r.status == "ok":
            r = replace(r, samples_ms=[x * factor for x in r.samples_ms],
                        round_medians_ms=[x * factor for x in r.round_medians_ms], median_ms=r.median_ms * factor,
                        p20_ms=r.p20_ms * factor, p80_ms=r.p80_ms * factor)
            r.set_rates()
        records.append(r)
    return Run(run.meta, records)


def test_split_rounds_undoes_merge_rounds():
    from synthetic import case, record

    merged = record("sdpa_flash", case(1024), 1.0, rounds=3, drift=0.05, seed=3)
    rounds = split_rounds(merged)
    assert [r.median_ms for r in rounds] == pytest.approx(merged.round_medians_ms)
    assert all(r.rounds == 1 and not r.round_medians_ms for r in rounds)
    again = merge_rounds(merge_rounds(rounds[0], rounds[1]), rounds[2])
    assert again.median_ms == pytest.approx(merged.median_ms) and again.samples_ms == merged.samples_ms
    assert split_rounds(record("sdpa_flash", case(1024), status="skipped"))[0].status == "skipped"
    with pytest.raises(ValueError, match="do not add up"):
        split_rounds(replace(merged, round_samples=[1, 2]))


def test_regroup_rounds_picks_rounds_and_leaves_out_short_tasks():
    from synthetic import case, meta, record

    run = Run(meta(), [record("sdpa_flash", case(1024), 1.0, rounds=3, drift=0.05, seed=1),
                       record("sdpa_flash", case(2048), 1.0, rounds=2, drift=0.05, seed=2),
                       record("sdpa_flash", case(4096), status="skipped")])
    picked = regroup_rounds(run, [0, 2])
    assert picked.meta["rounds"] == 2 and [(r.status, r.rounds) for r in picked.records] == [("ok", 2), ("skipped", 1)]
    assert picked.records[0].round_medians_ms == pytest.approx([run.records[0].round_medians_ms[i] for i in (0, 2)])


def test_unchanged_sweeps_with_rounds_rarely_raise_a_false_alarm(xy, tool):
    """Every split of the 5 rounds into a baseline of 3 and a CI run of 1 (20 pseudo-pairs), and of 2
    against 1 (30): the share of unchanged sweeps failing the gate stays near family_alpha (5%). The
    pooled σ's normal band alone failed 10 of the 20 and 21 of the 30 (heavy-tailed round medians)."""
    thresholds, _ = load_thresholds(None)
    for n_base, n_pairs in ((3, 20), (2, 30)):
        result = tool.false_alarms(xy, thresholds, n_base, 1, 100)
        assert result["pairs"] == n_pairs and result["cases_compared"] == 656 * n_pairs
        assert result["pair_rate"] <= 2 * thresholds.noise.family_alpha, result


def test_the_other_unchanged_pair_raises_no_false_alarm(tool):
    """Runs A (3 rounds) and B (1 round, the CI run that raised a false alarm on sdpa, 6.4%): every
    3-against-1 split of their 4 rounds passes (3 of the 4 failed with the pooled band alone)."""
    ab = merge_runs([load_run(EVIDENCE / "A"), load_run(EVIDENCE / "B")], ["A", "B"])
    result = tool.false_alarms(ab, load_thresholds(None)[0], 3, 1, 100)
    assert result["pairs"] == 4 and result["failing_pairs"] == 0, result


def test_a_backend_ten_percent_slower_is_flagged_and_only_it(xy, tool):
    """Power at realistic noise: sdpa_flash made 10% slower in the CI run (one round) against three
    baseline rounds. Every sdpa_flash case whose time grew by more than the floor and was not pulled
    back under 10% by its own noise is flagged; no case of another backend is."""
    thresholds, _ = load_thresholds(None)
    floor = thresholds.defaults.min_abs_ms
    for base, cur in tool.pairs(5, 3, 1, 5):
        report = check_runs(regroup_rounds(xy, base), slower(regroup_rounds(xy, cur), "sdpa_flash", 1.10),
                            thresholds)
        assert {c.backend for c in report.failures} == {"sdpa_flash"}
        flash = [c for c in report.compared if c.backend == "sdpa_flash"]
        latency = [next(m for m in c.checks if m.metric.gate_key == "latency") for c in flash]
        clear = [(c, m) for c, m in zip(flash, latency) if m.floor_change >= floor and m.change > 0.09]
        assert len(clear) >= 80 and all(c.outcome == "regression" for c, _ in clear)


# --- the scaled single-round margin ---------------------------------------------------------------

def test_rounds_margin_scales_the_single_round_margin():
    assert rounds_margin(0.10, 1, 1) == pytest.approx(0.10)
    assert rounds_margin(0.10, 3, 1) == pytest.approx(0.10 * math.sqrt(2 / 3))
    assert rounds_margin(0.10, 3, 3) == pytest.approx(0.10 * math.sqrt(1 / 3))
    assert rounds_margin(0.10, 1, 3) == rounds_margin(0.10, 3, 1)


def test_a_change_inside_the_scaled_margin_is_noise_even_past_tight_rounds():
    """Three baseline rounds within 0.2% and one current round 6% slower: the rounds alone call it real,
    the single-round margin scaled to 3 against 1 (8.2%) does not; 9% is past it. Faster is symmetric."""
    tight = [1.000, 1.001, 1.002]
    assert run_to_run(tight, [1.06], None).beyond  # no margin given (flashbench compare): the rounds decide
    v = run_to_run(tight, [1.06], 0.10)
    assert not v.beyond and v.decided_by == "margin" and v.allowed == pytest.approx(rounds_margin(0.10, 3, 1))
    assert "single-round margin scaled to the rounds 8.2%" in v.describe()
    assert run_to_run(tight, [1.095], 0.10).beyond
    assert not run_to_run(tight, [0.94], 0.10).beyond and run_to_run(tight, [0.90], 0.10).beyond
    # the pooled band and the case's own rounds still decide where they are wider
    v = run_to_run(tight, [1.09], 0.10, sigma=0.03, z=3.0)
    assert not v.beyond and v.decided_by == "pooled" and "single-round margin scaled" in v.describe()


# --- reports stay bounded -------------------------------------------------------------------------

def test_markdown_lists_the_largest_regressions_and_counts_the_rest():
    """A sweep whose every case moved: the markdown (stdout, $GITHUB_STEP_SUMMARY, 1 MiB at most on
    GitHub) lists MAX_LISTED cases per outcome, the largest changes first, and counts the rest; the
    machine formats keep every case."""
    from synthetic import case, meta, record
    from flashbench.report.gate_report import MAX_LISTED, gate_frame, gate_markdown, gate_junit_xml

    cases = [case(n) for n in range(64, 64 + 8 * 3000, 8)]
    factors = [1.5 + i / 3000 for i in range(3000)]  # the last case moved most
    base = Run(meta(), [record("sdpa_flash", c, 1.0, spread=1e-5, seed=i) for i, c in enumerate(cases)])
    cur = Run(meta(), [record("sdpa_flash", c, f, spread=1e-5, seed=10**5 + i)
                       for i, (c, f) in enumerate(zip(cases, factors))])
    report = check_runs(base, cur, load_thresholds(None)[0])
    assert report.count("regression") == 3000
    md = gate_markdown(report)
    rows = [line for line in md.splitlines() if line.startswith("| ❌ regression |")]
    assert len(md) < 100_000 and f"| {3000 - MAX_LISTED} more |" in md
    listed = [line for line in rows if "more |" not in line]
    assert len(listed) == 2 * MAX_LISTED  # latency and TFLOP/s rows of each listed case
    assert f"N{cases[-1].seq_len_q} " in listed[0] and f"N{cases[0].seq_len_q} " not in md
    assert len(gate_frame(report)) >= 3000 and gate_junit_xml(report).count("<testcase ") == 3000


# --- the within-run test with few samples ---------------------------------------------------------

def test_the_rank_test_bound():
    from flashbench.analysis.noise import mann_whitney_u, smallest_p

    for n1, n2 in ((1, 1), (3, 3), (5, 5), (6, 6), (8, 40)):
        apart = mann_whitney_u([1 + i / 1000 for i in range(n1)], [2 + i / 1000 for i in range(n2)])[1]
        assert smallest_p(n1, n2) == pytest.approx(apart)
    assert smallest_p(5, 5) > 0.01 > smallest_p(6, 6)


@pytest.mark.parametrize("n", [1, 3, 5])
def test_a_run_of_few_samples_still_fails_on_a_2x_slowdown(n):
    """With five samples or fewer a side the rank test can never reach alpha 0.01: the gate passed a
    2x slower run. The p20–p80 intervals now decide alone, and the report says so."""
    from synthetic import case, meta, record

    cases = [case(1024 * k) for k in (1, 2, 4)]
    base = Run(meta(), [record("sdpa_flash", c, 1.0, n=n, seed=i) for i, c in enumerate(cases)])
    cur = Run(meta(), [record("sdpa_flash", c, 2.0, n=n, seed=9 + i) for i, c in enumerate(cases)])
    report = check_runs(base, cur, load_thresholds(None)[0])
    assert report.exit_code == 1 and all(c.outcome == "regression" for c in report.cases)
    assert "too few for the rank test" in report.cases[0].checks[0].noise
    same = Run(meta(), [record("sdpa_flash", c, 1.0, n=n, seed=i) for i, c in enumerate(cases)])
    assert check_runs(base, same, load_thresholds(None)[0]).exit_code == 0


# --- status transitions ---------------------------------------------------------------------------

def _one(status, factor=1.0):
    from synthetic import case, record

    r = record("sdpa_flash", case(1024), factor, seed=int(factor * 100))
    if status == "ok":
        return r
    if status == "mismatch":  # timed, but wrong
        return replace(r, status="mismatch", reason="max_abs_err 0.5 > 0.02")
    return record("sdpa_flash", case(1024), status=status, reason="why")


@pytest.mark.parametrize("worse", ["mismatch", "oom", "error", "timeout", "crashed"])
def test_every_worse_status_fails(worse):
    from synthetic import meta

    (c,) = check_runs(Run(meta(), [_one("ok")]), Run(meta(), [_one(worse)]), load_thresholds(None)[0]).cases
    assert c.outcome == "status" and c.failed and f"ok → {worse}" in c.message


def test_with_correctness_off_a_mismatch_row_is_still_gated_on_its_timing():
    """correctness: false stops ok → mismatch from failing, not the timing check: a case that went wrong
    AND 2x slower passed unseen ("status got worse ... correctness not gated", no timing compared)."""
    from flashbench.analysis.thresholds import parse_thresholds
    from synthetic import meta

    off = parse_thresholds("defaults: {correctness: false}\n", "t.yaml")
    for old in ("ok", "mismatch"):
        base = Run(meta(), [_one(old)])
        (c,) = check_runs(base, Run(meta(), [_one("mismatch", 2.0)]), off).cases
        assert c.outcome == "regression" and c.failed and "% slower (threshold 5%)" in c.message
        (c,) = check_runs(base, Run(meta(), [_one("mismatch", 1.0)]), off).cases
        assert c.outcome == "pass" and not c.failed and c.checks
    (c,) = check_runs(Run(meta(), [_one("ok")]), Run(meta(), [_one("mismatch")]), off).cases
    assert "correctness not gated" in c.message
    # gated (the default): ok → mismatch fails on its status, whatever the timing
    (c,) = check_runs(Run(meta(), [_one("ok")]), Run(meta(), [_one("mismatch", 1.0)]), load_thresholds(None)[0]).cases
    assert c.outcome == "status" and c.failed
    # compared on its timing: a JUnit testcase that ran, not a skipped one
    from flashbench.report.gate_report import gate_junit_xml

    xml = gate_junit_xml(check_runs(Run(meta(), [_one("ok")]), Run(meta(), [_one("mismatch")]), off))
    assert "<skipped" not in xml and "correctness not gated" in xml


def test_the_markdown_names_the_scaled_margin(xy):
    from flashbench.report.gate_report import gate_markdown

    report = check_runs(regroup_rounds(xy, (0, 1, 2)), regroup_rounds(xy, (3,)), load_thresholds(None)[0])
    assert report.rounds_margins == [pytest.approx(rounds_margin(0.10, 3, 1))]
    assert "single-round margin scaled to the rounds" in gate_markdown(report) and "8.2%" in gate_markdown(report)


def test_an_ok_row_without_a_time_is_reported_not_passed():
    """An ok row whose median time is gone (an edited or cut results.json: the loader reads it) passed
    with its timing never compared; it is now missing (failing with --require-all)."""
    from synthetic import case, meta, record

    base = Run(meta(), [record("sdpa_flash", case(1024), 1.0)])
    cur = Run(meta(), [replace(record("sdpa_flash", case(1024), 2.0), median_ms=None, samples_ms=[], p20_ms=None,
                               p80_ms=None, tflops=None)])
    (c,) = check_runs(base, cur, load_thresholds(None)[0]).cases
    assert c.outcome == "missing" and not c.failed and "no median time in the current run" in c.message
    (c,) = check_runs(base, cur, load_thresholds(None)[0], require_all=True).cases
    assert c.failed


# --- matching cases -------------------------------------------------------------------------------

def test_cases_match_on_backend_and_case_fields_only():
    """A row's provenance (reason, tuned config, timing method, unit, wall time) does not unmatch it;
    another dtype or backend is another case, never compared with this one."""
    from synthetic import case, meta, record

    c = case(1024)
    base = Run(meta(), [record("sdpa_flash", c, 1.0)])
    moved = replace(record("sdpa_flash", c, 1.0, seed=7), reason="note", backend_config="BLOCK_M=128",
                    timing_method="held", device_uuid="GPU-other", wall_s=3.0)
    report = check_runs(base, Run(meta(), [moved]), load_thresholds(None)[0])
    assert [x.outcome for x in report.cases] == ["pass"] and report.passed
    other = [record("sdpa_flash", case(1024, dtype="float16"), 2.0), record("triton_fa2", c, 2.0)]
    report = check_runs(base, Run(meta(), other), load_thresholds(None)[0])
    assert sorted(x.outcome for x in report.cases) == ["missing", "new", "new"] and report.exit_code == 3


# --- tools/gate_false_alarms.py -------------------------------------------------------------------

def test_the_tool_pairs_are_disjoint_and_spread():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from gate_false_alarms import pairs
    finally:
        sys.path.remove(str(ROOT / "tools"))
    every = pairs(5, 3, 1, 100)
    assert len(every) == 20 and all(not set(b) & set(c) for b, c in every)
    some = pairs(5, 3, 1, 7)
    assert len(some) == 7 and some[0] == every[0] and some[-1] != every[6]


def test_the_tool_prints_the_rate_and_refuses_bad_input(tool, tmp_path, capsys):
    from synthetic import case, record, write_run

    cases = [case(n) for n in (512, 1024, 2048, 4096)]
    unchanged = write_run(tmp_path / "r", [record("sdpa_flash", c, 1.0, rounds=4, drift=0.002, seed=i)
                                           for i, c in enumerate(cases)])
    out = tmp_path / "fa.json"
    assert tool.main([str(unchanged), "--baseline-rounds", "2", "--current-rounds", "2", "--json", str(out)]) == 0
    assert "6 A/A pairs (2 baseline rounds against 2 of the 4 rounds): 0 failed the gate" in capsys.readouterr().out
    assert json.loads(out.read_text())["cases_compared"] == 24
    # one case's last two rounds twice as slow as its first two: the pair that splits them so fails
    levels = [record("sdpa_flash", cases[0], level, seed=50 + i) for i, level in enumerate((1.0, 1.0, 2.0, 2.0))]
    wild = levels[0]
    for later in levels[1:]:
        wild = merge_rounds(wild, later)
    split = write_run(tmp_path / "w", [wild, *[record("sdpa_flash", c, 1.0, rounds=4, drift=0.002, seed=i)
                                               for i, c in enumerate(cases[1:])]])
    assert tool.main([str(split), "--baseline-rounds", "2", "--current-rounds", "2"]) == 0
    printed = capsys.readouterr().out
    assert ": 1 failed the gate (16.7% of sweeps" in printed and "   1  sdpa_flash B32 H16 N512" in printed
    assert tool.main([str(unchanged), "--baseline-rounds", "3", "--current-rounds", "2"]) == 2
    assert "need 5" in capsys.readouterr().err
    assert tool.main([str(unchanged), "--max-pairs", "0"]) == 2
    assert tool.main([str(tmp_path / "nowhere")]) == 2
    bad = tmp_path / "t.yaml"
    bad.write_text("defaults: {latency: -1}\n")
    assert tool.main([str(unchanged), "-t", str(bad)]) == 2 and "defaults.latency" in capsys.readouterr().err


def test_identical_samples_zero_variance():
    """A timer that returns one value (a coarse clock): equal on both sides is no change, a constant 2x
    slower one a regression (the rank test's tie correction keeps its variance positive)."""
    from synthetic import case, meta, record

    def flat(level):
        r = record("sdpa_flash", case(1024), level)
        return replace(r, samples_ms=[level] * 40, median_ms=level, p20_ms=level, p80_ms=level)

    thresholds = load_thresholds(None)[0]
    (same,) = check_runs(Run(meta(), [flat(1.0)]), Run(meta(), [flat(1.0)]), thresholds).cases
    assert same.outcome == "pass" and "unchanged" in same.checks[0].words()
    (slow,) = check_runs(Run(meta(), [flat(1.0)]), Run(meta(), [flat(2.0)]), thresholds).cases
    assert slow.outcome == "regression" and "p20–p80 disjoint" in slow.checks[0].noise


def test_a_decode_case_is_gated_on_its_gb_per_s():
    """Decode is read in GB/s (metrics.judged_rate): the gate words and reports its rate so, under the rate's
    threshold key, where a dense case keeps TFLOP/s."""
    from dataclasses import replace as _replace

    from flashbench.analysis.gate import check_runs as _check_runs
    from flashbench.model.flops import min_hbm_bytes
    from flashbench.report.gate_report import gate_frame, gate_markdown
    from flashbench.results.files import Run as _Run
    from synthetic import case as _case, meta as _meta, record as _record

    decode = _replace(_case(n=4096, d=128), batch=8, heads=32, kv_heads=8, seq_len_q=1, workload="decode", causal=True)
    dense = _case(n=4096)

    def run(ms):
        recs = []
        for c in (decode, dense):
            r = _record("sdpa", c, median_ms=ms, spread=0.001)
            r.min_hbm_bytes = min_hbm_bytes(c)
            r.set_rates()
            recs.append(r)
        return _Run(_meta(), recs)

    report = _check_runs(run(1.0), run(1.3))
    by_workload = {c.key["workload"]: c for c in report.cases}
    rates = {w: [m.metric.name for m in c.checks] for w, c in by_workload.items()}
    assert rates == {"decode": ["ms", "gbps", "peak_hbm"], "dense": ["ms", "tflops", "peak_hbm"]}
    assert "fewer GB/s" in by_workload["decode"].message and "TFLOP/s" not in by_workload["decode"].message
    frame = gate_frame(report)
    assert set(frame[frame.workload == "decode"].metric.dropna()) == {"latency", "gbps", "peak_hbm"}
    assert "fewer GB/s" in gate_markdown(report)


def test_two_h100_fa2_sweeps_of_the_same_code_on_two_units_pass_the_gate():
    """results/evidence/h100/fa2_same_code_gate/ is the H100 ``fa2`` baseline's sweep again, unchanged code, on another
    unit of the model: the default thresholds pass all 120 cases (our forward's rounds moved up to 7% against cuDNN
    between the two), and the report notes the two units."""
    root = Path(__file__).resolve().parents[2] / "results"
    report = check_runs(load_run(root / "baselines/h100/fa2"), load_run(root / "evidence/h100/fa2_same_code_gate"),
                        load_thresholds(None)[0])
    assert report.passed and len(report.compared) == 120 and report.failures == []
    assert any(d.kind == "device" for d in report.differences)
