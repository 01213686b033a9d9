"""Weights & Biases logging that never blocks or stops training.

``GridWandbLogger`` is Lightning's ``WandbLogger`` with ``mode="auto"``: online when an API key
is configured and the wandb host answers, offline otherwise (the run is written under
``<save_dir>/wandb`` and can be uploaded later with ``wandb sync``). wandb runs in its quiet
mode (where the run is, no banner or summary panel) unless ``WANDB_QUIET``/``WANDB_SILENT`` say otherwise. Any wandb error is turned
into one warning and the logger falls back to ``disabled``; the CSV logger beside it keeps the
metrics.

``WandbTracking`` is the callback that makes runs comparable on a dashboard: group (the study),
tags and job type, the resolved CLI config, summary metrics, grid-image panels of validation
predictions and the best checkpoint as an artifact (online only).
"""

from __future__ import annotations

import netrc
import os
import socket
import warnings
from typing import Any, Literal, Optional, Sequence

import lightning as L
import torch
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


def bounded_settings():
    """Online-run settings that give up on an unreachable or refusing server in seconds (wandb's
    defaults retry GraphQL calls for minutes, blocking ``wandb.init`` and so training)."""
    import wandb

    return _quiet_settings(
        init_timeout=60,
        x_graphql_retry_max=2,
        x_graphql_retry_wait_max_seconds=2,
        x_graphql_timeout_seconds=15,
        finish_timeout=30,
    )


def _quiet_settings(**settings: Any):
    """``wandb.Settings`` in wandb's quiet mode (``quiet=True``: where the run is saved or its URL,
    no version banner and no history/summary panel at the end) unless the user chose wandb's
    verbosity through ``WANDB_QUIET`` or ``WANDB_SILENT``, which explicit settings would override."""
    import wandb

    if "WANDB_QUIET" not in os.environ and "WANDB_SILENT" not in os.environ:
        settings.setdefault("quiet", True)
    return wandb.Settings(**settings)


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
        if "settings" not in kwargs and self.mode != "disabled":
            kwargs["settings"] = bounded_settings() if self.mode == "online" else _quiet_settings()
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
        if self._wandb_init.get("anonymous") is None:  # wandb >= 0.19 warns about the unset option Lightning passes
            self._wandb_init.pop("anonymous", None)
        self._failed = False

    def set_run_info(self, group: Optional[str] = None, tags: Sequence[str] = (), job_type: Optional[str] = None, config: Optional[dict] = None) -> None:
        """Group, tags, job type and config of the run. Before ``wandb.init`` they go into its
        arguments; Lightning starts the run before any callback's ``setup``, so usually the live
        run is updated: tags and config through wandb's API, group and job type (which wandb
        only takes at init) in the run's settings, re-published with the run record as the
        ``tags`` setter does."""
        if self._experiment is None:
            init = self._wandb_init
            init["group"] = group or init.get("group")
            init["job_type"] = job_type or init.get("job_type")
            init["tags"] = list(dict.fromkeys([*(init.get("tags") or []), *tags]))
            init["config"] = {**(init.get("config") or {}), **(config or {})}
            return
        run = self._experiment
        if getattr(run, "disabled", False):
            return
        if config:
            run.config.update(config, allow_val_change=True)
        if group:
            run._settings.run_group = group
        if job_type:
            run._settings.run_job_type = job_type
        run.tags = tuple(dict.fromkeys([*(run.tags or ()), *tags]))  # publishes the run record

    def _fail(self, what: str, err: BaseException) -> None:
        if not self._failed:
            msg = " ".join(str(err).split())  # wandb errors span lines; the warning is one
            msg = msg if len(msg) <= 300 else msg[:297] + "..."
            warnings.warn(f"wandb: {what} failed ({type(err).__name__}: {msg}); continuing without wandb (CSV logs are kept)")
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


def describe_run(pl_module, config: Optional[dict], study: Optional[str], optimizer: Any = None) -> dict:
    """The run's identity on a dashboard: study, encoding, order, optimizer class, seed."""
    config = config or {}
    hp = getattr(pl_module, "hparams", {}) or {}
    encoding = hp.get("encoding", "?")
    encoding = "+".join(encoding) if isinstance(encoding, (list, tuple)) else str(encoding)
    opt = type(optimizer).__name__ if optimizer is not None else None
    if opt is None:
        path = (((config.get("model") or {}).get("init_args") or {}).get("optimizer") or {})
        opt = path.get("class_path", "?").rsplit(".", 1)[-1] if isinstance(path, dict) else "?"
    seed = config.get("seed_everything", (config.get("data") or {}).get("seed"))
    return {
        "study": study or config.get("study"),
        "encoding": encoding,
        "order": hp.get("order", (config.get("data") or {}).get("order", "?")),
        "optimizer": opt,
        "seed": seed,
    }


