"""Rendering for people (numbers, bytes, run tables) and machines (csv, json, markdown).

Shared by every command; no command formats numbers on its own. A metric's cells are formatted
by its kind in the metrics table (:mod:`flashbench.model.metrics`).
"""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from ..model import metrics
from ..model.case import CASE_FIELDS, workload_label

FORMATS = ("table", "json", "csv", "markdown")
STATUS_STYLE = {"ok": "green", "skipped": "dim", "mismatch": "bold magenta", "oom": "yellow",
                "error": "bold red", "crashed": "bold red", "timeout": "bold red"}


def fmt_num(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float):
        if x == 0:
            return "0"
        if abs(x) >= 1e15:  # past any real time or rate (an edited file): 1e+308, not a cell of 400 digits
            return f"{x:.{digits}g}"
        if abs(x) >= 100:
            return f"{x:,.0f}"
        return f"{x:.{digits}g}"
    return str(x)


def fmt_bytes(n) -> str:
    """Binary units (MiB, GiB): memory sizes are powers of two."""
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "–"
    n = float(n)
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def format_value(metric: metrics.Metric, x, with_unit: bool = False) -> str:
    """A metric's value: bytes in binary units, other numbers by :func:`fmt_num`; ``with_unit``
    (a value on its own, not under a heading that names the unit) adds the metric's unit:
    "1.33 ms", "508 TFLOP/s", "4,200 GB/s", "61.2%"."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if metric.kind == "bytes":
        return fmt_bytes(x)
    text = fmt_num(float(x))
    if not with_unit:
        return text
    return f"{text}%" if metric.unit == "%" else f"{text} {metric.unit}"


def with_speedup(df: pd.DataFrame, reference_backend: str | None) -> pd.DataFrame:
    """Add ``speedup``: reference backend's median over this row's, within each shape."""
    df = df.copy()
    df["speedup"] = math.nan
    if not reference_backend or df.empty:
        return df
    keys, ms = list(CASE_FIELDS), metrics.LATENCY.column
    ref = df[(df["backend"] == reference_backend) & df[ms].notna()][keys + [ms]]
    ref = ref.rename(columns={ms: "_ref_ms"})
    merged = df.merge(ref, on=keys, how="left")
    merged["speedup"] = merged["_ref_ms"] / merged[ms]
    return merged.drop(columns=["_ref_ms"])


DTYPE_SHORT = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}


def compact_shape(row) -> str:
    kv = f"/{row['kv_heads']}" if row["kv_heads"] != row["heads"] else ""
    n = f"{row['seq_len_q']}" if row["seq_len_q"] == row["seq_len_kv"] else f"{row['seq_len_q']}x{row['seq_len_kv']}"
    return (f"B{row['batch']} H{row['heads']}{kv} N{n} D{row['head_dim']} "
            f"{DTYPE_SHORT.get(row['dtype'], row['dtype'])}{' causal' if row['causal'] else ''} {row['mode']}"
            f"{workload_label(row)}")


def run_table(df: pd.DataFrame, reference_backend: str | None = None, title: str | None = None,
              width: int | None = None) -> Table:
    """One section per shape, one row per measured backend, a column per metric of the metrics
    table (and its spread) that some row has a value of. Skipped rows are left out (see
    :func:`skipped_summary`); failure reasons are listed by :func:`failure_lines`. ``width``: the
    table is fitted to that many columns (:func:`fit_table`): the shape wraps at its words; still
    too wide, the error, the spreads, the SM clock, the other metrics, the speedup and (when every
    row is ok) the status are left out in that order, and the caption names them. The shape, the backend,
    the median and the rate the rows are judged by (TFLOP/s; GB/s when every row is decode) stay."""
    df = with_speedup(df, reference_backend)
    df = df[df["status"] != "skipped"]
    shown = [m for m in metrics.METRICS if m.in_run_table and m.column in df and df[m.column].notna().any()]
    build = lambda hidden: _run_table(df, shown, reference_backend, title, hidden)  # noqa: E731
    if width is None:
        return build(frozenset())
    # the figures kept at any width: the median and the rate the rows are judged by (GB/s for
    # decode, which is memory-bound, else TFLOP/s); the status too unless every row is ok
    key = {metrics.LATENCY.column, metrics.judged_rate(df["workload"] if "workload" in df else []).column}
    optional = ["max err", *(m.interval_label for m in shown if m.interval),
                # a condition of the measurement (the clock) goes before the figures of merit
                *(m.label for m in sorted(shown, key=lambda m: m.merit) if m.column not in key),
                f"vs {reference_backend}" if reference_backend else "speedup"]
    if not df.empty and bool((df["status"] == "ok").all()):
        optional.append("status")
    return fit_table(build, width, optional=optional, wrap={"shape": 14})


def _run_table(df: pd.DataFrame, shown: list, reference_backend: str | None, title: str | None,
               hidden: frozenset) -> Table:
    from rich import box

    table = Table(title=title, box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False)
    headings = [h for m in shown for h in (m.label, m.interval_label) if h]
    columns = ("shape", "backend", "status", *headings, f"vs {reference_backend}" if reference_backend else "speedup",
               "max err")
    keep = [c not in hidden for c in columns]
    for col, k in zip(columns, keep):
        if k:
            table.add_column(col, justify="left" if col in ("shape", "backend", "status") else "right",
                             no_wrap=col != "shape")
    prev = None
    launch_bound = False
    for _, row in df.iterrows():
        shape = compact_shape(row)
        if prev is not None and shape != prev:
            table.add_section()
        status = row["status"]
        cells = []
        for m in shown:
            cells.append(format_value(m, row[m.column]))
            if m.column == "host_ms" and _is_true(row.get("launch_bound")) and m.label not in hidden:
                cells[-1] = f"[bold yellow]{cells[-1]}*[/]"
                launch_bound = True
            if m.interval:
                lo, hi = row[m.interval[1]], row[m.interval[2]]
                cells.append(f"{format_value(m, lo)}–{format_value(m, hi)}" if pd.notna(lo) else "–")
        row_cells = (
            escape(shape) if shape != prev else "",
            escape(row["backend"]),
            f"[{STATUS_STYLE.get(status, '')}]{status}[/]",
            *cells,
            f"{metrics.factor_text(row['speedup'])}x" if pd.notna(row["speedup"]) else "–",
            fmt_num(row["max_abs_err"], 2),
        )
        table.add_row(*(c for c, k in zip(row_cells, keep) if k))
        prev = shape
    notes = [m.note for m in shown if m.note and m.label not in hidden]
    if launch_bound:
        notes.append("host ms*: launch-bound, the host takes longer to enqueue the call than the GPU to run it "
                     "(an eager loop of it runs at the host's pace)")
    if notes:
        table.caption = "; ".join(notes)
    return table


_MEASURE = Console(width=100_000, no_color=True, highlight=False)


def table_width(table: Table) -> int:
    """The columns ``table`` takes when nothing in it is wrapped or cut."""
    return Measurement.get(_MEASURE, _MEASURE.options, table).maximum


def _cell_text(cell) -> Text:
    return _MEASURE.render_str(cell) if isinstance(cell, str) else Text(str(cell))


def _word_widths(column) -> tuple[int, int]:
    """(the longest word, the longest line) of a column's header and cells, in terminal cells."""
    lines = [line for c in (column.header, *column.cells) for line in _cell_text(c).plain.splitlines()]
    longest_word = max((cell_len(w) for line in lines for w in line.split()), default=1)
    longest_line = max((cell_len(line) for line in lines), default=1)
    return longest_word, longest_line


