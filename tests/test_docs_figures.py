"""The pictures and generated pages of the documentation site show what the code does."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest

from gridlm.datamodules.orders import ORDERS
from gridlm.experiments import docs_figures, docs_site
from gridlm.modules.encodings import ENCODINGS
from gridlm.modules.encodings.bias import alibi_slopes

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name", list(ENCODINGS))
def test_every_encoding_has_a_similarity_map(name):
    sim = docs_figures.encoding_similarity(name, h=8, w=9, ref=(3, 4))
    assert sim.shape == (8, 9) and np.isfinite(sim).all()
    slot = ENCODINGS[name].slot
    if name == "none":
        assert not sim.any()
    elif slot in ("additive", "rotary"):
        assert sim[3, 4] == pytest.approx(1.0, abs=1e-5)  # a cell is most similar to itself
        assert sim.max() <= 1.0 + 1e-5


def test_alibi_map_is_the_manhattan_distance_times_the_first_slope():
    sim = docs_figures.encoding_similarity("alibi_2d", h=6, w=7, ref=(2, 5))
    rows, cols = np.mgrid[0:6, 0:7]
    slope = alibi_slopes(docs_figures.SIMILARITY_MODEL["n_heads"])[0]
    np.testing.assert_allclose(sim, -slope * (np.abs(rows - 2) + np.abs(cols - 5)), rtol=1e-6)


@pytest.mark.parametrize("name", ["rope_2d", "sinusoidal_2d"])
def test_2d_maps_depend_only_on_the_offset(name):
    a = docs_figures.encoding_similarity(name, h=10, w=10, ref=(3, 4))
    b = docs_figures.encoding_similarity(name, h=10, w=10, ref=(5, 5))
    np.testing.assert_allclose(a[0:8, 0:9], b[2:10, 1:10], atol=1e-5)


def test_onehot_2d_relates_cells_of_the_same_row_or_column_more():
    sim = docs_figures.encoding_similarity("onehot_2d", h=12, w=12, ref=(4, 4))
    same_line = np.concatenate([np.delete(sim[4], 4), np.delete(sim[:, 4], 4)])
    others = np.delete(np.delete(sim, 4, axis=0), 4, axis=1)
    assert same_line.mean() > others.mean() + 0.2


def test_pictures_are_pngs():
    assert docs_figures.order_paths_figure(3, 4).startswith(PNG)
    assert len(ORDERS) == 4  # one panel each; a new order is drawn without editing docs_figures


def test_token_table_is_the_serializer_output():
    lines = docs_figures.token_table_markdown().splitlines()
    assert lines[0].startswith("| pos | token | row | col | grid | height | width | role | target |")
    assert lines[2] == "| 0 | `BOS` | -1 | -1 | -1 | -1 | -1 | special | 0 |"
    assert lines[2 + 4] == "| 4 | `1` | 0 | 0 | 0 | 1 | 2 | demo_input | 0 |"
    assert lines[-1].startswith("| 24 | `GRID_END` |") and lines[-1].endswith("| test_output | 1 |")


def test_api_pages_list_every_public_module():
    mods = docs_site.public_modules("modules")
    assert {"gridlm.modules.base_model", "gridlm.modules.encodings.additive", "gridlm.modules.provenance"} <= set(mods)
    assert not any("._" in m for m in mods)  # _version and other private modules stay out
    page = docs_site.api_page("datamodules")
    assert "::: gridlm.datamodules.serialize" in page


@pytest.mark.parametrize(
    "message, hint",
    [
        ("The following pages exist in the docs directory, but are not included in the \"nav\" configuration:\n  - scaling.md", "under `nav:` in mkdocs.yml"),
        ("Doc file 'index.md' contains a link '../configs/quickstart.yaml', but the target is not found among documentation files.", "leaves docs/"),
        ("Doc file 'index.md' contains a link 'nope.md', but the target is not found among documentation files.", "relative to the page's own folder"),
        ("mkdocs_autorefs: concepts/models.md: Could not find cross-reference target 'gridlm.modules.x.Y'", "no longer exists"),
    ],
)
def test_strict_failures_get_a_hint(message, hint, caplog):
    logger = logging.getLogger("mkdocs.test_docs_figures")
    handler = docs_site.StrictHints()
    logger.addHandler(handler)
    try:
        with caplog.at_level(logging.INFO, logger="mkdocs"):
            logger.warning(message)
    finally:
        logger.removeHandler(handler)
    hints = [r.getMessage() for r in caplog.records if r.name == docs_site.log.name]
    assert len(hints) == 1 and hint in hints[0], hints
    assert all(r.levelno == logging.INFO for r in caplog.records if r.name == docs_site.log.name)


def test_encoding_table_has_one_row_of_four_cells_per_encoding():
    markdown = pytest.importorskip("markdown")  # the docs extra (make setup installs it)
    html = markdown.markdown(docs_figures.encoding_table_markdown(), extensions=["tables"])
    rows = re.findall(r"<tr>(.*?)</tr>", html, re.S)[1:]
    assert len(rows) == len(ENCODINGS)
    for name, row in zip(ENCODINGS, rows):
        cells = re.findall(r"<td>(.*?)</td>", row, re.S)
        assert len(cells) == 4 and cells[0] == f"<code>{name}</code>", row  # a '|' in a formula splits no row
    assert "(|row_i - row_j| + |col_i - col_j|)" in html


def test_a_page_a_make_target_writes_leaves_the_nav_until_it_exists(tmp_path):
    nav = [{"Home": "index.md"}, {"Results": [{"Learning": "learning.md"}, {"Benchmarks": "benchmarks.md"}]}]
    assert docs_site.drop_missing_optional_pages(nav, tmp_path) == [{"Home": "index.md"}, {"Results": [{"Benchmarks": "benchmarks.md"}]}]
    (tmp_path / "learning.md").write_text("# Learning\n")
    assert docs_site.drop_missing_optional_pages(nav, tmp_path) == nav
