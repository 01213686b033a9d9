"""``gridlm score``: the official ARC metric (pass@2) of a submission file.

The ARC Prize rule (arcprize.org, "ARC-AGI" guide; Chollet, "On the Measure of Intelligence",
2019): a submission is ``{task_id: [{"attempt_1": grid, "attempt_2": grid}, ...]}`` with one
entry per test input, in order. A test output is solved when either attempt equals it exactly
(same shape, same values). A task scores the fraction of its test outputs solved, and the
overall score is the mean over every task of the evaluated source:

* a task missing from the submission scores 0 and is listed in ``ScoreReport.missing``;
* task ids that are not in the source are listed in ``ScoreReport.extra`` and not scored;
* a malformed attempt (not a rectangular list of int rows, a missing ``attempt_*`` key, a
  non-dict entry, fewer entries than test outputs) is simply wrong: scoring never crashes on
  the contents of a submission. Entries beyond the number of test outputs and keys other than
  ``attempt_1``/``attempt_2`` are ignored.

Usage::

    gridlm score --submission submission.json --source arc1:eval [--csv per_task.csv] [--max-tasks N]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from dataclasses import astuple, dataclass, field, fields
from pathlib import Path

import numpy as np

from gridlm.datamodules.tasks import ON_INVALID, Task, load_tasks

ATTEMPT_KEYS = ("attempt_1", "attempt_2")  # pass@2: two attempts per test output


@dataclass
class TaskScore:
    """One row of the per-task results."""

    task_id: str
    n_test: int  # test outputs of the task
    n_correct: int  # test outputs solved by attempt_1 or attempt_2
    score: float  # n_correct / n_test
    missing: bool  # the task id is absent from the submission (scores 0)


@dataclass
class ScoreReport:
    """The pass@2 score of a submission on a task source, with per-task rows."""

    score: float  # mean per-task score over every task of the source, in [0, 1]
    n_tasks: int  # tasks of the source (the denominator of ``score``)
    n_solved_outputs: int  # test outputs solved, over all tasks
    n_outputs: int  # test outputs, over all tasks
    per_task: list[TaskScore] = field(default_factory=list)  # in source order
    missing: list[str] = field(default_factory=list)  # source task ids absent from the submission
    extra: list[str] = field(default_factory=list)  # submission task ids not in the source (sorted)
    source: str = ""  # name of the evaluated source, for the summary line

    @property
    def total(self) -> float:
        """Sum of the per-task scores ("17.0 of 400 tasks")."""
        return sum(row.score for row in self.per_task)

    def summary(self) -> str:
        """One line, e.g. ``arc1:eval: pass@2 score 0.0425 (17.0 / 400 tasks; 18/419 test outputs)``."""
        line = (
            f"{self.source or 'tasks'}: pass@2 score {self.score:.4f} ({self.total:.1f} / {self.n_tasks} tasks; "
            f"{self.n_solved_outputs}/{self.n_outputs} test outputs)"
        )
        if self.missing:
            line += f"; {len(self.missing)} tasks missing from the submission (scored 0)"
        if self.extra:
            line += f"; {len(self.extra)} submission task ids not in the source (ignored)"
        return line

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write the per-task rows (header ``task_id,n_test,n_correct,score,missing``) to ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow([fld.name for fld in fields(TaskScore)])
            for row in self.per_task:
                writer.writerow(astuple(row))
        return path


def as_grid(obj: object) -> np.ndarray | None:
    """``obj`` as a 2D int64 array if it is a non-empty rectangular list of int rows, else ``None``.

    Values are not range-checked: an out-of-palette cell can never equal a target anyway.
    Booleans and floats are not ints; numpy integer arrays of two dimensions are accepted.
    """
    if isinstance(obj, np.ndarray):
        ok = obj.ndim == 2 and obj.size > 0 and obj.dtype.kind in "iu"
        return obj.astype(np.int64) if ok else None
    if not isinstance(obj, list) or not obj or not all(isinstance(row, list) for row in obj):
        return None
    width = len(obj[0])
    if width == 0 or any(len(row) != width for row in obj):
        return None
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for row in obj for v in row):
        return None
    return np.array(obj, dtype=np.int64)


def _attempts(entry: object) -> list[np.ndarray | None]:
    """The two attempts of one submission entry; anything malformed becomes ``None``."""
    if not isinstance(entry, dict):
        return [None] * len(ATTEMPT_KEYS)
    return [as_grid(entry.get(key)) for key in ATTEMPT_KEYS]


def _solved(target: np.ndarray, entry: object) -> bool:
    return any(a is not None and a.shape == target.shape and np.array_equal(a, target) for a in _attempts(entry))


def score_submission(submission: dict, tasks: list[Task], source: str = "") -> ScoreReport:
    """Score ``submission`` (ARC submission format) against ``tasks``; see the module docstring.

    ``source`` names the tasks in the summary line (default: their common ``Task.source``).
    Raises ``ValueError`` when ``submission`` is not a dict, when ``tasks`` is empty, or when a
    task has a hidden test output (``Pair.output is None``): such a task cannot be scored.
    """
    if not isinstance(submission, dict):
        raise ValueError(f"submission must be a dict {{task_id: [{{attempt_1, attempt_2}}, ...]}}, got {type(submission).__name__}")
    if not tasks:
        raise ValueError("no tasks to score against")
    for task in tasks:
        hidden = [i for i, pair in enumerate(task.test) if pair.output is None]
        if hidden:
            raise ValueError(f"task {task.task_id}: test[{hidden[0]}].output is unknown (hidden), cannot score this source")
    rows, missing = [], []
    for task in tasks:
        entries = submission.get(task.task_id)
        is_missing = task.task_id not in submission
        if is_missing:
            missing.append(task.task_id)
        if not isinstance(entries, list):
            entries = []  # missing task, or a malformed value: every test output is wrong
        n_correct = sum(_solved(pair.output, entries[i]) for i, pair in enumerate(task.test) if i < len(entries))
        rows.append(TaskScore(task.task_id, len(task.test), n_correct, n_correct / len(task.test), is_missing))
    known = {task.task_id for task in tasks}
    extra = sorted(str(k) for k in submission if k not in known)
    return ScoreReport(
        score=sum(r.score for r in rows) / len(rows),
        n_tasks=len(rows),
        n_solved_outputs=sum(r.n_correct for r in rows),
        n_outputs=sum(r.n_test for r in rows),
        per_task=rows,
        missing=missing,
        extra=extra,
        source=source or (tasks[0].source if len({t.source for t in tasks}) == 1 else "tasks"),
    )


def load_submission(path: str | os.PathLike) -> dict:
    """Read a submission JSON file; a one-line ``ValueError`` naming the file if it is unreadable,
    not JSON, or not a JSON object."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
        raise ValueError(f"{path}: cannot read the submission file ({reason})") from e
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from e
    if not isinstance(obj, dict):
        kind = "a list" if isinstance(obj, list) else type(obj).__name__
        raise ValueError(f"{path}: top level is {kind}, expected an object {{task_id: [{{\"attempt_1\": grid, \"attempt_2\": grid}}, ...]}}")
    return obj


