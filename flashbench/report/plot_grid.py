"""The grid every figure of :mod:`flashbench.report.plots` is drawn in: panels keyed by case fields,
their titles, a facet layout, the shared axes and legend, and the small helpers the figures share
(the sequence-length axis, a rate's p20-p80 bounds, readable length distributions)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..model.lengths import parse_lengths
from ..model.metrics import LATENCY, by_column
from .figure_style import backend_colors, new_figure, save_figure, style_axes
from .format import DTYPE_SHORT


@dataclass(frozen=True)
class FigureInfo:
    path: Path
    panels: int           # axes that hold data
    titles: tuple[str, ...]


TFLOPS = by_column("tflops")
PEAK_HBM = by_column("peak_hbm_bytes")
GBPS = by_column("hbm_gbps")
PCT_HBM = by_column("pct_hbm")

PANEL_FIELDS = ("head_dim", "dtype", "causal", "mode")
# workload fields first: a dense sweep never varies them, so its panels stay as they were
EXTRA_PANEL_FIELDS = ("workload", "window_left", "window_right", "lengths", "heads", "kv_heads",
                      "batch", "seq_len_kv")


def panel_fields(df: pd.DataFrame, base=PANEL_FIELDS, extras=EXTRA_PANEL_FIELDS, x: str | tuple = "seq_len_q") -> list[str]:
    """``base`` (head_dim, dtype, causal, mode), plus whichever ``extras`` are needed for one line per
    backend to have one point per value of ``x`` (the sequence length; or one point per combination
    of the columns ``x`` names)."""
    fields = list(base)
    xs = [x] if isinstance(x, str) else list(x)
    for extra in extras:
        if not df.duplicated(subset=[*fields, "backend", *xs]).any():
            break
        if df[extra].nunique() > 1:
            fields.append(extra)
    return fields


def k_label(n: int) -> str:
    """8192 -> 8k, 1536 -> 1536 (a whole number of k only)."""
    n = int(n)
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n)


def lengths_label(lengths: str, seq_len: int) -> str:
    """A readable name of a length distribution (the ``lengths`` field): "uniform 128–8k",
    "lognormal 128–8k", "list 128…8k", "equal 2048" (empty ``lengths``: every sequence ``seq_len``
    long); a description that does not parse is shown as it is."""
    if not lengths:
        return f"equal {seq_len}"
    try:
        spec = parse_lengths(lengths)
    except ValueError:
        return lengths
    if spec.dist == "list":
        lo, hi = min(spec.values), max(spec.values)
        return f"list {k_label(lo)}" if lo == hi else f"list {k_label(lo)}…{k_label(hi)}"
    return f"{spec.dist} {k_label(spec.low)}–{k_label(spec.high)}"


def panel_title(key: dict) -> str:
    parts = [f"D{key['head_dim']}", DTYPE_SHORT.get(key["dtype"], key["dtype"])]
    if "causal" in key:
        parts += ["causal" if key["causal"] else "full", key["mode"]]
    if "seq_len_q" in key:
        q = int(key["seq_len_q"])
        parts.append(f"{q} new token{'s' if q != 1 else ''}")
    if "kv_layout" in key:
        parts.append(f"paged{key['page_size']}" if key["kv_layout"] == "paged" else "contiguous")
    for f, short in (("workload", ""), ("batch", "B"), ("heads", "H"), ("kv_heads", "Hkv"), ("seq_len_kv", "Nkv"),
                     ("lengths", "")):
        if f in key and key[f] != "":
            parts.append(f"{short}{key[f]}")
    if "total_tokens" in key:
        parts.append(f"{k_label(key['total_tokens'])} tokens")
    if "window_left" in key or "window_right" in key:
        parts.append(f"window({key.get('window_left', '·')},{key.get('window_right', '·')})")
    return " ".join(parts)


def facet_layout(panels: list[tuple[dict, pd.DataFrame]], col_fields) -> tuple[int, int, list[int]] | None:
    """Rows × columns and each panel's slot when the panels form a grid with one column per value of
    ``col_fields`` (2 to 4 values) and one row per value of the other fields; None otherwise."""
    if not col_fields or not panels or any(f not in panels[0][0] for f in col_fields):
        return None
    cols = list(dict.fromkeys(tuple(k[f] for f in col_fields) for k, _ in panels))
    rows = list(dict.fromkeys(tuple(v for f, v in k.items() if f not in col_fields) for k, _ in panels))
    if not 2 <= len(cols) <= 4:
        return None
    slots = [rows.index(tuple(v for f, v in k.items() if f not in col_fields)) * len(cols)
             + cols.index(tuple(k[f] for f in col_fields)) for k, _ in panels]
    return len(rows), len(cols), slots


def draw_panels(panels: list[tuple[dict, pd.DataFrame]], backends: list[str], path: Path, suptitle: str,
          draw_panel, sharey: bool = False, sharex: bool = False, col_fields=None, cols: int | None = None,
          panel_size: tuple[float, float] = (4.2, 3.4), legend=None, legend_cols: int = 6) -> FigureInfo:
    """The panels in a grid: by ``col_fields`` (one column per value, see :func:`facet_layout`), else
    ``cols`` (default up to 4) to a row. ``legend``: the figure legend's (label, handle) pairs
    (default: the labelled artists of the panels, once each)."""
    facet = facet_layout(panels, col_fields)
    if facet:
        rows, cols, slots = facet
    else:
        cols = min(len(panels), cols or 4)
        rows, slots = math.ceil(len(panels) / cols), list(range(len(panels)))
    fig = new_figure((panel_size[0] * cols, panel_size[1] * rows + 0.6))
    axes = fig.subplots(rows, cols, squeeze=False, sharey=sharey, sharex=sharex).ravel()
    colors = backend_colors(backends)
    titles = []
    for slot, (key, data) in zip(slots, panels):
        ax = axes[slot]
        title = panel_title(key)
        draw_panel(ax, data, colors)
        style_axes(ax, title)
        titles.append(title)
    used = set(slots)
    for i, ax in enumerate(axes):
        if i not in used:
            fig.delaxes(ax)
            continue
        if sharex and any(j in used for j in range(i + cols, len(axes), cols)):
            ax.set_xlabel("")  # the bottom panel of the column names the shared axis
        elif sharex:
            ax.xaxis.set_tick_params(labelbottom=True)  # nothing below it shows the shared ticks
        if sharey and i % cols:
            ax.set_ylabel("")
    if legend is None:
        handles = {}
        for ax in fig.axes:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                if lab not in handles and not lab.startswith("_"):
                    handles[lab] = h
    else:
        handles = dict(legend)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside lower center",
                   ncols=min(len(handles), legend_cols), fontsize=9)
    fig.suptitle(suptitle, fontsize=11)
    return FigureInfo(save_figure(fig, path), len(panels), tuple(titles))


def panels_of(df: pd.DataFrame, fields: list[str]) -> list[tuple[dict, pd.DataFrame]]:
    return [(dict(zip(fields, key)), group) for key, group in df.groupby(fields, sort=True)]


def seq_axis(ax, seq_lens, label: str = "sequence length") -> None:
    """log2 x axis ticked at the measured sequence lengths, labelled 512, 1k, 2k..."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(sorted(set(int(n) for n in seq_lens))))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1024:g}k" if x >= 1024 else f"{x:g}"))
    ax.set_xlabel(label)


def rate_bounds(g: pd.DataFrame, work: str, per_ms: float) -> tuple[pd.Series, pd.Series]:
    """The rate at the slow (p80) and the fast (p20) end of the time's spread."""
    _, lo, hi = LATENCY.interval
    return g[work] / g[hi] / per_ms, g[work] / g[lo] / per_ms


def positive(df: pd.DataFrame, column: str) -> pd.DataFrame:
    """The rows with a finite value > 0 of ``column`` (matplotlib would drop an infinite one without a word)."""
    values = pd.to_numeric(df[column], errors="coerce")
    return df[values.notna() & (values > 0) & (values != float("inf"))]


def titled(title: str, what: str) -> str:
    return f"{title}: {what}" if title else what
