"""The gate on run-to-run noise: rounds' spread, the single-round margin, baselines merged from
several runs, and a summary that says what was compared (one-sided cases counted per backend)."""
import json

import pytest
from typer.testing import CliRunner

from flashbench.analysis.noise import run_to_run
from flashbench.analysis.thresholds import load_thresholds
from flashbench.cli import app
from flashbench.report.gate_report import MAX_MISSING_LISTED
from flashbench.results.files import load_run
from synthetic import H100, case, record, write_run

runner = CliRunner()
CASES = [case(n, causal=c) for n in (1024, 4096) for c in (False, True)]
BACKENDS = ("sdpa_flash", "triton_fa2")


def check(*args):
    return runner.invoke(app, ["check", *map(str, args)], env={"GITHUB_STEP_SUMMARY": ""})


def sweep(directory, seed, scale=1.0, rounds=1, drift=0.0, spread=0.01, only=None, **meta):
    """Every backend × case; each round's level moved by up to ±drift (run-to-run noise)."""
    recs = [record(b, c, (1.0 + i) * scale, spread=spread, seed=seed * 100 + i * 10 + j, rounds=rounds, drift=drift)
            for i, c in enumerate(CASES) for j, b in enumerate(BACKENDS) if only is None or (b, c) in only]
    return write_run(directory, recs, **meta)


# --- the between-run rule ---------------------------------------------------------------------------

def test_run_to_run_rule():
    # both sides with rounds: the new median must clear the old range widened by the new spread
    assert not run_to_run([1.0, 1.1, 1.2], [1.15, 1.25, 1.3], None).beyond  # overlapping drift
    assert run_to_run([1.0, 1.01, 1.02], [1.10, 1.11, 1.12], None).beyond
    v = run_to_run([1.0, 1.01, 1.02], [0.80, 0.81, 0.82], None)
    assert v.beyond and v.basis == "rounds" and v.allowed < 0
    # one side with rounds: its spread stands in for the other's
    v = run_to_run([1.0, 1.05, 1.1], [1.2], None)
    assert v.basis == "baseline rounds" and v.allowed == pytest.approx(1.1 * (1 + 0.1 / 1.05) / 1.05 - 1)
    assert not v.beyond and run_to_run([1.0, 1.05, 1.1], [1.3], None).beyond
    assert run_to_run([1.0], [1.3, 1.31], None).basis == "current rounds"
    # one round each: the margin, or (no margin) untested
    assert not run_to_run([1.0], [1.8], 0.9).beyond and run_to_run([1.0], [2.0], 0.9).beyond
    assert run_to_run([1.0], [0.5], 0.9).beyond and not run_to_run([1.0], [0.6], 0.9).beyond
    v = run_to_run([1.0], [1.01], None)
    assert v.beyond and v.basis == "none" and v.describe() == ""


def test_run_to_run_across_two_units_needs_the_unit_margin():
    # one round each: the larger of the single-round margin and the unit margin stands in for the noise
    v = run_to_run([1.0], [1.12], 0.10, unit_margin=0.15)
    assert not v.beyond and v.basis == "unit margin" and "unit margin 15%" in v.describe()
    assert run_to_run([1.0], [1.16], 0.10, unit_margin=0.15).beyond
    assert run_to_run([1.0], [0.86], 0.10, unit_margin=0.15).beyond  # 16% faster
    assert not run_to_run([1.0], [0.88], 0.10, unit_margin=0.15).beyond
    v = run_to_run([1.0], [1.18], 0.20, unit_margin=0.15)
    assert not v.beyond and v.basis == "margin"  # the wider margin decides
    # with rounds: tight rounds alone call a 12% shift real; across units it must pass the unit margin too
    old, new = [1.0, 1.005, 1.01], [1.12, 1.125, 1.13]
    assert run_to_run(old, new, None).beyond
    v = run_to_run(old, new, None, unit_margin=0.15)
    assert not v.beyond and v.decided_by == "unit" and v.allowed == pytest.approx(0.15)
    assert "by the unit margin" in v.describe()
    v = run_to_run(old, [1.3, 1.31, 1.32], None, unit_margin=0.15)
    assert v.beyond and v.unit_margin == 0.15
    # rounds wider than the unit margin keep deciding
    v = run_to_run([1.0, 1.2, 1.4], [1.35, 1.4, 1.45], None, unit_margin=0.15)
    assert not v.beyond and v.decided_by == "rounds"


