"""wandb can fail in every way without touching training: CSV metrics are complete, one warning,
and the process ends promptly. No real network: the "server" is a closed localhost port."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from gridlm.experiments.cli import cli_main
from test_cli import read_metrics, tiny_flags


def wandb_flags(tmp_path: Path, steps: int = 4) -> list[str]:
    flags = tiny_flags(tmp_path, steps=steps)
    flags[flags.index("--wandb_mode") + 1] = "online"
    return flags


def test_failing_wandb_init_leaves_training_and_csv(tmp_path, monkeypatch):
    import wandb

    calls = []

    def broken_init(*args, **kwargs):
        calls.append(kwargs.get("mode"))
        if kwargs.get("mode") != "disabled":
            raise wandb.errors.CommError("simulated: no route to host")
        return real_init(*args, **kwargs)

    real_init = wandb.init
    monkeypatch.setattr(wandb, "init", broken_init)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli = cli_main(["fit", *wandb_flags(tmp_path)])
    wandb_warnings = [w for w in caught if str(w.message).startswith("wandb:")]
    assert len(wandb_warnings) == 1, [str(w.message) for w in wandb_warnings]
    assert "wandb.init failed (CommError: simulated: no route to host)" in str(wandb_warnings[0].message)
    assert "\n" not in str(wandb_warnings[0].message)
    assert calls[0] == "online" and calls[-1] == "disabled"
    metrics = read_metrics(cli.trainer.log_dir)
    assert len(metrics["train/loss"]) == 4 and "val/loss" in metrics


@pytest.mark.slow
def test_bad_key_and_unreachable_server_in_a_real_process(tmp_path):
    """WANDB_MODE=online, a bogus key, WANDB_BASE_URL on a closed port: the run finishes with
    metrics in CSV and exactly one wandb warning. The subprocess timeout only catches a hang; how
    fast wandb gives up (about 7 s here) is printed, not asserted (the machine may be loaded)."""
    env = {
        **os.environ,
        "WANDB_MODE": "online",
        "WANDB_API_KEY": "0" * 40,
        "WANDB_BASE_URL": "http://127.0.0.1:9",  # discard port: nothing listens, connections are refused
        "WANDB_DIR": str(tmp_path),
        "WANDB_CONFIG_DIR": str(tmp_path / ".wandb_config"),
        "WANDB_CACHE_DIR": str(tmp_path / ".wandb_cache"),
        "WANDB_SILENT": "true",
    }
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "gridlm.experiments.cli", "fit", *wandb_flags(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings_ = [ln for ln in proc.stderr.splitlines() if "UserWarning: wandb:" in ln]
    assert len(warnings_) == 1, proc.stderr[-3000:]
    assert "wandb.init failed" in warnings_[0] and "continuing without wandb" in warnings_[0]
    metrics = read_metrics(str(tmp_path / "runs" / "t" / "version_0"))
    assert len(metrics["train/loss"]) == 4 and "val/loss" in metrics
    print(f"fit with an unreachable wandb server took {elapsed:.1f} s")
