"""The pooled run-to-run band: σ per backend pooled over the compared cases' round medians, and a
z that covers every case compared at once (noise.family_alpha, Bonferroni)."""
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flashbench.analysis.compare import compare_runs
from flashbench.analysis.gate import check_runs
from flashbench.analysis.noise import MIN_POOLED_DOF, family_z, pool_rounds, pooled_sigma, run_to_run
from flashbench.analysis.thresholds import load_thresholds, parse_thresholds
from flashbench.cli import app
from flashbench.model.yaml_input import ConfigError
from flashbench.report.format import compact_shape
from flashbench.report.gate_report import gate_markdown
from flashbench.results.files import load_run
from flashbench.results.rounds import merge_rounds
from synthetic import case, record, write_run

ROOT = Path(__file__).resolve().parents[2]
E = math.exp


# --- the estimate -------------------------------------------------------------------------------

def test_pooled_sigma_by_hand():
    # logs 0, .02, .04: SS .0008, dof 2; logs .1, .13: SS 2 × .015² = .00045, dof 1; one round: nothing
    sigma, dof = pooled_sigma([[E(0), E(0.02), E(0.04)], [E(0.1), E(0.13)], [5.0]])
    assert dof == 3 and sigma == pytest.approx(math.sqrt(0.00125 / 3))


def test_each_side_is_its_own_group_so_a_real_shift_does_not_inflate_sigma():
    p = pool_rounds([("b", [E(0), E(0.02), E(0.04)], [E(0.5), E(0.52), E(0.54)])] * 3)
    assert p.dof["b"] == 12 and p.sigma_of("b") == pytest.approx(math.sqrt(0.0008 / 2))


def test_too_few_degrees_of_freedom_give_no_pooled_band():
    three = [E(0), E(0.02), E(0.04)]
    n = MIN_POOLED_DOF // 2  # 3 rounds against 1: 2 dof a case
    few = pool_rounds([("b", three, [1.0])] * (n - 1))
    assert few.dof["b"] == 2 * (n - 1) < MIN_POOLED_DOF and few.sigma_of("b") is None
    enough = pool_rounds([("b", three, [1.0])] * n)
    assert enough.dof["b"] >= MIN_POOLED_DOF and enough.sigma_of("b") == pytest.approx(0.02)
    # one round each side: nothing to pool at all
    single = pool_rounds([("b", [1.0], [1.1])] * 100)
    assert single.dof["b"] == 0 and single.sigma_of("b") is None


def test_z_grows_with_the_number_of_cases():
    zs = [family_z(0.05, m) for m in (1, 10, 100, 656, 10000)]
    assert zs == sorted(zs) and zs[0] == pytest.approx(1.645, abs=1e-3)
    assert family_z(0.05, 656) == pytest.approx(3.79, abs=0.01)
    assert family_z(0.01, 656) > family_z(0.05, 656)
    assert pool_rounds([("b", [1.0, 1.01], [1.0])] * 20).z == pytest.approx(family_z(0.05, 20))


# --- the rule on one case -----------------------------------------------------------------------

LUCKY = [1.000, 1.001, 1.002]  # three rounds that landed close by luck
SIGMA, Z = 0.02, 3.0
BAND = Z * SIGMA * math.sqrt(1 / 3 + 1)  # 3 rounds against 1, in log


def test_a_lucky_tight_range_takes_the_pooled_band():
    inside = 1.001 * math.exp(BAND * 0.95)
    assert run_to_run(LUCKY, [inside], None).beyond  # its own rounds alone: flagged
    v = run_to_run(LUCKY, [inside], None, SIGMA, Z)
    assert not v.beyond and v.decided_by == "pooled"
    assert v.allowed == pytest.approx(math.expm1(BAND))
    assert "noise up to" in v.describe() and "by pooled σ 2.00% × z 3.0, wider than baseline rounds" in v.describe()
    past = run_to_run(LUCKY, [1.001 * math.exp(BAND * 1.05)], None, SIGMA, Z)
    assert past.beyond and past.decided_by == "pooled"
    # faster by as much: the band is symmetric in log
    assert not run_to_run(LUCKY, [1.001 * math.exp(-BAND * 0.95)], None, SIGMA, Z).beyond
    assert run_to_run(LUCKY, [1.001 * math.exp(-BAND * 1.05)], None, SIGMA, Z).beyond


def test_a_wide_own_spread_keeps_its_wider_band():
    wide = [0.9, 1.0, 1.1]  # spread 20%: own band up to 1.1 × 1.2 = +32%
    v = run_to_run(wide, [1.25], None, SIGMA, Z)
    assert not v.beyond and v.decided_by == "baseline rounds"
    assert v.allowed == pytest.approx(0.32) and "by baseline rounds spread 20.0%, wider than pooled σ" in v.describe()
    assert run_to_run(wide, [1.35], None, SIGMA, Z).beyond


