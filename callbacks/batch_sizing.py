"""``MemoryAwareBatchSize``: the largest micro-batch that fits a memory budget, found by measuring.

The user states the *effective* batch (examples per optimizer step, ``data.batch_size``) and a
memory budget. Before training the callback builds the worst-case batch (the longest training
examples, the last bucket the sampler can produce), measures the peak memory of a real
forward + backward at a few micro-batch sizes, picks the largest size whose peak stays under
``budget * (1 - margin)`` and sets ``pl_module.micro_batch_size``;
``AutoregressiveGridModel.training_step`` then accumulates ``ceil(effective / micro)``
micro-batches per step (and halves the micro-batch on an out-of-memory error).

How memory is measured (peak bytes of one forward + backward of ``rows`` worst-case examples):

- CUDA: allocator statistics, ``torch.cuda.reset_peak_memory_stats`` then
  ``torch.cuda.max_memory_allocated`` (absolute: parameters, gradients, activations).
- CPU: the process's peak resident set size. Before each measurement freed heap is returned to
  the OS (glibc ``malloc_trim``) and the kernel's high-water mark is reset (``5`` written to
  ``/proc/self/clear_refs``, Linux >= 4.0); ``VmHWM`` in ``/proc/self/status`` is read after.
  Repeat measurements agree within a few MB. The budget counts the whole process (data too).
- Both add the optimizer state, which does not exist yet before the first step: its measured
  size if it does, else 2 x the trainable parameter bytes (Adam-family: two tensors per weight).

The search (:func:`choose_micro_batch`): from 1 row, extrapolate the line through the last two
fitting sizes (growing 2x to 4x per probe) until a size is over the budget, then
interpolate linearly between the last fitting and the first failing size (memory is affine in
the rows of a fixed-length batch) and bisect, measuring every candidate; never returns a size
it has not measured under the budget.

Strategies that shard the model (FSDP, DeepSpeed, model parallel) or accelerators other than
CPU/CUDA cannot be probed this way: the callback leaves ``micro_batch_size`` as configured and
says so once. Under DDP every rank probes and all take the smallest choice. The effective batch
counts every device: W devices each take ``effective_batch / W`` examples per step (it must
divide), so a run keeps its optimization on any number of devices.

The choice is saved in the callback's checkpoint state, in the module's hyperparameters and in
the resolved config stored in the checkpoint; a resumed run restores it without probing again.
"""

from __future__ import annotations

import ctypes
import gc
import math
import re
from typing import Callable, Optional, Union

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from gridlm.datamodules.batching import collate, per_device_batch

