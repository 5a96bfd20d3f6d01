"""``flashbench compare``: backends within one run, or runs against runs."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape

from . import app
from .common import EXIT_ENV, backends_option, err, fail, out, print_clock_gaps, user_errors, write_machine
from ..model.metrics import judged_rate, metric_names


@app.command()
def compare(
    results: List[Path] = typer.Argument(..., help="one results directory (backends against each other) or "
                                                   "OLD NEW [NEW...] (runs against the first)"),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="with one RESULT: the backend speedups are "
                                                                    "measured against (default: the run's reference_backend)"),
    metric: Optional[str] = typer.Option(None, "--metric", "-m", help=f"{' | '.join(metric_names())} (default: "
                                                                      "tflops for one run, gbps when every row is decode; "
                                                                      "ms for runs against runs)"),
    backends: Optional[str] = typer.Option(None, "--backends", "-b", help="comma-separated backends to show"),
    fmt: str = typer.Option("table", "--format", "-f", help="table | json | csv | markdown"),
    strict: bool = typer.Option(False, "--strict", help="refuse (exit 3) to compare runs from different GPUs, "
                                                        "drivers, configs or timing settings"),
    noise: str = typer.Option("both", "--noise", help="beyond-noise test: intervals (p20–p80 disjoint) | rank "
                                                      "(Mann-Whitney) | both"),
    show_all: bool = typer.Option(False, "--all", "-a", help="runs against runs: also list unchanged cases"),
) -> None:
    """Compare backends within one run, or runs against runs (beyond-noise ratios).

    One RESULT: a row per shape, a column per backend, speedups against --baseline, the winner
    of each row marked, a geometric-mean row. OLD NEW [NEW...]: joined on backend + case, the
    ratio new/old per case and whether it is beyond noise; cases in one run only are listed.
    """
    from ..analysis.compare import NotComparableError, compare_backends, compare_runs, load_for_comparison
    from ..analysis.noise import NOISE_METHODS
    from ..report.format import FORMATS, format_frame

    if fmt not in FORMATS:
        fail(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
    if noise not in NOISE_METHODS:
        fail(f"--noise: {noise!r} is not one of {', '.join(NOISE_METHODS)}")
    if metric is not None and metric not in metric_names():
        fail(f"--metric: {metric!r} is not one of {', '.join(metric_names())}")
    try:
        with user_errors():
            runs = [load_for_comparison(p) for p in results]  # load_run refuses special files (/dev/zero)
    except NotComparableError as e:
        fail(e.problems, code=EXIT_ENV)

    keep = backends_option(backends)
    if len(runs) == 1:
        run = runs[0]
        if not run.records:  # else "--baseline: backend 'x' is not in this run (it has: )"
            fail(f"{results[0]}: the run has no records: nothing to compare")
        base = baseline or run.meta.get("reference_backend")
        if not base:
            fail("--baseline: this run names no reference_backend; give the backend to compare against")
        present = sorted({r.backend for r in run.records})
        if baseline is None and base not in present:  # `run CONFIG -b ...` left the config's reference out
            fail(f"--baseline: the run's reference_backend {base!r} has no rows in it (it has: {', '.join(present)}): "
                 "give the backend to compare against")
        try:
            frame = run.frame()
            cmp = compare_backends(frame, base, metric or judged_rate(frame["workload"]).name, keep)
        except ValueError as e:
            fail(str(e))
        if fmt == "table":
            from ..report.comparison_tables import backend_tables
            from ..report.plots import run_title

            title = (escape(f"{run_title(run.meta)}: {cmp.metric.label}, speedup vs {base}") + " (★ best per row)"
                     if cmp.metric.merit else escape(f"{run_title(run.meta)}: {cmp.metric.label}, ratio to {base}"))
            for table in backend_tables(cmp, title, out.width):
                out.print(table)
            if cmp.metric.merit:  # the clock's own table shows the gaps
                print_clock_gaps(frame[frame["backend"].isin(cmp.backends)], base)
        else:
            from ..report.comparison_tables import backend_comparison_frame

            write_machine(format_frame(backend_comparison_frame(cmp, fmt), fmt))
        return

    if baseline is not None:
        fail("--baseline names a backend and works with one RESULT; with several, the first run is the baseline")
    present = {r.backend for run in runs for r in run.records}
    missing = [b for b in keep or [] if b not in present]
    if missing:  # as with one run: a typo would otherwise show an empty comparison
        fail(f"--backends: {', '.join(missing)} in none of these runs (they have: {', '.join(sorted(present))})")
    old = runs[0]
    comparisons = []
    for path, new in zip(results[1:], runs[1:]):
        rc = compare_runs(old, new, metric or "ms", noise, old_label=str(results[0]), new_label=str(path))
        if keep:
            rc.rows = rc.rows[rc.rows["backend"].isin(keep)]
            rc.only_old = rc.only_old[rc.only_old["backend"].isin(keep)]
            rc.only_new = rc.only_new[rc.only_new["backend"].isin(keep)]
        comparisons.append(rc)
    loud = False
    for rc in comparisons:
        for d in rc.differences:
            if d.loud:
                loud = True
                err.print(f"[bold yellow on red] WARNING [/] [bold]{escape(f'{rc.new_label}: {d.message()}')}[/]: the timings are "
                          f"not comparable{'' if strict else ' (use --strict to refuse)'}", highlight=False, soft_wrap=True)
            else:
                err.print(f"[dim]{escape(f'note: {rc.new_label}: {d.message()}')}[/]", highlight=False, soft_wrap=True)
    if strict and loud:
        fail("--strict: the runs differ in GPU, driver, config or timing settings (see above)", code=EXIT_ENV)
    if fmt != "table":
        from ..report.comparison_tables import runs_frame

        write_machine(format_frame(runs_frame(comparisons), fmt))
        return
    from ..report.comparison_tables import runs_summary, runs_table

    for rc in comparisons:
        out.print(runs_table(rc, show_all, out.width))
        for line in runs_summary(rc, show_all):
            out.print(line, highlight=False)
