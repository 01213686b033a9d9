"""The refiner's options: names, and one-line errors for bad values (``RefinementNetwork``'s
constructor calls :func:`check_options` with its ``locals()``)."""

from __future__ import annotations

from typing import Literal

from gridlm.datamodules.drafts import CORRUPTIONS
from gridlm.datamodules.tokens import MAX_SIDE, VOCAB_SIZE
from gridlm.modules.refiner.sources import DRAFT_SOURCES

CanvasInput = Literal["grid", "soft"]
CANVAS_INPUTS: tuple[str, ...] = ("grid", "soft")  # what a pass hands to the next (RefinementNetwork.canvas_input)


def check_options(args: dict) -> None:
    """One-line errors for bad options (the constructor's ``locals()``)."""
    if args["commit_threshold"] is not None and not 0.0 < args["commit_threshold"] <= 1.0:
        raise ValueError(f"model.commit_threshold must be in (0, 1] or null, got {args['commit_threshold']}")
    for name in ("draft_ratio", "empty_ratio"):
        if not 0.0 <= args[name] <= 1.0:
            raise ValueError(f"model.{name} must be in [0, 1], got {args[name]}")
    if args["draft_ratio"] + args["empty_ratio"] > 1.0:
        raise ValueError(f"model.draft_ratio + model.empty_ratio must be <= 1, got {args['draft_ratio']} + {args['empty_ratio']}")
    if not 0.0 < args["corrupt_cell_prob"] <= 1.0:
        raise ValueError(f"model.corrupt_cell_prob must be in (0, 1], got {args['corrupt_cell_prob']}")
    if args["canvas_input"] not in CANVAS_INPUTS:
        raise ValueError(f"model.canvas_input must be one of {list(CANVAS_INPUTS)}, got {args['canvas_input']!r}")
    if not 0.0 <= args["pass_noise"] < 1.0:
        raise ValueError(f"model.pass_noise must be in [0, 1), got {args['pass_noise']}")
    for name, least in (("n_passes", 0), ("train_passes", 1), ("inner_steps", 1), ("corrupt_errors", 1)):
        if args[name] < least:
            raise ValueError(f"model.{name} must be >= {least}, got {args[name]}")
    bad = [k for k in args["corruptions"] if k not in CORRUPTIONS]
    if bad or not args["corruptions"]:
        raise ValueError(f"model.corruptions must be a non-empty subset of {list(CORRUPTIONS)}, got {list(args['corruptions'])}")
    if args["eval_draft"] is not None and args["eval_draft"] not in DRAFT_SOURCES:
        raise ValueError(f"model.eval_draft must be one of {list(DRAFT_SOURCES)}, got {args['eval_draft']!r}")
    if not 1 <= args["canvas_max_side"] <= MAX_SIDE:
        raise ValueError(f"model.canvas_max_side must be in 1..{MAX_SIDE}, got {args['canvas_max_side']}")
    side = args["canvas_side"]
    if side is not None and not 1 <= side <= args["canvas_max_side"]:
        raise ValueError(f"model.canvas_side must be in 1..model.canvas_max_side ({args['canvas_max_side']}), got {side}")
    if args["vocab_size"] != VOCAB_SIZE:
        raise ValueError(f"model.vocab_size must be the data's {VOCAB_SIZE} (the refiner adds the outside token), got {args['vocab_size']}")
    needs_base = args["draft_ratio"] > 0 or args["eval_draft"] == "base"
    if needs_base and args["base_checkpoint"] is None:
        raise ValueError(
            f"model.base_checkpoint is required when model.draft_ratio > 0 (got {args['draft_ratio']}) or model.eval_draft is 'base'; "
            "pass --model.base_checkpoint <base model last.ckpt> or set --model.draft_ratio 0"
        )