def _shrink(table: Table, excess: int, wrap: dict[str, int], fold: bool = False) -> int:
    """Narrow the ``wrap`` columns of ``table`` (in that order) by up to ``excess`` columns, each to
    no fewer than its floor, wrapping at their words; not below their longest word unless ``fold``,
    which folds a longer word onto the next line (never cut). Returns the excess left."""
    for heading, least in wrap.items():
        column = next((c for c in table.columns if c.header == heading), None)
        if column is None or excess <= 0:
            continue
        word, line = _word_widths(column)
        current = column.width or line
        take = min(excess, current - (min(least, line) if fold else min(max(least, word), line)))
        if take > 0:
            column.width, column.no_wrap = current - take, False
            if column.width < word:
                column.overflow = "fold"
            excess -= take
    return excess


MIN_WRAPPED_WIDTH = 8  # the narrowest a wrapped column gets, whatever must fit beside it


SHOWN_ELSEWHERE = "a wider terminal, or --format json|csv|markdown, shows every column"


def fit_table(build, width: int, optional=(), wrap: dict[str, int] | None = None,
              elsewhere: str = SHOWN_ELSEWHERE) -> Table:
    """The table ``build(hidden)`` makes, fitted to ``width`` columns without cutting a word.

    ``build`` takes the set of column headings to leave out. First the ``wrap`` columns (heading ->
    the fewest columns it may take) wrap at their words, the first listed first (:func:`_shrink`);
    while the table is still too wide, the ``optional`` headings are left out in order, and the
    caption names them (and where to find them: ``elsewhere``); then a word longer than its ``wrap``
    column's floor folds. What still does not fit is Rich's to cut, visibly ("…")."""
    wrap = dict(wrap or {})
    hidden: list[str] = []
    pending = list(optional)
    while True:
        table = build(frozenset(hidden))
        excess = _shrink(table, table_width(table) - width, wrap)
        if excess <= 0:
            break
        present = {c.header for c in table.columns}
        while pending and pending[0] not in present:
            pending.pop(0)
        if not pending:
            # last: below the floors (folded), rather than let Rich cut a key column
            excess = _shrink(table, excess, wrap, fold=True)
            _shrink(table, excess, {heading: MIN_WRAPPED_WIDTH for heading in wrap}, fold=True)
            break
        hidden.append(pending.pop(0))
    if hidden:
        note = f"left out to fit {width} columns: {', '.join(hidden)} ({elsewhere})"
        table.caption = f"{table.caption}; {note}" if table.caption else note
    return table


