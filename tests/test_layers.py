"""The layering of the package (STYLE.md): datamodules < modules < callbacks < experiments. No
module imports from a layer above its own, at the top of the file or inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("datamodules", "modules", "callbacks", "experiments")


def imported_layers(path: Path) -> set[tuple[str, int]]:
    """``(layer, line)`` of every ``gridlm.<layer>`` import in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names] if isinstance(node, ast.Import) else []
        for name in names:
            parts = name.split(".")
            if len(parts) > 1 and parts[0] == "gridlm" and parts[1] in LAYERS:
                found.add((parts[1], node.lineno))
    return found


@pytest.mark.parametrize("layer", LAYERS[:-1])
def test_no_module_imports_from_a_layer_above_it(layer):
    above = set(LAYERS[LAYERS.index(layer) + 1 :])
    bad = [f"{p.relative_to(ROOT)}:{line} imports gridlm.{up}"
           for p in sorted((ROOT / layer).rglob("*.py")) for up, line in sorted(imported_layers(p)) if up in above]
    assert not bad, "\n".join(bad)
