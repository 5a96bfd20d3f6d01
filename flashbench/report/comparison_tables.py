"""Rich tables of ``flashbench compare``: backends within one run, and runs against runs."""
from __future__ import annotations

import math

import pandas as pd
from rich import box
from rich.markup import escape
from rich.table import Table

from ..model.metrics import factor_text
from .format import DTYPE_SHORT, STATUS_STYLE, compact_shape, fit_table, format_value, table_width

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
        t.add_column("shape")
    else:
        for c in cmp.shape_columns:
            t.add_column(_shape_header(c), justify="right" if c not in ("dtype", "mode", "causal") else "left")
    for b in shown:  # a backend's name is never cut: min_width keeps the header whole
        t.add_column(f"{escape(b)}\n{cmp.metric.label}", justify="right", min_width=len(b), no_wrap=True)
        if b != cmp.baseline:  # compact: the title names the baseline
            t.add_column("speedup" if compact else f"vs {escape(cmp.baseline)}", justify="right", no_wrap=True)
    for _, row in cmp.rows.iterrows():
        cells = [escape(compact_shape(row))] if compact else [escape(_shape_cell(c, row[c])) for c in cmp.shape_columns]
        for b in shown:
            status = row[f"{b} status"]
            if status == "ok":
                v = format_value(cmp.metric, row[b])
                cells.append(f"[bold green]★ {v}[/]" if row["winner"] == b else v)
            else:
                cells.append(f"[{STATUS_STYLE.get(status, 'dim')}]{status}[/]")
            if b != cmp.baseline:
                sp = row[f"{b} speedup"]
                cells.append(f"{factor_text(sp)}x" if pd.notna(sp) else "–")
        t.add_row(*cells)
    t.add_section()
    cells = ["[bold]geomean[/]"] + [""] * (0 if compact else len(cmp.shape_columns) - 1)
    for b in shown:
        cells.append(f"[bold]{format_value(cmp.metric, cmp.geomean_value.get(b))}[/]")
        if b != cmp.baseline:
            g = cmp.geomean.get(b, math.nan)
            # compact: the count of shapes goes under the speedup, keeping the column narrow
            cells.append(f"[bold]{factor_text(g)}x[/]{chr(10) if compact else ' '}[dim]({cmp.geomean_n[b]})[/]"
                         if not math.isnan(g) else "–")
    t.add_row(*cells)
    return t


def _fitted(cmp, title: str, backends: list[str] | None, width: int) -> Table:
    """A compact :func:`backend_table`; where even one backend beside the baseline is too wide,
    the shape wraps at its words (never cut) to leave the figures whole."""
    return fit_table(lambda hidden: backend_table(cmp, title, backends, compact=True), width, wrap={"shape": 16})


def backend_tables(cmp, title: str, width: int) -> list[Table]:
    """:func:`backend_table` fitted to a terminal ``width`` columns wide, no header or cell cut: the
    whole table where it fits, else the shape in one column and the backends spread over several
    tables, each beside the baseline (full names stay in ``--format markdown|csv|json``); on a
    terminal too narrow for one backend beside the baseline, the shape wraps over lines."""
    whole = backend_table(cmp, title)
    if table_width(whole) <= width:
        return [whole]
    groups: list[list[str]] = [[]]
    for b in (b for b in cmp.backends if b != cmp.baseline):
        if groups[-1] and table_width(backend_table(cmp, title, [cmp.baseline, *groups[-1], b], compact=True)) > width:
            groups.append([])
        groups[-1].append(b)
    if len(groups) == 1:
        return [_fitted(cmp, title, None, width)]
    return [_fitted(cmp, f"{title} · table {i} of {len(groups)}", [cmp.baseline, *g], width)
            for i, g in enumerate(groups, 1)]


def backend_comparison_frame(cmp, fmt: str) -> pd.DataFrame:
    """:class:`flashbench.analysis.compare.BackendComparison` for ``--format``.

    json and csv (for programs): a ``row`` column ("case", or "geomean" for the last row, whose
    shape fields are empty), the shape columns, then per backend its value of the metric (a number,
    empty where the backend has no ok row), ``B status`` (ok, skipped, oom, ..., empty where the
    backend has no row for the shape) and ``B speedup``, the ``winner``, and ``metric_column`` and
    ``unit`` naming the metric as the metrics table does (the run's column, e.g. ``tflops``): every
    column holds one type. markdown (for people, e.g. a GitHub step summary): as the terminal table
    reads, "geomean" in the first shape column, each value in its unit (``B TFLOP/s``; bytes in
    MiB/GiB) or the status word where there is none, speedups as "1.53x"."""
    if fmt == "markdown":
        frame = cmp.frame()
        for b in cmp.backends:  # a status word stays as it is
            frame[b] = [v if isinstance(v, str) else format_value(cmp.metric, v) for v in frame[b]]
            frame[f"{b} speedup"] = [f"{factor_text(v)}x" if isinstance(v, float) and math.isfinite(v) else "–"
                                     for v in frame[f"{b} speedup"]]
        return frame.rename(columns={b: f"{b} {cmp.metric.label}" for b in cmp.backends})
    out = cmp.rows[cmp.shape_columns].astype(object).copy()
    out.insert(0, "row", "case")
    for b in cmp.backends:
        out[b] = [float(v) if s == "ok" and pd.notna(v) else None for v, s in zip(cmp.rows[b], cmp.rows[f"{b} status"])]
        out[f"{b} status"] = [None if s == "–" else s for s in cmp.rows[f"{b} status"]]
        out[f"{b} speedup"] = cmp.rows[f"{b} speedup"].astype(float)
    out["winner"] = [w or None for w in cmp.rows["winner"]]
    summary = cmp.frame().iloc[-1]
    geomean = {c: None for c in out.columns}
    geomean["row"] = "geomean"
    for b in cmp.backends:
        geomean[b] = summary[b]
        geomean[f"{b} speedup"] = summary[f"{b} speedup"]
    geomean["winner"] = summary["winner"] or None
    out = pd.concat([out, pd.DataFrame([geomean], columns=out.columns)], ignore_index=True)
    out["metric_column"] = cmp.metric.column
    out["unit"] = cmp.metric.unit
    return out


