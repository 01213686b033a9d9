"""MkDocs hooks of the documentation site (``hooks:`` in ``mkdocs.yml``; ``make docs`` builds it).

The pages that would rot if written by hand are generated at build time, as in-memory files
(nothing is written into ``docs/``):

- ``reference/cli.md``: the ``--help`` of every ``gridlm`` subcommand, ``gridlm score``,
  ``gridlm show`` and ``gridlm-compare``, captured from the real parsers;
- ``reference/api/<package>.md``: one ``::: gridlm.<package>.<module>`` block (mkdocstrings)
  for every public module of ``gridlm.modules``, ``gridlm.datamodules``, ``gridlm.callbacks``
  and ``gridlm.experiments``, so a new module is documented without editing anything;
- ``changelog.md``: the repository's ``CHANGELOG.md``;
- ``concepts/img/*.png``: the pictures of :mod:`gridlm.experiments.docs_figures`;
- ``<!-- gridlm:token-table -->`` and ``<!-- gridlm:encoding-table -->`` in a page become the
  serializer's token table and the table of registered encodings.

``--strict`` turns every warning into a failure; :class:`StrictHints` adds one ``hint:`` line
after the warnings whose fix is not obvious (a page missing from the nav, a link out of
``docs/``, an API name that no longer exists).
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import pkgutil
import re
from importlib import import_module
from pathlib import Path

log = logging.getLogger("mkdocs.hooks.gridlm")

API_PACKAGES = {
    "modules": "Transformer, positional encodings, the LightningModules, decoding, voting, test-time training.",
    "datamodules": "Task sources and validation, serialization orders, tokens, augmentation, batching, the DataModule.",
    "callbacks": "Lightning callbacks: schedule-free mode, loss logging, wandb tracking, batch sizing, checkpointing.",
    "experiments": "Entry points: the `gridlm` command line, studies, benchmarks, scoring, pictures.",
}

# (title, argv of gridlm.experiments.cli.main, or of gridlm-compare when it starts with "gridlm-compare")
CLI_PAGES = [
    ("gridlm", ["--help"]),
    ("gridlm fit", ["fit", "--help"]),
    ("gridlm fit: options of the base model", ["fit", "--model.help", "gridlm.modules.base_model.AutoregressiveGridModel"]),
    ("gridlm fit: options of the refiner", ["fit", "--model.help", "gridlm.modules.refiner.RefinementNetwork"]),
    ("gridlm validate", ["validate", "--help"]),
    ("gridlm test", ["test", "--help"]),
    ("gridlm predict", ["predict", "--help"]),
    ("gridlm score", ["score", "--help"]),
    ("gridlm show", ["show", "--help"]),
    ("gridlm-compare", ["gridlm-compare", "--help"]),
]

# pages that a make target writes: left out of the nav (with an INFO line) until they exist
OPTIONAL_PAGES = {"learning.md": "make learn"}

# placeholders in a page -> generated Markdown (gridlm.experiments.docs_figures)
GENERATED_TABLES = {
    "<!-- gridlm:token-table -->": "token_table_markdown",
    "<!-- gridlm:encoding-table -->": "encoding_table_markdown",
}


def capture_help(argv: list[str], columns: int = 100) -> str:
    """What ``gridlm <argv>`` (or ``gridlm-compare ...``) prints, run in this process."""
    from gridlm.experiments import cli, compare

    out = io.StringIO()
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(columns)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                if argv[0] == "gridlm-compare":
                    compare.main(argv[1:])
                else:
                    cli.main(argv)
            except SystemExit as exit_:
                if exit_.code not in (0, None):
                    raise RuntimeError(f"`gridlm {' '.join(argv)}` exited with {exit_.code}:\n{out.getvalue()}") from None
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old
    return out.getvalue().rstrip()


def cli_reference() -> str:
    parts = [
        "# Command-line reference",
        "",
        "Generated when the site is built, from the parsers themselves (`gridlm ... --help`), so it",
        "always matches the installed version. Every option can also be set in a YAML config",
        "(`--config`, a file or the name of a packaged config such as `quickstart`);",
        "`gridlm fit --print_config` prints the resolved one. `gridlm --version` prints the version,",
        "the git commit, torch and lightning.",
        "",
    ]
    for title, argv in CLI_PAGES:
        shown = " ".join(argv) if argv[0] == "gridlm-compare" else "gridlm " + " ".join(argv)
        parts += [f"## {title}", "", f"`{shown}`", "", "```text", capture_help(argv), "```", ""]
    return "\n".join(parts)


def public_modules(package: str) -> list[str]:
    """Dotted names of the public modules of ``gridlm.<package>`` (recursively), sorted."""
    pkg = import_module(f"gridlm.{package}")
    names = [m.name for m in pkgutil.walk_packages(pkg.__path__, prefix=f"gridlm.{package}.")]
    return sorted(n for n in names if not any(part.startswith("_") for part in n.split(".")))


def api_page(package: str) -> str:
    lines = [f"# gridlm.{package}", "", API_PACKAGES[package], ""]
    for name in public_modules(package):
        lines += [f"::: {name}", ""]
    return "\n".join(lines)


@functools.lru_cache(maxsize=1)
def generated_files(repo_root: str) -> dict[str, str | bytes]:
    """``{path under docs/: content}`` of every generated page and picture."""
    from gridlm.experiments import docs_figures

    files: dict[str, str | bytes] = {
        "reference/cli.md": cli_reference(),
        "concepts/img/orders.png": docs_figures.order_paths_figure(),
        "concepts/img/encodings.png": docs_figures.encoding_similarity_figure(),
    }
    for package in API_PACKAGES:
        files[f"reference/api/{package}.md"] = api_page(package)
    changelog = Path(repo_root) / "CHANGELOG.md"
    if changelog.is_file():
        files["changelog.md"] = changelog.read_text()
    return files


PACKAGE_DIRS = ("modules", "datamodules", "callbacks", "experiments", "configs")  # installed as gridlm.<name>


def link_api_sources(repo_root: Path) -> Path:
    """``build/docs-api/gridlm/<name>`` -> ``<repo>/<name>`` for every package folder: the
    ``gridlm.*`` layout the installed package has, for mkdocstrings' static analysis (the
    editable install maps the names with an import hook that griffe cannot follow).
    ``GRIDLM_DOCS_API_DIR`` replaces ``build/docs-api`` (mkdocs.yml reads it too)."""
    out = Path(os.environ.get("GRIDLM_DOCS_API_DIR") or repo_root / "build" / "docs-api")
    pkg = out / "gridlm"
    pkg.mkdir(parents=True, exist_ok=True)
    for name in PACKAGE_DIRS:
        link = pkg / name
        if link.is_symlink() and link.resolve() == (repo_root / name).resolve():
            continue
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(repo_root / name, target_is_directory=True)
    return out


class StrictHints(logging.Handler):
    """After an MkDocs warning whose cause is not obvious, log one ``hint:`` line (INFO, so it
    does not count as one more warning under ``--strict``)."""

    RULES = [
        (
            re.compile(r"not included in the \"nav\"|not included in the nav"),
            "every page under docs/ must be in the nav: add a line `- Title: path.md` under `nav:` in mkdocs.yml",
        ),
        (
            re.compile(r"included in the 'nav' configuration, which is not found"),
            "mkdocs.yml's nav names a file that does not exist under docs/: create the page or remove its nav line",
        ),
        (
            re.compile(r"contains a link '\.\./"),
            "the link leaves docs/: files outside docs/ (configs/, tests/, the code) are not part of the site; "
            "name them in `backticks`, or link the API reference (e.g. reference/api/modules.md)",
        ),
        (
            re.compile(r"does not contain an anchor"),
            "an anchor is the heading in lowercase, spaces as '-', punctuation dropped (see the page's table of contents)",
        ),
        (
            re.compile(r"contains a link .*but the target is not found"),
            "links are relative to the page's own folder under docs/ (from concepts/x.md, the home page is ../index.md)",
        ),
        (
            re.compile(r"[Cc]ould not (collect|find cross-reference|resolve)|autorefs|Could not find"),
            "an API name in a page (`[text][gridlm.x.Y]` or `::: gridlm.x`) no longer exists: rename it to the current one",
        ),
    ]

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < logging.WARNING or record.name == log.name:
            return
        message = record.getMessage()
        for pattern, hint in self.RULES:
            if pattern.search(message):
                log.info("hint: %s", hint)
                return


# --- MkDocs hook events ---------------------------------------------------------------------


def on_startup(command, dirty, **kwargs):
    # before any plugin reads its config: mkdocstrings checks its `paths` when it is configured
    link_api_sources(Path(__file__).resolve().parent.parent)


def drop_missing_optional_pages(nav: list, docs_dir: Path) -> list:
    """``nav`` without the entries of ``OPTIONAL_PAGES`` whose file is not under ``docs_dir``."""
    out = []
    for item in nav:
        if isinstance(item, dict):
            (title, value), = item.items()
            if isinstance(value, list):
                item = {title: drop_missing_optional_pages(value, docs_dir)}
            elif value in OPTIONAL_PAGES and not (docs_dir / value).is_file():
                log.info("docs/%s is not there yet (%s writes it): left out of the nav", value, OPTIONAL_PAGES[value])
                continue
        out.append(item)
    return out


def on_config(config, **kwargs):
    root = logging.getLogger("mkdocs")
    if not any(isinstance(h, StrictHints) for h in root.handlers):
        root.addHandler(StrictHints())
    link_api_sources(Path(config["config_file_path"]).resolve().parent)
    if config.get("nav"):
        config["nav"] = drop_missing_optional_pages(config["nav"], Path(config["docs_dir"]))
    return config


def on_files(files, config, **kwargs):
    from mkdocs.exceptions import PluginError
    from mkdocs.structure.files import File

    repo_root = str(Path(config["config_file_path"]).resolve().parent)
    for path, content in generated_files(repo_root).items():
        if files.get_file_from_path(path) is not None:
            raise PluginError(f"docs/{path} exists, but the docs build generates it (gridlm.experiments.docs_site): delete or rename docs/{path}")
        files.append(File.generated(config, path, content=content))
    return files


def on_page_markdown(markdown, page, config, files, **kwargs):
    for placeholder, function in GENERATED_TABLES.items():
        if placeholder in markdown:
            from gridlm.experiments import docs_figures

            markdown = markdown.replace(placeholder, getattr(docs_figures, function)())
    return markdown
