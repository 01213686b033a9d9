"""Pictures of ARC grids and tasks in the standard ARC palette (used by ``gridlm show``, the demo,
and the wandb callback's prediction panels, so it sits below all of them).

Everything draws on plain ``matplotlib.figure.Figure`` objects with an Agg canvas: no screen,
no pyplot global state, so it is safe inside training processes and tests.

* :func:`render_grid` draws one grid (cells in the ARC colours, thin grid lines, a title).
* :func:`render_task` draws a task: one row per demonstration pair (input -> output), then
  per shown test pair its input, its target (when known) and any predicted attempts, each
  attempt labelled correct or wrong.
* :func:`grids_to_image` renders titled grids side by side into an ``(H, W, 3)`` uint8 array
  (for wandb image panels: input, target, prediction); ``None`` draws an "invalid" box.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from gridlm.datamodules.tasks import Task

# The ARC palette, colour index -> hex (as on arcprize.org and in the original ARC testing interface).
ARC_COLOURS: tuple[str, ...] = (
    "#000000",  # 0 black
    "#0074D9",  # 1 blue
    "#FF4136",  # 2 red
    "#2ECC40",  # 3 green
    "#FFDC00",  # 4 yellow
    "#AAAAAA",  # 5 grey
    "#F012BE",  # 6 magenta
    "#FF851B",  # 7 orange
    "#7FDBFF",  # 8 sky blue
    "#870C25",  # 9 maroon
)
ARC_CMAP = ListedColormap(ARC_COLOURS, name="arc")
GRID_LINE = "#555555"  # cell borders: visible on black and on every colour
CELL_INCHES = 0.28  # figure size per cell of the largest grid in a panel (30x30 -> 8.4 in)
DPI = 100


def _new_figure(width: float, height: float, dpi: int = DPI) -> Figure:
    """A figure with an Agg canvas attached (``savefig``/``draw`` work without pyplot)."""
    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def render_grid(ax, grid: np.ndarray | None, title: str | None = None) -> None:
    """Draw ``grid`` (2D ints 0..9) on ``ax`` in the ARC palette with grid lines.

    ``None`` (an invalid or missing prediction) draws an empty framed box labelled "invalid".
    The title gets the grid shape appended, e.g. ``"input 3x4"``.
    """
    ax.set_xticks([])
    ax.set_yticks([])
    if grid is None:
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        ax.text(0.5, 0.5, "invalid", ha="center", va="center", color="#888888", fontsize=9)
        for spine in ax.spines.values():
            spine.set_edgecolor("#888888")
        if title:
            ax.set_title(title, fontsize=8)
        return
    grid = np.asarray(grid)
    if grid.ndim != 2:
        raise ValueError(f"render_grid: expected a 2-D grid, got shape {grid.shape}")
    h, w = grid.shape
    ax.imshow(grid, cmap=ARC_CMAP, vmin=-0.5, vmax=len(ARC_COLOURS) - 0.5, interpolation="nearest")
    ax.set_xticks(np.arange(-0.5, w, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, h, 1), minor=True)
    ax.tick_params(which="both", length=0, labelbottom=False, labelleft=False)
    ax.grid(which="minor", color=GRID_LINE, linewidth=0.5 if max(h, w) > 15 else 1.0)
    for spine in ax.spines.values():
        spine.set_edgecolor(GRID_LINE)
    if title is not None:
        ax.set_title(f"{title} {h}x{w}" if title else f"{h}x{w}", fontsize=8)


def _panel_size(grids: Sequence[np.ndarray | None]) -> float:
    """Inches for one panel: grows with the largest grid, within [1.6, 4]."""
    side = max((max(np.shape(g)) for g in grids if g is not None), default=3)
    return float(np.clip(side * CELL_INCHES, 1.6, 4.0))


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return a is not None and b is not None and a.shape == b.shape and np.array_equal(a, b)


def render_task(
    task: Task,
    test_index: int | None = None,
    attempts: Sequence[np.ndarray | None] | None = None,
    out: str | os.PathLike | None = None,
) -> Figure:
    """A figure of ``task``: demonstration pairs, then test input, target (if known), attempts.

    ``test_index`` picks one test pair (default: all of them). ``attempts`` are predictions for
    that test pair (``None`` = invalid output), labelled "attempt k" plus "correct"/"wrong" when
    the target is known; they need ``test_index`` unless the task has a single test pair.
    ``out`` saves the figure as an image (PNG by extension) and creates its folder.
    """
    n_test = len(task.test)
    if test_index is not None and not 0 <= test_index < n_test:
        raise ValueError(f"task {task.task_id}: test index {test_index} is out of range, it has {n_test} test pairs (0..{n_test - 1})")
    if attempts is not None and test_index is None:
        if n_test != 1:
            raise ValueError(f"task {task.task_id}: attempts given but the task has {n_test} test pairs; pass test_index")
        test_index = 0
    attempts = [None if a is None else np.asarray(a) for a in (attempts or [])]
    tests = range(n_test) if test_index is None else [test_index]

    rows: list[list[tuple[str, np.ndarray | None]]] = []
    for i, pair in enumerate(task.train):
        rows.append([(f"demo {i} input", pair.input), (f"demo {i} output", pair.output)])
    for i in tests:
        pair = task.test[i]
        row = [(f"test {i} input", pair.input)]
        if pair.output is not None:
            row.append((f"test {i} target", pair.output))
        for k, a in enumerate(attempts, start=1):
            verdict = "" if pair.output is None else (" correct" if _same(a, pair.output) else " wrong")
            row.append((f"attempt {k}{verdict}", a))
        rows.append(row)

    n_cols = max(len(r) for r in rows)
    panel = _panel_size([g for r in rows for _, g in r])
    fig = _new_figure(panel * n_cols, panel * len(rows) + 0.4)
    fig.suptitle(f"{task.task_id} ({task.source})" if task.source else task.task_id, fontsize=10)
    axes = fig.subplots(len(rows), n_cols, squeeze=False)
    for r, row in enumerate(rows):
        for c in range(n_cols):
            if c < len(row):
                title, grid = row[c]
                render_grid(axes[r][c], grid, title)
            else:
                axes[r][c].set_axis_off()
    fig.tight_layout()
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out)
    return fig


def figure_to_array(fig: Figure) -> np.ndarray:
    """Rasterize ``fig`` to an ``(H, W, 3)`` uint8 RGB array."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()  # (H, W, 3)


def grids_to_image(grids: Sequence[tuple[str, np.ndarray | None]], panel_inches: float = 2.0, dpi: int = DPI) -> np.ndarray:
    """Titled grids side by side as an ``(H, W, 3)`` uint8 image, e.g. for a wandb image panel.

    ``grids`` is ``[(title, grid), ...]`` such as ``[("input", x), ("target", y), ("prediction", p)]``;
    a ``None`` grid (missing or invalid prediction) is drawn as an empty box labelled "invalid".
    The image is ``panel_inches * dpi`` pixels high and that times ``len(grids)`` wide.
    """
    if not grids:
        raise ValueError("grids_to_image: no grids given, expected [(title, grid), ...]")
    fig = _new_figure(panel_inches * len(grids), panel_inches, dpi=dpi)
    axes = fig.subplots(1, len(grids), squeeze=False)[0]
    for ax, (title, grid) in zip(axes, grids):
        render_grid(ax, None if grid is None else np.asarray(grid), title)
    fig.tight_layout()
    return figure_to_array(fig)
