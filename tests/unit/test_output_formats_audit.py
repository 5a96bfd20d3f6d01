"""Output audit: what every command prints for machines (``--format json|csv|markdown``) and for people
(tables fitted to the terminal).

Machines: stdout holds the document alone (strict JSON, CSV pandas reads with one type per column, a
markdown table one line per row), named as the metrics table names the figures (``metric_column``),
missing and non-finite numbers alike (null / empty / "–"), the same columns with no rows, exit codes
the same in every format. People: tables fit 60, 100 and 200 columns without cutting a backend's name,
a case label or its key figure (what is left out is named), log lines on a pipe are never broken, and
values standing alone carry their unit.
"""
import csv
import io
import json
import math
import os
import pty
import re
import select
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console
from typer.testing import CliRunner

from synthetic import case, record, slower_copy, write_run
from flashbench.cli import app
from flashbench.report.format import format_frame, run_table, to_markdown
from flashbench.report.gate_report import GATE_COLUMNS
from flashbench.results.files import load_run

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]
H200 = ROOT / "results" / "baselines" / "h200"
H100 = ROOT / "results" / "baselines" / "h100"
ANSI = re.compile(r"\x1b\[")


def invoke(*args, env=None):
    return runner.invoke(app, [*map(str, args)], env={"GITHUB_STEP_SUMMARY": "", **(env or {})})


def strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def one_type_per_column(rows: list[dict]) -> dict:
    """Columns whose non-null values mix types (numbers with text, say): {column: types}."""
    mixed = {}
    for key in {k for r in rows for k in r}:
        types = {type(r[key]).__name__ for r in rows if r.get(key) is not None}
        if types == {"int", "float"}:
            continue
        if len(types) > 1:
            mixed[key] = types
    return mixed


def text_in_number_columns(text: str) -> dict:
    """CSV columns holding numbers and also text (a status word, "geomean", "1.2x"): {column: texts}."""
    def number(s):
        try:
            float(s)
            return True
        except ValueError:
            return False

    rows = list(csv.DictReader(io.StringIO(text)))
    out = {}
    for col in rows[0] if rows else []:
        values = [r[col] for r in rows if r[col] != ""]
        if any(number(v) for v in values) and not all(number(v) for v in values):
            out[col] = sorted({v for v in values if not number(v)})[:3]
    return out


# --- machine formats ------------------------------------------------------------------------------

@pytest.mark.parametrize("baseline", ["fa2", "decode"])
def test_compare_one_run_json_and_csv_are_typed(baseline):
    """compare RUN --format json|csv: the geometric-mean row is told apart by a `row` column (not the
    word "geomean" in `batch`), a backend's column holds numbers only (its status beside it), and the
    metric is named by its metrics-table column."""
    r = invoke("compare", H200 / baseline, "--format", "json")
    assert r.exit_code == 0 and not ANSI.search(r.stdout)
    rows = strict_json(r.stdout)
    assert one_type_per_column(rows) == {}
    assert [x["row"] for x in rows].count("geomean") == 1 and rows[-1]["row"] == "geomean"
    assert rows[-1]["batch"] is None and isinstance(rows[0]["batch"], int)
    column, unit = ("hbm_gbps", "GB/s") if baseline == "decode" else ("tflops", "TFLOP/s")  # decode: by bandwidth
    assert {x["metric_column"] for x in rows} == {column} and {x["unit"] for x in rows} == {unit}
    statuses = {x[k] for x in rows for k in x if k.endswith(" status")}
    assert "ok" in statuses and "–" not in statuses
    if baseline == "decode":  # sdpa_flash skips four-token decode: a null value, the status beside it
        skipped = [x for x in rows if x.get("sdpa_flash status") == "skipped"]
        assert skipped and all(x["sdpa_flash"] is None for x in skipped)
    r = invoke("compare", H200 / baseline, "--format", "csv")
    assert r.exit_code == 0
    assert text_in_number_columns(r.stdout) == {}
    df = pd.read_csv(io.StringIO(r.stdout))
    assert pd.api.types.is_numeric_dtype(df["batch"]) and pd.api.types.is_numeric_dtype(df["sdpa_flash"])


def test_compare_one_run_markdown_stays_for_people():
    """markdown (a GitHub step summary) reads as the terminal table does, each figure with its unit."""
    r = invoke("compare", H200 / "decode", "--format", "markdown")
    assert r.exit_code == 0
    lines = r.stdout.splitlines()
    assert lines[0].startswith("| batch |") and set(lines[1]) <= set("|-")
    assert "| sdpa_cudnn GB/s | sdpa_cudnn speedup |" in lines[0]
    assert "| geomean |" in lines[-1] and "skipped" in r.stdout and re.search(r"\| \d+\.\d\dx \|", lines[2])
    assert all(line.count("|") - line.count("\\|") == lines[0].count("|") for line in lines)
    r = invoke("compare", H200 / "window", "--format", "markdown", "--metric", "peak_hbm")
    assert "| flex peak HBM |" in r.stdout and " MiB |" in r.stdout  # binary units, as the table shows