@pytest.mark.parametrize("rounds", [1, 3])
def test_runs_on_two_units_of_a_gpu_model_gate_past_the_unit_margin(tmp_path, rounds):
    """What three H200 units differed by on unchanged kernels (up to 13%) is not a regression across units;
    30% is; on one unit the same 12% fails."""
    other = {**H100, "gpu_uuid": "GPU-other"}
    base = sweep(tmp_path / "base", 1, rounds=rounds, drift=0.005)
    slower = sweep(tmp_path / "slower", 2, scale=1.12, rounds=rounds, drift=0.005, env=other)
    r = check(slower, "--baseline", base)
    assert r.exit_code == 0, r.output
    assert "unit margin (15%, `unit_margin`" in " ".join(r.stdout.split())
    r = check(sweep(tmp_path / "much", 3, scale=1.3, rounds=rounds, drift=0.005, env=other), "--baseline", base)
    assert r.exit_code == 1, r.output
    same_unit = sweep(tmp_path / "same_unit", 2, scale=1.12, rounds=rounds, drift=0.005)
    r = check(same_unit, "--baseline", base)
    assert r.exit_code == 1 and "unit margin" not in r.stdout, r.output
    # the margin is the thresholds file's
    thr = tmp_path / "thr.yaml"
    thr.write_text("defaults: {unit_margin: 0.05}\n")
    assert check(slower, "--baseline", base, "--thresholds", thr).exit_code == 1


def test_noisy_but_unchanged_rounds_pass_and_a_shift_fails(tmp_path):
    # rounds that drift by ±15% between each other, samples tight within each: within-run tests alone
    # would call such drift significant; the rounds' spread absorbs it
    base = sweep(tmp_path / "base", 1, rounds=3, drift=0.15)
    same = sweep(tmp_path / "same", 2, rounds=3, drift=0.15)
    r = check(same, "--baseline", base)
    assert r.exit_code == 0, r.output
    assert "8 cases compared (3 rounds each)" in r.stdout and "within-run only" not in r.stdout
    shifted = sweep(tmp_path / "shifted", 2, scale=2.0, rounds=3, drift=0.15)
    r = check(shifted, "--baseline", base, "--format", "json")
    assert r.exit_code == 1, r.output
    rows = [x for x in json.loads(r.stdout) if x["metric"] == "latency"]
    assert all(x["regression"] for x in rows) and "rounds spread" in rows[0]["noise"]


def test_single_round_runs_use_the_margin_and_say_so(tmp_path):
    thresholds, _ = load_thresholds(None)
    margin = thresholds.defaults.single_round_margin
    assert 0 < margin < 1  # a 2x slower run must still fail
    base = sweep(tmp_path / "base", 1)
    drifted = sweep(tmp_path / "drift", 2, scale=1 + margin * 0.9)  # tight samples, a big run-to-run shift
    r = check(drifted, "--baseline", base)
    assert r.exit_code == 0, r.output
    assert "(1 round each; noise within-run only, single-round margin" in r.stdout
    assert "noise estimate is within-run only" in r.stdout and "single_round_margin" in r.stdout
    r = check(sweep(tmp_path / "slow", 3, scale=2.0), "--baseline", base)
    assert r.exit_code == 1 and "2.00x slower" in r.stdout
    # the margin is the thresholds file's, overridable per backend like any limit
    thr = tmp_path / "thr.yaml"
    thr.write_text(f"defaults: {{single_round_margin: {margin * 0.5}}}\nbackends: {{triton_fa2: {{single_round_margin: 1.5}}}}\n")
    r = check(drifted, "--baseline", base, "--thresholds", thr, "--format", "json")
    assert r.exit_code == 1
    failed = {x["backend"] for x in json.loads(r.stdout) if x.get("regression")}
    assert failed == {"sdpa_flash"}


def test_a_baseline_with_rounds_gates_a_single_round_run_on_its_spread(tmp_path):
    base = sweep(tmp_path / "base", 1, rounds=3, drift=0.03)
    r = check(sweep(tmp_path / "same", 2), "--baseline", base)
    assert r.exit_code == 0 and "(baseline 3 rounds, current 1)" in r.stdout and "within-run only" not in r.stdout
    r = check(sweep(tmp_path / "slow", 3, scale=1.3), "--baseline", base, "--format", "json")
    assert r.exit_code == 1
    assert "baseline rounds spread" in [x for x in json.loads(r.stdout) if x.get("regression")][0]["noise"]


# --- baselines from several runs --------------------------------------------------------------------

