"""`flashbench compare RUN --baseline B` fits a 120-column terminal: no header or cell cut, backends spread
over several tables when they do not fit in one; machine formats keep every column (issue 15, item 13)."""
import io
import json
import re
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from flashbench.cli import app

runner = CliRunner()
DEFAULT = Path(__file__).resolve().parents[2] / "results" / "baselines" / "h100" / "default"
BACKENDS = ("naive", "sdpa", "sdpa_flash", "sdpa_efficient", "sdpa_cudnn", "sdpa_math", "flex", "triton_fa1",
            "triton_fa2")


def compare_at(width, monkeypatch, *args):
    buf = io.StringIO()
    console = Console(file=buf, width=width, no_color=True, highlight=False)
    monkeypatch.setattr("flashbench.cli.compare_cmd.out", console)
    r = runner.invoke(app, ["compare", str(DEFAULT), *args])
    assert r.exit_code == 0, r.output
    return buf.getvalue()


def test_readme_example_fits_120_columns(monkeypatch):
    """Item 13: the README's example at COLUMNS=120: every line fits, nothing is cut to "…", every
    backend is named in full and every shape row is there."""
    text = compare_at(120, monkeypatch, "--baseline", "sdpa_flash")
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 120
    assert "…" not in text
    for b in BACKENDS:
        assert re.search(rf"(^|\s){b}(\s|$)", text, re.MULTILINE), b
    assert "table 1 of" in text
    rows = [line for line in lines if re.match(r"^\s*B\d+ H\d+ N\d+ D\d+ ", line)]
    csv = runner.invoke(app, ["compare", str(DEFAULT), "--baseline", "sdpa_flash", "--format", "csv"]).stdout
    shapes = len(csv.splitlines()) - 2  # less the header and the geomean row
    assert len(rows) == shapes * len(re.findall("table \\d of", text))  # every shape in each table


def test_wide_terminal_keeps_one_table(monkeypatch):
    """Item 13: where the whole table fits, it stays one table with a column per shape field."""
    text = compare_at(400, monkeypatch, "--baseline", "sdpa_flash")
    assert "table 1 of" not in text and "…" not in text


def test_few_backends_keep_one_table_at_120(monkeypatch):
    """Item 13: two backends fit in one table at 120 columns."""
    text = compare_at(120, monkeypatch, "--baseline", "sdpa_flash", "--backends", "sdpa_flash,triton_fa2")
    assert "table 1 of" not in text and "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 120


@pytest.mark.parametrize("fmt", ["markdown", "csv", "json"])
def test_machine_formats_keep_full_names(fmt):
    """Item 13: markdown, csv and json keep every backend's full name and speedup column."""
    r = runner.invoke(app, ["compare", str(DEFAULT), "--baseline", "sdpa_flash", "--format", fmt])
    assert r.exit_code == 0
    head = list(json.loads(r.stdout)[0]) if fmt == "json" else r.stdout.splitlines()[0]
    for b in BACKENDS:
        assert b in head and f"{b} speedup" in head
