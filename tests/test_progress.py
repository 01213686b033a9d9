"""``ProgressLines`` and the demo's output: progress lines on a fake clock, and ``make demo``'s
entry point through a pipe (stage lines, progress lines, no third-party chatter, one run folder)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest

from gridlm.callbacks.progress import ProgressLines, fmt_duration, fmt_rate
from gridlm.callbacks.schedule_free import ScheduleFreeMode
from gridlm.datamodules.datamodule import GridDataModule
from gridlm.modules.base_model import AutoregressiveGridModel

BATCH_S = 10.0  # fake seconds per training batch


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Tick(L.Callback):
    """Advances the fake clock by BATCH_S seconds per training batch and 4 s per validation batch."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock

    def on_train_batch_start(self, *args) -> None:
        self.clock.now += BATCH_S

    def on_validation_batch_start(self, *args) -> None:
        self.clock.now += 4.0


def tiny_run(tmp_path: Path, clock: FakeClock, monkeypatch, every_s: float, steps: int, val_every: int | None = None, max_time=None):
    monkeypatch.setattr(ProgressLines, "_clock", staticmethod(clock))
    dm = GridDataModule(source="synthetic", n_synthetic=12, synthetic_max_side=4, max_seq_len=256, batch_size=4, max_val_examples=8)
    model = AutoregressiveGridModel(max_seq_len=256, d_model=16, n_layers=1, n_heads=2, n_generate=0)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=steps, max_time=max_time, logger=False, enable_checkpointing=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=2, val_check_interval=val_every or steps, check_val_every_n_epoch=None,
        callbacks=[ScheduleFreeMode(), Tick(clock), ProgressLines(every_s=every_s)], default_root_dir=str(tmp_path),
    )
    trainer.fit(model, datamodule=dm)
    return trainer, model, dm


def test_a_line_at_the_first_step_then_every_interval_and_at_the_end(tmp_path, monkeypatch, capsys):
    clock = FakeClock()
    tiny_run(tmp_path, clock, monkeypatch, every_s=30, steps=7)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("gridlm fit:")]
    steps = [int(m.group(1)) for ln in lines if (m := re.match(r"gridlm fit: step (\d+)/7 ", ln))]
    assert steps == [1, 4, 7]  # 10 fake seconds per batch: 30 s after the line before
    first = lines[0]
    assert re.fullmatch(r"gridlm fit: step 1/7  loss [\d.]+  [\d.]+k? tok/s  0:10 elapsed  1:00 left", first), first
    assert "0:40 elapsed  0:30 left" in lines[1]  # 4 steps in 40 s: the remaining 3 in 30 s
    assert lines[-1].startswith("gridlm fit: done, 7 steps in 1:18  loss ")  # 7 batches + the final validation (2 x 4 s)


def test_validation_inside_fit_prints_when_due_and_does_not_count_as_training_time(tmp_path, monkeypatch, capsys):
    clock = FakeClock()
    tiny_run(tmp_path, clock, monkeypatch, every_s=5, steps=2, val_every=1)
    out = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("gridlm fit:")]
    assert any(ln.startswith("gridlm fit: validating, batch 2/2  0:08 elapsed  0:00 left") for ln in out), out
    # step 2's line: one batch of (say) n tokens in 10 s of training, the 8 s of validation excluded
    step1, step2 = (ln for ln in out if ln.startswith("gridlm fit: step"))
    rate = lambda ln: float(re.search(r"([\d.]+)(k?) tok/s", ln).group(1)) * (1000 if "k tok/s" in ln else 1)  # noqa: E731
    assert rate(step2) > 0 and "0:28 elapsed" in step2  # 2 batches (20 s) + one validation (8 s)


def test_max_time_caps_the_time_left(tmp_path, monkeypatch, capsys):
    """A Timer (``trainer.max_time``) leaves less than the steps would: the line says so."""
    clock = FakeClock()
    monkeypatch.setattr("lightning.pytorch.callbacks.timer.time.monotonic", clock)
    tiny_run(tmp_path, clock, monkeypatch, every_s=30, steps=4, max_time={"seconds": 100})
    first = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("gridlm fit: step 1/4"))
    assert first.endswith("0:10 elapsed  0:30 left")  # steps: 3 x 10 s = 0:30; max_time: 100 - 10 = 1:30


def test_validate_and_predict_stages_print_progress_and_a_done_line(tmp_path, monkeypatch, capsys):
    clock = FakeClock()
    trainer, model, dm = tiny_run(tmp_path, clock, monkeypatch, every_s=30, steps=1)
    capsys.readouterr()
    trainer.progress_bar_callback.every_s = 3  # 4 fake seconds per validation batch: a line after each
    trainer.validate(model, datamodule=dm, verbose=False)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "gridlm validate: batch 1/2  0:04 elapsed  0:04 left"
    assert re.fullmatch(r"gridlm validate: done, 2 batches in 0:08  val/cell_acc [\d.]+  val/loss [\d.]+", out[-1]), out[-1]
    trainer.progress_bar_callback.every_s = 0  # a line after every batch
    trainer.predict(model, datamodule=dm, return_predictions=False)
    out = capsys.readouterr().out.splitlines()
    n = trainer.num_predict_batches[0]
    assert [ln.split("  ")[0] for ln in out] == [f"gridlm predict: batch {k}/{n}" for k in range(1, n + 1)] + [f"gridlm predict: done, {n} batch{'es' if n > 1 else ''} in 0:00"]


