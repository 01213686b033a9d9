"""WandbTracking and GridWandbLogger, checked against the files an offline wandb run writes.

An offline run leaves ``run-<id>.wandb``: wandb's transaction log, in the LevelDB log format
(a 7-byte ``:W&B`` header, then 32 KiB blocks of records ``crc32c(4) length(2, LE) type(1)``,
type 1 = full, 2/3/4 = first/middle/last fragment), each record a ``wandb.proto`` ``Record``.
``wandb sync`` replays exactly these records, so reading them shows what the dashboard gets.
"""

from __future__ import annotations

import json
import struct
import time
import warnings
from pathlib import Path

import pytest
from wandb.proto import wandb_internal_pb2 as pb

from gridlm.callbacks.wandb_tracking import GridWandbLogger, WandbTracking, resolve_mode
from gridlm.experiments.cli import cli_main
from gridlm.modules.provenance import config_hash
from test_cli import read_metrics, tiny_flags

BLOCK = 32 * 1024
HEADER = 7  # b":W&B" + magic 0xBEE1 (2 bytes) + version (1 byte)


def read_wandb_records(path: Path) -> list[pb.Record]:
    data = path.read_bytes()
    if not data:  # created, nothing flushed yet
        return []
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a wandb transaction log (header {data[:4]!r})")
    records, pos, pending = [], HEADER, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # block trailer too short for a header: zero padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:  # zero padding at the end of a block
            pos += left - 7
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(pending)
            records.append(rec)
            pending = b""
    return records


def offline_run(log_dir: str) -> dict:
    """What the offline run holds: the last run record, merged config, metric summaries,
    history rows and uploaded file paths."""
    (path,) = Path(log_dir).glob("wandb/offline-run-*/run-*.wandb")
    # wandb's service process writes the log asynchronously: ``finish()`` can return before the
    # last records reach the file (seen on a loaded machine). The run is complete at its exit record.
    deadline = time.monotonic() + 60
    while not (records := read_wandb_records(path)) or records[-1].WhichOneof("record_type") != "exit":
        if time.monotonic() > deadline:
            raise AssertionError(f"{path}: no exit record 60 s after the run finished")
        time.sleep(0.2)
    out: dict = {"run": None, "config": {}, "summary_kind": {}, "history": [], "files": []}
    for rec in records:
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out["run"] = rec.run
            updates = rec.run.config.update
        elif kind == "config":
            updates = rec.config.update
        else:
            updates = []
        for u in updates:
            out["config"][u.key or "/".join(u.nested_key)] = json.loads(u.value_json)
        if kind == "metric" and rec.metric.name:
            out["summary_kind"][rec.metric.name] = rec.metric.summary
        if kind == "history":
            out["history"].append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item})
        if kind == "files":
            out["files"] += [f.path for f in rec.files.files]
    return out