def test_compare_runs_name_their_metric():
    for metric, column, unit in (("ms", "median_ms", "ms"), ("tflops", "tflops", "TFLOP/s"),
                                 ("peak_hbm", "peak_hbm_bytes", "bytes")):
        r = invoke("compare", H200 / "window", H200 / "window", "--metric", metric, "--format", "json")
        assert r.exit_code == 0
        rows = strict_json(r.stdout)
        assert rows and {x["metric_column"] for x in rows} == {column} and {x["unit"] for x in rows} == {unit}
        assert one_type_per_column(rows) == {}
    r = invoke("compare", H200 / "window", H200 / "window", "--format", "csv")
    header = r.stdout.splitlines()[0].split(",")
    assert header.index("metric_column") < header.index("old") < header.index("new")


def test_check_columns_do_not_depend_on_what_was_compared(tmp_path):
    """check --format csv: a gate that compared nothing names the same columns as one that did; exit 3
    in every format."""
    a = write_run(tmp_path / "a", [record("sdpa_flash", case(1024), 1.0, seed=1)])
    b = write_run(tmp_path / "b", [record("sdpa_flash", case(2048), 1.0, seed=2)])
    codes = set()
    for fmt in ("csv", "json", "markdown"):
        r = invoke("check", b, "--baseline", a, "--format", fmt)
        codes.add(r.exit_code)
        if fmt == "csv":
            assert r.stdout.splitlines()[0].split(",") == list(GATE_COLUMNS)
        elif fmt == "json":
            assert all(list(x) == list(GATE_COLUMNS) for x in strict_json(r.stdout))
    assert codes == {3}
    r = invoke("check", a, "--baseline", a, "--format", "csv")
    assert r.exit_code == 0 and r.stdout.splitlines()[0].split(",") == list(GATE_COLUMNS)


def test_check_regression_exit_code_and_units_in_every_format(tmp_path):
    slow = slower_copy(H200 / "window", tmp_path / "slow", 1.3, only=4)
    codes = {}
    for fmt in ("markdown", "json", "csv"):
        r = invoke("check", slow, "--baseline", H200 / "window", "--format", fmt)
        codes[fmt] = r.exit_code
        assert not ANSI.search(r.stdout)
        if fmt == "json":
            rows = strict_json(r.stdout)
            tflops = [x for x in rows if x["metric"] == "tflops"]
            assert tflops and {x["metric_column"] for x in tflops} == {"tflops"}
            assert {x["unit"] for x in rows if x["metric"] == "latency"} == {"ms"}
        elif fmt == "csv":
            assert text_in_number_columns(r.stdout) == {}
        else:  # a value standing alone in the summary names its unit, whichever metric it is
            cells = [line.split(" | ") for line in r.stdout.splitlines() if "fewer TFLOP/s" in line]
            assert cells and all(c[4].endswith(" TFLOP/s") and c[5].endswith(" TFLOP/s") for c in cells)
            assert any(line.split(" | ")[4].endswith(" ms") for line in r.stdout.splitlines() if "% slower" in line)
    assert set(codes.values()) == {1}, codes


def test_frames_non_finite_and_tiny_numbers_agree_across_formats():
    df = pd.DataFrame({"backend": ["a", "b", "c", "d"], "median_ms": [1.5, math.nan, math.inf, -math.inf],
                       "max_abs_err": [3e-12, 1.25e-9, None, 0.5], "reason": ["", "x | y\nz", None, "ok"]})
    rows = strict_json(format_frame(df, "json"))
    assert [r["median_ms"] for r in rows] == [1.5, None, None, None]
    assert rows[0]["max_abs_err"] == 3e-12 and rows[1]["max_abs_err"] == 1.25e-9  # no rounding to 0.0
    back = pd.read_csv(io.StringIO(format_frame(df, "csv")))
    assert back["median_ms"].isna().tolist() == [False, True, True, True]
    assert back["max_abs_err"][0] == 3e-12
    md = format_frame(df, "markdown").splitlines()
    assert len(md) == 2 + len(df)  # the reason's line break stays inside its cell
    assert md[3].count(" – ") >= 1 and md[4].count("–") >= 1  # NaN, inf and None read alike
    assert "x \\| y z" in md[3]


