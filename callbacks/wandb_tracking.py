"""Weights & Biases logging that never blocks or stops training.

``GridWandbLogger`` is Lightning's ``WandbLogger`` with ``mode="auto"``: online when an API key
is configured and the wandb host answers, offline otherwise (the run is written under
``<save_dir>/wandb`` and can be uploaded later with ``wandb sync``). Any wandb error is turned
into one warning and the logger falls back to ``disabled``; the CSV logger beside it keeps the
metrics.
"""

from __future__ import annotations

import netrc
import os
import socket
import warnings
from typing import Any, Literal, Optional

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

WandbMode = Literal["auto", "online", "offline", "disabled"]
WANDB_HOST = "api.wandb.ai"


def has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(WANDB_HOST) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def host_reachable(host: str = WANDB_HOST, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_mode(mode: str = "auto") -> str:
    """``auto`` -> ``$WANDB_MODE`` if set, else ``online`` with a key and a reachable host, else ``offline``."""
    if mode not in ("auto", "online", "offline", "disabled"):
        raise ValueError(f"wandb mode {mode!r} is not one of auto, online, offline, disabled")
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE")
    if env in ("online", "offline", "disabled", "dryrun", "run"):
        return {"dryrun": "offline", "run": "online"}.get(env, env)
    if not has_api_key():
        return "offline"
    return "online" if host_reachable() else "offline"


class GridWandbLogger(WandbLogger):
    """``WandbLogger`` that picks online/offline by itself and degrades to a warning on error."""

    def __init__(
        self,
        project: str = "gridlm",
        mode: WandbMode = "auto",
        save_dir: str = ".",
        name: Optional[str] = None,
        group: Optional[str] = None,
        tags: Optional[list[str]] = None,
        job_type: Optional[str] = None,
        log_model: bool = False,
        **kwargs: Any,
    ) -> None:
        self.mode = resolve_mode(mode)
        os.makedirs(save_dir, exist_ok=True)
        super().__init__(
            project=project,
            save_dir=save_dir,
            name=name,
            offline=self.mode == "offline",
            log_model=log_model,
            group=group,
            tags=tags,
            job_type=job_type,
            mode=self.mode,
            **kwargs,
        )
        self._failed = False

    def _fail(self, what: str, err: BaseException) -> None:
        if not self._failed:
            warnings.warn(f"wandb: {what} failed ({type(err).__name__}: {err}); continuing without wandb (CSV logs are kept)")
        self._failed = True

    @property
    @rank_zero_only
    def experiment(self):
        try:
            return super().experiment
        except Exception as err:  # wandb raises many types (CommError, UsageError, timeouts, ...)
            self._fail("wandb.init", err)
            import wandb

            self._experiment = None
            self._wandb_init["mode"] = "disabled"
            self._wandb_init.pop("offline", None)
            self._experiment = wandb.init(**self._wandb_init)
            return self._experiment

    @rank_zero_only
    def log_metrics(self, metrics, step=None) -> None:
        try:
            super().log_metrics(metrics, step)
        except Exception as err:
            self._fail("log_metrics", err)

    @rank_zero_only
    def log_hyperparams(self, params) -> None:
        try:
            super().log_hyperparams(params)
        except Exception as err:
            self._fail("log_hyperparams", err)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        try:
            super().finalize(status)
            if self._experiment is not None:
                self._experiment.finish()
        except Exception as err:
            self._fail("finish", err)
