"""LossLogging: per-role losses, smoothing, the schedule-free learning rate, run_summary.json."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import schedulefree
import torch

from gridlm.callbacks.loss_logging import LossLogging, effective_lr
from gridlm.datamodules.tokens import ROLE_DEMO_OUTPUT, ROLE_TEST_OUTPUT
from gridlm.experiments.cli import cli_main
from gridlm.modules.provenance import config_hash
from test_cli import read_metrics, tiny_flags


@pytest.mark.parametrize("warmup", [0, 1, 5], ids=lambda w: f"warmup{w}")
def test_effective_lr_matches_schedulefree_step(warmup):
    w = torch.nn.Parameter(torch.ones(3))
    opt = schedulefree.AdamWScheduleFree([w], lr=0.01, warmup_steps=warmup)
    opt.train()
    for k in range(8):
        predicted = effective_lr(opt.param_groups[0])
        assert predicted == pytest.approx(0.01 * min(1.0, (k + 1) / warmup) if warmup else 0.01)
        w.grad = torch.full_like(w, 0.5)
        opt.step()
        assert opt.param_groups[0]["scheduled_lr"] == pytest.approx(predicted), f"step {k}"


def test_effective_lr_of_a_scheduled_torch_optimizer_is_the_group_lr():
    w = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.AdamW([w], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5**step)
    w.grad = torch.ones_like(w)
    opt.step()
    sched.step()
    assert effective_lr(opt.param_groups[0]) == pytest.approx(0.05)


class _Stub:
    """Just enough of a Trainer / LightningModule for the callback's per-batch hooks."""

    def __init__(self):
        self.logged: dict[str, float] = {}
        self.loop = SimpleNamespace(total_batch_idx=0)
        self.trainer = SimpleNamespace(
            fit_loop=SimpleNamespace(epoch_loop=self.loop),
            strategy=SimpleNamespace(reduce=lambda t, reduce_op: t),
            log_every_n_steps=1,
            sanity_checking=False,
            log_dir=None,  # no logger: no run summary
        )
        self.module = SimpleNamespace(log=lambda k, v, **kw: self.logged.__setitem__(k, v), device=torch.device("cpu"))

    def batch(self, cb, losses, roles, lengths=(5, 3), idx=0):
        self.loop.total_batch_idx = idx
        self.module._last_losses = (torch.tensor(losses), torch.tensor(roles))
        batch = {"lengths": torch.tensor(lengths), "tokens": torch.zeros(len(lengths), 8, dtype=torch.long)}
        cb.on_train_batch_end(self.trainer, self.module, None, batch, idx)


def test_per_role_losses_smoothing_and_tokens():
    stub, cb = _Stub(), LossLogging(every_n_steps=2, ema_beta=0.5)
    cb.setup(stub.trainer, stub.module, "fit")
    cb.on_fit_start(stub.trainer, stub.module)
    d, t = ROLE_DEMO_OUTPUT, ROLE_TEST_OUTPUT
    stub.batch(cb, [1.0, 2.0, 4.0], [d, d, t], idx=0)  # step loss 7/3
    assert not stub.logged  # not a logging step
    stub.batch(cb, [3.0, 6.0], [d, t], idx=1)  # step loss 4.5
    logged = stub.logged
    assert logged["train/loss_demo_output"] == pytest.approx((1 + 2 + 3) / 3)  # over both batches
    assert logged["train/loss_test_output"] == pytest.approx((4 + 6) / 2)
    ema = 0.5 * (0.5 * 7 / 3) + 0.5 * 4.5  # biased EMA, then divided by 1 - beta^2
    assert logged["train/loss_smooth"] == pytest.approx(ema / (1 - 0.25))
    assert logged["train/tokens_seen"] == 16 and cb.tokens_seen == 16
    assert logged["train/tokens_per_s"] > 0
    assert "train/loss_demo_input" not in logged  # roles without targets are not logged


