"""The real `gridlm` command line on tiny models: fit, validate, predict, errors."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from gridlm.datamodules.datamodule import GridDataModule
from gridlm.experiments.cli import SubmissionWriter, cli_main, eval_folder, main, run_folder_of
from gridlm.modules.base_model import AutoregressiveGridModel

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def tiny_flags(tmp_path: Path, source: str = "synthetic", steps: int = 4, **extra: str) -> list[str]:
    flags = {
        "--config": str(CONFIGS / "quickstart.yaml"),
        "--run_name": "t",
        "--wandb_mode": "disabled",
        "--trainer.default_root_dir": str(tmp_path / "runs"),
        "--trainer.max_steps": str(steps),
        "--trainer.max_time": "null",
        "--trainer.val_check_interval": str(steps),
        "--trainer.limit_val_batches": "2",
        "--trainer.num_sanity_val_steps": "0",
        "--trainer.enable_progress_bar": "false",
        "--trainer.enable_model_summary": "false",
        "--trainer.log_every_n_steps": "1",
        "--model.d_model": "16",
        "--model.n_layers": "1",
        "--model.n_heads": "2",
        "--model.n_generate": "2",
        "--data.source": source,
        "--data.val_source": "null",
        "--data.max_seq_len": "512",
        "--data.batch_size": "4",
        "--data.max_val_examples": "8",
        "--data.n_synthetic": "12",
        "--data.synthetic_max_side": "5",
    }
    flags.update(extra)
    return [x for kv in flags.items() for x in kv]


def read_metrics(log_dir: str) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    with open(Path(log_dir) / "metrics.csv") as f:
        for row in csv.DictReader(f):
            for k, v in row.items():
                if v not in ("", None):
                    out.setdefault(k, []).append(float(v))
    return out


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One tiny fit on synthetic data shared by the tests below."""
    tmp = tmp_path_factory.mktemp("fit")
    cli = cli_main(["fit", *tiny_flags(tmp, steps=6)])
    return cli, tmp


def test_fit_logs_metrics_config_and_checkpoint(fitted):
    cli, _ = fitted
    log_dir = cli.trainer.log_dir
    metrics = read_metrics(log_dir)
    for key in ("train/loss", "train/pad_fraction", "val/loss", "val/cell_acc", "val/exact_match"):
        assert key in metrics, f"{key} missing from metrics.csv: {sorted(metrics)}"
    assert all(0.0 <= v <= 1.0 for v in metrics["val/cell_acc"] + metrics["val/exact_match"])
    assert (Path(log_dir) / "config.yaml").exists()
    ckpt = torch.load(cli.trainer.checkpoint_callback.last_model_path, weights_only=True)
    meta = ckpt["gridlm"]
    assert meta["config"]["model"]["init_args"]["d_model"] == 16
    assert meta["versions"]["torch"] == torch.__version__.split("+")[0] or meta["versions"]["torch"].startswith(torch.__version__[:4])
    assert meta["git_commit"]


def test_validate_from_checkpoint_reproduces_end_of_fit_metrics(fitted, tmp_path):
    cli, tmp = fitted
    fit_metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("val/")}
    ckpt = cli.trainer.checkpoint_callback.last_model_path
    val = cli_main(["validate", *tiny_flags(tmp_path), "--ckpt_path", ckpt])
    val_metrics = {k: float(v) for k, v in val.trainer.callback_metrics.items() if k.startswith("val/")}
    assert set(fit_metrics) == {"val/loss", "val/cell_acc", "val/exact_match", "val/n_exact", "val/n_decoded"}
    for k, v in fit_metrics.items():
        assert val_metrics[k] == pytest.approx(v, abs=1e-5), k


