"""Backends of a case timed at SM clocks far apart: found per case against the reference backend, widest first,
and named in a note under `run`'s and `compare`'s tables (nothing where no row has a clock)."""
import pytest
from typer.testing import CliRunner

from flashbench.analysis.clocks import GAP, clock_gaps
from flashbench.cli import app
from flashbench.report.comparison_tables import clock_gap_note
from flashbench.results.files import load_run
from synthetic import case, record, write_run

runner = CliRunner()
C1, C2, C3 = case(1024), case(4096), case(8192, causal=True)


def run_with_clocks(tmp_path, clocks: dict, name="run"):
    """clocks: (backend, case) -> MHz (None: no reading); every row measured ok unless the value is a status."""
    recs = []
    for (backend, c), mhz in clocks.items():
        if isinstance(mhz, str):
            recs.append(record(backend, c, status=mhz, reason="CUDA out of memory"))
            continue
        r = record(backend, c, 1.0, seed=len(recs))
        r.sm_clock_mhz = mhz
        recs.append(r)
    return write_run(tmp_path / name, recs)


def test_gaps_against_the_reference_widest_first(tmp_path):
    run = run_with_clocks(tmp_path, {
        ("sdpa_cudnn", C1): 1_700.0, ("triton_fa2", C1): 1_690.0, ("flex", C1): 1_600.0,  # flex 5.9% lower
        ("sdpa_cudnn", C2): 1_700.0, ("triton_fa2", C2): 1_400.0,                         # 17.6% lower
        ("sdpa_cudnn", C3): None, ("triton_fa2", C3): 1_200.0,                            # no reference clock
    })
    gaps, compared = clock_gaps(load_run(run).frame(), "sdpa_cudnn")
    assert compared == 2
    assert [(g.backend, g.case["seq_len_q"]) for g in gaps] == [("triton_fa2", 4096), ("flex", 1024)]
    assert gaps[0].ratio == pytest.approx(1_400 / 1_700) and gaps[0].reference_mhz == 1_700.0
    assert clock_gaps(load_run(run).frame(), "sdpa_cudnn", gap=0.10)[0][0].backend == "triton_fa2"
    assert len(clock_gaps(load_run(run).frame(), "sdpa_cudnn", gap=0.10)[0]) == 1
    note = clock_gap_note(gaps, compared, "sdpa_cudnn", GAP)
    assert note.startswith(f"in 2 of 2 cases a backend ran at an SM clock more than {GAP * 100:.0f}% from sdpa_cudnn's "
                           "(widest: triton_fa2 at 1,400 against 1,700 MHz, B4 H16 N4096 D128 bf16 fwd)")


def test_a_higher_clock_counts_as_a_gap_and_failed_rows_do_not(tmp_path):
    run = run_with_clocks(tmp_path, {("sdpa_cudnn", C1): 1_500.0, ("triton_fa2", C1): 1_700.0,
                                     ("sdpa_cudnn", C2): 1_500.0, ("naive", C2): "oom"})
    gaps, compared = clock_gaps(load_run(run).frame(), "sdpa_cudnn")
    assert compared == 1 and [g.backend for g in gaps] == ["triton_fa2"] and gaps[0].ratio > 1


def test_no_clocks_no_reference_or_clocks_within_the_gap_say_nothing(tmp_path):
    no_clocks = run_with_clocks(tmp_path, {("sdpa_cudnn", C1): None, ("triton_fa2", C1): None}, "none")
    assert clock_gaps(load_run(no_clocks).frame(), "sdpa_cudnn") == ([], 0)
    close = run_with_clocks(tmp_path, {("sdpa_cudnn", C1): 1_700.0, ("triton_fa2", C1): 1_660.0}, "close")
    gaps, compared = clock_gaps(load_run(close).frame(), "sdpa_cudnn")
    assert gaps == [] and compared == 1 and clock_gap_note(gaps, compared, "sdpa_cudnn", GAP) == ""


def test_compare_prints_the_note_under_its_tables_but_not_for_the_clock_itself(tmp_path):
    run = run_with_clocks(tmp_path, {("sdpa_cudnn", C1): 1_700.0, ("triton_fa2", C1): 1_400.0})
    args = ["compare", str(run), "--baseline", "sdpa_cudnn"]
    r = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "note: in 1 of 1 cases a backend ran at an SM clock" in r.stdout
    r = runner.invoke(app, args + ["--metric", "clock"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "note:" not in r.stdout
    r = runner.invoke(app, args + ["--format", "json"])
    assert r.exit_code == 0 and "note:" not in r.stdout  # machines read the clocks from the columns


def test_a_narrow_run_table_leaves_the_clock_out_before_the_figures_of_merit():
    from rich.console import Console

    from flashbench.report.format import run_table
    from flashbench.results.files import records_frame

    recs = [record(b, C2, ms, seed=i) for i, (b, ms) in enumerate((("sdpa_cudnn", 1.0), ("triton_fa2", 1.04)))]
    for r, mhz in zip(recs, (1_695.0, 1_470.0)):
        r.sm_clock_mhz, r.host_ms = mhz, 0.05
    console = Console(width=100, record=True)
    console.print(run_table(records_frame(recs), "sdpa_cudnn", title="t", width=100))
    text = console.export_text()
    left_out = " ".join(text.split()).split("left out to fit 100 columns: ")[1]
    assert "SM MHz" in left_out and "peak HBM" in text.split("left out")[0]
    assert left_out.index("SM MHz") < (left_out.index("host ms") if "host ms" in left_out else len(left_out))
