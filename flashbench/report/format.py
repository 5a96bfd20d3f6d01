"""Rendering for people (numbers, bytes, run tables) and machines (csv, json, markdown).

Shared by every command; no command formats numbers on its own. A metric's cells are formatted
by its kind in the metrics table (:mod:`flashbench.model.metrics`).
"""
from __future__ import annotations

import json
import math

import pandas as pd
from rich.table import Table

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
    (a value on its own, not under a heading) adds the unit of an "ms" kind metric."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if metric.kind == "bytes":
        return fmt_bytes(x)
    text = fmt_num(float(x))
    return f"{text} {metric.unit}" if with_unit and metric.kind == "ms" else text


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


def run_table(df: pd.DataFrame, reference_backend: str | None = None, title: str | None = None) -> Table:
    """One section per shape, one row per measured backend, a column per metric of the metrics
    table (and its spread) that some row has a value of. Skipped rows are left out (see
    :func:`skipped_summary`); failure reasons are listed by :func:`failure_lines`."""
    from rich import box

    df = with_speedup(df, reference_backend)
    df = df[df["status"] != "skipped"]
    table = Table(title=title, box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False)
    shown = [m for m in metrics.METRICS if m.in_run_table and m.column in df and df[m.column].notna().any()]
    headings = [h for m in shown for h in (m.label, m.interval_label) if h]
    for col in ("shape", "backend", "status", *headings,
                f"vs {reference_backend}" if reference_backend else "speedup", "max err"):
        table.add_column(col, justify="left" if col in ("shape", "backend", "status") else "right")
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
            if m.column == "host_ms" and _is_true(row.get("launch_bound")):
                cells[-1] = f"[bold yellow]{cells[-1]}*[/]"
                launch_bound = True
            if m.interval:
                lo, hi = row[m.interval[1]], row[m.interval[2]]
                cells.append(f"{format_value(m, lo)}–{format_value(m, hi)}" if pd.notna(lo) else "–")
        table.add_row(
            shape if shape != prev else "",
            row["backend"],
            f"[{STATUS_STYLE.get(status, '')}]{status}[/]",
            *cells,
            f"{row['speedup']:.2f}x" if pd.notna(row["speedup"]) else "–",
            fmt_num(row["max_abs_err"], 2),
        )
        prev = shape
    notes = [m.note for m in shown if m.note]
    if launch_bound:
        notes.append("host ms*: launch-bound, the host takes longer to enqueue the call than the GPU to run it "
                     "(an eager loop of it runs at the host's pace)")
    if notes:
        table.caption = "; ".join(notes)
    return table


def _is_true(x) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x)) and bool(x)


def failure_lines(df: pd.DataFrame) -> list[str]:
    bad = df[~df["status"].isin(["ok", "skipped"])]
    return [f"{r['status']}: {r['backend']} {compact_shape(r)}: {r['reason']}" for _, r in bad.iterrows()]


def skipped_summary(df: pd.DataFrame) -> list[str]:
    """One line per distinct skip reason, with its count."""
    skipped = df[df["status"] == "skipped"]
    counts = skipped.groupby(["backend", "reason"]).size()
    return [f"{n:>4} × {backend}: {reason}" for (backend, reason), n in counts.items()]


def to_markdown(df: pd.DataFrame) -> str:
    def cell(x):
        if isinstance(x, float):
            return fmt_num(x)
        return "" if x is None else str(x).replace("|", "\\|")

    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def format_frame(df: pd.DataFrame, fmt: str) -> str:
    """Machine formats: csv, json (a list of row objects), markdown."""
    if fmt == "csv":
        return df.to_csv(index=False)
    if fmt == "json":
        rows = json.loads(df.to_json(orient="records"))
        return json.dumps(rows, indent=1) + "\n"
    if fmt == "markdown":
        return to_markdown(df)
    raise ValueError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")


SUMMARY_COLUMNS = ["backend", "batch", "heads", "kv_heads", "seq_len_q", "seq_len_kv", "head_dim", "dtype", "causal",
                   "mode", "workload", "window_left", "window_right", "kv_layout", "page_size", "lengths", "total_tokens",
                   "status", "median_ms", "p20_ms", "p80_ms", "noise_pct", "host_ms", "launch_bound", "tflops", "hbm_gbps",
                   "tflop_per_j", "peak_hbm_bytes", "max_abs_err", "reason"]
