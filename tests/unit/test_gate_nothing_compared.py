"""`flashbench check` never passes on nothing: a current run without records, one that shares no case with
the baseline, or one that did not finish is exit 3 with the reason in the summary (issue 15, item 4)."""
import xml.etree.ElementTree as ET

from typer.testing import CliRunner

from flashbench.cli import app
from synthetic import case, record, write_run

runner = CliRunner()
C1, C2, C3 = case(1024), case(4096), case(8192)


def check(*args):
    return runner.invoke(app, ["check", *map(str, args)], env={"GITHUB_STEP_SUMMARY": ""})


def baseline(tmp_path):
    return write_run(tmp_path / "base", [record("sdpa_flash", C1, 1.0, seed=1), record("sdpa_flash", C2, 4.0, seed=2)])


def test_current_run_without_records_is_not_a_pass(tmp_path):
    """Item 4: no records in the current run: exit 3, the summary says nothing was compared."""
    cur = write_run(tmp_path / "cur", [])
    r = check(cur, "--baseline", baseline(tmp_path))
    assert r.exit_code == 3, r.output
    assert "PASS" not in r.output.replace("NOT A PASS", "")
    assert "has no records: nothing was compared" in r.stdout  # in the markdown summary


def test_current_run_sharing_no_case_is_not_a_pass(tmp_path):
    """Item 4: a current run whose cases are all new: exit 3, "measured no case the baseline measured"."""
    cur = write_run(tmp_path / "cur", [record("sdpa_flash", C3, 2.0, seed=3)])
    junit = tmp_path / "gate.xml"
    r = check(cur, "--baseline", baseline(tmp_path), "--junit", junit)
    assert r.exit_code == 3, r.output
    assert "measured no case the baseline measured (2 baseline cases missing or skipped, 1 not in the baseline)" in r.stdout
    suite = ET.parse(junit).getroot().find("testsuite")
    assert int(suite.get("failures")) == 1  # a JUnit viewer shows it red too


def test_unfinished_current_run_is_flagged_and_not_a_pass(tmp_path):
    """Item 4: finished: false is not a pass even where every shared case passes; the hint says --resume."""
    cur = write_run(tmp_path / "cur", [record("sdpa_flash", C1, 1.0, seed=1)], finished=False, tasks_total=2)
    r = check(cur, "--baseline", baseline(tmp_path))
    assert r.exit_code == 3, r.output
    assert "did not finish (finished: false, 1 of 2 tasks have rows)" in r.stdout and "--resume" in r.stdout
    assert "NOT A PASS: 1 cases compared" in r.output


def test_a_regression_in_an_unfinished_run_is_still_exit_1(tmp_path):
    """Item 4: the regression exit code wins over "not comparable"."""
    cur = write_run(tmp_path / "cur", [record("sdpa_flash", C1, 2.0, seed=5)], finished=False)
    r = check(cur, "--baseline", baseline(tmp_path))
    assert r.exit_code == 1, r.output
    assert "FAIL" in r.output


LOST = "triton_fa2 not installed"


def test_a_run_that_skips_every_case_the_baseline_measured_is_not_a_pass(tmp_path):
    """A backend that lost its kernels skips every case: nothing was measured against the baseline, so exit 3,
    never "PASS: 2 cases compared"."""
    cur = write_run(tmp_path / "cur", [record("sdpa_flash", c, status="skipped", reason=LOST) for c in (C1, C2)])
    r = check(cur, "--baseline", baseline(tmp_path))
    assert r.exit_code == 3, r.output
    assert "NOT A PASS: 0 cases compared, 2 measured only in the baseline: sdpa_flash 2" in r.output
    assert "measured no case the baseline measured (2 baseline cases missing or skipped" in r.stdout


def test_a_case_skipped_now_counts_as_missing_and_fails_with_require_all(tmp_path):
    """One case still measured, one now skipped: reported as missing with the skip's reason; --require-all
    fails it."""
    cur = write_run(tmp_path / "cur", [record("sdpa_flash", C1, 1.0, seed=1),
                                       record("sdpa_flash", C2, status="skipped", reason=LOST)])
    r = check(cur, "--baseline", baseline(tmp_path))
    assert r.exit_code == 0 and "1 cases compared" in r.output and "1 measured only in the baseline" in r.output
    r = check(cur, "--baseline", baseline(tmp_path), "--require-all")
    assert r.exit_code == 1, r.output
    assert f"skipped in the current run (baseline: ok): {LOST}" in r.stdout


def test_a_case_skipped_in_both_runs_is_no_loss(tmp_path):
    base = write_run(tmp_path / "base", [record("sdpa_flash", C1, 1.0, seed=1),
                                         record("sdpa_flash", C2, status="skipped", reason=LOST)])
    cur = write_run(tmp_path / "cur", [record("sdpa_flash", C1, 1.0, seed=1),
                                       record("sdpa_flash", C2, status="skipped", reason=LOST)])
    r = check(cur, "--baseline", base, "--require-all")
    assert r.exit_code == 0 and "2 cases compared" in r.output, r.output
