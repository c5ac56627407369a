"""What the report's figures share: colours, figures with margins fixed in inches, one
panel per layer, event markers, and matplotlib itself (imported on first use)."""

from __future__ import annotations

import math
from typing import Any

# Colour of each structural operation, in the figures that mark events.
OP_COLORS = {
    "add_head": "#2a9d8f",
    "remove_head": "#e63946",
    "fade_head": "#f4a261",
    "set_loops": "#7b2cbf",
    "end_fade": "#c77dff",
}
HEAD_COLOR = "#8ecae6"
LOOPED_COLOR = "#fb8500"
BLOCK_COLOR = "#94a3b8"


def figure(
    mpl: Any,
    width: float,
    height: float,
    *,
    rows: int = 1,
    cols: int = 1,
    left: float = 1.0,
    right: float = 0.3,
    top: float = 0.45,
    bottom: float = 0.55,
    **subplots: Any,
) -> tuple[Any, list[Any]]:
    """A figure of ``rows x cols`` axes, its margins fixed in inches: a layout engine
    would cost as much time as all the drawing, at the end of every run."""
    fig = mpl.figure.Figure(figsize=(width, height))
    grid = fig.subplots(rows, cols, squeeze=False, **subplots)
    fig.subplots_adjust(
        left=left / width,
        right=1 - right / width,
        top=1 - top / height,
        bottom=bottom / height,
        wspace=0.2,
        hspace=0.45,
    )
    return fig, list(grid.flat)


def layer_grid(mpl: Any, n: int) -> tuple[Any, list[Any]]:
    """One panel per layer, three to a row."""
    cols = min(3, max(1, n))
    rows = math.ceil(n / cols)
    fig, axes = figure(mpl, 11, 0.9 + 2.6 * rows, rows=rows, cols=cols, top=0.7, sharex=True)
    for ax in axes[n:]:
        ax.set_axis_off()
    return fig, axes[:n]


def label_grid(axes: list[Any], n: int, xlabel: str, ylabel: str) -> None:
    """Axis labels on the left column and the bottom row of a :func:`layer_grid`."""
    cols = min(3, max(1, n))
    for i, ax in enumerate(axes):
        if i % cols == 0:
            ax.set_ylabel(ylabel)
        if i >= n - cols:
            ax.set_xlabel(xlabel)
            ax.xaxis.set_tick_params(labelbottom=True)


def layer_colors(mpl: Any, n: int) -> list[Any]:
    """One colour per layer of ``n``."""
    cmap = mpl.colormaps["tab10" if n <= 10 else "viridis"]
    return [cmap(i if n <= 10 else i / max(1, n - 1)) for i in range(n)]


def mark_events(ax: Any, events: list[dict[str, Any]]) -> None:
    """Vertical lines at the steps of structural changes, one legend entry per operation."""
    seen: set[str] = set()
    for step, op in sorted({(e["step"], e["op"]) for e in events}):
        ax.axvline(
            step,
            color=OP_COLORS.get(op, "grey"),
            lw=0.8,
            alpha=0.6,
            ls=":" if op == "end_fade" else "-",
            label=None if op in seen else op,
        )
        seen.add(op)


def load_matplotlib() -> Any:
    """matplotlib with the figure and patch modules loaded (imported on first use: it takes
    a good part of a second; figures are made without pyplot, whose backend is the user's)."""
    import matplotlib
    import matplotlib.figure
    import matplotlib.patches

    return matplotlib