def score_file(submission: str | os.PathLike, source: str, on_invalid: str = "raise", max_tasks: int | None = None) -> ScoreReport:
    """Load ``submission`` and the tasks of ``source`` (a ``load_tasks`` spec) and score them;
    ``max_tasks`` keeps the first N tasks of the source (as ``gridlm predict --data.max_tasks N``)."""
    if max_tasks is not None and max_tasks < 1:
        raise ValueError(f"--max-tasks must be >= 1, got {max_tasks}")
    sub = load_submission(submission)
    tasks = load_tasks(source, on_invalid=on_invalid)
    name = source if max_tasks is None else f"{source} (first {min(max_tasks, len(tasks))})"
    return score_submission(sub, tasks[:max_tasks], source=name)


def main(argv: list[str] | None = None) -> int:
    """``gridlm score``: print the one-line summary, optionally write the per-task CSV."""
    ap = argparse.ArgumentParser(prog="gridlm score", description=__doc__.splitlines()[0].split(": ", 1)[1])
    ap.add_argument("--submission", required=True, help="submission JSON {task_id: [{attempt_1, attempt_2}, ...]}")
    ap.add_argument("--source", required=True, help="task source with known test outputs, e.g. arc1:eval, or a directory")
    ap.add_argument("--csv", default=None, help="write per-task results (task_id,n_test,n_correct,score,missing) here")
    ap.add_argument("--max-tasks", type=int, default=None, help="score only the first N tasks of the source (the tasks of predict --data.max_tasks N)")
    ap.add_argument("--on-invalid", choices=ON_INVALID, default="raise", help="invalid task files: fail, or skip with a warning")
    args = ap.parse_args(argv)
    try:
        report = score_file(args.submission, args.source, on_invalid=args.on_invalid, max_tasks=args.max_tasks)
        print(report.summary())
        if args.csv:
            print(f"per-task results: {report.to_csv(args.csv)}")
    except (ValueError, OSError) as err:
        if os.environ.get("GRIDLM_DEBUG"):
            raise
        print(f"gridlm score: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
