"""Predict with the refiner: draft, refine, and optionally vote over augmentations.

Without voting each test input's attempts are ``[refined, draft]`` (the draft only when it
differs). With ``n_votes > 1`` every test input is solved under ``VotingConfig.augmentations()``
(the recipe of ``gridlm.modules.voting``: Franzen et al. 2024, TRM/HRM): each augmented prompt
gets its own draft (the base model's, or the empty canvas) and its own refinement, the refined
grid is mapped back, and the distinct grids are ranked by votes, ties by the mean final halting
probability (the refiner's confidence; the base model's log-likelihood plays this role in
``vote``). The attempts are the two top-ranked grids, or the top grid and the identity draft
when every vote agrees.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional

import numpy as np

from gridlm.datamodules.batching import collate
from gridlm.datamodules.serialize import serialize_example
from gridlm.datamodules.tasks import Pair
from gridlm.modules.refiner.sources import same_grid
from gridlm.modules.voting import batch_prompts, rank_candidates

if TYPE_CHECKING:
    from gridlm.modules.refiner.network import RefinementNetwork

Attempts = tuple[list[np.ndarray], Optional[str]]  # grids in the batch's frame (best first), reason when none

REFINE_ROWS = 64  # augmented prompts drafted and refined together (the decode engine chunks the drafts itself)


def _attempts(refined, draft, reason: Optional[str]) -> Attempts:
    grids = [] if refined is None else [refined]
    if draft is not None and not same_grid(draft, refined):
        grids.append(draft)
    return grids, (None if grids else reason or "the refined canvas is empty")


def refined_attempts(model: "RefinementNetwork", batch: dict) -> list[Attempts]:
    """Per row of a predict batch, the attempts (in the batch's augmented frame) and a reason."""
    rows = list(range(len(batch["meta"])))
    if model.voting.n_votes <= 1:
        if model.eval_source() == "base":
            drafts = model.base_drafts(batch, "predict")
        else:  # the refiner alone, from the empty canvas
            drafts = [(None, None)] * len(rows)
        refined = model.refine(batch, [g for g, _ in drafts])
        return [_attempts(r, d, why) for r, (d, why) in zip(refined, drafts)]
    return _voted(model, batch, rows)


def _voted(model: "RefinementNetwork", batch: dict, rows: list[int]) -> list[Attempts]:
    augs = model.voting.augmentations()
    jobs = []  # (row, augmentation, prompt sequence)
    for r, (context, query) in zip(rows, batch_prompts(batch, rows, model.order, model.row_end)):
        for aug in augs:
            seq = serialize_example(
                [aug.apply_pair(p) for p in context], Pair(aug.apply(query), None), order=model.order, row_end=model.row_end, prompt_only=True
            )
            if len(seq) < model.max_seq_len:  # room for a draft as long as a target
                jobs.append((r, aug, seq))
    votes: dict[int, list[tuple]] = {r: [] for r in rows}  # row -> (grid, halting probability, name)
    identity_draft: dict[int, tuple] = {}
    step = REFINE_ROWS
    for s in range(0, len(jobs), step):
        chunk = jobs[s : s + step]
        sub = {k: v.to(model.device) if hasattr(v, "to") else v for k, v in collate([seq for _, _, seq in chunk]).items()}
        if model.eval_source() == "base":
            decoded = model.base.decode_batch(sub, list(range(len(chunk))))
            drafts = [(d.grid, d.reason) for d in decoded]
        else:
            drafts = [(None, None)] * len(chunk)
        per_pass, halt, _ = model.refine_passes(sub, [g for g, _ in drafts])
        refined = per_pass[-1] if per_pass else [g for g, _ in drafts]
        for (r, aug, _), g, p, (d, why) in zip(chunk, refined, halt, drafts):
            if aug.is_identity:
                identity_draft[r] = (None if d is None else aug.invert(d), why)
            votes[r].append((None if g is None else aug.invert(g), 0.0 if math.isnan(p) else p, aug.name))
    out = []
    for r in rows:
        cands = rank_candidates(votes[r])
        draft, why = identity_draft.get(r, (None, "no augmented prompt fits max_seq_len"))
        grids = [c.grid for c in cands[:2]]
        if len(grids) == 1 and draft is not None and not same_grid(draft, grids[0]):
            grids.append(draft)
        out.append((grids, None if grids else why or "every refined canvas is empty"))
    return out
