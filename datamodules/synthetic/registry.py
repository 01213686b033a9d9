"""The family registry (``FAMILIES``, ``GROUPS``) and family selection by name.

A selection is a comma-separated list of family or group names: ``flip_h,gravity`` (only those)
or ``-flip_h,-logic`` (every family but those); the two forms do not mix. Unknown names raise
a one-line ``ValueError`` listing the valid names.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from gridlm.datamodules.synthetic import colour, geometry, lines, logic, objects
from gridlm.datamodules.synthetic.core import Family

GROUPS: dict[str, tuple[str, ...]] = {
    module.__name__.rsplit(".", 1)[1]: tuple(f.name for f in module.FAMILIES) for module in (geometry, colour, objects, lines, logic)
}

# the 12 families of the first version keep their order (round-robin task i stays of the same
# family), then every other family by group
_FIRST = ["flip_h", "flip_v", "rotate_90", "rotate_180", "transpose", "colour_map", "translate", "gravity", "scale_2x",
          "recolour_largest_object", "fill_enclosed", "draw_border"]  # fmt: skip
_ALL = {f.name: f for module in (geometry, colour, objects, lines, logic) for f in module.FAMILIES}
FAMILIES: dict[str, Family] = {name: _ALL[name] for name in _FIRST + [n for n in _ALL if n not in _FIRST]}


def check_family(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"unknown synthetic family {name!r}; valid: {', '.join(FAMILIES)} (groups: {', '.join(GROUPS)})")
    return FAMILIES[name]


def _expand(name: str) -> tuple[str, ...]:
    if name in GROUPS:
        return GROUPS[name]
    check_family(name)
    return (name,)


def select(names: Sequence[str] | None, max_side: int | None = None) -> list[str]:
    """Family names from a selection (``None`` = all; ``["a", "b"]`` = only those;
    ``["-a", "-b"]`` = all but those; group names stand for their families).

    With ``max_side``, families that need larger grids are left out of an exclusion or of
    "all"; naming one explicitly is an error."""
    if isinstance(names, str):
        raise TypeError(f"families must be a list of names, got the string {names!r}; use [{names!r}]")
    names = [n.strip() for n in names] if names is not None else None
    if names is not None and not names:
        raise ValueError(f"families is empty; choose from {', '.join(FAMILIES)}")
    if names is not None and not all(n.lstrip("-") for n in names):
        raise ValueError(f"synthetic family list {names} has an empty name")
    excluded = [n for n in names or [] if n.startswith("-")]
    if excluded and len(excluded) != len(names):
        raise ValueError(
            f"synthetic families {','.join(names)} mix included and excluded names; use a,b (only those) or -a,-b (all but those)"
        )
    if names is None or excluded:
        out = set(_flatten(_expand(n[1:]) for n in excluded))
        chosen = [n for n in FAMILIES if n not in out and (max_side is None or FAMILIES[n].needs <= max_side)]
        if not chosen:
            raise ValueError(f"synthetic families: excluding {','.join(excluded)} leaves no family (at max_side={max_side})")
        return chosen
    chosen = list(dict.fromkeys(_flatten(_expand(n) for n in names)))
    if max_side is not None:
        small = [f"{n} (needs {FAMILIES[n].needs})" for n in chosen if FAMILIES[n].needs > max_side]
        if small:
            raise ValueError(f"synthetic families {', '.join(small)} need a larger max_side than {max_side}; raise synthetic_max_side")
    return chosen


def parse_spec(source: str) -> list[str] | None:
    """The family names of a source spec ``<kind>`` or ``<kind>:<names>`` (``None``: all)."""
    if ":" not in source:
        return None
    names = [n.strip() for n in source.split(":", 1)[1].split(",")]
    if not all(n.lstrip("-") for n in names):
        raise ValueError(f"task source {source!r} has an empty family name; use synthetic:<family>[,<family>...]")
    return names


def _flatten(groups: Iterable[Iterable[str]]) -> list[str]:
    return [n for g in groups for n in g]
