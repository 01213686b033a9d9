"""The refiner's output canvas: a square of cells, each one of the 10 colours or *outside the grid*.

A draft of any shape is placed at the top-left corner of an ``S x S`` canvas and every other cell
is :data:`OUTSIDE`; the refiner predicts a whole canvas, so it can grow, shrink or reshape a draft
(TRM and HRM pad ARC grids into a fixed 30x30 frame with end-of-grid markers the same way: Jolicoeur-
Martineau 2025, "Less is More: Recursive Reasoning with Tiny Networks"). The side ``S`` is the
task's largest side (every grid of the prompt and the draft), capped at ``max_side``, or a fixed
side. :func:`canvas_batch` serializes the canvas as the query output block (``draft_batch`` with
an ``S x S`` grid whose outside cells carry :data:`OUTSIDE_TOKEN`, a token only the refiner's
vocabulary has), and :func:`read_canvas` turns predicted canvas classes back into a grid.

Canvas values are classes ``0..9`` (colours) and ``10`` (:data:`OUTSIDE`); between recursive passes
a cell the refiner is not confident about may be written as ``11`` (:data:`UNKNOWN`, an input-only
class: Mask-Predict's re-masking of low-confidence tokens, Ghazvininejad et al. 2019).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from gridlm.datamodules.drafts import draft_batch, query_output_start
from gridlm.datamodules.tokens import MAX_SIDE, N_COLOURS, VOCAB_SIZE

OUTSIDE = N_COLOURS  # canvas class of a cell outside the grid
N_CANVAS_CLASSES = N_COLOURS + 1  # 10 colours + outside
OUTSIDE_TOKEN = VOCAB_SIZE  # the token the refiner adds to the data's vocabulary for outside cells
UNKNOWN = N_CANVAS_CLASSES  # input-only canvas class: a cell the previous pass did not commit to
UNKNOWN_TOKEN = VOCAB_SIZE + 1  # its token (never predicted)
N_ADDED_TOKENS = 2  # tokens the refiner's vocabulary adds: outside, unknown


def to_canvas(grid: Optional[np.ndarray], side: int) -> np.ndarray:
    """``(side, side)`` canvas classes with ``grid`` at the top-left corner (cropped if it is
    larger); ``None`` (no draft) is the empty canvas, every cell :data:`OUTSIDE`."""
    canvas = np.full((side, side), OUTSIDE, dtype=np.int64)
    if grid is not None:
        g = np.asarray(grid, dtype=np.int64)[:side, :side]
        canvas[: g.shape[0], : g.shape[1]] = g
    return canvas


def read_canvas(classes: np.ndarray, colours: np.ndarray) -> Optional[np.ndarray]:
    """The grid a predicted canvas holds: the top-left rectangle that reaches the last row and the
    last column with any inside cell. ``classes`` ``(S, S)`` are the argmax over all 11 classes,
    ``colours`` ``(S, S)`` the argmax over the 10 colours only; a cell inside the rectangle but
    predicted outside (a hole) takes its best colour. ``None`` when every cell is outside."""
    inside = classes != OUTSIDE  # (S, S)
    rows, cols = np.nonzero(inside.any(1))[0], np.nonzero(inside.any(0))[0]
    if len(rows) == 0:
        return None
    h, w = int(rows[-1]) + 1, int(cols[-1]) + 1
    return np.where(inside[:h, :w], classes[:h, :w], colours[:h, :w]).astype(np.int64)


def prompt_sides(batch: dict) -> list[int]:
    """Per row, the largest side of any grid before the query's OUTPUT marker (demonstration
    inputs and outputs, the query input), from the serializer's ``height``/``width`` metadata."""
    starts = query_output_start(batch)
    T = batch["tokens"].shape[1]
    before = torch.arange(T, device=batch["tokens"].device)[None, :] <= torch.tensor(starts, device=batch["tokens"].device)[:, None]
    side = torch.maximum(batch["height"], batch["width"]).masked_fill(~before, 0)  # (B, T)
    return side.max(1).values.clamp(min=1).tolist()


def canvas_sides(
    batch: dict, drafts: Sequence[Optional[np.ndarray]], max_side: int = MAX_SIDE, fixed: Optional[int] = None
) -> list[int]:
    """The canvas side of every row: ``fixed`` when given, else the largest side of the prompt's
    grids and the draft, capped at ``max_side``. The target is never read (it is unknown at
    inference): a target larger than every prompt grid and the draft cannot be produced."""
    if fixed is not None:
        return [fixed] * len(drafts)
    sides = prompt_sides(batch)
    return [min(max_side, max(s, *(np.shape(d) if d is not None else (1,)))) for s, d in zip(sides, drafts)]


def canvas_batch(batch: dict, canvases: Sequence[np.ndarray], order: str, row_end: bool = False) -> dict:
    """:func:`~gridlm.datamodules.drafts.draft_batch` with every row's query output replaced by its
    canvas (``(S, S)`` classes): colour cells carry their colour token, outside cells
    :data:`OUTSIDE_TOKEN`; the block announces ``S x S`` and ``cells`` marks all ``S*S`` cells."""
    out = draft_batch(batch, [np.asarray(c, dtype=np.int64) for c in canvases], order, row_end)
    outside = out["cells"] & (out["tokens"] == OUTSIDE)  # draft_batch wrote every cell's class as its token
    out["tokens"] = out["tokens"].masked_fill(outside, OUTSIDE_TOKEN)
    return out


