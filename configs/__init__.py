"""The YAML configs that ship inside the package (``gridlm.configs``).

``gridlm fit --config quickstart`` names a packaged file by its bare name (``quickstart``,
``encodings/rope_2d``, ``studies/encodings``); a path that exists is used as it is.
"""

from __future__ import annotations

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent


def packaged_configs() -> list[str]:
    """Bare names of every packaged config, e.g. ``["base", "encodings/none", ...]``."""
    return sorted(str(p.relative_to(CONFIG_DIR).with_suffix("")) for p in CONFIG_DIR.rglob("*.yaml"))


def resolve_config(name: str) -> str:
    """``name`` if it is an existing file; else the packaged ``<name>.yaml`` (also accepting
    ``configs/<name>.yaml`` spellings); else ``name`` unchanged (the parser reports it)."""
    if Path(name).is_file():
        return name
    bare = name[len("configs/") :] if name.startswith("configs/") else name
    bare = bare[: -len(".yaml")] if bare.endswith(".yaml") else bare
    candidate = CONFIG_DIR / f"{bare}.yaml"
    return str(candidate) if candidate.is_file() else name