@pytest.mark.parametrize("flags", [["--data.order", "snake"], ["--data.row_end", "true"]], ids=["order", "row_end"])
def test_validate_with_other_serialization_than_the_checkpoint_is_one_line(fitted, tmp_path, capsys, flags):
    """The fit was row_major without ROW_END: another order would silently give wrong metrics."""
    ckpt = fitted[0].trainer.checkpoint_callback.last_model_path
    code = main(["validate", *tiny_flags(tmp_path), "--ckpt_path", ckpt, *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"gridlm: error: checkpoint {ckpt} was trained on other serialized data: ")
    assert f"data.{flags[0].split('.')[1]}=" in err[0] and err[0].endswith("pass --data.order row_major --data.row_end False")


def test_schedule_free_checkpoint_holds_averaged_weights(fitted, tmp_path):
    cli, _ = fitted
    trainer, module = cli.trainer, cli.model
    opt = trainer.optimizers[0]
    opt.train()  # as in the middle of training: parameters are y
    y = {k: v.clone() for k, v in module.state_dict().items()}
    path = tmp_path / "mid.ckpt"
    trainer.save_checkpoint(path)
    assert opt.param_groups[0]["train_mode"], "saving must leave training mode as it was"
    opt.eval()  # parameters are now x, the schedule-free average
    x = module.state_dict()
    checkpoint = torch.load(path, weights_only=True)
    saved = checkpoint["state_dict"]
    differs = [k for k in x if not torch.equal(x[k], y[k])]
    assert differs, "x and y should differ after training"
    for k in x:
        torch.testing.assert_close(saved[k], x[k])
    assert checkpoint["optimizer_states"][0]["param_groups"][0]["train_mode"] is False  # saved in eval mode


def test_fit_on_real_arc1(tmp_path):
    cli = cli_main(["fit", *tiny_flags(tmp_path, source="arc1", steps=2, **{"--data.max_tasks": "40"})])
    metrics = read_metrics(cli.trainer.log_dir)
    assert "val/loss" in metrics and metrics["train/loss"][0] > 0


def test_flat_flags_reach_model_and_data(tmp_path):
    cli = cli_main(
        [*tiny_flags(tmp_path), "--model.encoding", "[rope_1d, onehot_2d]", "--data.seed", "3", "--data.order", "row_major"],
        run=False,
    )
    assert cli.model.cfg.d_model == 16 and cli.model.cfg.encoding_names == ["rope_1d", "onehot_2d"]
    assert cli.datamodule.seed == 3 and cli.datamodule.batch_size == 4
    assert cli.model.hparams.max_seq_len == 512 and cli.model.hparams.vocab_size == cli.datamodule.vocab_size


def test_default_optimizer_is_schedule_free_and_can_be_switched(tmp_path):
    import schedulefree

    cli = cli_main(tiny_flags(tmp_path), run=False)
    assert isinstance(cli.model.configure_optimizers(), schedulefree.AdamWScheduleFree)
    cli = cli_main([*tiny_flags(tmp_path), "--model.optimizer", "torch.optim.AdamW", "--model.optimizer.lr", "0.01"], run=False)
    opt = cli.model.configure_optimizers()
    assert type(opt) is torch.optim.AdamW and opt.defaults["lr"] == 0.01


def test_predict_writes_an_arc_submission(fitted, tmp_path):
    cli, _ = fitted
    out = tmp_path / "sub.json"
    ckpt = cli.trainer.checkpoint_callback.last_model_path
    assert main(["predict", *tiny_flags(tmp_path), "--ckpt_path", ckpt, "--out", str(out)]) == 0
    sub = json.loads(out.read_text())
    assert len(sub) == 12  # every synthetic task, one test input each
    for entries in sub.values():
        for e in entries:
            assert set(e) == {"attempt_1", "attempt_2"}
            assert all(isinstance(r, list) and all(0 <= c <= 9 for c in r) for r in e["attempt_1"])


def predict_tasks(folder: Path) -> dict[str, list]:
    """Four tasks with 1, 2, 3 and 2 test inputs, written as ARC JSON. The test inputs of a task
    differ but share a shape, so their prompts have one length and are decoded as one batch."""
    import numpy as np

    rng = np.random.default_rng(5)
    shape = lambda: (int(rng.integers(2, 5)), int(rng.integers(2, 6)))  # noqa: E731
    folder.mkdir()
    tests = {}
    for tid, n in (("t1", 1), ("t2", 2), ("t3", 3), ("t4", 2)):
        demos = [{"input": rng.integers(0, 10, shape()).tolist(), "output": rng.integers(0, 10, shape()).tolist()} for _ in range(2)]
        test_shape = shape()
        task = {"train": demos, "test": [{"input": rng.integers(0, 10, test_shape).tolist()} for _ in range(n)]}
        (folder / f"{tid}.json").write_text(json.dumps(task))
        tests[tid] = task
    return tests


@pytest.mark.parametrize("n_votes", [1, 2], ids=["greedy", "voting"])
def test_predict_writes_each_test_inputs_own_decode(fitted, tmp_path, monkeypatch, n_votes):
    """``gridlm predict`` end to end, with a teacher network that answers every test input x with
    (x.T + 1) % 10: every task gets one entry per test input, in order, and each entry holds that
    input's own decode. Greedy: attempt_2 repeats attempt_1. Voting (2 votes): the answer is not
    invariant to colour permutations, so the two votes disagree and the attempts are exactly those
    of ``vote`` on that test input alone."""
    import numpy as np

    from gridlm.datamodules.tasks import Pair
    from gridlm.modules.transformer import Transformer, TransformerConfig
    from gridlm.modules.voting import VotingConfig, vote
    from stub_models import Teacher, install_teacher

    rule = lambda x: (x.T + 1) % 10  # noqa: E731
    install_teacher(monkeypatch, Teacher(rule, "row_major"))
    tasks = predict_tasks(tmp_path / "tasks")
    out = tmp_path / "sub.json"
    ckpt = fitted[0].trainer.checkpoint_callback.last_model_path
    flags = tiny_flags(tmp_path, **{"--data.predict_source": str(tmp_path / "tasks"), "--model.n_votes": str(n_votes)})
    assert main(["predict", *flags, "--ckpt_path", ckpt, "--out", str(out)]) == 0
    sub = json.loads(out.read_text())
    assert sorted(sub) == sorted(tasks)
    probe = Transformer(TransformerConfig(max_seq_len=512, d_model=16, n_layers=1, n_heads=2)).eval()  # answers as the teacher
    for tid, task in tasks.items():
        assert len(sub[tid]) == len(task["test"]), tid
        demos = [Pair(np.array(p["input"]), np.array(p["output"])) for p in task["train"]]
        for i, (entry, test) in enumerate(zip(sub[tid], task["test"])):
            x = np.array(test["input"])
            if n_votes == 1:
                assert entry == {"attempt_1": rule(x).tolist(), "attempt_2": rule(x).tolist()}, (tid, i)
            else:
                (res,) = vote(probe, [(demos, x)], "row_major", config=VotingConfig(n_votes=2))
                want = [g.tolist() for g in res.attempts(2)]
                assert len(want) == 2 and rule(x).tolist() in want, "precondition: the votes disagree"
                assert [entry["attempt_1"], entry["attempt_2"]] == want, (tid, i)


def copy_run(fitted, tmp_path: Path) -> Path:
    """A fresh copy of the fitted run's folder (checkpoint, config, metrics) at runs/t/version_0."""
    src = Path(fitted[0].trainer.log_dir)
    run = tmp_path / "runs" / "t" / "version_0"
    shutil.copytree(src / "checkpoints", run / "checkpoints")
    for name in ("config.yaml", "hparams.yaml", "metrics.csv"):
        shutil.copy(src / name, run / name)
    return run


def test_validate_and_predict_of_a_runs_checkpoint_write_into_that_run(fitted, tmp_path):
    """No version_1, version_2 beside the run: <run>/validate, <run>/validate_1, <run>/predict."""
    run = copy_run(fitted, tmp_path)
    ckpt = str(run / "checkpoints" / "last.ckpt")
    flags = tiny_flags(tmp_path)
    first = cli_main(["validate", *flags, "--ckpt_path", ckpt])
    second = cli_main(["validate", *flags, "--ckpt_path", ckpt])
    assert main(["predict", *flags, "--ckpt_path", ckpt, "--out", str(tmp_path / "sub.json")]) == 0
    assert sorted(p.name for p in (tmp_path / "runs" / "t").iterdir()) == ["version_0"]
    assert Path(first.trainer.log_dir) == run / "validate" and Path(second.trainer.log_dir) == run / "validate_1"
    assert "val/loss" in read_metrics(first.trainer.log_dir) and "val/loss" in read_metrics(second.trainer.log_dir)
    assert (run / "predict" / "config.yaml").is_file()
    assert read_metrics(str(run)) == read_metrics(fitted[0].trainer.log_dir), "the fit's metrics.csv is untouched"


def test_eval_folders_never_overwrite_and_a_ddp_child_joins_rank_zeros(tmp_path):
    assert eval_folder(tmp_path, "validate") == "validate"
    assert eval_folder(tmp_path, "validate", latest=True) == "validate"
    (tmp_path / "validate").mkdir()
    (tmp_path / "validate_1").mkdir()
    (tmp_path / "validate" / "metrics.csv").write_text("")
    assert eval_folder(tmp_path, "validate") == "validate_1"  # empty: left by a validate that failed
    (tmp_path / "validate_1" / "metrics.csv").write_text("")
    assert eval_folder(tmp_path, "validate") == "validate_2"
    assert eval_folder(tmp_path, "validate", latest=True) == "validate_1"
    assert eval_folder(tmp_path, "predict") == "predict"


def test_a_checkpoint_outside_a_run_folder_keeps_the_run_name_folders(fitted, tmp_path):
    """A checkpoint that is not in <run>/checkpoints/ (downloaded, copied) has no run to write into."""
    loose = tmp_path / "loose.ckpt"
    shutil.copy(fitted[0].trainer.checkpoint_callback.last_model_path, loose)
    assert run_folder_of(str(loose)) is None and run_folder_of("last") is None
    val = cli_main(["validate", *tiny_flags(tmp_path), "--ckpt_path", str(loose)])
    assert Path(val.trainer.log_dir) == tmp_path / "runs" / "t" / "version_0"


@pytest.mark.parametrize("where", ["missing_folder", "parent_is_a_file", "out_is_a_folder", "read_only"])
def test_predict_checks_out_before_any_data_or_decoding(fitted, tmp_path, capsys, monkeypatch, where):
    """A bad --out fails in one line naming --out, before the data is loaded or anything decoded
    (the spies count DataModule setups and predict steps)."""
    if where == "missing_folder":
        out, defect = tmp_path / "no_such_dir" / "sub.json", "does not exist"
    elif where == "parent_is_a_file":
        (tmp_path / "a_file").write_text("x")
        out, defect = tmp_path / "a_file" / "sub.json", "is not a folder"
    elif where == "out_is_a_folder":
        out, defect = tmp_path, "is a folder; give a file name"
    else:
        # root may write into any chmod-ed folder, but not into sysfs; others get a read-only folder
        if os.geteuid() == 0:
            out = Path("/sys/sub.json")
        else:
            (tmp_path / "ro").mkdir(mode=0o500)
            out = tmp_path / "ro" / "sub.json"
        defect = "cannot write into folder"
    run = copy_run(fitted, tmp_path)
    calls = {"setup": 0, "predict_step": 0}
    setup, predict_step = GridDataModule.setup, AutoregressiveGridModel.predict_step

    def spy(name, fn):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(GridDataModule, "setup", spy("setup", setup))
    monkeypatch.setattr(AutoregressiveGridModel, "predict_step", spy("predict_step", predict_step))
    code = main(["predict", *tiny_flags(tmp_path), "--ckpt_path", str(run / "checkpoints" / "last.ckpt"), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"gridlm: error: --out {out}: ") and defect in err[0], err[0]
    assert calls == {"setup": 0, "predict_step": 0}
    assert not (run / "predict").exists(), "no folder is made for a prediction that cannot be written"
    # the same check guards a Trainer built without the CLI: SubmissionWriter.setup, before predicting
    with pytest.raises(ValueError, match="--out"):
        SubmissionWriter(str(out)).setup(None, None, "predict")


def test_broken_task_file_stops_with_one_line(tmp_path, capsys):
    folder = tmp_path / "tasks"
    folder.mkdir()
    good = {"train": [{"input": [[1]], "output": [[2]]}] * 2, "test": [{"input": [[1]], "output": [[2]]}]}
    (folder / "good.json").write_text(json.dumps(good))
    bad = {"train": [{"input": [[1, 2], [3]], "output": [[2]]}], "test": [{"input": [[1]]}]}
    (folder / "bad.json").write_text(json.dumps(bad))
    code = main(["fit", *tiny_flags(tmp_path, source=str(folder))])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) >= 1 and "bad.json" in err[-1] and "row 1 has 1 cells, row 0 has 2" in err[-1]
    assert err[-1].startswith("gridlm: error:")


def _encoding_names():
    from gridlm.modules.encodings import ENCODINGS

    return sorted(ENCODINGS)


def _order_names():
    from gridlm.datamodules.orders import ORDERS

    return sorted(ORDERS)


@pytest.mark.parametrize("encoding", _encoding_names())
def test_fit_trains_with_every_encoding(encoding, tmp_path):
    """Four steps on one fixed batch (the leave-one-out examples of 2 fixed synthetic tasks, no
    augmentation, no warmup): the training loss falls at every step."""
    flags = {"--data.source": "synthetic_fixed", "--data.n_synthetic": "2", "--data.augment": "false", "--data.batch_size": "8",
             "--model.optimizer.warmup_steps": "1"}  # fmt: skip
    cli = cli_main(["fit", *tiny_flags(tmp_path, steps=4, **flags), "--model.encoding", encoding])
    assert len(cli.datamodule.datasets["train"]) <= 8, "precondition: one batch, the same every step"
    losses = read_metrics(cli.trainer.log_dir)["train/loss"]
    assert len(losses) == 4 and all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[0] - losses[-1] > 0.05, losses


@pytest.mark.parametrize("order", _order_names())
def test_fit_trains_with_every_order(order, tmp_path):
    cli = cli_main(["fit", *tiny_flags(tmp_path, steps=2), "--data.order", order, "--model.encoding", "[rope_2d, learned_1d]"])
    assert cli.model.order == order
    metrics = read_metrics(cli.trainer.log_dir)
    assert len(metrics["train/loss"]) == 2 and "val/exact_match" in metrics


TOP_CONFIGS = sorted(p.name for p in CONFIGS.glob("*.yaml"))
ENCODING_CONFIGS = sorted(p.name for p in (CONFIGS / "encodings").glob("*.yaml"))


@pytest.mark.parametrize("name", TOP_CONFIGS, ids=TOP_CONFIGS)
def test_every_config_file_builds(name, tmp_path):
    """Each top-level config instantiates its model, data module and trainer through the CLI."""
    extra = ["--model.draft_ratio", "0.0"] if name == "refiner.yaml" else []  # no base checkpoint here
    cli = cli_main(["--config", str(CONFIGS / name), "--trainer.default_root_dir", str(tmp_path), "--wandb_mode", "disabled", *extra], run=False)
    assert cli.model.hparams["max_seq_len"] == cli.datamodule.max_seq_len
    assert cli.model.hparams["order"] == cli.datamodule.order


@pytest.mark.parametrize("name", ENCODING_CONFIGS, ids=ENCODING_CONFIGS)
def test_every_encoding_config_builds_on_the_quickstart(name, tmp_path):
    cli = cli_main(["--config", str(CONFIGS / "quickstart.yaml"), "--config", str(CONFIGS / "encodings" / name),
                    "--trainer.default_root_dir", str(tmp_path), "--wandb_mode", "disabled"], run=False)  # fmt: skip
    assert "+".join(cli.model.model.cfg.encoding_names) == name.removesuffix(".yaml")