MemoryFn = Callable[[int], float]  # rows of the worst-case batch -> peak bytes of forward + backward
_UNITS = {"": 1, "B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_budget(budget: Union[float, int, str], total_bytes: Optional[float]) -> float:
    """Bytes from a budget: a fraction of device memory (``0 < x <= 1``), a byte count (``> 1``),
    or a string with a unit (``"512MB"``, ``"2GiB"``)."""
    if isinstance(budget, str):
        m = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([A-Za-z]*)\s*", budget)
        if not m or m.group(2).upper() not in _UNITS:
            raise ValueError(
                f"MemoryAwareBatchSize.budget: cannot read {budget!r}; use a fraction (0.8), bytes, or '512MB' / '2GiB'"
            )
        budget = float(m.group(1)) * _UNITS[m.group(2).upper()]
    if budget <= 0:
        raise ValueError(f"MemoryAwareBatchSize.budget must be > 0, got {budget}")
    if budget <= 1:
        if total_bytes is None:
            raise ValueError(
                "MemoryAwareBatchSize.budget: a fraction needs the device's total memory, which is unknown; give bytes"
            )
        return budget * total_bytes
    return float(budget)


def device_memory_bytes(device: torch.device) -> Optional[float]:
    """Total memory of ``device``: the GPU's, or on CPU the smaller of RAM and the cgroup limit."""
    if device.type == "cuda":
        return float(torch.cuda.get_device_properties(device).total_memory)
    if device.type != "cpu":
        return None
    import os

    total = float(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    try:
        limit = open("/sys/fs/cgroup/memory.max").read().strip()
        if limit.isdigit():
            total = min(total, float(limit))
    except OSError:
        pass
    return total


def _read_hwm() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) * 1024  # kB -> bytes
    raise OSError("no VmHWM in /proc/self/status")


def cpu_peak_bytes(fn: Callable[[], object]) -> float:
    """Peak resident set size of this process while ``fn()`` runs (Linux; see the module docstring)."""
    gc.collect(0)  # young garbage only: a full collection costs ~1 s in a process holding a dataset
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: the measurement may include retained free heap (overestimates, safe side)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark to the current RSS
    fn()
    return _read_hwm()


def cuda_peak_bytes(fn: Callable[[], object], device: torch.device) -> float:
    """Peak bytes held by the CUDA caching allocator's tensors while ``fn()`` runs."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return float(torch.cuda.max_memory_allocated(device))


def worst_case_batch(dataset, rows: int) -> dict:
    """A collated batch of the ``rows`` longest examples of ``dataset`` (a ``GridDataset``): the
    last bucket the length-bucketing sampler can produce, hence the largest activation memory."""
    order = sorted(range(len(dataset)), key=lambda i: -dataset.lengths[i])
    picks = [order[i % len(order)] for i in range(rows)]  # repeat when the dataset is smaller than rows
    return collate([dataset[(i, 0)] for i in picks])


def choose_micro_batch(
    measure: MemoryFn, budget: float, max_rows: int, max_probes: int = 12
) -> tuple[int, dict[int, float]]:
    """The largest ``rows <= max_rows`` with ``measure(rows) <= budget``, and every measurement made.

    Doubling from 1, then linear interpolation and bisection between the last size under the
    budget and the first over it (see the module docstring); at most ``max_probes`` measurements.
    Raises ``ValueError`` when a single row is over the budget."""
    probes: dict[int, float] = {}

    def fits(rows: int) -> bool:
        probes[rows] = measure(rows)
        return probes[rows] <= budget

    if not fits(1):
        raise ValueError(
            f"MemoryAwareBatchSize: one worst-case sequence needs {probes[1] / 2**20:.0f} MiB, over the usable "
            f"budget of {budget / 2**20:.0f} MiB; raise budget, lower data.max_seq_len or the model size"
        )
    good, bad = 1, None
    while bad is None and good < max_rows and len(probes) < max_probes:
        # extrapolate the line through the last two fitting sizes, growing 2x to 4x per probe (the
        # cap keeps a noisy, too-flat slope from jumping to a size that exhausts host memory)
        prev = max((k for k in probes if k < good), default=None)
        slope = (probes[good] - probes[prev]) / (good - prev) if prev else 0.0
        guess = good + int((budget - probes[good]) / slope) if slope > 0 else 4 * good
        m = min(max(guess, 2 * good), (4 if prev else 2) * good, max_rows)
        good, bad = (m, None) if fits(m) else (good, m)
    interpolate = True
    while bad is not None and bad - good > 1 and len(probes) < max_probes:
        if interpolate:
            slope = (probes[bad] - probes[good]) / (bad - good)
            guess = good + int((budget - probes[good]) / slope) if slope > 0 else (good + bad) // 2
        else:
            guess = (good + bad) // 2
        guess = min(max(guess, good + 1), bad - 1)
        if fits(guess):
            good = guess
            if interpolate and guess + 1 < bad and len(probes) < max_probes:  # an exact fit ends here
                good, bad = (guess + 1, bad) if fits(guess + 1) else (good, guess + 1)
        else:
            bad = guess
        interpolate = not interpolate
    return good, probes


def exhaustive_max(measure: MemoryFn, budget: float, max_rows: int) -> int:
    """The largest ``rows`` in ``1..max_rows`` with ``measure(rows) <= budget`` (0 if none), trying
    every size in increasing order: the reference :func:`choose_micro_batch` is tested against."""
    best = 0
    for rows in range(1, max_rows + 1):
        if measure(rows) <= budget:
            best = rows
    return best


def optimizer_state_bytes(trainer: "L.Trainer", module: torch.nn.Module) -> float:
    """Bytes of the optimizer state: measured when it exists, else 2 x the trainable parameter bytes."""
    measured = 0.0
    for opt in trainer.optimizers:
        for state in opt.state.values():
            measured += sum(t.numel() * t.element_size() for t in state.values() if torch.is_tensor(t))
    if measured:
        return measured
    return 2.0 * sum(p.numel() * p.element_size() for p in module.parameters() if p.requires_grad)


class MemoryAwareBatchSize(L.Callback):
    def __init__(
        self,
        effective_batch: Optional[int] = None,
        effective_tokens: Optional[int] = None,
        budget: Union[float, str] = 0.8,
        margin: float = 0.1,
        max_probes: int = 12,
        memory_fn: Optional[MemoryFn] = None,
    ) -> None:
        """
        Args:
            effective_batch: examples per optimizer step over all W devices; sets ``data.batch_size``
                (per device) to ``effective_batch / W``, which must divide (None: keep data.batch_size).
            effective_tokens: alternative to ``effective_batch``: tokens per optimizer step *on
                average*, over all W devices; ``data.batch_size`` becomes ``round(effective_tokens /
                (W x mean example length))`` (bucketed batches of long examples then hold more
                tokens, of short ones fewer).
            budget: memory for the whole training process on the device: a fraction of the device's
                memory (``<= 1``), bytes (``> 1``), or a string such as ``"6GB"``.
            margin: fraction of the budget kept free (allocator fragmentation, measurement noise).
            max_probes: most forward + backward measurements the search makes.
            memory_fn: ``rows -> peak bytes`` replacing the measurement (tests, benchmarks).
        """
        if effective_batch is not None and effective_tokens is not None:
            raise ValueError("MemoryAwareBatchSize: give effective_batch or effective_tokens, not both")
        for name, value in (("effective_batch", effective_batch), ("effective_tokens", effective_tokens)):
            if value is not None and value < 1:
                raise ValueError(f"MemoryAwareBatchSize.{name} must be >= 1, got {value}")
        if not 0.0 <= margin < 1.0:
            raise ValueError(f"MemoryAwareBatchSize.margin must be in [0, 1), got {margin}")
        if max_probes < 2:
            raise ValueError(f"MemoryAwareBatchSize.max_probes must be >= 2, got {max_probes}")
        parse_budget(budget, 1.0)  # fail at construction on an unreadable budget
        self.effective_batch, self.effective_tokens = effective_batch, effective_tokens
        self.budget, self.margin, self.max_probes, self.memory_fn = budget, margin, max_probes, memory_fn
        self.micro_batch_size: Optional[int] = None  # the choice (restored from a checkpoint)
        self.measurements: dict[int, float] = {}
        self.budget_bytes: Optional[float] = None
        self._module: Optional[L.LightningModule] = None
        self._restored = False
        self._warned = False

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        self._module = pl_module
        dm = getattr(trainer, "datamodule", None)
        dataset = getattr(dm, "datasets", {}).get("train") if dm is not None else None
        if self._restored:
            pl_module.micro_batch_size = self.micro_batch_size
            if self.effective_batch is not None and dm is not None:  # per device, on this run's devices
                dm.batch_size = per_device_batch(self.effective_batch, trainer.world_size, "MemoryAwareBatchSize.effective_batch")
            rank_zero_info(f"MemoryAwareBatchSize: resumed with micro-batch {self.micro_batch_size} (no probe)")
            return
        if dm is None or dataset is None or not hasattr(dm, "batch_size"):
            return self._skip("no GridDataModule with a training set to take the worst-case batch from")
        if not hasattr(pl_module, "micro_batch_size") or not hasattr(pl_module, "token_losses"):
            return self._skip(f"{type(pl_module).__name__} has no micro_batch_size / token_losses")
        world = trainer.world_size
        if self.effective_tokens is not None:
            mean_length = sum(dataset.lengths) / len(dataset.lengths)
            self.effective_batch = world * max(1, round(self.effective_tokens / (world * mean_length)))
        if self.effective_batch is not None:
            dm.batch_size = per_device_batch(self.effective_batch, world, "MemoryAwareBatchSize.effective_batch")
            dm.hparams["batch_size"] = dm.batch_size
        self.effective_batch = dm.batch_size * world
        measure = self.memory_fn or self._measurer(trainer, pl_module, dataset)
        if measure is None:
            return
        self.budget_bytes = parse_budget(self.budget, device_memory_bytes(pl_module.device))
        usable = self.budget_bytes * (1.0 - self.margin)
        was_training = pl_module.training
        pl_module.train()
        devices = [pl_module.device] if pl_module.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # probing must not change the run's random stream
            micro, self.measurements = choose_micro_batch(measure, usable, dm.batch_size, self.max_probes)
        pl_module.train(was_training)
        if trainer.world_size > 1:  # every rank must accumulate alike: take the smallest choice
            micro = int(trainer.strategy.all_gather(torch.tensor(micro, device=pl_module.device)).min())
        self._apply(trainer, pl_module, micro)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        rows = batch["tokens"].shape[0]
        micro = min(pl_module.micro_batch_size or rows, rows)
        pl_module.log("batch/micro_batch_size", float(micro), on_step=True, on_epoch=False, batch_size=rows)
        pl_module.log("batch/accumulate", float(math.ceil(rows / micro)), on_step=True, on_epoch=False, batch_size=rows)

    def state_dict(self) -> dict:
        micro = self._module.micro_batch_size if self._module is not None else self.micro_batch_size
        return {
            "micro_batch_size": micro,
            "effective_batch": self.effective_batch,
            "budget_bytes": self.budget_bytes,
            "measurements": {int(k): float(v) for k, v in self.measurements.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.micro_batch_size = state.get("micro_batch_size")
        self.effective_batch = state.get("effective_batch", self.effective_batch)
        self.budget_bytes = state.get("budget_bytes")
        self.measurements = dict(state.get("measurements", {}))
        self._restored = self.micro_batch_size is not None

    # ------------------------------------------------------------------ helpers
    def _skip(self, why: str) -> None:
        if not self._warned:
            rank_zero_warn(f"MemoryAwareBatchSize: not probing ({why}); model.micro_batch_size stays as configured")
            self._warned = True

    def _measurer(self, trainer, pl_module, dataset) -> Optional[MemoryFn]:
        """``rows -> peak bytes`` of a real forward + backward on the worst-case batch, or None
        (after one warning) where this process cannot measure."""
        if not isinstance(trainer.strategy, (SingleDeviceStrategy, DDPStrategy)):
            return self._skip(f"strategy {type(trainer.strategy).__name__} shards the model across devices")
        device = pl_module.device
        if device.type == "cpu":
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
                _read_hwm()
            except OSError:
                return self._skip("/proc/self/clear_refs is not writable, so peak process memory cannot be reset")
        elif device.type != "cuda":
            return self._skip(f"no memory statistics on the {device.type} accelerator")
        extra = optimizer_state_bytes(trainer, pl_module)

        def step(rows: int) -> None:
            batch = trainer.strategy.batch_to_device(worst_case_batch(dataset, rows))
            with trainer.precision_plugin.forward_context():
                losses, _, _ = pl_module.token_losses(batch)
            (losses.float().sum() / max(1, losses.numel())).backward()
            pl_module.zero_grad(set_to_none=True)

        def measure(rows: int) -> float:
            try:
                run = lambda: step(rows)  # noqa: E731
                peak = cuda_peak_bytes(run, device) if device.type == "cuda" else cpu_peak_bytes(run)
            except torch.OutOfMemoryError:
                pl_module.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                return math.inf
            return peak + extra

        return measure

    def _apply(self, trainer, pl_module, micro: int) -> None:
        """Set the micro-batch and record it where a resumed run and a reader will find it."""
        self.micro_batch_size = pl_module.micro_batch_size = micro
        per_device = self.effective_batch // trainer.world_size
        accumulate = math.ceil(per_device / micro)
        if hasattr(pl_module, "hparams"):
            pl_module.hparams["micro_batch_size"] = micro  # checkpoint hyper_parameters
        config = getattr(pl_module, "resolved_config", None)
        if isinstance(config, dict):  # the config stored in the checkpoint's "gridlm" metadata
            config.setdefault("model", {}).setdefault("init_args", {})["micro_batch_size"] = micro
            config.setdefault("data", {})["batch_size"] = per_device
        for logger in trainer.loggers:
            logger.log_hyperparams(
                {"batch/micro_batch_size": micro, "batch/accumulate": accumulate, "batch/effective": self.effective_batch}
            )
        rank_zero_info(
            f"MemoryAwareBatchSize: micro-batch {micro} x {accumulate} accumulation"
            + (f" x {trainer.world_size} devices" if trainer.world_size > 1 else "")
            + f" = effective batch "
            f"{self.effective_batch} (budget {self.budget_bytes / 2**20:.0f} MiB, margin {self.margin:.0%}, "
            f"{len(self.measurements)} measurements)"
        )
