"""Property: with an exact and an fp8 namespace over the same tokens, through puts, flushes,
evictions to disk and restarts, the exact namespace only ever returns the bytes put into it, and
the fp8 one returns its own page, either exact (from memory) or its fp8 round trip (from disk)."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import ml_dtypes
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from store_helpers import SPEC, make_keys, small_config

from tierd.errors import ResourceExhausted
from tierd.spec import PageSpec
from tierd.store import PageStore
from tierd.tiers.fp8_pages import Fp8PageCodec

EXACT = replace(SPEC, dtype="bfloat16")
FP8 = replace(EXACT, cold_format="fp8_e4m3_kivi")
BLOCKS = 6  # token blocks (one page each) the ops draw from

Op = tuple[str, int, int]
OPS = st.one_of(
    st.tuples(st.just("put"), st.integers(0, 1), st.integers(0, BLOCKS - 1)),
    st.tuples(st.just("get"), st.integers(0, 1), st.integers(0, BLOCKS - 1)),
    st.tuples(st.just("flush"), st.just(0), st.just(0)),
    st.tuples(st.just("restart"), st.just(0), st.just(0)),
)


def page_of(spec: PageSpec, block: int, version: int) -> bytes:
    rng = np.random.default_rng([block, version, int(bool(spec.cold_format))])
    return (rng.standard_normal(spec.page_shape) * (block + 1)).astype(ml_dtypes.bfloat16).tobytes()


def round_trip(page: bytes) -> bytes:
    codec = Fp8PageCodec(FP8)
    stored, out = bytearray(codec.stored_bytes), bytearray(FP8.page_bytes)
    codec.encode(memoryview(page), memoryview(stored))
    codec.decode(memoryview(bytes(stored)), memoryview(out))
    return bytes(out)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(OPS, min_size=1, max_size=14))
def test_pages_never_cross_and_fp8_pages_are_exact_or_their_round_trip(ops: list[Op]) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="td-fp8-"))
    # Few dram slots (4 for the first namespace, 2 for the second), so pages go to disk and come
    # back from it.
    cfg = small_config(tmp / "data", hbm_pages=4, dram_pages=8)
    cfg = cfg.with_changes(hbm=replace(cfg.hbm, region_share=0.5), dram=replace(cfg.dram, region_share=0.5))
    put: dict[tuple[int, int], bytes] = {}  # (namespace index, block) -> the page put first
    store = PageStore(cfg)
    try:
        store.open()
        namespaces = [store.register(EXACT), store.register(FP8)]
        for op, which, block in ops:
            if op == "restart":
                store.close()
                store = PageStore(cfg)
                store.open()
                namespaces = [store.register(EXACT), store.register(FP8)]
                continue
            if op == "flush":
                store.flush()
                continue
            ns = namespaces[which]
            key = make_keys(ns, 1, start_token=block * ns.spec.page_tokens)
            if op == "put":
                page = page_of(ns.spec, block, len(put))
                try:
                    stored = store.put(ns.ns_id, key, [page]).stored
                except ResourceExhausted:  # every slot in flight to disk: refused, nothing changed
                    stored = 0
                if stored:
                    put[(which, block)] = page
                continue
            got = [bytes(p) for p in store.get(ns.ns_id, key)]
            if not got:
                continue  # evicted for good (the disk is large: only before anything was put)
            assert (which, block) in put, "a page nobody put in this namespace was served"
            want = put[(which, block)]
            allowed = {want} if which == 0 else {want, round_trip(want)}
            assert got[0] in allowed
    finally:
        store.close()
        shutil.rmtree(tmp, ignore_errors=True)
