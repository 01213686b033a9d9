"""``RefinementNetwork``: read a task and a draft output grid at once, predict every draft cell.

The base model (``modules/base_model.py``) writes the query output token by token, so an early
mistake cannot be revised. The refiner is a *bidirectional* transformer (the same
:class:`~gridlm.modules.transformer.Transformer` with ``causal=False`` and the same positional
encodings) over the serialized example whose query output block holds a draft
(``datamodules/drafts.py``); a 10-way colour head on the draft's cell positions predicts the
correct colour of every cell. At inference it is applied for up to ``n_passes`` passes, each
reading the previous pass's grid, and stops as soon as a pass changes nothing (iterative
refinement of an answer, as in recursive-refinement ARC models such as TRM, Jolicoeur-Martineau
2025, "Less is More: Recursive Reasoning with Tiny Networks").

Training drafts mix two sources per example (a pure function of ``(seed, epoch, index)``):
with probability ``draft_ratio`` the frozen base model's constrained greedy draft
(``AutoregressiveGridModel.decode_batch``), otherwise the target with a synthetic error
(``gridlm.datamodules.drafts.corrupt``: cell flips, a shifted or a recoloured region; a denoising
objective). The loss is cross-entropy over every draft cell.

Wrong-shape drafts: the refiner keeps the draft's shape, so it cannot repair a wrong shape. In
training a base draft whose shape differs from the target's (or that did not finish) is
counted (``train/wrong_shape_drafts``) and replaced by a corrupted target, so every training
row has a per-cell target. In evaluation it is refined as it is, counts as wrong for both
exact matches, is left out of ``val/loss`` and ``val/cells_*``, and is counted in
``val/wrong_shape_drafts``.

Drafts are cached per example: key ``(stage, dataset index, task id, augmentation)``, which
determines the base model's input exactly (the task id because a synthetic stream serves a new
task at the same index every epoch), so each draft is decoded at most once per epoch (validation
drafts once per run: the base model is frozen). Augmented training entries are dropped at the
start of every training epoch; entries without augmentation can recur and are kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric, SumMetric

from gridlm.datamodules.augment import IDENTITY, Augmentation
from gridlm.datamodules.drafts import CORRUPTIONS, CorruptionName, cells_to_grids, corrupt, draft_batch, query_output_start
from gridlm.datamodules.orders import OrderName
from gridlm.datamodules.serialize import grid_token_count
from gridlm.datamodules.tokens import N_COLOURS, VOCAB_SIZE
from gridlm.modules.checkpoints import model_from_checkpoint, read_checkpoint, resolve_checkpoint
from gridlm.modules.base_model import AutoregressiveGridModel, OptimizerFactory, default_optimizer, param_groups
from gridlm.modules.encodings import Positions
from gridlm.modules.encodings.registry import EncodingName
from gridlm.modules.provenance import run_metadata
from gridlm.modules.transformer import MLPName, NormName, Transformer, TransformerConfig

Grid = Optional[np.ndarray]


def load_base_model(path: str, order: str, row_end: bool) -> AutoregressiveGridModel:
    """A frozen base model (eval mode, no gradients) from a Lightning checkpoint of
    ``AutoregressiveGridModel`` (a path, or ``pretrained:<name>`` for shipped weights); its
    serialization must match the refiner's data."""
    path = resolve_checkpoint(path, "model.base_checkpoint")
    if not Path(path).is_file():
        raise FileNotFoundError(f"model.base_checkpoint: no such file {path}")
    try:
        checkpoint = read_checkpoint(path, "model.base_checkpoint")  # one-line errors for files that are not checkpoints
    except ValueError as err:
        raise ValueError(f"model.base_checkpoint: {err}") from None
    hparams = checkpoint.get("hyper_parameters")
    if isinstance(hparams, dict) and "draft_ratio" in hparams:  # the same tensor names and shapes would load silently
        raise ValueError(
            f"model.base_checkpoint: {path} is a RefinementNetwork checkpoint (bidirectional); "
            "pass the AutoregressiveGridModel checkpoint that writes the drafts"
        )
    base = model_from_checkpoint(checkpoint, AutoregressiveGridModel, path, "model.base_checkpoint")
    if (base.order, base.row_end) != (order, row_end):
        raise ValueError(
            f"model.base_checkpoint {path} was trained with order={base.order!r}, row_end={base.row_end}; "
            f"the data here has order={order!r}, row_end={row_end}; use the base model's data block"
        )
    base.eval()
    base.requires_grad_(False)
    return base


