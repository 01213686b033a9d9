"""Third-party chatter that gridlm's own choices make moot, and how a user gets it back.

:func:`quiet_known_noise` (called when ``gridlm.experiments.cli`` is imported) drops three messages
that say nothing to a gridlm user:

- Lightning's "💡 Tip: ... try installing litlogger": gridlm chose its loggers (CSV and wandb).
  Kept when the ``lightning.pytorch`` logger is set to DEBUG;
- the ``FutureWarning`` "``isinstance(treespec, LeafSpec)`` is deprecated", raised by Lightning's
  ``utilities/_pytree.py`` under torch >= 2.10: not actionable in gridlm or by its user;
- LightningCLI's warning about passing both ``args`` and ``sys.argv``: gridlm's own entry points
  (``make demo``, ``gridlm-compare``) call the CLI with ``args`` on purpose.

Warning filters are only added when the user set none (``python -W ...`` or ``PYTHONWARNINGS``
keep every warning), as the ``warnings`` documentation recommends for applications.
``GRIDLM_VERBOSE=1`` (what ``make demo``'s ``--verbose`` sets) keeps all of them, and the CLI's
"The dirpath has changed" warning outside fit too.

:func:`quiet_third_party` is the demo's stronger setting: wandb silent (``WANDB_SILENT``, wandb's
own switch), Lightning's and Lightning Fabric's info lines off (their loggers at WARNING, as
Lightning's console-logging docs show; gridlm's own info lines, which go through Lightning's
``rank_zero_info``, stay). ``verbose=True`` asks for everything instead.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

LITLOGGER_TIP = "💡 Tip: For seamless cloud logging"
VERBOSE_ENV = "GRIDLM_VERBOSE"  # set (not "", "0", "false"): keep every third-party message


def verbose_requested() -> bool:
    """True when ``GRIDLM_VERBOSE`` asks for every third-party message (inherited by DDP children)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


class _DropLitLoggerTip(logging.Filter):
    """Drops Lightning's litlogger advertisement unless the ``lightning.pytorch`` logger is at DEBUG
    or ``GRIDLM_VERBOSE`` is set."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(LITLOGGER_TIP) or verbose_requested():
            return True
        return logging.getLogger("lightning.pytorch").getEffectiveLevel() <= logging.DEBUG


def quiet_known_noise() -> None:
    """Drop the third-party messages listed in the module docstring (idempotent); nothing under
    ``GRIDLM_VERBOSE``."""
    if verbose_requested():
        return
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")  # where rank_zero_info logs
    if not any(isinstance(f, _DropLitLoggerTip) for f in rank_zero.filters):
        rank_zero.addFilter(_DropLitLoggerTip())
    if sys.warnoptions:
        return
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")


def quiet_third_party(verbose: bool = False) -> None:
    """``verbose=False``: wandb prints nothing (unless ``WANDB_SILENT`` / ``WANDB_QUIET`` are set
    already), Lightning and Fabric log warnings and errors only. ``verbose=True``: wandb's full
    output (banner, run summary), Lightning's info lines and the messages :func:`quiet_known_noise`
    drops (``GRIDLM_VERBOSE=1``, so the gridlm CLI keeps them as well)."""
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
        os.environ.setdefault("WANDB_QUIET", "false")  # GridWandbLogger's default is wandb's quiet mode
        return
    quiet_known_noise()
    if "WANDB_SILENT" not in os.environ and "WANDB_QUIET" not in os.environ:
        os.environ["WANDB_SILENT"] = "true"
    import lightning.pytorch  # noqa: F401  its import sets its logger to INFO: import first, then lower it

    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")  # Lightning's and gridlm's info lines
    if not any(isinstance(f, _OnlyGridlmInfo) for f in rank_zero.filters):
        rank_zero.addFilter(_OnlyGridlmInfo())
    for name in ("lightning.pytorch", "lightning.fabric"):  # other Lightning loggers ("Seed set to 0", ...)
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.WARNING:
            logger.setLevel(logging.WARNING)
    if rank_zero.getEffectiveLevel() > logging.INFO:
        rank_zero.setLevel(logging.INFO)


class _OnlyGridlmInfo(logging.Filter):
    """Info lines pass only when gridlm wrote them (``gridlm data: ...``); warnings always pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or str(record.msg).startswith("gridlm")
