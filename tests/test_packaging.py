"""The installed names: ``gridlm.*`` packages, packaged configs by bare name, and checkpoints of
the 0.1 release (which named ``modules.base_model...``) still loading."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import torch

from gridlm.configs import CONFIG_DIR, packaged_configs, resolve_config
from gridlm.experiments.cli import cli_main
from gridlm.modules.base_model import AutoregressiveGridModel
from gridlm.modules.checkpoints import model_from_checkpoint, read_checkpoint, upgrade_class_path

REPO = Path(__file__).resolve().parents[1]
LEGACY = Path(__file__).resolve().parent / "data" / "legacy-0.1.0-tiny.ckpt"  # made by gridlm 0.1.0 (commit b394622)
OLD_IMPORT = re.compile(r"^\s*(from|import)\s+(modules|datamodules|callbacks|experiments)\b", re.M)


def test_no_source_file_imports_the_old_top_level_names():
    offenders = [
        str(p.relative_to(REPO))
        for folder in ("modules", "datamodules", "callbacks", "experiments", "configs", "tests")
        for p in (REPO / folder).rglob("*.py")
        if OLD_IMPORT.search(p.read_text())
    ]
    assert offenders == []


def test_the_old_names_are_not_importable_from_outside_the_checkout(tmp_path):
    code = "import importlib.util as u; print([n for n in ('modules', 'datamodules', 'callbacks', 'experiments') if u.find_spec(n)])"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_packaged_configs_resolve_by_bare_name(tmp_path):
    names = packaged_configs()
    assert {"quickstart", "base", "refiner", "encodings/rope_2d"} <= set(names)
    assert resolve_config("quickstart") == str(CONFIG_DIR / "quickstart.yaml")
    assert resolve_config("configs/quickstart.yaml") == str(CONFIG_DIR / "quickstart.yaml")  # run outside the repo
    assert resolve_config("encodings/rope_2d") == str(CONFIG_DIR / "encodings" / "rope_2d.yaml")
    mine = tmp_path / "quickstart"
    mine.write_text("seed_everything: 3\n")
    assert resolve_config(str(mine)) == str(mine)  # an existing file wins
    assert resolve_config("no_such_config") == "no_such_config"  # left for the parser to report


def test_cli_takes_a_bare_config_name():
    cli = cli_main(["--config", "quickstart", "--trainer.max_steps", "1"], run=False)
    assert cli.model.hparams.d_model > 0 and cli.datamodule.source == ["synthetic", "arc1"]


def test_legacy_class_paths_are_upgraded():
    assert upgrade_class_path("modules.base_model.AutoregressiveGridModel") == "gridlm.modules.base_model.AutoregressiveGridModel"
    assert upgrade_class_path("schedulefree.AdamWScheduleFree") == "schedulefree.AdamWScheduleFree"
    assert upgrade_class_path("modules") == "modules"
    ckpt = read_checkpoint(str(LEGACY))
    assert ckpt["hyper_parameters"]["_class_path"] == "gridlm.modules.base_model.AutoregressiveGridModel"
    assert ckpt["gridlm"]["config"]["model"]["class_path"] == "gridlm.modules.base_model.AutoregressiveGridModel"


def test_a_0_1_checkpoint_loads_and_validates(tmp_path):
    raw = torch.load(LEGACY, weights_only=True)
    assert raw["hyper_parameters"]["_class_path"].startswith("modules.")  # the fixture really is old-style
    model = model_from_checkpoint(read_checkpoint(str(LEGACY)), AutoregressiveGridModel, str(LEGACY))
    assert model.hparams.d_model == 16
    for k, v in raw["state_dict"].items():
        assert torch.equal(model.state_dict()[k], v), k
    flags = [
        "--config", "quickstart", "--ckpt_path", str(LEGACY), "--run_name", "legacy", "--wandb_mode", "disabled",
        "--trainer.default_root_dir", str(tmp_path / "runs"), "--trainer.limit_val_batches", "1",
        "--trainer.enable_progress_bar", "false", "--data.source", "synthetic", "--data.max_seq_len", "256",
        "--data.n_synthetic", "4", "--data.synthetic_max_side", "4", "--data.max_val_examples", "2",
        "--data.val_source", "null",
        "--model.encoding", "[rope_1d, onehot_2d]",  # 0.1's quickstart encoding (today's config says edges_2d: a mismatch error)
    ]  # fmt: skip
    cli = cli_main(["validate", *flags])
    assert type(cli.model).__module__ == "gridlm.modules.base_model"
    assert cli.model.hparams.d_model == 16  # the checkpoint's architecture, not quickstart's
    assert torch.isfinite(cli.trainer.callback_metrics["val/loss"])


def test_checkpoint_reading_lives_below_the_callbacks():
    """The refiner (modules/) reads its base checkpoint without importing from callbacks/."""
    assert "gridlm.callbacks" not in "".join(p.read_text() for p in (REPO / "modules" / "refiner").glob("*.py"))
    assert "def read_checkpoint" in (REPO / "modules" / "checkpoints.py").read_text()
