"""``flashbench compare``: backends within one run, or runs against runs."""
from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional

import pandas as pd
import typer
from rich import box
from rich.table import Table

from . import app
from .common import EXIT_ENV, err, fail, out, split_list, user_errors, write_machine


def _cell(value, metric: str) -> str:
    from ..report.format import fmt_bytes, fmt_num

    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return fmt_bytes(value) if metric == "peak_hbm" else fmt_num(float(value))


def _shape_header(col: str) -> str:
    return {"seq_len_q": "N", "seq_len_kv": "N kv", "head_dim": "D", "kv_heads": "kv heads"}.get(col, col)


def _backend_table(cmp, title: str) -> Table:
    from ..report.format import DTYPE_SHORT, STATUS_STYLE

    t = Table(title=title, box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False)
    for c in cmp.shape_columns:
        t.add_column(_shape_header(c), justify="right" if c not in ("dtype", "mode", "causal") else "left")
    for b in cmp.backends:
        t.add_column(f"{b}\n{cmp.metric.label}", justify="right")
        if b != cmp.baseline:
            t.add_column(f"vs {cmp.baseline}", justify="right")
    for _, row in cmp.rows.iterrows():
        cells = [DTYPE_SHORT.get(row[c], row[c]) if c == "dtype" else ("causal" if row[c] else "full") if c == "causal"
                 else str(row[c]) for c in cmp.shape_columns]
        for b in cmp.backends:
            status = row[f"{b} status"]
            if status == "ok":
                v = _cell(row[b], cmp.metric.name)
                cells.append(f"[bold green]★ {v}[/]" if row["winner"] == b else v)
            else:
                cells.append(f"[{STATUS_STYLE.get(status, 'dim')}]{status}[/]")
            if b != cmp.baseline:
                sp = row[f"{b} speedup"]
                cells.append(f"{sp:.2f}x" if pd.notna(sp) else "–")
        t.add_row(*cells)
    t.add_section()
    cells = ["[bold]geomean[/]"] + [""] * (len(cmp.shape_columns) - 1)
    for b in cmp.backends:
        cells.append(f"[bold]{_cell(cmp.geomean_value.get(b), cmp.metric.name)}[/]")
        if b != cmp.baseline:
            g = cmp.geomean.get(b, math.nan)
            cells.append(f"[bold]{g:.2f}x[/] [dim]({cmp.geomean_n[b]})[/]" if not math.isnan(g) else "–")
    t.add_row(*cells)
    return t


def _runs_table(rc, show_all: bool) -> Table:
    from ..report.format import STATUS_STYLE, compact_shape

    t = Table(title=f"{rc.new_label} vs {rc.old_label} ({rc.metric.label})", box=box.SIMPLE_HEAD,
              header_style="bold", pad_edge=False)
    for c, j in (("backend", "left"), ("shape", "left"), ("old", "right"), ("new", "right"), ("new/old", "right"),
                 ("change", "left"), ("noise", "left")):
        t.add_column(c, justify=j)
    for _, r in rc.rows.iterrows():
        change = r["change"]
        if not show_all and change in ("within noise", "same", "ok", "skipped") and r["old_status"] == r["new_status"]:
            continue
        if change.endswith("slower") or change.endswith("more memory") or "→" in change:
            style = "bold red"
        elif change.endswith("faster") or change.endswith("less memory"):
            style = "bold green"
        else:
            style = STATUS_STYLE.get(change, "dim")
        old = _cell(r["old"], rc.metric.name) if r["old_status"] == "ok" else r["old_status"]
        new = _cell(r["new"], rc.metric.name) if r["new_status"] == "ok" else r["new_status"]
        t.add_row(r["backend"], compact_shape(r), old, new, f"{r['ratio']:.3f}" if pd.notna(r["ratio"]) else "–",
                  f"[{style}]{change}[/]", f"[dim]{r['noise_detail']}[/]")
    return t


