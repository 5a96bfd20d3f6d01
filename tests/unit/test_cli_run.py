"""`flashbench run`, `list`, `env` end to end on the CPU."""
import json

import pytest
from typer.testing import CliRunner

from flashbench.cli import app
from flashbench.results.files import load_run

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_run_smoke_writes_results(tmp_path):
    out = tmp_path / "smoke"
    r = invoke("run", "smoke", "--backends", "naive,sdpa,sdpa_flash", "--out", str(out), "--quiet")
    assert r.exit_code == 0, r.output
    run = load_run(out)
    df = run.frame()
    assert len(df) == 11 * 3  # 11 cases (8 dense, a window, a paged decode, a varlen batch) x 3 backends
    assert set(df[df.backend == "sdpa_flash"].status) == {"skipped"}  # CUDA-only on a CPU machine
    assert set(df[df.backend != "sdpa_flash"].status) == {"ok"}
    # one case of each workload beyond dense, every new column filled
    kinds = {(r.workload, r.kv_layout, r.page_size, bool(r.lengths), (r.window_left, r.window_right))
             for r in df[df.backend == "naive"].itertuples()}
    assert {("decode", "paged", 16, True, (-1, -1)), ("varlen", "contiguous", 0, True, (-1, -1)),
            ("dense", "contiguous", 0, False, (32, 0))} <= kinds
    assert (df.total_tokens > 0).all() and df.hbm_gbps[df.status == "ok"].gt(0).all()
    assert run.meta["finished"] is True
    assert any("CPU timings" in w for w in run.meta["warnings"])
    assert run.meta["config"]["sha256"] and "smoke" in run.meta["config"]["text"]
    assert run.meta["environment"]["torch"]
    assert (out / "results.csv").read_text().startswith("backend,batch,heads")


def test_run_table_output_names_backends(tmp_path):
    r = invoke("run", "smoke", "--backends", "naive,sdpa", "--out", str(tmp_path / "o"))
    assert r.exit_code == 0
    assert "naive" in r.output and "vs naive" in r.output and "records (22 ok" in r.output


@pytest.mark.parametrize("fmt", ["json", "csv", "markdown"])
def test_run_machine_formats(tmp_path, fmt):
    r = invoke("run", "smoke", "--backends", "naive", "--out", str(tmp_path / fmt), "--format", fmt, "--quiet")
    assert r.exit_code == 0
    if fmt == "json":
        rows = json.loads(r.stdout)
        assert len(rows) == 11 and rows[0]["backend"] == "naive"
    elif fmt == "csv":
        assert r.stdout.splitlines()[0].startswith("backend,")
    else:
        assert r.stdout.startswith("| backend |")


def test_dry_run_counts_and_lists_skips(tmp_path):
    r = invoke("run", "smoke", "--dry-run", "--out", str(tmp_path / "never"))
    assert r.exit_code == 0
    assert "11 cases" in r.output and "skip sdpa_flash" in r.output and "does not run on cpu" in r.output
    assert not (tmp_path / "never").exists()


def test_bad_config_exits_2_with_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("axes: {batch: 1, heads: 2, seq_len: 64, head_dim: 32, colour: red}\nbackends: [naive]\n")
    r = invoke("run", str(bad))
    assert r.exit_code == 2
    assert "axes.colour: unknown key" in r.output
    assert "Traceback" not in r.output


def test_missing_config_and_unknown_backend_exit_2(tmp_path):
    r = invoke("run", str(tmp_path / "missing.yaml"))
    assert r.exit_code == 2 and "no such file" in r.output
    r = invoke("run", "smoke", "--backends", "naive,turbo")
    assert r.exit_code == 2 and "unknown backend 'turbo'" in r.output


def test_bad_format_exits_2():
    assert invoke("run", "smoke", "--format", "xml").exit_code == 2


def test_cuda_device_on_a_cpu_machine_is_an_environment_error():
    r = invoke("run", "smoke", "--device", "cuda", "--backends", "naive")
    assert r.exit_code == 3, r.output
    assert "asks for a CUDA device, but none is available" in r.output and "--device cpu" in r.output


def test_list_and_env():
    r = invoke("list", "--format", "json")
    assert r.exit_code == 0
    doc = json.loads(r.stdout)
    names = {b["backend"]: b for b in doc["backends"]}
    assert {"naive", "sdpa", "sdpa_flash", "sdpa_cudnn", "sdpa_efficient", "sdpa_math", "flex", "triton_fa2",
            "triton_fa1"} <= set(names)
    assert names["sdpa_flash"]["available"] is False and names["sdpa_flash"]["reason"]
    assert {"default", "smoke", "seqlen", "headdim", "dtype"} <= {c["config"] for c in doc["configs"]}
    r = invoke("env")
    assert r.exit_code == 0 and "no GPU" in r.output
    doc = json.loads(invoke("env", "--format", "json").stdout)
    assert doc["gpu"] is False and doc["environment"]["flashbench"]


