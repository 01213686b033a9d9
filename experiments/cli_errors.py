"""One-line command-line errors for ``gridlm``.

jsonargparse reports a bad option with the whole usage block and a nested, multi-line message
(``Parser key "model": Does not validate against any of the Union subtypes ...``).
:class:`GridArgumentParser` replaces that with one line on stderr and exit code 2::

    gridlm: error: --data.order: 'zigzag' is not one of row_major, col_major, snake, hilbert
    gridlm: error: unknown option --data.bogus; valid --data options: source, val_source, ...
    gridlm: error: --model.d_modl: unknown option (did you mean d_model?); valid: vocab_size, ...
    gridlm: error: --data.batch_size: expected int, got 'abc'

A config error that gridlm's own code raises while the CLI builds the model or data (e.g.
``model.d_model (128) must be divisible by model.n_heads (5)``) reaches the user as its own line
(:func:`user_error`), not inside jsonargparse's report of the union type it failed to build.

``GRIDLM_DEBUG=1`` restores jsonargparse's full report.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import re
import sys
from typing import Any, NoReturn, Optional

from lightning.pytorch.cli import LightningArgumentParser

_NOISE = ("Subtypes:", "Errors:", "Given value type:", "Does not validate against any of the Union subtypes", "- Expected a <class 'NoneType'>")


def _init_params(class_path: str) -> list[str]:
    """Constructor argument names of ``class_path`` (empty if it cannot be imported)."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs")]
    except (ImportError, AttributeError, TypeError, ValueError):
        return []


def _suggest(name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _options(parser: Any, group: str) -> list[str]:
    """Option names (without ``--group.``) the parser accepts under ``group`` ('' = top level)."""
    out = []
    for action in getattr(parser, "_actions", []):
        for opt in action.option_strings:
            if not opt.startswith("--"):
                continue
            name = opt[2:]
            if group and name.startswith(group + "."):
                rest = name[len(group) + 1 :]
                if "." not in rest and rest not in ("help", "init_args", "class_path"):
                    out.append(rest)
            elif not group and "." not in name and name != "help":
                out.append(name)
    return sorted(dict.fromkeys(out))


def one_line_error(message: str, parser: Any = None) -> str:
    """Condense a jsonargparse error ``message`` into one line naming the option, the bad value
    and the valid choices."""
    message = str(message)
    keys = [k for k in re.findall(r'Parser key "([^"]+)"', message) if k != "init_args"]
    key = ".".join(keys)
    values = [v.strip() for v in re.findall(r"(?:Got|Given) value: (.*)", message) if not v.strip().startswith("NestedArg(")]
    value = values[-1] if values else None

    m = re.search(r"Option '([^']+)' is not accepted", message)
    if m:
        cls = re.search(r"class_path '([^']+)'", message)
        valid = _init_params(cls.group(1)) if cls else []
        where = f"--{keys[0]}.{m.group(1)}" if keys else f"--{m.group(1)}"
        return f"{where}: unknown option{_suggest(m.group(1), valid)}" + (f"; valid: {', '.join(valid)}" if valid else "")

    m = re.match(r"unrecognized arguments: (.*)", message.strip(), re.S) or re.search(r"does not accept option '([^']+)'", message)
    if m:
        words = m.group(1).split()
        bad = next((a for a in words if a.startswith("-")), "--" + words[0] if words else "")
        name = bad.lstrip("-").split("=", 1)[0]
        group = name.rpartition(".")[0]
        valid = _options(parser, group)
        where = f"--{group} options" if group else "options"
        return f"unknown option {bad}{_suggest(name.rpartition('.')[2], valid)}" + (f"; valid {where}: {', '.join(valid)}" if valid else "")

    lit = re.search(r"Literal\[([^\]]*)\]", message)
    if lit and value is not None:
        choices = re.findall(r"'([^']*)'", lit.group(1))
        return f"--{key}: {value!r} is not one of {', '.join(choices)}"

    typ = re.search(r"Expected a <class '([^']+)'>", message)
    if typ and value is not None and typ.group(1) != "NoneType":
        return f"--{key}: expected {typ.group(1)}, got {value!r}"

    m = re.search(r"File does not exist: (.*)", message)
    if m:
        return f"--{key or 'config'}: file does not exist: {m.group(1).strip()}"

    lines = [ln.strip().lstrip("- ").strip() for ln in message.splitlines()]
    lines = [ln for ln in lines if ln and not any(ln.startswith(n.lstrip("- ")) for n in _NOISE)]
    lines = [ln for ln in lines if not ln.startswith("Given value: Namespace(")]  # the whole config, again
    text = " ".join(" ".join(lines).split())
    return text if len(text) <= 400 else text[:397] + "..."


def _raised_in_gridlm(err: BaseException) -> bool:
    """Whether ``err`` was raised by gridlm's own code (the innermost frame of its traceback)."""
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return str(tb.tb_frame.f_globals.get("__name__", "")).startswith("gridlm.")


def user_error(err: BaseException) -> str:
    """The one line to show for ``err``: the message of the outermost exception in its chain that
    gridlm raised itself (jsonargparse wraps a model's ``ValueError`` into ``Does not validate
    against any of the Union subtypes ... Given value: Namespace(...)``), else ``err``'s own,
    condensed like a parser error."""
    seen, chain = set(), []
    e: Optional[BaseException] = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        chain.append(e)
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    own = next((e for e in chain if isinstance(e, (ValueError, TypeError, FileNotFoundError)) and _raised_in_gridlm(e)), None)
    if own is not None:
        return " ".join(str(own).split())
    return one_line_error(str(err))


class GridArgumentParser(LightningArgumentParser):
    """``LightningArgumentParser`` whose errors are one ``gridlm: error: ...`` line (exit 2)."""

    def error(self, message: str, ex: Optional[Exception] = None) -> NoReturn:
        if os.environ.get("GRIDLM_DEBUG") or not self.exit_on_error:
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        sys.stderr.write(f"gridlm: error: {one_line_error(message, parser)}\n")
        sys.exit(2)
