"""``AutoregressiveGridModel``: next-token training on serialized grid tasks, greedy decoding.

Training minimises cross-entropy on the supervised positions (``target_mask``, see
``gridlm.datamodules.tokens``). Validation logs ``val/loss`` (nats per supervised token of the held-out
query outputs; the demonstrations in the context are often training pairs), ``val/cell_acc``
(teacher-forced accuracy on the query-output cells) and ``val/exact_match`` (free-running greedy
decoding of the query output, constrained to the grid grammar, over every validation example
unless ``n_generate`` caps it; ``val/n_exact`` / ``val/n_decoded`` are the counts), and keeps one row per example (``eval_examples``:
task, test index, loss, exact match or None if not decoded; ``gridlm.modules.eval_examples``).
With ``n_votes > 1`` those examples are also solved under augmentation voting
(``gridlm.modules.voting``) and ``val/pass1``/``val/pass2`` are logged; ``predict`` then writes
the top two voted grids, optionally after per-task test-time training (``ttt_steps``,
``gridlm.modules.ttt``).
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Callable, Iterable, Optional, Sequence, Union

import lightning as L
import schedulefree
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics import MeanMetric, SumMetric

from gridlm.datamodules.augment import Augmentation
from gridlm.datamodules.batching import split_batch
from gridlm.datamodules.orders import OrderName
from gridlm.datamodules.tokens import ROLE_TEST_OUTPUT, VOCAB_SIZE
from gridlm.modules.checkpoints import load_weights
from gridlm.modules.decoding import Decoded
from gridlm.modules.encodings import Positions
from gridlm.modules.inference import CompileMode, DecodeEngine, EngineConfig
from gridlm.modules.encodings.registry import EncodingName
from gridlm.modules.eval_examples import example_rows
from gridlm.modules.provenance import run_metadata
from gridlm.modules.ttt import TTTConfig, adapted
from gridlm.modules.voting import VotingConfig, batch_prompts, prompt_lengths, vote
from gridlm.modules.transformer import InputAttention, MLPName, NormName, Transformer, TransformerConfig

OptimizerFactory = Callable[[Iterable], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]


class NonFiniteLossError(RuntimeError):
    """Raised after ``max_consecutive_nonfinite`` non-finite losses in a row."""


def default_optimizer(params: Iterable) -> torch.optim.Optimizer:
    """AdamWScheduleFree (Defazio et al. 2024) with a short warmup: no learning-rate schedule to tune."""
    return schedulefree.AdamWScheduleFree(params, lr=3e-3, warmup_steps=50, weight_decay=0.0)


def positions_of(batch: dict) -> Positions:
    return Positions.from_batch(batch)


def param_groups(module: nn.Module, weight_decay: float | None = None) -> list[dict]:
    """Weight decay on matrices of Linear layers only (not on embeddings, norms, biases).
    ``named_parameters`` yields a tied parameter once, so the optimizer sees it once."""
    decay, no_decay = [], []
    linear_weights = {id(m.weight) for m in module.modules() if isinstance(m, nn.Linear)}
    embed_weights = {id(m.weight) for m in module.modules() if isinstance(m, nn.Embedding)}
    for _, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (decay if id(p) in linear_weights and id(p) not in embed_weights else no_decay).append(p)
    groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
    if weight_decay is not None:
        groups[0]["weight_decay"] = weight_decay
    return [g for g in groups if g["params"]]


class AutoregressiveGridModel(L.LightningModule):
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
        input_attention: InputAttention = "causal",
        tie_embeddings: bool = True,
        order: OrderName = "row_major",
        row_end: bool = False,
        n_generate: Optional[int] = None,
        n_votes: int = 1,
        vote_colours: bool = True,
        vote_keep_zero: bool = True,
        ttt_steps: int = 0,
        ttt_lr: float = 1e-4,
        ttt_batch_size: int = 8,
        ttt_augment: bool = True,
        decode_compile: CompileMode = "auto",
        compile: bool = False,
        grad_clip: Optional[float] = 1.0,
        micro_batch_size: Optional[int] = None,
        skip_nonfinite: bool = True,
        max_consecutive_nonfinite: int = 10,
        optimizer: Optional[OptimizerFactory] = None,
        lr_scheduler: Optional[SchedulerFactory] = None,
        init_from: Optional[str] = None,
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
            input_attention: ``bidirectional``: every token of an input grid attends to its whole grid
                (outputs stay causal; needs a target policy that never supervises inputs).
            tie_embeddings: share the token embedding and the output head.
            order: serialization order (linked from ``data.order``), used when decoding.
            row_end: ROW_END tokens (linked from ``data.row_end``), used when decoding.
            n_generate: validation examples decoded per validation for ``val/exact_match``;
                None (default): every one, so ``val/exact_match`` is over the whole validation set.
                A number caps decoding at the first ones in loader order (the shortest), in total
                over devices (each of W devices decodes its first ``n_generate / W``; 0: none).
                ``val/n_exact`` and ``val/n_decoded`` log the counts behind the fraction.
            n_votes: augmentations each decoded test input is solved under (``gridlm.modules.voting``);
                1 = plain greedy decoding. Above 1, validation also logs ``val/pass1`` and
                ``val/pass2`` and ``predict`` writes the top two voted grids as the two attempts.
            vote_colours: voting augmentations also permute colours (else dihedral only).
            vote_keep_zero: colour permutations keep colour 0 (background) fixed.
            ttt_steps: ``predict`` fine-tunes a copy of the weights for this many AdamW steps on
                each task's augmented leave-one-out demonstrations first (``gridlm.modules.ttt``; 0: off).
            ttt_lr: test-time training learning rate.
            ttt_batch_size: leave-one-out examples per test-time training step.
            ttt_augment: random dihedral transforms and colour permutations during test-time training.
            decode_compile: when the decode engine (``gridlm.modules.inference``) runs its step under
                ``torch.compile``: ``auto`` once it has decoded 20,000 steps eagerly (compiling costs
                tens of seconds on a CPU: a short validation decode never pays it back, a whole
                ``predict`` does), ``always``, or ``never``. Tokens are the same either way.
            compile: ``torch.compile`` the training forward (and so its backward), with dynamic
                shapes so that bucketed batches of every length share one graph. Off by default:
                ``compile_train_speedup`` in docs/benchmarks.md measures what it gains on this CPU.
            grad_clip: clip the gradient norm to this value (None: no clipping).
            micro_batch_size: rows per forward/backward inside a step (None: the whole batch);
                set by ``MemoryAwareBatchSize`` and halved on out-of-memory errors.
            skip_nonfinite: skip (and count) an optimizer step whose loss is NaN/inf.
            max_consecutive_nonfinite: stop training after this many non-finite steps in a row.
            optimizer: optimizer factory; default ``schedulefree.AdamWScheduleFree``.
            lr_scheduler: learning-rate scheduler factory (e.g. ``torch.optim.lr_scheduler.OneCycleLR``
                for warmup + cosine with ``torch.optim.AdamW``), stepped after every optimizer step;
                None: constant rate (schedule-free optimizers need none).
            init_from: ``fit`` starts from the weights of this checkpoint (a path, or
                ``pretrained:<name>`` for weights shipped with gridlm, e.g. ``pretrained:quickstart``):
                weights only, with a fresh optimizer, step 0 and fresh callback states
                (``gridlm.modules.checkpoints.load_weights``; the architecture must match).
                Ignored when ``fit --ckpt_path`` resumes a run (its weights win).
        """
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        if isinstance(encoding, (list, tuple)):
            encoding = list(encoding)
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
            input_attention=input_attention,
            encoding=encoding,
            tie_embeddings=tie_embeddings,
        )
        if n_generate is not None and (isinstance(n_generate, bool) or n_generate < 0):
            raise ValueError(f"model.n_generate must be >= 0 or null (decode every validation example), got {n_generate!r}")
        if micro_batch_size is not None and micro_batch_size < 1:
            raise ValueError(f"model.micro_batch_size must be >= 1 or null, got {micro_batch_size}")
        if max_consecutive_nonfinite < 1:
            raise ValueError(f"model.max_consecutive_nonfinite must be >= 1, got {max_consecutive_nonfinite}")
        self.automatic_optimization = False  # micro-batching, OOM retry and the non-finite guard live in training_step
        self.grad_clip, self.micro_batch_size = grad_clip, micro_batch_size
        self.skip_nonfinite, self.max_consecutive_nonfinite = skip_nonfinite, max_consecutive_nonfinite
        self.skipped_steps = self.consecutive_nonfinite = self.oom_events = 0
        self._n_decoded, self._decode_budget = 0, _budget(n_generate)  # examples decoded / to decode in the current validation
        self.model = Transformer(self.cfg)
        self.optimizer_factory = optimizer or default_optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.order, self.row_end, self.n_generate = order, row_end, n_generate
        self.init_from = init_from
        self.voting = VotingConfig(n_votes=n_votes, colours=vote_colours, keep_zero=vote_keep_zero)
        self.ttt = TTTConfig(steps=ttt_steps, lr=ttt_lr, batch_size=ttt_batch_size, augment=ttt_augment)
        self.engine = DecodeEngine(EngineConfig(compile=decode_compile))
        self.compile_training = compile
        self._compiled_forward = None  # torch.compile(self.model.forward), made at the first training step
        self._compile_checked = False  # the compiled forward ran once (compiled) without failing
        self.train_loss = MeanMetric()
        self.stage_metrics = nn.ModuleDict(
            {
                stage: nn.ModuleDict(
                    {k: MeanMetric() for k in ("loss", "cell_acc", "exact_match", "pass1", "pass2")}
                    | {k: SumMetric() for k in ("n_exact", "n_decoded")}
                )
                for stage in ("val", "test")
            }
        )
        self.last_predictions: list[dict] = []
        self.eval_examples: list[dict] = []  # this device's per-example rows of the current validation/test

    # ---------------------------------------------------------------- losses
    def token_losses(self, batch: dict) -> tuple[Tensor, Tensor, Tensor]:
        """Per-target losses ``(N,)``, their roles ``(N,)``, and logits ``(B, T-1, V)`` at every
        position (logits[:, t] predicts token t+1)."""
        logits = self._train_forward(batch["tokens"], positions_of(batch))  # (B, T, V)
        logits = logits[:, :-1]
        mask = batch["target_mask"][:, 1:]  # (B, T-1)
        targets = batch["tokens"][:, 1:][mask]  # (N,)
        losses = F.cross_entropy(logits[mask].float(), targets, reduction="none")  # (N,)
        return losses, batch["role"][:, 1:][mask], logits

    def _train_forward(self, tokens: Tensor, positions: Positions) -> Tensor:
        """The model's forward; compiled while training with ``compile=True`` (validation and
        decoding stay eager: other shapes and grad modes would each compile again)."""
        if not (self.compile_training and self.training and torch.is_grad_enabled()):
            return self.model(tokens, positions)
        if self._compiled_forward is None:
            self._compiled_forward = torch.compile(self.model.forward, dynamic=True)
        if self._compile_checked:
            return self._compiled_forward(tokens, positions)
        try:  # the first call compiles: a compiler that fails there leaves training eager, with one notice
            logits = self._compiled_forward(tokens, positions)
        except (torch.OutOfMemoryError, ValueError, TypeError):
            raise  # the batch's defect or size, not the compiler's (micro-batching halves on OOM)
        except Exception as err:  # noqa: BLE001 -- whatever the compiler raised
            first = (str(err).strip().splitlines() or [""])[0][:200]
            warnings.warn(f"model.compile: torch.compile failed ({type(err).__name__}: {first}); training eagerly", RuntimeWarning, stacklevel=2)
            self.compile_training = False
            return self.model(tokens, positions)
        self._compile_checked = True
        return logits

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        """One optimizer step over ``batch`` (the effective batch), accumulated over micro-batches
        of ``micro_batch_size`` rows. An out-of-memory error halves the micro-batch and re-runs
        the whole step's data, so no example is lost or counted twice."""
        opt = self.optimizers()
        B, T = batch["tokens"].shape
        n_targets = batch["target_mask"][:, 1:].sum().clamp_min(1)  # stays on device
        while True:
            try:
                loss, losses, roles = self._forward_backward(batch, n_targets)
                break
            except torch.OutOfMemoryError as err:
                opt.zero_grad(set_to_none=True)
                if not self.shrink_micro_batch(B):
                    raise MemoryError(
                        f"out of memory with a micro-batch of 1 sequence of {T} tokens; lower data.max_seq_len or the model size"
                    ) from err
        finite = not self.skip_nonfinite or bool(torch.isfinite(loss))  # one host sync per step
        if self.skip_nonfinite and self._trainer is not None and self.trainer.world_size > 1:
            # gradients are all-reduced: every rank must skip (and stop) together, or the finite
            # ranks would step with NaN gradients and a lone rank would raise and hang the others
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if not finite:
            opt.zero_grad(set_to_none=True)
            self.skipped_steps += 1
            self.consecutive_nonfinite += 1
            self.log("train/skipped_steps", float(self.skipped_steps), on_step=True, batch_size=B)
            if self.consecutive_nonfinite >= self.max_consecutive_nonfinite:
                raise NonFiniteLossError(
                    f"{self.consecutive_nonfinite} consecutive non-finite losses (model.max_consecutive_nonfinite="
                    f"{self.max_consecutive_nonfinite}); stopping. Lower the learning rate or check the data."
                )
            return loss.detach()
        self.consecutive_nonfinite = 0
        if self.grad_clip:
            self.clip_gradients(opt, gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm")
        opt.step()
        opt.zero_grad(set_to_none=True)
        if (sched := self.lr_schedulers()) is not None:  # manual optimization: Lightning does not step it
            sched.step()
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=B)
        self.train_loss(loss.detach(), losses.numel())
        self.log("train/loss_epoch", self.train_loss, on_step=False, on_epoch=True, batch_size=B)
        pad = 1.0 - batch["lengths"].sum() / (B * T)
        self.log("train/pad_fraction", pad.float(), on_step=True, on_epoch=False, batch_size=B)
        self._last_losses = (losses, roles)  # read by the LossLogging callback
        return loss.detach()

    def _forward_backward(self, batch: dict, n_targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Forward and backward over the micro-batches; gradients sum to those of the mean loss
        over every supervised token of the batch. Returns the loss and per-token losses/roles."""
        size = self.micro_batch_size or batch["tokens"].shape[0]
        total, all_losses, all_roles = 0.0, [], []
        parts = list(split_batch(batch, size))
        for i, part in enumerate(parts):
            losses, roles, _ = self.token_losses(part)
            part_loss = losses.sum() / n_targets
            # under DDP only the last backward all-reduces: one collective per step on every rank,
            # however many micro-batches each rank needs (a partial batch, a halved micro-batch)
            with self._gradient_sync(last=i == len(parts) - 1):
                self.manual_backward(part_loss)
            total = total + part_loss.detach()
            all_losses.append(losses.detach())
            all_roles.append(roles)
        return torch.as_tensor(total), torch.cat(all_losses), torch.cat(all_roles)

    def _gradient_sync(self, last: bool):
        """No gradient all-reduce for this backward unless ``last`` (DDP's ``no_sync`` through the
        strategy); a no-op on one device."""
        strategy = self._trainer.strategy if self._trainer is not None else None
        if last or not hasattr(strategy, "block_backward_sync"):
            return contextlib.nullcontext()
        return strategy.block_backward_sync()

    def shrink_micro_batch(self, batch_rows: int) -> bool:
        """Halve the micro-batch after an out-of-memory error; False when it is already 1."""
        current = self.micro_batch_size or batch_rows
        if current <= 1:
            return False
        self.micro_batch_size = max(1, (current + 1) // 2)
        self.oom_events += 1
        return True

    def _eval_step(self, batch: dict, stage: str) -> None:
        m = self.stage_metrics[stage]
        losses, roles, logits = self.token_losses(batch)
        B = batch["tokens"].shape[0]
        # the held-out query outputs only: the demonstrations in the context are often training pairs
        query = roles == ROLE_TEST_OUTPUT
        if bool(query.any()):
            m["loss"].update(losses[query])
        cells = (batch["role"][:, 1:] == ROLE_TEST_OUTPUT) & (batch["row"][:, 1:] >= 0)  # (B, T-1)
        correct = (logits.argmax(-1) == batch["tokens"][:, 1:])[cells].float()
        if correct.numel():
            m["cell_acc"].update(correct)
        self.log(f"{stage}/loss", m["loss"], on_epoch=True, prog_bar=True, batch_size=B)
        self.log(f"{stage}/cell_acc", m["cell_acc"], on_epoch=True, prog_bar=True, batch_size=B)
        # the first n_generate examples in loader order (validation batches are sorted by length,
        # and limit_val_batches keeps only the first ones: choosing by dataset index decoded fewer)
        chosen = list(range(max(0, min(B, self._decode_budget - self._n_decoded))))
        self._n_decoded += len(chosen)
        hits: list[float] = []
        if chosen and self.voting.n_votes > 1:
            # the first vote is the identity augmentation: its decode is the plain greedy one
            results = vote(self.model, batch_prompts(batch, chosen, self.order, self.row_end), self.order, self.row_end, self.voting, self.engine)
            targets = [batch["meta"][i]["target"] for i in chosen]
            greedy = [r.decoded[0][1].grid if r.decoded and r.decoded[0][0].is_identity else None for r in results]
            hits = [float(_same(g, t)) for g, t in zip(greedy, targets)]
            top = [[float(_same(g, t)) for g in r.attempts(2)] + [0.0, 0.0] for r, t in zip(results, targets)]
            m["pass1"].update(torch.tensor([h[0] for h in top], device=self.device))
            m["pass2"].update(torch.tensor([max(h[:2]) for h in top], device=self.device))
            m["exact_match"].update(torch.tensor(hits, device=self.device))
        elif chosen:
            decoded = self.decode_batch(batch, chosen)
            hits = [float(d.grid is not None and _same(d.grid, batch["meta"][i]["target"])) for i, d in zip(chosen, decoded)]
            m["exact_match"].update(torch.tensor(hits, device=self.device))
        self.eval_examples += example_rows(batch, losses, dict(zip(chosen, hits)))  # written by ValExamples
        if self._decode_budget > 0:
            m["n_exact"].update(sum(hits))
            m["n_decoded"].update(len(hits))
            self.log(f"{stage}/exact_match", m["exact_match"], on_epoch=True, prog_bar=True, batch_size=B)
            self.log(f"{stage}/n_exact", m["n_exact"], on_epoch=True, batch_size=B)
            self.log(f"{stage}/n_decoded", m["n_decoded"], on_epoch=True, batch_size=B)
        if self._decode_budget > 0 and self.voting.n_votes > 1:
            self.log(f"{stage}/pass1", m["pass1"], on_epoch=True, batch_size=B)
            self.log(f"{stage}/pass2", m["pass2"], on_epoch=True, prog_bar=True, batch_size=B)

    def on_fit_start(self) -> None:
        if self.init_from and not self.trainer.ckpt_path:  # a resumed run already has its own weights
            loaded = load_weights(self, self.init_from, "--model.init_from")
            rank_zero_info(f"gridlm fit: weights from {self.init_from} ({loaded['path']}, trained {loaded['global_step']} steps); optimizer and step start afresh")
        policy = getattr(self.trainer.datamodule, "target_policy", None) if self._trainer is not None else None
        if self.cfg.input_attention == "bidirectional" and policy == "all":
            raise ValueError(
                "model.input_attention=bidirectional lets input-grid tokens see their whole grid, so they cannot be "
                "next-token targets: data.target_policy 'all' supervises them; use all_outputs or test_output"
            )

    def on_validation_epoch_start(self) -> None:
        self._start_decoding()

    def on_test_epoch_start(self) -> None:
        self._start_decoding()

    def _start_decoding(self) -> None:
        """This device's share of ``n_generate`` (devices see interleaved batches of the same
        length-sorted order, so together they decode about the examples one device would)."""
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self._trainer is not None else (1, 0)
        n = _budget(self.n_generate)
        self._decode_budget = n if n == _ALL else n // world + (rank < n % world)
        self._n_decoded = 0  # examples decoded for exact match in this validation (this device)
        self.eval_examples = []

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    # ---------------------------------------------------------------- decoding
    def decode_batch(self, batch: dict, rows: Sequence[int] | None = None) -> list[Decoded]:
        """Greedy-decode the query output of the chosen rows of a batch, all in one call of the
        decode engine: each row's prompt runs up to and including its query's OUTPUT marker
        (prompts of different lengths decode together)."""
        rows = list(range(batch["tokens"].shape[0])) if rows is None else list(rows)
        if not rows:
            return []
        lengths = prompt_lengths(batch)
        width = max(lengths[r] for r in rows)
        idx = torch.tensor(rows, device=batch["tokens"].device)
        pos = positions_of(batch).map(lambda t: t[idx, :width])
        return self.engine.generate(self.model, batch["tokens"][idx, :width], pos, [lengths[r] for r in rows], self.order, self.row_end)

    @torch.no_grad()
    def panel_grids(self, batch: dict, rows: Sequence[int]) -> list[tuple[list[tuple[str, object]], str]]:
        """Per row, the labelled grids of a picture (input, target, greedy prediction) and a caption;
        ``WandbTracking`` draws them."""
        out = []
        for r, d in zip(rows, self.decode_batch(batch, rows)):
            meta = batch["meta"][r]
            grids = [("input", meta["query_input"]), ("target", meta["target"]), ("prediction", d.grid)]
            out.append((grids, f"{meta['task_id']} test {meta['query']}: {d.reason or 'ok'}"))
        return out

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        """Rows ``{task_id, test_index, attempts, reason}``: with ``n_votes > 1`` the top two
        voted grids, else the greedy grid. With ``ttt_steps > 0`` each task's rows are decoded
        by weights adapted to that task's demonstrations (read back from the prompt) and the
        base weights are restored before the next task. A task split across two batches is
        adapted once per batch, identically (the draws are seeded by the task id)."""
        metas = batch["meta"]
        groups: dict[str, list[int]] = {}  # task id -> its rows in this batch (insertion ordered)
        for i, meta in enumerate(metas):
            groups.setdefault(meta["task_id"], []).append(i)
        attempts: dict[int, list] = {}
        reasons: dict[int, str | None] = {}
        if self.ttt.steps > 0:  # each task decoded by its own adapted weights
            for task_id, rows in groups.items():
                demos = batch_prompts(batch, rows[:1], self.order, self.row_end)[0][0]
                with adapted(self.model, demos, self.order, self.row_end, self.ttt, key=task_id):
                    self._predict_rows(batch, rows, attempts, reasons)
        else:  # every test input of the batch (and every augmentation) in one decode call
            self._predict_rows(batch, list(range(len(metas))), attempts, reasons)
        out = []
        for i, meta in enumerate(metas):
            aug = Augmentation(*meta["augmentation"])
            grids = [aug.invert(g).tolist() for g in attempts[i]] or [None]
            out.append({"task_id": meta["task_id"], "test_index": meta["query"], "attempts": grids, "reason": reasons[i]})
        return out

    def _predict_rows(self, batch: dict, rows: list[int], attempts: dict, reasons: dict) -> None:
        """Fill ``attempts[row]`` (grids in the prompt's frame, best first) and ``reasons[row]``."""
        if self.voting.n_votes > 1:
            results = vote(self.model, batch_prompts(batch, rows, self.order, self.row_end), self.order, self.row_end, self.voting, self.engine)
            for r, res in zip(rows, results):
                attempts[r], reasons[r] = res.attempts(2), res.reason
        else:
            for r, d in zip(rows, self.decode_batch(batch, rows)):
                attempts[r], reasons[r] = ([] if d.grid is None else [d.grid]), d.reason

    # ---------------------------------------------------------------- optim / checkpoints
    def configure_optimizers(self):
        opt = self.optimizer_factory(param_groups(self.model))
        if self.lr_scheduler_factory is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.lr_scheduler_factory(opt), "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["gridlm"] = run_metadata(getattr(self, "resolved_config", None))


_ALL = 2**62  # n_generate None: no cap on the examples decoded


def _budget(n_generate: Optional[int]) -> int:
    return _ALL if n_generate is None else n_generate


def _same(a, b) -> bool:
    if a is None or b is None:
        return False
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    return a.shape == b.shape and bool((a == b).all())
