"""The decode engine: ragged prompt batches, a static KV cache, one compiled step.

Decoding a grid is hundreds of one-token forwards of a small model, so per-operation overhead,
not arithmetic, sets its speed. The engine follows gpt-fast (pytorch-labs/gpt-fast: a static,
preallocated KV cache and one ``torch.compile``-d decode step whose shapes never change) and
adds what grids need:

- **ragged prompts**: a batch of prompts of different lengths is right-padded and prefilled in
  one forward; each row then writes its tokens at its own cache slot (``slot == pos``: the
  prompt length plus the tokens generated), so every token keeps the sequence index and
  metadata the serializer would give it (:class:`gridlm.modules.transformer.StaticKVCache`);
- **the grammar as tensors** (:mod:`gridlm.modules.inference.grammar`): the allowed tokens and the
  metadata of every row come from table lookups inside the compiled step;
- **one host sync** per batch: after the shape tokens every row's length is known, so the loop
  runs exactly as many steps as the longest grid needs, and drops finished rows and unused
  cache slots on the way (compaction) without recompiling (the batch and cache dimensions are
  dynamic).

``torch.compile`` uses inductor on CPU; where CUDA is present the step is compiled with
``mode="reduce-overhead"`` (CUDA graphs; the cache tensors are marked static addresses). That
path cannot be tested on the CPU-only machines this project is developed on. When compilation
is unavailable or fails, the same step runs eagerly, after a one-line warning. The one-at-a-time
eager decoder in :mod:`gridlm.modules.decoding` stays the reference the engine must match token
for token (``tests/test_engine.py``).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Callable, Literal, Sequence

import numpy as np
import torch
from torch import Tensor

from gridlm.datamodules.orders import cell_order
from gridlm.datamodules.tokens import MAX_SIDE, N_COLOURS
from gridlm.modules.decoding import Decoded
from gridlm.modules.encodings import Positions
from gridlm.modules.inference.grammar import Rows, State, body_length, choose, initial_state, plan_table, tokens_total
from gridlm.modules.transformer import StaticKVCache, Transformer


CompileMode = Literal["auto", "always", "never"]
COMPILE_MODES = ("auto", "always", "never")


@dataclass(frozen=True)
class EngineConfig:
    """How the engine batches and when it compiles."""

    compile: CompileMode = "auto"  # "always", "never", or "auto": after `compile_after` eager steps
    compile_after: int = 20_000  # "auto": eager steps first (compiling costs ~tens of seconds on a CPU)
    max_rows: int = 64  # prompts decoded together at most
    max_cache_tokens: int = 1 << 16  # rows x cache slots at most per batch (~0.5 GB at the quickstart size)
    compact_below: float = 0.5  # drop finished rows once fewer than this share of the batch is live (0: never)
    unroll: int = 4  # decoding steps per call of the compiled function (amortizes its per-call overhead)
    window: int = 128  # a step attends to the cache slots in use, rounded up to this many (0: all slots; CUDA graphs: all)
    prefill_waste: float = 0.25  # prompts prefill together while padding adds at most this share of their tokens
    length_spread: float = 0.5  # a prompt joins a decode batch if at most this share (or 256 tokens) longer than its shortest

    def __post_init__(self) -> None:
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"decode compile must be one of {COMPILE_MODES}, got {self.compile!r}")
        for name in ("window", "prefill_waste", "length_spread"):
            if getattr(self, name) < 0:
                raise ValueError(f"EngineConfig.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("compile_after", "max_rows", "max_cache_tokens", "unroll"):
            if getattr(self, name) < (0 if name == "compile_after" else 1):
                raise ValueError(f"EngineConfig.{name} must be >= {0 if name == 'compile_after' else 1}, got {getattr(self, name)}")
        if not 0.0 <= self.compact_below <= 1.0:
            raise ValueError(f"EngineConfig.compact_below must be in [0, 1], got {self.compact_below}")


def _steps(k: int, model: Transformer, cache: StaticKVCache, s: State, rows: Rows, plan: Tensor, row_end: bool,
           max_side: int, max_len: int, has_shape: bool) -> State:
    """``k`` decoding steps: the function compiled. A step past a row's end feeds it ``PAD`` and
    changes none of its results, so the engine may overshoot the last step by up to ``k - 1``."""
    for _ in range(k):
        cache.slots = s.pos.clamp(max=cache.k[0].size(2) - 1)  # the cache window's last slot
        s = _step(model, cache, s, rows, plan, row_end, max_side, max_len, has_shape)
    return s


def _step(model: Transformer, cache: StaticKVCache, s: State, rows: Rows, plan: Tensor, row_end: bool, max_side: int, max_len: int, has_shape: bool) -> State:
    """Feed every row's last token (at its slot) and choose the next."""
    fed = Positions(
        s.pos[:, None], s.row[:, None], s.col[:, None], s.grid[:, None],
        s.height[:, None] if has_shape else None, s.width[:, None] if has_shape else None,
    )  # (B, 1) each
    logits = model(s.tok[:, None], fed, cache)[:, -1]  # (B, V)
    return choose(logits, s, rows, plan, row_end, max_side, max_len)