def test_rejects_a_negative_interval_and_formats():
    with pytest.raises(ValueError, match="every_s must be a number of seconds >= 0, got -1"):
        ProgressLines(every_s=-1)
    assert fmt_duration(75) == "1:15" and fmt_duration(3725) == "1:02:05" and fmt_duration(-3) == "0:00"
    assert fmt_rate(12345) == "12.3k" and fmt_rate(2.5e6) == "2.5M" and fmt_rate(12) == "12"


# ---------------------------------------------------------------- make demo through a pipe

DEMO_FLAGS = [
    "--run_name", "demo", "--progress_every", "0", "--trainer.max_steps", "3", "--trainer.val_check_interval", "3",
    "--trainer.limit_val_batches", "1", "--trainer.num_sanity_val_steps", "0", "--model.d_model", "16", "--model.n_layers", "1",
    "--model.n_heads", "2", "--model.n_generate", "1", "--data.source", "synthetic", "--data.n_synthetic", "8",
    "--data.synthetic_max_side", "4", "--data.val_source", "null", "--data.max_seq_len", "256", "--data.batch_size", "4", "--data.max_val_examples", "4",
    "--trainer.log_every_n_steps", "1",
]


def run_demo(tmp_path: Path, *flags: str) -> str:
    """The demo as ``make demo | cat`` runs it (stdout a pipe). ~13 s of CPU; the timeout only
    catches a hang, and is wide because a shared, loaded machine gave it 2% of a core (10 minutes)."""
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_SILENT", "WANDB_QUIET")}  # as a user's shell has it
    env["WANDB_MODE"] = "offline"  # the real wandb library, offline (no key here anyway)
    proc = subprocess.run(
        [sys.executable, "-m", "gridlm.experiments.demo", *flags, *DEMO_FLAGS],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    return proc.stdout


CHATTER = ("wandb:", "Tip:", "litlogger", "exists and is not empty", "The dirpath has changed", "LeafSpec",
           "args parameter is intended", "GPU available", "Seed set", "┏", "Validate metric")


def test_demo_through_a_pipe_prints_stages_and_progress_and_no_chatter(tmp_path):
    out = run_demo(tmp_path)
    lines = out.splitlines()
    for i, name in enumerate(("fit", "validate", "predict"), 1):
        assert any(ln.startswith(f"gridlm demo [{i}/3] {name}: ") for ln in lines), out
    assert [ln for ln in lines if re.match(r"gridlm fit: step \d+/3  loss [\d.]+  [\d.]+k? tok/s  \d+:\d\d elapsed  \d+:\d\d left$", ln)], out
    assert any(ln.startswith("gridlm fit: done, 3 steps in ") for ln in lines), out
    assert any(ln.startswith("gridlm validate: done, 1 batch in ") for ln in lines), out
    assert "=== gridlm demo: ARC-AGI-1, the first 4 held-out test pairs of the training tasks ===" in lines, out
    assert any(re.fullmatch(r"val/exact_match    [\d.]+   \([01]/1 pairs solved\)", ln) for ln in lines), out
    caption = ("(over 4 validation pairs (the first ones: data.max_val_examples, trainer.limit_val_batches); "
               "val/exact_match: greedy decoding of the 1 shortest of them (model.n_generate). Not an ARC-AGI score.)")
    assert caption in lines, out
    noise = [ln for ln in lines if any(c in ln for c in CHATTER)]
    assert not noise, "\n".join(noise)
    # one run folder; validation and prediction of its checkpoint live inside it
    assert sorted(p.name for p in (tmp_path / "runs" / "demo").iterdir()) == ["version_0"]
    run = tmp_path / "runs" / "demo" / "version_0"
    assert (run / "validate" / "metrics.csv").is_file() and (run / "predict" / "config.yaml").is_file()
    assert "validation: runs/demo/version_0/validate  (metrics.csv)" in out
    assert list((run / "wandb").glob("offline-run-*")), "the fit's wandb run is still written, only silently"


@pytest.mark.slow  # a second demo run (~15 s): --verbose brings all the chatter back
def test_demo_verbose_keeps_wandb_and_lightning_output(tmp_path):
    out = run_demo(tmp_path, "--verbose")
    assert "wandb: Tracking run with wandb version" in out and "wandb: Run summary:" in out
    assert "GPU available" in out and "Validate metric" in out
    assert "litlogger" in out and "LeafSpec" in out  # GRIDLM_VERBOSE: the messages quiet.py drops stay
    assert any(ln.startswith("gridlm fit: step ") for ln in out.splitlines())


def test_demo_caption_says_what_the_figures_are_over():
    from gridlm.experiments.demo import over

    assert over(362, False, 54, 1024, 362.0) == ("(over 362 validation pairs, 54 longer than max_seq_len=1024 left out; "
                                                 "val/exact_match: greedy decoding of every one of them. Not an ARC-AGI score.)")
    assert over(64, True, 54, 1024, 16.0) == ("(over 64 validation pairs (the first ones: data.max_val_examples, trainer.limit_val_batches), "
                                              "54 longer than max_seq_len=1024 left out; val/exact_match: greedy decoding of the 16 "
                                              "shortest of them (model.n_generate). Not an ARC-AGI score.)")
    assert "none decoded (model.n_generate 0)" in over(8, False, 0, 256, None)
