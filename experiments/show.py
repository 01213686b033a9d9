"""``gridlm show``: pictures of ARC tasks and predictions in the standard ARC palette.

The drawing lives in :mod:`gridlm.datamodules.pictures` (render_grid, render_task,
grids_to_image); this module is the command.

Usage::

    gridlm show --source arc1 --task 007bbfb7 --out task.png
    gridlm show --source arc1:eval --task 00576224 --submission sub.json --test-index 0 --out pred.png
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from gridlm.datamodules.pictures import ARC_CMAP, ARC_COLOURS, figure_to_array, grids_to_image, render_grid, render_task  # noqa: F401 -- the names `gridlm.experiments.show` always offered
from gridlm.datamodules.tasks import ON_INVALID, Task, load_tasks


def _attempts_from_submission(path: str, task: Task, test_index: int) -> list[np.ndarray | None]:
    """The two attempts for one test pair of ``task``; a missing task or entry gives ``None``s."""
    from gridlm.experiments.score import ATTEMPT_KEYS, as_grid, load_submission

    entries = load_submission(path).get(task.task_id)
    if not isinstance(entries, list) or test_index >= len(entries) or not isinstance(entries[test_index], dict):
        print(f"gridlm show: note: {path} has no entry for {task.task_id} test {test_index}; attempts drawn as invalid")
        return [None] * len(ATTEMPT_KEYS)
    return [as_grid(entries[test_index].get(key)) for key in ATTEMPT_KEYS]


def show(source: str, task_id: str, out: str, submission: str | None = None, test_index: int | None = None, on_invalid: str = "raise") -> Path:
    """Render task ``task_id`` of ``source`` (with a submission's attempts) to ``out``."""
    tasks = load_tasks(source, on_invalid=on_invalid)
    task = next((t for t in tasks if t.task_id == task_id), None)
    if task is None:
        raise ValueError(f"task {task_id!r} is not in source {source!r} ({len(tasks)} tasks)")
    attempts = None
    if submission is not None:
        test_index = 0 if test_index is None else test_index
        if not 0 <= test_index < len(task.test):
            raise ValueError(f"task {task_id}: --test-index {test_index} is out of range, it has {len(task.test)} test pairs")
        attempts = _attempts_from_submission(submission, task, test_index)
    render_task(task, test_index=test_index, attempts=attempts, out=out)
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    """``gridlm show``: write a picture of one task (and optionally a submission's attempts)."""
    ap = argparse.ArgumentParser(prog="gridlm show", description=__doc__.splitlines()[0].split(": ", 1)[1])
    ap.add_argument("--source", default="arc1", help="task source, e.g. arc1, arc1:eval, or a directory of ARC JSON files")
    ap.add_argument("--task", required=True, help="task id, e.g. 007bbfb7")
    ap.add_argument("--submission", default=None, help="submission JSON whose attempts to draw next to the target")
    ap.add_argument("--test-index", type=int, default=None, help="which test pair (default: all; 0 with --submission)")
    ap.add_argument("--out", required=True, help="image file to write, e.g. task.png")
    ap.add_argument("--on-invalid", choices=ON_INVALID, default="raise", help="invalid task files: fail, or skip with a warning")
    args = ap.parse_args(argv)
    try:
        path = show(args.source, args.task, args.out, args.submission, args.test_index, args.on_invalid)
    except (ValueError, OSError) as err:
        if os.environ.get("GRIDLM_DEBUG"):
            raise
        print(f"gridlm show: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(f"gridlm show: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
