"""``RefinementNetwork``: refine a draft on an output canvas, recursively, with deep supervision.

The base model (``modules/base_model.py``) writes the query output token by token, so an early
mistake (a wrong shape above all) cannot be revised. The refiner is a *bidirectional* transformer
(the same :class:`~gridlm.modules.transformer.Transformer`, ``causal=False``, the same positional
encodings) over the serialized task whose query output block is an ``S x S`` *canvas*
(``datamodules/canvas.py``): the draft at the top-left corner, every other cell *outside*. An
11-way head (10 colours + outside, tied to those embeddings: a copy-the-draft prior at init)
predicts every canvas cell, so the predicted grid may have another shape than the draft.

Recursion with deep supervision, after TRM (Jolicoeur-Martineau 2025, "Less is More: Recursive
Reasoning with Tiny Networks", arXiv:2510.04871): a *pass* reads the task, the previous pass's
predicted grid placed on the canvas, and a carried latent state ``z`` (the previous pass's hidden
states, added to the token embeddings through a zero-initialised linear map: TRM's input
injection); it predicts a canvas and a halting logit (a linear head on the mean of the canvas
cells' hidden states; TRM's Q-head, bias -5 so an untrained head never halts). Training runs
``train_passes`` passes on every example with a loss at every pass (cross-entropy over canvas
cells + ``halt_loss_weight`` x binary cross-entropy of the halting logit against "this pass's grid
is exactly right"); ``z`` is detached and the predicted grid is discrete, so no gradient crosses a
pass (TRM's detached carry). Departures from TRM: one network evaluation per pass (no inner
latent recursion), and every training example runs all passes (no ACT early exit in training).
At inference up to ``n_passes`` passes; a row stops when a pass leaves its grid unchanged or its
halting probability exceeds ``halt_threshold``.

Drafts come from ``sources.py`` (base model, corrupted targets, empty canvas, mixed by
configuration). Validation logs exact match of the draft, of every pass
(``val/exact_match_pass_k``) and refined, on the same pairs, with wrong-shape counts.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric, SumMetric

from gridlm.datamodules.augment import Augmentation
from gridlm.datamodules.canvas import (
    N_ADDED_TOKENS, OUTSIDE_TOKEN, canvas_batch, canvas_exact, canvas_sides, canvas_targets, read_canvas, reread_canvas, split_cells, to_canvas,
    uncommitted, with_canvas,
)
from gridlm.datamodules.drafts import CORRUPTIONS, CorruptionName
from gridlm.datamodules.orders import OrderName
from gridlm.datamodules.serialize import grid_token_count
from gridlm.datamodules.tokens import MAX_SIDE, N_COLOURS, VOCAB_SIZE
from gridlm.modules.base_model import OptimizerFactory, default_optimizer, param_groups
from gridlm.modules.encodings import Positions
from gridlm.modules.encodings.registry import EncodingName
from gridlm.modules.provenance import run_metadata
from gridlm.modules.refiner.options import CanvasInput, check_options
from gridlm.modules.refiner.sources import DraftSource, DraftSources, Grid, load_base_model, same_grid, select_rows
from gridlm.modules.refiner.voting import refined_attempts
from gridlm.modules.transformer import MLPName, NormName, Transformer, TransformerConfig
from gridlm.modules.voting import VotingConfig


class RefinementNetwork(DraftSources, L.LightningModule):
    def __init__(
        self,
        vocab_size: int = VOCAB_SIZE,
        max_seq_len: int = 2048,
        d_model: int = 128,
        n_layers: int = 4,
        n_heads: int = 4,
        mlp_ratio: int = 4,
        dropout: float = 0.0,
        encoding: Union[EncodingName, Sequence[EncodingName]] = "rope_1d",
        norm: NormName = "layernorm",
        mlp: MLPName = "gelu",
        qk_norm: bool = False,
        order: OrderName = "row_major",
        row_end: bool = False,
        base_checkpoint: Optional[str] = None,
        draft_ratio: float = 0.5,
        empty_ratio: float = 0.0,
        eval_draft: Optional[DraftSource] = None,
        corruptions: Sequence[CorruptionName] = CORRUPTIONS,
        corrupt_cell_prob: float = 0.1,
        corrupt_errors: int = 1,
        canvas_side: Optional[int] = None,
        canvas_max_side: int = MAX_SIDE,
        train_passes: int = 3,
        n_passes: int = 3,
        inner_steps: int = 1,
        commit_threshold: Optional[float] = None,
        pass_noise: float = 0.0,
        canvas_input: CanvasInput = "grid",
        halt_threshold: Optional[float] = 0.5,
        halt_loss_weight: float = 0.5,
        n_votes: int = 1,
        vote_colours: bool = True,
        vote_keep_zero: bool = True,
        seed: int = 0,
        grad_clip: Optional[float] = 1.0,
        optimizer: Optional[OptimizerFactory] = None,
    ) -> None:
        """
        Args:
            vocab_size: linked from ``data.vocab_size``; the refiner adds one token (outside the grid).
            max_seq_len: linked from ``data.max_seq_len``; the position tables also hold the
                largest canvas block (``canvas_max_side`` squared), which replaces the target block.
            d_model: residual width.
            n_layers: transformer blocks.
            n_heads: attention heads.
            mlp_ratio: MLP hidden width as a multiple of ``d_model``.
            dropout: dropout probability.
            encoding: positional encoding name, or a list of names to combine.
            norm: ``layernorm`` (GPT-2) or ``rmsnorm`` (Llama).
            mlp: ``gelu`` (GPT-2) or ``swiglu`` (Llama; same parameter count).
            qk_norm: RMSNorm of every head's queries and keys (ViT-22B, OLMo 2).
            order: serialization order (linked from ``data.order``); must match the base model's.
            row_end: ROW_END tokens (linked from ``data.row_end``); must match the base model's.
            base_checkpoint: ``AutoregressiveGridModel`` checkpoint that writes the drafts
                (required when ``draft_ratio > 0`` or ``eval_draft`` is ``base``).
            draft_ratio: fraction of training drafts from the base model.
            empty_ratio: fraction of training drafts that are the empty canvas (the refiner
                alone); the rest (``1 - draft_ratio - empty_ratio``) are corrupted targets.
            eval_draft: the drafts of validation, test and predict (``base``, ``corrupt``,
                ``empty``); default ``base`` with a base checkpoint, else ``corrupt``.
            corruptions: synthetic error kinds for corrupted targets, incl. wrong shapes
                (``gridlm.datamodules.drafts.CORRUPTIONS``).
            corrupt_cell_prob: per-cell probability of the ``flip`` corruption.
            corrupt_errors: errors per corrupted target, applied one after the other.
            canvas_side: a fixed canvas side for every example (None: the task's largest side).
            canvas_max_side: cap of the canvas side (30: every ARC grid fits).
            train_passes: recursive passes per training example, each with its own loss.
            n_passes: passes at most at inference (0: the output is the draft).
            inner_steps: network evaluations per pass (TRM's latent recursion): the first
                ``inner_steps - 1`` only update the latent, the last reads it and predicts the
                canvas; the gradient runs through all of them (1: one evaluation per pass).
            commit_threshold: between passes, a cell predicted with probability below this is
                written *unknown* on the next pass's canvas, to be re-predicted with the confident
                cells as context (Mask-Predict); None: the next pass reads the whole grid.
            canvas_input: what a pass hands to the next on the canvas: ``grid`` (the grid read,
                one token per cell) or ``soft`` (every cell the mean of the 11 class embeddings
                under the pass's predicted probabilities: its uncertainty is kept, as TRM carries
                its answer as an embedding; detached).
            pass_noise: training only: each colour cell of the grid a pass hands to the next is
                recoloured at random with this probability, so later passes learn to correct
                errors rather than copy their input (which is nearly right on training tasks).
            halt_threshold: a row stops when its halting probability exceeds this (None: stop
                only when a pass changes nothing).
            halt_loss_weight: weight of the halting head's loss.
            n_votes: augmentations ``predict`` drafts and refines each test input under
                (``gridlm.modules.voting``; 1 = no voting).
            vote_colours: voting augmentations also permute colours (else dihedral only).
            vote_keep_zero: colour permutations keep colour 0 (background) fixed.
            seed: seed of the per-example draft choice and corruption.
            grad_clip: clip the gradient norm to this value (None: no clipping; the trainer's
                ``gradient_clip_val`` wins when set).
            optimizer: optimizer factory; default ``schedulefree.AdamWScheduleFree``.
        """
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer"])
        check_options(locals())
        self.cfg = TransformerConfig(
            vocab_size=vocab_size + N_ADDED_TOKENS,  # + OUTSIDE_TOKEN, UNKNOWN_TOKEN
            max_seq_len=max_seq_len + grid_token_count(canvas_max_side, canvas_max_side, row_end),
            d_model=d_model,
            n_layers=n_layers,
            n_heads=n_heads,
            mlp_ratio=mlp_ratio,
            dropout=dropout,
            norm=norm,
            mlp=mlp,
            qk_norm=qk_norm,
            encoding=list(encoding) if isinstance(encoding, (list, tuple)) else encoding,
            tie_embeddings=True,  # the canvas head reuses the colour and outside embeddings
            causal=False,
        )
        self.model = Transformer(self.cfg)
        self.latent_in = nn.Linear(d_model, d_model, bias=False)  # carried latent -> input injection
        nn.init.zeros_(self.latent_in.weight)  # pass 2 starts as pass 1 did
        self.halt_head = nn.Linear(d_model, 1)
        nn.init.zeros_(self.halt_head.weight)
        nn.init.constant_(self.halt_head.bias, -5.0)  # TRM: never halt before it has learned when to
        self.register_buffer("canvas_ids", torch.tensor([*range(N_COLOURS), OUTSIDE_TOKEN]), persistent=False)
        self.optimizer_factory = optimizer or default_optimizer
        self.order, self.row_end, self.max_seq_len = order, row_end, max_seq_len
        self.draft_ratio, self.empty_ratio, self.eval_draft = draft_ratio, empty_ratio, eval_draft
        self.corruptions, self.corrupt_cell_prob, self.corrupt_errors = tuple(corruptions), corrupt_cell_prob, corrupt_errors
        self.canvas_side, self.canvas_max_side = canvas_side, canvas_max_side
        self.train_passes, self.n_passes, self.inner_steps = train_passes, n_passes, inner_steps
        self.commit_threshold, self.pass_noise, self.canvas_input = commit_threshold, pass_noise, canvas_input
        self.halt_threshold, self.halt_loss_weight = halt_threshold, halt_loss_weight
        self.voting = VotingConfig(n_votes=n_votes, colours=vote_colours, keep_zero=vote_keep_zero)
        self.seed, self.grad_clip = seed, grad_clip
        # the frozen base model is not a submodule: its weights stay out of the refiner's
        # state dict, optimizer and train()/eval() switching
        base = None if base_checkpoint is None else load_base_model(base_checkpoint, order, row_end)
        object.__setattr__(self, "_base", base)
        self.draft_cache: dict[tuple, tuple[Grid, Optional[str]]] = {}  # key -> (grid, reason it is missing)
        self.n_decoded = 0  # examples decoded by the base model (cache misses)
        self.wrong_shape_train = 0  # training base drafts of the wrong shape (refined on the canvas)
        names = ["loss", "exact_match_draft", "exact_match_refined", "passes"]
        names += [f"exact_match_pass_{k}" for k in range(1, n_passes + 1)]
        sums = ["pairs", "cells_fixed", "cells_broken", "wrong_shape_drafts", "wrong_shape_refined", "shapes_fixed", "target_exceeds_canvas"]
        self.stage_metrics = nn.ModuleDict(
            {
                stage: nn.ModuleDict({**{n: MeanMetric() for n in names}, **{n: SumMetric() for n in sums}})
                for stage in ("val", "test")
            }
        )

    # ---------------------------------------------------------------- one pass
    def forward_pass(self, inp: dict, z: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """One pass over a :func:`canvas_batch` input with carried latent ``z`` ``(B, T, C)`` (None
        at the first pass): canvas logits ``(N, 11)`` in ``inp["cells"]`` order, halting logits
        ``(B,)`` and the hidden states ``(B, T, C)`` (the next pass's latent)."""
        T = inp["tokens"].shape[1]
        real = torch.arange(T, device=inp["tokens"].device)[None, :] < inp["lengths"][:, None]  # (B, T)
        add = None if z is None else self.latent_in(z)
        if inp.get("soft") is not None:  # canvas cells read as the mean embedding under the previous pass's probabilities
            E = self.model.embed.weight  # (V, C)
            delta = torch.zeros(*inp["tokens"].shape, E.shape[1], dtype=E.dtype, device=E.device)  # (B, T, C)
            delta[inp["cells"]] = inp["soft"].to(E.dtype) @ E[self.canvas_ids] - E[inp["tokens"][inp["cells"]]]
            add = delta if add is None else add + delta
        h = self.model.hidden(inp["tokens"], Positions.from_batch(inp), key_padding_mask=real, input_add=add)  # (B, T, C)
        logits = self.model.embedding_logits(h[inp["cells"]], self.canvas_ids)  # (N, 11)
        cells = inp["cells"][..., None].to(h.dtype)  # (B, T, 1)
        pooled = (h * cells).sum(1) / cells.sum(1).clamp(min=1)  # (B, C)
        return logits, self.halt_head(pooled).squeeze(-1), h

    def think(self, inp: dict, z: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """One pass: ``inner_steps`` evaluations of the network on the same canvas, each reading the
        previous one's hidden states as its latent (TRM's latent recursion; the gradient runs through
        all of them, as through TRM's last, graded cycle); outputs as :meth:`forward_pass`."""
        for _ in range(self.inner_steps - 1):
            z = self.forward_pass(inp, z)[2]
        return self.forward_pass(inp, z)

    def sides(self, batch: dict, drafts: Sequence[Grid]) -> list[int]:
        return canvas_sides(batch, drafts, self.canvas_max_side, self.canvas_side)

    @staticmethod
    def read_grids(logits: Tensor, inp: dict) -> list[Grid]:
        """The grid every row's predicted canvas holds (``datamodules.canvas.read_canvas``)."""
        classes = logits.argmax(-1)  # (N,)
        colours = logits[:, :N_COLOURS].argmax(-1)  # (N,)
        pairs = zip(split_cells(classes, inp), split_cells(colours, inp))
        return [read_canvas(c.cpu().numpy(), k.cpu().numpy()) for c, k in pairs]

    @torch.no_grad()
    def refine_passes(self, batch: dict, drafts: Sequence[Grid], n_passes: Optional[int] = None) -> tuple[list[list[Grid]], list[float], list[int]]:
        """Up to ``n_passes`` (default ``self.n_passes``) passes over every row's draft. Returns the
        grid after every pass (``[pass][row]``; a stopped row keeps its grid), each row's last
        halting probability (NaN with no pass) and the passes it used. A row stops once a pass
        leaves its grid unchanged or its halting probability exceeds ``halt_threshold``. Every pass
        runs the whole batch (the carried latent keeps its layout); stopped rows are ignored."""
        n_passes = self.n_passes if n_passes is None else n_passes
        grids: list[Grid] = [None if d is None else np.asarray(d, dtype=np.int64) for d in drafts]
        sides = self.sides(batch, drafts)
        halt = [float("nan")] * len(grids)
        used = [0] * len(grids)
        active = list(range(len(grids)))
        per_pass: list[list[Grid]] = []
        z = None
        inp = canvas_batch(batch, [to_canvas(g, s) for g, s in zip(grids, sides)], self.order, self.row_end) if n_passes else None
        for _ in range(n_passes):
            if not active:
                per_pass.append(list(grids))
                continue
            logits, q, z = self.think(inp, z)
            new = self.read_grids(logits, inp)
            rows = torch.zeros(len(grids), dtype=torch.bool, device=inp["tokens"].device)
            rows[active] = True
            nxt = uncommitted(reread_canvas(logits, inp), logits, self.commit_threshold)
            old = inp.get("soft")
            inp = with_canvas(inp, nxt, rows)  # stopped rows keep their canvas
            if self.canvas_input == "soft":
                soft = logits.float().softmax(-1)  # (N, 11)
                keep = ~rows[inp["cells"].nonzero()[:, 0]]  # (N,) cells of stopped rows
                if old is not None:
                    soft = torch.where(keep[:, None], old, soft)
                else:  # a row stopped before any soft canvas keeps its discrete cells: one-hot
                    onehot = F.one_hot(nxt.clamp(max=N_COLOURS), N_COLOURS + 1).float()
                    soft = torch.where(keep[:, None], onehot, soft)
                inp["soft"] = soft
            p = torch.sigmoid(q.float()).tolist()
            still = []
            for i in active:
                changed = not same_grid(new[i], grids[i]) and not (new[i] is None and grids[i] is None)
                grids[i], halt[i], used[i] = new[i], p[i], used[i] + 1
                stop = self.halt_threshold is not None and p[i] > self.halt_threshold
                if changed and not stop:
                    still.append(i)
            active = still
            per_pass.append(list(grids))
        return per_pass, halt, used

    def refine(self, batch: dict, drafts: Sequence[Grid], n_passes: Optional[int] = None) -> list[Grid]:
        """The refined grid of every row (the draft itself with ``n_passes`` 0)."""
        per_pass, _, _ = self.refine_passes(batch, drafts, n_passes)
        return per_pass[-1] if per_pass else [None if d is None else np.asarray(d) for d in drafts]

    # ---------------------------------------------------------------- training
    def pass_losses(self, batch: dict, drafts: Sequence[Grid], targets: Sequence[np.ndarray]) -> tuple[list[Tensor], list[list[bool]]]:
        """Deep supervision: ``train_passes`` passes from ``drafts``, each reading the previous
        pass's grid and the detached latent; per pass the loss (canvas cross-entropy over rows
        whose target fits their canvas + ``halt_loss_weight`` x halting BCE) and per-row exactness.
        The canvas input is built once: a pass only rewrites its cells (``with_canvas``) with the
        grid read from the previous pass (``reread_canvas``, in tensors)."""
        sides = self.sides(batch, drafts)
        fits = torch.tensor([max(t.shape) <= s for t, s in zip(targets, sides)], device=self.device)  # (B,)
        inp = canvas_batch(batch, [to_canvas(g, s) for g, s in zip(drafts, sides)], self.order, self.row_end)
        target = canvas_targets(inp, [to_canvas(t, s) for t, s in zip(targets, sides)])  # (N,)
        weight = fits[inp["cells"].nonzero()[:, 0]].float()  # (N,) cells of rows whose target fits
        z = None
        losses, exact = [], []
        for _ in range(self.train_passes):
            logits, q, h = self.think(inp, z)
            ce = F.cross_entropy(logits.float(), target, reduction="none")  # (N,)
            loss = (ce * weight).sum() / weight.sum().clamp(min=1)
            classes = reread_canvas(logits.detach(), inp)  # (N,) the grid read, back on the canvas
            right = canvas_exact(classes, target, inp, fits)  # (B,)
            halt = F.binary_cross_entropy_with_logits(q.float(), right.float())
            losses.append(loss + self.halt_loss_weight * halt)
            exact.append(right.tolist())
            nxt = uncommitted(classes, logits.detach(), self.commit_threshold)  # uncertain cells left open
            if self.pass_noise > 0:
                noisy = (torch.rand(nxt.shape, device=nxt.device) < self.pass_noise) & (nxt < N_COLOURS)  # (N,)
                nxt = torch.where(noisy, (nxt + torch.randint_like(nxt, 1, N_COLOURS)) % N_COLOURS, nxt)
            inp, z = with_canvas(inp, nxt), h.detach()  # no gradient crosses a pass
            if self.canvas_input == "soft":
                inp["soft"] = logits.detach().float().softmax(-1)  # (N, 11)
        return losses, exact

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        drafts, counts = self.training_drafts(batch)
        targets = [np.asarray(m["target"]) for m in batch["meta"]]
        losses, exact = self.pass_losses(batch, drafts, targets)
        loss = torch.stack(losses).mean()
        B = len(drafts)
        self.wrong_shape_train += counts["wrong_shape"]
        self.log("train/loss", loss, on_step=True, prog_bar=True, batch_size=B)
        for k, (lk, ek) in enumerate(zip(losses, exact), start=1):
            self.log(f"train/loss_pass_{k}", lk.detach(), on_step=True, batch_size=B)
            self.log(f"train/exact_match_pass_{k}", float(np.mean(ek)), on_step=True, batch_size=B)
        self.log("train/base_draft_fraction", counts["base"] / B, on_step=True, batch_size=B)
        self.log("train/empty_draft_fraction", counts["empty"] / B, on_step=True, batch_size=B)
        self.log("train/wrong_shape_drafts", float(self.wrong_shape_train), on_step=True, batch_size=B)
        return loss

    # ---------------------------------------------------------------- evaluation
    def _eval_step(self, batch: dict, stage: str) -> None:
        m = self.stage_metrics[stage]
        targets = [np.asarray(meta["target"]) for meta in batch["meta"]]
        drafts = self.eval_drafts(batch, stage)
        per_pass, _, used = self.refine_passes(batch, drafts)
        refined = per_pass[-1] if per_pass else drafts
        dev, B = self.device, len(targets)

        def mean(values) -> Tensor:
            return torch.tensor([float(v) for v in values], device=dev)

        right_shape = [d is not None and d.shape == t.shape for d, t in zip(drafts, targets)]
        fixed = broken = 0
        for d, r, t in zip(drafts, refined, targets):
            if d is not None and r is not None and d.shape == r.shape == t.shape:
                fixed += int(((d != t) & (r == t)).sum())
                broken += int(((d == t) & (r != t)).sum())
        m["exact_match_draft"].update(mean(same_grid(d, t) for d, t in zip(drafts, targets)))
        m["exact_match_refined"].update(mean(same_grid(r, t) for r, t in zip(refined, targets)))
        for k, grids in enumerate(per_pass, start=1):
            m[f"exact_match_pass_{k}"].update(mean(same_grid(g, t) for g, t in zip(grids, targets)))
        m["passes"].update(mean(used))
        m["pairs"].update(torch.tensor(float(B), device=dev))
        m["cells_fixed"].update(torch.tensor(float(fixed), device=dev))
        m["cells_broken"].update(torch.tensor(float(broken), device=dev))
        m["wrong_shape_drafts"].update(torch.tensor(float(B - sum(right_shape)), device=dev))
        wrong_refined = sum(r is None or r.shape != t.shape for r, t in zip(refined, targets))
        m["wrong_shape_refined"].update(torch.tensor(float(wrong_refined), device=dev))
        shapes_fixed = sum(not ok and r is not None and r.shape == t.shape for ok, r, t in zip(right_shape, refined, targets))
        m["shapes_fixed"].update(torch.tensor(float(shapes_fixed), device=dev))
        sides = self.sides(batch, drafts)
        fits = [max(t.shape) <= s for t, s in zip(targets, sides)]
        m["target_exceeds_canvas"].update(torch.tensor(float(B - sum(fits)), device=dev))
        if any(fits):  # val/loss: canvas cross-entropy of the first pass (it reads the draft)
            rows = [i for i, f in enumerate(fits) if f]
            sub = select_rows(batch, rows)
            inp = canvas_batch(sub, [to_canvas(drafts[i], sides[i]) for i in rows], self.order, self.row_end)
            logits, _, _ = self.think(inp, None)
            tgt = canvas_targets(inp, [to_canvas(targets[i], sides[i]) for i in rows])
            m["loss"].update(F.cross_entropy(logits.float(), tgt, reduction="none"))
        for name, metric in m.items():
            if name.startswith("exact_match_pass_") and int(name.rsplit("_", 1)[1]) > len(per_pass):
                continue  # refine_passes ran fewer passes (an n_passes override)
            self.log(f"{stage}/{name}", metric, on_epoch=True, prog_bar=name in ("exact_match_draft", "exact_match_refined"), batch_size=B)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def summary(self, stage: str) -> str:
        """One line, draft / every pass / refined exact match side by side as counts, and the
        wrong shapes: what ``gridlm validate`` prints beside Lightning's metric table."""
        m = self.stage_metrics[stage]
        n = int(m["pairs"].compute())

        def count(name: str) -> str:
            return f"{round(float(m[name].compute()) * n)}/{n}"

        passes = [k for k in range(1, self.n_passes + 1) if m[f"exact_match_pass_{k}"].update_count > 0]
        cols = [f"draft {count('exact_match_draft')}", *(f"pass {k} {count(f'exact_match_pass_{k}')}" for k in passes)]
        cols.append(f"refined {count('exact_match_refined')}")
        shapes = (f"wrong shapes: drafts {int(m['wrong_shape_drafts'].compute())}, refined {int(m['wrong_shape_refined'].compute())}, "
                  f"fixed {int(m['shapes_fixed'].compute())}")  # fmt: skip
        return f"{stage} exact match ({self.eval_source()} drafts): " + " | ".join(cols) + f"; {shapes}"

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking and self.stage_metrics["val"]["pairs"].update_count > 0:
            self.print(self.summary("val"))

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def panel_grids(self, batch: dict, rows: Sequence[int]) -> list[tuple[list[tuple[str, object]], str]]:
        """Per row, the labelled grids of a picture (input, target, draft, refined) and a caption;
        ``WandbTracking`` draws them. Drafts come from the validation cache."""
        sub = select_rows(batch, rows)
        drafts = self.eval_drafts(sub, "val")
        refined = self.refine(sub, drafts)
        out = []
        for meta, d, g in zip(sub["meta"], drafts, refined):
            grids = [("input", meta["query_input"]), ("target", meta["target"]), ("draft", d), ("refined", g)]
            verdict = "refined ok" if same_grid(g, np.asarray(meta["target"])) else "refined wrong"
            out.append((grids, f"{meta['task_id']} test {meta['query']}: {verdict}"))
        return out

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        """Rows as ``AutoregressiveGridModel.predict_step``: ``attempts = [refined, draft]`` (the
        draft only when it differs); with ``n_votes > 1`` the two top-voted refined grids over
        augmentations (the draft second when a single grid wins every vote)."""
        if self.eval_source() == "corrupt":
            raise ValueError("predict needs drafts without targets: pass --model.base_checkpoint, or --model.eval_draft empty for the refiner alone")
        rows = refined_attempts(self, batch)
        out = []
        for meta, (attempts, reason) in zip(batch["meta"], rows):
            aug = Augmentation(*meta["augmentation"])
            grids = [aug.invert(g).tolist() for g in attempts] or [None]
            out.append({"task_id": meta["task_id"], "test_index": meta["query"], "attempts": grids, "reason": reason})
        return out

    # ---------------------------------------------------------------- optim / checkpoints
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(param_groups(self))

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        clip = gradient_clip_val if gradient_clip_val is not None else self.grad_clip
        if clip:
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm=gradient_clip_algorithm or "norm")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["gridlm"] = run_metadata(getattr(self, "resolved_config", None))

