"""Exact resume, checkpoints that survive kills, stops that save: the guarantees of
docs/reliability.md (fault tolerance) on tiny models."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from gridlm.callbacks.checkpointing import AtomicCheckpointIO, check_compatible
from gridlm.datamodules.batching import BucketBatchSampler
from gridlm.datamodules.resumable import ResumableDataLoader
from gridlm.experiments.cli import cli_main, main
from test_cli import tiny_flags

# every 2 steps a checkpoint (and the `last` copy); every one kept so a run can resume from any
CKPT_EVERY_2 = (
    '[{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": '
    '{"save_last": true, "save_top_k": -1, "every_n_train_steps": 2, "filename": "{step}"}}]'
)


def flags(root: Path, steps: int, **extra: str) -> list[str]:
    """tiny_flags with checkpoints every 2 steps and validation every 5; the synthetic stream
    serves 36 fresh tasks per epoch (9 batches), new ones every epoch."""
    return tiny_flags(
        root,
        steps=steps,
        **{"--trainer.callbacks": CKPT_EVERY_2, "--trainer.val_check_interval": "5", "--trainer.check_val_every_n_epoch": "null",
           "--data.synthetic_epoch_size": "36", **extra},
    )  # fmt: skip


def step_losses(log_dir: str | Path) -> dict[int, float]:
    with open(Path(log_dir) / "metrics.csv") as f:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}


def ckpt_dir(root: Path) -> Path:
    return root / "runs" / "t" / "version_0" / "checkpoints"


# ---------------------------------------------------------------- sampler / loader state
def test_sampler_resume_skips_exactly_the_processed_batches():
    s = BucketBatchSampler(np.arange(40) % 7 + 1, batch_size=4, seed=3)
    s.set_epoch(2)
    full = list(s)
    s.resume_at(2, 3)
    assert list(s) == full[3:]
    assert list(s) == full, "start_batch applies to one iteration only"
    s.resume_at(2, len(s))  # a complete epoch continues with the next one
    assert s.epoch == 3 and s.start_batch == 0


def test_lightning_set_epoch_reaches_the_batch_sampler():
    """Lightning calls set_epoch on loader.batch_sampler.sampler: each epoch must differ."""
    from lightning.fabric.utilities.data import _set_sampler_epoch

    s = BucketBatchSampler(np.arange(64) % 9 + 1, batch_size=4, seed=0)
    loader = ResumableDataLoader(list(range(64)), batch_sampler=s, collate_fn=lambda x: x)
    _set_sampler_epoch(loader, 0)
    e0 = list(s)
    _set_sampler_epoch(loader, 1)
    assert s.epoch == 1 and list(s) != e0


def test_loader_state_round_trip_and_changed_data_warns():
    s = BucketBatchSampler(np.arange(40) % 5 + 1, batch_size=4, seed=1)
    loader = ResumableDataLoader(list(range(40)), batch_sampler=s, collate_fn=lambda x: x)
    loader.progress = lambda: 4
    s.set_epoch(1)
    state = loader.state_dict()
    assert state["epoch"] == 1 and state["batches_done"] == 4
    s2 = BucketBatchSampler(np.arange(40) % 5 + 1, batch_size=4, seed=1)
    ResumableDataLoader(list(range(40)), batch_sampler=s2, collate_fn=lambda x: x).load_state_dict(state)
    assert (s2.epoch, s2.start_batch) == (1, 4)
    s3 = BucketBatchSampler(np.arange(41) % 5 + 1, batch_size=4, seed=1)  # another dataset: the epoch restarts
    with pytest.warns(UserWarning, match="n_examples 40 in the checkpoint vs 41 now"):
        ResumableDataLoader(list(range(41)), batch_sampler=s3, collate_fn=lambda x: x).load_state_dict(state)
    assert (s3.epoch, s3.start_batch) == (1, 0)
    # another batch size continues the epoch with the examples not yet seen (tests/test_scaling.py)


# ---------------------------------------------------------------- exact resume (in process)
@pytest.mark.slow
def test_resume_mid_epoch_is_bit_exact(tmp_path):
    """Resume from step 12 (epoch 1, batch 3 of 9): losses of steps 12..17 and the final
    weights and optimizer state equal those of the uninterrupted run bit for bit."""
    a = cli_main(["fit", *flags(tmp_path / "a", 18)])
    ckpt = ckpt_dir(tmp_path / "a") / "step=12.ckpt"
    state = torch.load(ckpt, weights_only=True)["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert (state["epoch"], state["batches_done"]) == (1, 3)
    b = cli_main(["fit", *flags(tmp_path / "b", 18), "--ckpt_path", str(ckpt)])
    la, lb = step_losses(a.trainer.log_dir), step_losses(b.trainer.log_dir)
    assert sorted(lb) == list(range(12, 18))
    assert [lb[s] for s in lb] == [la[s] for s in lb]  # exact float equality
    fa = torch.load(ckpt_dir(tmp_path / "a") / "step=18.ckpt", weights_only=True)
    fb = torch.load(ckpt_dir(tmp_path / "b") / "step=18.ckpt", weights_only=True)
    for k, v in fa["state_dict"].items():
        assert torch.equal(v, fb["state_dict"][k]), k
    za, zb = fa["optimizer_states"][0]["state"], fb["optimizer_states"][0]["state"]
    assert za.keys() == zb.keys() and all(torch.equal(za[i][n], zb[i][n]) for i in za for n in za[i])


def test_small_resume_in_the_second_epoch_is_bit_exact(tmp_path):
    """The fast suite's resume guard (the longer runs above and below are slow): a stream of 12
    fresh synthetic tasks per epoch makes 3 batches; resuming from step 4 (epoch 1, after its
    first batch) gives the uninterrupted run's losses, weights and optimizer state bit for bit."""
    extra = {"--data.synthetic_epoch_size": "12", "--trainer.val_check_interval": "6"}
    a = cli_main(["fit", *flags(tmp_path / "a", 6, **extra)])
    ckpt = ckpt_dir(tmp_path / "a") / "step=4.ckpt"
    state = torch.load(ckpt, weights_only=True)["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert (state["epoch"], state["batches_done"], state["n_batches"]) == (1, 1, 3)
    b = cli_main(["fit", *flags(tmp_path / "b", 6, **extra), "--ckpt_path", str(ckpt)])
    la, lb = step_losses(a.trainer.log_dir), step_losses(b.trainer.log_dir)
    assert sorted(lb) == [4, 5] and {s: la[s] for s in lb} == lb  # exact float equality
    fa, fb = (torch.load(ckpt_dir(tmp_path / r) / "step=6.ckpt", weights_only=True) for r in ("a", "b"))
    for k, v in fa["state_dict"].items():
        assert torch.equal(v, fb["state_dict"][k]), k
    za, zb = fa["optimizer_states"][0]["state"], fb["optimizer_states"][0]["state"]
    assert za.keys() == zb.keys() and all(torch.equal(za[i]["z"], zb[i]["z"]) for i in za)


def test_two_checkpoints_at_one_step_switch_the_weights_once():
    """step=N.ckpt and last.ckpt are written at the same step: the second must reuse the first's
    x, not switch y' -> x' -> y'' again, or the uninterrupted run continues from y'' while a run
    resumed from either file continues from y' = train(x) (the mid-epoch resume drifted by 4e-9)."""
    import schedulefree
    from types import SimpleNamespace

    from gridlm.callbacks.schedule_free import ScheduleFreeMode

    torch.manual_seed(0)
    net = torch.nn.Linear(32, 32)
    opt = schedulefree.AdamWScheduleFree(net.parameters(), lr=0.1, warmup_steps=0)
    opt.train()
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(8, 32)).square().mean().backward()
        opt.step()
    w = net.weight
    z, beta1 = opt.state[w]["z"], opt.param_groups[0]["betas"][0]
    x = w.detach().clone().lerp_(z, 1 - 1 / beta1)  # what eval() computes, then train() from it
    y1 = x.clone().lerp_(z, 1 - beta1)
    y2 = y1.clone().lerp_(z, 1 - 1 / beta1).lerp_(z, 1 - beta1)
    assert not torch.equal(y1, y2), "a second round trip must change the weights for this test to mean anything"
    trainer = SimpleNamespace(optimizers=[opt], global_step=3, strategy=SimpleNamespace(optimizer_state=lambda o: o.state_dict()))
    cb = ScheduleFreeMode()
    first, second = {"optimizer_states": []}, {"optimizer_states": []}
    cb.on_save_checkpoint(trainer, net, first)
    cb.on_save_checkpoint(trainer, net, second)
    assert torch.equal(w.detach(), y1) and opt.param_groups[0]["train_mode"]
    assert torch.equal(first["state_dict"]["weight"], x) and torch.equal(second["state_dict"]["weight"], x)
    assert second["optimizer_states"][0]["param_groups"][0]["train_mode"] is False
    with torch.no_grad():
        w.add_(1.0)  # a changed weight (another step): the next checkpoint switches again
    third = {"optimizer_states": []}
    cb.on_save_checkpoint(trainer, net, third)
    assert not torch.equal(third["state_dict"]["weight"], x)