def test_an_absurd_time_is_a_short_cell(tmp_path):
    """A median of 1e300 ms (an edited results file) was shown with every one of its 301 digits and their
    commas, and so were the factors it makes ("1000…00.00x slower"), cells of 300 to 400 characters in
    compare's and check's tables: past any real value a number reads as 1e+300 (metrics.factor_text)."""
    from flashbench.model.metrics import factor_text
    from flashbench.report.format import fmt_num

    assert fmt_num(1e300) == "1e+300" and fmt_num(-2.5e20) == "-2.5e+20" and fmt_num(123456.7) == "123,457"
    assert factor_text(1.333) == "1.33" and factor_text(1e300) == "1e+300"
    old = write_run(tmp_path / "old", [record("sdpa_flash", case(1024), 1.0, seed=1)])
    new = write_run(tmp_path / "new", [record("sdpa_flash", case(1024), 1e300, seed=1)])
    one = write_run(tmp_path / "one", [record("sdpa_flash", case(1024), 1e300, seed=1),
                                       record("triton_fa2", case(1024), 1.0, seed=2)])
    for args, code in ((["compare", old, new, "--all"], 0), (["check", new, "--baseline", old], 1),
                       (["compare", one], 0), (["compare", one, "-f", "markdown"], 0)):
        r = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "120", "GITHUB_STEP_SUMMARY": ""})
        assert r.exit_code == code, r.output
        assert "e+" in r.output and ",000,000" not in r.output and "00000000" not in r.output, r.output


def test_empty_frames_are_still_documents():
    df = pd.DataFrame(columns=["backend", "median_ms"])
    assert format_frame(df, "csv").strip() == "backend,median_ms"
    assert strict_json(format_frame(df, "json")) == []
    assert to_markdown(df).splitlines() == ["| backend | median_ms |", "|---|---|"]


@pytest.mark.parametrize("fmt", ["json", "csv", "markdown"])
def test_dry_run_machine_formats(tmp_path, fmt):
    """run --dry-run --format F: the plan as a document on stdout (a row per task), the summary on stderr."""
    r = invoke("run", "smoke", "--dry-run", "--format", fmt, "--out", tmp_path / "never")
    assert r.exit_code == 0 and not ANSI.search(r.stdout)
    assert "case×backend tasks" in r.stderr and "case×backend tasks" not in r.stdout
    if fmt == "json":
        rows = strict_json(r.stdout)
        assert {x["status"] for x in rows} == {"planned", "skipped"} and one_type_per_column(rows) == {}
        assert all(x["reason"] for x in rows if x["status"] == "skipped")
    elif fmt == "csv":
        df = pd.read_csv(io.StringIO(r.stdout))
        assert list(df.columns[:2]) == ["backend", "batch"] and set(df["status"]) == {"planned", "skipped"}
    else:
        assert r.stdout.startswith("| backend |")
    assert not (tmp_path / "never").exists()


def test_json_of_list_and_env_is_strict():
    for cmd in ("list", "env"):
        r = invoke(cmd, "--format", "json")
        assert r.exit_code == 0
        strict_json(r.stdout)


# --- people: tables fitted to the terminal -------------------------------------------------------

def printed(monkeypatch, module: str, width: int, *args) -> str:
    buf = io.StringIO()
    monkeypatch.setattr(f"flashbench.cli.{module}.out", Console(file=buf, width=width, no_color=True, highlight=False))
    r = invoke(*args)
    assert r.exit_code == 0, r.output
    return buf.getvalue()


def fits(text: str, width: int) -> None:
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width
    assert "…" not in text


@pytest.mark.parametrize("width", [60, 100, 200])
@pytest.mark.parametrize("baseline", ["default", "fa2", "decode"])
def test_compare_one_run_fits(monkeypatch, width, baseline):
    text = printed(monkeypatch, "compare_cmd", width, "compare", H200 / baseline)
    fits(text, width)
    run = load_run(H200 / baseline)
    for backend in {r.backend for r in run.records}:
        assert re.search(rf"(^|\s){backend}(\s|$)", text, re.MULTILINE), backend
    assert "geomean" in text


@pytest.mark.parametrize("width", [60, 100, 200])
def test_compare_runs_fits_and_keeps_the_change(monkeypatch, width):
    text = printed(monkeypatch, "compare_cmd", width, "compare", H100 / "fa2", H200 / "fa2")
    fits(text, width)
    changes = re.findall(r"\d\.\d\dx (\w+)", text)
    assert changes and set(changes) <= {"faster", "slower"}  # the word is never cut
    if width < 100:
        assert "left out to fit" in text and "noise" in text
    if width == 200:
        assert "beyond noise" in text and "left out" not in text


