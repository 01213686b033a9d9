"""Per-example validation results (val_examples.csv) and the token budget, on real tiny fits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from gridlm.callbacks.loss_logging import LossLogging
from gridlm.callbacks.token_budget import TokenBudget
from gridlm.callbacks.val_examples import EXAMPLES_FILE, read_examples
from gridlm.datamodules.datamodule import GridDataModule
from gridlm.datamodules.tokens import ROLE_TEST_OUTPUT
from gridlm.experiments.cli import cli_main, main
from gridlm.modules.base_model import AutoregressiveGridModel, positions_of
from gridlm.modules.eval_examples import example_rows
from test_cli import read_metrics, tiny_flags

N_VAL = 8  # tiny_flags: data.max_val_examples


def tiny_data(**kw) -> GridDataModule:
    args = dict(source="synthetic", n_synthetic=12, synthetic_max_side=5, max_seq_len=512, batch_size=4, max_val_examples=N_VAL)
    return GridDataModule(**{**args, **kw})


# ---------------------------------------------------------------- rows of one batch
def test_example_rows_match_a_per_row_reference():
    """Per-example loss of the batched fast path against each row run alone, cut to its length."""
    torch.manual_seed(0)
    dm = tiny_data()
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    model = AutoregressiveGridModel(d_model=16, n_layers=1, n_heads=2, max_seq_len=512).eval()
    with torch.no_grad():
        losses, _, _ = model.token_losses(batch)
        got = example_rows(batch, losses, {0: 1.0, 2: 0.0})
        for i, row in enumerate(got):
            n = int(batch["lengths"][i])
            one = {k: v[i : i + 1, :n] for k, v in batch.items() if torch.is_tensor(v) and v.dim() == 2}
            one.update(lengths=batch["lengths"][i : i + 1], meta=batch["meta"][i : i + 1])
            logits = model.model(one["tokens"], positions_of(one))[0, :-1]  # (n-1, V)
            keep = one["target_mask"][0, 1:] & (one["role"][0, 1:] == ROLE_TEST_OUTPUT)
            ref = F.cross_entropy(logits[keep].float(), one["tokens"][0, 1:][keep])
            assert row["loss"] == pytest.approx(float(ref), rel=1e-5), i
            assert row["tokens"] == int(keep.sum())
            assert (row["task_id"], row["test_index"]) == (batch["meta"][i]["task_id"], batch["meta"][i]["query"])
    assert [r["exact_match"] for r in got] == [1.0, None, 0.0, None][: len(got)]  # undecoded rows: None, not 0


# ---------------------------------------------------------------- a real fit writes the CSV
@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("examples")
    flags = tiny_flags(tmp, steps=4, **{"--trainer.val_check_interval": "2", "--model.n_generate": "3", "--seed_everything": "5"})
    cli = cli_main(["fit", *flags])
    return cli, tmp, flags


def test_fit_writes_one_row_per_validation_example(fitted):
    cli, _, _ = fitted
    log_dir = Path(cli.trainer.log_dir)
    everything = read_examples(log_dir / EXAMPLES_FILE, last_only=False)
    summary = json.loads((log_dir / "run_summary.json").read_text())
    metrics = read_metrics(str(log_dir))
    steps = sorted({r["step"] for r in everything})
    assert steps == [v["step"] for v in summary["validations"]] == [2, 4]
    for k, step in enumerate(steps):
        rows = [r for r in everything if r["step"] == step]
        assert len(rows) == N_VAL and len({(r["task_id"], r["test_index"]) for r in rows}) == N_VAL
        assert {r["tokens_seen"] for r in rows} == {summary["validations"][k]["tokens_seen"]}
        assert {(r["encoding"], r["order"], r["seed"]) for r in rows} == {("rope_1d+edges_2d", "row_major", "5")}  # the quickstart encoding
        # the averaged metrics are the per-example rows put together
        val_loss = sum(r["loss"] * r["tokens"] for r in rows) / sum(r["tokens"] for r in rows)  # token-weighted
        assert val_loss == pytest.approx(metrics["val/loss"][k], rel=1e-5)
        decoded = [r["exact_match"] for r in rows if r["exact_match"] is not None]
        assert len(decoded) == 3  # n_generate: the others are empty, not 0
        assert sum(decoded) / 3 == pytest.approx(metrics["val/exact_match"][k])
    assert read_examples(log_dir / EXAMPLES_FILE) == [r for r in everything if r["step"] == 4]  # last validation


def test_validate_writes_the_rows_of_its_own_run(fitted, tmp_path):
    cli, tmp, flags = fitted
    ckpt = cli.trainer.checkpoint_callback.last_model_path
    val = cli_main(["validate", *flags, "--ckpt_path", ckpt])
    rows = read_examples(Path(val.trainer.log_dir) / EXAMPLES_FILE, last_only=False)
    fit_rows = read_examples(Path(cli.trainer.log_dir) / EXAMPLES_FILE)
    assert len(rows) == N_VAL and {r["tokens_seen"] for r in rows} == {None}  # no training tokens outside fit
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in fit_rows], rel=1e-5)
    assert [r["exact_match"] for r in rows] == [r["exact_match"] for r in fit_rows]


# ---------------------------------------------------------------- token budget
def test_token_budget_stops_fit_after_the_step_that_reaches_it(tmp_path):
    budget = 3000
    flags = tiny_flags(tmp_path, steps=200, **{"--trainer.val_check_interval": "4"})
    cli = cli_main(["fit", *flags, "--max_tokens", str(budget)])
    (cb,) = [c for c in cli.trainer.callbacks if isinstance(c, TokenBudget)]
    callbacks = list(cli.trainer.callbacks)
    assert callbacks.index(cb) == 1 + next(i for i, c in enumerate(callbacks) if isinstance(c, LossLogging))
    seen = read_metrics(cli.trainer.log_dir)["train/tokens_seen"]  # every step (log_every_n_steps 1)
    steps = cli.trainer.global_step
    assert 1 < steps < 200 and len(seen) == steps
    assert seen[-2] < budget <= seen[-1]  # stopped after the first step at or past the budget
    summary = json.loads((Path(cli.trainer.log_dir) / "run_summary.json").read_text())
    assert summary["tokens_seen"] == seen[-1] == cb.stopped_at and summary["status"] == "finished"
    assert summary["validations"][-1]["step"] == steps  # a final validation at the budget
    assert summary["validations"][-1]["tokens_seen"] == seen[-1]


def test_no_budget_no_callback_and_bad_budgets_are_one_line_errors(tmp_path, capsys):
    cli = cli_main(["fit", *tiny_flags(tmp_path, steps=1)])
    assert not any(isinstance(c, TokenBudget) for c in cli.trainer.callbacks)
    assert main(["fit", *tiny_flags(tmp_path, steps=1), "--max_tokens", "0"]) == 2
    assert "max_tokens must be a positive integer" in capsys.readouterr().err
    with pytest.raises(ValueError, match="positive integer"):
        TokenBudget(True)


def test_token_budget_needs_loss_logging_before_it(tmp_path):
    dm = tiny_data()
    model = AutoregressiveGridModel(d_model=16, n_layers=1, n_heads=2, max_seq_len=512)
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        callbacks=[TokenBudget(100), LossLogging()], default_root_dir=tmp_path)  # fmt: skip
    with pytest.raises(ValueError, match="must come after it in trainer.callbacks"):
        trainer.fit(model, dm)


# ---------------------------------------------------------------- DDP
@pytest.mark.slow
def test_ddp_rows_are_gathered_once_and_the_budget_stops_every_rank(tmp_path):
    """Two gloo ranks: rank 0 writes every validation example exactly once (the same rows as one
    process validating the final checkpoint), and the all-reduced token count stops both ranks
    at the same step (a rank left behind would hang the run)."""
    root = tmp_path / "ddp"
    root.mkdir()
    budget = 2500
    flags = tiny_flags(root, steps=200, **{"--trainer.val_check_interval": "3", "--model.n_generate": str(N_VAL), "--data.batch_size": "3"})
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-m", "gridlm.experiments.cli", "fit", *flags, "--max_tokens", str(budget),
                           "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    log_dir = root / "runs" / "t" / "version_0"
    summary = json.loads((log_dir / "run_summary.json").read_text())
    seen = read_metrics(str(log_dir))["train/tokens_seen"]
    assert seen[-2] < budget <= seen[-1] == summary["tokens_seen"] and summary["steps"] == len(seen)
    rows = read_examples(log_dir / EXAMPLES_FILE, last_only=False)
    for step in {r["step"] for r in rows}:
        keys = [(r["task_id"], r["test_index"]) for r in rows if r["step"] == step]
        assert len(keys) == len(set(keys)) == N_VAL, step
    last = read_examples(log_dir / EXAMPLES_FILE)
    assert last[0]["step"] == summary["steps"]

    single = cli_main(["validate", *tiny_flags(tmp_path / "single", **{"--model.n_generate": str(N_VAL)}),
                       "--ckpt_path", str(next((log_dir / "checkpoints").glob("last*.ckpt")))])  # fmt: skip
    ref = read_examples(Path(single.trainer.log_dir) / EXAMPLES_FILE)
    assert [(r["task_id"], r["test_index"]) for r in last] == [(r["task_id"], r["test_index"]) for r in ref]
    assert [r["loss"] for r in last] == pytest.approx([r["loss"] for r in ref], rel=1e-4)
    assert [r["exact_match"] for r in last] == [r["exact_match"] for r in ref]
