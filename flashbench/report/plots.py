"""PNG figures of a run (matplotlib, the optional ``plot`` extra), used by ``flashbench plot`` and
``flashbench run --plot``.

* ``tflops_vs_seqlen.png`` (dense rows): TFLOP/s against sequence length per backend (log2 x axis),
  one panel per head_dim × dtype × causal × mode; the band is TFLOP/s at the p80 time (lower edge)
  to the p20 time (upper edge).
* ``peak_hbm_vs_seqlen.png`` (dense rows): peak memory above the inputs against sequence length,
  log-log, so the unfused backends' N² and the fused ones' N show as slopes 2 and 1 (per batch·head
  when the batch or heads change with N, e.g. a fixed-token sweep).
* ``tflops_by_lengths.png`` (varlen rows, which the two figures above leave out): grouped bars, one
  group per length distribution ("uniform 128–8k", "equal 2048"; the number of sequences under it),
  one bar per backend; the error bar is TFLOP/s at the p80 to the p20 time. One panel per
  head_dim × dtype × causal × mode (and kv_heads, heads, window, token budget where they vary). A
  backend without a result there keeps its slot, labelled with the status (``skipped``,
  ``mismatch``, ``oom``...; ``not run`` without a row), so a missing bar is explained.
  Varlen rows get no memory figure: every case of a varlen sweep packs the same token budget, so
  the peak memory above the inputs does not change with the length distribution (fused kernels:
  linear in the tokens; on the H200 sweep it is identical across the four distributions of a
  panel), and one point per panel on a sequence-length axis says nothing. The numbers stay in
  ``results.csv`` (``peak_hbm_bytes``).
* ``gbps_vs_cache_len.png`` (decode rows, which the figures above leave out: decode is
  memory-bound): GB/s of the minimum bytes against the cache length (the longest a length
  distribution allows), a grid of panels with shared axes: one column per cache layout, one row
  per new-token count (and heads, kv_heads, window where they vary). In a panel the colour is the
  backend, the marker the batch, and equal cache lengths are filled markers on lines while varied
  lengths are hollow markers; the band (or, for a single point, the error bar) is GB/s at the p80
  to the p20 time. A dashed line marks the GPU's streaming-read roof when the rows carry
  ``pct_hbm``.

Figures follow :mod:`flashbench.report.figure_style` (Agg canvas, no pyplot); axis labels and
titles come from the metrics table.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..model.lengths import parse_lengths
from ..model.metrics import LATENCY, by_column
from . import figure_style
from .figure_style import PlotError, backend_colors, new_figure, save_figure, style_axes
from .format import DTYPE_SHORT

PANEL_FIELDS = ("head_dim", "dtype", "causal", "mode")
# workload fields first: a dense sweep never varies them, so its panels stay as they were
EXTRA_PANEL_FIELDS = ("workload", "window_left", "window_right", "lengths", "heads", "kv_heads",
                      "batch", "seq_len_kv")
# varlen: bars per (length distribution, longest length); panels split by whatever else varies
VARLEN_GROUP_FIELDS = ("lengths", "seq_len_q")
VARLEN_EXTRA_FIELDS = ("window_left", "window_right", "heads", "kv_heads", "total_tokens", "batch", "seq_len_kv")
# decode: a facet grid, one column per cache layout (the last fields), lines per backend × batch × lengths
DECODE_PANEL_FIELDS = ("head_dim", "dtype", "seq_len_q")
DECODE_COLUMN_FIELDS = ("kv_layout", "page_size")
DECODE_SERIES_FIELDS = ("batch", "lengths")
DECODE_EXTRA_FIELDS = ("heads", "kv_heads", "window_left", "window_right")
BATCH_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
# statuses a slot of the varlen bars can show instead of a bar; "not run": no row for that slot
NO_ROW = "not run"


@dataclass(frozen=True)
class FigureInfo:
    path: Path
    panels: int           # axes that hold data
    titles: tuple[str, ...]


TFLOPS = by_column("tflops")
PEAK_HBM = by_column("peak_hbm_bytes")
GBPS = by_column("hbm_gbps")
PCT_HBM = by_column("pct_hbm")


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


def _k(n: int) -> str:
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
        return f"list {_k(lo)}" if lo == hi else f"list {_k(lo)}…{_k(hi)}"
    return f"{spec.dist} {_k(spec.low)}–{_k(spec.high)}"


def _group_labels(keys: list[tuple[str, int]]) -> dict[tuple[str, int], str]:
    """Labels of (lengths, seq_len) groups; two distributions that read alike get their description's seed."""
    labels = {k: lengths_label(*k) for k in keys}
    clash = {lab for lab in labels.values() if list(labels.values()).count(lab) > 1}
    for k, lab in labels.items():
        if lab in clash and k[0]:
            try:
                labels[k] = f"{lab} seed {parse_lengths(k[0]).seed}"
            except ValueError:
                labels[k] = k[0]
    return labels


