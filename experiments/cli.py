"""``gridlm``: the command line.

``gridlm fit | validate | test | predict --config <yaml> [--model.* --data.* --trainer.* ...]``
is a LightningCLI over ``GridDataModule`` and a LightningModule (``AutoregressiveGridModel`` by
default; the refiner via ``model.class_path``). ``gridlm score`` and ``gridlm show`` are
plain tools (``experiments/score.py``, ``experiments/show.py``). ``gridlm --version`` prints the
version, the git commit, torch and lightning.

``--ckpt_path pretrained:<name>`` (validate, test, predict) and ``--model.init_from
pretrained:<name>`` (fit) name weights shipped inside the package
(``gridlm.modules.checkpoints.resolve_checkpoint``).

User errors (a bad task file, a bad option value, a missing checkpoint) end with one line
``gridlm: error: ...`` and exit code 2; set ``GRIDLM_DEBUG=1`` for the traceback.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Optional

# Lightning 2.6 calls jsonargparse APIs deprecated since 4.49; the warnings are not actionable here.
os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")

import lightning as L  # noqa: E402
import yaml
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger

from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from gridlm.callbacks.checkpointing import (
    AtomicCheckpointIO,
    MODEL_FIELDS,
    FaultTolerance,
    check_compatible,
    check_serialization,
    find_last_checkpoint,
    hparam_mismatches,
    read_checkpoint,
)
from gridlm.callbacks.loss_logging import LossLogging
from gridlm.callbacks.schedule_free import ScheduleFreeMode
from gridlm.callbacks.token_budget import TokenBudget
from gridlm.callbacks.val_examples import ValExamples
from gridlm.configs import resolve_config
from gridlm.callbacks.wandb_tracking import GridWandbLogger, WandbMode, WandbTracking
from gridlm.datamodules.datamodule import GridDataModule
from gridlm.experiments.cli_errors import GridArgumentParser, user_error
from gridlm.experiments import scaling
from gridlm.experiments.quiet import quiet_known_noise, verbose_requested
from gridlm.modules.base_model import NonFiniteLossError
from gridlm.modules.checkpoints import PRETRAINED_PREFIX, resolve_checkpoint

quiet_known_noise()

DEFAULT_MODEL = "gridlm.modules.base_model.AutoregressiveGridModel"
DEFAULT_OPTIMIZER = {
    "class_path": "schedulefree.AdamWScheduleFree",
    "init_args": {"lr": 3e-3, "warmup_steps": 50, "weight_decay": 0.0},
}


class SubmissionWriter(BasePredictionWriter):
    """Writes ``gridlm predict`` results as an ARC submission:
    ``{task_id: [{"attempt_1": grid, "attempt_2": grid}, ...]}`` (one entry per test input)."""

    def __init__(self, out: Optional[str] = None) -> None:
        super().__init__(write_interval="epoch")
        self.out = out

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "predict" and self.out:
            check_destination(self.out)

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        if not self.out:
            return
        rows = [r for batch in predictions for r in batch]
        if trainer.world_size > 1:  # gather every rank's rows to rank 0
            gathered = [None] * trainer.world_size
            import torch.distributed as dist

            dist.all_gather_object(gathered, rows)
            rows = [r for part in gathered for r in part]
            if trainer.is_global_zero:
                print(f"gridlm predict: {trainer.world_size} ranks predicted {' + '.join(str(len(p)) for p in gathered)} test inputs")
        if not trainer.is_global_zero:
            return
        n_tests = None
        dm = trainer.datamodule
        if isinstance(dm, GridDataModule) and "predict" in dm.datasets:  # every predicted task, dropped test inputs included
            n_tests = {t.task_id: len(t.test) for t in dm.datasets["predict"].tasks}
        write_submission(rows, self.out, n_tests)


def check_destination(out: str) -> None:
    """Fail before any decoding when the submission cannot be written to ``out``: its folder is
    missing, not a folder, or not writable (tried by creating a temporary file there), or ``out``
    is itself a folder. One-line ``ValueError`` naming ``--out``."""
    path = Path(out)
    folder = path.parent
    if path.is_dir():
        raise ValueError(f"--out {out}: is a folder; give a file name, e.g. --out {path / 'submission.json'}")
    if not folder.exists():
        raise ValueError(f"--out {out}: folder {folder} does not exist; create it first or choose another --out")
    if not folder.is_dir():
        raise ValueError(f"--out {out}: {folder} is not a folder; choose another --out")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{path.name}.", suffix=".check"):
            pass
    except OSError as err:
        raise ValueError(f"--out {out}: cannot write into folder {folder} ({err.strerror or type(err).__name__}); choose another --out") from err


def write_submission(rows: list[dict], out: str, n_tests: Optional[dict[str, int]] = None) -> dict:
    """Rows ``{task_id, test_index, attempts: [grid|None, ...]}`` -> submission JSON at ``out``.

    A missing attempt is written as ``[[0]]`` (counts as wrong, keeps the file valid); so is a test
    input with no row (dropped as too long), because scoring is by position in the task's list.
    ``n_tests`` (task id -> number of test inputs) makes the file complete: every task and every
    test input gets an entry, as the official format expects; without it, entries run up to the
    last test input with a row."""
    sub: dict[str, dict[int, dict]] = {tid: {} for tid in n_tests or {}}
    for r in rows:
        attempts = [a for a in r["attempts"] if a is not None] or [[[0]]]
        attempts = (attempts + attempts)[:2]
        sub.setdefault(r["task_id"], {})[r["test_index"]] = {"attempt_1": attempts[0], "attempt_2": attempts[1]}
    missing = {"attempt_1": [[0]], "attempt_2": [[0]]}

    def count(tid: str, tests: dict) -> int:
        return max((n_tests or {}).get(tid, 0), max(tests, default=-1) + 1)

    result = {tid: [tests.get(i, missing) for i in range(count(tid, tests))] for tid, tests in sorted(sub.items())}
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(path)
    print(f"gridlm predict: wrote {sum(len(v) for v in result.values())} test outputs of {len(result)} tasks to {path}")
    return result


class GridLightningCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.vocab_size", "model.init_args.vocab_size", apply_on="instantiate")
        parser.link_arguments("data.max_seq_len", "model.init_args.max_seq_len")
        parser.link_arguments("data.order", "model.init_args.order")
        parser.link_arguments("data.row_end", "model.init_args.row_end")
        parser.set_defaults({"model": {"class_path": DEFAULT_MODEL, "init_args": {"optimizer": DEFAULT_OPTIMIZER}}})
        parser.add_argument("--run_name", type=Optional[str], default=None, help="Run name (log folder and wandb run name).")
        parser.add_argument("--wandb_mode", type=WandbMode, default="auto", help="auto: online with an API key and network, else offline.")
        parser.add_argument("--wandb_project", type=str, default="gridlm", help="wandb project.")
        parser.add_argument("--study", type=Optional[str], default=None, help="Study name: the wandb group of the run (set by gridlm-compare).")
        parser.add_argument("--max_tokens", type=Optional[int], default=None,
                            help="fit: stop once this many training tokens (non-pad, all devices) are seen (TokenBudget).")  # fmt: skip
        parser.add_argument("--master_timeout", type=float, default=300.0,
                            help="Seconds a process of a multi-device run waits to reach MASTER_ADDR:MASTER_PORT (docs/scaling.md).")  # fmt: skip
        parser.add_lightning_class_args(SubmissionWriter, "submission")

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        trainer_cfg = self._get(self.config_init, "trainer", default={})
        scaling.check_devices(trainer_cfg)
        if (strategy := scaling.strategy_for(trainer_cfg)) is not None:
            kwargs["strategy"] = strategy  # --trainer.strategy fsdp: gridlm's FSDP (experiments/fsdp.py)
        if trainer_cfg.get("logger") in (None, True):
            # default loggers: CSV always, wandb offline unless a key and network are there
            run = run_folder_of(cfg.get("ckpt_path")) if self.subcommand in ("validate", "test", "predict") else None
            child = rank_zero_only.rank > 0  # a DDP child re-runs this CLI after rank 0 made its folder
            if run is not None:  # evaluating a run's checkpoint: results go into that run's folder
                folder = eval_folder(run, self.subcommand, latest=child)
                csv = CSVLogger(save_dir=str(run), name="", version=folder)
                wandb_name = f"{run.parent.name}/{run.name}/{folder}"
            else:
                root = trainer_cfg.get("default_root_dir") or "runs"
                name = cfg.get("run_name") or "gridlm"
                # a DDP child shares rank 0's version folder (Lightning broadcasts rank 0's log_dir)
                csv = CSVLogger(save_dir=root, name=name, version=_latest_version(Path(root) / name) if child else None)
                wandb_name = f"{name}/version_{csv.version}"
            loggers = [csv]
            if not child:
                csv.experiment  # noqa: B018  create the folder now, before config.yaml or wandb write into it
            # predict logs no metrics: a wandb run of it would stay empty
            if not child and self.subcommand != "predict" and cfg.get("wandb_mode", "auto") != "disabled":
                loggers.append(
                    GridWandbLogger(
                        project=cfg.get("wandb_project", "gridlm"),
                        mode=cfg.get("wandb_mode", "auto"),
                        save_dir=csv.log_dir,
                        name=wandb_name,
                    )
                )
            kwargs["logger"] = loggers
        if self.subcommand == "fit" and cfg.get("max_tokens") is not None:
            # right after LossLogging, whose token count it reads after each batch
            defaults = list(self.trainer_defaults.get("callbacks") or [])
            at = next((i + 1 for i, c in enumerate(defaults) if isinstance(c, LossLogging)), len(defaults))
            self.trainer_defaults = {**self.trainer_defaults, "callbacks": [*defaults[:at], TokenBudget(cfg["max_tokens"]), *defaults[at:]]}
        if trainer_cfg.get("plugins") is None:
            kwargs["plugins"] = [AtomicCheckpointIO()]  # atomic saves, weights_only loads
        return super().instantiate_trainer(**kwargs)

    def _resolved_config(self) -> dict:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        return yaml.safe_load(self._parser(self.subcommand).dump(cfg, skip_none=False, skip_check=True))

    def before_fit(self) -> None:
        self.model.resolved_config = self._resolved_config()
        self._check_launch()
        self._check_ckpt_path()
        # an unknown pretrained name or a missing file fails now, before any data is loaded
        resolve_checkpoint(getattr(self.model, "init_from", None), "--model.init_from")

    def before_validate(self) -> None:
        self._check_launch()
        self._check_ckpt_path()

    def before_test(self) -> None:
        self._check_launch()
        self._check_ckpt_path()

    def before_instantiate_classes(self) -> None:
        if self.subcommand == "predict":  # before any folder, model, data or decoding
            out = (self.config["predict"].get("submission") or {}).get("out")
            if out:
                check_destination(out)

    def before_predict(self) -> None:
        self._check_launch()
        self._check_ckpt_path()

    def _run_subcommand(self, subcommand: str) -> None:
        with warnings.catch_warnings():
            if subcommand != "fit" and not sys.warnoptions and not verbose_requested():
                # evaluating a checkpoint restores its ModelCheckpoint state, whose folder differs
                # from this run's; nothing is saved outside fit, so the warning says nothing
                warnings.filterwarnings("ignore", message="The dirpath has changed from")
            super()._run_subcommand(subcommand)

    def _check_launch(self) -> None:
        """Multi-device runs: a global batch that divides, a reachable master (docs/scaling.md)."""
        scaling.check_batch(self.trainer, self.datamodule)
        scaling.check_master_reachable(self.trainer, float(self.config_init[self.subcommand].get("master_timeout", 300.0)))

    def _check_ckpt_path(self) -> None:
        """Before any data is loaded: ``fit --ckpt_path last`` -> the newest ``last*.ckpt`` of this
        run name (Lightning only looks in the new version folder); a missing file or a checkpoint
        of a differently shaped model -> one-line errors."""
        cfg = self.config_init[self.subcommand]
        path = cfg.get("ckpt_path")
        if path is None or path in ("best", "hpc") or "://" in str(path):
            return
        if path == "last":
            if self.subcommand != "fit":
                return
            found = find_last_checkpoint(self.trainer)
            if found is None:
                return  # Lightning warns and starts from scratch
            cfg["ckpt_path"] = path = found
        scaling.check_checkpoint_strategy(path, self.trainer)
        checkpoint = read_checkpoint(path)
        check_compatible(checkpoint, self.model, path)
        if self.datamodule is not None:
            check_serialization(checkpoint, self.datamodule, path)

    def _parse_ckpt_path(self) -> None:
        """Lightning replaces every model option with the checkpoint's hyperparameters. First make
        sure no architecture option the user set (a value other than its default) disagrees with
        them; afterwards put back the other options the user set (``n_votes``, ``ttt_steps``,
        ``n_generate``, ``n_passes``, ...): they choose how the weights are used, and the
        checkpoint's values silently replaced them (``predict --model.n_votes 8`` decoded greedily).
        Serialization options are checked against the checkpoint later (``check_serialization``).
        ``pretrained:<name>`` becomes the shipped file's path; ``data.max_seq_len`` left at its
        default takes the checkpoint's (a model's position tables are sized by it)."""
        sub = self.config.get("subcommand")
        path = self.config[sub].get("ckpt_path") if sub else None
        if isinstance(path, str) and path.startswith(PRETRAINED_PREFIX):
            if sub == "fit":
                raise ValueError(
                    f"fit --ckpt_path {path}: shipped weights are a starting point, not a run to resume; "
                    f"fine-tune from them with --model.init_from {path}"
                )
            path = self.config[sub]["ckpt_path"] = resolve_checkpoint(path)
        user_set: dict = {}
        if path is not None and path not in ("last", "best", "hpc") and "://" not in str(path):
            saved = read_checkpoint(path).get("hyper_parameters") or {}
            data = self.config[sub].get("data")
            data_default = _init_defaults(f"{GridDataModule.__module__}.{GridDataModule.__name__}").get("max_seq_len")
            if data is not None and "max_seq_len" in saved and data.get("max_seq_len") == data_default:
                data["max_seq_len"] = saved["max_seq_len"]  # unset: the checkpoint's (its position tables' size)
            model = self.config[sub].get("model")
            if saved and model is not None and model.get("class_path"):
                requested = dict(vars(model.get("init_args") or {}))
                defaults = _init_defaults(model["class_path"])
                diffs = hparam_mismatches(saved, requested, defaults)
                if diffs:
                    raise ValueError(f"checkpoint {path} does not match the model: " + "; ".join(diffs))
                user_set = {
                    k: v
                    for k, v in requested.items()
                    if k in saved and k in defaults and k not in MODEL_FIELDS and repr(v) != repr(defaults[k])
                }
        self._apply_checkpoint_hparams(path)
        for k, v in user_set.items():
            self.config[sub]["model"]["init_args"][k] = v


    def _apply_checkpoint_hparams(self, path: Optional[str]) -> None:
        """Lightning's ``_parse_ckpt_path``: the checkpoint's model hyperparameters replace the
        model options; read through :func:`read_checkpoint`, so the class paths of older
        releases (``modules.base_model...``) resolve to ``gridlm.modules...``."""
        sub = self.config.get("subcommand")
        if not sub or not path or not (Path(path).is_file() or scaling.is_sharded_checkpoint(path)):
            return
        hparams = dict(read_checkpoint(path).get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        self.config = self.parser.parse_object({sub: {"model": hparams}}, self.config)


def run_folder_of(ckpt_path: Optional[str]) -> Optional[Path]:
    """The run folder a checkpoint was saved in: ``<run>/checkpoints/<name>.ckpt`` where ``<run>``
    holds a run's files (``config.yaml``, ``hparams.yaml`` or ``metrics.csv``); else None."""
    if not ckpt_path or ckpt_path in ("last", "best", "hpc") or "://" in str(ckpt_path):
        return None
    path = Path(ckpt_path)
    run = path.parent.parent
    if path.parent.name != "checkpoints" or not any((run / f).is_file() for f in ("config.yaml", "hparams.yaml", "metrics.csv")):
        return None
    return run


