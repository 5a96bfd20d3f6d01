"""PNG figures of ``flashbench profile``: the roofline and HBM bytes against N (log-log)."""
from __future__ import annotations

from pathlib import Path

from .ceilings import Ceilings
from .io_model import MODEL_TITLES
from .roofline import MEASURED, RooflinePoint


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_roofline(points: list[RooflinePoint], ceilings: Ceilings | None, path: str | Path, title: str = "") -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    pts = [p for p in points if p.intensity and p.tflops]
    xs = [p.intensity for p in pts]
    lo = min(xs + [1.0]) / 4
    hi = max(xs + [(ceilings.ridge_flop_per_byte if ceilings else 10.0)]) * 4
    if ceilings is not None:
        import numpy as np

        grid = np.logspace(np.log10(lo), np.log10(hi), 200)
        ax.plot(grid, [ceilings.attainable_tflops(x) for x in grid], color="black", lw=1.5,
                label=f"roof: {ceilings.matmul_tflops:.0f} TFLOP/s, {ceilings.copy_gbps / 1e3:.2f} TB/s")
        ax.axvline(ceilings.ridge_flop_per_byte, color="grey", ls=":", lw=1)
    for p in pts:
        marker = "o" if p.basis == MEASURED else "^"
        ax.scatter([p.intensity], [p.tflops], marker=marker, s=50, zorder=3, label=f"{p.backend} ({p.basis})")
        ax.annotate(p.backend, (p.intensity, p.tflops), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / HBM byte)")
    ax.set_ylabel("achieved TFLOP/s")
    ax.set_title(title + ("" if ceilings else " (no GPU ceilings: CPU run)"), fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def plot_traffic_sweep(rows: list[dict], path: str | Path, title: str = "") -> Path:
    """rows: {"backend", "n", "measured" (bytes or None), "standard", "fa1", "fa2", "minimum"}."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    ns = sorted({r["n"] for r in rows})
    first = {}
    for r in rows:
        first.setdefault(r["n"], r)
    styles = {"standard": ("tab:red", "--"), "fa1": ("tab:purple", "-."), "fa2": ("tab:green", ":"),
              "minimum": ("grey", "-")}
    for key, (color, ls) in styles.items():
        ys = [first[n].get(key) for n in ns]
        if all(y is not None for y in ys):
            label = "minimum (Q, K, V in, O out)" if key == "minimum" else f"model: {MODEL_TITLES[key]}"
            ax.plot(ns, ys, color=color, ls=ls, lw=1.2, label=label)
    for backend in dict.fromkeys(r["backend"] for r in rows):
        pts = sorted((r["n"], r["measured"]) for r in rows if r["backend"] == backend and r.get("measured"))
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", lw=2, label=f"{backend} (ncu, read + written)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length N")
    ax.set_ylabel("HBM bytes per call")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
