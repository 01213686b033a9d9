"""experiments/quiet.py: the third-party messages gridlm drops, and how a user keeps them
(``GRIDLM_VERBOSE``, a DEBUG Lightning logger, ``python -W``)."""

from __future__ import annotations

import logging
import sys
import warnings

import pytest

from gridlm.experiments import quiet

PYTREE = "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec) and treespec.is_leaf()` instead."


def tip_record() -> logging.LogRecord:
    msg = quiet.LITLOGGER_TIP + " and experiment management, try installing litlogger"
    return logging.LogRecord("lightning.pytorch.utilities.rank_zero", logging.INFO, __file__, 1, msg, None, None)


def test_litlogger_tip_dropped_unless_verbose_or_debug(monkeypatch):
    monkeypatch.delenv(quiet.VERBOSE_ENV, raising=False)
    drop = quiet._DropLitLoggerTip()
    other = logging.LogRecord("x", logging.INFO, __file__, 1, "gridlm data: val: 4 examples", None, None)
    assert drop.filter(other) and not drop.filter(tip_record())
    monkeypatch.setenv(quiet.VERBOSE_ENV, "1")
    assert drop.filter(tip_record())
    monkeypatch.delenv(quiet.VERBOSE_ENV)
    lightning_logger = logging.getLogger("lightning.pytorch")
    monkeypatch.setattr(lightning_logger, "level", logging.DEBUG)
    assert drop.filter(tip_record())


@pytest.mark.parametrize("value, verbose", [("1", True), ("true", True), ("0", False), ("false", False), ("", False), (None, False)])
def test_verbose_requested(monkeypatch, value, verbose):
    if value is None:
        monkeypatch.delenv(quiet.VERBOSE_ENV, raising=False)
    else:
        monkeypatch.setenv(quiet.VERBOSE_ENV, value)
    assert quiet.verbose_requested() is verbose


def warned_after_quieting(monkeypatch, verbose: bool, warnoptions: list[str]) -> list[str]:
    """The pytree FutureWarning and an unrelated one, raised after ``quiet_known_noise``."""
    monkeypatch.setattr(sys, "warnoptions", warnoptions)
    if verbose:
        monkeypatch.setenv(quiet.VERBOSE_ENV, "1")
    else:
        monkeypatch.delenv(quiet.VERBOSE_ENV, raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet.quiet_known_noise()
        warnings.warn(PYTREE, FutureWarning)
        warnings.warn("something gridlm's user should see", UserWarning)
    return [str(w.message) for w in caught]


def test_pytree_warning_dropped_and_kept_when_asked(monkeypatch):
    assert warned_after_quieting(monkeypatch, verbose=False, warnoptions=[]) == ["something gridlm's user should see"]
    assert len(warned_after_quieting(monkeypatch, verbose=True, warnoptions=[])) == 2
    assert len(warned_after_quieting(monkeypatch, verbose=False, warnoptions=["default"])) == 2  # python -W default


def test_quiet_third_party_verbose_sets_the_switch_for_the_cli(monkeypatch):
    for name in (quiet.VERBOSE_ENV, "WANDB_QUIET", "WANDB_SILENT"):
        monkeypatch.setenv(name, "x")  # recorded first, so the values quiet_third_party sets are undone
        monkeypatch.delenv(name)
    quiet.quiet_third_party(verbose=True)
    assert quiet.verbose_requested() and quiet.os.environ["WANDB_QUIET"] == "false" and "WANDB_SILENT" not in quiet.os.environ