def test_both_sides_with_rounds_narrow_the_band():
    v = run_to_run(LUCKY, [1.0, 1.001, 1.002], None, SIGMA, Z)
    assert v.pooled_allowed == pytest.approx(math.expm1(Z * SIGMA * math.sqrt(2 / 3)))


def test_single_round_each_side_keeps_the_margin():
    for sigma in (None, 0.001, 0.5):
        assert not run_to_run([1.0], [1.09], 0.1, sigma, Z).beyond
        v = run_to_run([1.0], [1.11], 0.1, sigma, Z)
        assert v.beyond and v.basis == "margin" and v.sigma is None and "single-round margin 10%" in v.describe()
    assert run_to_run([1.0], [1.5], None, 0.01, Z).basis == "none"


# --- through the gate -----------------------------------------------------------------------------

CASES = [case(n) for n in range(512, 512 + 64 * 13, 64)]  # 13 cases of one backend


def rounds_record(backend, c, levels, seed):
    """One record holding a round at each of ``levels`` (tight samples: ±0.5%)."""
    merged = record(backend, c, levels[0], spread=0.005, seed=seed * 10)
    for i, level in enumerate(levels[1:], 1):
        merged = merge_rounds(merged, record(backend, c, level, spread=0.005, seed=seed * 10 + i))
    return merged


def gate(tmp_path, factor):
    """12 cases whose rounds spread ±2% and one lucky case (rounds within 0.2%), 3 rounds; the current
    run holds one round each, unchanged but for the lucky case, ``factor`` times slower. The scaled
    single-round margin is off (``single_round_margin: 0``), so that the pooled band shows alone."""
    levels = [[0.98, 1.0, 1.02]] * 12 + [LUCKY]
    base = write_run(tmp_path / "base", [rounds_record("triton_fa2", c, lv, i)
                                         for i, (c, lv) in enumerate(zip(CASES, levels))])
    cur = write_run(tmp_path / f"cur{factor}", [record("triton_fa2", c, 1.001 * factor if i == 12 else 1.0,
                                                       spread=0.005, seed=500 + i) for i, c in enumerate(CASES)])
    thresholds = parse_thresholds("defaults: {single_round_margin: 0}\n", "test")
    return check_runs(load_run(base), load_run(cur), thresholds)


def lucky_latency(report):
    (c,) = [c for c in report.cases if c.key["seq_len_q"] == CASES[12].seq_len_q]
    return c, next(m for m in c.checks if m.metric.gate_key == "latency")


def test_the_gate_holds_a_lucky_case_to_its_backends_pooled_noise(tmp_path):
    report = gate(tmp_path, 1.055)  # past the 5% threshold and its own rounds, inside the pooled band
    c, m = lucky_latency(report)
    p = report.pooled
    assert p.compared == 13 and p.dof["triton_fa2"] == 26 and 0.018 < p.sigma["triton_fa2"] < 0.02
    band = p.z * p.sigma["triton_fa2"] * math.sqrt(1 / 3 + 1)
    assert math.log(1.055) < band < math.log(1.10)
    assert c.outcome == "pass" and m.ignored == "noise" and m.between.decided_by == "pooled"
    assert report.passed
    md = gate_markdown(report)
    assert "run-to-run σ pooled per backend" in md and "triton_fa2 1.9" in md and "over 13 cases" in md
    c, m = lucky_latency(gate(tmp_path, 1.10))  # past the pooled band: flagged
    assert c.outcome == "regression" and m.between.decided_by == "pooled"
    c, _ = lucky_latency(gate(tmp_path, 2.0))
    assert c.outcome == "regression" and "2.00x slower" in c.message


# --- the thresholds key ---------------------------------------------------------------------------

def test_family_alpha_defaults_and_reads():
    assert load_thresholds(None)[0].noise.family_alpha == 0.05
    assert parse_thresholds("noise: {family_alpha: 0.01}\n", "t.yaml").noise.family_alpha == 0.01


@pytest.mark.parametrize("value", ["0", "1", "-0.1", "1.5", "lots", "null"])
def test_bad_family_alpha_is_a_config_error(tmp_path, value):
    with pytest.raises(ConfigError) as e:
        parse_thresholds(f"noise: {{family_alpha: {value}}}\n", "t.yaml")
    assert "noise.family_alpha" in str(e.value)
    base = write_run(tmp_path / "base", [record("sdpa_flash", CASES[0], 1.0)])
    thr = tmp_path / "thr.yaml"
    thr.write_text(f"noise: {{family_alpha: {value}}}\n")
    r = CliRunner().invoke(app, ["check", str(base), "--baseline", str(base), "--thresholds", str(thr)],
                           env={"GITHUB_STEP_SUMMARY": ""})
    assert r.exit_code == 2 and "noise.family_alpha" in r.stderr


