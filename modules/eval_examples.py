"""Per-example evaluation results of one batch, for paired comparisons between runs.

A study compares two variants on the *same* validation examples (``gridlm.experiments.stats``),
so validation keeps, besides its averaged metrics, one row per example: the task id, the test
index, the loss in nats per token of that example's query output, and the exact match of its
greedy decode (None for an example that was not decoded: ``n_generate`` caps decoding).
``callbacks/val_examples.py`` gathers the rows of every device and writes them as a CSV.
"""

from __future__ import annotations

from typing import Mapping, Optional

import torch
from torch import Tensor

from gridlm.datamodules.tokens import ROLE_TEST_OUTPUT


def example_rows(batch: dict, losses: Tensor, hits: Mapping[int, float]) -> list[dict]:
    """One row per batch row: ``task_id``, ``test_index``, ``loss`` (mean over the row's
    query-output targets; None without any), ``tokens`` (their number) and ``exact_match``
    (``hits[row]``, None for a row that was not decoded).

    ``losses`` are the per-target losses in the order of ``batch["target_mask"][:, 1:]``
    (``AutoregressiveGridModel.token_losses``)."""
    mask = batch["target_mask"][:, 1:]  # (B, T-1): targets of the shifted positions
    B = mask.shape[0]
    rows = mask.nonzero(as_tuple=True)[0]  # (N,) batch row of each target, in boolean-index order
    query = batch["role"][:, 1:][mask] == ROLE_TEST_OUTPUT  # (N,)
    sums = torch.zeros(B, dtype=torch.float64, device=losses.device).index_add_(0, rows[query], losses[query].double())
    counts = torch.zeros(B, dtype=torch.long, device=losses.device).index_add_(0, rows[query], torch.ones_like(rows[query]))
    sums, counts = sums.tolist(), counts.tolist()  # one host sync per batch
    out = []
    for i, meta in enumerate(batch["meta"]):
        hit: Optional[float] = hits.get(i)
        out.append(
            {
                "task_id": meta["task_id"],
                "test_index": int(meta["query"]),
                "exact_match": None if hit is None else float(hit),
                "loss": sums[i] / counts[i] if counts[i] else None,
                "tokens": counts[i],
            }
        )
    return out