def _change_style(change: str, metric) -> str:
    worse, better = metric.change_words
    if change.endswith(worse) or "→" in change:
        return "bold red"
    if change.endswith(better):
        return "bold green"
    return STATUS_STYLE.get(change, "dim")


def runs_table(rc, show_all: bool, width: int | None = None) -> Table:
    """A :class:`flashbench.analysis.compare.RunComparison`: the cases in both runs (changed ones
    only unless ``show_all``), old and new values, new/old, the change in words, the noise verdict.
    ``width``: fitted to that many columns (:func:`fit_table`): the noise verdict, then the shape,
    wrap at their words; still too wide, new/old (the change says it too) and then the noise verdict
    are left out. The backend, the shape, the values and the change are never cut."""
    build = lambda hidden: _runs_table(rc, show_all, hidden)  # noqa: E731
    if width is None:
        return build(frozenset())
    return fit_table(build, width, optional=["new/old", "noise"], wrap={"noise": 20, "shape": 18})


def _runs_table(rc, show_all: bool, hidden: frozenset) -> Table:
    unit = "" if rc.metric.unit in rc.metric.label or rc.metric.kind == "bytes" else f" {rc.metric.unit}"
    t = Table(title=escape(f"{rc.new_label} vs {rc.old_label} ({rc.metric.label}{unit})"), box=box.SIMPLE_HEAD,
              header_style="bold", pad_edge=False)
    columns = [c for c in ("backend", "shape", "old", "new", "new/old", "change", "noise") if c not in hidden]
    for c in columns:
        t.add_column(c, justify="right" if c in ("old", "new", "new/old") else "left",
                     no_wrap=c not in ("shape", "noise"))
    for _, r in rc.rows.iterrows():
        change = r["change"]
        if not show_all and change in UNCHANGED and r["old_status"] == r["new_status"]:
            continue
        old = format_value(rc.metric, r["old"]) if r["old_status"] == "ok" else r["old_status"]
        new = format_value(rc.metric, r["new"]) if r["new_status"] == "ok" else r["new_status"]
        cells = {"backend": escape(r["backend"]), "shape": escape(compact_shape(r)), "old": old, "new": new,
                 "new/old": f"{r['ratio']:.3f}" if pd.notna(r["ratio"]) else "–",
                 "change": f"[{_change_style(change, rc.metric)}]{escape(change)}[/]",
                 "noise": f"[dim]{escape(r['noise_detail'])}[/]"}
        t.add_row(*(cells[c] for c in columns))
    return t


def runs_frame(comparisons) -> pd.DataFrame:
    """Runs against runs for ``--format``: every case of every comparison
    (:meth:`flashbench.analysis.compare.RunComparison.frame`), with ``metric_column`` and ``unit``
    naming what ``old`` and ``new`` hold as the metrics table does (e.g. ``median_ms``, ms)."""
    parts = []
    for rc in comparisons:
        df = rc.frame()
        at = list(df.columns).index("old") if "old" in df.columns else len(df.columns)
        df.insert(at, "unit", rc.metric.unit)
        df.insert(at, "metric_column", rc.metric.column)
        parts.append(df)
    return pd.concat(parts, ignore_index=True)


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
            label = rc.old_label if side == "old" else rc.new_label
            lines.append(f"[yellow]{escape(f'only in {side} ({label}): {len(df)}')}[/]")
            lines += [escape(f"  {r['backend']} {compact_shape(r)} ({r['status']})") for _, r in df.iterrows()]
    return lines


def clock_gap_note(gaps: list, compared: int, reference: str, gap: float) -> str:
    """The note under a run's tables when some backend of a case ran at an SM clock more than ``gap`` from
    ``reference``'s (``gaps``, widest first, of ``compared`` cases: :func:`flashbench.analysis.clocks.clock_gaps`);
    "" when none did."""
    if not gaps:
        return ""
    cases = len({tuple(g.case.values()) for g in gaps})
    widest = gaps[0]
    return (f"in {cases} of {compared} cases a backend ran at an SM clock more than {gap * 100:.0f}% from {reference}'s "
            f"(widest: {widest.backend} at {widest.mhz:,.0f} against {widest.reference_mhz:,.0f} MHz, "
            f"{compact_shape(widest.case)}): a ratio to {reference} there holds the clocks' difference as well as "
            f"the kernels' (`--metric clock` shows them; README, \"Known limits\")")
