"""Pretrained weights: ``pretrained:<name>`` for ``--ckpt_path``, ``--model.init_from`` for fit
(weights only), packing a checkpoint into the package, and the shipped file's model-card figure.

The plumbing is tested with a tiny checkpoint made here (in a temporary ``pretrained`` folder);
the shipped ``configs/pretrained/<name>.ckpt`` is tested against its ``<name>.json`` figure.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gridlm.experiments import pretrained
from gridlm.experiments.cli import cli_main, main
from gridlm.modules import checkpoints
from gridlm.modules.base_model import AutoregressiveGridModel
from gridlm.modules.checkpoints import load_weights, pretrained_card, pretrained_dir, pretrained_names, resolve_checkpoint

from test_cli import tiny_flags

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """The last checkpoint of a 3-step tiny fit (optimizer state and all)."""
    tmp = tmp_path_factory.mktemp("tiny")
    cli = cli_main(["fit", *tiny_flags(tmp, steps=3)])
    return Path(cli.trainer.checkpoint_callback.last_model_path)


@pytest.fixture
def shelf(tiny_run, tmp_path, monkeypatch) -> Path:
    """A ``pretrained`` folder holding ``tiny.ckpt`` (packed from the tiny run) and its card,
    standing in for the package's folder."""
    folder = tmp_path / "pretrained"
    pretrained.pack(str(tiny_run), folder / "tiny.ckpt")
    (folder / "tiny.json").write_text(json.dumps({"name": "tiny", "subset": [], "figure": None}))
    (folder / "untrained.json").write_text(json.dumps({"name": "untrained", "subset": [], "figure": None}))
    monkeypatch.setattr(checkpoints, "pretrained_dir", lambda: folder)
    return folder


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_pretrained_names_resolve_to_the_shipped_files(shelf):
    assert pretrained_names() == ["tiny", "untrained"]
    assert resolve_checkpoint("pretrained:tiny") == str(shelf / "tiny.ckpt")
    assert resolve_checkpoint("runs/x/last.ckpt") == "runs/x/last.ckpt" and resolve_checkpoint(None) is None
    with pytest.raises(ValueError, match=r"--ckpt_path pretrained:nope: no shipped weights named 'nope'; available: tiny, untrained"):
        resolve_checkpoint("pretrained:nope")
    with pytest.raises(FileNotFoundError, match=r"--model.init_from pretrained:untrained: .*card of 'untrained' but not its weights"):
        resolve_checkpoint("pretrained:untrained", "--model.init_from")


def test_a_packed_checkpoint_holds_weights_and_hyperparameters_only(tiny_run, shelf):
    run = torch.load(tiny_run, map_location="cpu", weights_only=True)
    packed = torch.load(shelf / "tiny.ckpt", map_location="cpu", weights_only=True)
    assert "optimizer_states" in run and "loops" in run  # what packing drops is really there before
    assert set(packed) <= set(pretrained.KEPT_KEYS) and {"state_dict", "hyper_parameters"} <= set(packed)
    assert packed["global_step"] == run["global_step"] == 3
    assert packed["state_dict"].keys() == run["state_dict"].keys()
    assert all(torch.equal(packed["state_dict"][k], v) for k, v in run["state_dict"].items())
    assert (shelf / "tiny.ckpt").stat().st_size < tiny_run.stat().st_size


def test_validate_and_predict_take_a_pretrained_name(tiny_run, shelf, tmp_path):
    flags = tiny_flags(tmp_path)
    by_name = pretrained.measure("pretrained:tiny", flags)
    by_path = pretrained.measure(str(tiny_run), flags)
    assert by_name == pytest.approx(by_path, rel=1e-6)  # the packed weights are the run's weights
    out = tmp_path / "s.json"
    assert main(["predict", *flags, "--ckpt_path", "pretrained:tiny", "--out", str(out)]) == 0
    assert len(json.loads(out.read_text())) == 12  # every synthetic task of tiny_flags