def _panel_title(key: dict) -> str:
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
        parts.append(f"{_k(key['total_tokens'])} tokens")
    if "window_left" in key or "window_right" in key:
        parts.append(f"window({key.get('window_left', '·')},{key.get('window_right', '·')})")
    return " ".join(parts)


def _grid(n: int) -> tuple[int, int]:
    cols = min(n, 4)
    return math.ceil(n / cols), cols


def _facet(panels: list[tuple[dict, pd.DataFrame]], col_fields) -> tuple[int, int, list[int]] | None:
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


def _draw(panels: list[tuple[dict, pd.DataFrame]], backends: list[str], path: Path, suptitle: str,
          draw_panel, sharey: bool = False, sharex: bool = False, col_fields=None, cols: int | None = None,
          panel_size: tuple[float, float] = (4.2, 3.4), legend=None, legend_cols: int = 6) -> FigureInfo:
    """The panels in a grid: by ``col_fields`` (one column per value, see :func:`_facet`), else
    ``cols`` (default up to 4) to a row. ``legend``: the figure legend's (label, handle) pairs
    (default: the labelled artists of the panels, once each)."""
    facet = _facet(panels, col_fields)
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
        title = _panel_title(key)
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


def _panels(df: pd.DataFrame, fields: list[str]) -> list[tuple[dict, pd.DataFrame]]:
    return [(dict(zip(fields, key)), group) for key, group in df.groupby(fields, sort=True)]


def _seq_axis(ax, seq_lens, label: str = "sequence length") -> None:
    """log2 x axis ticked at the measured sequence lengths, labelled 512, 1k, 2k..."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(sorted(set(int(n) for n in seq_lens))))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1024:g}k" if x >= 1024 else f"{x:g}"))
    ax.set_xlabel(label)


def _rate_bounds(g: pd.DataFrame, work: str, per_ms: float) -> tuple[pd.Series, pd.Series]:
    """The rate at the slow (p80) and the fast (p20) end of the time's spread."""
    _, lo, hi = LATENCY.interval
    return g[work] / g[hi] / per_ms, g[work] / g[lo] / per_ms


def _rate_panel(x: str, metric, work: str, per_ms: float, xlabel: str):
    """A panel of ``metric`` (a rate: ``work`` per median time) against ``x``, one line per backend; the
    band is the rate at the slow (p80) and the fast (p20) end of the time's spread. ``per_ms``: the
    metric's unit in work per millisecond (TFLOP/s: 1e9 FLOP/ms, GB/s: 1e6 B/ms)."""
    def draw(ax, data: pd.DataFrame, colors: dict) -> None:
        _, lo, hi = LATENCY.interval
        for backend, g in data.groupby("backend", sort=False):
            g = g.sort_values(x)
            ax.plot(g[x], g[metric.column], marker="o", ms=3, color=colors[backend], label=backend)
            band = g.dropna(subset=[lo, hi, work])
            if len(band):
                ax.fill_between(band[x], band[work] / band[hi] / per_ms, band[work] / band[lo] / per_ms,
                                color=colors[backend], alpha=0.2, linewidth=0)
        _seq_axis(ax, data[x], xlabel)
        ax.set_ylabel(metric.label)
        ax.set_ylim(bottom=0)
    return draw


_tflops_panel = _rate_panel("seq_len_q", TFLOPS, "flops", 1e9, "sequence length")


def _memory_panel(per_head: bool):
    def draw(ax, data: pd.DataFrame, colors: dict) -> None:
        for backend, g in data.groupby("backend", sort=False):
            g = g.sort_values("seq_len_q")
            y = g[PEAK_HBM.column] / (1 << 20)
            if per_head:
                y = y / (g["batch"] * g["heads"])
            ax.plot(g["seq_len_q"], y, marker="o", ms=3, color=colors[backend], label=backend)
        _seq_axis(ax, data["seq_len_q"])
        ax.set_yscale("log")
        ax.set_ylabel("MiB per batch·head" if per_head else "MiB")
    return draw


# --- varlen: bars by length distribution -------------------------------------------------------------

