"""A backend slower over all its cases (CPU runs of one round each): flashbench.analysis.backend_shift."""
import xml.etree.ElementTree as ET

import pytest

from flashbench.analysis.backend_shift import MIN_CASES, backend_shifts
from flashbench.analysis.gate import check_runs
from flashbench.analysis.thresholds import Thresholds, load_thresholds, parse_thresholds
from flashbench.model.yaml_input import ConfigError
from flashbench.report.gate_report import gate_frame, gate_junit_xml, gate_markdown, headline
from flashbench.results.files import load_run
from synthetic import case, record, write_run

CPU = {"device": "cpu", "torch": "2.13.0"}
CASES = [case(n) for n in (64, 128, 256, 512)]


def _runs(tmp_path, factors: dict, env=CPU, rounds=1):
    """A baseline and a current run of ``naive`` and ``sdpa`` on CASES; ``factors[(backend, i)]``
    scales one case's time in the current run."""
    def run(name, scale):
        recs = [record(b, c, (1.0 + i) * scale(b, i), spread=0.01, seed=i + 10 * (b == "sdpa"), rounds=rounds)
                for b in ("naive", "sdpa") for i, c in enumerate(CASES)]
        return load_run(write_run(tmp_path / name, recs, env=env))
    return run("base", lambda b, i: 1.0), run("cur", lambda b, i: factors.get((b, i), factors.get(b, 1.0)))


def test_a_backend_twice_slower_everywhere_fails_as_a_whole(tmp_path):
    thresholds, _ = load_thresholds(None)
    report = check_runs(*_runs(tmp_path, {"sdpa": 2.0}), thresholds)
    assert report.count("regression") == 0  # 2x is within a single CPU case's margin (2.5x) ...
    assert [s.backend for s in report.failed_shifts] == ["sdpa"]  # ... not within the backend's (1.5x)
    assert report.failed and not report.passed and report.exit_code == 1
    naive = next(s for s in report.shifts if s.backend == "naive")
    assert naive.ratio == pytest.approx(1.0, abs=0.01) and not naive.failed
    assert "FAIL" in headline(report) and "slower as a whole: sdpa" in headline(report)
    md = gate_markdown(report)
    assert "> ❌ slower as a whole: sdpa: median time 2.00x the baseline's over its 4 cases" in md
    assert "> note: naive: median time 1.00x" in md
    frame = gate_frame(report)
    row = frame[frame.outcome == "slower_as_a_whole"].iloc[0]
    assert row.backend == "sdpa" and row.failed and row.new == pytest.approx(2.0, rel=0.01)
    suite = ET.fromstring(gate_junit_xml(report).split("\n", 1)[1]).find("testsuite")
    assert suite.get("failures") == "1" and suite.get("tests") == str(len(report.cases) + 1)
    assert any(f.get("type") == "slower_as_a_whole" for f in suite.iter("failure"))


def test_one_case_moved_like_cpu_noise_passes(tmp_path):
    thresholds, _ = load_thresholds(None)
    report = check_runs(*_runs(tmp_path, {("sdpa", 0): 2.2, ("naive", 3): 0.5}), thresholds)
    assert report.passed and not report.failed_shifts
    assert next(s for s in report.shifts if s.backend == "sdpa").ratio == pytest.approx(2.2 ** 0.25, rel=0.01)


def test_only_cpu_runs_and_enough_cases(tmp_path):
    thresholds, _ = load_thresholds(None)
    gpu = {"gpu_name": "NVIDIA H100 80GB HBM3", "device": "cuda", "torch": "2.13.0"}
    assert check_runs(*_runs(tmp_path / "g", {"sdpa": 1.04}, env=gpu), thresholds).shifts == []
    # with rounds too: each case is held to the CPU margin scaled to its rounds, as wide as CPU noise
    rounds = check_runs(*_runs(tmp_path / "r", {"sdpa": 2.0}, rounds=3), thresholds)
    assert [s.backend for s in rounds.failed_shifts] == ["sdpa"]
    base, cur = _runs(tmp_path / "few", {"sdpa": 2.0})
    few = [c for c in check_runs(base, cur, thresholds).cases if c.key["seq_len_q"] < 256]
    assert len({c.key["seq_len_q"] for c in few}) == MIN_CASES - 1
    assert backend_shifts(few, thresholds, "cpu") == []


def test_the_limit_comes_from_the_thresholds_per_backend(tmp_path):
    text = "defaults: {single_round_shift_cpu: 0.5}\nbackends: {sdpa: {single_round_shift_cpu: 1.5}}\n"
    thresholds = parse_thresholds(text, "t.yaml")
    report = check_runs(*_runs(tmp_path, {"sdpa": 2.0, "naive": 1.6}), thresholds)
    assert [s.backend for s in report.failed_shifts] == ["naive"]
    assert thresholds.for_backend("sdpa").single_round_shift_cpu == 1.5
    assert Thresholds().defaults.single_round_shift_cpu == 0.5


@pytest.mark.parametrize("text", ["defaults: {single_round_shift_cpu: -1}\n",
                                  "backends: {sdpa: {single_round_shift_cpu: abc}}\n"])
def test_a_bad_shift_limit_names_its_field(text):
    with pytest.raises(ConfigError, match="single_round_shift_cpu"):
        parse_thresholds(text, "t.yaml")