def test_new_columns_are_in_the_csv_and_empty_on_a_cpu(tmp_path):
    import csv

    out = tmp_path / "cols"
    r = invoke("run", "smoke", "--backends", "naive", "--out", str(out), "--quiet", "--cuda-graph")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert rows and all(row["status"] == "ok" and row["timing_method"] == "cpu_perf_counter" for row in rows)
    for col in ("host_ms", "launch_bound", "energy_j", "avg_power_w", "tflop_per_j", "pct_peak_flops", "pct_hbm",
                "sm_clock_mhz"):
        assert all(row[col] == "" for row in rows), col
    assert all(float(row["noise_pct"]) >= 0 for row in rows if row["noise_pct"])


def test_run_notes_backends_timed_at_clocks_far_apart(tmp_path, monkeypatch):
    """The run's tables are followed by a note naming the widest clock gap to the reference backend (the clock is
    faked: a CPU has none; the in-process sweep times naive, then sdpa_math, in each case)."""
    from flashbench.measure import measurer
    from flashbench.measure.timer import TimingResult
    from sweeps import tiny_config

    timed = []

    def time_call(*a, **k):
        timed.append(1)
        return TimingResult([0.1] * 5, "cpu_perf_counter", sm_clock_mhz=1_700.0 if len(timed) % 2 else 1_400.0)

    monkeypatch.setattr(measurer, "time_call", time_call)
    config = tiny_config(tmp_path, ["naive", "sdpa_math"], causal=(False,))
    r = invoke("run", config, "--executor", "inprocess", "--out", str(tmp_path / "out"))
    assert r.exit_code == 0, r.output
    assert "note: in 1 of 1 cases a backend ran at an SM clock more than 3% from naive's (widest: sdpa_math at " \
           "1,400 against 1,700 MHz" in " ".join(r.stdout.split())
    r = invoke("run", config, "--executor", "inprocess", "--out", str(tmp_path / "quiet"), "--quiet")
    assert r.exit_code == 0 and "note: in" not in r.stdout


def test_run_table_flags_launch_bound_rows():
    from rich.console import Console

    from synthetic import case, record
    from flashbench.report.format import run_table
    from flashbench.results.files import records_frame

    bound = record("triton_fa2", case(1024), 0.1, seed=1)
    bound.host_ms, bound.launch_bound, bound.tflop_per_j = 0.25, True, 1.5
    fine = record("sdpa_flash", case(1024), 0.3, seed=2)
    fine.host_ms, fine.launch_bound = 0.05, False
    console = Console(width=250, no_color=True, record=True, file=open("/dev/null", "w"))
    console.print(run_table(records_frame([bound, fine]), "sdpa_flash"))
    text = console.export_text()
    assert "host ms" in text and "TFLOP/J" in text
    assert "0.25*" in text and "0.05*" not in text and "launch-bound" in text
    console = Console(width=250, no_color=True, record=True, file=open("/dev/null", "w"))
    fine.pct_peak_flops = 41.5
    console.print(run_table(records_frame([fine]), "sdpa_flash"))
    text = console.export_text()
    assert "launch-bound" not in text
    assert "TFLOP/J" not in text  # no row has a value: no column
    assert "% peak" in text and "41.5" in text and "sustained bf16 matmul rate" in text  # the roof is named


def test_cpu_run_table_has_no_columns_of_gpu_only_measurements(tmp_path):
    r = invoke("run", "smoke", "--backends", "naive", "--out", str(tmp_path / "o"))
    assert r.exit_code == 0
    assert "median ms" in r.output and "host ms" not in r.output and "TFLOP/J" not in r.output
    assert "% peak" not in r.output


@pytest.mark.parametrize("value", ["-1", "60001", "nan"])
def test_bad_energy_ms_exits_2(tmp_path, value):
    r = invoke("run", "smoke", "--energy-ms", value, "--dry-run", "--out", str(tmp_path / "never"))
    assert r.exit_code == 2 and "--energy-ms" in r.output and "Traceback" not in r.output


def test_energy_ms_and_cuda_graph_override_the_configs_timing():
    from flashbench.execute.session import SweepRequest, prepare_sweep

    sweep = prepare_sweep(SweepRequest(config="smoke", dry_run=True, energy_ms=500.0, cuda_graph=True))
    timing = sweep.plan.loaded.config.timing
    assert timing.energy_ms == 500.0 and timing.cuda_graph is True
    assert prepare_sweep(SweepRequest(config="smoke", dry_run=True)).plan.loaded.config.timing.energy_ms == 0
