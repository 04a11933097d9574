"""A worker that reads pages as fast as it can while another process changes them (the lease-free
read test). Run as ``python local_reader.py SOCKET SEED NUM_KEYS``; prints ``ready`` once it has
registered, reads until its stdin closes, then prints one JSON line: every (key, version) it read,
and how many pages were torn or were another key's. Each line the test writes to its stdin (after
each change it made) is answered ``ack`` once CHECK_EVERY_READS more reads have been done, so the
reads overlap the changes by count, whatever the machine's speed.

Page ``(key index k, version v)`` is the 8-byte word ``k << 32 | v`` repeated (``page_words``).
"""

from __future__ import annotations

import json
import random
import select
import sys

import numpy as np

from tierd_client import PageSpec, TierClient, TierdRpcError
from tierd_client.types import NamespaceHandle

# 1 MiB pages: a copy takes long enough for the daemon to change the slot under it often.
SPEC = PageSpec(model="local@test", dtype="float16", num_layers=16, num_kv_heads=8, head_dim=128,
                page_tokens=16)

# Look at stdin (has the test finished?) and refresh the namespace (handles after a daemon
# restart) every this many reads.
CHECK_EVERY_READS = 64


def page_words(key_index: int, version: int, page_bytes: int) -> np.ndarray:
    return np.full(page_bytes // 8, (key_index << 32) | version, dtype="<u8")


def reader_keys(ns: NamespaceHandle, num_keys: int) -> list[bytes]:
    """One single-page chain per key index, so any key may be present without the others."""
    tokens = SPEC.page_tokens
    return [ns.keys(list(range(i * 1000, i * 1000 + tokens)))[0] for i in range(num_keys)]


def main() -> None:
    socket_path, seed, num_keys = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)
    seen: set[tuple[int, int]] = set()
    torn = foreign = errors = reads = 0
    with TierClient(socket_path) as client:
        ns: NamespaceHandle = client.register(SPEC)
        keys = reader_keys(ns, num_keys)
        out = bytearray(ns.page_bytes)
        words = np.frombuffer(out, dtype="<u8")
        print("ready", flush=True)
        owed = 0  # acks due at the next check
        while True:
            reads += 1
            if reads % CHECK_EVERY_READS == 0:
                for _ in range(owed):
                    print("ack", flush=True)
                owed = 0
                if select.select([sys.stdin], [], [], 0)[0]:
                    if not sys.stdin.readline():
                        break
                    owed += 1
                try:
                    ns = client.register(SPEC)
                except TierdRpcError:
                    errors += 1
            index = rng.randrange(num_keys)
            try:
                got = client.get_into(ns, [keys[index]], out)
            except TierdRpcError:
                errors += 1  # the daemon is restarting: the client retried and gave up
                continue
            if not got:
                continue
            word = int(words[0])
            if not (words == word).all():
                torn += 1
            elif word >> 32 != index:
                foreign += 1
            else:
                seen.add((index, word & 0xFFFFFFFF))
        stats = client.local_path_stats()
    print(json.dumps({"seen": sorted(seen), "torn": torn, "foreign": foreign, "errors": errors,
                      "reads": reads, "local_reads": stats.pages_read,
                      "refused": stats.copies_refused}), flush=True)


if __name__ == "__main__":
    main()
