"""Crash safety: a writer in write_through mode is SIGKILLed at random moments, over and over.

After each kill the store reopens on the same data dir, LMDB is consistent, every page the child
was told is durable reads back bit-exact, and no page listed by the index has wrong bytes.

The guarantee is "durable pages survive a crash while the disk has room", so the disk holds every
page the test ever writes (eviction is not loss), and each round is bounded by counts, not time:
the child writes at most ``PAGES_PER_ROUND`` pages, and the parent kills it right after a random
number of acknowledged batches, so on a machine of any speed the kill lands among real writes.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import lmdb
import numpy as np
import pytest
from store_helpers import SPEC, small_config

from tierd.keys import chain_keys
from tierd.spec import Namespace
from tierd.store import PageStore
from tierd.tier import Tier
from tierd.tiers.disk import ENV_DIR_NAME, MAX_DBS, PAGES_DB
from tierd.tiers.disk_parents import PARENT_BYTES, PARENTS_DB

BATCH_PAGES = 6
BATCHES_PER_ROUND = 40
PAGES_PER_ROUND = BATCH_PAGES * BATCHES_PER_ROUND
ROUNDS = 16
# Twice every page ever written: never above the disk's high watermark, so nothing is evicted.
DISK_PAGES = 2 * ROUNDS * PAGES_PER_ROUND
# After the chosen acknowledgement the kill waits up to this long: where inside the next batch it
# lands varies; correctness never depends on it.
MAX_KILL_JITTER_S = 0.005
CHILD = Path(__file__).with_name("crash_child.py")


def page_key(ns: Namespace, index: int) -> bytes:
    tokens = np.arange(index * SPEC.page_tokens, (index + 1) * SPEC.page_tokens, dtype=np.uint32)
    return chain_keys(ns.fingerprint, tokens, SPEC.page_tokens)[0]


def page_bytes_for(index: int) -> bytes:
    return np.random.default_rng(1000 + index).integers(0, 256, SPEC.page_bytes, dtype=np.uint8).tobytes()


def _indices(line: str) -> list[int]:
    return [int(x) for x in line.split()]


def _run_and_kill(data_dir: Path, start: int, device: str, rng: random.Random) -> set[int]:
    """Start the child, kill it after a random number (0..BATCHES_PER_ROUND-1) of acknowledged
    batches; every index it printed before dying was durable before the print."""
    paths = [str(CHILD.parent), str(CHILD.parent.parent), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    child = subprocess.Popen([sys.executable, str(CHILD), str(data_dir), str(start), str(PAGES_PER_ROUND),
                              device],
                             stdout=subprocess.PIPE, text=True, env=env)
    acked: set[int] = set()
    kill_after = rng.randrange(BATCHES_PER_ROUND)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready", "crash child did not start"
        for _ in range(kill_after):
            line = child.stdout.readline()
            assert line.strip() and line.strip() != "done", f"crash child stopped early: {line!r}"
            acked.update(_indices(line))
        time.sleep(rng.uniform(0.0, MAX_KILL_JITTER_S))
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
        for line in child.stdout.read().splitlines():
            if line.strip() and line.strip() != "done":
                acked.update(_indices(line))  # a line cut by the kill names pages durable before it
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return acked


def _check_after_crash(data_dir: Path, device: str, acked: set[int], written: range) -> None:
    """Every acknowledged page reads back bit-exact; every page of ``written`` the index lists
    (acknowledged or caught mid-write) is on disk with the right bytes."""
    with PageStore(small_config(data_dir, disk_pages=DISK_PAGES, device=device)) as store:
        ns = store.register(SPEC)
        for index in sorted(acked):
            got = store.get(ns.ns_id, [page_key(ns, index)])
            assert got and bytes(got[0]) == page_bytes_for(index), f"durable page {index} lost or wrong"
        for index in written:
            key = page_key(ns, index)
            found = store.lookup(ns.ns_id, [key])
            if found.num_hits:
                assert found.tiers == (Tier.DISK,)
                got = store.get(ns.ns_id, [key])
                assert not got or bytes(got[0]) == page_bytes_for(index), f"page {index} has wrong bytes"
        stats = store.stats()
        assert stats.checksum_failures == 0
        assert stats.tiers[Tier.DISK].evictions == 0, "the disk was sized to hold every page"
    _check_parent_records(data_dir)


def _check_parent_records(data_dir: Path) -> None:
    """Every ``parents`` record has its page and the right length (written in the page's
    transaction, so a kill never leaves one without the other)."""
    env = lmdb.open(str(data_dir / ENV_DIR_NAME), max_dbs=MAX_DBS)
    try:
        pages_db, parents_db = env.open_db(PAGES_DB), env.open_db(PARENTS_DB)
        with env.begin() as txn:
            for dkey, parent in txn.cursor(db=parents_db):
                assert len(parent) == PARENT_BYTES
                assert txn.get(dkey, db=pages_db) is not None, "a parent record without its page"
    finally:
        env.close()


@pytest.mark.slow
def test_sigkill_during_write_through_never_loses_durable_pages(tmp_path: Path, device: str) -> None:
    rng = random.Random(1234)
    data_dir = tmp_path / "data"
    acked_total: set[int] = set()
    for round_no in range(ROUNDS):
        start = round_no * PAGES_PER_ROUND
        acked = _run_and_kill(data_dir, start, device, rng)
        assert acked <= set(range(start, start + PAGES_PER_ROUND))
        acked_total |= acked
        # Each reopen checks this round's pages; the last one checks every round's again.
        last = round_no == ROUNDS - 1
        _check_after_crash(data_dir, device, acked_total if last else acked,
                           range(0 if last else start, start + PAGES_PER_ROUND))
    assert len(acked_total) >= BATCH_PAGES * ROUNDS, "the child acknowledged (almost) nothing: the test proved nothing"
