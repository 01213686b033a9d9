"""Pictures and tables of the documentation site, drawn from the code they describe.

- :func:`order_paths_figure`: the path of every serialization order (``ORDERS``) over one grid,
  from :func:`gridlm.datamodules.orders.cell_order`;
- :func:`encoding_similarity`, :func:`encoding_similarity_figure`: for every registered positional
  encoding (``ENCODINGS``), how a reference cell relates to every other cell of its grid, computed
  by the encoding module itself on positions made by the real serializer;
- :func:`token_table_markdown`: the token/metadata table of a small example, from
  :func:`gridlm.datamodules.serialize.serialize_example`;
- :func:`encoding_table_markdown`: every registered encoding with its slot, class and the
  definition its docstring gives.

A new order or encoding appears in the pictures without editing this file. The docs build calls
these through ``gridlm.experiments.docs_site`` (the MkDocs hooks).
"""

from __future__ import annotations

import inspect
import io
import math
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from gridlm.datamodules.orders import ORDERS, cell_order  # noqa: E402
from gridlm.datamodules.serialize import serialize_example  # noqa: E402
from gridlm.datamodules.tasks import Pair  # noqa: E402
from gridlm.datamodules.tokens import ROLE_NAMES, token_name  # noqa: E402
from gridlm.modules.encodings import ENCODINGS, Positions, apply_rotary  # noqa: E402

# sizes of the pictures: small enough to read, large enough for the quadtree's blocks to show
ORDER_SHAPE = (6, 8)  # (h, w) of the grid whose visiting paths are drawn
SIMILARITY_SHAPE = (16, 16)  # (h, w) of the grid of the similarity maps
SIMILARITY_REF = (5, 6)  # the reference cell (row, col)
SIMILARITY_MODEL = {"d_model": 64, "n_heads": 4, "max_seq_len": 512}  # head dim 16 (rope_2d needs % 4)


def _png(fig, dpi: int = 80) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def order_paths_figure(h: int = ORDER_SHAPE[0], w: int = ORDER_SHAPE[1]) -> bytes:
    """PNG: one panel per order, the path through the cells of an ``h`` x ``w`` grid (green
    start, red end, each cell numbered by its visiting index)."""
    names = list(ORDERS)
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.2 * h / w + 0.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        cells = cell_order(name, h, w)  # (h*w, 2) [row, col] in visiting order
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)  # row 0 at the top, as grids are drawn
        ax.set_aspect("equal")
        ax.set_xticks(range(w))
        ax.set_yticks(range(h))
        ax.tick_params(labelsize=7)
        ax.grid(False)
        for r in range(h + 1):
            ax.axhline(r - 0.5, color="0.85", lw=0.8)
        for c in range(w + 1):
            ax.axvline(c - 0.5, color="0.85", lw=0.8)
        ys, xs = cells[:, 0], cells[:, 1]
        ax.plot(xs, ys, color="tab:blue", lw=1.8, zorder=2)
        for i, (y, x) in enumerate(cells):
            ax.text(x, y - 0.28, str(i), fontsize=6, ha="center", va="center", color="0.35")
        ax.plot(xs[:1], ys[:1], "o", color="tab:green", ms=7, zorder=3)
        ax.plot(xs[-1:], ys[-1:], "s", color="tab:red", ms=6, zorder=3)
        ax.set_title(name, fontsize=11)
    fig.suptitle(f"serialization orders on a {h}x{w} grid (start green, end red)", fontsize=11)
    return _png(fig, dpi=100)


def _single_grid_positions(h: int, w: int) -> tuple[Positions, np.ndarray]:
    """Positions ``(1, T)`` of a real serialized example whose query input is an ``h`` x ``w``
    grid (row-major order), and the token index of each of its cells, ``(h, w)``."""
    pair = Pair(input=np.zeros((h, w), dtype=np.int64), output=np.zeros((1, 1), dtype=np.int64))
    seq = serialize_example([], pair, order="row_major")
    p = Positions(
        *(torch.as_tensor(a)[None] for a in (np.arange(len(seq)), seq.row, seq.col, seq.grid, seq.height, seq.width))
    )
    index = np.full((h, w), -1, dtype=np.int64)
    cells = np.nonzero((seq.grid == 0) & (seq.row >= 0))[0]
    index[seq.row[cells], seq.col[cells]] = cells
    return p, index


