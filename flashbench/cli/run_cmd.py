"""``flashbench run``: execute a sweep and write a results directory."""
from __future__ import annotations

import datetime as _dt
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from . import app
from .common import EXIT_USAGE, err, fail, out, split_list, user_errors, write_machine


def default_config_name() -> str:
    import torch

    return "default" if torch.cuda.is_available() else "smoke"


def default_out_dir(name: str) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("results") / "runs" / f"{name or 'sweep'}-{stamp}"


def _print_dry_run(p, quiet: bool) -> None:
    cases = {t.case for t in p.runnable} | {r.case() for r in p.skipped}
    out.print(f"{p.loaded.path}: {len(cases)} cases, {p.total} case×backend tasks on {p.device}: "
              f"{len(p.runnable)} to run, {len(p.skipped)} skipped")
    if not quiet:
        for r in p.skipped:
            out.print(f"  skip {r.backend:<15} {r.case().label()}: {r.reason}", highlight=False, soft_wrap=True)


@app.command()
def run(
    config: Optional[str] = typer.Argument(None, help="YAML file or bundled config name (see `flashbench list`); "
                                                      "default: 'default' on a GPU, 'smoke' on a CPU"),
    backends: Optional[str] = typer.Option(None, "--backends", "-b", help="comma-separated backends (overrides the config)"),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="results directory (default results/runs/NAME-TIME)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="expand the grid, print cases and skips, run nothing"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar, no table"),
    fmt: str = typer.Option("table", "--format", "-f", help="table | json | csv | markdown"),
    device: Optional[str] = typer.Option(None, "--device", help="cuda | cpu (default: the config's, else auto)"),
    plot: bool = typer.Option(False, "--plot", help="write PNG figures into the results directory at the end (needs matplotlib)"),
) -> None:
    """Run a benchmark sweep: every case × backend ends as a row (ok, skipped, oom, error, mismatch)."""
    from ..render import FORMATS, SUMMARY_COLUMNS, failure_lines, format_frame, run_table, skipped_summary
    from ..results_io import ResultsWriter, records_frame
    from ..runner import InProcessExecutor, measure_settings, plan, run_metadata
    from ..runner import run_sweep
    from ..config import load_config

    if fmt not in FORMATS:
        fail(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
    if device not in (None, "cuda", "cpu"):
        fail(f"--device: {device!r} is not one of cuda, cpu")
    name = config or default_config_name()
    with user_errors():
        loaded = load_config(name)
        p = plan(loaded, split_list(backends), device)
    if device == "cuda" or p.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            fail("this config asks for a CUDA device, but none is available (use --device cpu)", code=3)
    if dry_run:
        _print_dry_run(p, quiet)
        return
    if p.device == "cpu" and not quiet:
        err.print("[yellow]note:[/] no GPU: running on the CPU. CPU timings are not GPU timings.")
    directory = out_dir or default_out_dir(loaded.config.name or Path(loaded.path).stem)
    try:
        writer = ResultsWriter(directory, run_metadata(p))
    except OSError as e:
        fail(f"--out: cannot write results to {directory}: {e}")
    executor = InProcessExecutor(measure_settings(loaded), p.device)
    show_progress = not quiet and sys.stderr.isatty()
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TimeRemainingColumn(), console=err, disable=not show_progress, transient=True)
    counts = {"ok": 0, "skipped": 0, "failed": 0}
    try:
        with progress:
            bar = progress.add_task("sweep", total=p.total)

            def on_record(r):
                counts["ok" if r.status == "ok" else "skipped" if r.status == "skipped" else "failed"] += 1
                progress.update(bar, advance=1, description=f"{r.backend} {r.case().label()} "
                                f"[green]{counts['ok']} ok[/] [dim]{counts['skipped']} skipped[/] [red]{counts['failed']} failed[/]")

            run_sweep(p, writer, executor, on_record)
    except KeyboardInterrupt:
        err.print(f"[yellow]interrupted:[/] {len(writer.records)} finished records kept in {directory}")
        raise typer.Exit(130)
    df = records_frame(writer.records)
    if fmt == "table":
        if not quiet:
            out.print(run_table(df, loaded.config.reference_backend, title=f"{loaded.config.name or loaded.path} on {writer.meta['environment'].get('gpu_name') or p.device}"))
            skips = skipped_summary(df)
            if skips:
                out.print(f"[dim]skipped ({int((df['status'] == 'skipped').sum())}):[/]")
                for line in skips:
                    out.print(f"[dim]{line}[/]", highlight=False, soft_wrap=True)
            for line in failure_lines(df):
                out.print(f"[red]{line}[/]", highlight=False, soft_wrap=True)
    else:
        write_machine(format_frame(df[SUMMARY_COLUMNS], fmt))
    for w in writer.meta.get("warnings", []):
        err.print(f"[yellow]warning:[/] {w}")
    if plot:
        from ..plots import PlotError, plot_run_dir

        try:
            for path in plot_run_dir(directory):
                err.print(f"figure: {path}")
        except PlotError as e:
            err.print(f"[yellow]warning:[/] no figures: {e}")
    failed = counts["failed"]
    err.print(f"{len(writer.records)} records ({counts['ok']} ok, {counts['skipped']} skipped, {failed} failed) "
              f"written to {directory}/results.json and results.csv")


_ = EXIT_USAGE
