"""Namespace records of the disk tier's ``meta`` database: ``ns/`` + ns_id (4 bytes, big-endian)
-> canonical JSON of (ns_id, tenant, fingerprint, spec)."""

from __future__ import annotations

import json
from pathlib import Path

import lmdb

from tierd.errors import FailedPrecondition, InvalidArgument
from tierd.spec import Namespace, PageSpec

NAMESPACE_PREFIX = b"ns/"


def read_namespaces(env: lmdb.Environment, meta_db: lmdb._Database, path: Path) -> list[Namespace]:
    """Every namespace record, decoded (``FailedPrecondition`` for an unreadable one)."""
    records: list[tuple[bytes, bytes]] = []
    with env.begin(db=meta_db) as txn:
        cursor = txn.cursor()
        positioned = cursor.set_range(NAMESPACE_PREFIX)
        while positioned and cursor.key().startswith(NAMESPACE_PREFIX):
            records.append((cursor.key(), cursor.value()))
            positioned = cursor.next()
    return [decode_namespace(key, value, path) for key, value in records]


def namespace_key(ns_id: int) -> bytes:
    return NAMESPACE_PREFIX + ns_id.to_bytes(4, "big")


def encode_namespace(ns: Namespace) -> bytes:
    record = {"ns_id": ns.ns_id, "tenant": ns.tenant, "fingerprint": ns.fingerprint.hex(),
              "spec": json.loads(ns.spec.canonical_json())}
    return json.dumps(record, sort_keys=True, separators=(",", ":")).encode()


def decode_namespace(key: bytes, value: bytes, path: Path) -> Namespace:
    try:
        record = json.loads(value)
        ns = Namespace(ns_id=int(record["ns_id"]), tenant=str(record["tenant"]),
                       spec=PageSpec(**record["spec"]),
                       fingerprint=bytes.fromhex(record["fingerprint"]))
    except (ValueError, KeyError, TypeError, InvalidArgument) as exc:
        raise FailedPrecondition(f"namespace record {key!r} in {path} is unreadable ({exc}); "
                                 f"move the data dir away to start with an empty disk tier"
                                 ) from exc
    if namespace_key(ns.ns_id) != key:
        raise FailedPrecondition(f"namespace record {key!r} in {path} holds ns_id {ns.ns_id}; "
                                 f"move the data dir away to start with an empty disk tier")
    return ns
