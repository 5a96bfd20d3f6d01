"""`flashbench compare`: backends within one run, and runs against runs."""
import csv
import io
import json
import math

import pytest
from typer.testing import CliRunner

from synthetic import H100, case, record, write_run
from flashbench.cli import app
from flashbench.analysis.compare import change_words, compare_backends, compare_runs
from flashbench.model.metrics import get_metric
from flashbench.results.files import load_run

runner = CliRunner()
C1, C2, C3 = case(1024), case(4096), case(4096, causal=True)


def compare(*args):
    return runner.invoke(app, ["compare", *map(str, args)])


@pytest.fixture
def one_run(tmp_path):
    # sdpa_flash is the baseline; triton_fa2 wins N1024 and N4096, cudnn wins the causal case,
    # naive runs out of memory at N4096
    recs = [
        record("sdpa_flash", C1, 1.0, seed=1), record("triton_fa2", C1, 0.5, seed=2), record("naive", C1, 4.0, seed=3),
        record("sdpa_flash", C2, 4.0, seed=4), record("triton_fa2", C2, 2.0, seed=5),
        record("naive", C2, status="oom", reason="CUDA out of memory"),
        record("sdpa_flash", C3, 2.0, seed=6), record("triton_fa2", C3, 1.6, seed=7),
        record("sdpa_cudnn", C3, 1.0, seed=8),
    ]
    return write_run(tmp_path / "run", recs)


def test_within_run_winner_and_geomean(one_run):
    cmp = compare_backends(load_run(one_run).frame(), "sdpa_flash", "tflops")
    assert cmp.backends[0] == "sdpa_flash"
    assert list(cmp.rows["winner"]) == ["triton_fa2", "triton_fa2", "sdpa_cudnn"]
    # speedups ~2, ~2, ~1.25 -> geomean (2*2*1.25)^(1/3)
    assert cmp.geomean["triton_fa2"] == pytest.approx((2 * 2 * 1.25) ** (1 / 3), rel=0.02)
    assert cmp.geomean_n["triton_fa2"] == 3 and cmp.geomean_n["sdpa_cudnn"] == 1
    assert cmp.geomean["sdpa_flash"] == pytest.approx(1.0)
    assert cmp.geomean["naive"] == pytest.approx(0.25, rel=0.02)
    # ms: lower is better, same winners; speedup still "higher is better"
    ms = compare_backends(load_run(one_run).frame(), "sdpa_flash", "ms")
    assert list(ms.rows["winner"]) == ["triton_fa2", "triton_fa2", "sdpa_cudnn"]
    assert ms.geomean["triton_fa2"] == pytest.approx(cmp.geomean["triton_fa2"], rel=1e-6)
    # shape columns: batch varies with seq_len here (fixed tokens), heads does not
    assert cmp.shape_columns == ["batch", "seq_len_q", "head_dim", "dtype", "causal", "mode"]


