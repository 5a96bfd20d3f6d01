"""The one plotting style of flashbench's figures (``flashbench plot``, ``run --plot``, ``profile --plot``).

Figures are drawn on matplotlib's Agg canvas directly: no pyplot, no GUI, no global state (pyplot
would switch the process-wide backend and keep every figure alive until closed). A backend keeps
its colour across the panels of a figure.
"""
from __future__ import annotations

from pathlib import Path

DPI = 110
TITLE_SIZE = 10
GRID_ALPHA = 0.3


class PlotError(Exception):
    """Figures cannot be drawn (nothing to plot) or written (an unwritable place): exit code 2."""


class PlotDependencyError(PlotError):
    """matplotlib is not installed (exit code 3)."""


def require_matplotlib():
    """matplotlib's Figure and Agg canvas classes; :class:`PlotDependencyError` without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotDependencyError("matplotlib is not installed: pip install 'flashbench[plot]' "
                                  "(or pip install matplotlib)") from None
    return Figure, FigureCanvasAgg


def new_figure(figsize: tuple[float, float]):
    """An empty figure on its own Agg canvas, laid out by matplotlib's constrained layout."""
    Figure, FigureCanvasAgg = require_matplotlib()
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def backend_colors(backends) -> dict[str, str]:
    """One colour per backend, in order of first appearance (matplotlib's ten-colour cycle)."""
    return {b: f"C{i % 10}" for i, b in enumerate(dict.fromkeys(backends))}


def style_axes(ax, title: str) -> None:
    ax.set_title(title, fontsize=TITLE_SIZE)
    ax.grid(True, which="both", alpha=GRID_ALPHA)


def save_figure(fig, path: str | Path) -> Path:
    """Write ``fig`` as PNG; :class:`PlotError` naming the path and the reason when it cannot be written
    (a directory that is a file, no permission, a read-only disk)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI)
    except OSError as e:
        culprit = f" ({e.filename})" if e.filename and str(e.filename) != str(path) else ""
        raise PlotError(f"cannot write {path}: {e.strerror or e}{culprit}") from None
    return path