@app.command()
def compare(
    results: List[Path] = typer.Argument(..., help="one results directory (backends against each other) or "
                                                   "OLD NEW [NEW...] (runs against the first)"),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="with one RESULT: the backend speedups are "
                                                                    "measured against (default: the run's reference_backend)"),
    metric: Optional[str] = typer.Option(None, "--metric", "-m", help="tflops | ms | peak_hbm (default: tflops for "
                                                                      "one run, ms for runs against runs)"),
    backends: Optional[str] = typer.Option(None, "--backends", "-b", help="comma-separated backends to show"),
    fmt: str = typer.Option("table", "--format", "-f", help="table | json | csv | markdown"),
    strict: bool = typer.Option(False, "--strict", help="refuse (exit 3) to compare runs from different GPUs, "
                                                        "drivers or configs"),
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
    if metric is not None and metric not in ("tflops", "ms", "peak_hbm"):
        fail(f"--metric: {metric!r} is not one of tflops, ms, peak_hbm")
    try:
        with user_errors():
            runs = [load_for_comparison(p) for p in results]
    except NotComparableError as e:
        fail(e.problems, code=EXIT_ENV)

    if len(runs) == 1:
        run = runs[0]
        base = baseline or run.meta.get("reference_backend")
        if not base:
            fail("--baseline: this run names no reference_backend; give the backend to compare against")
        try:
            cmp = compare_backends(run.frame(), base, metric or "tflops", split_list(backends))
        except ValueError as e:
            fail(str(e))
        if fmt == "table":
            from ..report.plots import run_title

            out.print(_backend_table(cmp, f"{run_title(run.meta)}: {cmp.metric.label}, speedup vs {base} "
                                          f"(★ best per row)"))
        else:
            write_machine(format_frame(cmp.frame(), fmt))
        return

    if baseline is not None:
        fail("--baseline names a backend and works with one RESULT; with several, the first run is the baseline")
    old = runs[0]
    comparisons = []
    for path, new in zip(results[1:], runs[1:]):
        rc = compare_runs(old, new, metric or "ms", noise, old_label=str(results[0]), new_label=str(path))
        if backends:
            keep = split_list(backends)
            rc.rows = rc.rows[rc.rows["backend"].isin(keep)]
            rc.only_old = rc.only_old[rc.only_old["backend"].isin(keep)]
            rc.only_new = rc.only_new[rc.only_new["backend"].isin(keep)]
        comparisons.append(rc)
    loud = False
    for rc in comparisons:
        for d in rc.differences:
            if d.loud:
                loud = True
                err.print(f"[bold yellow on red] WARNING [/] [bold]{rc.new_label}: {d.message()}[/]: the timings are "
                          f"not comparable{'' if strict else ' (use --strict to refuse)'}", highlight=False, soft_wrap=True)
            else:
                err.print(f"[dim]note: {rc.new_label}: {d.message()}[/]", highlight=False, soft_wrap=True)
    if strict and loud:
        fail("--strict: the runs differ in GPU, driver or config (see above)", code=EXIT_ENV)
    if fmt != "table":
        write_machine(format_frame(pd.concat([rc.frame() for rc in comparisons], ignore_index=True), fmt))
        return
    from ..report.format import compact_shape

    for rc in comparisons:
        out.print(_runs_table(rc, show_all))
        counts = rc.rows["change"].value_counts()
        slower = int(rc.rows["change"].str.endswith(("slower", "more memory")).sum())
        faster = int(rc.rows["change"].str.endswith(("faster", "less memory")).sum())
        out.print(f"{len(rc.rows)} cases in both: [red]{slower} worse[/], [green]{faster} better[/], "
                  f"{int(counts.get('within noise', 0))} within noise"
                  + ("" if show_all else " (unchanged cases hidden; --all lists them)"), highlight=False)
        for side, df in (("old", rc.only_old), ("new", rc.only_new)):
            if not df.empty:
                out.print(f"[yellow]only in {side} ({rc.old_label if side == 'old' else rc.new_label}): {len(df)}[/]")
                for _, r in df.iterrows():
                    out.print(f"  {r['backend']} {compact_shape(r)} ({r['status']})", highlight=False)