@lru_cache(maxsize=8)
def compiled_step(mode: str | None, k: int = 1) -> Callable:
    """``_steps(k, ...)`` under ``torch.compile`` (inductor; ``mode`` "reduce-overhead" for CUDA
    graphs). ``dynamic=True``: the batch and cache dimensions are symbolic, so new prompt lengths,
    batch sizes, cache windows and compaction reuse one compiled graph instead of recompiling;
    ``fullgraph=True``: a model the compiler cannot capture whole (a Python stand-in) fails here
    and runs eagerly. On CPU the generated wrapper is C++ (``cpp_wrapper``): at this model size
    the Python that launches a step's ~40 kernels costs as much as the kernels. Dynamo keeps the
    compiled code per function, so later decodes of the process reuse it.

    Also on CPU, inductor's ``decompose_mm_pass`` turns a matrix product whose first dimension is
    statically 1 into a fused multiply-and-sum: only the batch-1 graph is affected (a batch of
    one row is specialized by dynamic shapes; other batch sizes stay symbolic, hence at least 2,
    and keep their GEMM calls). Its one-row products then fuse with the norms and activations
    around them instead of being ~16 library calls per step: +16% tokens/s at batch 1 (measured
    in docs/decoding.md)."""
    options = {"cpp_wrapper": True, "post_grad_fusion_options": {"decompose_mm_pass": {}}} if mode is None else None
    return torch.compile(partial(_steps, k), mode=mode, dynamic=True, fullgraph=True, options=options)


def compile_mode(device: torch.device) -> str | None:
    """CUDA graphs where CUDA is present (untested here: the development machines are CPU-only)."""
    return "reduce-overhead" if device.type == "cuda" else None


