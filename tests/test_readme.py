"""Every code block of README.md runs as written, against a daemon started as `make run` starts it.

The fence's info string says how a block is checked; any other fence fails the test:

- ``python``: a complete script, run on its own by this interpreter.
- ``python continued``: appended to the python script before it and run with it, in one process
  (the README says which script it continues).
- ``sh``: run by ``bash -e``: every command must succeed.
- ``sh norun``: not run. Only for the set-up block (``make run`` itself, which the fixture does,
  see ``test_make_run_starts_what_the_fixture_starts``) and the systemd installation (root and
  systemd; tests/test_systemd_unit.py checks it). No other section may use it.
- ``toml``: must parse.
- ``text``: a picture.

Everything runs in a layout like a fresh clone after ``make run``: a temp dir with links to the
checkout's files and ``.venv`` (this interpreter's venv) but a ``var/`` of its own, so the
developer's ``var/`` (their daemon's socket and data) is never touched. The daemon is
``python -m tierd --config systemd/tierd.dev.toml`` with that dir as cwd, the same program and
config as ``make run``'s ``.venv/bin/tierd --config systemd/tierd.dev.toml``, with no ``TIERD_*``
variables; the blocks run with none either.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2e.e2e_daemon import TierdProcess

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
MAKE_RUN_ARGS = ("--config", "systemd/tierd.dev.toml")
SYSTEM_SOCKET = Path("/run/tierd/tierd.sock")
NORUN_SECTIONS = ("Set up (fresh machine)", "systemd")
BLOCK_TIMEOUT_S = 300.0
_FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
_HEADING = re.compile(r"^#{2,3} (.+)$", re.MULTILINE)
_KINDS = {"python", "python continued", "sh", "sh norun", "toml", "text"}


@dataclass(frozen=True)
class Block:
    """One fenced block: its info string, text, 1-based line and the heading it sits under."""

    info: str
    code: str
    line: int
    section: str

    @property
    def name(self) -> str:
        return f"README.md:{self.line} ({self.section}, {self.info})"


def readme_blocks() -> list[Block]:
    text = README.read_text()
    headings = [(m.start(), m.group(1).strip()) for m in _HEADING.finditer(text)]
    blocks = []
    for match in _FENCE.finditer(text):
        section = next((title for start, title in reversed(headings) if start < match.start()), "")
        blocks.append(Block(match.group(1).strip(), match.group(2),
                            text.count("\n", 0, match.start()) + 1, section))
    return blocks


def python_scripts() -> list[tuple[str, str]]:
    """(name, script): each ``python`` block with the ``python continued`` blocks after it."""
    scripts: list[tuple[str, str]] = []
    for block in readme_blocks():
        if block.info == "python":
            scripts.append((block.name, block.code))
        elif block.info == "python continued":
            assert scripts, f"{block.name} continues no script"
            name, code = scripts[-1]
            scripts[-1] = (f"{name} + line {block.line}", code + "\n" + block.code)
    return scripts


def blocks_of(info: str) -> list[Block]:
    return [block for block in readme_blocks() if block.info == info]


@dataclass
class MakeRunDaemon(TierdProcess):
    """The e2e harness's daemon, started with `make run`'s command line and cwd layout."""

    @property
    def socket_path(self) -> Path:
        return self.work_dir / "var" / "tierd.sock"

    def start(self) -> None:
        (self.work_dir / "var").mkdir(exist_ok=True)   # `make run` does mkdir -p var
        self.starts += 1
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "tierd", *MAKE_RUN_ARGS],
                                         stdout=log, stderr=subprocess.STDOUT, env=clean_env(),
                                         cwd=self.work_dir)
        self._wait_serving()


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TIERD_")}


def make_layout() -> Path:
    """A short temp dir (the socket path must stay under 108 bytes) that looks like the checkout."""
    root = Path(tempfile.mkdtemp(prefix="td-readme-", dir="/tmp"))
    for entry in REPO.iterdir():
        if entry.name not in (".git", ".venv", "var"):
            (root / entry.name).symlink_to(entry)
    (root / ".venv").symlink_to(Path(sys.prefix))
    return root


@pytest.fixture(scope="module")
def make_run() -> Iterator[MakeRunDaemon]:
    daemon = MakeRunDaemon(make_layout())
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()
        shutil.rmtree(daemon.work_dir, ignore_errors=True)


def run_in_layout(daemon: MakeRunDaemon, argv: list[str], name: str) -> None:
    done = subprocess.run(argv, cwd=daemon.work_dir, env=clean_env(), capture_output=True,
                          text=True, timeout=BLOCK_TIMEOUT_S, check=False)
    assert daemon.proc is not None and daemon.proc.poll() is None, \
        f"the daemon died while {name} ran:\n{daemon.log_tail()}"
    assert done.returncode == 0, (f"{name} exited {done.returncode}\nstdout:\n{done.stdout}\n"
                                  f"stderr:\n{done.stderr}")


def test_every_block_says_how_it_is_checked() -> None:
    blocks = readme_blocks()
    assert blocks, "README.md has no code blocks?"
    unknown = [block.name for block in blocks if block.info not in _KINDS]
    assert not unknown, f"fences must be one of {sorted(_KINDS)}: {unknown}"
    stray = [block.name for block in blocks if block.info == "sh norun" and block.section not in NORUN_SECTIONS]
    assert not stray, f"`sh norun` is only for the set-up and systemd blocks: {stray}"


def test_make_run_starts_what_the_fixture_starts() -> None:
    recipe = (REPO / "Makefile").read_text().split("\nrun:", 1)[1].split("\n\n", 1)[0]
    assert "mkdir -p var" in recipe
    assert f"$(VENV)/bin/tierd {' '.join(MAKE_RUN_ARGS)}" in recipe


@pytest.mark.parametrize(("name", "script"), python_scripts(), ids=[n for n, _ in python_scripts()])
def test_python_blocks_run(make_run: MakeRunDaemon, name: str, script: str, tmp_path: Path) -> None:
    path = tmp_path / "block.py"
    path.write_text(script)
    run_in_layout(make_run, [sys.executable, str(path)], name)


@pytest.mark.parametrize("block", blocks_of("sh"), ids=[b.name for b in blocks_of("sh")])
def test_sh_blocks_run(make_run: MakeRunDaemon, block: Block, tmp_path: Path) -> None:
    if SYSTEM_SOCKET.exists():
        pytest.skip(f"a system daemon serves {SYSTEM_SOCKET}: tierctl would rightly talk to it")
    if not (Path(sys.prefix) / "bin" / "activate").is_file():
        pytest.skip("not run from a venv: the blocks' `. .venv/bin/activate` has nothing to find")
    path = tmp_path / "block.sh"
    path.write_text(block.code)
    run_in_layout(make_run, ["bash", "-e", str(path)], block.name)


@pytest.mark.parametrize("block", blocks_of("toml"), ids=[b.name for b in blocks_of("toml")])
def test_toml_blocks_parse(block: Block) -> None:
    tomllib.loads(block.code)