def test_a_skipped_step_does_not_count_its_stale_losses_twice():
    stub, cb = _Stub(), LossLogging(every_n_steps=1)
    cb.setup(stub.trainer, stub.module, "fit")
    cb.on_fit_start(stub.trainer, stub.module)
    stub.batch(cb, [2.0], [ROLE_TEST_OUTPUT], idx=0)
    batch = {"lengths": torch.tensor([4]), "tokens": torch.zeros(1, 4, dtype=torch.long)}
    stub.loop.total_batch_idx = 1  # the module skipped the step: _last_losses is the same tuple
    stub.logged.clear()
    cb.on_train_batch_end(stub.trainer, stub.module, None, batch, 1)
    assert "train/loss_test_output" not in stub.logged  # no new supervised tokens since the last log
    assert stub.logged["train/tokens_seen"] == 12  # but the batch's tokens were processed
    assert cb._ema_steps == 1


class TwoRanks:
    """``strategy.reduce(t, reduce_op="sum")`` between two threads, as DDP all-reduces between two
    processes: each rank blocks until the other sends its tensor (a rank that skips the
    collective makes the other time out, as a DDP hang would)."""

    def __init__(self):
        self.barrier, self.sent = threading.Barrier(2, timeout=20), [None, None]

    def reduce(self, rank: int):
        def reduce(t, reduce_op):
            assert reduce_op == "sum"
            self.sent[rank] = t.clone()
            self.barrier.wait()
            total = self.sent[0] + self.sent[1]
            self.barrier.wait()
            return total

        return reduce


def two_ranks_log(per_rank: list[list[tuple]]) -> list[dict]:
    """Two ranks (threads) run the per-batch hooks over their batches ``(losses, roles, lengths)``
    (``losses`` None: no supervised token, the module's ``_last_losses`` stays unset), one
    logging interval; returns what each logged."""
    ranks, logged, errors = TwoRanks(), [None, None], []

    def run(rank: int) -> None:
        try:
            stub, cb = _Stub(), LossLogging(every_n_steps=len(per_rank[rank]))
            stub.trainer.strategy = SimpleNamespace(reduce=ranks.reduce(rank))
            cb.setup(stub.trainer, stub.module, "fit")
            cb.on_fit_start(stub.trainer, stub.module)
            for i, (losses, roles, lengths) in enumerate(per_rank[rank]):
                if losses is not None:
                    stub.batch(cb, losses, roles, lengths, idx=i)
                else:
                    stub.loop.total_batch_idx = i
                    batch = {"lengths": torch.tensor(lengths), "tokens": torch.zeros(len(lengths), 8, dtype=torch.long)}
                    cb.on_train_batch_end(stub.trainer, stub.module, None, batch, i)
            logged[rank] = dict(stub.logged)
        except Exception as e:  # noqa: BLE001 - re-raised by the main thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    assert not errors, errors
    return logged


def test_per_role_losses_and_tokens_are_pooled_over_ranks():
    """Under DDP train/loss_<role> is the mean over both ranks' tokens of that role (rank 0's
    value is the one written), also when a rank has no token of a role in the interval."""
    d, t = ROLE_DEMO_OUTPUT, ROLE_TEST_OUTPUT
    logged = two_ranks_log([
        [([1.0, 2.0, 4.0], [d, d, t], (5, 3)), ([3.0], [d], (4,))],
        [([10.0, 20.0], [t, t], (6,)), ([6.0, 9.0], [t, d], (2, 2))],
    ])  # fmt: skip
    for got in logged:
        assert got["train/loss_demo_output"] == pytest.approx((1 + 2 + 3 + 9) / 4)
        assert got["train/loss_test_output"] == pytest.approx((4 + 10 + 20 + 6) / 4)
        assert got["train/tokens_seen"] == 5 + 3 + 4 + 6 + 2 + 2


def test_a_rank_without_supervised_tokens_still_takes_part_in_the_reduction():
    """Rank 1 saw no supervised token in the interval: it must still send (zeros), or rank 0
    would wait for it forever; both log rank 0's per-role means and every rank's tokens."""
    d, t = ROLE_DEMO_OUTPUT, ROLE_TEST_OUTPUT
    logged = two_ranks_log([[([1.0, 3.0, 4.0], [d, d, t], (5, 3))], [(None, None, (7,))]])
    for got in logged:
        assert (got["train/loss_demo_output"], got["train/loss_test_output"]) == pytest.approx((2.0, 4.0))
        assert got["train/tokens_seen"] == 5 + 3 + 7