def eval_folder(run: Path, stage: str, latest: bool = False) -> str:
    """Where ``gridlm <stage>`` of a run's checkpoint writes inside the run folder: ``<stage>``, or
    ``<stage>_1``, ``<stage>_2``, ... when earlier ones hold files (nothing is overwritten; an
    empty one, left by a run that stopped at an error, is reused).
    ``latest``: the newest existing one (a DDP child joins the folder rank 0 made)."""
    def name(k: int) -> str:
        return stage if k == 0 else f"{stage}_{k}"

    k = 0
    while (run / name(k)).exists():
        if not latest and not any((run / name(k)).iterdir()):
            return name(k)
        k += 1
    return name(max(0, k - 1) if latest else k)


def _latest_version(folder: Path) -> int:
    versions = [int(d.name.split("_", 1)[1]) for d in folder.glob("version_*") if d.name.split("_", 1)[1].isdigit()]
    return max(versions, default=0)


def _init_defaults(class_path: str) -> dict:
    import importlib
    import inspect

    module, _, name = class_path.rpartition(".")
    sig = inspect.signature(getattr(importlib.import_module(module), name).__init__)
    return {k: p.default for k, p in sig.parameters.items() if p.default is not inspect.Parameter.empty}


def _argv_aliases(argv: list[str]) -> list[str]:
    """``gridlm predict --out X`` is short for ``--submission.out X``; ``--config quickstart``
    names a packaged config (:func:`gridlm.configs.resolve_config`)."""
    if argv and argv[0] == "predict":
        argv = ["--submission.out" if a == "--out" else a.replace("--out=", "--submission.out=", 1) if a.startswith("--out=") else a for a in argv]
    out = []
    for i, a in enumerate(argv):
        if i > 0 and argv[i - 1] in ("--config", "-c"):
            a = resolve_config(a)
        elif a.startswith("--config="):
            a = "--config=" + resolve_config(a[len("--config=") :])
        out.append(a)
    return out