def test_predict_from_a_pretrained_name_needs_no_config(shelf, tmp_path):
    """The first command of a new user: no --config, no model flags (the issue's 'done when')."""
    out = tmp_path / "s.json"
    argv = ["predict", "--ckpt_path", "pretrained:tiny", "--data.source", "synthetic", "--data.n_synthetic", "3",
            "--data.synthetic_max_side", "4", "--wandb_mode", "disabled", "--trainer.default_root_dir", str(tmp_path / "runs"),
            "--trainer.enable_progress_bar", "false", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert len(json.loads(out.read_text())) == 3

def test_fit_init_from_takes_the_weights_but_not_the_optimizer_or_the_step(tiny_run, shelf, tmp_path):
    # SGD with learning rate 0 leaves the weights where they started: the saved weights are the
    # initial ones. Restoring the optimizer would fail (the tiny run used AdamWScheduleFree), and
    # restoring the step would end the fit at once (max_steps 1 < the tiny run's 3 steps).
    flags = [*tiny_flags(tmp_path, steps=1), "--model.optimizer", "torch.optim.SGD", "--model.optimizer.lr", "0.0"]
    fresh = cli_main([*flags], run=False).model.state_dict()
    assert any(not torch.equal(fresh[k], v) for k, v in _state(tiny_run).items())  # not the same start by chance
    cli = cli_main(["fit", *flags, "--model.init_from", "pretrained:tiny"])
    saved = torch.load(cli.trainer.checkpoint_callback.last_model_path, map_location="cpu", weights_only=True)
    assert saved["global_step"] == 1
    assert saved["hyper_parameters"]["init_from"] == "pretrained:tiny"
    assert saved["optimizer_states"][0]["param_groups"][0]["lr"] == 0.0  # SGD as configured, not the tiny run's state
    assert all(torch.equal(saved["state_dict"][k], v) for k, v in _state(tiny_run).items())


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--model.d_model", "32"], r"--model.init_from pretrained:tiny: the architecture does not match the model: d_model 16 in the checkpoint vs 32 in the config"),
        (["--model.encoding", "rope_2d"], r"--model.init_from pretrained:tiny: the architecture does not match the model: encoding \S+ in the checkpoint vs rope_2d in the config"),
        (["--data.order", "col_major"], r"--model.init_from pretrained:tiny: .*order 'row_major' in the checkpoint vs 'col_major' in the config \(data.order\)"),
    ],
)
def test_init_from_a_different_architecture_is_one_line(shelf, tmp_path, capsys, flags, message):
    code = main(["fit", *tiny_flags(tmp_path, steps=1), "--model.init_from", "pretrained:tiny", *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert __import__("re").search(message, err), err
    assert not list(tmp_path.glob("runs/**/*.ckpt"))  # stopped before the first step


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["predict", "--ckpt_path", "pretrained:nope"], "--ckpt_path pretrained:nope: no shipped weights named 'nope'; available: tiny, untrained"),
        (["fit", "--model.init_from", "pretrained:nope"], "--model.init_from pretrained:nope: no shipped weights named 'nope'"),
        (["fit", "--ckpt_path", "pretrained:tiny"], "not a run to resume; fine-tune from them with --model.init_from pretrained:tiny"),
        (["validate", "--ckpt_path", "pretrained:untrained"], "card of 'untrained' but not its weights"),
    ],
)
def test_bad_pretrained_names_are_one_line(shelf, tmp_path, capsys, argv, message):
    code = main([argv[0], *tiny_flags(tmp_path, steps=1), *argv[1:]])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err


def test_load_weights_copies_a_checkpoint_into_a_model(tiny_run):
    hp = torch.load(tiny_run, map_location="cpu", weights_only=True)["hyper_parameters"]
    model = AutoregressiveGridModel(**checkpoints.init_kwargs(hp, AutoregressiveGridModel))
    info = load_weights(model, str(tiny_run))
    assert info == {"path": str(tiny_run), "global_step": 3}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in _state(tiny_run).items())
    other = AutoregressiveGridModel(**{**checkpoints.init_kwargs(hp, AutoregressiveGridModel), "n_layers": 2})
    with pytest.raises(ValueError, match=r"^--model.init_from .*: the architecture does not match the model: n_layers 1 in the checkpoint vs 2 in the config$"):
        load_weights(other, str(tiny_run))


def test_the_refiner_takes_a_pretrained_base_model(tiny_run, shelf):
    from gridlm.modules.refiner import load_base_model

    base = load_base_model("pretrained:tiny", "row_major", False)
    assert all(torch.equal(base.state_dict()[k], v) for k, v in _state(tiny_run).items())
    with pytest.raises(ValueError, match="model.base_checkpoint pretrained:nope: no shipped weights named 'nope'"):
        load_base_model("pretrained:nope", "row_major", False)


# ---------------------------------------------------------------- the shipped weights
SHIPPED = pretrained_names()


def test_every_shipped_name_has_a_card_with_a_subset():
    assert "quickstart" in SHIPPED
    for name in SHIPPED:
        card = pretrained_card(name)
        assert card["name"] == name and card["subset"], name
        assert (pretrained_dir() / f"{name}.ckpt").is_file() or card.get("todo"), f"{name}: no weights and no todo note"
    tracked = (REPO / ".gitignore").read_text()
    assert "!configs/pretrained/*.ckpt" in tracked  # *.ckpt is ignored everywhere else


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_weights_load_safely_and_reproduce_their_card(name):
    path = pretrained_dir() / f"{name}.ckpt"
    if not path.is_file():
        pytest.skip(f"configs/pretrained/{name}.ckpt is not in this checkout yet: the weights are added after training (see docs/pretrained.md)")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)  # plain data only
    assert set(checkpoint) <= set(pretrained.KEPT_KEYS), "shipped weights carry optimizer or loop state: pack them"
    card = pretrained_card(name)
    assert card.get("figure"), f"{name}.json has no measured figure: python -m gridlm.experiments.pretrained pack ..."
    measured = pretrained.measure(f"pretrained:{name}", card["subset"])
    assert pretrained.compare(card, measured) == []