@pytest.mark.parametrize("width", [60, 100, 200])
@pytest.mark.parametrize("baseline", ["default", "decode", "varlen"])
def test_run_table_fits(width, baseline):
    run = load_run(H200 / baseline)
    console = Console(width=width, no_color=True, highlight=False, record=True, file=io.StringIO())
    console.print(run_table(run.frame(), run.meta.get("reference_backend"), title="t", width=width))
    text = console.export_text()
    fits(text, width)
    assert "median ms" in text
    assert ("GB/s" if baseline == "decode" else "TFLOP/s") in text  # the figure its rows are judged by
    for backend in {r.backend for r in run.records if r.status != "skipped"}:
        assert re.search(rf"(^|\s){backend}(\s|$)", text, re.MULTILINE), backend
    if width == 200 and baseline != "default":
        assert "left out" not in text


@pytest.mark.parametrize("width", [60, 100])
def test_list_and_env_fit_without_cutting_names(monkeypatch, width):
    text = printed(monkeypatch, "info_cmd", width, "list")
    fits(text, width)
    for name in ("sdpa_efficient", "torch_varlen", "triton_decode"):
        assert name in text
    fits(printed(monkeypatch, "info_cmd", width, "env"), width)


def test_profile_tables_fit_60_columns(monkeypatch, tmp_path):
    text = printed(monkeypatch, "profile_cmd", 60, "profile", "smoke", "-b", "naive,sdpa", "--case",
                   "seq_len=64,mode=fwd,causal=false", "--out", tmp_path / "p")
    # the tables fit; the notes under them are one line each (the terminal wraps them, Rich does not break them)
    notes = ("trace:", "IO model:", "no GPU:")
    tables = [line for line in text.splitlines() if not line.lstrip().startswith(notes)]
    assert max(len(line) for line in tables) <= 60
    assert "B1 H2 N64 D32" in text and "median ms" in text and "left out to fit 60 columns" in text
    assert "…" not in text.replace("… 11 more", "").replace("… 10 more", "")


def test_paths_to_copy_are_one_line(monkeypatch, tmp_path):
    root = tmp_path / ("a_baselines_root_whose_name_is_longer_than_a_narrow_terminal_" * 2)
    text = printed(monkeypatch, "common", 60, "baseline", "save", H200 / "window", "w", "--root", root)
    (line,) = [line for line in text.splitlines() if line.strip()]
    assert line.startswith("baseline saved: ") and line.endswith(f"{root.name}/h200/w")


# --- processes: pipes and a terminal ------------------------------------------------------------

def flashbench(*args, env=None, tty=False):
    """The installed CLI with stdout on a pipe, or on a pseudo-terminal (stderr on a pipe either way)."""
    cmd = [sys.executable, "-c", "from flashbench.cli import main; main()", *map(str, args)]
    full_env = {**os.environ, "GITHUB_STEP_SUMMARY": "", **(env or {})}
    if not tty:
        p = subprocess.run(cmd, capture_output=True, text=True, env=full_env, cwd=ROOT, timeout=120)
        return p.returncode, p.stdout, p.stderr
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    cols = int(full_env.get("COLUMNS", "100"))
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, cols, 0, 0))
    p = subprocess.Popen(cmd, stdout=slave, stderr=subprocess.PIPE, stdin=slave, env=full_env, cwd=ROOT)
    os.close(slave)
    data = b""
    while True:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
        elif p.poll() is not None:
            break
    p.wait(timeout=120)
    os.close(master)
    return p.returncode, data.decode(errors="replace").replace("\r\n", "\n"), p.stderr.read().decode()


def test_log_lines_on_a_pipe_are_not_broken(tmp_path):
    """stderr not a terminal (a CI log): the check's headline stays one line, whatever its length."""
    slow = slower_copy(H200 / "window", tmp_path / ("a_long_directory_name_" * 4), 1.3, only=4)
    code, _, err = flashbench("check", slow, "--baseline", H200 / "window", "--format", "json", env={"COLUMNS": "60"})
    assert code == 1
    (headline,) = [line for line in err.splitlines() if line.startswith("FAIL")]
    assert "regressed" in headline and len(headline) > 80


def test_machine_formats_on_a_terminal_hold_no_escape_codes():
    code, stdout, _ = flashbench("compare", H200 / "window", "--format", "json", tty=True, env={"COLUMNS": "60"})
    assert code == 0 and not ANSI.search(stdout)
    strict_json(stdout)


def test_tables_on_a_terminal_fit_and_no_colour_on_a_pipe():
    code, stdout, _ = flashbench("compare", H200 / "fa2", tty=True, env={"COLUMNS": "60"})
    assert code == 0
    plain = re.sub(r"\x1b\[[0-9;]*m", "", stdout)
    assert max(len(line) for line in plain.splitlines()) <= 60 and "…" not in plain
    assert "ran at an SM clock more than 3%" in " ".join(plain.split())  # the clock note, wrapped, not cut
    code, stdout, _ = flashbench("compare", H200 / "fa2", env={"COLUMNS": "60"})
    assert code == 0 and not ANSI.search(stdout)