def test_lr_scheduler_option_is_stepped_and_logged(tmp_path):
    """``model.lr_scheduler`` (manual optimization steps it in training_step): warmup then cosine."""
    flags = {
        "--model.optimizer": "torch.optim.AdamW",
        "--model.optimizer.lr": "0.01",
        "--model.lr_scheduler": "torch.optim.lr_scheduler.OneCycleLR",
        "--model.lr_scheduler.max_lr": "0.01",
        "--model.lr_scheduler.total_steps": "5",
        "--model.lr_scheduler.pct_start": "0.4",
        "--model.lr_scheduler.cycle_momentum": "false",
    }
    cli = cli_main(["fit", *tiny_flags(tmp_path, steps=4, **flags)])
    lrs = read_metrics(cli.trainer.log_dir)["train/lr"]
    ref_opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    ref = torch.optim.lr_scheduler.OneCycleLR(ref_opt, max_lr=0.01, total_steps=5, pct_start=0.4, cycle_momentum=False)
    expected = []
    for _ in range(4):
        expected.append(ref_opt.param_groups[0]["lr"])
        ref_opt.step()
        ref.step()
    assert lrs == pytest.approx(expected, rel=1e-5)
    assert lrs[1] > lrs[0] and lrs[3] < lrs[2]  # warmup, then annealing


def test_every_n_steps_must_be_a_multiple_of_log_every_n_steps():
    stub = _Stub()
    stub.trainer.log_every_n_steps = 10
    with pytest.raises(ValueError, match="LossLogging.every_n_steps=15 must be a multiple of trainer.log_every_n_steps=10"):
        LossLogging(every_n_steps=15).setup(stub.trainer, stub.module, "fit")
    with pytest.raises(ValueError, match="ema_beta"):
        LossLogging(ema_beta=1.0)
    with pytest.raises(ValueError, match="every_n_steps"):
        LossLogging(every_n_steps=0)


def test_fit_writes_run_summary_and_logs_diagnostics(tmp_path):
    lr, warmup = 0.003, 50  # the quickstart optimizer
    cli = cli_main(["fit", *tiny_flags(tmp_path, steps=4, **{"--trainer.val_check_interval": "2"})])
    log_dir = Path(cli.trainer.log_dir)
    summary = json.loads((log_dir / "run_summary.json").read_text())
    metrics = read_metrics(str(log_dir))

    assert summary["status"] == "finished" and summary["error"] is None and summary["steps"] == 4
    assert summary["tokens_seen"] == metrics["train/tokens_seen"][-1] > 0
    assert summary["wall_time_s"] >= summary["train_time_s"] > 0
    assert [v["step"] for v in summary["validations"]] == [2, 4]
    assert summary["validations"][0]["tokens_seen"] < summary["validations"][1]["tokens_seen"] == summary["tokens_seen"]
    assert summary["final"]["val/loss"] == pytest.approx(metrics["val/loss"][-1])
    assert summary["best"]["val/loss"]["value"] == pytest.approx(min(metrics["val/loss"]))
    assert set(summary["best"]) == {"val/loss", "val/cell_acc", "val/exact_match"}
    assert summary["config"] == cli.model.resolved_config and summary["config"]["model"]["init_args"]["d_model"] == 16
    assert summary["config_hash"] == config_hash(summary["config"]) and len(summary["config_hash"]) == 12
    assert summary["versions"]["torch"] and summary["git_commit"]

    for key in ("train/loss_demo_output", "train/loss_test_output", "train/loss_smooth", "train/grad_norm", "train/tokens_per_s"):
        assert len(metrics[key]) == 4, key
    # the schedule-free warmup: the rate of step k (0-based) is lr * (k+1) / warmup_steps
    assert metrics["train/lr"] == pytest.approx([lr * (k + 1) / warmup for k in range(4)], rel=1e-6)
    assert "train/pad_fraction" in metrics  # logged by the module, once per step
    assert len(metrics["train/pad_fraction"]) == 4


def test_a_failing_fit_writes_a_failed_summary(tmp_path):
    cb = LossLogging()
    trainer = SimpleNamespace(log_dir=str(tmp_path), global_step=3, state=SimpleNamespace(fn="fit"))
    cb.on_exception(trainer, SimpleNamespace(), RuntimeError("boom\nsecond line"))
    summary = json.loads((tmp_path / "run_summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"] == "RuntimeError: boom second line"
    assert summary["steps"] == 3 and summary["config"] is None