def canvas_targets(inp: dict, canvases: Sequence[np.ndarray]) -> torch.Tensor:
    """The canvas class ``(N,)`` of every canvas cell of a :func:`canvas_batch` input, in
    ``inp["cells"]`` order (``canvases`` are ``(S, S)`` classes, e.g. ``to_canvas(target, S)``)."""
    out = []
    for b, canvas in enumerate(canvases):
        m = inp["cells"][b]
        t = torch.as_tensor(np.asarray(canvas), device=inp["tokens"].device)
        out.append(t[inp["row"][b, m], inp["col"][b, m]])
    return torch.cat(out)


def split_cells(values: torch.Tensor, inp: dict) -> list[torch.Tensor]:
    """``values`` ``(N, ...)`` in ``inp["cells"]`` order split per row, each reshaped to the row's
    canvas ``(S, S, ...)`` by the cells' true ``row``/``col``."""
    counts = inp["cells"].sum(1).tolist()
    out, start = [], 0
    for b, n in enumerate(counts):
        side = int(round(n**0.5))
        m = inp["cells"][b]
        idx = inp["row"][b, m] * side + inp["col"][b, m]  # (n,)
        v = values[start : start + n]
        grid = torch.empty_like(v)
        grid[idx] = v
        out.append(grid.reshape(side, side, *v.shape[1:]))
        start += n
    return out


def reread_canvas(logits: torch.Tensor, inp: dict) -> torch.Tensor:
    """The canvas classes ``(N,)`` (``inp["cells"]`` order) of the grid every row's predicted canvas
    holds, placed back on the canvas: ``to_canvas(read_canvas(classes, colours), S)`` for all rows
    at once, in tensors (:func:`read_canvas` and :func:`to_canvas` are its reference; a test checks
    they agree). ``logits`` ``(N, 11)`` are canvas logits in ``inp["cells"]`` order."""
    classes = logits.argmax(-1)  # (N,)
    colours = logits[:, :N_COLOURS].argmax(-1)  # (N,)
    cells = inp["cells"]
    row_of = cells.nonzero()[:, 0]  # (N,) the batch row of every cell
    r, c = inp["row"][cells], inp["col"][cells]  # (N,) canvas coordinates
    inside = classes != OUTSIDE
    zero = torch.zeros(cells.shape[0], dtype=torch.long, device=logits.device)
    h = zero.scatter_reduce(0, row_of, torch.where(inside, r + 1, 0), "amax")  # (B,) rows of the grid read
    w = zero.scatter_reduce(0, row_of, torch.where(inside, c + 1, 0), "amax")  # (B,) its columns
    in_grid = (r < h[row_of]) & (c < w[row_of])  # (N,)
    return torch.where(in_grid, torch.where(inside, classes, colours), OUTSIDE)


def with_canvas(inp: dict, classes: torch.Tensor, rows: Optional[torch.Tensor] = None) -> dict:
    """A :func:`canvas_batch` input whose canvas cells hold ``classes`` ``(N,)`` (``inp["cells"]``
    order; outside as :data:`OUTSIDE_TOKEN`): the next pass's input without rebuilding the layout,
    which only depends on the canvas side. ``rows`` ``(B,)`` bool: update only those rows. The
    class :data:`UNKNOWN` writes :data:`UNKNOWN_TOKEN` (a cell left open for the next pass)."""
    tokens = inp["tokens"].clone()
    old = tokens[inp["cells"]]  # (N,)
    new = torch.where(classes == OUTSIDE, OUTSIDE_TOKEN, torch.where(classes == UNKNOWN, UNKNOWN_TOKEN, classes))
    if rows is not None:
        new = torch.where(rows[inp["cells"].nonzero()[:, 0]], new, old)
    tokens[inp["cells"]] = new
    return {**inp, "tokens": tokens}


def canvas_exact(classes: torch.Tensor, targets: torch.Tensor, inp: dict, fits: torch.Tensor) -> torch.Tensor:
    """``(B,)`` bool: the row's canvas classes ``(N,)`` equal its target canvas ``(N,)`` in every cell
    and the target fits the canvas (so the grid read is exactly the target)."""
    row_of = inp["cells"].nonzero()[:, 0]  # (N,)
    wrong = torch.zeros(inp["cells"].shape[0], device=classes.device).index_add_(0, row_of, (classes != targets).float())
    return (wrong == 0) & fits


def uncommitted(classes: torch.Tensor, logits: torch.Tensor, threshold: Optional[float]) -> torch.Tensor:
    """``classes`` ``(N,)`` with every cell whose predicted probability (softmax of ``logits``
    ``(N, 11)``, its most likely class) is below ``threshold`` set to :data:`UNKNOWN`, so the next
    pass re-predicts it with the confident cells as context (Mask-Predict). None: all committed."""
    if threshold is None:
        return classes
    confident = logits.float().softmax(-1).amax(-1) >= threshold  # (N,)
    return torch.where(confident, classes, UNKNOWN)
