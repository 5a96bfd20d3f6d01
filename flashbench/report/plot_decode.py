"""``gbps_vs_cache_len.png``: decode GB/s against the cache length in a facet grid, one column per
cache layout (see :mod:`flashbench.report.plots`)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..model.metrics import LATENCY
from .figure_style import backend_colors
from .plot_grid import (GBPS, PCT_HBM, FigureInfo, draw_panels, lengths_label, panel_fields, panels_of, rate_bounds,
                        seq_axis, titled)

# decode: a facet grid, one column per cache layout (the last fields), lines per backend × batch × lengths
DECODE_PANEL_FIELDS = ("head_dim", "dtype", "seq_len_q")
DECODE_COLUMN_FIELDS = ("kv_layout", "page_size")
DECODE_SERIES_FIELDS = ("batch", "lengths")
DECODE_EXTRA_FIELDS = ("heads", "kv_heads", "window_left", "window_right")
BATCH_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _read_roof(df: pd.DataFrame) -> float | None:
    """The streaming-read roof (GB/s) the rows' ``pct_hbm`` was taken against, when they agree on one."""
    if PCT_HBM.column not in df:
        return None
    pct = pd.to_numeric(df[PCT_HBM.column], errors="coerce")
    roof = (df[GBPS.column] * 100 / pct)[pct > 0].dropna()
    if roof.empty or roof.max() > roof.min() * 1.01:
        return None
    return float(roof.median())


def _decode_styles(df: pd.DataFrame) -> tuple[dict, dict]:
    """Marker per batch; marker fill and line per length distribution: equal lengths filled on a solid
    line, the first distribution hollow on a dotted line, any further ones half filled."""
    markers = {b: BATCH_MARKERS[i % len(BATCH_MARKERS)] for i, b in enumerate(sorted(df["batch"].unique()))}
    fills = {}
    varied = [s for s in dict.fromkeys(df["lengths"]) if s]
    if (df["lengths"] == "").any():
        fills[""] = dict(fillstyle="full", linestyle="-")
    for i, lengths in enumerate(varied):
        half = ("left", "bottom", "right", "top")[(i - 1) % 4]
        fills[lengths] = dict(fillstyle="full" if i == 0 else half, markerfacecolor="white" if i == 0 else None,
                              markerfacecoloralt="white", linestyle=":")
    return markers, fills


def _decode_panel(markers: dict, fills: dict, roof: float | None):
    def draw(ax, data: pd.DataFrame, colors: dict) -> None:
        for (backend, batch, lengths), g in data.groupby(["backend", "batch", "lengths"], sort=False):
            g = g.sort_values("seq_len_kv")
            style = {k: v for k, v in fills[lengths].items() if v is not None}
            ax.plot(g["seq_len_kv"], g[GBPS.column], color=colors[backend], marker=markers[batch], ms=5,
                    linewidth=1.2, zorder=3, **style)
            slow, fast = rate_bounds(g, "min_hbm_bytes", 1e6)
            ok = ~(slow.isna() | fast.isna())
            if ok.sum() > 1:
                ax.fill_between(g["seq_len_kv"][ok], slow[ok], fast[ok], color=colors[backend], alpha=0.15,
                                linewidth=0)
            elif ok.any():  # a single point: the spread as an error bar under the marker
                y = g[GBPS.column][ok]
                ax.errorbar(g["seq_len_kv"][ok], y, yerr=[(y - slow[ok]).clip(lower=0), (fast[ok] - y).clip(lower=0)],
                            fmt="none", ecolor=colors[backend], elinewidth=0.8, capsize=2, zorder=2)
        if roof is not None:
            ax.axhline(roof, color="0.35", linestyle="--", linewidth=0.9)
        seq_axis(ax, data["seq_len_kv"], "cache length (longest)")
        ax.set_ylabel(GBPS.label)
        ax.set_ylim(bottom=0)
    return draw


def _decode_legend(backends: list[str], colors: dict, markers: dict, fills: dict, roof: float | None) -> list:
    from matplotlib.lines import Line2D

    items = [(b, Line2D([], [], color=colors[b], linewidth=2)) for b in backends]
    items += [(f"B{b}", Line2D([], [], color="0.3", marker=m, linestyle="none")) for b, m in markers.items()]
    for lengths, style in fills.items():
        label = "equal lengths" if lengths == "" else f"{lengths_label(lengths, 0)} lengths"
        items.append((label, Line2D([], [], color="0.3", marker="o", **{k: v for k, v in style.items() if v is not None})))
    if roof is not None:
        items.append((f"read roof {roof:,.0f} GB/s", Line2D([], [], color="0.35", linestyle="--")))
    return items


def plot_decode(bandwidth: pd.DataFrame, backends: list[str], out_dir: Path, title: str) -> FigureInfo:
    fields = panel_fields(bandwidth, DECODE_PANEL_FIELDS, DECODE_EXTRA_FIELDS,
                          ("seq_len_kv", *DECODE_SERIES_FIELDS, *DECODE_COLUMN_FIELDS))
    fields += list(DECODE_COLUMN_FIELDS)
    markers, fills = _decode_styles(bandwidth)
    roof = _read_roof(bandwidth)
    mine = [b for b in backends if b in set(bandwidth["backend"])]
    what = f"decode {GBPS.label} of the minimum bytes (median; band {LATENCY.interval[0]} time)"
    return draw_panels(panels_of(bandwidth, fields), backends, out_dir / "gbps_vs_cache_len.png", titled(title, what),
                 _decode_panel(markers, fills, roof), sharey=True, sharex=True, col_fields=DECODE_COLUMN_FIELDS,
                 legend=_decode_legend(mine, backend_colors(backends), markers, fills, roof), legend_cols=10)
