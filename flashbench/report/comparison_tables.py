"""Rich tables of ``flashbench compare``: backends within one run, and runs against runs."""
from __future__ import annotations

import math

import pandas as pd
from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from .format import DTYPE_SHORT, STATUS_STYLE, compact_shape, format_value

# changes that are no news: hidden from the runs-against-runs table unless --all
UNCHANGED = ("within noise", "same", "ok", "skipped")


def _shape_header(col: str) -> str:
    return {"seq_len_q": "N", "seq_len_kv": "N kv", "head_dim": "D", "kv_heads": "kv heads", "kv_layout": "cache",
            "page_size": "page", "total_tokens": "tokens", "window_left": "win left",
            "window_right": "win right"}.get(col, col)


def _shape_cell(col: str, value) -> str:
    if col == "dtype":
        return DTYPE_SHORT.get(value, value)
    if col == "causal":
        return "causal" if value else "full"
    return str(value)


def backend_table(cmp, title: str, backends: list[str] | None = None, compact: bool = False) -> Table:
    """A :class:`flashbench.analysis.compare.BackendComparison`: a row per shape, the metric and the
    speedup per backend (★ the row's best, among all the comparison's backends), a geometric-mean row.
    ``backends``: the columns shown (default all); ``compact``: the shape in one column."""
    shown = backends or cmp.backends
    t = Table(title=title, box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False)
    if compact:
        t.add_column("shape", no_wrap=True)
    else:
        for c in cmp.shape_columns:
            t.add_column(_shape_header(c), justify="right" if c not in ("dtype", "mode", "causal") else "left")
    for b in shown:  # a backend's name is never cut: min_width keeps the header whole
        t.add_column(f"{b}\n{cmp.metric.label}", justify="right", min_width=len(b))
        if b != cmp.baseline:  # compact: the title names the baseline
            t.add_column("speedup" if compact else f"vs {cmp.baseline}", justify="right")
    for _, row in cmp.rows.iterrows():
        cells = [compact_shape(row)] if compact else [_shape_cell(c, row[c]) for c in cmp.shape_columns]
        for b in shown:
            status = row[f"{b} status"]
            if status == "ok":
                v = format_value(cmp.metric, row[b])
                cells.append(f"[bold green]★ {v}[/]" if row["winner"] == b else v)
            else:
                cells.append(f"[{STATUS_STYLE.get(status, 'dim')}]{status}[/]")
            if b != cmp.baseline:
                sp = row[f"{b} speedup"]
                cells.append(f"{sp:.2f}x" if pd.notna(sp) else "–")
        t.add_row(*cells)
    t.add_section()
    cells = ["[bold]geomean[/]"] + [""] * (0 if compact else len(cmp.shape_columns) - 1)
    for b in shown:
        cells.append(f"[bold]{format_value(cmp.metric, cmp.geomean_value.get(b))}[/]")
        if b != cmp.baseline:
            g = cmp.geomean.get(b, math.nan)
            # compact: the count of shapes goes under the speedup, keeping the column narrow
            cells.append(f"[bold]{g:.2f}x[/]{chr(10) if compact else ' '}[dim]({cmp.geomean_n[b]})[/]"
                         if not math.isnan(g) else "–")
    t.add_row(*cells)
    return t


def _width(table: Table) -> int:
    """The columns ``table`` takes when nothing in it is wrapped or cut."""
    console = Console(width=100_000)
    return Measurement.get(console, console.options, table).maximum


def backend_tables(cmp, title: str, width: int) -> list[Table]:
    """:func:`backend_table` fitted to a terminal ``width`` columns wide, no header or cell cut: the
    whole table where it fits, else the shape in one column and the backends spread over several
    tables, each beside the baseline (full names stay in ``--format markdown|csv|json``)."""
    whole = backend_table(cmp, title)
    if _width(whole) <= width:
        return [whole]
    groups: list[list[str]] = [[]]
    for b in (b for b in cmp.backends if b != cmp.baseline):
        if groups[-1] and _width(backend_table(cmp, title, [cmp.baseline, *groups[-1], b], compact=True)) > width:
            groups.append([])
        groups[-1].append(b)
    if len(groups) == 1:
        return [backend_table(cmp, title, compact=True)]
    return [backend_table(cmp, f"{title} · table {i} of {len(groups)}", [cmp.baseline, *g], compact=True)
            for i, g in enumerate(groups, 1)]


def _change_style(change: str, metric) -> str:
    worse, better = metric.change_words
    if change.endswith(worse) or "→" in change:
        return "bold red"
    if change.endswith(better):
        return "bold green"
    return STATUS_STYLE.get(change, "dim")


def runs_table(rc, show_all: bool) -> Table:
    """A :class:`flashbench.analysis.compare.RunComparison`: the cases in both runs (changed ones
    only unless ``show_all``), old and new values, new/old, the change in words, the noise verdict."""
    t = Table(title=f"{rc.new_label} vs {rc.old_label} ({rc.metric.label})", box=box.SIMPLE_HEAD,
              header_style="bold", pad_edge=False)
    for c, j in (("backend", "left"), ("shape", "left"), ("old", "right"), ("new", "right"), ("new/old", "right"),
                 ("change", "left"), ("noise", "left")):
        t.add_column(c, justify=j)
    for _, r in rc.rows.iterrows():
        change = r["change"]
        if not show_all and change in UNCHANGED and r["old_status"] == r["new_status"]:
            continue
        old = format_value(rc.metric, r["old"]) if r["old_status"] == "ok" else r["old_status"]
        new = format_value(rc.metric, r["new"]) if r["new_status"] == "ok" else r["new_status"]
        t.add_row(r["backend"], compact_shape(r), old, new, f"{r['ratio']:.3f}" if pd.notna(r["ratio"]) else "–",
                  f"[{_change_style(change, rc.metric)}]{change}[/]", f"[dim]{r['noise_detail']}[/]")
    return t


def runs_summary(rc, show_all: bool) -> list[str]:
    """Rich-markup lines under :func:`runs_table`: the counts, then the cases found in one run only."""
    worse, better = rc.metric.change_words
    counts = rc.rows["change"].value_counts()
    n_worse = int(rc.rows["change"].str.endswith(worse).sum())
    n_better = int(rc.rows["change"].str.endswith(better).sum())
    lines = [f"{len(rc.rows)} cases in both: [red]{n_worse} worse[/], [green]{n_better} better[/], "
             f"{int(counts.get('within noise', 0))} within noise"
             + ("" if show_all else " (unchanged cases hidden; --all lists them)")]
    if rc.pooled is not None and rc.pooled.sigma:
        lines.append(f"[dim]run-to-run σ pooled per backend: {rc.pooled.describe()}; band z {rc.pooled.z:.2f} × σ × "
                     f"√(1/n_old + 1/n_new) for {rc.pooled.compared} cases (or a case's own rounds' band, if wider)[/]")
    for side, df in (("old", rc.only_old), ("new", rc.only_new)):
        if not df.empty:
            lines.append(f"[yellow]only in {side} ({rc.old_label if side == 'old' else rc.new_label}): {len(df)}[/]")
            lines += [f"  {r['backend']} {compact_shape(r)} ({r['status']})" for _, r in df.iterrows()]
    return lines