# ---------------------------------------------------------------- kill -9 and resume
def _fit_process(root: Path, steps: int, *extra: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "disabled", "GRIDLM_DEBUG": ""}
    args = [sys.executable, "-m", "gridlm.experiments.cli", "fit", *flags(root, steps), *extra]
    return subprocess.Popen(args, cwd=root.parent, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **popen)


def _wait_for(path_glob, root: Path, proc: subprocess.Popen, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not list(root.glob(path_glob)):
        if proc.poll() is not None:
            raise AssertionError(f"fit exited early ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no {path_glob} after {timeout} s")
        time.sleep(0.05)


@pytest.mark.slow
def test_sigkill_then_ckpt_path_last_reproduces_the_uninterrupted_losses(tmp_path):
    steps = 24
    ref = tmp_path / "ref"
    ref.mkdir()
    assert subprocess.run([sys.executable, "-m", "gridlm.experiments.cli", "fit", *flags(ref, steps)], cwd=tmp_path,
                          env={**os.environ, "WANDB_MODE": "disabled"}, capture_output=True).returncode == 0
    run = tmp_path / "run"
    run.mkdir()
    proc = _fit_process(run, steps)
    _wait_for("runs/t/version_0/checkpoints/step=6.ckpt", run, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    last = ckpt_dir(run) / "last.ckpt"
    killed_at = torch.load(last, weights_only=True)["global_step"]  # a complete file, never half written
    # ModelCheckpoint writes step=6.ckpt before it rewrites last.ckpt: the kill may land in between
    assert 4 <= killed_at < steps, "the kill must land mid-run"
    resumed = subprocess.run([sys.executable, "-m", "gridlm.experiments.cli", "fit", *flags(run, steps), "--ckpt_path", "last"],
                             cwd=tmp_path, env={**os.environ, "WANDB_MODE": "disabled"}, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"Restoring states from the checkpoint path at {last}" in resumed.stderr
    la = step_losses(ref / "runs" / "t" / "version_0")
    lb = step_losses(run / "runs" / "t" / "version_1")
    assert min(lb) == killed_at and max(lb) == steps - 1
    assert {s: lb[s] for s in lb} == {s: la[s] for s in lb}


# ---------------------------------------------------------------- SIGTERM / SIGINT save
@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_signal_saves_a_last_checkpoint_and_exits(tmp_path, sig, code):
    root = tmp_path / "r"
    root.mkdir()
    proc = _fit_process(root, 100000)
    _wait_for("runs/t/version_0/checkpoints/step=4.ckpt", root, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err[-2000:]
    last = ckpt_dir(root) / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["global_step"] >= 4
    line = [ln for ln in err.splitlines() if "saved checkpoint" in ln]
    assert len(line) == 1 and str(last) in line[0] and f"step {ckpt['global_step']}" in line[0]
    assert ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["batches_done"] >= 1


# ---------------------------------------------------------------- non-finite stop
def test_nonfinite_losses_stop_with_one_line_and_a_valid_last_checkpoint(tmp_path, capsys, monkeypatch):
    from gridlm.modules.base_model import AutoregressiveGridModel

    real = AutoregressiveGridModel.token_losses

    def poisoned(self, batch):  # finite for 3 steps, then NaN
        losses, roles, logits = real(self, batch)
        return (losses * float("nan") if self.global_step >= 3 else losses), roles, logits

    monkeypatch.setattr(AutoregressiveGridModel, "token_losses", poisoned)
    code = main(["fit", *flags(tmp_path, 20), "--model.max_consecutive_nonfinite", "2", "--trainer.val_check_interval", "50"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1].startswith("gridlm: error: 2 consecutive non-finite losses") and "max_consecutive_nonfinite=2" in err[-1]
    last = ckpt_dir(tmp_path) / "last.ckpt"
    assert str(last) in err[-1]
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["global_step"] == 3  # the finite steps; skipped steps never touch the weights
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


# ---------------------------------------------------------------- atomic save / safe load
def test_interrupted_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)

    def dies_halfway(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # the process is stopped in the middle of the write

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert io.load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temp file left behind


def test_truncated_or_unsafe_checkpoints_are_refused_in_one_line(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "x.ckpt"
    io.save_checkpoint({"w": torch.ones(4)}, path)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ValueError, match=r"checkpoint .*x\.ckpt cannot be loaded"):
        io.load_checkpoint(path)
    torch.save({"f": np.float64}, path)  # a pickled class: refused with weights_only=True
    with pytest.raises(ValueError, match="cannot be loaded"):
        io.load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="no such file"):
        io.load_checkpoint(tmp_path / "missing.ckpt")


# ---------------------------------------------------------------- checkpoint contents / compatibility
@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ck")
    cli = cli_main(["fit", *tiny_flags(root, steps=2)])
    return Path(cli.trainer.checkpoint_callback.last_model_path)


def test_checkpoint_is_plain_data_with_config_versions_and_commit(small_ckpt):
    ckpt = torch.load(small_ckpt, weights_only=True)  # raises on anything but plain data
    meta = ckpt["gridlm"]
    assert meta["config"]["model"]["init_args"]["d_model"] == 16 and meta["config"]["data"]["source"] == "synthetic"
    assert meta["versions"]["torch"] and meta["versions"]["lightning"] and meta["git_commit"]
    assert len(meta["config_hash"]) == 12


def test_incompatible_checkpoint_names_the_fields(small_ckpt, tmp_path, capsys):
    code = main(["validate", *tiny_flags(tmp_path), "--model.d_model", "32", "--model.n_layers", "3", "--ckpt_path", str(small_ckpt)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1] == (
        f"gridlm: error: checkpoint {small_ckpt} does not match the model: d_model 16 in the checkpoint vs 32 in the config; "
        "n_layers 1 in the checkpoint vs 3 in the config"
    )


def test_shape_mismatch_without_hparams_names_tensors(small_ckpt):
    from gridlm.modules.base_model import AutoregressiveGridModel

    ckpt = torch.load(small_ckpt, weights_only=True)
    ckpt.pop("hyper_parameters")
    model = AutoregressiveGridModel(d_model=8, n_layers=1, n_heads=2, max_seq_len=512)
    with pytest.raises(ValueError, match=r"does not match the model: .*shape \(\d+, 16\) in the checkpoint vs \(\d+, 8\)"):
        check_compatible(ckpt, model, "x.ckpt")


def test_missing_ckpt_path_is_one_line(tmp_path, capsys):
    code = main(["validate", *tiny_flags(tmp_path), "--ckpt_path", str(tmp_path / "nope.ckpt")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1] == f"gridlm: error: --ckpt_path {tmp_path / 'nope.ckpt'}: no such checkpoint file"
