"""Checks a user meets when going from one device to many, each a one-line error.

``gridlm`` runs on more devices and nodes through Lightning (``docs/scaling.md``); what Lightning
leaves to a hang, a multi-line exception or a silently odd run is caught here, before any
process group exists:

- :func:`check_devices`: more devices than the machine has (CPU cores for ``accelerator: cpu``,
  CUDA GPUs otherwise). Lightning raises a multi-line error for GPUs and starts one process per
  "device" on CPU however many cores there are.
- :func:`check_batch`: ``data.global_batch_size`` that does not divide over the devices.
- :func:`check_master_reachable`: every process but the first waits at most ``timeout`` seconds
  for ``MASTER_ADDR:MASTER_PORT`` to accept a connection. torch waits up to the process group
  timeout (30 minutes) and then reports a socket error.
- :func:`strategy_for`: ``--trainer.strategy fsdp`` -> :class:`~gridlm.experiments.fsdp.GridFSDPStrategy`.
- :func:`check_checkpoint_strategy`: a sharded FSDP checkpoint folder needs the FSDP strategy.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any, Optional, Union

import lightning as L

from gridlm.datamodules.batching import per_device_batch
from gridlm.modules.checkpoints import SHARDED_METADATA

CONSOLIDATE = "python -m lightning.pytorch.utilities.consolidate_checkpoint"


def _device_count(devices: Union[int, str, list, None]) -> Optional[int]:
    """Devices requested per node, or None where Lightning decides (``auto``, ``-1``)."""
    if isinstance(devices, (list, tuple)):
        return len(devices)
    if isinstance(devices, str):
        text = devices.strip()
        if "," in text:
            return len([d for d in text.split(",") if d.strip()])
        if not text.lstrip("-").isdigit():
            return None
        devices = int(text)
    if isinstance(devices, int) and devices > 0:
        return devices
    return None


def available(accelerator: Any) -> tuple[Optional[int], str]:
    """How many devices of ``accelerator`` this machine offers, and what they are called."""
    import torch

    name = str(accelerator or "auto").lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return cores, "CPU cores (accelerator cpu runs one process per device)"
    if name in ("cuda", "gpu"):
        return torch.cuda.device_count(), "CUDA GPUs"
    return None, name  # mps, tpu, ...: Lightning checks those


def check_devices(trainer_cfg: dict) -> None:
    """One ``ValueError`` line when ``trainer.devices`` asks for more than this machine has."""
    wanted = _device_count(trainer_cfg.get("devices", "auto"))
    if wanted is None:
        return
    accelerator = trainer_cfg.get("accelerator", "auto")
    have, what = available(accelerator if isinstance(accelerator, str) else type(accelerator).__name__.lower())
    if have is not None and wanted > have:
        fix = f"use at most {have}" if have else "use --trainer.accelerator cpu"
        raise ValueError(f"--trainer.devices {wanted}: this machine has {have} {what}; {fix}")


def world_size(trainer: "L.Trainer") -> int:
    """Processes of the run: nodes x devices per node (known before any process group exists)."""
    return max(1, int(trainer.num_nodes) * int(trainer.num_devices))


def check_batch(trainer: "L.Trainer", datamodule: Any) -> None:
    """One ``ValueError`` line when ``data.global_batch_size`` does not divide over the devices."""
    total = (getattr(datamodule, "hparams", None) or {}).get("global_batch_size")
    if total is None:
        return
    w = world_size(trainer)
    where = f" (--trainer.num_nodes {trainer.num_nodes} x --trainer.devices {trainer.num_devices})"
    per_device_batch(int(total), w, "data.global_batch_size", where)


class MasterUnreachableError(ValueError):
    """A process other than the first could not connect to ``MASTER_ADDR:MASTER_PORT``."""


def check_master_reachable(trainer: "L.Trainer", timeout: float) -> None:
    """Processes other than the first (node 0, local rank 0) wait for ``MASTER_ADDR:MASTER_PORT``
    to accept a TCP connection, at most ``timeout`` seconds; then one line naming both."""
    if world_size(trainer) <= 1 or timeout <= 0:
        return
    env = getattr(trainer.strategy, "cluster_environment", None)
    if env is None:
        return
    node, local = int(env.node_rank()), int(env.local_rank())
    if node == 0 and local == 0:
        return  # the master itself: it opens the port
    address, port = env.main_address, int(env.main_port)
    deadline = time.monotonic() + timeout
    reason = "no answer"
    while True:
        try:
            with socket.create_connection((address, port), timeout=min(5.0, max(0.1, deadline - time.monotonic()))):
                return
        except OSError as err:
            reason = err.strerror or type(err).__name__
        if time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    raise MasterUnreachableError(
        f"node {node} (local rank {local}) cannot reach the master at MASTER_ADDR={address} MASTER_PORT={port} "
        f"within {timeout:g} s ({reason}); start node 0 with the same MASTER_ADDR/MASTER_PORT, check the address, "
        "port and firewall, or raise --master_timeout"
    )


def strategy_for(trainer_cfg: dict) -> Optional[Any]:
    """The strategy object for a strategy *name* gridlm implements itself (``fsdp``), else None."""
    if trainer_cfg.get("strategy") == "fsdp":
        from gridlm.experiments.fsdp import GridFSDPStrategy

        return GridFSDPStrategy()
    return None


def is_sharded_checkpoint(path: Union[str, Path]) -> bool:
    """A sharded FSDP checkpoint: a folder holding ``meta.pt`` and the shards."""
    return Path(path).is_dir() and (Path(path) / SHARDED_METADATA).is_file()


def check_checkpoint_strategy(path: Union[str, Path], trainer: "L.Trainer") -> None:
    """One ``ValueError`` line when a sharded checkpoint is given to a strategy that cannot read it."""
    from lightning.pytorch.strategies import FSDPStrategy

    if is_sharded_checkpoint(path) and not isinstance(trainer.strategy, FSDPStrategy):
        raise ValueError(
            f"--ckpt_path {path} is a sharded FSDP checkpoint (a folder of shards); load it with "
            f"--trainer.strategy fsdp, or make one file of it first: {CONSOLIDATE} {path} "
            f"(writes {path}.consolidated)"
        )
