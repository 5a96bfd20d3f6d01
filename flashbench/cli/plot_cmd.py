"""``flashbench plot``: PNG figures of a results directory (needs matplotlib: the ``plot`` extra)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from . import app
from .common import EXIT_ENV, err, fail, print_line, user_errors


@app.command()
def plot(
    result: Path = typer.Argument(..., help="results directory (or results.json)"),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="where the PNGs go (default RESULT/plots/)"),
) -> None:
    """TFLOP/s against sequence length per backend (p20–p80 band), peak HBM against sequence length (log-log);
    for varlen TFLOP/s bars by length distribution, for decode GB/s against cache length."""

    from ..report.figure_style import PlotDependencyError, PlotError
    from ..report.plots import plot_run

    try:
        with user_errors():
            paths, left_out = plot_run(result, out_dir)
    except PlotDependencyError as e:
        fail(str(e), code=EXIT_ENV)
    except PlotError as e:
        fail(f"{result}: {e}")
    for p in paths:
        print_line(f"figure: {p}")  # a path to copy: one line, never broken
    if left_out:  # rows no figure shows (failed, skipped, no value) are named, never dropped silently
        err.print("[yellow]note:[/] rows in no figure (details in results.csv):", highlight=False)
        for line in left_out:
            err.print(escape(line), highlight=False, soft_wrap=True)