@torch.no_grad()
def encoding_similarity(name: str, h: int = SIMILARITY_SHAPE[0], w: int = SIMILARITY_SHAPE[1], ref: tuple[int, int] = SIMILARITY_REF, seed: int = 0) -> np.ndarray:
    """``(h, w)`` map of how the encoding ``name`` relates cell ``ref`` to every cell of its grid.

    - additive: cosine similarity of the two cells' encoding vectors (0 where a vector is 0);
    - rotary: ``<R_ref q, R_cell q> / |q|^2`` for ``q`` all ones: the attention score the
      rotation alone leaves between equal queries and keys (1 at ``ref``);
    - bias: the attention bias from ``ref`` (query) to each cell (key) in head 0.

    Learned encodings are shown at their (seeded) initialisation: the structure their
    parametrisation imposes (shared rows and columns, shared quadrants), not what training learns."""
    cls = ENCODINGS[name]
    torch.manual_seed(seed)
    enc = cls(**SIMILARITY_MODEL).eval()
    p, index = _single_grid_positions(h, w)
    flat = torch.as_tensor(index.reshape(-1))  # (h*w,) token index of each cell, row-major
    i_ref = int(index[ref])
    if cls.slot == "additive":
        v = enc(p).expand(1, p.pos.shape[1], SIMILARITY_MODEL["d_model"])[0]  # (T, d), 'none' broadcasts 0
        norms = v.norm(dim=-1)
        sim = (v[flat] @ v[i_ref]) / (norms[flat] * norms[i_ref]).clamp(min=1e-12)
    elif cls.slot == "rotary":
        cos, sin = enc(p)  # (1, 1, T, hs) each
        q = apply_rotary(torch.ones_like(cos), cos, sin)[0, 0]  # (T, hs)
        sim = (q[flat] @ q[i_ref]) / q.shape[-1]
    elif cls.slot == "bias":
        sim = enc(p, p)[0, 0, i_ref, flat]  # head 0, query ref, keys = cells
    else:
        raise ValueError(f"encoding {name!r} has slot {cls.slot!r}; expected additive, rotary or bias")
    return sim.reshape(h, w).numpy()


_QUANTITY = {"additive": "cosine similarity", "rotary": "rotary score", "bias": "attention bias (head 0)"}


def encoding_similarity_figure(h: int = SIMILARITY_SHAPE[0], w: int = SIMILARITY_SHAPE[1], ref: tuple[int, int] = SIMILARITY_REF) -> bytes:
    """PNG: one panel per registered encoding, :func:`encoding_similarity` to the boxed cell."""
    names = list(ENCODINGS)
    cols = 3
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.5 * rows), squeeze=False)
    for ax in axes.flat[len(names) :]:
        ax.axis("off")
    for ax, name in zip(axes.flat, names):
        sim = encoding_similarity(name, h, w, ref)
        im = ax.imshow(sim, cmap="viridis")
        ax.add_patch(plt.Rectangle((ref[1] - 0.5, ref[0] - 0.5), 1, 1, fill=False, ec="red", lw=1.5))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{name}\n{_QUANTITY[ENCODINGS[name].slot]}", fontsize=10)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03).ax.tick_params(labelsize=7)
        if not np.any(sim):
            ax.text(w / 2 - 0.5, h - 2, "no positional signal", ha="center", fontsize=9, color="white")
    fig.suptitle(f"each encoding seen from cell {ref} of a {h}x{w} grid (row-major sequence positions)", fontsize=11)
    fig.tight_layout()
    return _png(fig)


def token_table_markdown() -> str:
    """The token and metadata table of the example ``[[1, 2]] -> [[2], [1]]``, query
    ``[[3, 0]] -> [[0], [3]]`` (row-major, target policy ``all_outputs``), as Markdown."""
    context = [Pair(np.array([[1, 2]]), np.array([[2], [1]]))]
    query = Pair(np.array([[3, 0]]), np.array([[0], [3]]))
    seq = serialize_example(context, query, order="row_major", target_policy="all_outputs")
    lines = ["| pos | token | row | col | grid | height | width | role | target |", "|---|---|---|---|---|---|---|---|---|"]
    for i in range(len(seq)):
        tok = token_name(int(seq.tokens[i]))
        lines.append(
            f"| {i} | `{tok}` | {seq.row[i]} | {seq.col[i]} | {seq.grid[i]} | {seq.height[i]} | {seq.width[i]} "
            f"| {ROLE_NAMES[seq.role[i]]} | {int(seq.target_mask[i])} |"
        )
    return "\n".join(lines)


def encoding_table_markdown() -> str:
    """Markdown table of ``ENCODINGS``: name, slot, class (linked to the API reference) and the
    first paragraph of the class docstring (its definition), in registry order."""
    lines = ["| name | slot | definition | class |", "|---|---|---|---|"]
    for name, cls in ENCODINGS.items():
        doc = (inspect.getdoc(cls) or "").split("\n\n")[0]
        doc = " ".join(doc.split())  # one line
        doc = re.sub(rf"^``{re.escape(name)}``:\s*", "", doc)  # the name is the first column
        doc = re.sub(r":\w+:`~?([^`]+)`", r"``\1``", doc)  # Sphinx roles -> code
        # a '|' outside a code span would split the table row (inside one, Markdown keeps it)
        doc = "".join(part if part.startswith("``") else part.replace("|", "\\|") for part in re.split(r"(``.*?``)", doc))
        lines.append(f"| `{name}` | {cls.slot} | {doc} | [`{cls.__name__}`][{cls.__module__}.{cls.__qualname__}] |")
    return "\n".join(lines)
