"""benchmarks/trace.py and its trace generator: the format a user replays, and one quick replay."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str) -> ModuleType:
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))  # trace.py imports trace_gen and machine_info
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    return _load("trace_gen")


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return _load("trace")


def small_shape(gen: ModuleType, seed: int = 0) -> object:
    return gen.TraceShape(seed=seed, chats=4, rag_jobs=4, one_offs=2, docs=5, system_prompts=2)


def test_the_generator_is_seeded(gen: ModuleType) -> None:
    assert gen.generate(small_shape(gen)) == gen.generate(small_shape(gen))
    assert gen.generate(small_shape(gen)) != gen.generate(small_shape(gen, seed=1))


def test_a_chats_turns_grow_from_the_last_prompt_in_arrival_order(gen: ModuleType) -> None:
    trace = gen.generate(small_shape(gen))
    assert [r.time_s for r in trace] == sorted(r.time_s for r in trace)
    chats: dict[str, list[tuple[int, ...]]] = {}
    for request in trace:
        if request.session.startswith("chat"):
            chats.setdefault(request.session, []).append(request.tokens)
    assert len(chats) == 4
    for prompts in chats.values():
        assert len(prompts) >= 2
        for earlier, later in zip(prompts, prompts[1:]):
            assert later[:len(earlier)] == earlier and len(later) > len(earlier)


def test_jsonl_round_trip_with_tokens_and_keys(gen: ModuleType, tmp_path: Path) -> None:
    trace = gen.generate(small_shape(gen)) + [gen.TraceRequest(1e6, "keyed", keys=(b"\x01" * 16, b"\x02" * 16))]
    path = tmp_path / "trace.jsonl"
    gen.write_jsonl(trace, path)
    assert gen.read_jsonl(path) == trace
    assert json.loads(path.read_text().splitlines()[-1]) == {
        "t": 1e6, "session": "keyed", "keys": ["01" * 16, "02" * 16]}


@pytest.mark.parametrize("line, words", [
    ('{"t": 1, "session": "a"}', "needs tokens, or keys"),
    ('{"t": 1, "session": "a", "tokens": [1, -2]}', "token ids"),
    ('{"t": 1, "session": "a", "keys": ["abc"]}', "32 hex digits"),
    ('{"session": "a", "tokens": [1]}', "'t'"),
    ("not json", "Expecting value"),
])
def test_a_bad_line_is_refused_with_its_number(gen: ModuleType, tmp_path: Path, line: str, words: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"t": 0, "session": "ok", "tokens": [1, 2]}\n' + line + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: ") as caught:
        gen.read_jsonl(path)
    assert words in str(caught.value)


def test_a_quick_replay_reports_every_policy_within_the_unbounded_ceiling(bench: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "trace.json"
    assert bench.main(["--quick", "--capacities", "0.25", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [row["variant"] for row in report["rows"]] == [v.name for v in bench.VARIANTS]
    assert 0 < report["ceiling_hit_rate"] < 1
    for row in report["rows"]:
        assert row["prompt_tokens"] == report["rows"][0]["prompt_tokens"]
        assert 0 < row["hit_rate"] <= report["ceiling_hit_rate"]
        assert row["evictions"] > 0  # the cache was too small for the trace: policies mattered
        assert row["prefill_s_saved"] == pytest.approx(row["hit_tokens"] * 100e-6)
    by_name = {row["variant"]: row for row in report["rows"]}
    # A windowed namespace reads only the pages a continuation attends to.
    assert by_name["prefix+window"]["dram_bytes_read"] + by_name["prefix+window"]["disk_bytes_read"] < (
        by_name["prefix"]["dram_bytes_read"] + by_name["prefix"]["disk_bytes_read"])
    assert "prefix_over_lru_at_25pct" in report["goals"]


def test_a_user_trace_of_page_keys_replays(bench: ModuleType, gen: ModuleType, tmp_path: Path) -> None:
    keys = [bytes([i]) * 16 for i in range(1, 9)]
    trace = [gen.TraceRequest(float(t), f"s{t % 2}", keys=tuple(keys[:2 + t % 6])) for t in range(40)]
    path = tmp_path / "keys.jsonl"
    gen.write_jsonl(trace, path)
    out = tmp_path / "report.json"
    assert bench.main(["--trace", str(path), "--policies", "lru", "prefix", "--capacities", "1.0",
                       "--dram-share", "1.0", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["distinct_pages"] == 7  # keys[0] .. keys[6]: the longest request has 7 pages
    assert [row["variant"] for row in report["rows"]] == ["lru", "prefix"]
    for row in report["rows"]:
        assert 0 < row["hit_rate"] <= report["ceiling_hit_rate"]
        assert row["disk_bytes_read"] == 0  # dram alone