class DecodeEngine:
    """Greedy grid decoding of ragged prompt batches; keep one per model (it remembers how many
    eager steps it ran, for ``compile="auto"``, and whether compiling failed)."""

    def __init__(self, config: EngineConfig = EngineConfig()) -> None:
        self.config = config
        self.eager_steps = 0  # steps run by the eager step so far
        self.failure: str | None = None  # why compiling failed (then every step runs eagerly)
        # wall time in prompt prefills and in decoding steps so far (on CUDA the split is approximate:
        # a prefill's kernels may still run when its timer stops; their sum is exact)
        self.time = {"prefill_s": 0.0, "decode_s": 0.0}

    def compiling(self) -> bool:
        """Whether the next step runs compiled."""
        if self.failure is not None or self.config.compile == "never":
            return False
        return self.config.compile == "always" or self.eager_steps >= self.config.compile_after

    def step(self, *args) -> State:
        """``config.unroll`` decoding steps, compiled or eager."""
        k = self.config.unroll
        if self.compiling():
            mode = compile_mode(args[2].tok.device)
            try:
                if mode != "reduce-overhead":
                    return compiled_step(mode, k)(*args)
                # CUDA graphs replay into the same output buffers: copy the state out before the next step,
                # but the token buffer, written in place and static (a copy would be a new, unmarked input)
                torch.compiler.cudagraph_mark_step_begin()
                out = compiled_step(mode, k)(*args)
                return State(*(x.clone() for x in out[:-1]), out.out)
            except Exception as err:  # noqa: BLE001 -- whatever the compiler raised: decode eagerly
                first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
                self.failure = f"{type(err).__name__}: {first}"
                warnings.warn(f"decoding: torch.compile failed ({self.failure}); decoding eagerly", RuntimeWarning, stacklevel=2)
        self.eager_steps += k
        return _steps(k, *args)

    @torch.no_grad()
    def generate(
        self,
        model: Transformer,
        tokens: Tensor,
        positions: Positions,
        lengths: Sequence[int] | Tensor,
        order: str,
        row_end: bool = False,
        max_side: int = MAX_SIDE,
        max_len: int | None = None,
    ) -> list[Decoded]:
        """Decode one output grid per row. ``tokens``/``positions`` ``(B, T)`` hold prompts of
        ``lengths[b]`` tokens each (each ending with the query's OUTPUT marker; what follows in a
        row is ignored); ``max_len`` caps every whole sequence (default: the model's
        ``max_seq_len``). Returns the rows' results in order, as
        ``gridlm.modules.decoding.generate_grids`` gives for each prompt alone."""
        B = tokens.shape[0]
        lengths = [int(n) for n in (lengths.tolist() if torch.is_tensor(lengths) else lengths)]
        if len(lengths) != B:
            raise ValueError(f"decode: {len(lengths)} prompt lengths for {B} prompts")
        if any(n < 1 or n > tokens.shape[1] for n in lengths):
            raise ValueError(f"decode: prompt lengths must be 1..{tokens.shape[1]} (the batch width), got {lengths}")
        max_len = max_len or model.cfg.max_seq_len
        if max(lengths, default=0) > max_len:
            raise ValueError(f"decode: a prompt of {max(lengths)} tokens is longer than max_len {max_len}; drop it or raise the limit")
        results: list[Decoded | None] = [None] * B
        for chunk in _chunks(lengths, max_len, max_side, row_end, self.config):
            idx = torch.tensor(chunk, device=tokens.device)
            width = max(lengths[i] for i in chunk)
            sub = positions.map(lambda t: t[idx, :width])
            out = self._chunk(model, tokens[idx, :width], sub, [lengths[i] for i in chunk], order, row_end, max_side, max_len)
            for i, d in zip(chunk, out):
                results[i] = d
        return results  # type: ignore[return-value]

    def _chunk(
        self,
        model: Transformer,
        tokens: Tensor,
        positions: Positions,
        lengths: list[int],
        order: str,
        row_end: bool,
        max_side: int,
        max_len: int,
    ) -> list[Decoded]:
        """Decode one right-padded batch ``(B, P)``: prefill, then compiled (or eager) steps."""
        B, P = tokens.shape
        device = tokens.device
        n_out = 2 + body_length(max_side, row_end)
        L = min(max_len, P + n_out)  # cache slots: the longest prompt and the largest grid
        length = torch.tensor(lengths, device=device)
        last = length - 1
        ar = torch.arange(B, device=device)
        rows = Rows(length, positions.grid[ar, last], max_len - length)
        plan = plan_table(order, row_end, max_side, device)
        # its last dimension (3 fields) is a constant: left symbolic, duck sizing would tie it to a
        # batch of 3 rows (then every other batch size recompiles)
        torch._dynamo.mark_static(plan, 2)
        has_shape = positions.height is not None and positions.width is not None
        cache = model.new_static_cache(B, L)
        start = time.perf_counter()
        parts = []  # the prefill: rows of similar length together, right-padded to the group's longest
        for a, b in _prefill_groups(lengths, self.config.prefill_waste):
            w = max(lengths[a:b])
            out = model(tokens[a:b, :w], positions.map(lambda x: x[a:b, :w]), cache.view(slice(a, b)))  # (b - a, w, V)
            parts.append(out[ar[: b - a], last[a:b]])
        logits = torch.cat(parts)  # (B, V)
        self.time["prefill_s"] += time.perf_counter() - start
        start = time.perf_counter()
        # room for the k - 1 steps a call may run past the longest grid (they write PAD)
        s = choose(logits, initial_state(rows, n_out + self.config.unroll - 1), rows, plan, row_end, max_side, max_len)  # token 0: HEIGHT
        _pin(cache, s, self.config)
        room = max_len - torch.tensor(lengths)  # host copies: the loop never waits for the device
        prompt = torch.tensor(lengths)
        stop: Tensor | None = None  # per row: tokens it emits in all, known once the shape is chosen
        keep = torch.arange(B)  # batch row -> chunk row (compaction drops rows)
        done: dict[int, tuple] = {}
        win: StaticKVCache | None = None
        k = self.config.unroll
        t = 0  # index in the grid of the token chosen last
        while bool(((room if stop is None else stop) > t + 1).any()):
            # the slots the next k steps write: up to the longest live prompt + t + k, rounded up
            live_prompt = prompt if stop is None else prompt[stop > t + 1]
            # CUDA graphs want fixed shapes: all slots (decided per call: "auto" may start compiling mid-decode)
            bucket = 0 if compile_mode(device) == "reduce-overhead" and self.compiling() else self.config.window
            n = cache.max_len if not bucket else min(cache.max_len, -(-(int(live_prompt.max()) + t + k) // bucket) * bucket)
            if win is None or win.max_len != n:
                win = cache.view(slice(None), n)
                _pin(win, s, self.config)  # the views the step writes through, not only their base
            s = self.step(model, win, s, rows, plan, row_end, max_side, max_len, has_shape)
            t += k
            if stop is None:  # both shape tokens chosen (t >= 1): every row's length is known (the one host sync)
                stop = torch.minimum(tokens_total(s.h, s.w, row_end).cpu(), room).clamp(min=0)
            if self.config.compact_below == 0:
                continue
            live = (stop > t + 1).nonzero()[:, 0]
            if 0 < len(live) < self.config.compact_below * len(stop):  # drop finished rows and unused slots
                for b in (stop <= t + 1).nonzero()[:, 0].tolist():
                    done[int(keep[b])] = _harvest(s, b)
                idx = live.to(device)
                cache, win = cache.select(idx, min(cache.max_len, int((prompt[live] + stop[live]).max()))), None
                rows = Rows(*(x[idx] for x in rows))
                s = State(s.t, *(x[idx] for x in s[1:]))
                _pin(cache, s, self.config)
                keep, stop, room, prompt = keep[live], stop[live], room[live], prompt[live]
        for b in range(len(keep)):
            done[int(keep[b])] = _harvest(s, b)  # reads the results back: on CUDA, the device is done
        self.time["decode_s"] += time.perf_counter() - start
        return [_finish(*done[i], order) for i in range(B)]


def generate(model: Transformer, tokens: Tensor, positions: Positions, lengths, order: str, row_end: bool = False,
             max_side: int = MAX_SIDE, max_len: int | None = None, config: EngineConfig = EngineConfig()) -> list[Decoded]:
    """:meth:`DecodeEngine.generate` with a fresh engine."""
    return DecodeEngine(config).generate(model, tokens, positions, lengths, order, row_end, max_side, max_len)


def _chunks(lengths: list[int], max_len: int, max_side: int, row_end: bool, config: EngineConfig) -> list[list[int]]:
    """Rows sorted by prompt length, cut into batches of at most ``max_rows`` rows and
    ``max_cache_tokens`` cache slots, of prompts of similar length: a step reads every row's
    keys up to the batch's longest prompt, and that memory traffic, not arithmetic, sets a
    batched step's time."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    budget = 2 + body_length(max_side, row_end)
    chunks: list[list[int]] = []
    for i in order:
        slots = min(max_len, lengths[i] + budget)
        shortest = lengths[chunks[-1][0]] if chunks else 0
        similar = lengths[i] - shortest <= max(256, config.length_spread * shortest)
        if chunks and similar and len(chunks[-1]) < config.max_rows and (len(chunks[-1]) + 1) * slots <= config.max_cache_tokens:
            chunks[-1].append(i)
        else:
            chunks.append([i])
    return chunks


def _prefill_groups(lengths: list[int], waste: float) -> list[tuple[int, int]]:
    """``[a, b)`` ranges of rows (sorted by length) prefilled in one forward: a group grows while
    right-padding to its longest prompt adds at most ``waste`` of its real tokens."""
    groups: list[tuple[int, int]] = []
    a = 0
    for b in range(1, len(lengths) + 1):
        if b == len(lengths) or (b + 1 - a) * lengths[b] > (1 + waste) * sum(lengths[a : b + 1]):
            groups.append((a, b))
            a = b
    return groups


def _pin(cache: StaticKVCache, s: State, config: EngineConfig) -> None:
    """CUDA graphs: the buffers a step writes in place stay at fixed addresses (static inputs;
    cudagraph trees skip CUDA graphs for a graph that writes any other input)."""
    if compile_mode(s.out.device) == "reduce-overhead" and config.compile != "never":
        for buf in (*cache.k, *cache.v, *(cache.positions or ()), s.out):
            torch._dynamo.mark_static_address(buf)


def _harvest(s: State, b: int) -> tuple:
    n = int(s.n_tok[b])
    return s.out[b, :n].tolist(), float(s.logp[b]), bool(s.ended[b]), int(s.h[b]), int(s.w[b])


def _finish(tokens: list[int], logp: float, ended: bool, h: int, w: int, order: str) -> Decoded:
    if not ended:
        reason = f"reached the sequence limit after {len(tokens)} of the grid's tokens (no GRID_END)"
        return Decoded(None, reason, logp, len(tokens), tokens)
    cells = cell_order(order, h, w)
    grid = np.zeros((h, w), dtype=np.int64)
    grid[cells[:, 0], cells[:, 1]] = [t for t in tokens[2:] if t < N_COLOURS]
    return Decoded(grid, None, logp, len(tokens), tokens)
