"""``import tierd_client`` loads only tierd's shared value modules: no lmdb, no store, no server."""

from __future__ import annotations

import json
import subprocess
import sys

# The modules of tierd a worker process may load (values, the wire contract, their conversions).
SHARED = {"tierd", "tierd.spec", "tierd.keys", "tierd.tier", "tierd.errors", "tierd.handles", "tierd.region_wire",
          "tierd.page_wire",
          "tierd.page_index", "tierd.protowire",
          "tierd.values", "tierd.buffers", "tierd.units", "tierd.wire", "tierd.v1",
          "tierd.v1.tierd_pb2", "tierd.v1.tierd_pb2_grpc", "tierd.config"}


def test_the_worker_library_loads_only_shared_value_modules() -> None:
    code = ("import sys, json, tierd_client, tierd_client.tierctl; "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('tierd', 'lmdb', 'xxhash', 'tierd_kernels', 'torch', 'cupy'))))")
    loaded = set(json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                           text=True, check=True).stdout))
    assert loaded <= SHARED, f"tierd_client pulled in {sorted(loaded - SHARED)}"