def test_baseline_save_merges_runs_as_rounds(tmp_path):
    runs = [sweep(tmp_path / f"r{i}", i) for i in range(3)]
    root = tmp_path / "b"
    r = runner.invoke(app, ["baseline", "save", *map(str, runs), "main", "--root", str(root)])
    assert r.exit_code == 0, r.output
    merged = load_run(root / "h100" / "main")
    singles = [load_run(x) for x in runs]
    assert merged.meta["rounds"] == 3 and [m["path"] for m in merged.meta["merged_runs"]] == list(map(str, runs))
    assert len(merged.records) == len(singles[0].records)
    first = merged.records[0]
    assert first.rounds == 3 and first.round_medians_ms == [s.records[0].median_ms for s in singles]
    assert first.samples_ms == sum((s.records[0].samples_ms for s in singles), [])
    assert (root / "h100" / "main" / "results.csv").is_file()
    # gated against it, an unchanged run passes on the baseline's rounds
    r = check(sweep(tmp_path / "cur", 9), "--baseline", root / "h100" / "main")
    assert r.exit_code == 0 and "baseline 3 rounds" in r.stdout


@pytest.mark.parametrize("other, why", [
    (dict(config_sha="other"), "one config, its settings unchanged"),
    (dict(env={**H100, "gpu_name": "NVIDIA A100-SXM4-80GB"}), "one GPU model"),
    (dict(backends=["sdpa_flash"]), "same backends"),
])
def test_baseline_save_refuses_runs_that_are_not_rounds_of_one_baseline(tmp_path, other, why):
    a = sweep(tmp_path / "a", 1, backends=list(BACKENDS))
    b = sweep(tmp_path / "b", 2, **{"backends": list(BACKENDS), **other})
    r = runner.invoke(app, ["baseline", "save", str(a), str(b), "x", "--root", str(tmp_path / "root")])
    assert r.exit_code == 2 and why in r.output
    assert not (tmp_path / "root").exists()


def test_baseline_save_refuses_a_run_given_twice_and_warns_on_software(tmp_path):
    a = sweep(tmp_path / "a", 1)
    r = runner.invoke(app, ["baseline", "save", str(a), str(a / "results.json"), "x", "--root", str(tmp_path / "r")])
    assert r.exit_code == 2 and "given twice" in r.output
    b = sweep(tmp_path / "b", 2, env={**H100, "torch": "2.14.0"})
    r = runner.invoke(app, ["baseline", "save", str(a), str(b), "x", "--root", str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    assert any("torch 2.14.0" in w for w in load_run(tmp_path / "r" / "h100" / "x").meta["warnings"])


# --- the summary --------------------------------------------------------------------------------------

def test_one_sided_cases_are_counted_per_backend_not_listed(tmp_path):
    base = sweep(tmp_path / "base", 1, rounds=3, drift=0.01)
    keep = {("sdpa_flash", CASES[0]), ("triton_fa2", CASES[0])}
    cur = sweep(tmp_path / "cur", 2, rounds=3, drift=0.01, only=keep)
    r = check(cur, "--baseline", base)
    assert r.exit_code == 0, r.output
    head = r.stdout.splitlines()[0]
    assert "2 cases compared (3 rounds each), 6 measured only in the baseline: sdpa_flash 3, triton_fa2 3" in head
    assert "missing" not in r.stdout and "|" not in r.stdout  # no table of missing rows
    r = check(base, "--baseline", cur)
    assert r.exit_code == 0 and "6 only in the current run: sdpa_flash 3, triton_fa2 3" in r.stdout
    assert "<details>" not in r.stdout
    r = check(cur, "--baseline", base, "--require-all")
    assert r.exit_code == 1 and "measured only in the baseline (failing: --require-all)" in r.stdout
    assert r.stdout.count("❌ missing") == 6


def test_failing_missing_rows_are_listed_up_to_a_bound(tmp_path):
    many = [case(n) for n in range(64, 64 + 8 * (MAX_MISSING_LISTED + 5), 8)]
    base = write_run(tmp_path / "base", [record("flex", c, 1.0, seed=i) for i, c in enumerate(many)])
    cur = write_run(tmp_path / "cur", [record("flex", many[0], 1.0, seed=99)])
    r = check(cur, "--baseline", base, "--require-all", "--format", "markdown")
    assert r.exit_code == 1
    missing = len(many) - 1
    assert f"{missing} measured only in the baseline (failing: --require-all): flex {missing}" in r.stdout
    listed = [line for line in r.stdout.splitlines() if line.startswith("| ❌ missing | flex |")]
    assert len(listed) == MAX_MISSING_LISTED
    assert f"| {missing - MAX_MISSING_LISTED} more |" in r.stdout
    r = check(cur, "--baseline", base, "--require-all", "--format", "json")
    assert sum(x["outcome"] == "missing" for x in json.loads(r.stdout)) == missing  # machines get every row
