"""Bad options end with ONE line ``gridlm: error: ...`` naming the option, the value and the
valid choices, and exit code 2 (jsonargparse would print the usage and a nested report)."""

from __future__ import annotations

import pytest

from gridlm.datamodules.orders import ORDERS
from gridlm.experiments.cli import main
from gridlm.experiments.cli_errors import one_line_error, user_error
from gridlm.modules.encodings import ENCODINGS
from test_cli import CONFIGS

QUICK = ["--config", str(CONFIGS / "quickstart.yaml")]


def run_error(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *QUICK, *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, "\n".join(err)
    assert err[0].startswith("gridlm: error: ")
    return err[0][len("gridlm: error: ") :]


def test_bad_order_lists_the_orders(capsys):
    msg = run_error(capsys, "--data.order", "zigzag")
    assert msg == "--data.order: 'zigzag' is not one of row_major, col_major, snake, hilbert"
    assert set(msg.split("is not one of ")[1].split(", ")) == set(ORDERS)


def test_bad_encoding_lists_the_encodings(capsys):
    msg = run_error(capsys, "--model.encoding", "rope_4d")
    assert msg.startswith("--model.encoding: 'rope_4d' is not one of ")
    assert set(msg.split("is not one of ")[1].split(", ")) == set(ENCODINGS) | {"none"}


def test_wrong_type(capsys):
    assert run_error(capsys, "--data.batch_size", "abc") == "--data.batch_size: expected int, got 'abc'"


@pytest.mark.parametrize(
    "flag,expected",
    [
        ("--data.bogus", "unknown option --data.bogus; valid --data options: "),
        ("--trainer.max_stepz", "unknown option --trainer.max_stepz (did you mean max_steps?); valid --trainer options: "),
        ("--bogus", "unknown option --bogus; valid options: "),
    ],
    ids=["data", "trainer", "top"],
)
def test_unknown_key_lists_valid_keys(capsys, flag, expected):
    msg = run_error(capsys, flag, "3")
    assert msg.startswith(expected)
    if flag == "--data.bogus":
        assert "batch_size" in msg and "order" in msg


def test_unknown_model_option_suggests_and_lists(capsys):
    msg = run_error(capsys, "--model.d_modl", "32")
    assert msg.startswith("--model.d_modl: unknown option (did you mean d_model?); valid: ")
    assert "n_layers" in msg and "encoding" in msg


def test_unknown_key_in_a_config_file(capsys, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("data:\n  sourc: arc1\n")
    msg = run_error(capsys, "--config", str(cfg))
    assert msg.startswith("unknown option --data.sourc (did you mean source?); valid --data options: ")


def test_missing_config_file(capsys, tmp_path):
    msg = run_error(capsys, "--config", str(tmp_path / "nope.yaml"))
    assert msg.startswith("--config: file does not exist:") and "nope.yaml" in msg


def test_bad_wandb_mode(capsys):
    assert run_error(capsys, "--wandb_mode", "on") == "--wandb_mode: 'on' is not one of auto, online, offline, disabled"


def test_missing_checkpoint_path_is_one_line(capsys, tmp_path):
    code = main(["validate", *QUICK, "--ckpt_path", str(tmp_path / "nope.ckpt")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1] == f"gridlm: error: --ckpt_path {tmp_path / 'nope.ckpt'}: no such checkpoint file"


def test_one_line_error_never_returns_newlines():
    nested = 'Parser key "model":\n  Does not validate\n  Errors:\n    - something\n      odd\n  Given value type: x'
    assert "\n" not in one_line_error(nested) and "something odd" in one_line_error(nested)


def test_a_config_error_gridlm_raises_while_building_the_model_is_its_own_line(capsys):
    """jsonargparse wraps the model's ValueError into a ~1,000-character union report
    ('Does not validate against any of the Union subtypes ... Given value: Namespace(...)')."""
    assert main(["fit", *QUICK, "--model.n_heads", "5"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    errors = [ln for ln in err if ln.startswith("gridlm: error:")]
    assert errors == ["gridlm: error: model.d_model (128) must be divisible by model.n_heads (5)"], err


def _gridlm_raises(msg: str):
    """Raise ``ValueError(msg)`` from code whose module is gridlm's (as the model's checks are)."""
    namespace = {"__name__": "gridlm.modules.fake"}
    exec("def check(msg):\n    raise ValueError(msg)\n", namespace)
    namespace["check"](msg)


def test_user_error_picks_gridlms_own_message_from_the_chain():
    try:
        try:
            _gridlm_raises("model.n_layers must be >= 1, got 0")
        except ValueError as inner:
            raise ValueError("Does not validate against any of the Union subtypes\nGiven value: Namespace(a=1)") from inner
    except ValueError as wrapped:
        assert user_error(wrapped) == "model.n_layers must be >= 1, got 0"
    try:  # gridlm's message wrapping a foreign error is kept whole (the outermost of gridlm's own)
        try:
            raise RuntimeError("torch: unexpected EOF")
        except RuntimeError as foreign:
            try:
                _gridlm_raises("checkpoint x.ckpt cannot be loaded (unexpected EOF)")
            except ValueError as own:
                own.__cause__ = foreign
                raise ValueError("wrapper") from own
    except ValueError as wrapped:
        assert user_error(wrapped) == "checkpoint x.ckpt cannot be loaded (unexpected EOF)"
    # nothing of gridlm's in the chain: the error's own text, condensed, without the Namespace dump
    foreign = ValueError("Does not validate against any of the Union subtypes\nSubtypes: [A]\nErrors:\n  - bad thing\nGiven value: Namespace(x=1)")
    assert user_error(foreign) == "bad thing"
