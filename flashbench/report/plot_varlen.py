"""``tflops_by_lengths.png``: TFLOP/s of packed (varlen) batches as grouped bars, one group per length
distribution and one slot per backend (see :mod:`flashbench.report.plots`)."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from ..model.lengths import parse_lengths
from ..model.metrics import LATENCY
from .figure_style import backend_colors
from .plot_grid import (PANEL_FIELDS, TFLOPS, FigureInfo, draw_panels, k_label, lengths_label, panel_fields, panels_of,
                        positive, rate_bounds, titled)

# varlen: bars per (length distribution, longest length); panels split by whatever else varies
VARLEN_GROUP_FIELDS = ("lengths", "seq_len_q")
VARLEN_EXTRA_FIELDS = ("window_left", "window_right", "heads", "kv_heads", "total_tokens", "batch", "seq_len_kv")
# statuses a slot of the varlen bars can show instead of a bar; "not run": no row for that slot
NO_ROW = "not run"


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
                ok = positive(rows[rows["status"] == "ok"], TFLOPS.column)
                if ok.empty:
                    status_y.append((x, rows["status"].iloc[0] if len(rows) else NO_ROW, backend))
                    continue
                r = ok.iloc[[0]]
                y = float(r[TFLOPS.column].iloc[0])
                slow, fast = (float(v.iloc[0]) for v in rate_bounds(r, "flops", 1e9))
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


def plot_varlen(varlen: pd.DataFrame, backends: list[str], out_dir: Path, title: str) -> FigureInfo:
    fields = panel_fields(varlen, PANEL_FIELDS, VARLEN_EXTRA_FIELDS, VARLEN_GROUP_FIELDS)
    mine = [b for b in backends if b in set(varlen["backend"])]
    labels = _group_labels(_ordered_groups(varlen))
    budgets = varlen.loc[varlen["lengths"] != "", "total_tokens"].unique()
    budget = f", {k_label(budgets[0])} tokens each" if len(budgets) == 1 and "total_tokens" not in fields else ""
    what = f"{TFLOPS.label} of packed batches by length distribution{budget} (median; error bars {LATENCY.interval[0]} time)"
    varied = [f for f in fields if varlen[f].nunique() > 1]
    cols = min(varlen[varied[-1]].nunique(), 4) if varied else 1
    n_groups = max(len(_ordered_groups(g)) for _, g in varlen.groupby(fields))
    colors = backend_colors(backends)
    from matplotlib.patches import Patch

    legend = [(b, Patch(color=colors[b])) for b in mine]
    return draw_panels(panels_of(varlen, fields), backends, out_dir / "tflops_by_lengths.png", titled(title, what),
                 _varlen_panel(mine, labels), sharey=True, cols=cols,
                 panel_size=(max(4.2, 0.32 * len(mine) * n_groups + 1.2), 3.4), legend=legend)
