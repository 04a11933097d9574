"""A stock vLLM (0.32, CPU) reusing prompt prefixes through tierd: each engine in a new process.

Engine A computes and saves; engine B, a new process with the same prompts, reports the full
blocks as external cached tokens and answers exactly (tokens and logprobs) what an engine without
any connector answers. A control run that overwrites the loaded blocks with noise answers
otherwise (the loaded KV is used); after a tierd restart the pages come from disk; with tierd
stopped B answers correctly with no hit. fp32 and bf16, chunked prefill, and vLLM's multiprocess
layout (the OpenAI server's).
"""

from __future__ import annotations

from typing import Any

from vllm_harness import BLOCK_SIZE, Engines, EngineTierd, expected_cached


def outputs(run: dict[str, Any]) -> list[tuple[list[int], list[float]]]:
    return [(out["tokens"], out["logprobs"]) for out in run["outputs"]]


def cached(run: dict[str, Any]) -> list[int]:
    return [out["cached"] for out in run["outputs"]]


def saved_then_reused(engines: Engines, tierd: EngineTierd, dtype: str) -> tuple[dict[str, Any], ...]:
    """Runs without a connector, A and B. fp32's A prefills in chunks of 64 tokens, so its blocks
    are saved over several steps, as each chunk completes them."""
    baseline = engines.run(f"baseline-{dtype}", dtype=dtype, socket=None)
    chunk = 64 if dtype == "float32" else 1024
    first = engines.run(f"a-{dtype}", dtype=dtype, socket=tierd.socket_path, max_num_batched_tokens=chunk)
    second = engines.run(f"b-{dtype}", dtype=dtype, socket=tierd.socket_path)
    return baseline, first, second


def check_reuse(baseline: dict[str, Any], first: dict[str, Any], second: dict[str, Any]) -> None:
    full_blocks = sum(n // BLOCK_SIZE for n in (200, 150, 96, 230))
    assert first["connector"]["blocks_saved"] == full_blocks
    assert cached(first) == [0, 0, 0, 0]
    assert cached(second) == expected_cached()
    assert second["connector"]["blocks_saved"] == 1  # the 96-token prompt's last full block
    assert second["connector"]["blocks_loaded"] == sum(expected_cached()) // BLOCK_SIZE
    assert second["connector"]["failures"] == 0
    assert [tokens for tokens, _ in outputs(first)] == [tokens for tokens, _ in outputs(baseline)]
    assert outputs(second) == outputs(baseline)
    assert all(out["finish"] == "length" for out in second["outputs"])


def test_fp32_engine_b_reuses_engine_a_blocks_exactly(engines: Engines, tierd: EngineTierd) -> None:
    check_reuse(*saved_then_reused(engines, tierd, "float32"))


def test_loaded_blocks_are_used_noise_changes_every_answer(engines: Engines, tierd: EngineTierd) -> None:
    baseline, _first, _second = saved_then_reused(engines, tierd, "float32")
    noisy = engines.run("corrupt-float32", dtype="float32", socket=tierd.socket_path, corrupt=True)
    assert cached(noisy) == expected_cached()
    for (_, logprobs), (_, base_logprobs) in zip(outputs(noisy), outputs(baseline)):
        assert logprobs != base_logprobs
    assert [t for t, _ in outputs(noisy)] != [t for t, _ in outputs(baseline)]


def test_chunked_prefill_reuses_blocks_exactly(engines: Engines, tierd: EngineTierd) -> None:
    # One request at a time in both runs: B's shorter prefills change which requests share a
    # step, and vLLM's CPU kernels round a batch of other rows differently (last-bit logprobs).
    saved_then_reused(engines, tierd, "float32")
    chunks = {"max_num_batched_tokens": 64, "max_num_seqs": 1}
    baseline = engines.run("baseline-chunked", dtype="float32", socket=None, **chunks)
    chunked = engines.run("b-chunked", dtype="float32", socket=tierd.socket_path, **chunks)
    assert cached(chunked) == expected_cached()
    assert outputs(chunked) == outputs(baseline)


def test_after_a_tierd_restart_pages_come_from_disk(engines: Engines, tierd: EngineTierd) -> None:
    baseline, _first, _second = saved_then_reused(engines, tierd, "float32")
    tierd.stop()  # SIGTERM: dirty pages are flushed to disk on the way out
    tierd.start()
    again = engines.run("b-after-restart", dtype="float32", socket=tierd.socket_path)
    assert cached(again) == expected_cached()
    assert again["connector"]["blocks_loaded"] == sum(expected_cached()) // BLOCK_SIZE
    assert outputs(again) == outputs(baseline)


def test_with_tierd_stopped_engine_b_answers_without_hits(engines: Engines, tierd: EngineTierd) -> None:
    baseline, _first, _second = saved_then_reused(engines, tierd, "float32")
    tierd.stop()
    try:
        alone = engines.run("b-tierd-stopped", dtype="float32", socket=tierd.socket_path)
    finally:
        tierd.start()
    assert cached(alone) == [0, 0, 0, 0]
    assert alone["connector"]["blocks_loaded"] == 0
    assert "vLLM recomputes, tierd is tried again" in alone["log"]  # the link saw tierd gone
    assert outputs(alone) == outputs(baseline)


def test_bf16_engine_b_reuses_engine_a_blocks_exactly(engines: Engines, tierd: EngineTierd) -> None:
    check_reuse(*saved_then_reused(engines, tierd, "bfloat16"))


def test_multiprocess_engines_share_blocks_exactly(engines: Engines, tierd: EngineTierd) -> None:
    # The OpenAI server's layout: the scheduler-side connector in the engine core process, the
    # worker-side one in the worker; fresh prompts (seed 1), so A finds nothing and saves them.
    # One request at a time: the engine core schedules requests as they arrive over its socket, so
    # which ones share a step depends on timing, and vLLM's CPU kernels round a row differently
    # with other rows beside it (last-bit logprobs; CI saw 5e-7).
    alone = {"multiprocessing": True, "max_num_seqs": 1}
    first = engines.run("a-mp", dtype="float32", socket=tierd.socket_path, seed=1, **alone)
    second = engines.run("b-mp", dtype="float32", socket=tierd.socket_path, seed=1, **alone)
    assert cached(first) == [0, 0, 0, 0]
    assert cached(second) == expected_cached()
    assert outputs(second) == outputs(first)
    assert "vLLM recomputes, tierd is tried again" not in first["log"] + second["log"]  # no trouble
