"""The metrics table (flashbench.model.metrics): one row per metric, read by compare, the gate,
the thresholds file, the run tables and the plots."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flashbench.analysis.compare import change_words
from flashbench.analysis.gate import MetricCheck
from flashbench.analysis.thresholds import Limits, PartialLimits
from flashbench.model.metrics import METRICS, by_column, get_metric, gated_metrics
from flashbench.model.schema import RECORD_FIELDS
from flashbench.report.format import format_value
from flashbench.report.gate_report import note_text, value_text

SUPPORT = Path(__file__).resolve().parents[1] / "support"
BUNDLED_THRESHOLDS = Path(__file__).resolve().parents[2] / "configs" / "thresholds" / "default.yaml"


def test_rows_are_unique_and_name_record_fields():
    for attr in ("name", "column", "label", "gate_key"):
        values = [getattr(m, attr) for m in METRICS if getattr(m, attr) is not None]
        assert len(values) == len(set(values)), attr
    for m in METRICS:
        assert m.column in RECORD_FIELDS
        for col in (m.interval or ())[1:]:
            assert col in RECORD_FIELDS
        assert m.kind in ("number", "ms", "bytes")
        assert (m.gate_key is None) == (m.default_threshold is None)


def test_names_users_already_use():
    assert [m.name for m in METRICS] == ["ms", "tflops", "gbps", "peak_hbm", "host", "tflop_per_j", "pct_peak", "pct_hbm",
                                        "clock"]
    assert [m.gate_key for m in gated_metrics()] == ["latency", "tflops", "peak_hbm"]
    assert get_metric("ms").column == "median_ms" and by_column("peak_hbm_bytes").name == "peak_hbm"
    with pytest.raises(ValueError, match="--metric: 'joules' is not one of ms, tflops, gbps, peak_hbm, host, tflop_per_j, pct_peak, pct_hbm, "
                                         "clock"):
        get_metric("joules")
    with pytest.raises(ValueError, match="column"):
        by_column("joules_j")


def test_thresholds_keys_and_defaults_come_from_the_table():
    for m in gated_metrics():
        assert Limits.model_fields[m.gate_key].default == m.default_threshold
        assert PartialLimits.model_fields[m.gate_key].default is None
        assert m.floor_key in Limits.model_fields
    # the bundled thresholds file writes the same defaults
    defaults = yaml.safe_load(BUNDLED_THRESHOLDS.read_text())["defaults"]
    assert {m.gate_key: m.default_threshold for m in gated_metrics()} == \
        {k: v for k, v in defaults.items() if k in {m.gate_key for m in gated_metrics()}}


def test_directions_and_words():
    ms, tflops, hbm = (get_metric(n) for n in ("ms", "tflops", "peak_hbm"))
    assert ms.worse(1.1) and not ms.worse(0.9) and tflops.worse(0.9) and hbm.worse(1.1)
    assert ms.better(0.5, 1.0) and tflops.better(2.0, 1.0) and not hbm.better(2.0, 1.0)
    assert ms.speedup(0.5, 1.0) == 2.0 and tflops.speedup(300.0, 100.0) == 3.0
    assert change_words(1.25, hbm) == "1.25x more memory" and change_words(0.8, tflops) == "1.25x slower"
    assert change_words(1.0, ms) == "same"
    check = MetricCheck(tflops, 100.0, 97.0, -0.03, 0.05, True, "", False, False)
    assert check.words() == "3.0% fewer TFLOP/s"
    check = MetricCheck(hbm, 0.0, 64.0, float("inf"), 0.1, None, "exact", True, False)
    assert check.words() == "more memory (baseline 0)"


def test_values_and_notes_by_kind():
    ms, tflops, hbm = (get_metric(n) for n in ("ms", "tflops", "peak_hbm"))
    assert format_value(hbm, 3 << 30) == "3.0 GiB" and format_value(ms, 1.5) == "1.5"
    assert format_value(ms, 1.5, with_unit=True) == "1.5 ms"
    assert format_value(tflops, 412.3, with_unit=True) == "412 TFLOP/s"  # a value on its own names its unit
    assert format_value(ms, float("nan")) == "–" and format_value(hbm, None) == "–"
    timing = MetricCheck(ms, 0.01, 0.02, 1.0, 0.05, True, "", False, False, "floor", 0.01, 0.03)
    assert note_text(timing) == "change 10.0 µs is under min_abs_ms (30 µs)"
    memory = MetricCheck(hbm, 1.0, 2.0, 1.0, 0.1, None, "exact", False, False, "floor", 512 << 10, 1 << 20)
    assert note_text(memory) == "change 512.0 KiB is under min_abs_hbm_bytes"
    assert value_text(memory, 64 << 20) == "64.0 MiB"
    assert note_text(MetricCheck(ms, 1, 2, 1.0, 0.05, False, "", False, False, "noise")) == "within noise"
    assert note_text(MetricCheck(ms, 1, 2, 1.0, 0.05, True, "", True, False)) == ""


# --- adding a row ----------------------------------------------------------------------------------
# A fresh interpreter adds one row to the table before anything reads it, exactly as an edit of
# metrics.py would, then uses compare, the gate (with a thresholds key), and the run table.

SCRIPT = r"""
import json, sys
from pathlib import Path