def test_within_run_status_words_and_formats(one_run):
    r = compare(one_run, "--baseline", "sdpa_flash", "--format", "json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    # a row column tells the geometric-mean row apart; value columns hold numbers only, the status beside them
    assert len(rows) == 4 and rows[-1]["row"] == "geomean" and rows[-1]["batch"] is None
    n4096 = [x for x in rows[:-1] if x["seq_len_q"] == 4096 and not x["causal"]][0]
    assert n4096["naive"] is None and n4096["naive status"] == "oom" and n4096["winner"] == "triton_fa2"
    assert n4096["sdpa_cudnn"] is None and n4096["sdpa_cudnn status"] is None  # not run for that shape
    assert rows[-1]["triton_fa2 speedup"] == pytest.approx(1.71, rel=0.02)
    r = compare(one_run, "--format", "csv")  # the baseline defaults to the run's reference_backend
    assert r.exit_code == 0, r.output
    table = list(csv.DictReader(io.StringIO(r.stdout)))
    assert len(table) == 4 and "triton_fa2 speedup" in table[0]
    r = compare(one_run, "--format", "markdown", "--metric", "peak_hbm")
    assert r.exit_code == 0, r.output
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("| batch |") and set(lines[1]) <= set("|-") and len(lines) == 6


def test_within_run_table(one_run):
    r = compare(one_run, "--baseline", "sdpa_flash")
    assert r.exit_code == 0, r.output
    assert "★" in r.stdout and "geomean" in r.stdout and "oom" in r.stdout
    assert "\x1b[" not in r.stdout  # no colour codes when not a TTY


def test_within_run_backends_filter(one_run):
    r = compare(one_run, "--backends", "triton_fa2", "--format", "json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert {k for k in rows[0] if not k.endswith("speedup")} >= {"sdpa_flash", "triton_fa2"}
    assert "naive" not in rows[0] and "sdpa_cudnn" not in rows[0]
    assert compare(one_run, "--backends", "nope").exit_code == 2


def test_within_run_bad_baseline(one_run):
    r = compare(one_run, "--baseline", "fastest")
    assert r.exit_code == 2 and "fastest" in r.stderr
    assert compare(one_run, "--metric", "joules").exit_code == 2
    assert compare(one_run, "--format", "yaml").exit_code == 2


# --- runs against runs ------------------------------------------------------------------------------

@pytest.fixture
def two_runs(tmp_path):
    old = write_run(tmp_path / "old", [
        record("sdpa_flash", C1, 1.0, seed=1), record("triton_fa2", C1, 1.0, seed=2),
        record("triton_fa2", C2, 3.0, seed=3), record("naive", C2, 8.0, seed=4),
        record("flex", C1, 1.0, spread=0.3, n=12, seed=5),
    ])
    new = write_run(tmp_path / "new", [
        record("sdpa_flash", C1, 1.33, seed=11), record("triton_fa2", C1, 1.0 / 1.10, seed=12),
        record("triton_fa2", C2, 3.0, seed=13), record("naive", C2, status="oom", reason="out of memory"),
        record("flex", C1, 1.05, spread=0.3, n=12, seed=5),
        record("triton_fa1", C1, 2.0, seed=14),
    ])
    return old, new


def test_runs_ratio_wording(two_runs):
    old, new = (load_run(p) for p in two_runs)
    rc = compare_runs(old, new, "ms")
    by = {(r["backend"], r["seq_len_q"]): r for _, r in rc.rows.iterrows()}
    assert by[("sdpa_flash", 1024)]["change"] == "1.33x slower"
    assert by[("triton_fa2", 1024)]["change"] == "1.10x faster"
    assert by[("triton_fa2", 4096)]["change"] == "within noise"
    assert by[("flex", 1024)]["change"] == "within noise" and by[("flex", 1024)]["ratio"] == pytest.approx(1.05)
    assert by[("naive", 4096)]["change"] == "ok → oom"
    assert list(rc.only_new["backend"]) == ["triton_fa1"] and rc.only_old.empty
    assert rc.differences == []
    # TFLOP/s ratio is inverted, the wording is the same
    rt = compare_runs(old, new, "tflops")
    assert rt.rows.set_index(["backend", "seq_len_q"]).loc[("sdpa_flash", 1024), "change"] == "1.33x slower"


def test_a_measured_figure_no_noise_test_covers_is_not_called_exact(tmp_path):
    """Peak memory is a byte count; the SM clock and host time are measured, and compare does not noise-test them."""
    def runs(mhz):
        r = record("triton_fa2", C1, 1.0, seed=1)
        r.sm_clock_mhz = mhz
        return r
    old = load_run(write_run(tmp_path / "old", [runs(1_695.0)]))
    new = load_run(write_run(tmp_path / "new", [runs(1_470.0)]))
    clock = compare_runs(old, new, "clock").rows.iloc[0]
    assert clock["ratio"] == pytest.approx(1_470 / 1_695) and clock["change"] == "1.15x lower clock"
    assert clock["noise_detail"] == "a measured figure, not noise-tested"
    assert compare_runs(old, new, "peak_hbm").rows.iloc[0]["noise_detail"] == "exact measurement"


def test_within_a_run_the_clock_is_a_ratio_with_no_best_backend(tmp_path):
    recs = [record("sdpa_cudnn", C1, 1.0, seed=1), record("triton_fa2", C1, 1.04, seed=2)]
    for r, mhz in zip(recs, (1_695.0, 1_470.0)):
        r.sm_clock_mhz = mhz
    run = write_run(tmp_path / "run", recs)
    cmp = compare_backends(load_run(run).frame(), "sdpa_cudnn", "clock")
    assert cmp.rows.iloc[0]["winner"] == "" and cmp.rows.iloc[0]["triton_fa2 speedup"] == pytest.approx(1_470 / 1_695)
    assert compare_backends(load_run(run).frame(), "sdpa_cudnn", "tflops").rows.iloc[0]["winner"] == "sdpa_cudnn"
    r = runner.invoke(app, ["compare", str(run), "--metric", "clock", "--baseline", "sdpa_cudnn"], env={"COLUMNS": "160"})
    assert r.exit_code == 0 and "SM MHz, ratio to sdpa_cudnn" in r.stdout and "★" not in r.stdout and "0.87x" in r.stdout


def test_change_words():
    assert change_words(1.33, get_metric("ms")) == "1.33x slower"
    assert change_words(1 / 1.1, get_metric("ms")) == "1.10x faster"
    assert change_words(0.5, get_metric("tflops")) == "2.00x slower"
    assert change_words(1.2, get_metric("peak_hbm")) == "1.20x more memory"
    assert change_words(math.nan, get_metric("ms")) == "–"


def test_runs_cli_table_and_one_sided(two_runs):
    r = compare(*two_runs)
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert "1.33x slower" in out and "1.10x faster" in out and "ok → oom" in out
    assert "only in new" in out and "triton_fa1" in out
    assert "\x1b[" not in out


@pytest.mark.parametrize("fmt", ["json", "csv", "markdown"])
def test_runs_machine_formats(two_runs, fmt):
    r = compare(*two_runs, "--format", fmt)
    assert r.exit_code == 0, r.output
    if fmt == "json":
        rows = json.loads(r.stdout)
    elif fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(r.stdout)))
    else:
        lines = r.stdout.strip().splitlines()
        header = [c.strip() for c in lines[0].strip("|").split("|")]
        rows = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]
    assert len(rows) == 6
    changes = {row["backend"]: row["change"] for row in rows}
    assert changes["sdpa_flash"] == "1.33x slower" and changes["triton_fa1"] == "only in new"