def test_offline_run_holds_group_tags_config_metrics_and_panels(tmp_path):
    """One tiny fit with wandb offline; everything read back from the run's .wandb file."""
    flags = {"--wandb_mode": "offline", "--study": "study1", "--model.encoding": "rope_2d", "--trainer.val_check_interval": "2"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli = cli_main(["fit", *tiny_flags(tmp_path, steps=4, **flags)])
    problems = [str(w.message) for w in caught if "wandb" in str(w.message).lower() and "failed" in str(w.message)]
    assert not problems, problems
    run = offline_run(cli.trainer.log_dir)

    # group, job type, tags (set after Lightning started the run, before anything was logged)
    assert run["run"].run_group == "study1"
    assert run["run"].job_type == "train"
    assert set(run["run"].tags) == {"study:study1", "encoding:rope_2d", "order:row_major", "optimizer:AdamWScheduleFree", "seed:0"}

    # the resolved CLI config, its hash and the grouping fields
    config = run["config"]
    assert config["study"] == "study1" and config["encoding"] == "rope_2d" and config["optimizer"] == "AdamWScheduleFree"
    assert config["config"] == json.loads(json.dumps(cli.model.resolved_config))
    assert config["config"]["model"]["init_args"]["d_model"] == 16
    assert config["config_hash"] == config_hash(cli.model.resolved_config)

    # metrics: the same values as the CSV logger, summaries defined
    csv_metrics = read_metrics(cli.trainer.log_dir)
    val_losses = [row["val/loss"] for row in run["history"] if "val/loss" in row]
    assert val_losses == pytest.approx(csv_metrics["val/loss"]) and len(val_losses) == 2
    train_keys = set().union(*(row for row in run["history"] if "train/loss" in row))
    assert {"train/loss", "train/loss_smooth", "train/loss_test_output", "train/lr", "train/grad_norm", "train/tokens_per_s"} <= train_keys
    assert run["summary_kind"]["val/loss"].min and run["summary_kind"]["val/exact_match"].max
    assert run["summary_kind"]["val/cell_acc"].max

    # a grid panel (input, target, prediction) of the same 4 validation pairs per validation
    panels = [f for f in run["files"] if f.startswith("media/images/val/grids_")]
    assert len(panels) == 2 * 4
    assert sum(any(k.startswith("val/grids") for k in row) for row in run["history"]) == 2


def test_disabled_wandb_makes_tracking_a_no_op(tmp_path):
    cli = cli_main(["fit", *tiny_flags(tmp_path, steps=2)])  # tiny_flags: --wandb_mode disabled
    (cb,) = [c for c in cli.trainer.callbacks if isinstance(c, WandbTracking)]
    assert cb._logger is None and cb._n_val == 0 and not cb._failed
    assert not list(Path(cli.trainer.log_dir).glob("wandb"))


def test_a_wandb_error_is_one_warning_and_training_goes_on(tmp_path, monkeypatch):
    import gridlm.datamodules.pictures

    def broken(*args, **kwargs):
        raise RuntimeError("no pictures today")

    monkeypatch.setattr(gridlm.datamodules.pictures, "grids_to_image", broken)
    flags = {"--wandb_mode": "offline", "--trainer.val_check_interval": "1"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli = cli_main(["fit", *tiny_flags(tmp_path, steps=3, **flags)])
    ours = [w for w in caught if "WandbTracking" in str(w.message)]
    assert len(ours) == 1 and "logging the grid panel failed (RuntimeError: no pictures today)" in str(ours[0].message)
    assert cli.trainer.global_step == 3
    assert len(read_metrics(cli.trainer.log_dir)["val/loss"]) == 3


def test_run_info_before_init_goes_into_wandb_init(tmp_path):
    logger = GridWandbLogger(mode="offline", save_dir=str(tmp_path), name="early")
    logger.set_run_info(group="g1", tags=["encoding:none"], job_type="train", config={"study": "g1"})
    run = logger.experiment
    try:
        assert run.group == "g1" and run.job_type == "train" and "encoding:none" in run.tags
        assert run.config["study"] == "g1"
    finally:
        logger.finalize("success")


def test_resolve_mode(monkeypatch):
    with pytest.raises(ValueError, match="wandb mode 'sometimes' is not one of auto, online, offline, disabled"):
        resolve_mode("sometimes")
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert resolve_mode("auto") == "offline"
    assert resolve_mode("disabled") == "disabled"
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(Path.cwd() / "no-netrc"))
    monkeypatch.setenv("HOME", str(Path.cwd()))
    assert resolve_mode("auto") == "offline"  # no key: never tries the network


def test_wandb_runs_quiet_unless_the_user_chose_its_verbosity(tmp_path, monkeypatch):
    """gridlm's default logger asks wandb for its quiet mode (no banner, no summary panel; where the
    run is saved stays); WANDB_QUIET / WANDB_SILENT set by the user win. Lightning's unset
    ``anonymous`` option (wandb warns about it) is not passed on."""
    monkeypatch.delenv("WANDB_SILENT", raising=False)
    monkeypatch.delenv("WANDB_QUIET", raising=False)
    logger = GridWandbLogger(mode="offline", save_dir=str(tmp_path), name="q")
    assert logger._wandb_init["settings"].quiet is True and "anonymous" not in logger._wandb_init
    monkeypatch.setenv("WANDB_QUIET", "false")
    logger = GridWandbLogger(mode="offline", save_dir=str(tmp_path), name="q")
    assert logger._wandb_init["settings"].quiet is False  # left to wandb, which reads WANDB_QUIET itself