def _is_true(x) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x)) and bool(x)


MAX_SUMMARY_LINES = 20  # under a run's tables: a sweep with thousands of failures must not flood the terminal


def _bounded(lines: list[str], counts: list[int], what: str, limit: int) -> list[str]:
    """``lines`` (each standing for ``counts[i]`` rows), at most ``limit`` of them: past it, one closing line
    counts the rows of the lines left out."""
    if len(lines) <= limit:
        return lines
    rest = sum(counts[limit - 1:])
    return lines[:limit - 1] + [f"{rest:>4} × more {what} ({len(lines) - limit + 1} kinds): see results.csv"]


def failure_lines(df: pd.DataFrame, limit: int = MAX_SUMMARY_LINES) -> list[str]:
    """Each failed row on its line (status, backend, shape, reason) when there are at most ``limit``; else
    one line per (status, backend, reason) with its count, at most ``limit`` lines."""
    bad = df[~df["status"].isin(["ok", "skipped"])]
    if len(bad) <= limit:
        return [f"{r['status']}: {r['backend']} {compact_shape(r)}: {r['reason']}" for _, r in bad.iterrows()]
    counts = bad.groupby(["status", "backend", "reason"], sort=False, dropna=False).size().sort_values(
        ascending=False, kind="stable")
    lines = [f"{n:>4} × {status}: {backend}: {reason}" for (status, backend, reason), n in counts.items()]
    return _bounded(lines, list(counts), "failures", limit)


def skipped_summary(df: pd.DataFrame, limit: int = MAX_SUMMARY_LINES) -> list[str]:
    """One line per distinct skip reason, with its count, at most ``limit`` lines."""
    skipped = df[df["status"] == "skipped"]
    counts = skipped.groupby(["backend", "reason"], dropna=False).size()
    lines = [f"{n:>4} × {backend}: {reason}" for (backend, reason), n in counts.items()]
    return _bounded(lines, list(counts), "skips", limit)


def md_cell(x) -> str:
    """Text that stays inside one markdown table cell: pipes escaped, line breaks made spaces."""
    return " ".join(str(x).replace("|", "\\|").splitlines())


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub markdown table: numbers as people read them (:func:`fmt_num`), a missing or
    non-finite number as "–", every cell on one line (a failure reason may hold several)."""
    def cell(x):
        x = plain_value(x)
        if x is None:
            return "–"
        if isinstance(x, float):
            return fmt_num(x)
        return md_cell(x)

    cols = list(df.columns)
    lines = ["| " + " | ".join(md_cell(c) for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def plain_value(x):
    """A cell as a JSON value: numpy scalars as Python numbers, NaN, ±inf, None and pandas' missing
    markers as None (JSON null, an empty CSV field), lists and mappings element by element."""
    if x is None or x is pd.NA or x is pd.NaT:
        return None
    if isinstance(x, dict):
        return {str(k): plain_value(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain_value(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):  # numpy scalars
        try:
            x = x.item()
        except (ValueError, TypeError):
            return str(x)
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def strict_json(obj, indent: int | None = 1) -> str:
    """JSON every parser takes: no NaN or Infinity literals (they become null), numbers at full
    precision, anything else JSON has no type for as its text."""
    return json.dumps(plain_value(obj), indent=indent, allow_nan=False, default=str) + "\n"


def format_frame(df: pd.DataFrame, fmt: str) -> str:
    """Machine formats: csv, json (a list of row objects), markdown. The same frame gives the same
    columns in each, in the same order, also without rows (csv: the header line; json: ``[]``;
    markdown: the header rows). A missing or non-finite number is an empty csv field, a json null
    and "–" in markdown; numbers keep their full precision in csv and json."""
    if fmt == "csv":
        # ±inf as missing, like json's null (pandas would write "inf")
        clean = df.copy()
        for col in clean.columns:
            if clean[col].dtype.kind == "f":
                clean[col] = clean[col].where(np.isfinite(clean[col]))
            elif clean[col].dtype == object:
                clean[col] = [None if isinstance(v, float) and not math.isfinite(v) else v for v in clean[col]]
        return clean.to_csv(index=False)
    if fmt == "json":
        rows = [dict(zip(df.columns, row)) for row in df.itertuples(index=False, name=None)]
        return strict_json(rows)
    if fmt == "markdown":
        return to_markdown(df)
    raise ValueError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")


SUMMARY_COLUMNS = ["backend", "batch", "heads", "kv_heads", "seq_len_q", "seq_len_kv", "head_dim", "dtype", "causal",
                   "mode", "workload", "window_left", "window_right", "kv_layout", "page_size", "lengths", "total_tokens",
                   "status", "median_ms", "p20_ms", "p80_ms", "noise_pct", "host_ms", "launch_bound", "tflops", "hbm_gbps",
                   "tflop_per_j", "peak_hbm_bytes", "max_abs_err", "reason"]