def same_grid(a: Grid, b: Grid) -> bool:
    return a is not None and b is not None and a.shape == b.shape and bool((a == b).all())


class RefinementNetwork(L.LightningModule):
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
        corruptions: Sequence[CorruptionName] = CORRUPTIONS,
        corrupt_cell_prob: float = 0.1,
        n_passes: int = 3,
        seed: int = 0,
        grad_clip: Optional[float] = 1.0,
        optimizer: Optional[OptimizerFactory] = None,
    ) -> None:
        """
        Args:
            vocab_size: linked from ``data.vocab_size``.
            max_seq_len: linked from ``data.max_seq_len``; sizes the position tables.
            d_model: residual width.
            n_layers: transformer blocks.
            n_heads: attention heads.
            mlp_ratio: MLP hidden width as a multiple of ``d_model``.
            dropout: dropout probability.
            encoding: positional encoding name, or a list of names to combine.
            norm: ``layernorm`` (GPT-2) or ``rmsnorm`` (Llama). The defaults of ``norm``, ``mlp``
                and ``qk_norm`` are the 0.1 architecture, so older checkpoints (which lack these
                fields) rebuild the same model; the recipe's choices live in the configs.
            mlp: ``gelu`` (GPT-2) or ``swiglu`` (Llama; same parameter count).
            qk_norm: RMSNorm of every head's queries and keys (ViT-22B, OLMo 2).
            order: serialization order (linked from ``data.order``); must match the base model's.
            row_end: ROW_END tokens (linked from ``data.row_end``); must match the base model's.
            base_checkpoint: ``AutoregressiveGridModel`` checkpoint that writes the drafts
                (required when ``draft_ratio > 0`` and for predict; without it validation
                refines corrupted targets).
            draft_ratio: fraction of training drafts taken from the base model; the rest are
                corrupted targets.
            corruptions: synthetic error kinds for corrupted targets (``gridlm.datamodules.drafts.CORRUPTIONS``).
            corrupt_cell_prob: per-cell probability of the ``flip`` corruption.
            n_passes: refinement passes at inference (0: the output is the draft).
            seed: seed of the per-example draft choice and corruption.
            grad_clip: clip the gradient norm to this value (None: no clipping; the trainer's
                ``gradient_clip_val`` wins when set).
            optimizer: optimizer factory; default ``schedulefree.AdamWScheduleFree``.
        """
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer"])
        if not 0.0 <= draft_ratio <= 1.0:
            raise ValueError(f"model.draft_ratio must be in [0, 1], got {draft_ratio}")
        if not 0.0 < corrupt_cell_prob <= 1.0:
            raise ValueError(f"model.corrupt_cell_prob must be in (0, 1], got {corrupt_cell_prob}")
        if n_passes < 0:
            raise ValueError(f"model.n_passes must be >= 0, got {n_passes}")
        bad = [k for k in corruptions if k not in CORRUPTIONS]
        if bad or not corruptions:
            raise ValueError(f"model.corruptions must be a non-empty subset of {list(CORRUPTIONS)}, got {list(corruptions)}")
        if draft_ratio > 0 and base_checkpoint is None:
            raise ValueError(
                f"model.base_checkpoint is required when model.draft_ratio > 0 (got {draft_ratio}); "
                "pass --model.base_checkpoint <base model last.ckpt> or set --model.draft_ratio 0"
            )
        self.cfg = TransformerConfig(
            vocab_size=vocab_size,
            max_seq_len=max_seq_len,
            d_model=d_model,
            n_layers=n_layers,
            n_heads=n_heads,
            mlp_ratio=mlp_ratio,
            dropout=dropout,
            norm=norm,
            mlp=mlp,
            qk_norm=qk_norm,
            encoding=list(encoding) if isinstance(encoding, (list, tuple)) else encoding,
            tie_embeddings=True,  # the colour head reuses the colour embeddings: a copy-the-draft prior at init
            causal=False,
        )
        self.model = Transformer(self.cfg)
        self.optimizer_factory = optimizer or default_optimizer
        self.order, self.row_end, self.max_seq_len = order, row_end, max_seq_len
        self.draft_ratio, self.corruptions, self.corrupt_cell_prob = draft_ratio, tuple(corruptions), corrupt_cell_prob
        self.n_passes, self.seed, self.grad_clip = n_passes, seed, grad_clip
        # the frozen base model is not a submodule: its weights stay out of the refiner's
        # state dict, optimizer and train()/eval() switching
        base = None if base_checkpoint is None else load_base_model(base_checkpoint, order, row_end)
        object.__setattr__(self, "_base", base)
        self.draft_cache: dict[tuple, tuple[Grid, Optional[str]]] = {}  # key -> (grid, reason it is missing)
        self.n_decoded = 0  # examples decoded by the base model (cache misses)
        self.wrong_shape_train = 0  # training base drafts replaced because of a wrong shape
        self.stage_metrics = nn.ModuleDict(
            {
                stage: nn.ModuleDict(
                    {
                        "loss": MeanMetric(),
                        "exact_match_draft": MeanMetric(),
                        "exact_match_refined": MeanMetric(),
                        "cells_fixed": SumMetric(),
                        "cells_broken": SumMetric(),
                        "wrong_shape_drafts": SumMetric(),
                    }
                )
                for stage in ("val", "test")
            }
        )

    @property
    def base(self) -> Optional[AutoregressiveGridModel]:
        """The frozen base model, on the refiner's device."""
        if self._base is not None and self._base.device != self.device:
            self._base.to(self.device)
        return self._base

    # ---------------------------------------------------------------- forward
    def cell_logits(self, inp: dict) -> Tensor:
        """Colour logits ``(N, 10)`` of the draft cells of a :func:`draft_batch` input, in
        ``inp["cells"]`` order (row by row)."""
        T = inp["tokens"].shape[1]
        real = torch.arange(T, device=inp["tokens"].device)[None, :] < inp["lengths"][:, None]  # (B, T)
        positions = Positions.from_batch(inp)
        h = self.model.hidden(inp["tokens"], positions, key_padding_mask=real)  # (B, T, C)
        return F.linear(h[inp["cells"]], self.model.head.weight[:N_COLOURS])  # (N, 10)

    def fits(self, start: int, grid: np.ndarray) -> bool:
        """Whether a row whose query OUTPUT marker is at ``start`` fits ``max_seq_len`` with ``grid``."""
        return start + grid_token_count(*grid.shape, self.row_end) <= self.max_seq_len

    @torch.no_grad()
    def refine(self, batch: dict, drafts: Sequence[Grid], n_passes: Optional[int] = None) -> list[Grid]:
        """Up to ``n_passes`` (default ``self.n_passes``) refinement passes over every row's
        draft; a row stops once a pass leaves it unchanged. Missing drafts stay ``None``; a
        draft too long for ``max_seq_len`` is returned unchanged."""
        n_passes = self.n_passes if n_passes is None else n_passes
        grids = [None if d is None else np.asarray(d, dtype=np.int64) for d in drafts]
        starts = query_output_start(batch)
        active = [i for i, g in enumerate(grids) if g is not None and self.fits(starts[i], g)]
        for _ in range(n_passes):
            if not active:
                break
            inp = draft_batch(_rows(batch, active), [grids[i] for i in active], self.order, self.row_end)
            pred = torch.zeros_like(inp["tokens"])
            pred[inp["cells"]] = self.cell_logits(inp).argmax(-1)
            new = cells_to_grids(pred, inp, [grids[i].shape for i in active])
            changed = [i for i, g in zip(active, new) if not np.array_equal(g, grids[i])]
            for i, g in zip(active, new):
                grids[i] = g
            active = changed
        return grids

    # ---------------------------------------------------------------- drafts
    def base_drafts(self, batch: dict, stage: str, rows: Optional[Sequence[int]] = None) -> list[tuple[Grid, Optional[str]]]:
        """``(grid, reason)`` base-model drafts of the chosen rows, decoded on a cache miss only."""
        if self.base is None:
            raise ValueError("model.base_checkpoint is not set; it is required to draft with the base model")
        rows = list(range(len(batch["meta"]))) if rows is None else list(rows)
        keys = {r: _cache_key(stage, batch["meta"][r]) for r in rows}
        missing = [r for r in rows if keys[r] not in self.draft_cache]
        if missing:
            for r, d in zip(missing, self.base.decode_batch(batch, missing)):
                self.draft_cache[keys[r]] = (d.grid, d.reason)
            self.n_decoded += len(missing)
        return [self.draft_cache[keys[r]] for r in rows]

    def training_drafts(self, batch: dict) -> tuple[list[np.ndarray], int, int]:
        """One draft per row (a base draft with probability ``draft_ratio``, else a corrupted
        target), the number of base drafts used and of wrong-shape base drafts replaced."""
        metas = batch["meta"]
        rngs = [np.random.default_rng([self.seed, self.current_epoch, m["index"]]) for m in metas]
        use_base = [bool(rng.random() < self.draft_ratio) for rng in rngs]
        chosen = [i for i, u in enumerate(use_base) if u]
        from_base = dict(zip(chosen, self.base_drafts(batch, "train", chosen))) if chosen else {}
        drafts, n_base, n_wrong = [], 0, 0
        for i, (m, rng) in enumerate(zip(metas, rngs)):
            target = np.asarray(m["target"])
            if i in from_base:
                grid = from_base[i][0]
                if grid is not None and grid.shape == target.shape:
                    drafts.append(grid)
                    n_base += 1
                    continue
                n_wrong += 1
            drafts.append(corrupt(target, rng, self.corruptions, self.corrupt_cell_prob))
        return drafts, n_base, n_wrong

    def eval_drafts(self, batch: dict, stage: str) -> list[Grid]:
        """Base drafts; without a base model, corrupted targets (fixed per example)."""
        if self.base is not None:
            return [g for g, _ in self.base_drafts(batch, stage)]
        return [
            corrupt(np.asarray(m["target"]), np.random.default_rng([self.seed, m["index"], 1]), self.corruptions, self.corrupt_cell_prob)
            for m in batch["meta"]
        ]

    def on_train_epoch_start(self) -> None:
        # augmented inputs do not recur in the next epoch; un-augmented ones do, keep those
        self.draft_cache = {k: v for k, v in self.draft_cache.items() if k[0] != "train" or k[-1] == _IDENTITY_KEY}

    # ---------------------------------------------------------------- steps
    def cell_targets(self, inp: dict, targets: Sequence[np.ndarray]) -> Tensor:
        """The target colour ``(N,)`` of every draft cell (drafts must have the targets' shapes)."""
        out = []
        for b, target in enumerate(targets):
            m = inp["cells"][b]
            t = torch.as_tensor(np.asarray(target), device=inp["tokens"].device)
            out.append(t[inp["row"][b, m], inp["col"][b, m]])
        return torch.cat(out)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        drafts, n_base, n_wrong = self.training_drafts(batch)
        inp = draft_batch(batch, drafts, self.order, self.row_end)
        targets = self.cell_targets(inp, [m["target"] for m in batch["meta"]])
        loss = F.cross_entropy(self.cell_logits(inp).float(), targets)
        B = len(drafts)
        self.wrong_shape_train += n_wrong
        self.log("train/loss", loss, on_step=True, prog_bar=True, batch_size=B)
        self.log("train/base_draft_fraction", n_base / B, on_step=True, batch_size=B)
        self.log("train/wrong_shape_drafts", float(self.wrong_shape_train), on_step=True, batch_size=B)
        return loss

    def _eval_step(self, batch: dict, stage: str) -> None:
        m = self.stage_metrics[stage]
        targets = [np.asarray(meta["target"]) for meta in batch["meta"]]
        drafts = self.eval_drafts(batch, stage)
        refined = self.refine(batch, drafts)
        starts = query_output_start(batch)
        same_shape = [i for i, (d, t) in enumerate(zip(drafts, targets)) if d is not None and d.shape == t.shape]
        fixed = broken = 0
        for i in same_shape:
            d, r, t = drafts[i], refined[i], targets[i]
            fixed += int(((d != t) & (r == t)).sum())
            broken += int(((d == t) & (r != t)).sum())
        dev = self.device
        m["exact_match_draft"].update(torch.tensor([float(same_grid(d, t)) for d, t in zip(drafts, targets)], device=dev))
        m["exact_match_refined"].update(torch.tensor([float(same_grid(r, t)) for r, t in zip(refined, targets)], device=dev))
        m["cells_fixed"].update(torch.tensor(float(fixed), device=dev))
        m["cells_broken"].update(torch.tensor(float(broken), device=dev))
        m["wrong_shape_drafts"].update(torch.tensor(float(len(targets) - len(same_shape)), device=dev))
        scored = [i for i in same_shape if self.fits(starts[i], drafts[i])]
        if scored:
            inp = draft_batch(_rows(batch, scored), [drafts[i] for i in scored], self.order, self.row_end)
            losses = F.cross_entropy(self.cell_logits(inp).float(), self.cell_targets(inp, [targets[i] for i in scored]), reduction="none")
            m["loss"].update(losses)
        B = len(targets)
        for name, metric in m.items():
            self.log(f"{stage}/{name}", metric, on_epoch=True, prog_bar=name.startswith("exact"), batch_size=B)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def panel_grids(self, batch: dict, rows: Sequence[int]) -> list[tuple[list[tuple[str, object]], str]]:
        """Per row, the labelled grids of a picture (input, target, draft, refined) and a caption;
        ``WandbTracking`` draws them. Drafts come from the validation cache."""
        sub = _rows(batch, rows)
        drafts = self.eval_drafts(sub, "val")
        refined = self.refine(sub, drafts)
        out = []
        for meta, d, g in zip(sub["meta"], drafts, refined):
            grids = [("input", meta["query_input"]), ("target", meta["target"]), ("draft", d), ("refined", g)]
            verdict = "refined ok" if same_grid(g, np.asarray(meta["target"])) else "refined wrong"
            out.append((grids, f"{meta['task_id']} test {meta['query']}: {verdict}"))
        return out

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        """Draft with the base model, refine; rows as ``AutoregressiveGridModel.predict_step``
        with ``attempts = [refined, draft]`` (the draft only when it differs)."""
        if self.base is None:
            raise ValueError("model.base_checkpoint is required for predict: the refiner refines the base model's drafts")
        drafts = self.base_drafts(batch, "predict")
        refined = self.refine(batch, [g for g, _ in drafts])
        out = []
        for meta, (draft, reason), grid in zip(batch["meta"], drafts, refined):
            aug = Augmentation(*meta["augmentation"])
            attempts = [None if grid is None else aug.invert(grid).tolist()]
            if draft is not None and not same_grid(draft, grid):
                attempts.append(aug.invert(draft).tolist())
            out.append({"task_id": meta["task_id"], "test_index": meta["query"], "attempts": attempts, "reason": reason})
        return out

    # ---------------------------------------------------------------- optim / checkpoints
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(param_groups(self.model))

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        clip = gradient_clip_val if gradient_clip_val is not None else self.grad_clip
        if clip:
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm=gradient_clip_algorithm or "norm")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["gridlm"] = run_metadata(getattr(self, "resolved_config", None))


_IDENTITY_KEY = (IDENTITY.dihedral, tuple(IDENTITY.colour_perm))


def _cache_key(stage: str, meta: dict) -> tuple:
    dihedral, perm = meta.get("augmentation", (IDENTITY.dihedral, IDENTITY.colour_perm))
    return (stage, int(meta["index"]), meta.get("task_id"), (int(dihedral), tuple(int(c) for c in perm)))


def _rows(batch: dict, rows: Sequence[int]) -> dict:
    """The chosen rows of a collated batch (tensors indexed, ``meta`` picked)."""
    idx = torch.tensor(list(rows), device=batch["tokens"].device)
    out = {k: v[idx] for k, v in batch.items() if isinstance(v, Tensor)}
    out["meta"] = [batch["meta"][r] for r in rows]
    return out
