"""Stand-in networks for decoding tests whose right answer is known cell by cell.

A :class:`Teacher` knows the answer to every prompt: ``rule(query input)``. At every position
inside the query's output block it prefers the token the serializer writes there for that
answer (shape tokens, each cell's colour in the serialization order, ROW_ENDs, GRID_END), so a
correct decoder returns exactly ``rule(query)``, and a decoder that fills cells in another order,
or hands one row's decode to another row, does not. The answer grids are chosen with many
distinct colours, so a mixed-up cell shows.

The teacher reads only the tokens it was fed (at their sequence indices ``positions.pos``),
never the decoder's row/column metadata, and it records every fed token's metadata in ``fed``
so a test can compare it with what the serializer writes. It runs behind a real tiny
:class:`Transformer` (the real forward still runs, so whatever cache the decoder keeps stays
consistent) and replaces only the logits.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest
import torch
from torch import Tensor

from gridlm.datamodules.serialize import deserialize, serialize_example
from gridlm.datamodules.tasks import Pair
from gridlm.datamodules.tokens import OUTPUT, PAD
from gridlm.modules.encodings import Positions
from gridlm.modules.transformer import StaticKVCache, Transformer, TransformerConfig

Rule = Callable[[np.ndarray], "np.ndarray | None"]  # query input -> answer (None: no preference)


class Teacher:
    """Logits that prefer the serializer's token stream of ``rule(query input)`` by ``margin``."""

    def __init__(self, rule: Rule, order: str, row_end: bool = False, margin: float = 10.0) -> None:
        self.rule, self.order, self.row_end, self.margin = rule, order, row_end, margin
        self.fed: dict[int, dict[int, tuple]] = {}  # row -> sequence index -> (token, row, col, grid, height, width)
        self._answers: dict[tuple, list[int] | None] = {}  # prompt -> its output block after OUTPUT

    def answer_block(self, prompt: tuple[int, ...]) -> list[int] | None:
        """``[HEIGHT, WIDTH, cells..., GRID_END]`` of ``rule(query)`` for a prompt ending with OUTPUT."""
        if prompt not in self._answers:
            try:
                grids = deserialize(np.array(prompt), self.order, self.row_end)
            except ValueError:
                grids = []
            block = None
            answer = self.rule(grids[-1][1]) if len(grids) % 2 == 1 else None  # demonstrations, query input
            if answer is not None:
                toks = serialize_example([], Pair(grids[-1][1], answer), order=self.order, row_end=self.row_end).tokens
                start = int(np.flatnonzero(toks == OUTPUT)[-1]) + 1
                block = [int(t) for t in toks[start:]]
            self._answers[prompt] = block
        return self._answers[prompt]

    def next_token(self, prefix: list[int], last_output: int) -> int | None:
        """The preferred token after ``prefix`` (the PAD-free tokens from index 0, its last OUTPUT
        marker at ``last_output``, -1 for none), or None."""
        if last_output < 0:
            return None
        block = self.answer_block(tuple(prefix[: last_output + 1]))
        k = len(prefix) - last_output - 1  # tokens of the output block already there
        return block[k] if block is not None and k < len(block) else None

    def _finished(self, row: int) -> bool:
        """Whether ``row`` has chosen its whole answer block (its last token, chosen from the
        previous logits, is never fed): the rows a decoder drops when it compacts its batch."""
        fed = sorted((i, v) for i, v in self.fed[row].items() if i <= self._last[row])  # not stale prompt padding
        prefix = [v[0] for _, v in fed if v[0] != PAD]
        outs = [i for i, t in enumerate(prefix) if t == OUTPUT]
        block = self.answer_block(tuple(prefix[: outs[-1] + 1])) if outs else None
        return block is not None and len(prefix) - outs[-1] >= len(block)

    def _batch_rows(self, tokens: Tensor, first_row: int = 0) -> list[int]:
        """Batch index -> row. A prompt forward (several tokens) is rows ``first_row..`` of the
        decode batch (the engine prefills a batch's rows in groups of similar length, each into
        its rows of the cache; 0 starts a new batch); a one-token step with fewer rows than
        before follows a compaction, which keeps the unfinished rows in their order (the engine
        drops finished rows mid-decode)."""
        B, T = tokens.shape
        if T > 1:
            self._rows = getattr(self, "_rows", [])[:first_row] if first_row else []
            self._rows += list(range(first_row, first_row + B))
            return self._rows[first_row:]
        if not getattr(self, "_rows", None):
            self._rows = list(range(B))
        elif B < len(self._rows):
            live = [r for r in self._rows if not self._finished(r)]
            if len(live) != B:
                raise AssertionError(f"teacher: {B} rows after a compaction, but {len(live)} unfinished rows {live}")
            self._rows = live
        return self._rows

    def logits(self, tokens: Tensor, positions: Positions, like: Tensor, cache=None) -> Tensor:
        """Record the fed tokens, then ``(B, T, V)`` logits: ``margin`` on the preferred token.
        ``cache``: the decoder's cache, whose rows a prefill writes (see :func:`first_cache_row`)."""
        out = torch.zeros_like(like)
        p = positions
        fields = [None if f is None else f.tolist() for f in (tokens, p.row, p.col, p.grid, p.height, p.width)]  # each (B, T)
        pos = positions.pos.tolist()
        rows = self._batch_rows(tokens, first_cache_row(cache))
        self._last = getattr(self, "_last", {})
        for b in range(tokens.shape[0]):
            self._last[rows[b]] = max(pos[b])  # the newest token fed (after a prompt forward: its padding too)
            seen = self.fed.setdefault(rows[b], {})
            wanted = {}  # sequence index -> column of this call
            for t, i in enumerate(pos[b]):
                seen[i] = tuple(None if f is None else f[b][t] for f in fields)
                wanted[i] = t
            prefix, last_output = [], -1  # PAD-free tokens through index i, and the last OUTPUT among them
            for i in range(max(wanted) + 1):
                if i in seen and seen[i][0] != PAD:
                    prefix.append(seen[i][0])
                    last_output = len(prefix) - 1 if seen[i][0] == OUTPUT else last_output
                if i in wanted and (nxt := self.next_token(prefix, last_output)) is not None:
                    out[b, wanted[i], nxt] = self.margin
        return out


