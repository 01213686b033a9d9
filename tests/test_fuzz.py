"""Hostile input: the task loader and the token-stream parser under arbitrary JSON, bytes, grids
and token sequences (hypothesis). Only the documented errors, always naming the file or task:

- ``parse_task`` / ``load_task_file`` / ``load_json_dir``: a ``Task`` or ``TaskFormatError``
  whose message starts with the task id or file path; ``on_invalid="skip"`` keeps every valid file;
- ``parse_grid``: never raises for any sequence; returns a grid or a reason;
- ``deserialize``: the grids or ``ValueError``.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridlm.datamodules.serialize import deserialize, parse_grid, serialize_example
from gridlm.datamodules.tasks import Pair, TaskFormatError, TaskFormatWarning, load_json_dir, load_task_file, parse_task, validate_grid
from gridlm.datamodules.tokens import VOCAB_SIZE

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

json_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=5)
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4), max_leaves=30)
cells = st.integers(-3, 12) | json_scalars
grids = st.lists(st.lists(cells, min_size=0, max_size=5), min_size=0, max_size=5) | json_values
good_grids = st.integers(1, 4).flatmap(lambda h: st.integers(1, 4).flatmap(lambda w: st.lists(st.lists(st.integers(0, 9), min_size=w, max_size=w), min_size=h, max_size=h)))
pairs = st.fixed_dictionaries({"input": grids}, optional={"output": grids, "extra": json_values}) | json_values
tasks = st.fixed_dictionaries({"train": st.lists(pairs, max_size=3) | json_values, "test": st.lists(pairs, max_size=2) | json_values}) | json_values
valid_tasks = st.fixed_dictionaries(
    {
        "train": st.lists(st.fixed_dictionaries({"input": good_grids, "output": good_grids}), min_size=1, max_size=3),
        "test": st.lists(st.fixed_dictionaries({"input": good_grids, "output": good_grids}), min_size=1, max_size=2),
    }
)


# ---------------------------------------------------------------- task loader
@FUZZ
@given(obj=tasks)
def test_parse_task_raises_only_task_format_error_naming_the_task(obj):
    try:
        task = parse_task(obj, task_id="fuzz01")
    except TaskFormatError as err:
        msg = str(err)
        assert msg.startswith("fuzz01") and "\n" not in msg, msg
        return
    assert task.task_id == "fuzz01" and task.train and task.test
    for p in task.train + task.test:
        for g in (p.input, p.output):
            if g is not None:
                assert g.dtype == np.int64 and g.ndim == 2 and 1 <= min(g.shape) and max(g.shape) <= 30
                assert g.min() >= 0 and g.max() <= 9


@FUZZ
@given(arr=st.sampled_from([np.float32, np.bool_, np.int8, np.uint8, object]).flatmap(
    lambda dt: st.lists(st.integers(1, 3), min_size=0, max_size=4).map(lambda shape: np.zeros(shape, dtype=dt))))
def test_validate_grid_on_arrays_of_any_dtype_and_rank(arr):
    try:
        g = validate_grid(arr, "t.json: train[0].input")
    except TaskFormatError as err:
        assert str(err).startswith("t.json: train[0].input ")
        return
    assert g.ndim == 2 and g.dtype == np.int64


@FUZZ
@given(data=st.binary(max_size=200) | tasks.map(lambda o: json.dumps(o).encode()) | valid_tasks.map(lambda o: json.dumps(o).encode()))
def test_load_task_file_names_the_file(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("f") / "abc.json"
    path.write_bytes(data)
    try:
        task = load_task_file(path)
    except TaskFormatError as err:
        assert str(err).startswith(f"{path}:") and "\n" not in str(err), str(err)
        return
    assert task.task_id == "abc"


@pytest.mark.parametrize(
    "text",
    ["[" * 100_000 + "]" * 100_000, '{"train": ' + "[" * 50_000 + "]" * 50_000 + "}", "\ufeff{}", "", "null", '{"train": NaN}'],
    ids=["deep-list", "deep-train", "bom", "empty", "null", "nan"],
)
def test_load_task_file_hostile_documents(tmp_path, text):
    path = tmp_path / "x.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(TaskFormatError, match=f"^{path}:"):
        load_task_file(path)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(good=st.lists(valid_tasks, min_size=1, max_size=3), bad=st.lists(st.binary(max_size=60) | tasks.map(json.dumps).map(str.encode), max_size=4))
def test_skip_keeps_every_valid_task_in_a_folder(tmp_path_factory, good, bad):
    folder = tmp_path_factory.mktemp("dir")
    for i, obj in enumerate(good):
        (folder / f"good{i}.json").write_text(json.dumps(obj))
    n_bad = 0
    for i, data in enumerate(bad):
        path = folder / "sub" / f"bad{i}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        try:
            load_task_file(path)
        except TaskFormatError:
            n_bad += 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_json_dir(folder, on_invalid="skip")
    ids = {t.task_id for t in loaded}
    assert {f"good{i}" for i in range(len(good))} <= ids
    assert len(loaded) == len(good) + len(bad) - n_bad
    skipped = [w for w in caught if issubclass(w.category, TaskFormatWarning)]
    assert len(skipped) == n_bad and all(str(w.message).startswith(str(folder)) for w in skipped)


# ---------------------------------------------------------------- token-stream parser
anything = st.lists(st.integers(-(2**70), 2**70) | st.integers(0, VOCAB_SIZE + 2) | st.floats() | st.none() | st.text(max_size=2), max_size=40)


@FUZZ
@given(tokens=anything | st.lists(st.integers(0, VOCAB_SIZE - 1), max_size=60), order=st.sampled_from(["row_major", "col_major", "snake", "hilbert"]))
def test_parse_grid_never_raises(tokens, order):
    grid, reason = parse_grid(tokens, order=order)
    assert (grid is None) != (reason is None)
    if grid is not None:
        assert grid.ndim == 2 and grid.min() >= 0 and grid.max() <= 9
    else:
        assert isinstance(reason, str) and reason and "\n" not in reason


@FUZZ
@given(tokens=st.lists(st.integers(-5, 2**40) | st.integers(0, VOCAB_SIZE - 1), max_size=80), order=st.sampled_from(["row_major", "hilbert"]))
def test_deserialize_raises_only_value_error(tokens, order):
    try:
        grids = deserialize(np.asarray(tokens, dtype=np.int64) if tokens else np.zeros(0, dtype=np.int64), order=order)
    except ValueError as err:
        assert str(err) and "\n" not in str(err)
        return
    assert all(kind in ("input", "output") and g.ndim == 2 for kind, g in grids)


@FUZZ
@given(task=valid_tasks, cut=st.integers(0, 10_000), flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(-2, VOCAB_SIZE + 1)), max_size=3))
def test_deserialize_of_corrupted_real_sequences(task, cut, flips):
    pairs = [Pair(np.array(p["input"]), np.array(p["output"])) for p in task["train"] + task["test"]]
    seq = serialize_example(pairs[:-1], pairs[-1], order="snake", target_policy="all_outputs")
    toks = seq.tokens.copy()
    assert [g.tolist() for _, g in deserialize(toks, "snake")] == [g.tolist() for p in pairs for g in (p.input, p.output)]
    for pos, value in flips:
        toks[pos % len(toks)] = value
    toks = toks[: max(1, cut % (len(toks) + 1))]
    try:
        deserialize(toks, "snake")
    except ValueError as err:
        assert "\n" not in str(err)


def test_deeply_nested_cell_is_reported_not_a_recursion_error():
    deep: dict = {}
    cur = deep
    for _ in range(5000):
        cur["a"] = {}
        cur = cur["a"]
    with pytest.raises(TaskFormatError, match=r"^t: train\[0\]\.input row 0 col 0 is <deeply nested dict>"):
        parse_task({"train": [{"input": [[deep]], "output": [[1]]}], "test": [{"input": [[1]]}]}, "t")
