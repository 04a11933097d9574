"""Page keys: a BLAKE2b-128 hash chain over token ids, one key per full page.

::

    root  = BLAKE2b-128(b"tierd.v1" || namespace_fingerprint)
    key_0 = BLAKE2b-128(root || tokens[0:T] as little-endian uint32)
    key_i = BLAKE2b-128(key_{i-1} || tokens[i*T:(i+1)*T] as little-endian uint32)
    namespace_fingerprint = BLAKE2b-128(canonical JSON of the spec || tenant salt)

Keys are plain 16-byte ``bytes`` (cheap to hash and store by the million); ``check_keys`` is the
one place that validates them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np

from tierd.errors import InvalidArgument
from tierd.spec import PageSpec

KEY_BYTES = 16
ROOT_DOMAIN = b"tierd.v1"
MAX_TOKEN_ID = 2**32 - 1

PageKey = bytes


def _blake128(*parts: bytes) -> bytes:
    h = hashlib.blake2b(digest_size=KEY_BYTES)
    for part in parts:
        h.update(part)
    return h.digest()


def namespace_fingerprint(spec: PageSpec, tenant_salt: bytes = b"") -> bytes:
    """16 bytes naming (spec, tenant): ``BLAKE2b-128(canonical_json(spec) || tenant_salt)``."""
    return _blake128(spec.canonical_json(), tenant_salt)


def chain_root(fingerprint: bytes) -> bytes:
    """The chain's starting value for one namespace."""
    if len(fingerprint) != KEY_BYTES:
        raise InvalidArgument(f"namespace fingerprint must be {KEY_BYTES} bytes, got {len(fingerprint)}")
    return _blake128(ROOT_DOMAIN, fingerprint)


def _tokens_le_u32(tokens: Sequence[int] | np.ndarray) -> bytes:
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise InvalidArgument(f"token ids must be a flat sequence, got shape {arr.shape}")
    if arr.size and (arr.dtype.kind not in "iu" or int(arr.min()) < 0 or int(arr.max()) > MAX_TOKEN_ID):
        raise InvalidArgument(f"token ids must be integers in 0..{MAX_TOKEN_ID}")
    return arr.astype("<u4", copy=False).tobytes()


def chain_keys(fingerprint: bytes, tokens: Sequence[int] | np.ndarray, page_tokens: int,
               parent: bytes | None = None) -> list[PageKey]:
    """Keys of the full pages of ``tokens``; a trailing partial page gets none.

    ``parent`` continues a chain (the key of the page just before ``tokens[0]``).
    """
    if page_tokens <= 0:
        raise InvalidArgument(f"page_tokens must be positive, got {page_tokens}")
    data = _tokens_le_u32(tokens)
    page_len = page_tokens * 4
    prev = chain_root(fingerprint) if parent is None else check_key(parent)
    keys: list[PageKey] = []
    for start in range(0, len(data) - page_len + 1, page_len):
        prev = _blake128(prev, data[start:start + page_len])
        keys.append(prev)
    return keys


def check_key(key: object) -> PageKey:
    """``key`` as ``bytes`` if it is a 16-byte key, else ``InvalidArgument``."""
    if not isinstance(key, (bytes, bytearray, memoryview)):
        raise InvalidArgument(f"a page key must be {KEY_BYTES} bytes, got {type(key).__name__}")
    key = bytes(key)
    if len(key) != KEY_BYTES:
        raise InvalidArgument(f"a page key must be {KEY_BYTES} bytes, got {len(key)} bytes")
    return key


def check_parent(parent: object) -> PageKey | None:
    """``None``, or the 16-byte key of the page before a put's or commit's first page."""
    if parent is None:
        return None
    try:
        return check_key(parent)
    except InvalidArgument as exc:
        raise InvalidArgument(f"parent: {exc} (the key of the page just before keys[0], or none "
                              "when keys[0] starts a chain)") from None


def check_keys(keys: Iterable[object]) -> list[PageKey]:
    """Every key checked; the first bad one raises ``InvalidArgument`` naming its position."""
    out: list[PageKey] = []
    for i, key in enumerate(keys):
        if type(key) is bytes and len(key) == KEY_BYTES:
            out.append(key)
            continue
        try:
            out.append(check_key(key))
        except InvalidArgument as exc:
            raise InvalidArgument(f"keys[{i}]: {exc}") from None
    return out