import flashbench.model.metrics as metrics

# the table's own GB/s row goes; "add" puts back one of its own (gated, with other words)
metrics.METRICS = tuple(m for m in metrics.METRICS if m.name != "gbps")
if sys.argv[2] == "add":
    metrics.METRICS = metrics.METRICS + (metrics.Metric(
        "gbps", "hbm_gbps", "HBM GB/s", "GB/s", higher_is_better=True, kind="number", timing=True,
        words=("less bandwidth", "more bandwidth"), gate_key="hbm_gbps", default_threshold=0.05,
        floor_key="min_abs_ms"),)

from rich.console import Console
from typer.testing import CliRunner

from synthetic import case, record, write_run
from flashbench.cli import app
from flashbench.report.format import run_table
from flashbench.results.files import load_run

tmp = Path(sys.argv[1])
c = case(1024)


def rec(backend, ms, seed):
    r = record(backend, c, ms, seed=seed)
    r.hbm_gbps = 1000.0 / ms  # bandwidth goes with speed
    return r


old = write_run(tmp / "old", [rec("sdpa_flash", 1.0, 1), rec("triton_fa2", 0.5, 2)])
new = write_run(tmp / "new", [rec("sdpa_flash", 1.5, 3), rec("triton_fa2", 0.5, 4)])
thr = tmp / "thr.yaml"
# one round each: a small single-round margin lets the 1.5x change count
thr.write_text("defaults: {latency: null, tflops: null, peak_hbm: null, hbm_gbps: 0.10, single_round_margin: 0.2}\n")
runner = CliRunner()


def invoke(*args):
    r = runner.invoke(app, [*map(str, args)], env={"GITHUB_STEP_SUMMARY": ""})
    return {"exit": r.exit_code, "stdout": r.stdout, "stderr": r.stderr}


console = Console(width=250, no_color=True, record=True, file=open("/dev/null", "w"))
console.print(run_table(load_run(old).frame(), "sdpa_flash"))
print(json.dumps({
    "within": invoke("compare", old, "--metric", "gbps", "--format", "json"),
    "within_table": invoke("compare", old, "--metric", "gbps"),
    "runs": invoke("compare", old, new, "--metric", "gbps", "--format", "json"),
    "check": invoke("check", new, "--baseline", old, "--thresholds", thr, "--format", "json"),
    "check_md": invoke("check", new, "--baseline", old, "--thresholds", thr),
    "run_table": console.export_text(),
}))
"""


def _use_extra_metric(tmp_path, mode: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SUPPORT), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), mode], capture_output=True, text=True, env=env,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_one_new_row_reaches_compare_gate_and_render(tmp_path):
    out = _use_extra_metric(tmp_path, "add")
    # compare, one run: the metric's values and a speedup that reads "higher is better"
    assert out["within"]["exit"] == 0, out["within"]
    rows = json.loads(out["within"]["stdout"])
    assert rows[0]["sdpa_flash"] == pytest.approx(1000, rel=0.02) and rows[0]["winner"] == "triton_fa2"
    assert rows[0]["triton_fa2 speedup"] == pytest.approx(2.0, rel=0.02)
    assert "HBM GB/s" in out["within_table"]["stdout"]
    # compare, runs against runs: a timing metric, so noise-tested and worded as speed
    assert out["runs"]["exit"] == 0, out["runs"]
    changes = {r["backend"]: r for r in json.loads(out["runs"]["stdout"])}
    assert changes["sdpa_flash"]["change"] == "1.50x slower" and changes["sdpa_flash"]["beyond_noise"] is True
    # the gate: a thresholds key of its own, its own words
    assert out["check"]["exit"] == 1, out["check"]
    checks = [r for r in json.loads(out["check"]["stdout"]) if r.get("metric") == "hbm_gbps"]
    assert {r["backend"] for r in checks} == {"sdpa_flash", "triton_fa2"}
    assert [r["regression"] for r in checks if r["backend"] == "sdpa_flash"] == [True]
    assert "33.3% less bandwidth" in out["check_md"]["stdout"]
    # the run table: a column headed by its label
    assert "HBM GB/s" in out["run_table"] and "1,000" in out["run_table"]


def test_without_the_row_nothing_knows_the_metric(tmp_path):
    out = _use_extra_metric(tmp_path, "control")
    assert out["within"]["exit"] == 2 and "gbps" in out["within"]["stderr"]
    assert out["check"]["exit"] == 2 and "hbm_gbps" in out["check"]["stderr"]
    assert "HBM GB/s" not in out["run_table"]
