"""Per-task test-time training (TTT): fine-tune on a task's own demonstrations, then predict.

Test-time fine-tuning on augmented leave-one-out versions of the demonstrations is what lifted
the ARC Prize 2024 leaders (Akyürek et al., "The Surprising Effectiveness of Test-Time Training
for Abstract Reasoning", 2024; Franzen et al., "The LLM ARChitect", 2024): every demonstration
becomes a query once with the others as context (``gridlm.datamodules.datamodule.build_specs``, split
``"train"``), each drawn under a random dihedral transform and colour permutation, and the model
takes ``steps`` plain AdamW steps on them.

:func:`adapted` is the safe way to use it: it snapshots the weights, adapts, yields, and always
restores the snapshot (bitwise), so the next task starts from the base model. The optimizer
and its state live only inside :func:`adapt`; afterwards only the snapshot (one copy of the
weights) is held, and it is freed when the context exits.

Works inside Lightning's ``predict`` loop, which runs under ``torch.inference_mode``: the
fine-tuning re-enables autograd locally.
"""

from __future__ import annotations

import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F

from gridlm.datamodules.augment import random_augmentation
from gridlm.datamodules.batching import collate
from gridlm.datamodules.datamodule import build_specs
from gridlm.datamodules.serialize import serialize_example
from gridlm.datamodules.tasks import Pair, Task
from gridlm.datamodules.tokens import TARGET_POLICIES
from gridlm.modules.encodings import Positions
from gridlm.modules.transformer import Transformer


@dataclass(frozen=True)
class TTTConfig:
    """Test-time training of one task; ``steps=0`` turns it off."""

    steps: int = 0  # AdamW steps per task (0: no test-time training)
    lr: float = 1e-4  # AdamW learning rate (constant; a few dozen steps need no schedule)
    batch_size: int = 8  # leave-one-out examples per step (drawn with replacement)
    augment: bool = True  # a random dihedral transform per example (the task is preserved)
    colours: bool = True  # ... and a random colour permutation (with ``augment``)
    keep_zero: bool = True  # keep colour 0 (background) fixed when permuting colours
    weight_decay: float = 0.0  # AdamW weight decay (0: stay close to the base model)
    grad_clip: Optional[float] = 1.0  # clip the gradient norm (None: no clipping)
    target_policy: str = "all_outputs"  # supervised tokens (``gridlm.datamodules.tokens.TARGET_POLICIES``)
    seed: int = 0  # with the task id, seeds the examples and augmentations drawn

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"model.ttt_steps must be >= 0, got {self.steps}")
        if not self.lr > 0:
            raise ValueError(f"model.ttt_lr must be > 0, got {self.lr}")
        if self.batch_size < 1:
            raise ValueError(f"model.ttt_batch_size must be >= 1, got {self.batch_size}")
        if self.target_policy not in TARGET_POLICIES:
            raise ValueError(f"ttt target_policy {self.target_policy!r} is not one of {TARGET_POLICIES}")


def adapt(
    model: Transformer,
    demos: list[Pair],
    order: str,
    row_end: bool = False,
    config: TTTConfig = TTTConfig(steps=8),
    key: str = "",
) -> list[float]:
    """Fine-tune ``model`` in place on leave-one-out examples of ``demos`` for ``config.steps``
    AdamW steps; returns the loss of every step (nats per supervised token, before the step).

    ``key`` (the task id) and ``config.seed`` seed the draws, so a task is adapted identically
    every time. Fewer than two demonstrations, or none that fits ``max_seq_len``, give no
    examples: the model is left untouched and ``[]`` is returned."""
    if config.steps == 0:
        return []
    task = Task(key or "ttt", list(demos), [])
    specs, _, _ = build_specs([task], "train", model.cfg.max_seq_len, row_end)
    if not specs:
        return []
    rng = np.random.default_rng([config.seed, zlib.crc32(key.encode())])
    device = next(model.parameters()).device
    losses: list[float] = []
    was_training = model.training
    with torch.inference_mode(False), torch.enable_grad():
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        model.train()
        for _ in range(config.steps):
            seqs = []
            for i in rng.integers(len(specs), size=config.batch_size):
                spec = specs[int(i)]
                aug = random_augmentation(rng, dihedral=config.augment, colours=config.augment and config.colours, keep_zero=config.keep_zero)
                seqs.append(
                    serialize_example(
                        [aug.apply_pair(task.train[j]) for j in spec.context],
                        aug.apply_pair(task.train[spec.query]),
                        order=order,
                        target_policy=config.target_policy,
                        row_end=row_end,
                    )
                )
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in collate(seqs).items()}
            pos = Positions.from_batch(batch)
            logits = model(batch["tokens"], pos)[:, :-1]  # (B, T-1, V): logits[:, t] predicts token t+1
            mask = batch["target_mask"][:, 1:]  # (B, T-1)
            loss = F.cross_entropy(logits[mask].float(), batch["tokens"][:, 1:][mask])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            opt.step()
            losses.append(float(loss.detach()))
        opt.zero_grad(set_to_none=True)
        del opt  # no optimizer state outlives the task
    model.train(was_training)
    return losses


@contextmanager
def adapted(
    model: Transformer,
    demos: list[Pair],
    order: str,
    row_end: bool = False,
    config: TTTConfig = TTTConfig(steps=8),
    key: str = "",
) -> Iterator[list[float]]:
    """``with adapted(model, demos, ...) as losses:`` the model is fine-tuned on ``demos``
    inside the block (in eval mode) and restored bitwise to its previous weights and mode
    afterwards, also when the block raises. Yields the per-step losses of :func:`adapt`."""
    was_training = model.training
    with torch.inference_mode(False):
        snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        losses = adapt(model, demos, order, row_end, config, key)
        model.eval()
        yield losses
    finally:
        with torch.inference_mode(False), torch.no_grad():
            model.load_state_dict(snapshot)
        model.train(was_training)
        del snapshot
