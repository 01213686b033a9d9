"""Scaling out (docs/scaling.md): many devices and nodes through Lightning, on one CPU machine.

Every multi-process run here trains the tiny model of ``test_cli.tiny_flags`` on the synthetic
stream, 36 fresh tasks per epoch (``data.synthetic_epoch_size``), with
``data.global_batch_size 6`` for 6 steps (one epoch), checkpointing every 3 steps. The
reference is Lightning's own two-rank DDP launch (``--trainer.devices 2``). The slow tests share
their runs: two fixtures (``first``, ``second``) each start their runs side by side, and each
test asserts on the runs it names.

- two ``torchrun`` "nodes" on localhost (one process each) and a SLURM job (the real sbatch
  template run by bash, with a stand-in ``srun`` that starts the tasks with the variables SLURM
  sets) are the same 2-rank run: equal metrics, bit for bit, and one set of logs/checkpoints.
- resume across world sizes: the step-3 checkpoint of 2 ranks continues on 1 process, and a
  1-process checkpoint on 2 ranks. Exact: the step count, the optimizer's schedule-free state
  (``k``, ``weight_sum``, ``lr_max`` are pure functions of the step count, so an optimizer
  restarted at the resume would differ), and the data position: together the two halves see
  every training example exactly once. Not exact: after the resume the same examples are
  grouped into other batches (one batch of 6 instead of 3 + 3 drawn from other length buckets,
  and DDP averages the ranks' mean losses where one process takes the mean over all tokens), so
  the final ``val/loss`` agrees within 1 % (measured: < 0.1 %), as in ``test_ddp.py``.
- FSDP on CPU (gloo): trains exactly like DDP (same losses and validation; every rank decodes a
  different number of examples); full checkpoints validate and predict in one process, sharded
  ones validate and predict under FSDP, and in one process after ``consolidate_checkpoint``;
  the refiner (3 passes per step) trains under FSDP as under DDP.
- one-line errors: too many devices, a global batch that does not divide, an unreachable master,
  a sharded checkpoint without FSDP.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.utilities import rank_zero_only

from gridlm.datamodules.batching import BucketBatchSampler, per_device_batch
from gridlm.datamodules.resumable import ResumableDataLoader
from gridlm.experiments.cli import cli_main, main
from gridlm.experiments.fsdp import GridFSDPStrategy
from test_cli import CONFIGS, read_metrics, tiny_flags

TESTS = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
STEPS, GLOBAL_BATCH, N_TRAIN = 6, 6, 36
CALLBACKS = json.dumps([
    {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
     "init_args": {"save_last": True, "save_top_k": -1, "every_n_train_steps": 3, "filename": "{step}"}},
    {"class_path": "test_scaling.SeenExamples"},
])  # fmt: skip


class SeenExamples(L.Callback):
    """Writes ``seen_rank<r>.json`` into ``default_root_dir`` (``<root>/runs``): step -> training example indices."""

    def __init__(self) -> None:
        self.seen: dict[int, list[int]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen[trainer.global_step] = [int(m["index"]) for m in batch["meta"]]

    def on_train_end(self, trainer, pl_module) -> None:
        Path(trainer.default_root_dir, f"seen_rank{trainer.global_rank}.json").write_text(json.dumps(self.seen))


class ReadEmbeddingsOutsideForward(L.Callback):
    """Makes the refiner's canvas readout read ``embed.weight`` after the transformer's forward
    instead of inside it (what it did before ``Transformer.embedding_logits``)."""

    def on_train_start(self, trainer, pl_module) -> None:
        root = pl_module.model
        embed = root.module.embed  # the FSDP root's Transformer
        object.__setattr__(root, "embedding_logits", lambda h, ids: torch.nn.functional.linear(h, embed.weight[ids]))


def flags(root: Path, **extra: str) -> list[str]:
    """The tiny run; ``n_generate 3``: rank 0 decodes 2 validation examples, rank 1 one."""
    return tiny_flags(root, steps=STEPS, **{
        "--data.global_batch_size": str(GLOBAL_BATCH), "--data.synthetic_epoch_size": str(N_TRAIN),
        "--model.n_generate": "3", "--trainer.callbacks": CALLBACKS, **extra,
    })  # fmt: skip


def env(**extra: Optional[str]) -> dict:
    """The children's environment: ``extra`` set, or removed where None."""
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])  # SeenExamples in the children
    out = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": path, "GRIDLM_DEBUG": "", **extra}
    return {k: v for k, v in out.items() if v is not None}


