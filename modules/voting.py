"""Augmentation voting: solve each test input under N augmentations, map back, vote.

The recipe of the ARC Prize 2024 leaders ("The LLM ARChitect: Solving ARC-AGI Is A Matter of
Perspective", Franzen et al., 2024) and of TRM/HRM: apply the same dihedral transform and
colour permutation to every grid of a prompt (demonstrations and test input), decode the
augmented test output greedily, undo the augmentation on the prediction, and rank the distinct
predicted grids by how many augmentations produced them. Ties are broken by the mean over the
votes of the per-token log-likelihood (``Decoded.mean_logprob``). The top two candidates are
the two attempts of an ARC submission.

Every augmented prompt of every test input is decoded in one call of the decode engine
(``gridlm.modules.inference``), which batches prompts of different lengths together (a
transposing augmentation changes the length when ``row_end`` is on; test inputs differ). An
augmented prompt that no longer fits ``max_seq_len`` is skipped (it casts no vote).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from gridlm.datamodules.augment import Augmentation
from gridlm.datamodules.batching import collate
from gridlm.datamodules.serialize import deserialize, serialize_example
from gridlm.datamodules.tasks import Pair
from gridlm.datamodules.tokens import N_COLOURS, ROLE_TEST_OUTPUT
from gridlm.modules.decoding import Decoded
from gridlm.modules.encodings import Positions
from gridlm.modules.inference import DecodeEngine
from gridlm.modules.transformer import Transformer


@dataclass(frozen=True)
class VotingConfig:
    """How many augmentations solve each test input, and which kinds."""

    n_votes: int = 8  # augmented decodes per test input (1 = plain greedy decoding)
    dihedral: bool = True  # cycle through the 8 dihedral transforms (identity first)
    colours: bool = True  # a random colour permutation per augmentation (not for the identity vote)
    keep_zero: bool = True  # keep colour 0 (the usual background) fixed when permuting colours
    seed: int = 0  # seed of the colour permutations (the same set for every test input)

    def __post_init__(self) -> None:
        if self.n_votes < 1:
            raise ValueError(f"model.n_votes must be >= 1, got {self.n_votes}")

    def augmentations(self) -> list[Augmentation]:
        """``n_votes`` augmentations, the identity first: vote ``i`` uses dihedral ``i % 8``
        (identity when ``dihedral`` is off) and, for ``i > 0`` with ``colours``, a colour
        permutation drawn from ``[seed, i]``. Duplicates are possible only beyond 8 votes
        without colours; they are dropped."""
        out: list[Augmentation] = []
        for i in range(self.n_votes):
            d = i % 8 if self.dihedral else 0
            perm = tuple(range(N_COLOURS))
            if self.colours and i > 0:
                rng = np.random.default_rng([self.seed, i])
                rest = rng.permutation(N_COLOURS - 1) + 1 if self.keep_zero else rng.permutation(N_COLOURS)
                perm = (0, *map(int, rest)) if self.keep_zero else tuple(map(int, rest))
            aug = Augmentation(d, perm)
            if aug not in out:
                out.append(aug)
        return out


@dataclass
class Candidate:
    """One distinct predicted grid (in the un-augmented frame) and its support."""

    grid: np.ndarray  # (h, w) predicted output grid
    votes: int  # augmentations that produced this grid
    mean_logprob: float  # mean over those votes of Decoded.mean_logprob (tie-breaker)
    augmentations: list[str] = field(default_factory=list)  # names of the voting augmentations


@dataclass
class VoteResult:
    """Voting outcome for one test input."""

    candidates: list[Candidate]  # ranked: most votes first, ties by higher mean log-likelihood
    decoded: list[tuple[Augmentation, Decoded]]  # every decode, its grid mapped back to the prompt's frame

    def attempts(self, k: int = 2) -> list[np.ndarray]:
        """The top ``k`` distinct grids (fewer when fewer candidates exist)."""
        return [c.grid for c in self.candidates[:k]]

    @property
    def reason(self) -> str | None:
        """Why there is no candidate at all (the first decode's reason), else ``None``."""
        if self.candidates:
            return None
        reasons = [d.reason for _, d in self.decoded if d.reason]
        return reasons[0] if reasons else "no augmented prompt fits max_seq_len"


def rank_candidates(predictions: list[tuple[np.ndarray | None, float, str]]) -> list[Candidate]:
    """Group ``(grid, mean_logprob, augmentation name)`` predictions by exact grid (shape and
    values) and rank them: more votes first, then higher mean log-likelihood, then first seen.
    ``None`` grids (failed decodes) cast no vote."""
    groups: dict[tuple, list] = {}
    for grid, lp, name in predictions:
        if grid is None:
            continue
        grid = np.asarray(grid, dtype=np.int64)
        key = (grid.shape, grid.tobytes())
        groups.setdefault(key, [grid, [], []])
        groups[key][1].append(float(lp))
        groups[key][2].append(name)
    cands = [Candidate(g, len(lps), float(np.mean(lps)), names) for g, lps, names in groups.values()]
    order = sorted(range(len(cands)), key=lambda i: (-cands[i].votes, -cands[i].mean_logprob, i))
    return [cands[i] for i in order]


def prompt_pairs(tokens: Tensor | np.ndarray, order: str, row_end: bool = False) -> tuple[list[Pair], np.ndarray]:
    """The demonstrations and the query input of a prompt (a sequence cut after the query's
    OUTPUT marker), read back with ``deserialize``."""
    grids = [g for _, g in deserialize(np.asarray(tokens), order, row_end)]
    if len(grids) % 2 != 1:
        raise ValueError(f"a prompt holds demonstration pairs and one query input, got {len(grids)} grids")
    context = [Pair(grids[i], grids[i + 1]) for i in range(0, len(grids) - 1, 2)]
    return context, grids[-1]


def prompt_lengths(batch: dict) -> list[int]:
    """Per row of a collated batch, the prompt length: through the query's OUTPUT marker (the
    first test-output token), or the whole sequence for prompt-only rows."""
    is_out = batch["role"] == ROLE_TEST_OUTPUT  # (B, T)
    first = torch.where(is_out.any(1), is_out.float().argmax(1), batch["lengths"] - 1)  # (B,)
    return (first + 1).tolist()


def batch_prompts(batch: dict, rows: list[int], order: str, row_end: bool = False) -> list[tuple[list[Pair], np.ndarray]]:
    """``prompt_pairs`` of the chosen rows of a collated batch."""
    lengths = prompt_lengths(batch)
    toks = batch["tokens"].cpu()
    return [prompt_pairs(toks[r, : lengths[r]], order, row_end) for r in rows]


@torch.no_grad()
def vote(
    model: Transformer,
    prompts: list[tuple[list[Pair], np.ndarray]],
    order: str,
    row_end: bool = False,
    config: VotingConfig = VotingConfig(),
    engine: DecodeEngine | None = None,
) -> list[VoteResult]:
    """Solve every ``(demonstrations, query input)`` prompt under ``config.augmentations()``.

    Each augmented prompt is serialized with ``prompt_only=True``; all of them are decoded in
    one ``engine.generate`` call (a fresh :class:`DecodeEngine` when None); every prediction is
    mapped back with the inverse augmentation before voting. Returns one :class:`VoteResult`
    per prompt, in order."""
    augs = config.augmentations()
    device = next(model.parameters()).device
    limit = model.cfg.max_seq_len
    jobs: list[tuple[int, Augmentation, object]] = []  # (prompt, augmentation, serialized prompt)
    for p, (context, query) in enumerate(prompts):
        for aug in augs:
            seq = serialize_example(
                [aug.apply_pair(pair) for pair in context],
                Pair(aug.apply(query), None),
                order=order,
                row_end=row_end,
                prompt_only=True,
            )
            if len(seq) < limit:  # room for at least one generated token
                jobs.append((p, aug, seq))
    decoded: list[list[tuple[Augmentation, Decoded]]] = [[] for _ in prompts]
    if jobs:
        batch = collate([seq for _, _, seq in jobs])  # right-padded: the engine takes each row's length
        pos = Positions.from_batch(batch).map(lambda t: t.to(device))
        engine = engine or DecodeEngine()
        outs = engine.generate(model, batch["tokens"].to(device), pos, batch["lengths"], order, row_end)
        for (p, aug, _), d in zip(jobs, outs):
            if d.grid is not None:
                d.grid = aug.invert(d.grid)
            decoded[p].append((aug, d))
    results = []
    for p in range(len(prompts)):
        cands = rank_candidates([(d.grid, d.mean_logprob, a.name) for a, d in decoded[p]])
        results.append(VoteResult(cands, decoded[p]))
    return results
