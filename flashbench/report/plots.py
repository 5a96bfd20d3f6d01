"""PNG figures of a run (matplotlib, the optional ``plot`` extra), used by ``flashbench plot`` and
``flashbench run --plot``.

* ``tflops_vs_seqlen.png``: TFLOP/s against sequence length per backend (log2 x axis), one panel
  per head_dim × dtype × causal × mode; the band is TFLOP/s at the p80 time (lower edge) to the p20
  time (upper edge).
* ``peak_hbm_vs_seqlen.png``: peak memory above the inputs against sequence length, log-log, so the
  unfused backends' N² and the fused ones' N show as slopes 2 and 1 (per batch·head when the batch
  or heads change with N, e.g. a fixed-token sweep).
* ``gbps_vs_cache_len.png`` (decode rows, which the two figures above leave out: decode is
  memory-bound): GB/s of the minimum bytes against the cache length per backend (the longest a
  length distribution allows), one panel per head_dim × dtype × new tokens × cache layout (and
  whatever else varies); the band is GB/s at the p80 to the p20 time.

Figures follow :mod:`flashbench.report.figure_style` (Agg canvas, no pyplot); axis labels and
titles come from the metrics table.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..model.metrics import LATENCY, by_column
from . import figure_style
from .figure_style import PlotError, backend_colors, new_figure, save_figure, style_axes
from .format import DTYPE_SHORT

PANEL_FIELDS = ("head_dim", "dtype", "causal", "mode")
# workload fields first: a dense sweep never varies them, so its panels stay as they were
EXTRA_PANEL_FIELDS = ("workload", "window_left", "window_right", "lengths", "heads", "kv_heads",
                      "batch", "seq_len_kv")
DECODE_PANEL_FIELDS = ("head_dim", "dtype", "seq_len_q", "kv_layout", "page_size")
DECODE_EXTRA_FIELDS = ("heads", "kv_heads", "batch", "lengths", "window_left", "window_right")


@dataclass(frozen=True)
class FigureInfo:
    path: Path
    panels: int           # axes that hold data
    titles: tuple[str, ...]


TFLOPS = by_column("tflops")
PEAK_HBM = by_column("peak_hbm_bytes")
GBPS = by_column("hbm_gbps")


def panel_fields(df: pd.DataFrame, base=PANEL_FIELDS, extras=EXTRA_PANEL_FIELDS, x: str = "seq_len_q") -> list[str]:
    """``base`` (head_dim, dtype, causal, mode), plus whichever ``extras`` are needed for one line per
    backend to have one point per value of ``x`` (the sequence length)."""
    fields = list(base)
    for extra in extras:
        if not df.duplicated(subset=[*fields, "backend", x]).any():
            break
        if df[extra].nunique() > 1:
            fields.append(extra)
    return fields


def _panel_title(key: dict) -> str:
    parts = [f"D{key['head_dim']}", DTYPE_SHORT.get(key["dtype"], key["dtype"])]
    if "causal" in key:
        parts += ["causal" if key["causal"] else "full", key["mode"]]
    if "seq_len_q" in key:
        parts.append(f"Nq{key['seq_len_q']}")
    if "kv_layout" in key:
        parts.append(f"paged{key['page_size']}" if key["kv_layout"] == "paged" else "contiguous")
    for f, short in (("workload", ""), ("batch", "B"), ("heads", "H"), ("kv_heads", "Hkv"), ("seq_len_kv", "Nkv"),
                     ("lengths", "")):
        if f in key and key[f] != "":
            parts.append(f"{short}{key[f]}")
    if "window_left" in key or "window_right" in key:
        parts.append(f"window({key.get('window_left', '·')},{key.get('window_right', '·')})")
    return " ".join(parts)


def _grid(n: int) -> tuple[int, int]:
    cols = min(n, 4)
    return math.ceil(n / cols), cols


def _draw(panels: list[tuple[dict, pd.DataFrame]], backends: list[str], path: Path, suptitle: str,
          draw_panel, sharey: bool = False) -> FigureInfo:
    rows, cols = _grid(len(panels))
    fig = new_figure((4.2 * cols, 3.4 * rows + 0.6))
    axes = fig.subplots(rows, cols, squeeze=False, sharey=sharey).ravel()
    colors = backend_colors(backends)
    titles = []
    for ax, (key, data) in zip(axes, panels):
        title = _panel_title(key)
        draw_panel(ax, data, colors)
        style_axes(ax, title)
        titles.append(title)
    for ax in axes[len(panels):]:
        fig.delaxes(ax)
    handles = {}
    for ax in fig.axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles and not lab.startswith("_"):
                handles[lab] = h
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=min(len(handles), 6),
                   fontsize=9)
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
_bandwidth_panel = _rate_panel("seq_len_kv", GBPS, "min_hbm_bytes", 1e6, "cache length (longest)")


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


def _positive(df: pd.DataFrame, column: str) -> pd.DataFrame:
    df = df.dropna(subset=[column])
    return df[df[column] > 0]


def plot_frame(df: pd.DataFrame, out_dir: str | Path, title: str = "") -> list[FigureInfo]:
    """Draw the figures of a run's records (a ``Run.frame()``) into ``out_dir``: TFLOP/s and peak
    memory of the dense and varlen rows, GB/s of the decode rows."""
    figure_style.require_matplotlib()
    out_dir = Path(out_dir)
    ok = df[(df["status"] == "ok")]
    decode = ok["workload"] == "decode"
    timed = _positive(ok[~decode], TFLOPS.column)
    bandwidth = _positive(ok[decode], GBPS.column)
    if timed.empty and bandwidth.empty:
        raise PlotError(f"no ok records with {TFLOPS.label} (or, for decode, {GBPS.label}) to plot")
    backends = list(dict.fromkeys(df["backend"]))
    infos = []
    if not timed.empty:
        fields = panel_fields(timed)
        what = f"{TFLOPS.label} (median; band {LATENCY.interval[0]} time)"
        infos.append(_draw(_panels(timed, fields), backends, out_dir / "tflops_vs_seqlen.png",
                           f"{title}: {what}" if title else what, _tflops_panel))
    mem = _positive(ok[~decode], PEAK_HBM.column)
    if not mem.empty:
        mfields = panel_fields(mem)
        per_head = bool(mem.groupby(mfields)[["batch", "heads"]].nunique().gt(1).any().any())
        what = f"{PEAK_HBM.label} above inputs" + (" per batch·head" if per_head else "")
        infos.append(_draw(_panels(mem, mfields), backends, out_dir / "peak_hbm_vs_seqlen.png",
                           f"{title}: {what} (log-log)" if title else f"{what} (log-log)", _memory_panel(per_head)))
    if not bandwidth.empty:
        fields = panel_fields(bandwidth, DECODE_PANEL_FIELDS, DECODE_EXTRA_FIELDS, "seq_len_kv")
        what = f"decode {GBPS.label} of the minimum bytes (median; band {LATENCY.interval[0]} time)"
        infos.append(_draw(_panels(bandwidth, fields), backends, out_dir / "gbps_vs_cache_len.png",
                           f"{title}: {what}" if title else what, _bandwidth_panel))
    return infos


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
