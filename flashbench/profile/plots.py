"""PNG figures of ``flashbench profile``: the roofline and HBM bytes against N (log-log).

Drawn in the style of every flashbench figure (:mod:`flashbench.report.figure_style`: Agg canvas,
one colour per backend).
"""
from __future__ import annotations

from pathlib import Path

from ..report.figure_style import backend_colors, new_figure, save_figure, style_axes
from .ceilings import Ceilings
from .io_model import MODEL_TITLES
from .roofline import MEASURED, RooflinePoint

FIGSIZE = (7.5, 5)
# the traffic models' lines: (colour, line style), apart from the backends' colours
MODEL_STYLES = {"standard": ("tab:red", "--"), "fa1": ("tab:purple", "-."), "fa2": ("tab:green", ":"),
                "minimum": ("grey", "-")}


def plot_roofline(points: list[RooflinePoint], ceilings: Ceilings | None, path: str | Path, title: str = "") -> Path:
    fig = new_figure(FIGSIZE)
    ax = fig.subplots()
    pts = [p for p in points if p.intensity and p.tflops]
    xs = [p.intensity for p in pts]
    lo = min(xs + [1.0]) / 4
    hi = max(xs + [(ceilings.ridge_flop_per_byte if ceilings else 10.0)]) * 4
    if ceilings is not None:
        import numpy as np

        grid = np.logspace(np.log10(lo), np.log10(hi), 200)
        ax.plot(grid, [ceilings.attainable_tflops(x) for x in grid], color="black", lw=1.5,
                label=f"roof: {ceilings.compute_tflops:.0f} TFLOP/s sustained, {ceilings.memory_gbps / 1e3:.2f} TB/s read")
        ax.axvline(ceilings.ridge_flop_per_byte, color="grey", ls=":", lw=1)
    colors = backend_colors(p.backend for p in pts)
    labelled = set()
    for p in pts:
        marker = "o" if p.basis == MEASURED else "^"
        # a point without a roof of its dtype is drawn hollow: the roof line above it is not its roof
        label = f"{p.backend} ({p.basis}" + ("; no roof for its dtype)" if p.note and not p.above_roof else ")")
        ax.scatter([p.intensity], [p.tflops], marker=marker, s=50, zorder=3, edgecolors=colors[p.backend],
                   facecolors="none" if p.note and not p.above_roof else colors[p.backend],
                   label=None if label in labelled else label)  # one legend entry per backend and basis
        labelled.add(label)
        ax.annotate(p.backend, (p.intensity, p.tflops), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / HBM byte)")
    ax.set_ylabel("achieved TFLOP/s")
    style_axes(ax, title + ("" if ceilings else " (no GPU ceilings: CPU run)"))
    ax.legend(fontsize=7, loc="lower right")
    return save_figure(fig, path)


def plot_traffic_sweep(rows: list[dict], path: str | Path, title: str = "", xlabel: str = "sequence length N") -> Path:
    """rows: {"backend", "n", "measured" (bytes or None), "standard", "fa1", "fa2", "minimum"}."""
    fig = new_figure(FIGSIZE)
    ax = fig.subplots()
    ns = sorted({r["n"] for r in rows})
    first = {}
    for r in rows:
        first.setdefault(r["n"], r)
    for key, (color, ls) in MODEL_STYLES.items():
        ys = [first[n].get(key) for n in ns]
        if all(y is not None for y in ys):
            label = "minimum (Q, K, V in, O out)" if key == "minimum" else f"model: {MODEL_TITLES[key]}"
            ax.plot(ns, ys, color=color, ls=ls, lw=1.2, label=label)
    measured = [r for r in rows if r.get("measured")]
    colors = backend_colors(r["backend"] for r in measured)
    for backend in colors:
        pts = sorted((r["n"], r["measured"]) for r in measured if r["backend"] == backend)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", lw=2, color=colors[backend],
                label=f"{backend} (ncu, read + written)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("HBM bytes per call")
    style_axes(ax, title)
    ax.legend(fontsize=7)
    return save_figure(fig, path)
