"""Docs that cannot rot: the shell blocks of the documentation marked runnable are run, at tiny
sizes, exactly as written.

A runnable block is a fenced ``bash`` block right after a marker line that gives the size flags::

    <!-- runnable: --trainer.max_steps 2 --model.d_model 16 ... | gridlm-compare: --dry_run -->

The block runs in bash (``set -euo pipefail``) in a fresh folder that looks like the checkout
(``configs/`` is there), with ``gridlm`` and ``gridlm-compare`` from this environment. The flags
before the first ``|`` (or after ``gridlm:``) are appended to every ``gridlm fit | validate |
test | predict`` of the block, those after ``gridlm-compare:`` to every ``gridlm-compare``; later
flags win, so the block's own flags are checked and the sizes stay tiny. A renamed flag, config
or file in a command fails the test. Blocks without a marker (``make demo``, hour-long runs) are
not run.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
MARKER = re.compile(r"^<!--\s*runnable(?::(?P<flags>.*?))?\s*-->\s*$")
PROGRAMS = ("gridlm", "gridlm-compare")
# every page with shell commands a user copies has at least one runnable block
PAGES_WITH_RUNNABLE_BLOCKS = ("index.md", "encodings.md", "studies.md", "arc_eval.md", "refiner.md")


@dataclass
class Block:
    page: str  # path under docs/
    line: int  # line of the marker (1-based)
    flags: dict[str, list[str]]  # program -> flags appended to its commands
    script: str

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def parse_marker(text: str, where: str) -> dict[str, list[str]]:
    """``"--a 1 | gridlm-compare: --dry_run"`` -> ``{"gridlm": ["--a", "1"], "gridlm-compare": ["--dry_run"]}``."""
    flags: dict[str, list[str]] = {p: [] for p in PROGRAMS}
    for section in (text or "").split("|"):
        section = section.strip()
        program = "gridlm"
        m = re.match(r"^([\w-]+):\s*(.*)$", section)
        if m and not section.startswith("-"):
            program, section = m.group(1), m.group(2)
            if program not in PROGRAMS:
                raise ValueError(f"{where}: runnable marker names {program!r}; expected one of {', '.join(PROGRAMS)}")
        flags[program] += shlex.split(section)
    return flags


def collect(page: Path) -> list[Block]:
    """The runnable blocks of one Markdown page; a marker not followed by a bash block is an error."""
    lines = page.read_text().splitlines()
    rel = str(page.relative_to(DOCS))
    blocks = []
    for i, line in enumerate(lines):
        m = MARKER.match(line.strip())
        if not m:
            continue
        where = f"docs/{rel}:{i + 1}"
        if i + 1 >= len(lines) or not re.match(r"^```(bash|sh|shell)\s*$", lines[i + 1].strip()):
            raise ValueError(f"{where}: a runnable marker must be followed directly by a ```bash block")
        end = next((j for j in range(i + 2, len(lines)) if lines[j].strip() == "```"), None)
        if end is None:
            raise ValueError(f"{where}: the ```bash block after the runnable marker is not closed")
        blocks.append(Block(rel, i + 1, parse_marker(m.group("flags"), where), "\n".join(lines[i + 2 : end])))
    return blocks


def all_blocks() -> list[Block]:
    return [b for page in sorted(DOCS.rglob("*.md")) for b in collect(page)]


def bash_script(block: Block) -> str:
    """The block behind functions that append the marker's flags to ``gridlm`` / ``gridlm-compare``."""
    return "\n".join(
        [
            "set -euo pipefail",
            f"GRIDLM_FLAGS=({shlex.join(block.flags['gridlm'])})",
            f"COMPARE_FLAGS=({shlex.join(block.flags['gridlm-compare'])})",
            'gridlm() { case "${1:-}" in fit|validate|test|predict) command gridlm "$@" "${GRIDLM_FLAGS[@]}" ;; *) command gridlm "$@" ;; esac; }',
            'gridlm-compare() { command gridlm-compare "$@" "${COMPARE_FLAGS[@]}"; }',
            block.script,
        ]
    )


def test_markers_are_well_formed_and_every_how_to_page_has_a_runnable_block():
    blocks = all_blocks()  # raises on a misplaced or malformed marker
    pages = {b.page for b in blocks}
    assert set(PAGES_WITH_RUNNABLE_BLOCKS) <= pages, sorted(set(PAGES_WITH_RUNNABLE_BLOCKS) - pages)
    for b in blocks:
        assert re.search(r"^\s*(gridlm|gridlm-compare)\s", b.script, re.M), f"{b.id}: a runnable block without a gridlm command"
        if re.search(r"^\s*gridlm\s+fit\b", b.script, re.M):
            assert "--trainer.max_steps" in b.flags["gridlm"], f"{b.id}: a runnable fit needs a tiny --trainer.max_steps in its marker"


def test_marker_parsing(tmp_path):
    assert parse_marker(" --a 1 --b 'x y' | gridlm-compare: --dry_run", "x") == {"gridlm": ["--a", "1", "--b", "x y"], "gridlm-compare": ["--dry_run"]}
    assert parse_marker("", "x") == {"gridlm": [], "gridlm-compare": []}
    with pytest.raises(ValueError, match="names 'make'"):
        parse_marker("make: -j2", "x")


@dataclass
class Run:
    returncode: int
    output: str
    wall: float  # seconds
    cpu: float  # user + system seconds of the block and every process it started


def run_block(block: Block, folder: Path, timeout: float = 1800.0) -> Run:
    """Run one block in ``folder`` (made to look like the checkout root); kill it after ``timeout``."""
    (folder / "configs").symlink_to(REPO / "configs")  # the commands are written for the checkout root
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", "WANDB_MODE": "offline"}
    log = folder / "block_output.txt"
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(["bash", "-c", bash_script(block)], cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    killer = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
    killer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)  # the rusage of this block alone, also when blocks run in parallel
    finally:
        killer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = log.read_text()
    if proc.returncode == -signal.SIGKILL:
        text += f"\n(killed after {timeout:.0f} s)"
    return Run(proc.returncode, text, time.perf_counter() - start, usage.ru_utime + usage.ru_stime)


BLOCKS = all_blocks()


@pytest.fixture(scope="module")
def block_runs(request, tmp_path_factory):
    """The selected blocks, started together two at a time (most of a block is Python start-up on
    one core, so two in parallel nearly halve the wall time on 2 cores); each test waits for its own."""
    selected = {item.callspec.params["block"].id for item in request.session.items if getattr(item, "originalname", "") == "test_runnable_block"}
    pool = ThreadPoolExecutor(max_workers=2)
    longest_first = sorted((b for b in BLOCKS if b.id in selected), key=lambda b: -len(re.findall(r"^\s*gridlm", b.script, re.M)))
    runs = {b.id: pool.submit(run_block, b, tmp_path_factory.mktemp("docs_block")) for b in longest_first}
    yield runs
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.id)
def test_runnable_block(block, block_runs):
    run = block_runs[block.id].result()
    print(f"docs/{block.id}: {run.wall:.1f} s wall, {run.cpu:.1f} s CPU")
    assert run.returncode == 0, f"docs/{block.id} exited with {run.returncode} after {run.wall:.0f} s\n--- block\n{block.script}\n--- output (tail)\n{run.output[-4000:]}"