def cli_main(args: Optional[list[str]] = None, run: bool = True, **kwargs: Any) -> GridLightningCLI:
    """Build (and by default run) the CLI; ``args`` like ``["fit", "--config", ...]``."""
    args = _argv_aliases(list(sys.argv[1:] if args is None else args))
    return GridLightningCLI(
        model_class=L.LightningModule,
        datamodule_class=GridDataModule,
        subclass_mode_model=True,
        trainer_defaults={"callbacks": [ScheduleFreeMode(), LossLogging(), ValExamples(), WandbTracking(), FaultTolerance()], "use_distributed_sampler": False},
        parser_class=kwargs.pop("parser_class", GridArgumentParser),
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
        **kwargs,
    )


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["--version"], ["-V"]):
        from gridlm.modules.provenance import version_report

        print(version_report())
        return 0
    if argv and argv[0] in ("score", "show"):
        from gridlm.experiments import score, show

        return (score if argv[0] == "score" else show).main(argv[1:])
    # argv is sys.argv[1:] when run as the `gridlm` script: LightningCLI's "both args and sys.argv" warning is noise
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    try:
        cli_main(argv)
    except SIGTERMException as err:  # FaultTolerance saved the last checkpoint and said where
        return 130 if getattr(err, "signal_name", None) == "SIGINT" else 143
    except NonFiniteLossError as err:
        if os.environ.get("GRIDLM_DEBUG"):
            raise
        saved = getattr(err, "checkpoint_path", None)
        print(f"gridlm: error: {err}" + (f" Last checkpoint: {saved}" if saved else ""), file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as err:
        if os.environ.get("GRIDLM_DEBUG"):
            raise
        print(f"gridlm: error: {user_error(err)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