class WandbTracking(L.Callback):
    """Dashboard bookkeeping for the wandb logger of the trainer (a no-op without one).

    - group = the study (``--study``), job type ``train``, tags ``encoding:<name>``,
      ``order:<name>``, ``optimizer:<class>``, ``seed:<k>``, ``study:<name>``;
    - the resolved LightningCLI config (``pl_module.resolved_config``) and its hash in the run
      config, once, with the fields above at top level for grouping;
    - summary metrics: max ``val/exact_match``, max ``val/cell_acc``, min ``val/loss``;
    - every ``images_every_n_val`` validations, ``val/grids``: input, target and greedy
      prediction of the first ``n_images`` validation pairs (always the same pairs) in the ARC
      palette (``gridlm.datamodules.pictures.grids_to_image``);
    - at the end of fit, the best checkpoint (else the last) as a ``model`` artifact, online only.

    Any wandb error becomes one warning and the callback stops; training goes on.
    """

    SUMMARY = {"val/exact_match": "max", "val/cell_acc": "max", "val/loss": "min"}

    def __init__(self, study: Optional[str] = None, images_every_n_val: int = 1, n_images: int = 4, log_checkpoint: bool = True) -> None:
        """
        Args:
            study: wandb group; None: the CLI's ``--study`` (from the resolved config).
            images_every_n_val: log the grid panel every this many validations (0: never).
            n_images: validation pairs in the panel.
            log_checkpoint: upload the best checkpoint as an artifact when online.
        """
        if images_every_n_val < 0 or n_images < 0:
            raise ValueError(f"WandbTracking: images_every_n_val and n_images must be >= 0, got {images_every_n_val}, {n_images}")
        self.study, self.images_every_n_val, self.n_images, self.log_checkpoint = study, images_every_n_val, n_images, log_checkpoint
        self._logger: Optional[WandbLogger] = None
        self._failed = False
        self._n_val = 0
        self._fixed_batch: Optional[dict] = None

    def _safe(self, what: str, fn, *args) -> Any:
        if self._failed or self._logger is None:
            return None
        try:
            return fn(*args)
        except Exception as err:  # wandb raises many types; never stop training for bookkeeping
            self._failed = True
            warnings.warn(f"WandbTracking: {what} failed ({type(err).__name__}: {err}); wandb bookkeeping stops, training goes on")
            return None

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit" or not trainer.is_global_zero:
            return
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        self._logger = loggers[0] if loggers else None

    def on_fit_start(self, trainer, pl_module) -> None:
        self._safe("setting group, tags and config", self._describe, trainer, pl_module)

    def _describe(self, trainer, pl_module) -> None:
        from gridlm.modules.provenance import run_metadata

        config = getattr(pl_module, "resolved_config", None)
        info = describe_run(pl_module, config, self.study, trainer.optimizers[0] if trainer.optimizers else None)
        tags = [f"{k}:{v}" for k, v in info.items() if v is not None]
        meta = run_metadata(config)
        run_config = {**{k: v for k, v in info.items() if v is not None}, "config": config, "config_hash": meta["config_hash"], "git_commit": meta["git_commit"]}
        if isinstance(self._logger, GridWandbLogger):
            self._logger.set_run_info(group=info["study"], tags=tags, job_type="train", config=run_config)
        else:  # a plain WandbLogger: tags and config only
            run = self._logger.experiment
            run.config.update(run_config, allow_val_change=True)
            run.tags = tuple(dict.fromkeys([*(run.tags or ()), *tags]))
        run = self._logger.experiment
        for key, summary in self.SUMMARY.items():
            run.define_metric(key, summary=summary)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self._logger is None or self._failed or not self.images_every_n_val or not self.n_images:
            return
        if not callable(getattr(pl_module, "panel_grids", None)):  # a module that draws no grids
            return
        self._n_val += 1
        if self._n_val % self.images_every_n_val == 0:
            self._safe("logging the grid panel", self._log_grids, trainer, pl_module)

    @torch.no_grad()
    def _log_grids(self, trainer, pl_module) -> None:
        from gridlm.datamodules.pictures import grids_to_image

        if self._fixed_batch is None:  # the validation loader is deterministic: its first batch
            batch = next(iter(trainer.datamodule.val_dataloader()))
            self._fixed_batch = batch
        batch = {k: v.to(pl_module.device) if torch.is_tensor(v) else v for k, v in self._fixed_batch.items()}
        rows = list(range(min(self.n_images, batch["tokens"].shape[0])))
        was_training = pl_module.training
        pl_module.eval()
        try:
            panels = pl_module.panel_grids(batch, rows)  # [(labelled grids, caption)] per row
        finally:
            pl_module.train(was_training)
        images = [grids_to_image(grids) for grids, _ in panels]
        captions = [caption for _, caption in panels]
        self._logger.log_image(key="val/grids", images=images, step=trainer.global_step, caption=captions)

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.log_checkpoint and self._logger is not None and getattr(self._logger, "mode", None) == "online":
            self._safe("uploading the checkpoint", self._upload, trainer)

    def _upload(self, trainer) -> None:
        import wandb

        ckpt = trainer.checkpoint_callback
        path = ckpt and (ckpt.best_model_path or ckpt.last_model_path)
        if not path or not os.path.isfile(path):
            return
        run = self._logger.experiment
        score = ckpt.best_model_score
        artifact = wandb.Artifact(f"model-{run.id}", type="model", metadata={"monitor": ckpt.monitor, "score": None if score is None else float(score)})
        artifact.add_file(path)
        run.log_artifact(artifact, aliases=["best" if ckpt.best_model_path else "last", "latest"])
