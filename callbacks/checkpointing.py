"""Checkpoints that survive kills: atomic writes, safe loads, a save on SIGTERM/SIGINT and on a
non-finite-loss stop, and a one-line error for a checkpoint that does not fit the model.

- :class:`AtomicCheckpointIO` writes ``<dir>/.<name>.tmp-<pid>`` in the checkpoint's own folder,
  fsyncs it and ``os.replace``-s it over the target (atomic on POSIX), so a kill leaves either the
  old file or the new one. Lightning's ``_atomic_save`` writes through an fsspec transaction whose
  temporary file lives in the system temp dir and is *moved* into place: a copy (not atomic) when
  that dir is on another filesystem, and no fsync. Loads default to ``weights_only=True``.
- :class:`FaultTolerance` turns SIGINT into Lightning's SIGTERM path (a flag checked at the end
  of every training batch, ``SIGTERMException``) and, on that exception or on
  :class:`~gridlm.modules.base_model.NonFiniteLossError`, writes the ``last`` checkpoint before the
  process exits, so ``gridlm fit --ckpt_path last`` continues from there.
- :func:`check_compatible` compares a checkpoint's model hyperparameters and tensor shapes with
  the instantiated model and raises one ``ValueError`` line naming every mismatched field.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Optional

import lightning as L
import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from gridlm.callbacks.schedule_free import _schedule_free, in_train_mode
# re-exported for the CLI; they live below modules/ so the model can check what it loads (init_from)
from gridlm.modules.checkpoints import MODEL_FIELDS, hparam_mismatches, read_checkpoint, tensor_mismatches  # noqa: F401


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with an atomic local save (same-folder temp file, fsync, ``os.replace``)
    and ``weights_only=True`` loads by default (checkpoints hold plain data only)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError(f"AtomicCheckpointIO.save_checkpoint takes no storage_options, got {storage_options!r}")
        if not _is_local_file_protocol(path):
            return super().save_checkpoint(checkpoint, path)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(path.parent)

    def load_checkpoint(self, path, map_location: Optional[Callable] = lambda storage, loc: storage, weights_only: Optional[bool] = None) -> dict[str, Any]:
        if _is_local_file_protocol(path) and not Path(path).is_file():
            raise FileNotFoundError(f"checkpoint {path}: no such file")
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=True if weights_only is None else weights_only)
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as err:  # torch raises these for truncated or foreign files
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"checkpoint {path} cannot be loaded ({first}); is it a complete gridlm checkpoint?") from err


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def last_checkpoint_path(trainer: "L.Trainer") -> str:
    """Where the ``last`` checkpoint goes: the first ``ModelCheckpoint``'s last path, else
    ``<log_dir or default_root_dir>/checkpoints/last.ckpt`` (still found by ``--ckpt_path last``)."""
    cb = next((c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)), None)
    if cb is not None and cb.dirpath is not None:
        return cb.format_checkpoint_name(cb._monitor_candidates(trainer), cb.CHECKPOINT_NAME_LAST)
    root = trainer.log_dir or trainer.default_root_dir
    return str(Path(root) / "checkpoints" / "last.ckpt")


def find_last_checkpoint(trainer: "L.Trainer") -> Optional[str]:
    """The newest ``last*.ckpt`` of this run: under every logger's ``<save_dir>/<name>/version_*/checkpoints``
    and every ``ModelCheckpoint`` with an explicit ``dirpath``. ``None`` when there is none."""
    folders = []
    for logger in trainer.loggers:
        root = getattr(logger, "root_dir", None)
        if root:
            folders += Path(root).glob("version_*/checkpoints")
    folders += [Path(c.dirpath) for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.dirpath]
    if not trainer.loggers:
        folders.append(Path(trainer.default_root_dir) / "checkpoints")
    found = [p for d in folders for p in d.glob("last*.ckpt") if p.is_file()]
    return str(max(found, key=lambda p: p.stat().st_mtime_ns)) if found else None


class FaultTolerance(L.Callback):
    """Save the ``last`` checkpoint when training is stopped by SIGTERM, SIGINT or
    :class:`NonFiniteLossError`.

    SIGTERM: Lightning's handler sets ``trainer.received_sigterm``; the training loop raises
    ``SIGTERMException`` after the current batch (all ranks together). SIGINT (Ctrl-C) is mapped
    to the same flag while fitting, so the checkpoint is written between batches, never in the
    middle of an optimizer step; a second SIGINT interrupts immediately. The path written is in
    ``saved_path`` and on the exception (``checkpoint_path``)."""

    def __init__(self) -> None:
        self.saved_path: Optional[str] = None
        self.signal_name: Optional[str] = None
        self._previous_sigint: Any = None

    # ---------------------------------------------------------------- SIGINT -> SIGTERM path
    def on_train_start(self, trainer, pl_module) -> None:
        # A resumed fit restores schedule-free optimizers in eval mode (``ScheduleFreeMode``). The
        # uninterrupted run switched back to train mode right after writing that checkpoint, and
        # only then validated (eval -> train again): switch now, before Lightning re-runs that
        # validation, so both runs apply the same float operations to the weights.
        for opt in _schedule_free(trainer):
            if not in_train_mode(opt):
                opt.train()
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be installed from the main thread
        self._previous_sigint = signal.getsignal(signal.SIGINT)

        def on_sigint(signum, frame) -> None:
            if trainer.received_sigterm:  # second Ctrl-C: stop now
                raise KeyboardInterrupt
            self.signal_name = "SIGINT"
            print("gridlm: SIGINT received; saving a checkpoint after this batch (Ctrl-C again to abort)", file=sys.stderr)
            trainer._signal_connector.received_sigterm = True

        signal.signal(signal.SIGINT, on_sigint)

    def _restore_sigint(self) -> None:
        if self._previous_sigint is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore_sigint()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._restore_sigint()

    # ---------------------------------------------------------------- save on stop
    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        from gridlm.modules.base_model import NonFiniteLossError

        self._restore_sigint()
        # during fit only (a signal may land in a validation run inside fit: save then too)
        if trainer.state.fn != TrainerFn.FITTING or not isinstance(exception, (SIGTERMException, NonFiniteLossError)):
            return
        if isinstance(exception, SIGTERMException) and self.signal_name is None:
            self.signal_name = "SIGTERM"
        path = last_checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        cb = trainer.checkpoint_callback
        if isinstance(cb, ModelCheckpoint):
            cb.last_model_path = path
        self.saved_path = path
        exception.checkpoint_path = path  # read by experiments/cli.py for its one-line message
        exception.signal_name = self.signal_name
        if trainer.is_global_zero and isinstance(exception, SIGTERMException):
            print(
                f"gridlm: {self.signal_name} received; saved checkpoint {path} at step {trainer.global_step}; "
                "resume with --ckpt_path last",
                file=sys.stderr,
            )


# ---------------------------------------------------------------- compatibility
def check_compatible(checkpoint: dict, model: torch.nn.Module, path: str) -> None:
    """Raise one ``ValueError`` line if ``checkpoint`` was made for a differently shaped model:
    the mismatched hyperparameters (``MODEL_FIELDS``), else the mismatched tensors."""
    diffs = hparam_mismatches(checkpoint.get("hyper_parameters") or {}, dict(getattr(model, "hparams", {})))
    if not diffs and "state_dict" in checkpoint:
        diffs = tensor_mismatches(model.state_dict(), checkpoint["state_dict"])
    if diffs:
        raise ValueError(f"checkpoint {path} does not match the model: " + "; ".join(diffs))


def check_serialization(checkpoint: dict, datamodule: Any, path: str) -> None:
    """Raise one ``ValueError`` line if the data would be serialized differently from the data the
    checkpoint's model was trained on (``order``, ``row_end``): the model would read a grid in
    one cell order and write it in another, and every metric would be wrong without an error."""
    saved = checkpoint.get("hyper_parameters") or {}
    diffs = [
        f"{k}={saved[k]!r} in the checkpoint vs data.{k}={getattr(datamodule, k)!r}"
        for k in ("order", "row_end")
        if k in saved and hasattr(datamodule, k) and saved[k] != getattr(datamodule, k)
    ]
    if diffs:
        fix = " ".join(f"--data.{k} {saved[k]}" for k in ("order", "row_end") if k in saved)
        raise ValueError(f"checkpoint {path} was trained on other serialized data: {'; '.join(diffs)}; pass {fix}")
