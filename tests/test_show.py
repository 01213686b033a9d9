"""Task pictures: palette colours at cell centres, written PNGs, image arrays, CLI errors."""

from __future__ import annotations

import json

import matplotlib.image as mpimg
import numpy as np
import pytest
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from gridlm.datamodules.tasks import Pair, Task
from gridlm.experiments.show import ARC_COLOURS, figure_to_array, grids_to_image, main, render_grid, render_task


def rgb(hex_colour: str) -> np.ndarray:
    return np.round(np.array(to_rgb(hex_colour)) * 255).astype(np.uint8)


def full_axes_image(grid, width: float, height: float) -> np.ndarray:
    """``grid`` drawn on axes that fill a ``width`` x ``height`` inch figure, so cells tile it exactly."""
    fig = Figure(figsize=(width, height), dpi=100)
    render_grid(fig.add_axes((0, 0, 1, 1)), np.array(grid))
    return figure_to_array(fig)


def test_palette_is_the_standard_arc_one():
    assert ARC_COLOURS[0] == "#000000" and ARC_COLOURS[1] == "#0074D9" and ARC_COLOURS[9] == "#870C25"
    assert len(ARC_COLOURS) == 10


def test_cell_centres_carry_palette_colours_2x2():
    img = full_axes_image([[0, 1], [2, 3]], 2, 2)  # (200, 200, 3)
    h, w, _ = img.shape
    for (r, c), colour in {(0, 0): 0, (0, 1): 1, (1, 0): 2, (1, 1): 3}.items():
        centre = img[int((r + 0.5) * h / 2), int((c + 0.5) * w / 2)]
        np.testing.assert_array_equal(centre, rgb(ARC_COLOURS[colour]), err_msg=f"cell ({r}, {c})")


def test_every_colour_of_the_palette():
    img = full_axes_image([list(range(10))], 10, 1)  # one row of the 10 colours, (100, 1000, 3)
    h, w, _ = img.shape
    for c in range(10):
        np.testing.assert_array_equal(img[h // 2, int((c + 0.5) * w / 10)], rgb(ARC_COLOURS[c]), err_msg=f"colour {c}")


def demo_task(n_test: int = 1, hidden: bool = False) -> Task:
    g = np.array([[1, 2, 3], [4, 5, 6]])
    pairs = [Pair(g, g.T), Pair(g + 1, (g + 1).T)]
    tests = [Pair(g + 2, None if hidden else (g + 2).T) for _ in range(n_test)]
    return Task("demo", pairs, tests, source="hand")


def test_render_task_writes_png(tmp_path):
    out = tmp_path / "pics" / "task.png"
    fig = render_task(demo_task(), attempts=[demo_task().test[0].output, None], out=out)
    assert out.stat().st_size > 5_000
    img = mpimg.imread(out)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    titles = [ax.get_title() for ax in fig.axes]
    assert "attempt 1 correct 3x2" in titles and "attempt 2 wrong" in titles and "test 0 target 3x2" in titles


def test_render_task_rows_and_errors():
    fig = render_task(demo_task(n_test=2, hidden=True))  # 2 demo rows + 2 test rows (no targets)
    assert sum(ax.get_title().startswith("test") for ax in fig.axes) == 2
    with pytest.raises(ValueError, match="pass test_index"):
        render_task(demo_task(n_test=2), attempts=[None])
    with pytest.raises(ValueError, match="test index 5 is out of range"):
        render_task(demo_task(), test_index=5)


def test_grids_to_image_shape_and_invalid_box():
    x = np.arange(9).reshape(3, 3)
    img = grids_to_image([("input", x), ("target", x), ("prediction", None)], panel_inches=2.0, dpi=50)
    assert img.shape == (100, 300, 3) and img.dtype == np.uint8
    assert (img[:, 200:] > 200).mean() > 0.9  # the invalid panel is mostly white
    with pytest.raises(ValueError, match="no grids"):
        grids_to_image([])


def write_source(tmp_path) -> str:
    root = tmp_path / "tasks"
    root.mkdir()
    pair = {"input": [[1, 2], [3, 4]], "output": [[4, 3], [2, 1]]}
    (root / "abc.json").write_text(json.dumps({"train": [pair], "test": [pair, pair]}))
    return str(root)


def test_main_with_submission(tmp_path, capsys):
    source = write_source(tmp_path)
    sub = tmp_path / "sub.json"
    sub.write_text(json.dumps({"abc": [{"attempt_1": [[4, 3], [2, 1]], "attempt_2": "junk"}]}))
    out = tmp_path / "a.png"
    assert main(["--source", source, "--task", "abc", "--submission", str(sub), "--out", str(out)]) == 0
    assert out.stat().st_size > 5_000 and "wrote" in capsys.readouterr().out
    out2 = tmp_path / "b.png"  # test 1 has no entry in the submission: drawn as invalid, noted
    assert main(["--source", source, "--task", "abc", "--submission", str(sub), "--test-index", "1", "--out", str(out2)]) == 0
    assert "no entry for abc test 1" in capsys.readouterr().out and out2.exists()


def test_main_unknown_task_names_it_and_the_source(tmp_path, capsys):
    source = write_source(tmp_path)
    assert main(["--source", source, "--task", "zzz", "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'zzz'" in err and source in err
    assert not (tmp_path / "x.png").exists()


def test_main_real_arc1_task(tmp_path):
    out = tmp_path / "arc.png"
    assert main(["--source", "arc1", "--task", "007bbfb7", "--out", str(out)]) == 0
    assert out.stat().st_size > 10_000