def _ordered_groups(df: pd.DataFrame) -> list[tuple[str, int]]:
    """(lengths, seq_len_q) in the order of the run, equal lengths first (the reference)."""
    keys = list(dict.fromkeys(zip(df["lengths"], df["seq_len_q"].astype(int))))
    return [k for k in keys if not k[0]] + [k for k in keys if k[0]]


def _varlen_panel(backends: list[str], labels: dict):
    """Grouped bars of TFLOP/s: one group per length distribution, one slot per backend (in every
    panel, so a backend sits in the same place everywhere). An ok row is a bar with the p20–p80
    error bar; any other status (or no row) leaves the slot empty, labelled with the status."""
    def draw(ax, data: pd.DataFrame, colors: dict) -> None:
        groups = _ordered_groups(data)
        width = 0.8 / len(backends)
        status_y, tiny = [], []  # (x, status, backend) and (x, value): written once the y range is known
        for gi, gkey in enumerate(groups):
            g = data[(data["lengths"] == gkey[0]) & (data["seq_len_q"] == gkey[1])]
            for bi, backend in enumerate(backends):
                x = gi + (bi - (len(backends) - 1) / 2) * width
                rows = g[g["backend"] == backend]
                ok = _positive(rows[rows["status"] == "ok"], TFLOPS.column)
                if ok.empty:
                    status_y.append((x, rows["status"].iloc[0] if len(rows) else NO_ROW, backend))
                    continue
                r = ok.iloc[[0]]
                y = float(r[TFLOPS.column].iloc[0])
                slow, fast = (float(v.iloc[0]) for v in _rate_bounds(r, "flops", 1e9))
                yerr = None if math.isnan(slow) or math.isnan(fast) else [[max(y - slow, 0)], [max(fast - y, 0)]]
                ax.bar(x, y, width, color=colors[backend], yerr=yerr, ecolor="0.15", capsize=2,
                       error_kw={"linewidth": 0.8}, label=backend)
                tiny.append((x, y))
        ax.set_ylim(bottom=0)
        top = ax.get_ylim()[1]
        for x, y in tiny:
            if y < 0.04 * top:  # too short to read off the axis: its value on top
                ax.text(x, y + top * 0.01, f"{y:.2g}", ha="center", va="bottom", fontsize=6.5, color="0.2")
        for x, status, backend in status_y:
            ax.bar(x, top * 0.25, width, facecolor="none", edgecolor=colors[backend], linestyle=":", linewidth=0.8,
                   alpha=0.7)
            ax.text(x, top * 0.015, status, rotation=90, ha="center", va="bottom", fontsize=7, color=colors[backend])
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([_group_tick(labels[k], data, k) for k in groups], fontsize=8)
        ax.set_xlim(-0.5, len(groups) - 0.5)
        ax.set_ylabel(TFLOPS.label)
        ax.grid(False, axis="x")
    return draw


def _group_tick(label: str, data: pd.DataFrame, key: tuple[str, int]) -> str:
    """The distribution's label and, when one count fits the group, how many sequences it packed."""
    batches = data[(data["lengths"] == key[0]) & (data["seq_len_q"] == key[1])]["batch"].unique()
    return f"{label}\n{int(batches[0])} seqs" if len(batches) == 1 else label


# --- decode: GB/s against cache length, a facet grid -------------------------------------------------

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
            slow, fast = _rate_bounds(g, "min_hbm_bytes", 1e6)
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
        _seq_axis(ax, data["seq_len_kv"], "cache length (longest)")
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


def _positive(df: pd.DataFrame, column: str) -> pd.DataFrame:
    df = df.dropna(subset=[column])
    return df[df[column] > 0]


def _titled(title: str, what: str) -> str:
    return f"{title}: {what}" if title else what


