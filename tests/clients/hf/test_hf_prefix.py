"""Saving a DynamicCache's pages into a real tierd daemon and restoring them: bit-exact logits,
across processes, from disk after a restart, and nothing across specs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

import numpy as np
import torch
from e2e.e2e_daemon import TierdProcess
from hf_models import (
    DTYPES,
    PAGE_TOKENS,
    REVISION,
    forward,
    prefix_copy,
    prompt_ids,
    require_dtype,
    tiny_model,
)

from tierd.tier import Tier
from tierd_client import ClientOptions, TierClient
from tierd_client.hf import (
    CacheMismatchError,
    restore_prefix,
    save_prefix,
    spec_for,
)

WORKER = Path(__file__).with_name("hf_worker.py")
PROMPT_TOKENS = 70          # 4 full pages of 16 tokens, then 6
RESTORABLE = 64             # the 4 full pages: at least one prompt token is left to compute
WORKER_TIMEOUT_S = 300


def _logits_after_restore(client: TierClient, model: torch.nn.Module, ids: torch.Tensor,
                          revision: str = REVISION) -> tuple[torch.Tensor, int, dict[Tier, int]]:
    """Restore ``ids``' prefix and run the rest of ``ids``: logits, tokens restored, tiers."""
    ns = client.register(spec_for(model, page_tokens=PAGE_TOKENS, revision=revision))
    cache, info = restore_prefix(client, ns, model, ids)
    logits, _ = forward(model, ids[:, info.tokens:], cache)
    return logits, info.tokens, info.pages_by_tier


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_restored_cache_gives_bit_identical_next_token_logits(daemon: TierdProcess, dtype: str) -> None:
    model = tiny_model(require_dtype(dtype))
    ids = prompt_ids(PROMPT_TOKENS, seed=1)
    _, original = forward(model, ids)
    with TierClient(daemon.socket_path) as client:
        ns = client.register(spec_for(model, page_tokens=PAGE_TOKENS, revision=REVISION))
        saved = save_prefix(client, ns, original, ids)
        assert (saved.pages_offered, saved.pages_stored) == (4, 4)
        before = client.local_path_stats().pages_read
        cache, info = restore_prefix(client, ns, model, ids)
        assert client.local_path_stats().pages_read - before == 4  # through the mapped region
    assert (info.tokens, info.pages, info.computed_tokens) == (RESTORABLE, 4, PROMPT_TOKENS - RESTORABLE)
    assert info.pages_by_tier == {Tier.DRAM: 4}
    for restored, kept in zip(cache.layers, prefix_copy(original, RESTORABLE).layers):
        assert restored.keys.dtype == DTYPES[dtype]
        assert torch.equal(restored.keys, kept.keys) and torch.equal(restored.values, kept.values)
    got, _ = forward(model, ids[:, RESTORABLE:], cache)
    want, _ = forward(model, ids[:, RESTORABLE:], prefix_copy(original, RESTORABLE))
    assert torch.equal(got, want)


def test_a_prompt_of_whole_pages_leaves_its_last_page_to_compute(daemon: TierdProcess) -> None:
    model = tiny_model()
    ids = prompt_ids(64, seed=2)  # exactly 4 pages, all saved
    _, original = forward(model, ids)
    with TierClient(daemon.socket_path) as client:
        ns = client.register(spec_for(model, page_tokens=PAGE_TOKENS, revision=REVISION))
        assert save_prefix(client, ns, original, ids).pages_stored == 4
        _, info = restore_prefix(client, ns, model, ids)
        assert (info.tokens, info.computed_tokens) == (48, 16)
        _, one = restore_prefix(client, ns, model, torch.cat([ids, torch.tensor([[7]])], dim=1))
        assert one.tokens == 64 and one.computed_tokens == 1
        _, none = restore_prefix(client, ns, model, ids[:, :PAGE_TOKENS])  # one page: nothing to keep
        assert none.tokens == 0 and none.pages_by_tier == {}


def test_batch_rows_restore_their_own_pages(daemon: TierdProcess) -> None:
    model = tiny_model()
    ids = torch.cat([prompt_ids(PROMPT_TOKENS, seed=3), prompt_ids(PROMPT_TOKENS, seed=4)])
    _, original = forward(model, ids)
    with TierClient(daemon.socket_path) as client:
        ns = client.register(spec_for(model, page_tokens=PAGE_TOKENS, revision=REVISION))
        assert save_prefix(client, ns, original, ids).pages_stored == 8
        cache, info = restore_prefix(client, ns, model, ids)
        assert info.tokens == RESTORABLE and info.pages_by_tier == {Tier.DRAM: 8}
        # Each row alone finds its own pages: the keys are per row.
        for row in range(2):
            _, alone = restore_prefix(client, ns, model, ids[row:row + 1])
            assert alone.tokens == RESTORABLE
    got, _ = forward(model, ids[:, RESTORABLE:], cache)
    want, _ = forward(model, ids[:, RESTORABLE:], prefix_copy(original, RESTORABLE))
    assert torch.equal(got, want)


