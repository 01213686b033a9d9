"""``GridFSDPStrategy``: Fully Sharded Data Parallel for gridlm models, on GPUs and on CPU.

FSDP (Zhao et al. 2023, "PyTorch FSDP: Experiences on Scaling Fully Sharded Data Parallel")
keeps 1/W of every weight, gradient and optimizer state on each of W devices and gathers a
layer's weights just before it runs. ``gridlm fit --trainer.strategy fsdp`` uses this strategy
(the CLI maps the name here); Lightning's ``FSDPStrategy`` is the base. What it changes:

- **what is sharded**: every transformer ``Block`` is an FSDP unit sharded by
  ``sharding_strategy``, so only one block's full weights exist at a time. Each ``Transformer``
  inside the LightningModule (the base model's and the refiner's ``self.model``) is the FSDP root
  around its blocks; the root's own weights (embeddings, which the output head shares, final
  norm, position tables: small next to the blocks with a vocabulary of ~80 tokens) are
  replicated (``NO_SHARD``): small, and used by several calls per step (the refiner's passes and
  readouts). Lightning would wrap the whole LightningModule and run ``training_step`` inside the
  wrapper's forward, where the base model's manual (micro-batched) backward fails an FSDP state
  check. Calls of ``Transformer.hidden`` and ``Transformer.embedding_logits`` (the refiner) are
  routed through the root's forward, which gathers and synchronises like a forward call. Every
  weight of a root must be read inside such a call: FSDP (``use_orig_params``) computes in
  forward with views of the unit's flat parameter, but outside a forward the module holds the
  original ``Parameter``; the gradient of a read there lands on that parameter, outside the flat
  gradient FSDP averages, and is overwritten when FSDP sets the averaged gradient's views. (With
  one refinement pass it was written back in time by accident of the backward's order; with
  several, every pass's readout gradient of the embeddings was lost: losses ~0.2 % off DDP's
  after 6 steps.) Such a read stops the first backward with an error naming the weight. Small
  trainable modules beside the transformers (the refiner's ``latent_in`` and ``halt_head``) are
  replicated roots of their own;
  a trainable parameter of the LightningModule itself would not be synchronised: refused at setup.
- **evaluation on a full copy**: greedy decoding runs a different number of forward passes on
  each rank (one per generated token), and every sharded forward is a collective that all
  ranks must join (unequal counts hang). So validation, test and predict run on plain copies of
  the transformers, gathered on every rank when evaluation starts and dropped when training
  resumes or a checkpoint is written; their weights must fit one device.
- **CPU**: Lightning accepts FSDP only with ``accelerator="cuda"`` and gives FSDP no device on
  CPU, where FSDP then refuses to start. torch's FSDP runs on CPU over gloo when it is given
  ``device_id=cpu``; this strategy does that, so multi-process FSDP is tested on CPU.
- **gradient clipping by norm**: Lightning's ``FSDPPrecision`` raises for it; here one norm over
  every FSDP root and all shards (each root's ``clip_grad_norm_``, a collective), as DDP clips.

Checkpoints: ``state_dict_type="full"`` (default) writes one ordinary Lightning file, gathered
on rank 0, that loads anywhere (one process, DDP, FSDP on another device count);
``"sharded"`` writes a folder of per-rank shards (``torch.distributed.checkpoint``) and
``meta.pt``, loaded by FSDP on any device count, or by one process after
``python -m lightning.pytorch.utilities.consolidate_checkpoint <folder>``. FSDP writes its
checkpoints itself, not through the project's ``AtomicCheckpointIO``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import warnings
from typing import Any, Iterator, Literal, Optional

import torch
from lightning.pytorch.plugins.precision import FSDPPrecision
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.strategies.strategy import _ForwardRedirection
from torch import nn

from gridlm.modules.transformer import Block, Transformer

ShardingName = Literal["FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD"]
# Transformer methods other modules call, run inside the FSDP root's forward (module docstring)
ROUTED_METHODS = ("hidden", "embedding_logits")


class GridFSDPPrecision(FSDPPrecision):
    """``FSDPPrecision`` that clips by the global gradient norm (over every rank's shard)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.roots: list[nn.Module] = []  # the FSDP roots, set by the strategy

    def clip_grad_by_norm(self, optimizer: Any, clip_val: float) -> None:
        if not self.roots:
            raise RuntimeError("GridFSDPPrecision: no FSDP module to clip (GridFSDPStrategy sets them up)")
        # one norm over every root (and every rank's shard), as DDP clips all weights together
        norms = [root.clip_grad_norm_(math.inf) for root in self.roots]  # max_norm inf: measures, clips nothing
        total = torch.linalg.vector_norm(torch.stack([n.detach().float().cpu() for n in norms]))
        scale = min(1.0, clip_val / (float(total) + 1e-6))
        if scale < 1.0:
            for root in self.roots:
                for p in root.parameters():
                    if p.grad is not None:
                        p.grad.mul_(scale)


class GridFSDPStrategy(FSDPStrategy):
    """FSDP over the transformer blocks of a gridlm model (see the module docstring)."""

    strategy_name = "fsdp"

    def __init__(
        self,
        state_dict_type: Literal["full", "sharded"] = "full",
        sharding_strategy: ShardingName = "FULL_SHARD",
        activation_checkpointing: bool = False,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            state_dict_type: ``full``: one checkpoint file, gathered on rank 0 (loads anywhere);
                ``sharded``: a folder with one shard per rank (less memory and time to save).
            sharding_strategy: how each block is split: ``FULL_SHARD`` (weights, gradients and
                optimizer state: least memory), ``SHARD_GRAD_OP`` (weights stay gathered from forward
                to backward: less communication), ``NO_SHARD`` (replicated, as DDP).
            activation_checkpointing: recompute each block's activations in the backward pass
                (less activation memory, one more forward per block).
            **kwargs: further arguments of Lightning's ``FSDPStrategy`` and torch's FSDP
                (``auto_wrap_policy`` is ignored: the blocks are the units).
        """
        if activation_checkpointing:
            kwargs.setdefault("activation_checkpointing_policy", {Block})
        kwargs.pop("auto_wrap_policy", None)
        super().__init__(state_dict_type=state_dict_type, sharding_strategy=sharding_strategy, **kwargs)
        self._roots: list[tuple[str, nn.Module]] = []  # (attribute path in the LightningModule, FSDP root)
        self._templates: dict[str, nn.Module] = {}  # plain copies of the small non-transformer roots
        self._copies_in_use = False
        self._watch_handles: list[Any] = []  # hooks of _watch_reads_outside_forward

    # ------------------------------------------------------------------ precision plugin
    @property
    def precision_plugin(self) -> GridFSDPPrecision:
        plugin = self._precision_plugin
        return plugin if plugin is not None else GridFSDPPrecision("32-true")

    @precision_plugin.setter
    def precision_plugin(self, plugin: Optional[FSDPPrecision]) -> None:
        if plugin is not None and not isinstance(plugin, GridFSDPPrecision):
            if not isinstance(plugin, FSDPPrecision):
                raise TypeError(f"GridFSDPStrategy needs an FSDPPrecision plugin, got {type(plugin).__name__}")
            plugin = GridFSDPPrecision(plugin.precision, plugin.scaler)
        self._precision_plugin = plugin

    # ------------------------------------------------------------------ wrapping
    def _setup_model(self, model: nn.Module) -> nn.Module:
        """Wrap every ``Transformer`` submodule (each block an FSDP unit); refuse trainable
        parameters outside them."""
        from lightning.fabric.strategies.fsdp import _move_torchmetrics_to_device, _setup_activation_checkpointing
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp import ShardingStrategy

        targets = [(name, m) for name, m in model.named_modules() if isinstance(m, Transformer)]
        if not targets:
            raise ValueError(f"--trainer.strategy fsdp: {type(model).__name__} holds no gridlm Transformer to shard")
        self._roots, self._templates = [], {}
        # device_id: also a CPU device (FSDP then runs its collectives over gloo)
        common = dict(cpu_offload=self.cpu_offload, mixed_precision=self.mixed_precision_config, device_id=self.root_device, **self.kwargs)
        for name, module in targets:
            for i, block in enumerate(module.blocks):
                module.blocks[i] = FSDP(block, sharding_strategy=self.sharding_strategy, **common)
            root = FSDP(module, sharding_strategy=ShardingStrategy.NO_SHARD, **common)
            # the refiner's calls (Transformer.hidden, .embedding_logits) through the wrapper's forward
            redirect = _ForwardRedirection()
            for method in ROUTED_METHODS:
                object.__setattr__(root, method, lambda *a, _r=root, _m=method, **k: redirect(_r, _r.module, _m, *a, **k))
            _set_submodule(model, name, root)
            _setup_activation_checkpointing(root, self._activation_checkpointing_kwargs)
            self._roots.append((name, root))
        # small trainable modules beside the transformers (the refiner's latent_in, halt_head):
        # replicated roots of their own, whose gradients FSDP averages like DDP
        inside = {id(p) for _, r in self._roots for p in r.parameters()}
        owners = [(n, m) for n, m in model.named_modules()
                  if any(p.requires_grad and id(p) not in inside for p in m.parameters(recurse=False))]  # fmt: skip
        if any(not n for n, _ in owners):
            loose = [n for n, p in model.named_parameters(recurse=False) if p.requires_grad]
            raise ValueError(
                "--trainer.strategy fsdp: trainable parameters held by the LightningModule itself would not be "
                f"synchronised across ranks: {', '.join(loose[:5])}; put them in a submodule"
            )
        outermost = [(n, m) for n, m in owners if not any(n.startswith(o + ".") for o, _ in owners)]
        for name, module in outermost:
            template = copy.deepcopy(module)  # small: rebuilt from it for evaluation
            root = FSDP(module, sharding_strategy=ShardingStrategy.NO_SHARD, **common)
            _set_submodule(model, name, root)
            self._roots.append((name, root))
            self._templates[name] = template
        self._watch_reads_outside_forward()
        _move_torchmetrics_to_device(model, self.root_device)
        self.precision_plugin.roots = [r for _, r in self._roots]
        return model

    def _watch_reads_outside_forward(self) -> None:
        """Stop at the first gradient that reaches a weight by a read outside its FSDP root's
        forward (module docstring: FSDP would drop it). Inside a forward FSDP computes with views
        of the flat parameter, so autograd accumulates into an original parameter only then."""
        for handle in self._watch_handles:
            handle.remove()
        self._watch_handles = []
        if not self.kwargs.get("use_orig_params"):
            return  # the parameters are FSDP's flat ones: nothing to tell apart
        for name, root in self._roots:
            for pname, p in root.named_parameters():
                if p.requires_grad:
                    full = ".".join(x for x in f"{name}.{pname}".split(".") if x not in _WRAPPER_NAMES)
                    self._watch_handles.append(p.register_post_accumulate_grad_hook(functools.partial(_read_outside_forward, full)))

    # ------------------------------------------------------------------ evaluation on full copies
    def _use_full_copies(self) -> None:
        """Replace each FSDP root in the LightningModule by a plain copy with the gathered weights."""
        if self._copies_in_use or not self._roots:
            return
        for name, root in self._roots:
            with self._full_context(root):
                state = root.state_dict()  # every rank gathers the whole transformer
            template = self._templates.get(name)
            plain = copy.deepcopy(template) if template is not None else Transformer(root.module.cfg)
            plain = plain.to(self.root_device)
            plain.load_state_dict(state)
            plain.requires_grad_(False)
            plain.train(root.training)
            _set_submodule(self.lightning_module, name, plain)
        self._copies_in_use = True

    def _use_shards(self) -> None:
        if self._copies_in_use:
            for name, root in self._roots:
                _set_submodule(self.lightning_module, name, root)
            self._copies_in_use = False

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        self._use_shards()
        return super().training_step(*args, **kwargs)

    def validation_step(self, *args: Any, **kwargs: Any) -> Any:
        self._use_full_copies()
        return super().validation_step(*args, **kwargs)

    def test_step(self, *args: Any, **kwargs: Any) -> Any:
        self._use_full_copies()
        return super().test_step(*args, **kwargs)

    def predict_step(self, *args: Any, **kwargs: Any) -> Any:
        self._use_full_copies()
        return super().predict_step(*args, **kwargs)

    def teardown(self) -> None:
        self._use_shards()
        for handle in self._watch_handles:
            handle.remove()
        self._watch_handles = []
        super().teardown()

    # ------------------------------------------------------------------ checkpoints
    def _full_context(self, module: Optional[nn.Module] = None):
        """A full (unsharded) state-dict context. Lightning's uses ``offload_to_cpu=True,
        rank0_only=True``; for weights already on the CPU FSDP's "offload" is the gathered tensor
        itself, freed when the gather ends, and the state dict then reads freed memory (a
        segfault, torch 2.13). Here every rank gathers in place (``rank0_only`` needs the offload)."""
        from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, StateDictType
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        return FSDP.state_dict_type(
            module if module is not None else self.model,
            StateDictType.FULL_STATE_DICT,
            FullStateDictConfig(offload_to_cpu=False, rank0_only=False),
            FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=False),
        )

    def lightning_module_state_dict(self) -> dict[str, Any]:
        self._use_shards()
        with _quiet_replicated_roots():
            if self._state_dict_type != "full" or self.root_device.type != "cpu":
                return super().lightning_module_state_dict()
            with self._full_context():
                return self.model.state_dict()

    def optimizer_state(self, optimizer: Any) -> dict[str, Any]:
        self._use_shards()
        with _quiet_replicated_roots():
            return self._optimizer_state(optimizer)

    def _optimizer_state(self, optimizer: Any) -> dict[str, Any]:
        if self._state_dict_type != "full" or self.root_device.type != "cpu":
            return super().optimizer_state(optimizer)
        from lightning.pytorch.core.optimizer import LightningOptimizer
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp import OptimStateKeyType

        if isinstance(optimizer, LightningOptimizer):
            optimizer = optimizer._optimizer
        with self._full_context():
            state = FSDP.optim_state_dict(self.model, optimizer)
            if self.global_rank == 0:  # keyed like a plain optimizer's: loads without FSDP
                state = FSDP.rekey_optim_state_dict(state, OptimStateKeyType.PARAM_ID, self.model)
            return state

    def load_checkpoint(self, checkpoint_path: Any, weights_only: Optional[bool] = None) -> dict[str, Any]:
        self._use_shards()
        return super().load_checkpoint(checkpoint_path, weights_only=weights_only)


_WRAPPER_NAMES = ("_fsdp_wrapped_module", "_checkpoint_wrapped_module")


def _read_outside_forward(name: str, param: torch.Tensor) -> None:
    raise RuntimeError(
        f"GridFSDPStrategy: the weight {name} was used outside the forward of its FSDP unit, so FSDP would not average "
        "its gradient over the devices (it would be dropped); compute with it inside a Transformer method that the "
        "strategy routes through the unit's forward (ROUTED_METHODS in gridlm.experiments.fsdp, e.g. embedding_logits)"
    )


@contextlib.contextmanager
def _quiet_replicated_roots() -> Iterator[None]:
    """torch warns on every save that a ``NO_SHARD`` unit (the replicated roots) gives a full
    state dict where a sharded one was asked for: intended here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="When using ``NO_SHARD`` for ``ShardingStrategy``")
        yield


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, attr, module)
