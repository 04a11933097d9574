"""The demo (``make demo``, ``python -m tierd_client.hf.demo``) with its small settings: both parts'
four turns, what each restored or reused from which tier, and ``tierctl stats``; on a private
daemon of its own, and twice on one that serves already (the second run starts from the first's)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from tierd_client.hf.demo_daemon import DemoDaemon, private_daemon

PAGE_TOKENS = 16
TURNS = 4
QUICK_REPLY_TOKENS = 8
# Only a guard against a hung demo (it imports torch and transformers, trains a tokenizer, runs
# 8 turns of a tiny model).
DEMO_TIMEOUT_S = 300.0
_TURN = re.compile(r"  turn (\d): (\d+) prompt tokens: (\d+) (restored|reused) from tierd \(([^)]*)\), (\d+) "
                   r"computed; TTFT ([\d.]+) ms, recompute ([\d.]+) ms: ([\d.]+)x; first token (=|!=) recompute's")
_REPLY = re.compile(r"    reply, (\d+) tokens( \(= part 1's\)| \(!= part 1's\))?: '.*'(; (\d+) pages committed)?")


@dataclass(frozen=True)
class Turn:
    prompt: int
    from_tierd: int
    tiers: str
    computed: int
    ttft_ms: float
    recompute_ms: float
    same_first_token: bool
    reply_tokens: int
    same_reply: bool | None      # part 2: its reply is part 1's
    committed_pages: int | None  # part 2


def parse(lines: list[str]) -> dict[str, list[Turn]]:
    """The turns of ``part 1`` and ``part 2`` (each a turn line and its reply line)."""
    parts: dict[str, list[Turn]] = {}
    current = ""
    for line, reply_line in zip(lines, [*lines[1:], ""]):
        if line.startswith("part "):
            current = line[:len("part 1")]
            parts[current] = []
        turn = _TURN.fullmatch(line)
        if turn is None:
            continue
        reply = _REPLY.fullmatch(reply_line)
        assert reply is not None, f"no reply line after {line!r}: {reply_line!r}"
        number, prompt, got, verb, tiers, computed, ttft, recompute, _, same = turn.groups()
        assert int(number) == len(parts[current]) + 1 and verb == ("restored" if current == "part 1" else "reused")
        parts[current].append(Turn(int(prompt), int(got), tiers, int(computed), float(ttft), float(recompute),
                                   same == "=", int(reply.group(1)),
                                   None if reply.group(2) is None else "(=" in reply.group(2),
                                   None if reply.group(4) is None else int(reply.group(4))))
    return parts


def check_turns(turns: list[Turn], tier: str, warm: bool = False) -> None:
    """Four turns; each starts from the full pages of everything said before, never the whole
    prompt, and its pages came from ``tier``. ``warm``: a run before left the pages of the
    whole conversation, so every turn restores all the full pages it may."""
    assert len(turns) == TURNS
    said = 0  # tokens of the conversation before this turn's user text whose pages tierd holds
    for turn in turns:
        cap = (turn.prompt - 1) // PAGE_TOKENS  # at least the last prompt token is computed
        assert turn.from_tierd == (cap if warm else min(said // PAGE_TOKENS, cap)) * PAGE_TOKENS, turn
        assert turn.computed == turn.prompt - turn.from_tierd >= 1
        pages = turn.from_tierd // PAGE_TOKENS
        assert turn.tiers == (f"{tier}: {pages} page{'s' if pages > 1 else ''}" if pages else "-"), turn
        assert turn.same_first_token and turn.ttft_ms > 0 and turn.recompute_ms > 0
        assert turn.reply_tokens == QUICK_REPLY_TOKENS
        # Part 1 saves the pages its cache holds (the last reply token never ran); part 2 ran it.
        said = turn.prompt + turn.reply_tokens - (1 if turn.committed_pages is None else 0)
        if turn.committed_pages is not None:
            assert turn.same_reply is True
            assert turn.committed_pages == said // PAGE_TOKENS - pages
    assert [t.prompt for t in turns] == sorted(t.prompt for t in turns)


def check_stats(lines: list[str], socket: str) -> None:
    """``tierctl stats`` at the end: the command line, one row per tier, both namespaces."""
    start = lines.index(f"$ tierctl --socket {socket} stats")
    table = lines[start + 1:]
    assert [row.split()[0] for row in table[:4]] == ["tier", "hbm", "dram", "disk"]
    assert any(row.startswith("namespaces 2 ") for row in table), table
    assert len(table) <= 8, table


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TIERD_")}


def test_the_demo_on_a_private_daemon(tmp_path: Path) -> None:
    # No daemon at $TIERD_SOCKET or ./var/tierd.sock (cwd is empty): the demo starts its own.
    done = subprocess.run([sys.executable, "-m", "tierd_client.hf.demo", "--quick"], cwd=tmp_path,
                          env=clean_env(), capture_output=True, text=True, timeout=DEMO_TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    lines = done.stdout.splitlines()
    daemon_line = next(line for line in lines if line.startswith("tierd: "))
    assert daemon_line.endswith(" (private, for this run)")
    parts = parse(lines)
    assert sorted(parts) == ["part 1", "part 2"]
    check_turns(parts["part 1"], "dram")
    check_turns(parts["part 2"], "hbm")
    check_stats(lines, daemon_line.split()[1])
    assert len(lines) <= 3 + 2 * (1 + 2 * TURNS) + 1 + 8, lines
    assert not list(tmp_path.iterdir())  # nothing written where it ran
    assert not Path(daemon_line.split()[1]).parent.exists()  # the private daemon's dir is gone


@pytest.fixture()
def shared_daemon() -> Iterator[DemoDaemon]:
    with private_daemon() as daemon:
        yield daemon


def test_two_runs_on_a_daemon_that_serves_already(shared_daemon: DemoDaemon, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from tierd_client.hf import demo

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TIERD_SOCKET", shared_daemon.socket)  # what tierctl, and so the demo, picks
    runs: list[list[str]] = []
    for _ in range(2):
        lines: list[str] = []
        assert demo.main(["--quick"], out=lines.append) == 0
        assert f"tierd: {shared_daemon.socket} (already running)" in lines
        runs.append(lines)
    first, second = (parse(lines) for lines in runs)
    check_turns(first["part 1"], "dram")
    check_turns(first["part 2"], "hbm")
    # The second run starts from the pages the first one left, its first turn too.
    check_turns(second["part 1"], "dram", warm=True)
    check_turns(second["part 2"], "hbm", warm=True)
    assert second["part 1"][0].from_tierd > 0
    assert [t.prompt for t in second["part 1"]] == [t.prompt for t in first["part 1"]]
    check_stats(runs[1], shared_daemon.socket)