def test_pages_saved_by_one_process_are_restored_by_another(daemon: TierdProcess, tmp_path: Path) -> None:
    model = tiny_model()
    mine, theirs = prompt_ids(PROMPT_TOKENS, seed=5), prompt_ids(PROMPT_TOKENS, seed=6)
    _, original = forward(model, mine)
    out_file = tmp_path / "worker.pt"
    with TierClient(daemon.socket_path) as client:
        ns = client.register(spec_for(model, page_tokens=PAGE_TOKENS, revision=REVISION))
        assert save_prefix(client, ns, original, mine).pages_stored == 4
        # The worker reads and writes over the byte path; this process uses the local path.
        proc = subprocess.run([sys.executable, str(WORKER), str(daemon.socket_path), "float32",
                               str(out_file), "5", "6", str(PROMPT_TOKENS)],
                              capture_output=True, text=True, timeout=WORKER_TIMEOUT_S)
        assert proc.returncode == 0, proc.stderr[-4000:]
        report = torch.load(out_file)
        logits, restored, tiers = _logits_after_restore(client, model, theirs)
    assert report["restored_tokens"] == RESTORABLE and report["pages_stored"] == 4
    want, _ = forward(model, mine[:, RESTORABLE:], prefix_copy(original, RESTORABLE))
    assert torch.equal(report["restored_logits"], want)
    assert restored == RESTORABLE and tiers == {Tier.DRAM: 4}
    assert torch.equal(logits, report["reference_logits"])


def _flood(client: TierClient, model: torch.nn.Module, pages: int) -> None:
    """Put ``pages`` pages of other prompts, more than the namespace's dram holds: the oldest
    pages are evicted to disk (write_back)."""
    ns = client.register(spec_for(model, page_tokens=PAGE_TOKENS, revision=REVISION))
    keys = ns.keys(np.arange(pages * PAGE_TOKENS) % 251 + 3)
    rng = np.random.default_rng(0)
    for start in range(0, pages, 64):
        chunk = keys[start:start + 64]
        client.put(ns, chunk, rng.standard_normal((len(chunk), *ns.spec.page_shape)).astype(np.float32))


def test_pages_evicted_to_disk_give_identical_logits_after_a_restart(daemon: TierdProcess) -> None:
    model = tiny_model()
    ids = prompt_ids(PROMPT_TOKENS, seed=7)
    _, original = forward(model, ids)
    want, _ = forward(model, ids[:, RESTORABLE:], prefix_copy(original, RESTORABLE))
    with TierClient(daemon.socket_path) as client:
        ns = client.register(spec_for(model, page_tokens=PAGE_TOKENS, revision=REVISION))
        save_prefix(client, ns, original, ids)
        _flood(client, model, pages=320)  # the namespace's dram holds 256 pages of 8 KiB
        keys = ns.keys(ids[0, :RESTORABLE].numpy())
        assert client.lookup_result(ns, keys).tiers == (Tier.DISK,) * 4  # evicted
        assert daemon.terminate() == 0, daemon.log_tail()
        daemon.start()
        assert client.lookup_result(ns, keys).tiers == (Tier.DISK,) * 4  # dram is empty now
        got, restored, tiers = _logits_after_restore(client, model, ids)
    assert restored == RESTORABLE and tiers == {Tier.DISK: 4}
    assert torch.equal(got, want)


def test_a_spec_mismatch_restores_nothing(daemon: TierdProcess) -> None:
    model = tiny_model()
    ids = prompt_ids(PROMPT_TOKENS, seed=8)
    _, original = forward(model, ids)
    with TierClient(daemon.socket_path) as client:
        ns = client.register(spec_for(model, page_tokens=PAGE_TOKENS, revision=REVISION))
        save_prefix(client, ns, original, ids)
        others = {"dtype": tiny_model(torch.bfloat16), "layers": tiny_model(layers=3)}
        for what, other in others.items():
            _, restored, _ = _logits_after_restore(client, other, ids)
            assert restored == 0, what
        _, restored, _ = _logits_after_restore(client, model, ids, revision="seed1")
        assert restored == 0, "revision"
        _, restored, _ = _logits_after_restore(client, model, ids)
        assert restored == RESTORABLE  # the same spec still finds them
        with pytest.raises(CacheMismatchError, match="3 layers"):
            save_prefix(client, ns, forward(others["layers"], ids)[1], ids)
        with pytest.raises(CacheMismatchError, match="the model has 3"):
            restore_prefix(client, ns, others["layers"], ids)
        with pytest.raises(CacheMismatchError, match="bfloat16"):
            save_prefix(client, ns, forward(others["dtype"], ids)[1], ids)


def test_the_byte_path_restores_the_same_cache(daemon: TierdProcess) -> None:
    model = tiny_model(torch.bfloat16)
    ids = prompt_ids(PROMPT_TOKENS, seed=9)
    _, original = forward(model, ids)
    with TierClient(daemon.socket_path, ClientOptions(local_data_path=False)) as client:
        ns = client.register(spec_for(model, page_tokens=PAGE_TOKENS, revision=REVISION))
        assert save_prefix(client, ns, original, ids).pages_stored == 4
        assert save_prefix(client, ns, original, ids).pages_offered == 0  # all cached: nothing sent
        assert save_prefix(client, ns, original, ids, first_page=0).pages_skipped == 4
        got, restored, _ = _logits_after_restore(client, model, ids)
        assert client.local_path_stats().pages_read == 0
    want, _ = forward(model, ids[:, RESTORABLE:], prefix_copy(original, RESTORABLE))
    assert restored == RESTORABLE and torch.equal(got, want)