def first_cache_row(cache) -> int:
    """The batch row at which a static KV cache (or a view of some of its rows) starts: the
    engine prefills rows ``[a, b)`` of a batch through a view of those rows of the cache."""
    if not isinstance(cache, StaticKVCache):
        return 0
    k = cache.k[0]
    return k.storage_offset() // k.stride(0)


class TeacherTransformer(Transformer):
    """A real tiny Transformer whose logits are the teacher's."""

    def __init__(self, teacher: Teacher, max_seq_len: int = 1024) -> None:
        super().__init__(TransformerConfig(max_seq_len=max_seq_len, d_model=16, n_layers=1, n_heads=2))
        self.teacher = teacher
        self.eval()

    def forward(self, tokens, positions, cache=None, key_padding_mask=None):
        real = super().forward(tokens, positions, cache, key_padding_mask)
        return self.teacher.logits(tokens, positions, real, cache)


def install_teacher(monkeypatch: pytest.MonkeyPatch, teacher: Teacher) -> None:
    """Every Transformer (e.g. the one a checkpoint loads into) answers with ``teacher``."""
    real = Transformer.forward

    def forward(self, tokens, positions, cache=None, key_padding_mask=None):
        return teacher.logits(tokens, positions, real(self, tokens, positions, cache, key_padding_mask), cache)

    monkeypatch.setattr(Transformer, "forward", forward)


def colourful(h: int, w: int, shift: int = 0) -> np.ndarray:
    """An h x w grid whose cells run through the 10 colours in row-major order (from ``shift``):
    up to 10 cells all differ, and no order but row-major reads them as 0, 1, 2, ..."""
    return (np.arange(h * w).reshape(h, w) + shift) % 10
