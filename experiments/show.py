"""``gridlm show``: pictures of ARC tasks and predictions in the standard ARC palette.

Everything draws on plain ``matplotlib.figure.Figure`` objects with an Agg canvas: no screen,
no pyplot global state, so it is safe inside training processes and tests.

* :func:`render_grid` draws one grid (cells in the ARC colours, thin grid lines, a title).
* :func:`render_task` draws a task: one row per demonstration pair (input -> output), then
  per shown test pair its input, its target (when known) and any predicted attempts, each
  attempt labelled correct or wrong.
* :func:`grids_to_image` renders titled grids side by side into an ``(H, W, 3)`` uint8 array
  (for wandb image panels: input, target, prediction); ``None`` draws an "invalid" box.

Usage::

    gridlm show --source arc1 --task 007bbfb7 --out task.png
    gridlm show --source arc1:eval --task 00576224 --submission sub.json --test-index 0 --out pred.png
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from gridlm.datamodules.tasks import ON_INVALID, Task, load_tasks

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


def _attempts_from_submission(path: str, task: Task, test_index: int) -> list[np.ndarray | None]:
    """The two attempts for one test pair of ``task``; a missing task or entry gives ``None``s."""
    from gridlm.experiments.score import ATTEMPT_KEYS, as_grid, load_submission

    entries = load_submission(path).get(task.task_id)
    if not isinstance(entries, list) or test_index >= len(entries) or not isinstance(entries[test_index], dict):
        print(f"gridlm show: note: {path} has no entry for {task.task_id} test {test_index}; attempts drawn as invalid")
        return [None] * len(ATTEMPT_KEYS)
    return [as_grid(entries[test_index].get(key)) for key in ATTEMPT_KEYS]


def show(source: str, task_id: str, out: str, submission: str | None = None, test_index: int | None = None, on_invalid: str = "raise") -> Path:
    """Render task ``task_id`` of ``source`` (with a submission's attempts) to ``out``."""
    tasks = load_tasks(source, on_invalid=on_invalid)
    task = next((t for t in tasks if t.task_id == task_id), None)
    if task is None:
        raise ValueError(f"task {task_id!r} is not in source {source!r} ({len(tasks)} tasks)")
    attempts = None
    if submission is not None:
        test_index = 0 if test_index is None else test_index
        if not 0 <= test_index < len(task.test):
            raise ValueError(f"task {task_id}: --test-index {test_index} is out of range, it has {len(task.test)} test pairs")
        attempts = _attempts_from_submission(submission, task, test_index)
    render_task(task, test_index=test_index, attempts=attempts, out=out)
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    """``gridlm show``: write a picture of one task (and optionally a submission's attempts)."""
    ap = argparse.ArgumentParser(prog="gridlm show", description=__doc__.splitlines()[0].split(": ", 1)[1])
    ap.add_argument("--source", default="arc1", help="task source, e.g. arc1, arc1:eval, or a directory of ARC JSON files")
    ap.add_argument("--task", required=True, help="task id, e.g. 007bbfb7")
    ap.add_argument("--submission", default=None, help="submission JSON whose attempts to draw next to the target")
    ap.add_argument("--test-index", type=int, default=None, help="which test pair (default: all; 0 with --submission)")
    ap.add_argument("--out", required=True, help="image file to write, e.g. task.png")
    ap.add_argument("--on-invalid", choices=ON_INVALID, default="raise", help="invalid task files: fail, or skip with a warning")
    args = ap.parse_args(argv)
    try:
        path = show(args.source, args.task, args.out, args.submission, args.test_index, args.on_invalid)
    except (ValueError, OSError) as err:
        if os.environ.get("GRIDLM_DEBUG"):
            raise
        print(f"gridlm show: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(f"gridlm show: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