class Launch:
    """A command started in the background in ``root``; :func:`launched` waits for it."""

    def __init__(self, args: list[str], root: Path, **env_extra: Optional[str]) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.args, self.root, self.code, self.err = args, root, None, ""
        self.proc = subprocess.Popen(args, cwd=root, env=env(**env_extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def wait(self, timeout: float) -> None:
        try:
            _, self.err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, self.err = self.proc.communicate()
            self.err += f"\n(killed after {timeout:g} s)"
        self.code = self.proc.returncode

    def ok(self) -> str:
        """Its stderr, once it has succeeded."""
        assert self.code == 0, " ".join(map(str, self.args))[-300:] + "\n" + self.err[-3000:]
        return self.err


@contextlib.contextmanager
def launched(launches: dict[str, Launch], timeout: float = 900) -> Iterator[None]:
    """Run the body while ``launches`` run, then wait for all of them (each killed after ``timeout`` s)."""
    try:
        yield
    finally:
        for launch in launches.values():
            launch.wait(timeout)


def attempt(fn: Callable[[], Any]) -> Any:
    """``fn()``, or the exception it raised: kept for the tests that need it (:func:`got`)."""
    try:
        return fn()
    except Exception as err:  # noqa: BLE001 - re-raised by got() in the tests that use the result
        return err


def got(result: Any) -> Any:
    if isinstance(result, BaseException):
        raise result
    return result


def gridlm(*args: str) -> list[str]:
    return [sys.executable, "-m", "gridlm.experiments.cli", *args]


def free_port(low: int = 20000, high: int = 30000) -> int:
    for _ in range(200):
        port = random.randint(low, high)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def log_dir(root: Path) -> Path:
    return root / "runs" / "t" / "version_0"


def seen(root: Path) -> dict[int, list[int]]:
    """step -> examples of that step over every rank of the run in ``root``."""
    out: dict[int, list[int]] = {}
    for f in sorted((root / "runs").glob("seen_rank*.json")):
        for step, idx in json.loads(f.read_text()).items():
            out.setdefault(int(step), []).extend(idx)
    return out


def same_metrics(a: Path, b: Path) -> None:
    """Every logged value equal, throughput aside."""
    ma, mb = read_metrics(str(a)), read_metrics(str(b))
    keys = {k for k in ma if k != "train/tokens_per_s"}
    assert keys == {k for k in mb if k != "train/tokens_per_s"}
    for k in keys:
        assert ma[k] == mb[k], k


def one_set_of_outputs(root: Path) -> None:
    assert [p.name for p in (root / "runs" / "t").iterdir()] == ["version_0"]
    assert len(list(root.rglob("metrics.csv"))) == 1 and len(list(root.rglob("run_summary.json"))) == 1
    assert sorted(p.name for p in (log_dir(root) / "checkpoints").iterdir()) == ["last.ckpt", "step=3.ckpt", "step=6.ckpt"]


def optimizer_group(ckpt: Path) -> dict:
    return torch.load(ckpt, weights_only=True)["optimizer_states"][0]["param_groups"][0]


def every_example_once(first: dict[int, list[int]], second: dict[int, list[int]]) -> None:
    """Steps 0-2 of one run and 3-5 of another together see each training example once."""
    assert sorted(first) == [0, 1, 2, 3, 4, 5] and sorted(second) == [3, 4, 5]
    examples = [i for s in (0, 1, 2) for i in first[s]] + [i for s in (3, 4, 5) for i in second[s]]
    assert sorted(examples) == list(range(N_TRAIN))


# ---------------------------------------------------------------- the data position under another layout (no processes)
LENGTHS = np.arange(37) % 7 + 1  # 37 examples: batches do not divide evenly


def _stream_lengths(epoch: int) -> np.ndarray:
    return (np.arange(len(LENGTHS)) * (epoch + 3)) % 11 + 1  # a stream: other examples every epoch


def _loader(batch_size: int, replicas: int, rank: int, done: int = 0, stream: bool = False) -> ResumableDataLoader:
    s = BucketBatchSampler(LENGTHS, batch_size, seed=3, bucket_factor=2, num_replicas=replicas, rank=rank,
                           lengths_for=_stream_lengths if stream else None)  # fmt: skip
    loader = ResumableDataLoader(list(range(len(LENGTHS))), batch_sampler=s, collate_fn=lambda x: x)
    loader.progress = lambda: done
    return loader


@pytest.mark.parametrize(
    "old,new", [((2, 3), (1, 6)), ((1, 6), (2, 3)), ((2, 3), (3, 2)), ((1, 4), (2, 3)), ((3, 2), (2, 2))],
    ids=["2x3->1x6", "1x6->2x3", "2x3->3x2", "1x4->2x3", "3x2->2x2"],
)  # fmt: skip
@pytest.mark.parametrize("done", [1, 3])
@pytest.mark.parametrize("stream", [False, True], ids=["fixed", "stream"])
def test_an_epoch_resumed_under_another_layout_sees_each_example_once(old, new, done, stream):
    """(replicas, per-device batch) -> another; ``done`` batches per old replica consumed. The
    new replicas deal the rest of the epoch; Lightning's batch counter is moved so the epoch
    ends when the rest is used up; a second resume mid-way continues exactly (same layout)."""
    (w0, b0), (w1, b1) = old, new
    old_loader = _loader(b0, w0, 0, done, stream)
    old_loader.batch_sampler.set_epoch(1)
    first = [i for b in old_loader.batch_sampler.batches(1)[: done * w0] for i in b]
    state = old_loader.state_dict()
    rest, positions = [], []
    for rank in range(w1):
        loader = _loader(b1, w1, rank, stream=stream)
        loader.set_progress = positions.append
        loader.load_state_dict(state)
        batches = list(loader.batch_sampler)
        assert positions[-1] + len(batches) == len(loader.batch_sampler)  # the epoch ends with the rest
        rest += [i for b in batches for i, epoch in b]
    assert set(first).isdisjoint(rest) and set(first) | set(rest) == set(range(len(LENGTHS)))
    assert len(rest) - len(set(rest)) < w1 * b1  # repeats only to even out the last round of ranks

    # checkpoint again one batch later under the new layout, resume with the same layout: the same batches
    loader = _loader(b1, w1, 0, done=positions[0] + 1, stream=stream)
    loader.load_state_dict(state)
    full = list(loader.batch_sampler)
    again = _loader(b1, w1, 0, stream=stream)
    again.load_state_dict(loader.state_dict())
    assert list(again.batch_sampler) == full[1:]


def test_a_changed_dataset_still_restarts_the_epoch():
    loader = _loader(3, 2, 0, done=2)
    state = loader.state_dict()
    s = BucketBatchSampler(np.arange(40) % 7 + 1, 3, seed=3, bucket_factor=2)
    with pytest.warns(UserWarning, match="n_examples 37 in the checkpoint vs 40 now"):
        ResumableDataLoader(list(range(40)), batch_sampler=s, collate_fn=lambda x: x).load_state_dict(state)
    assert (s.epoch, s.start_batch, s.exclude) == (0, 0, None)


# ---------------------------------------------------------------- configs and one-line errors
@pytest.mark.parametrize("model", ["quickstart", "base", "refiner"])
@pytest.mark.parametrize("fragment", ["scale/ddp", "scale/fsdp"])
def test_scale_fragments_compose_with_every_model_config(model, fragment, tmp_path):
    extra = ["--model.draft_ratio", "0.0"] if model == "refiner" else []
    cli = cli_main(["--config", model, "--config", fragment, "--trainer.accelerator", "cpu", "--trainer.devices", "2",
                    "--model.d_model", "16", "--model.n_layers", "1", "--model.n_heads", "2",  # quick to build
                    "--trainer.default_root_dir", str(tmp_path), "--wandb_mode", "disabled", *extra], run=False)  # fmt: skip
    strategy = cli.trainer.strategy
    assert type(strategy).__name__ == ("DDPStrategy" if fragment == "scale/ddp" else "GridFSDPStrategy")
    assert cli.trainer.num_devices == 2 and cli.model.hparams["d_model"] > 0


def test_the_fsdp_name_is_gridlms_strategy(tmp_path):
    cli = cli_main(["--config", "quickstart", "--trainer.strategy", "fsdp", "--trainer.devices", "2",
                    "--trainer.default_root_dir", str(tmp_path), "--wandb_mode", "disabled"], run=False)  # fmt: skip
    assert isinstance(cli.trainer.strategy, GridFSDPStrategy) and cli.trainer.strategy._state_dict_type == "full"


def _error(args: list[str], capsys) -> str:
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    return err[-1]


def test_more_devices_than_the_machine_has_is_one_line(tmp_path, capsys):
    cores = len(os.sched_getaffinity(0))
    line = _error(["fit", *tiny_flags(tmp_path), "--trainer.devices", str(cores + 1)], capsys)
    assert line == (f"gridlm: error: --trainer.devices {cores + 1}: this machine has {cores} CPU cores "
                    f"(accelerator cpu runs one process per device); use at most {cores}")  # fmt: skip
    if not torch.cuda.is_available():
        line = _error(["fit", *tiny_flags(tmp_path), "--trainer.accelerator", "gpu"], capsys)
        assert line == "gridlm: error: --trainer.devices 1: this machine has 0 CUDA GPUs; use --trainer.accelerator cpu"


def test_a_global_batch_that_does_not_divide_is_one_line(tmp_path, capsys):
    line = _error(["fit", *tiny_flags(tmp_path), "--trainer.devices", "2", "--trainer.strategy", "ddp",
                   "--data.global_batch_size", "5"], capsys)  # fmt: skip
    assert line == ("gridlm: error: data.global_batch_size 5 does not divide over 2 devices (--trainer.num_nodes 1 x "
                    "--trainer.devices 2): the per-device batch would be 2.5; use a multiple of 2 (4 or 6), "
                    "or set data.batch_size (per device) instead")  # fmt: skip
    assert per_device_batch(12, 4, "x") == 3
    with pytest.raises(ValueError, match="x 8 does not divide over 3 devices: .* multiple of 3 \\(6 or 9\\)"):
        per_device_batch(8, 3, "x")


def test_a_node_that_cannot_reach_the_master_fails_in_one_line(tmp_path, capsys, monkeypatch):
    """Node 1 of 2 with nobody listening on MASTER_PORT: a one-line error after --master_timeout,
    not torch's 30-minute wait."""
    port = free_port()
    for k, v in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "NODE_RANK": "1"}.items():
        monkeypatch.setenv(k, v)
    # the trainer of node 1 sets the process-wide rank to 1: put it back for the next tests
    monkeypatch.setattr(rank_zero_only, "rank", rank_zero_only.rank)
    line = _error(["fit", *tiny_flags(tmp_path), "--trainer.strategy", "ddp", "--trainer.num_nodes", "2",
                   "--master_timeout", "1"], capsys)  # fmt: skip
    assert line == (f"gridlm: error: node 1 (local rank 0) cannot reach the master at MASTER_ADDR=127.0.0.1 "
                    f"MASTER_PORT={port} within 1 s (Connection refused); start node 0 with the same MASTER_ADDR/MASTER_PORT, "
                    "check the address, port and firewall, or raise --master_timeout")  # fmt: skip


def test_a_sharded_checkpoint_needs_fsdp_or_consolidation(tmp_path, capsys):
    cli = cli_main(["fit", *tiny_flags(tmp_path, steps=1)])
    ckpt = torch.load(cli.trainer.checkpoint_callback.last_model_path, weights_only=True)
    folder = tmp_path / "sharded.ckpt"  # the layout FSDP writes: shards and meta.pt (everything else)
    folder.mkdir()
    torch.save({k: v for k, v in ckpt.items() if k not in ("state_dict", "optimizer_states")}, folder / "meta.pt")
    line = _error(["validate", *tiny_flags(tmp_path), "--ckpt_path", str(folder)], capsys)
    assert line == (f"gridlm: error: --ckpt_path {folder} is a sharded FSDP checkpoint (a folder of shards); load it with "
                    f"--trainer.strategy fsdp, or make one file of it first: python -m lightning.pytorch.utilities."
                    f"consolidate_checkpoint {folder} (writes {folder}.consolidated)")  # fmt: skip
    from gridlm.modules.checkpoints import model_from_checkpoint, read_checkpoint
    from gridlm.modules.base_model import AutoregressiveGridModel

    meta = read_checkpoint(str(folder))
    assert meta["sharded"] and meta["hyper_parameters"]["d_model"] == 16
    with pytest.raises(ValueError, match="is a sharded FSDP checkpoint .*consolidate_checkpoint"):
        model_from_checkpoint(meta, AutoregressiveGridModel, str(folder))


# ---------------------------------------------------------------- the multi-process runs, shared
# Every slow test below reads runs made by two fixtures, each starting its runs side by side (two
# cores stay busy: Lightning starts a run's second rank only once the first has imported) and
# doing its one-process work in this process meanwhile. A failed run fails only its tests.
SRUN = """#!/bin/bash
# stands in for srun: starts SLURM_NTASKS tasks with the variables srun gives each task
pids=()
for ((i = 0; i < SLURM_NTASKS; i++)); do
    SLURM_PROCID=$i SLURM_LOCALID=$((i % SLURM_NTASKS_PER_NODE)) SLURM_NODEID=$((i / SLURM_NTASKS_PER_NODE)) "$@" &
    pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=$?; done
exit $status
"""


def torchrun_node(rank: int, port: int, root: Path) -> Launch:
    """docs/scaling.md section 3: torchrun on each node, one process per node here."""
    return Launch([str(BIN / "torchrun"), "--nnodes", "2", "--node_rank", str(rank), "--nproc_per_node", "1",
                   "--master_addr", "127.0.0.1", "--master_port", str(port),
                   "-m", "gridlm.experiments.cli", "fit", *flags(root), "--config", "scale/ddp",
                   "--trainer.num_nodes", "2", "--trainer.devices", "1"], root)  # fmt: skip


def slurm_job(root: Path) -> Launch:
    """configs/scale/slurm.sbatch run by bash as sbatch would (2 nodes x 1 task), with a stand-in srun."""
    fake = root / "bin"
    fake.mkdir(parents=True)
    (fake / "srun").write_text(SRUN)
    (fake / "srun").chmod(0o755)
    job_port = free_port(15000, 24999)  # Lightning: MASTER_PORT = 15000 + the job id's last 4 digits
    slurm = {
        "PATH": f"{fake}{os.pathsep}{BIN}{os.pathsep}{os.environ['PATH']}",
        "SLURM_JOB_ID": f"9{job_port - 15000:04d}", "SLURM_JOB_NAME": "gridlm", "SLURM_NODELIST": "127.0.0.1",
        "SLURM_NNODES": "2", "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "1", "MASTER_ADDR": None, "MASTER_PORT": None,
    }  # fmt: skip
    return Launch(["bash", str(CONFIGS / "scale" / "slurm.sbatch"), *flags(root / "job")], root / "job", **slurm)


def refiner(root: Path, base: Path, strategy: str, **extra: str) -> Launch:
    """The refiner as configs/refiner.yaml trains it: 3 passes per step, a loss at each, the
    latent carried detached (its canvas readout reads the embeddings, which FSDP only averages
    when the read runs inside the root's forward: ``Transformer.embedding_logits``)."""
    args = flags(root, **{"--trainer.limit_val_batches": "0", "--model.draft_ratio": "0.0", "--model.base_checkpoint": str(base), **extra})  # fmt: skip
    args[args.index("--config") + 1] = str(CONFIGS / "refiner.yaml")
    i = args.index("--model.n_generate")
    del args[i : i + 2]  # a base-model option
    return Launch(gridlm("fit", *args, "--trainer.devices", "2", "--trainer.strategy", strategy), root)


def _validate(ckpt: Path, root: Path) -> dict[str, float]:
    val = cli_main(["validate", *flags(root), "--ckpt_path", str(ckpt)])
    return {k: float(v) for k, v in val.trainer.callback_metrics.items() if k.startswith("val/")}


def _predict(ckpt: Path, root: Path) -> dict:
    """The submission ``predict`` writes from ``ckpt`` in one process."""
    root.mkdir(parents=True, exist_ok=True)  # predict checks its --out folder before any work
    out = root / "sub.json"
    assert main(["predict", *tiny_flags(root), "--ckpt_path", str(ckpt), "--out", str(out)]) == 0
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def first(tmp_path_factory) -> dict:
    """The 2-rank runs: Lightning's DDP (the reference), FSDP with full and with sharded
    checkpoints (the sharded run also recomputes activations), two torchrun nodes and the SLURM
    job; meanwhile one process trains the same run here."""
    root = tmp_path_factory.mktemp("first")
    port = free_port()
    launches = {
        "ddp": Launch(gridlm("fit", *flags(root / "ddp"), "--config", "scale/ddp", "--trainer.devices", "2"), root / "ddp"),
        "fsdp": Launch(gridlm("fit", *flags(root / "fsdp"), "--config", "scale/fsdp", "--trainer.devices", "2"), root / "fsdp"),
        "sharded": Launch(gridlm("fit", *flags(root / "sharded"), "--config", "scale/fsdp", "--trainer.devices", "2",
                                 "--trainer.strategy.init_args.state_dict_type", "sharded",
                                 "--trainer.strategy.init_args.activation_checkpointing", "true"), root / "sharded"),
        "node0": torchrun_node(0, port, root / "torchrun"),
        "node1": torchrun_node(1, port, root / "torchrun"),
        "slurm": slurm_job(root / "slurm"),
    }  # fmt: skip
    with launched(launches):
        one = attempt(lambda: Path(cli_main(["fit", *flags(root / "one")]).trainer.log_dir))
    return {**launches, "one": one}


@pytest.fixture(scope="module")
def second(first, tmp_path_factory) -> dict:
    """Runs that start from the first ones: resumes across world sizes, the refiner on the DDP
    base model under DDP and under FSDP, the sharded checkpoint validated and predicted under
    FSDP and consolidated into one file; meanwhile here: the 2-rank checkpoint resumed on one process,
    the full FSDP checkpoint validated and predicted on one process."""
    root = tmp_path_factory.mktemp("second")
    ddp, sharded = log_dir(first["ddp"].root), log_dir(first["sharded"].root) / "checkpoints" / "last.ckpt"
    one = got(first["one"])
    launches = {
        "one_to_two": Launch(gridlm("fit", *flags(root / "two"), "--config", "scale/ddp", "--trainer.devices", "2",
                                    "--ckpt_path", str(one / "checkpoints" / "step=3.ckpt")), root / "two"),
        "refiner_ddp": refiner(root / "refiner_ddp", ddp / "checkpoints" / "last.ckpt", "ddp"),
        "refiner_fsdp": refiner(root / "refiner_fsdp", ddp / "checkpoints" / "last.ckpt", "fsdp"),
        "read_outside": refiner(root / "read_outside", ddp / "checkpoints" / "last.ckpt", "fsdp", **{"--trainer.max_steps": "1",
                                "--trainer.callbacks": json.dumps([{"class_path": "test_scaling.ReadEmbeddingsOutsideForward"}])}),
        "sharded_validate": Launch(gridlm("validate", *flags(root / "v"), "--trainer.devices", "2", "--trainer.strategy", "fsdp",
                                          "--ckpt_path", str(sharded)), root / "v"),
        "sharded_predict": Launch(gridlm("predict", *tiny_flags(root / "p"), "--trainer.devices", "2", "--trainer.strategy", "fsdp",
                                         "--ckpt_path", str(sharded), "--out", str(root / "p" / "sub.json")), root / "p"),
        "consolidate": Launch([sys.executable, "-m", "lightning.pytorch.utilities.consolidate_checkpoint", str(sharded)], root),
    }  # fmt: skip
    full = log_dir(first["fsdp"].root) / "checkpoints" / "last.ckpt"
    with launched(launches):
        two_to_one = attempt(lambda: cli_main(["fit", *flags(root / "one"), "--ckpt_path", str(ddp / "checkpoints" / "step=3.ckpt")]))
        full_validate = attempt(lambda: _validate(full, root / "full"))
        full_predict = attempt(lambda: _predict(full, root / "pred"))
    return {**launches, "two_to_one": two_to_one, "full_validate": full_validate, "full_predict": full_predict}


@pytest.mark.slow
def test_two_torchrun_nodes_on_localhost_are_the_ddp_run(first):
    """docs/scaling.md section 3: ``torchrun --nnodes 2 --node_rank 0/1`` on localhost."""
    first["ddp"].ok(), first["node0"].ok(), first["node1"].ok()
    root = first["node0"].root
    one_set_of_outputs(root)
    same_metrics(log_dir(first["ddp"].root), log_dir(root))
    assert seen(root) == seen(first["ddp"].root)


@pytest.mark.slow
def test_the_sbatch_template_under_slurm_variables_is_the_ddp_run(first):
    """Lightning's SLURMEnvironment takes ranks from SLURM_PROCID/LOCALID/NODEID, MASTER_ADDR
    from SLURM_NODELIST and MASTER_PORT from the job id."""
    first["ddp"].ok()
    err = first["slurm"].ok()
    assert err.count("SLURM auto-requeueing enabled") == 2  # both tasks found the SLURM environment
    one_set_of_outputs(first["slurm"].root)
    same_metrics(log_dir(first["ddp"].root), log_dir(first["slurm"].root))


# ---------------------------------------------------------------- resume across world sizes
@pytest.mark.slow
def test_a_two_rank_checkpoint_resumes_on_one_process(first, second):
    first["ddp"].ok()
    ddp = first["ddp"].root
    cli = got(second["two_to_one"])
    assert cli.trainer.global_step == STEPS and cli.datamodule.batch_size == GLOBAL_BATCH
    mine = read_metrics(cli.trainer.log_dir)
    assert mine["step"][0] == 3 and len(mine["train/loss"]) == 3  # steps 3, 4, 5
    every_example_once(seen(ddp), seen(Path(cli.trainer.default_root_dir).parent))
    ref, res = optimizer_group(log_dir(ddp) / "checkpoints" / "last.ckpt"), optimizer_group(Path(cli.trainer.log_dir) / "checkpoints" / "last.ckpt")
    assert res["k"] == ref["k"] == STEPS
    assert (res["weight_sum"], res["lr_max"]) == pytest.approx((ref["weight_sum"], ref["lr_max"]), rel=1e-12)
    assert mine["val/loss"][-1] == pytest.approx(read_metrics(str(log_dir(ddp)))["val/loss"][-1], rel=0.01)


@pytest.mark.slow
def test_a_one_process_checkpoint_resumes_on_two_ranks(first, second):
    single = got(first["one"])
    err = second["one_to_two"].ok()
    root = second["one_to_two"].root
    assert "from a checkpoint of 1 x 6: 18 of 36 examples consumed, the other 18 dealt as 3 batch(es) per replica" in err
    every_example_once(seen(single.parent.parent.parent), seen(root))
    mine = read_metrics(str(log_dir(root)))
    assert mine["step"][0] == 3 and len(mine["train/loss"]) == 3
    ref, res = optimizer_group(single / "checkpoints" / "last.ckpt"), optimizer_group(log_dir(root) / "checkpoints" / "last.ckpt")
    assert res["k"] == ref["k"] == STEPS
    assert (res["weight_sum"], res["lr_max"]) == pytest.approx((ref["weight_sum"], ref["lr_max"]), rel=1e-12)
    assert mine["val/loss"][-1] == pytest.approx(read_metrics(str(single))["val/loss"][-1], rel=0.01)


# ---------------------------------------------------------------- FSDP on CPU
@pytest.mark.slow
def test_fsdp_trains_as_ddp_and_its_checkpoint_validates_and_predicts_on_one_process(first, second):
    first["ddp"].ok(), first["fsdp"].ok()
    m_ddp, m_fsdp = read_metrics(str(log_dir(first["ddp"].root))), read_metrics(str(log_dir(first["fsdp"].root)))
    for k in ("train/loss", "val/loss", "val/cell_acc", "val/exact_match"):
        assert m_fsdp[k] == pytest.approx(m_ddp[k], rel=1e-6), k  # sharded gradients reduce as DDP's do
    ckpt = log_dir(first["fsdp"].root) / "checkpoints" / "last.ckpt"
    assert ckpt.is_file() and torch.load(ckpt, weights_only=True)["state_dict"]["model.embed.weight"].shape[1] == 16
    one = got(second["full_validate"])  # one process, the whole validation set: the synced metrics
    assert one["val/loss"] == pytest.approx(m_fsdp["val/loss"][-1], abs=1e-5)
    assert one["val/cell_acc"] == pytest.approx(m_fsdp["val/cell_acc"][-1], abs=1e-6)
    assert len(got(second["full_predict"])) == 12


@pytest.mark.slow
def test_fsdp_sharded_checkpoints_load_under_fsdp_and_after_consolidation(first, second, tmp_path, capsys):
    first["fsdp"].ok(), first["sharded"].ok(), second["sharded_validate"].ok(), second["consolidate"].ok()
    folder = log_dir(first["sharded"].root) / "checkpoints" / "last.ckpt"
    assert folder.is_dir() and (folder / "meta.pt").is_file()
    same_metrics(log_dir(first["fsdp"].root), log_dir(first["sharded"].root))  # recomputed activations: the same numbers

    full = got(second["full_validate"])
    # validated under FSDP on 2 ranks; a checkpoint inside a run folder is evaluated into <run>/validate
    evals = sorted((log_dir(first["sharded"].root)).glob("validate*/metrics.csv"))
    assert len(evals) == 1, evals
    from_shards = read_metrics(str(evals[0].parent))
    for k in ("val/loss", "val/cell_acc"):
        assert from_shards[k][-1] == pytest.approx(full[k], abs=1e-6), k

    # one process: a one-line error naming the consolidation command, whose file then loads
    code = main(["validate", *flags(tmp_path / "w"), "--ckpt_path", str(folder)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("gridlm: error: --ckpt_path") and "consolidate_checkpoint" in err[-1]
    merged = folder.with_name("last.ckpt.consolidated")
    assert _validate(merged, tmp_path / "m") == pytest.approx(full, abs=1e-6)


@pytest.mark.slow
def test_predict_from_a_sharded_checkpoint_under_fsdp_and_after_consolidation(first, second, tmp_path, capsys):
    """``gridlm predict --trainer.strategy fsdp`` on 2 ranks reads the shards and writes the same
    submission as one process predicting from the consolidated file; one process given the
    folder gets the one-line error."""
    first["sharded"].ok(), second["consolidate"].ok()
    folder = log_dir(first["sharded"].root) / "checkpoints" / "last.ckpt"
    err = second["sharded_predict"].ok()
    assert "Loaded model weights from the checkpoint at " + str(folder) in err
    from_shards = json.loads((second["sharded_predict"].root / "sub.json").read_text())
    assert len(from_shards) == 12 and from_shards == _predict(folder.with_name("last.ckpt.consolidated"), tmp_path / "pred")

    (tmp_path / "w").mkdir()
    line = _error(["predict", *tiny_flags(tmp_path / "w"), "--ckpt_path", str(folder), "--out", str(tmp_path / "w" / "sub.json")], capsys)
    assert line == (f"gridlm: error: --ckpt_path {folder} is a sharded FSDP checkpoint (a folder of shards); load it with "
                    f"--trainer.strategy fsdp, or make one file of it first: python -m lightning.pytorch.utilities."
                    f"consolidate_checkpoint {folder} (writes {folder}.consolidated)")  # fmt: skip
    assert not (tmp_path / "w" / "sub.json").exists()


@pytest.mark.slow
def test_the_refiner_trains_under_fsdp_as_under_ddp(second):
    second["refiner_ddp"].ok(), second["refiner_fsdp"].ok()
    ddp, fsdp = log_dir(second["refiner_ddp"].root), log_dir(second["refiner_fsdp"].root)
    assert read_metrics(str(fsdp))["train/loss"] == pytest.approx(read_metrics(str(ddp))["train/loss"], rel=1e-6)
    a = torch.load(ddp / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(fsdp / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k, v in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][k], v, rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.slow
def test_a_weight_read_outside_the_fsdp_forward_stops_training(second):
    """Its gradient would not be averaged over the ranks (FSDP drops it: the refiner's readout
    trained 0.16 % off DDP by step 6 that way), so the first backward stops, naming the weight."""
    launch = second["read_outside"]
    assert launch.code not in (0, None)
    assert ("RuntimeError: GridFSDPStrategy: the weight model.embed.weight was used outside the forward of its FSDP unit"
            in launch.err)  # fmt: skip
    assert not (log_dir(launch.root) / "checkpoints" / "last.ckpt").exists()