def test_runs_more_than_two(two_runs, tmp_path):
    old, new = two_runs
    r = compare(old, new, new, "--format", "json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert len(rows) == 12 and {row["new_run"] for row in rows} == {str(new)}


@pytest.mark.parametrize("change", [{"env": {**H100, "gpu_name": "NVIDIA A100-SXM4-80GB"}},
                                    {"env": {**H100, "driver_version": "590.1"}},
                                    {"config_sha": "different"}])
def test_runs_environment_mismatch_warns_and_strict_refuses(tmp_path, change):
    old = write_run(tmp_path / "old", [record("sdpa_flash", C1, 1.0, seed=1)])
    new = write_run(tmp_path / "new", [record("sdpa_flash", C1, 1.0, seed=2)], **change)
    r = compare(old, new)
    assert r.exit_code == 0, r.output
    assert "WARNING" in r.stderr and "differs" in r.stderr
    r = compare(old, new, "--strict")
    assert r.exit_code == 3, r.output


def test_runs_software_difference_is_a_note(tmp_path):
    old = write_run(tmp_path / "old", [record("sdpa_flash", C1, 1.0, seed=1)])
    new = write_run(tmp_path / "new", [record("sdpa_flash", C1, 1.0, seed=2)], env={**H100, "torch": "2.14.0"})
    r = compare(old, new, "--strict")
    assert r.exit_code == 0, r.output
    assert "torch differs" in r.stderr


def test_runs_baseline_option_rejected(two_runs):
    assert compare(*two_runs, "--baseline", "sdpa").exit_code == 2


def test_missing_result_exit_2(tmp_path):
    assert compare(tmp_path / "nope").exit_code == 2


def test_a_decode_run_is_compared_by_bandwidth_unless_asked_otherwise():
    """Decode is memory-bound and judged by GB/s (README "Workloads"): compare RUN shows GB/s for a run whose
    rows are all decode, TFLOP/s for any other, and --metric still picks."""
    import json as _json
    from pathlib import Path

    from typer.testing import CliRunner

    from flashbench.cli import app

    root = Path(__file__).resolve().parents[2] / "results" / "baselines" / "h200"
    run = lambda *a: CliRunner().invoke(app, ["compare", *map(str, a), "--format", "json"])  # noqa: E731
    for name, column in (("decode", "hbm_gbps"), ("fa2", "tflops")):
        r = run(root / name)
        assert r.exit_code == 0, r.output
        assert {row["metric_column"] for row in _json.loads(r.stdout)} == {column}
    r = run(root / "decode", "--metric", "tflops")
    assert {row["metric_column"] for row in _json.loads(r.stdout)} == {"tflops"}


def test_a_case_in_one_run_only_keeps_its_own_figure_for_machines(tmp_path):
    """compare OLD NEW --format json: a case only one run measured carries that run's value (old or new), the
    other side null; a one-sided case that did not run ok has no value."""
    old = write_run(tmp_path / "old", [record("sdpa_flash", case(1024), 1.0, seed=1),
                                       record("sdpa_flash", case(2048), 2.0, seed=2)])
    new = write_run(tmp_path / "new", [record("sdpa_flash", case(1024), 1.0, seed=1),
                                       record("sdpa_flash", case(4096), 4.0, seed=3),
                                       record("flex", case(4096), status="oom", reason="out of memory")])
    r = CliRunner().invoke(app, ["compare", str(old), str(new), "--format", "json", "--all"])
    assert r.exit_code == 0, r.output
    rows = {(x["backend"], x["seq_len_q"], x["change"]): x for x in json.loads(r.stdout)}
    only_old = rows[("sdpa_flash", 2048, "only in old")]
    only_new = rows[("sdpa_flash", 4096, "only in new")]
    assert only_old["old"] == pytest.approx(2.0, rel=0.02) and only_old["new"] is None
    assert only_new["new"] == pytest.approx(4.0, rel=0.02) and only_new["old"] is None
    assert rows[("flex", 4096, "only in new")]["new"] is None
