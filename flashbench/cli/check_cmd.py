"""``flashbench check`` (the CI regression gate) and ``flashbench baseline save``."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from . import app
from .common import EXIT_ENV, err, fail, print_line, user_errors, write_machine

baseline_app = typer.Typer(no_args_is_help=True, help="Stored baselines under results/baselines/<gpu>/<name>/.")
app.add_typer(baseline_app, name="baseline")


@app.command()
def check(
    result: Path = typer.Argument(..., help="the results directory (or results.json) to gate"),
    baseline: str = typer.Option(..., "--baseline", help="baseline results directory, or a name saved with "
                                                         "`flashbench baseline save` for this run's GPU"),
    thresholds: Optional[str] = typer.Option(None, "--thresholds", "-t", help="thresholds YAML file or bundled name "
                                                                              "(default: the bundled 'default')"),
    junit: Optional[Path] = typer.Option(None, "--junit", help="write JUnit XML here (one testcase per case)"),
    require_all: bool = typer.Option(False, "--require-all", help="fail when a baseline case is missing from RESULT"),
    fmt: str = typer.Option("markdown", "--format", "-f", help="markdown | json | csv (the per-case details)"),
    baselines_root: Path = typer.Option(Path("results/baselines"), "--baselines-root", help="where saved baselines live"),
) -> None:
    """Gate a run against a baseline. Exit 0 pass, 1 regression, 2 usage/config error, 3 not comparable
    (different GPU, nothing compared: no records or no case shared with the baseline, or an unfinished run).

    A regression is a change past its threshold AND beyond noise; a worse status always fails.
    The markdown summary is also appended to $GITHUB_STEP_SUMMARY when that is set.
    """
    from ..results.baselines import resolve_baseline
    from ..analysis.compare import NotComparableError, load_for_comparison
    from ..analysis.gate import check_runs
    from ..analysis.thresholds import backend_typos, load_thresholds
    from ..report.format import format_frame
    from ..report.gate_report import gate_frame, gate_junit_xml, gate_markdown, headline
    from ..results.files import results_files

    if fmt not in ("markdown", "json", "csv"):
        fail(f"--format: {fmt!r} is not one of markdown, json, csv")
    try:
        with user_errors():
            limits, source = load_thresholds(thresholds)
            current = load_for_comparison(result)  # load_run refuses special files (/dev/zero)
            base_path = resolve_baseline(baseline, current.meta, baselines_root)
            if junit is not None and junit.resolve() in results_files(result) | results_files(base_path):
                fail(f"--junit: {junit} is a results file of this check: write the JUnit XML elsewhere")
            base = load_for_comparison(base_path)
            report = check_runs(base, current, limits, require_all, str(base_path), str(result), source)
    except NotComparableError as e:
        fail([f"not comparable: {p}" for p in e.problems], code=EXIT_ENV)

    for line in backend_typos(limits, {r.backend for run in (base, current) for r in run.records}):
        err.print(f"[bold yellow]warning:[/] {source}: {escape(line)}", highlight=False, soft_wrap=True)
    md = gate_markdown(report)
    if fmt == "markdown":
        write_machine(md)
    else:
        write_machine(format_frame(gate_frame(report), fmt))
    for d in report.differences:
        if d.loud:
            err.print(f"[bold yellow]warning:[/] {escape(d.message())}: timings may not be comparable", highlight=False,
                      soft_wrap=True)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary and Path(summary).resolve() in results_files(result) | results_files(base_path):
        err.print(f"[yellow]warning:[/] $GITHUB_STEP_SUMMARY ({summary}) is a results file of this check: "
                  "not appended to", highlight=False, soft_wrap=True)
    elif summary:
        try:
            with open(summary, "a", encoding="utf-8") as f:
                f.write(md)
        except OSError as e:
            err.print(f"[yellow]warning:[/] {escape(f'cannot append to $GITHUB_STEP_SUMMARY ({summary}): {e}')}",
                      highlight=False, soft_wrap=True)
    if junit is not None:
        try:
            junit.parent.mkdir(parents=True, exist_ok=True)
            junit.write_text(gate_junit_xml(report), encoding="utf-8")
        except OSError as e:
            fail(f"--junit: cannot write {junit}: {e}")
    colour = "green" if report.passed else "red"
    err.print(f"[bold {colour}]{escape(headline(report))}[/]", highlight=False)
    raise typer.Exit(report.exit_code)


@baseline_app.command("save")
def baseline_save(
    results: list[Path] = typer.Argument(..., help="results directory (or results.json) to keep as a baseline; "
                                                   "several runs of one config on one GPU model are merged as "
                                                   "rounds of one baseline", show_default=False),
    name: str = typer.Argument(..., help="baseline name, e.g. 'default' or 'main'"),
    root: Path = typer.Option(Path("results/baselines"), "--root", help="baselines root directory"),
    force: bool = typer.Option(False, "--force", help="replace an existing baseline of that name"),
) -> None:
    """Copy RESULT's results.json and results.csv to <root>/<gpu-slug>/NAME/ (gpu slug e.g. h100, cpu).

    With several RESULTS (same config, backends and GPU model, else exit 2), each task's rows are
    merged as rounds of one row, so `flashbench check` measures the baseline's run-to-run noise.
    """
    from ..results.baselines import save_baseline

    with user_errors():
        dest = save_baseline(results, name, root, force)
    print_line(f"baseline saved: {dest}")  # a path and a command to copy: one line each, never broken
    err.print(f"[dim]{escape(f'gate against it: flashbench check RESULT --baseline {dest}')}[/]", highlight=False,
              soft_wrap=True)