def plot_frame(df: pd.DataFrame, out_dir: str | Path, title: str = "") -> list[FigureInfo]:
    """Draw the figures of a run's records (a ``Run.frame()``) into ``out_dir``: TFLOP/s and peak
    memory of the dense rows, TFLOP/s by length distribution of the varlen rows, GB/s of the decode
    rows."""
    figure_style.require_matplotlib()
    out_dir = Path(out_dir)
    ok = df[(df["status"] == "ok")]
    decode = ok["workload"] == "decode"
    dense = ~decode & (ok["workload"] != "varlen")
    timed = _positive(ok[dense], TFLOPS.column)
    bandwidth = _positive(ok[decode], GBPS.column)
    varlen = df[df["workload"] == "varlen"]
    varlen_timed = _positive(ok[ok["workload"] == "varlen"], TFLOPS.column)
    if timed.empty and bandwidth.empty and varlen_timed.empty:
        raise PlotError(f"no ok records with {TFLOPS.label} (or, for decode, {GBPS.label}) to plot")
    backends = list(dict.fromkeys(df["backend"]))
    infos = []
    band = LATENCY.interval[0]
    if not timed.empty:
        fields = panel_fields(timed)
        infos.append(_draw(_panels(timed, fields), backends, out_dir / "tflops_vs_seqlen.png",
                           _titled(title, f"{TFLOPS.label} (median; band {band} time)"), _tflops_panel))
    mem = _positive(ok[dense], PEAK_HBM.column)
    if not mem.empty:
        mfields = panel_fields(mem)
        per_head = bool(mem.groupby(mfields)[["batch", "heads"]].nunique().gt(1).any().any())
        what = f"{PEAK_HBM.label} above inputs" + (" per batch·head" if per_head else "")
        infos.append(_draw(_panels(mem, mfields), backends, out_dir / "peak_hbm_vs_seqlen.png",
                           _titled(title, f"{what} (log-log)"), _memory_panel(per_head)))
    if not varlen_timed.empty:
        infos.append(_plot_varlen(varlen, backends, out_dir, title))
    if not bandwidth.empty:
        infos.append(_plot_decode(bandwidth, backends, out_dir, title))
    return infos


def _plot_varlen(varlen: pd.DataFrame, backends: list[str], out_dir: Path, title: str) -> FigureInfo:
    fields = panel_fields(varlen, PANEL_FIELDS, VARLEN_EXTRA_FIELDS, VARLEN_GROUP_FIELDS)
    mine = [b for b in backends if b in set(varlen["backend"])]
    labels = _group_labels(_ordered_groups(varlen))
    budgets = varlen.loc[varlen["lengths"] != "", "total_tokens"].unique()
    budget = f", {_k(budgets[0])} tokens each" if len(budgets) == 1 and "total_tokens" not in fields else ""
    what = f"{TFLOPS.label} of packed batches by length distribution{budget} (median; error bars {LATENCY.interval[0]} time)"
    varied = [f for f in fields if varlen[f].nunique() > 1]
    cols = min(varlen[varied[-1]].nunique(), 4) if varied else 1
    n_groups = max(len(_ordered_groups(g)) for _, g in varlen.groupby(fields))
    colors = backend_colors(backends)
    from matplotlib.patches import Patch

    legend = [(b, Patch(color=colors[b])) for b in mine]
    return _draw(_panels(varlen, fields), backends, out_dir / "tflops_by_lengths.png", _titled(title, what),
                 _varlen_panel(mine, labels), sharey=True, cols=cols,
                 panel_size=(max(4.2, 0.32 * len(mine) * n_groups + 1.2), 3.4), legend=legend)


def _plot_decode(bandwidth: pd.DataFrame, backends: list[str], out_dir: Path, title: str) -> FigureInfo:
    fields = panel_fields(bandwidth, DECODE_PANEL_FIELDS, DECODE_EXTRA_FIELDS,
                          ("seq_len_kv", *DECODE_SERIES_FIELDS, *DECODE_COLUMN_FIELDS))
    fields += list(DECODE_COLUMN_FIELDS)
    markers, fills = _decode_styles(bandwidth)
    roof = _read_roof(bandwidth)
    mine = [b for b in backends if b in set(bandwidth["backend"])]
    what = f"decode {GBPS.label} of the minimum bytes (median; band {LATENCY.interval[0]} time)"
    return _draw(_panels(bandwidth, fields), backends, out_dir / "gbps_vs_cache_len.png", _titled(title, what),
                 _decode_panel(markers, fills, roof), sharey=True, sharex=True, col_fields=DECODE_COLUMN_FIELDS,
                 legend=_decode_legend(mine, backend_colors(backends), markers, fills, roof), legend_cols=10)


def run_title(meta: dict) -> str:
    cfg = meta.get("config") or {}
    env = meta.get("environment") or {}
    return f"{cfg.get('name') or Path(str(cfg.get('path', 'run'))).stem} on {env.get('gpu_name') or env.get('device') or '?'}"


def plot_run_dir(directory: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Figures of a results directory, written into ``<directory>/plots/`` (or ``out_dir``).

    Raises :class:`PlotError` (:class:`PlotDependencyError` without matplotlib) and
    :class:`flashbench.results.files.ResultsError` for a missing or unreadable results file.
    """
    from ..results.files import load_run

    figure_style.require_matplotlib()
    run = load_run(directory)
    base = Path(directory)
    target = Path(out_dir) if out_dir is not None else (base if base.is_dir() else base.parent) / "plots"
    return [info.path for info in plot_frame(run.frame(), target, run_title(run.meta))]