# --- the real H200 runs ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def h200():
    load = lambda p: load_run(ROOT / p)  # noqa: E731
    return {"A": load("results/evidence/h200/gate_default/A"), "B": load("results/evidence/h200/gate_default/B"),
            "C": load("results/evidence/h200/gate_default/C"), "D": load("results/evidence/h200/gate_default/D")}


def _regressions(report):
    return {(c.backend, compact_shape(c.key)) for c in report.cases if c.outcome == "regression"}


def test_h200_unchanged_rerun(h200):
    thresholds, _ = load_thresholds(None)
    report = check_runs(h200["A"], h200["B"], thresholds)
    assert len(report.compared) == 656 and report.pooled.compared == 656
    assert report.pooled.z == pytest.approx(3.79, abs=0.01)
    assert report.pooled.sigma["triton_fa2"] == pytest.approx(0.0132, abs=0.0001)
    # the case whose three baseline rounds landed within 0.6% is now held to triton_fa2's pooled noise;
    # the sdpa fwd_bwd case moved 6.4%, past both its own rounds' band and sdpa's pooled one, but inside
    # the single-round margin scaled to three rounds against one (8.2%): B ran unchanged code, no false alarm
    assert _regressions(report) == set()
    (sdpa,) = [c for c in report.cases if c.backend == "sdpa"
               and compact_shape(c.key) == "B1 H16 N16384 D128 fp16 causal fwd_bwd"]
    latency = next(m for m in sdpa.checks if m.metric.gate_key == "latency")
    assert latency.ignored == "noise" and latency.between.decided_by == "margin"
    assert _regressions(check_runs(h200["A"], h200["B"], parse_thresholds(
        "defaults: {single_round_margin: 0}\n", "test"))) == {("sdpa", "B1 H16 N16384 D128 fp16 causal fwd_bwd")}
    (lucky,) = [c for c in report.cases if c.backend == "triton_fa2"
                and compact_shape(c.key) == "B2 H32 N8192 D64 fp16 causal fwd"]
    latency = next(m for m in lucky.checks if m.metric.gate_key == "latency")
    assert latency.ignored == "noise" and latency.between.decided_by in ("pooled", "margin")
    # compare uses the same definition
    rows = compare_runs(h200["A"], h200["B"], "ms").rows
    beyond = {(r["backend"], compact_shape(r)) for _, r in rows.iterrows() if r["beyond_noise"]}
    assert ("sdpa", "B1 H16 N16384 D128 fp16 causal fwd_bwd") in beyond
    assert ("triton_fa2", "B2 H32 N8192 D64 fp16 causal fwd") not in beyond


def test_h200_plugin_ten_percent_slower(h200):
    thresholds, _ = load_thresholds(None)
    report = check_runs(h200["A"], h200["C"], thresholds)
    compared = report.compared
    flash = [c for c in compared if c.backend == "sdpa_flash"]
    cudnn = [c for c in compared if c.backend == "sdpa_cudnn"]
    assert len(flash) == 93 and len(cudnn) == 93 and len(compared) == 186
    assert all(c.outcome == "regression" for c in flash)
    assert not any(c.outcome == "regression" for c in cudnn)
    assert report.not_judged and report.exit_code == 1  # unfinished, and regressions found


def test_h200_rerun_on_another_unit(h200):
    """Run D: the default sweep again on another H200, unfinished (2 rounds of 3 of its 208 cases).  Without the unit margin (nor the scaled single-round margin) one case is past its threshold and both noise bands,
    with the same kernel code (the Gluon build differs from A's by one unused argument) and both rounds
    of D alike; the unit margin, which runs on two units get, leaves no false alarm."""
    thresholds, _ = load_thresholds(None)
    report = check_runs(h200["A"], h200["D"], thresholds)
    assert len(report.compared) == 656 and report.not_judged  # D did not finish its third round
    assert any(d.kind == "device" for d in report.differences)
    assert _regressions(report) == set() and report.unit_margins == [thresholds.defaults.unit_margin]
    no_unit_margin = parse_thresholds("defaults: {unit_margin: 0, single_round_margin: 0}\n", "test")
    assert _regressions(check_runs(h200["A"], h200["D"], no_unit_margin)) == {
        ("triton_fa2", "B2 H16 N8192 D128 fp16 causal fwd")}
