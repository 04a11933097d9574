"""Key chain: the shipped test vectors, recomputed independently with hashlib, pin the algorithm."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tierd.errors import InvalidArgument
from tierd.keys import chain_keys, check_keys, namespace_fingerprint
from tierd.spec import PageSpec

VECTORS = json.loads((Path(__file__).parent / "vectors" / "keys_v1.json").read_text())["cases"]


def _independent_keys(spec_fields: dict, salt: bytes, tokens: list[int]) -> tuple[bytes, list[bytes]]:
    """The DESIGN.md algorithm written out with hashlib and struct only."""
    canonical = json.dumps(spec_fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    fingerprint = hashlib.blake2b(canonical + salt, digest_size=16).digest()
    prev = hashlib.blake2b(b"tierd.v1" + fingerprint, digest_size=16).digest()
    page_tokens = spec_fields["page_tokens"]
    keys = []
    for start in range(0, len(tokens) - page_tokens + 1, page_tokens):
        chunk = struct.pack(f"<{page_tokens}I", *tokens[start:start + page_tokens])
        prev = hashlib.blake2b(prev + chunk, digest_size=16).digest()
        keys.append(prev)
    return fingerprint, keys


@pytest.mark.parametrize("case", VECTORS, ids=lambda c: f"{c['spec']['model']}-{len(c['tokens'])}")
def test_vectors_match_independent_hashlib(case: dict) -> None:
    fingerprint, keys = _independent_keys(case["spec"], case["tenant_salt_utf8"].encode(), case["tokens"])
    assert fingerprint.hex() == case["fingerprint"]
    assert [k.hex() for k in keys] == case["keys"]


@pytest.mark.parametrize("case", VECTORS, ids=lambda c: f"{c['spec']['model']}-{len(c['tokens'])}")
def test_vectors_match_implementation(case: dict) -> None:
    spec = PageSpec(**case["spec"])
    fingerprint = namespace_fingerprint(spec, case["tenant_salt_utf8"].encode())
    assert fingerprint.hex() == case["fingerprint"]
    keys = chain_keys(fingerprint, np.array(case["tokens"], dtype=np.uint64), spec.page_tokens)
    assert [k.hex() for k in keys] == case["keys"]


def test_vectors_cover_partial_pages_and_extreme_token_ids() -> None:
    assert any(len(c["tokens"]) % c["spec"]["page_tokens"] for c in VECTORS)
    assert any(2**32 - 1 in c["tokens"] for c in VECTORS)
    assert any(not c["keys"] for c in VECTORS)


@given(st.lists(st.integers(0, 2**32 - 1), max_size=80), st.integers(1, 16), st.integers(0, 80))
def test_chain_is_prefix_stable_and_continuable(tokens: list[int], page_tokens: int, cut: int) -> None:
    spec = PageSpec("m@r", "float16", 1, 1, 8, page_tokens)
    fp = namespace_fingerprint(spec)
    keys = chain_keys(fp, tokens, page_tokens)
    assert len(keys) == len(tokens) // page_tokens
    # A prefix of the tokens gives a prefix of the keys; continuing from a parent gives the rest.
    cut_pages = min(cut, len(tokens)) // page_tokens
    head = chain_keys(fp, tokens[:cut_pages * page_tokens], page_tokens)
    assert head == keys[:cut_pages]
    parent = head[-1] if head else None
    tail = chain_keys(fp, tokens[cut_pages * page_tokens:], page_tokens, parent=parent)
    assert head + tail == keys


def test_namespaces_and_revisions_never_share_keys() -> None:
    tokens = list(range(64))
    a = PageSpec("m@rev1", "float16", 2, 2, 64, 16)
    b = PageSpec("m@rev2", "float16", 2, 2, 64, 16)
    ka = chain_keys(namespace_fingerprint(a), tokens, 16)
    kb = chain_keys(namespace_fingerprint(b), tokens, 16)
    kt = chain_keys(namespace_fingerprint(a, b"other-tenant"), tokens, 16)
    assert not set(ka) & set(kb) and not set(ka) & set(kt)


@pytest.mark.parametrize("bad", [b"short", b"x" * 17, "a" * 16, 12345, None])
def test_check_keys_rejects_wrong_keys_with_position(bad: object) -> None:
    with pytest.raises(InvalidArgument, match=r"keys\[1\]"):
        check_keys([b"k" * 16, bad])


@pytest.mark.parametrize("tokens", [[-1], [2**32], [[1, 2]], [1.5]])
def test_bad_token_ids_are_rejected(tokens: list) -> None:
    with pytest.raises(InvalidArgument):
        chain_keys(namespace_fingerprint(PageSpec("m@r", "float16", 1, 1, 8, 1)), tokens, 1)
