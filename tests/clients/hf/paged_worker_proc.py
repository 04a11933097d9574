"""A paged worker in a process of its own, for the test that kills it with SIGKILL.

argv: the daemon's address, the prompt length, the prompt seed. It begins one request over the
tiny model (``hf_paged_helpers``), prints one JSON line ``{"block_table": [...], "leases": n,
"tokens": n}`` once the prompt is prefilled and its full pages committed, then waits on stdin
holding its leases: the test kills it there.
"""

from __future__ import annotations

import json
import sys

import torch
from hf_paged_helpers import OPTIONS, prompt, tiny_models

from tierd_client import TierClient
from tierd_client.hf.paged import PagedWorker


def main() -> None:
    address, length, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    _, paged = tiny_models(torch.float32)
    with TierClient(address) as client:
        worker = PagedWorker(client, paged, OPTIONS)
        request = worker.begin(prompt(length, seed))
        print(json.dumps({"block_table": list(request.block_table), "leases": request.num_leases,
                          "tokens": len(request.tokens)}), flush=True)
        sys.stdin.read()  # never closed by the test: the process dies here, leases held


if __name__ == "__main__":
    main()
