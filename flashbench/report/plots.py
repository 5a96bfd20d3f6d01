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

This module draws the dense figures and dispatches rows by workload; the varlen bars live in
:mod:`~flashbench.report.plot_varlen`, the decode grid in :mod:`~flashbench.report.plot_decode`, and
the panel grid they all share in :mod:`~flashbench.report.plot_grid`. Figures follow
:mod:`flashbench.report.figure_style` (Agg canvas, no pyplot); axis labels and titles come from the
metrics table.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..model.metrics import LATENCY
from . import figure_style
from .figure_style import PlotError
from .plot_decode import plot_decode
from .plot_grid import (GBPS, PEAK_HBM, TFLOPS, FigureInfo, draw_panels, panel_fields, panels_of, positive, seq_axis,
                        titled)
from .plot_varlen import plot_varlen

__all__ = ["FigureInfo", "PlotError", "not_plotted", "plot_frame", "plot_run", "plot_run_dir", "run_title"]


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
        seq_axis(ax, data[x], xlabel)
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
        seq_axis(ax, data["seq_len_q"])
        ax.set_yscale("log")
        ax.set_ylabel("MiB per batch·head" if per_head else "MiB")
    return draw


def _selections(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The rows each figure draws: ``timed`` (dense TFLOP/s), ``mem`` (dense peak memory), ``varlen`` (every
    varlen row: a slot labelled with its status when not ok; drawn only when some ``varlen_timed`` row has a
    value), ``bandwidth`` (decode GB/s)."""
    ok = df[(df["status"] == "ok")]
    decode = ok["workload"] == "decode"
    dense = ~decode & (ok["workload"] != "varlen")
    return {"timed": positive(ok[dense], TFLOPS.column), "mem": positive(ok[dense], PEAK_HBM.column),
            "bandwidth": positive(ok[decode], GBPS.column), "varlen": df[df["workload"] == "varlen"],
            "varlen_timed": positive(ok[ok["workload"] == "varlen"], TFLOPS.column)}


MAX_NOT_PLOTTED_LINES = 10


def not_plotted(df: pd.DataFrame) -> list[str]:
    """What no figure shows, so that nothing leaves a figure silently: one line per (backend, status) with
    a count (ok rows without a positive value of the figure's metric as "ok without a value"), at most
    :data:`MAX_NOT_PLOTTED_LINES` lines and a count of the rest."""
    sel = _selections(df)
    shown = set(sel["timed"].index) | set(sel["mem"].index) | set(sel["bandwidth"].index)
    if not sel["varlen_timed"].empty:
        shown |= set(sel["varlen"].index)
    rest = df[~df.index.isin(list(shown))]
    if rest.empty:
        return []
    status = rest["status"].where(rest["status"] != "ok", "ok without a value")
    counts = rest.groupby([rest["backend"], status], sort=False).size()
    lines = [f"{n:>4} × {backend}: {what}" for (backend, what), n in counts.items()]
    if len(lines) > MAX_NOT_PLOTTED_LINES:
        hidden = int(counts.iloc[MAX_NOT_PLOTTED_LINES - 1:].sum())
        lines = lines[:MAX_NOT_PLOTTED_LINES - 1] + [f"{hidden:>4} × more ({len(lines) - MAX_NOT_PLOTTED_LINES + 1} "
                                                     "backend/status pairs): see results.csv"]
    return lines


def plot_frame(df: pd.DataFrame, out_dir: str | Path, title: str = "") -> list[FigureInfo]:
    """Draw the figures of a run's records (a ``Run.frame()``) into ``out_dir``: TFLOP/s and peak
    memory of the dense rows, TFLOP/s by length distribution of the varlen rows, GB/s of the decode
    rows (:func:`not_plotted` says which rows none of them shows)."""
    figure_style.require_matplotlib()
    out_dir = Path(out_dir)
    sel = _selections(df)
    timed, mem, bandwidth, varlen, varlen_timed = (sel[k] for k in ("timed", "mem", "bandwidth", "varlen",
                                                                    "varlen_timed"))
    if timed.empty and bandwidth.empty and varlen_timed.empty:
        raise PlotError(f"no ok records with {TFLOPS.label} (or, for decode, {GBPS.label}) to plot")
    backends = list(dict.fromkeys(df["backend"]))
    infos = []
    band = LATENCY.interval[0]
    if not timed.empty:
        fields = panel_fields(timed)
        infos.append(draw_panels(panels_of(timed, fields), backends, out_dir / "tflops_vs_seqlen.png",
                           titled(title, f"{TFLOPS.label} (median; band {band} time)"), _tflops_panel))
    if not mem.empty:
        mfields = panel_fields(mem)
        per_head = bool(mem.groupby(mfields)[["batch", "heads"]].nunique().gt(1).any().any())
        what = f"{PEAK_HBM.label} above inputs" + (" per batch·head" if per_head else "")
        infos.append(draw_panels(panels_of(mem, mfields), backends, out_dir / "peak_hbm_vs_seqlen.png",
                           titled(title, f"{what} (log-log)"), _memory_panel(per_head)))
    if not varlen_timed.empty:
        infos.append(plot_varlen(varlen, backends, out_dir, title))
    if not bandwidth.empty:
        infos.append(plot_decode(bandwidth, backends, out_dir, title))
    return infos


def run_title(meta: dict) -> str:
    cfg = meta.get("config") or {}
    env = meta.get("environment") or {}
    return f"{cfg.get('name') or Path(str(cfg.get('path', 'run'))).stem} on {env.get('gpu_name') or env.get('device') or '?'}"


def plot_run(directory: str | Path, out_dir: str | Path | None = None) -> tuple[list[Path], list[str]]:
    """Figures of a results directory, written into ``<directory>/plots/`` (or ``out_dir``), and the
    :func:`not_plotted` lines of the rows they leave out.

    Raises :class:`PlotError` (:class:`PlotDependencyError` without matplotlib) and
    :class:`flashbench.results.files.ResultsError` for a missing or unreadable results file.
    """
    from ..results.files import load_run

    figure_style.require_matplotlib()
    run = load_run(directory)
    base = Path(directory)
    target = Path(out_dir) if out_dir is not None else (base if base.is_dir() else base.parent) / "plots"
    df = run.frame()
    return [info.path for info in plot_frame(df, target, run_title(run.meta))], not_plotted(df)


def plot_run_dir(directory: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """The figures of :func:`plot_run` alone (``run --plot``, whose tables already list skips and failures)."""
    return plot_run(directory, out_dir)[0]
