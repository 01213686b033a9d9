"""MemoryAwareBatchSize: the search against exhaustive search, fits with a simulated budget,
resume without re-probing, a real CPU probe, and an out-of-memory error injected mid-run."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from gridlm.callbacks.schedule_free import ScheduleFreeMode
from gridlm.callbacks.batch_sizing import (
    MemoryAwareBatchSize,
    choose_micro_batch,
    exhaustive_max,
    parse_budget,
    worst_case_batch,
)
from gridlm.datamodules.datamodule import GridDataModule
from gridlm.modules.base_model import AutoregressiveGridModel
from test_cli import read_metrics, tiny_flags

# ---------------------------------------------------------------- the search, on simulated memory

MEMORY_CURVES = {
    "linear": lambda m: 2e9 + 3e7 * m,  # fixed (weights, optimizer) + per-example activations
    "convex": lambda m: 1e9 + 2e7 * m + 1e5 * m * m,  # allocator overheads growing with the batch
    "steps": lambda m: 5e8 + 4e7 * math.ceil(m / 8) * 8,  # allocations rounded up to blocks of 8 rows
    "noisy": lambda m: 1e9 + 2.5e7 * m + 3e6 * ((m * 7919) % 5),  # measurement noise of a few MB
}


@pytest.mark.parametrize("curve", sorted(MEMORY_CURVES), ids=sorted(MEMORY_CURVES))
def test_choice_fits_the_budget_and_is_near_the_exhaustive_maximum(curve):
    measure = MEMORY_CURVES[curve]
    max_rows = 512
    for budget in torch.linspace(measure(1) * 1.01, measure(max_rows) * 1.2, 37).tolist():
        chosen, probes = choose_micro_batch(measure, budget, max_rows)
        best = exhaustive_max(measure, budget, max_rows)
        assert measure(chosen) <= budget, f"{curve}: {chosen} rows need {measure(chosen):.3g} B > budget {budget:.3g}"
        assert chosen >= 0.9 * best, f"{curve}: chose {chosen}, exhaustive search found {best} (budget {budget:.3g})"
        assert chosen in probes and len(probes) <= 12  # only measured sizes are chosen


def test_margin_keeps_headroom_in_the_fit():
    calls = []
    cb = MemoryAwareBatchSize(budget=1450.0, margin=0.2, memory_fn=lambda m: calls.append(m) or 1000 + 100 * m)
    trainer, model, _ = fit(cb, steps=1)
    assert model.micro_batch_size == 1  # 1000 + 100 m <= 1160
    assert calls[0] == 1 and cb.budget_bytes == 1450.0


def test_a_single_row_over_the_budget_names_the_fix():
    with pytest.raises(ValueError, match="one worst-case sequence needs .* raise budget, lower data.max_seq_len"):
        choose_micro_batch(lambda m: 10.0 * m, budget=5.0, max_rows=8)


def test_budget_forms():
    assert parse_budget(0.5, total_bytes=8e9) == 4e9
    assert parse_budget("2GiB", None) == 2**31
    assert parse_budget(3e9, None) == 3e9
    with pytest.raises(ValueError, match="cannot read '2 parsecs'"):
        parse_budget("2 parsecs", None)
    with pytest.raises(ValueError, match="a fraction needs the device's total memory"):
        parse_budget(0.5, None)
    with pytest.raises(ValueError, match="effective_batch or effective_tokens, not both"):
        MemoryAwareBatchSize(effective_batch=8, effective_tokens=1000)


# ---------------------------------------------------------------- fits


def tiny(batch_size: int = 8, **dm) -> tuple[AutoregressiveGridModel, GridDataModule]:
    torch.manual_seed(0)  # identical initial weights in every run compared
    data = GridDataModule(
        source="synthetic", n_synthetic=12, synthetic_max_side=5, max_seq_len=512, batch_size=batch_size, **dm
    )
    model = AutoregressiveGridModel(max_seq_len=512, d_model=16, n_layers=1, n_heads=2, n_generate=0)
    return model, data


class Record(L.Callback):
    """Per optimizer step: the examples whose gradients were kept, and the loss."""

    def __init__(self) -> None:
        self.rows: dict[int, list[int]] = {}
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss))


def watch_forwards(model: AutoregressiveGridModel, record: Record, oom_at: int | None = None, limit: int = 1 << 30):
    """Wrap ``model.token_losses`` (the test-only hook): record the examples of every training
    forward per optimizer step, and from step ``oom_at`` on raise ``torch.OutOfMemoryError`` for
    micro-batches of more than ``limit`` rows, as CUDA would. A failed attempt's rows are dropped:
    ``training_step`` zeroes the gradients and re-runs the whole step."""
    inner = model.token_losses

    def token_losses(batch):
        if not model.training:
            return inner(batch)
        step, rows = model.trainer.global_step, batch["tokens"].shape[0]
        if oom_at is not None and step >= oom_at and rows > limit:
            record.rows[step] = []
            raise torch.OutOfMemoryError(f"simulated: {rows} rows > {limit}")
        record.rows.setdefault(step, []).extend(m["index"] for m in batch["meta"])
        return inner(batch)

    model.token_losses = token_losses


def fit(*callbacks, steps: int = 4, tmp: Path | None = None, ckpt_path=None, model_data=None, **trainer_kw):
    L.seed_everything(0)
    model, data = model_data or tiny()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        limit_val_batches=0,
        logger=CSVLogger(str(tmp or Path.cwd()), name="log"),
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        callbacks=[ScheduleFreeMode(), *callbacks],
        **{"enable_checkpointing": False, **trainer_kw},
    )
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    return trainer, model, data


def test_fit_with_a_simulated_budget_keeps_the_effective_batch(tmp_path):
    record = Record()
    model, data = tiny(batch_size=3)
    watch_forwards(model, record)
    cb = MemoryAwareBatchSize(effective_batch=8, budget=1450.0, margin=0.0, memory_fn=lambda m: 1000 + 100 * m)
    trainer, model, data = fit(cb, record, steps=4, tmp=tmp_path, model_data=(model, data))
    assert data.batch_size == 8 and model.micro_batch_size == 4  # 1000 + 100 * 4 <= 1450 < 1000 + 100 * 5
    planned = [len(b) for b in trainer.train_dataloader.batch_sampler.batches(0)][:4]  # 36 examples: one batch of 4
    assert [len(r) for r in record.rows.values()] == planned and max(planned) == 8  # every example of each step
    metrics = read_metrics(trainer.log_dir)
    assert metrics["batch/micro_batch_size"] == [4.0] * 4
    assert metrics["batch/accumulate"] == [float(math.ceil(n / 4)) for n in planned]
    assert model.hparams["micro_batch_size"] == 4


def test_effective_tokens_sets_the_batch_from_the_mean_length(tmp_path):
    model, data = tiny()
    cb = MemoryAwareBatchSize(effective_tokens=2000, budget=1e12, memory_fn=lambda m: 1.0)
    fit(cb, steps=1, tmp=tmp_path, model_data=(model, data))
    lengths = data.datasets["train"].lengths
    assert data.batch_size == round(2000 / (sum(lengths) / len(lengths)))
    assert model.micro_batch_size == data.batch_size  # everything fits: no accumulation


def test_resume_restores_the_choice_without_probing(tmp_path):
    cb = MemoryAwareBatchSize(effective_batch=8, budget=1250.0, margin=0.0, memory_fn=lambda m: 1000 + 100 * m)
    trainer, model, _ = fit(cb, steps=2, tmp=tmp_path, enable_checkpointing=True, default_root_dir=str(tmp_path))
    ckpt = trainer.checkpoint_callback.best_model_path or trainer.checkpoint_callback.last_model_path
    saved = torch.load(ckpt, weights_only=False)
    assert saved["hyper_parameters"]["micro_batch_size"] == 2
    state = next(v for k, v in saved["callbacks"].items() if k.startswith("MemoryAwareBatchSize"))
    assert state["micro_batch_size"] == 2 and state["effective_batch"] == 8

    def no_probe(rows):
        raise AssertionError("a resumed run must not probe again")

    resumed = MemoryAwareBatchSize(effective_batch=8, budget=1250.0, margin=0.0, memory_fn=no_probe)
    _, model2, data2 = fit(resumed, steps=3, tmp=tmp_path, ckpt_path=ckpt)
    assert model2.micro_batch_size == 2 and data2.batch_size == 8


def test_real_cpu_probe_runs_on_measured_process_memory(tmp_path):
    """The real CPU path end to end (peak RSS, no simulated budget). That the probe's choice tracks
    memory is measured against exhaustive search in the benchmark (batch_probe_ratio), with a
    model large enough for 1 and 4 rows to differ well above RSS noise; a tiny model cannot."""
    cb = MemoryAwareBatchSize(effective_batch=4, budget=0.95)
    _, model, _ = fit(cb, steps=1, tmp=tmp_path)
    assert model.micro_batch_size == 4  # a tiny model on a machine with GBs of RAM: no accumulation
    assert sorted(cb.measurements) == [1, 2, 4]  # 1 row, then doubling up to the effective batch
    assert all(v > 2**20 for v in cb.measurements.values())  # a process's peak RSS, in bytes


def test_worst_case_batch_is_the_longest_bucket():
    _, data = tiny()
    data.setup("fit")
    ds = data.datasets["train"]
    batch = worst_case_batch(ds, 3)
    assert batch["tokens"].shape[1] == max(ds.lengths)
    assert sorted(batch["lengths"].tolist()) == sorted(ds.lengths, reverse=True)[:3][::-1]


def test_cli_fit_with_the_callback(tmp_path):
    from gridlm.experiments.cli import cli_main

    flags = tiny_flags(tmp_path, steps=2)
    flags += ["--trainer.callbacks+=gridlm.callbacks.batch_sizing.MemoryAwareBatchSize", "--trainer.callbacks.budget=0.95"]
    cli = cli_main(["fit", *flags])
    assert cli.model.micro_batch_size == 4  # data.batch_size 4 of tiny_flags fits whole
    ckpt = torch.load(cli.trainer.checkpoint_callback.last_model_path, weights_only=False)
    assert ckpt["gridlm"]["config"]["model"]["init_args"]["micro_batch_size"] == 4


# ---------------------------------------------------------------- out-of-memory mid-run

OOM_STEP, OOM_LIMIT, STEPS = 1, 3, 5  # step 1 is a batch of 8 rows
LOSS_TOLERANCE = dict(rtol=1e-5, atol=1e-5)  # float32 sums grouped differently over 5 steps (seen: 5e-7)


def test_oom_at_step_k_loses_and_repeats_no_example(tmp_path):
    plain, hit = Record(), Record()
    model_a, data_a = tiny()
    watch_forwards(model_a, plain)
    fit(plain, steps=STEPS, tmp=tmp_path / "a", model_data=(model_a, data_a))
    model_b, data_b = tiny()
    watch_forwards(model_b, hit, oom_at=OOM_STEP, limit=OOM_LIMIT)
    fit(hit, steps=STEPS, tmp=tmp_path / "b", model_data=(model_b, data_b))

    assert model_b.oom_events == 2 and model_b.micro_batch_size == 2  # 8 -> 4 -> 2 rows at step k
    assert model_a.micro_batch_size is None
    for step in range(STEPS):
        assert len(hit.rows[step]) == len(set(hit.rows[step])) == len(plain.rows[step]), f"step {step}: {hit.rows[step]}"
        assert sorted(hit.rows[step]) == sorted(plain.rows[step]), f"step {step} saw other examples"
    torch.testing.assert_close(torch.tensor(hit.losses), torch.tensor(plain.losses), **LOSS_TOLERANCE)
