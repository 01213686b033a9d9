"""The release: ``gridlm --version``, the version from git tags, the changelog, and (slow) a wheel
built from a shallow clone without tags that installs into a fresh virtual environment and
trains from a folder outside the checkout."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path
from zipfile import ZipFile

import lightning
import pytest
import torch
from packaging.version import Version

from gridlm.configs import packaged_configs

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib
from gridlm.experiments.cli import main

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
TINY_FIT = [
    "--trainer.max_steps", "3", "--trainer.val_check_interval", "3", "--trainer.limit_val_batches", "1",
    "--model.d_model", "16", "--model.n_layers", "1", "--model.n_heads", "2", "--model.n_generate", "1",
    "--data.max_seq_len", "256", "--data.max_tasks", "8", "--data.max_val_examples", "2",
    "--wandb_mode", "disabled", "--trainer.enable_progress_bar", "false",
]  # fmt: skip


def test_version_flag_prints_version_commit_torch_and_lightning(capsys):
    assert main(["--version"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"gridlm {metadata.version('gridlm')} (editable install from {REPO})"
    Version(lines[0].split()[1])  # a valid PEP 440 version
    assert re.fullmatch(r"git commit [0-9a-f]{40}(-dirty)?", lines[1]), lines[1]  # this is a checkout
    assert f"torch {torch.__version__}" in lines and f"lightning {lightning.__version__}" in lines


def test_the_version_comes_from_git_tags_with_a_fallback():
    assert "version" in PYPROJECT["project"]["dynamic"] and "version" not in PYPROJECT["project"]
    assert any(r.startswith("setuptools-scm") for r in PYPROJECT["build-system"]["requires"])
    Version(PYPROJECT["tool"]["setuptools_scm"]["fallback_version"])


def test_every_config_folder_ships_as_a_package():
    """A folder under configs/ that is not listed in [tool.setuptools] packages is a data folder
    setuptools warns about (and will stop shipping)."""
    packages = set(PYPROJECT["tool"]["setuptools"]["packages"])
    files = [p for p in (REPO / "configs").rglob("*") if p.suffix in (".yaml", ".json", ".ckpt")]
    folders = {p.parent.relative_to(REPO / "configs") for p in files}
    missing = sorted(".".join(("gridlm", "configs", *f.parts)) for f in folders if ".".join(("gridlm", "configs", *f.parts)) not in packages)
    assert missing == [], f"add {missing} to [tool.setuptools] packages in pyproject.toml"


def test_changelog_follows_keep_a_changelog():
    text = (REPO / "CHANGELOG.md").read_text()
    assert text.startswith("# Changelog\n") and "keepachangelog.com" in text
    versions = re.findall(r"^## \[([^\]]+)\](?: - (\d{4}-\d{2}-\d{2}))?$", text, re.M)
    assert versions[0] == ("Unreleased", ""), versions[:1]
    released = [Version(v) for v, date in versions[1:]]
    assert released and all(date for _, date in versions[1:]), "released versions need a date"
    assert released == sorted(released, reverse=True), "newest version first"
    kinds = set(re.findall(r"^### (.+)$", text, re.M))
    assert kinds <= {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}, kinds
    headings = re.findall(r"^##? .*$|^### .*$", text, re.M)
    assert all(h.startswith(("# Changelog", "## [", "### ")) for h in headings), headings


def _run(cmd: list[str], cwd: Path, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(map(str, cmd))} exited with {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.mark.slow
def test_wheel_from_a_shallow_clone_installs_and_trains_outside_the_checkout(tmp_path):
    """What CI and a user do with a release: ``python -m build`` (as ``make dist``) in a shallow
    clone without tags (the committed HEAD), the wheel installed into a fresh virtual environment,
    ``gridlm --version`` and ``gridlm fit --config quickstart`` run from an unrelated folder.

    The fresh environment sees this environment's installed packages (torch, lightning, ...)
    through one ``.pth`` line, as ``--system-site-packages`` would, so nothing is downloaded and
    torch is not reinstalled; pip (run in the fresh environment, installing into it) still checks
    the wheel's dependencies against them (``--no-index``). gridlm itself comes only from the
    wheel (checked below)."""
    if not (REPO / ".git").exists():
        pytest.skip("the checkout is not a git repository: there is no commit to build a release from")
    sha = _run(["git", "rev-parse", "HEAD"], REPO).stdout.strip()
    src = tmp_path / "src"
    _run(["git", "init", "-q", str(src)], tmp_path)
    _run(["git", "fetch", "-q", "--depth", "1", "--no-tags", REPO.as_uri(), sha], src)
    _run(["git", "checkout", "-q", "FETCH_HEAD"], src)

    _run([sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp_path / "dist"), str(src)], tmp_path)
    (wheel,) = (tmp_path / "dist").glob("gridlm-*.whl")
    version = wheel.name.split("-")[1]
    fallback = PYPROJECT["tool"]["setuptools_scm"]["fallback_version"].split(".dev")[0]
    # no tags: the fallback base, a dev number and the commit (0.2.0.dev1+g1a2b3c4d5)
    assert re.fullmatch(rf"{re.escape(fallback)}\.dev\d+\+g{sha[:7]}[0-9a-f]*", version), version
    names = set(ZipFile(wheel).namelist())
    missing = [c for c in packaged_configs() if f"gridlm/configs/{c}.yaml" not in names]
    assert missing == [], f"configs missing from the wheel: {missing}"
    assert "gridlm/modules/_version.py" in names
    shipped = _run(["git", "ls-files", "configs/pretrained"], src).stdout.split()  # model cards, and weights once trained
    assert "configs/pretrained/quickstart.json" in shipped
    assert [f for f in shipped if "gridlm/" + f not in names] == [], "pretrained files missing from the wheel"

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path)  # pip, like torch, comes through the .pth
    bindir = venv / "bin"
    fresh_site = Path(_run([str(bindir / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path).stdout.strip())
    (fresh_site / "_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    _run([str(bindir / "python"), "-m", "pip", "install", "-q", "--no-index", str(wheel)], tmp_path, env)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = _run([str(bindir / "python"), "-c", "import gridlm.modules, gridlm.configs; print(gridlm.modules.__file__); print(gridlm.configs.CONFIG_DIR)"], elsewhere, env)
    for path in where.stdout.split():
        assert Path(path).resolve().is_relative_to(venv.resolve()), f"gridlm imported from {path}, not from the wheel"

    shown = _run([str(bindir / "gridlm"), "--version"], elsewhere, env).stdout.splitlines()
    assert shown[0] == f"gridlm {version}"
    commit = shown[1].removeprefix("git commit ")
    assert len(commit) >= 7 and sha.startswith(commit), (shown[1], sha)  # the commit the wheel was built from
    assert f"torch {torch.__version__}" in shown and f"lightning {lightning.__version__}" in shown

    _run([str(bindir / "gridlm"), "fit", "--config", "quickstart", *TINY_FIT], elsewhere, env)
    assert (elsewhere / "runs" / "quickstart" / "version_0" / "checkpoints" / "last.ckpt").is_file()
