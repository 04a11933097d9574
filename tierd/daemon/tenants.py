"""The ``[tenants.NAME]`` tables of the daemon's config: each tenant's token and byte quotas.

::

    [tenants.team-a]
    token_sha256 = "<64 hex digits>"   # SHA-256 of the token; or:
    # token_file = "/etc/tierd/tokens/team-a"   (holds the plain token; read at start)
    hbm = "4GiB"                       # optional: hbm bytes all the tenant's namespaces share
    dram = "16GiB"                     # optional: dram bytes all the tenant's namespaces share

Each new namespace of a tenant with a quota gets ``region_share`` of what is left of it
(``tierd.store.regions``). A tenant name keeps to the limits of a Register (``tierd.spec``).

The config file itself never holds a plain token. With no tenant table the daemon is open (no
token asked); with one or more, every RPC must carry the token of one of them.
"""

from __future__ import annotations

import hashlib
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tierd.errors import InvalidArgument
from tierd.spec import check_tenant
from tierd.tier import Tier
from tierd.units import parse_size

TOKEN_SHA256_HEX_CHARS = 2 * hashlib.sha256().digest_size
# A token is a password: below this length a random one holds too few bits to resist guessing.
MIN_TOKEN_CHARS = 16
# Characters a token may hold: it travels as a gRPC metadata value after "Bearer ".
TOKEN_CHARS = frozenset(string.ascii_letters + string.digits + "-._~+/=")
QUOTA_KEYS = {"hbm": Tier.HBM, "dram": Tier.DRAM}
TOKEN_KEYS = ("token_sha256", "token_file")
PLAIN_TOKEN_KEY = "token"  # refused with a message saying what to write instead
_HOW_TO_HASH = "printf %s \"$TOKEN\" | sha256sum"


@dataclass(frozen=True)
class TenantConfig:
    """One tenant: its name, the SHA-256 digest (32 bytes) of its token, and its quotas (bytes)."""

    name: str
    token_sha256: bytes = field(repr=False)
    quotas: Mapping[Tier, int] = field(default_factory=dict)


def parse_tenants(value: object, source: str, problems: list[str]) -> dict[str, TenantConfig] | None:
    """The tenants of a ``tenants`` table, by name; each problem is appended as one line."""
    if not isinstance(value, dict):
        problems.append(f"{source}: tenants must be a table of [tenants.NAME] tables")
        return None
    tenants: dict[str, TenantConfig] = {}
    for name, table in value.items():
        where = f"{source}: tenants.{name}"
        before = len(problems)
        try:
            check_tenant(name, "a tenant name")
        except InvalidArgument as exc:
            problems.append(f"{where}: {exc}")
        if not isinstance(table, dict):
            problems.append(f"{where} must be a table like token_sha256 = \"<hex>\", hbm = \"1GiB\"")
            continue
        digest = _token_digest(table, where, problems)
        quotas = _quotas(table, where, problems)
        if digest is not None and len(problems) == before:
            tenants[name] = TenantConfig(name, digest, quotas)
    _check_unique_tokens(tenants, source, problems)
    return tenants


def _token_digest(table: Mapping[str, object], where: str, problems: list[str]) -> bytes | None:
    given = [key for key in TOKEN_KEYS if key in table]
    if PLAIN_TOKEN_KEY in table:
        problems.append(f"{where}.{PLAIN_TOKEN_KEY}: the config never holds a plain token: write "
                        f"token_sha256 = \"<hex>\" ({_HOW_TO_HASH}) or token_file = \"/path\"")
        return None
    if len(given) != 1:
        what = "both token_sha256 and token_file" if given else "no token"
        problems.append(f"{where}: has {what}: set exactly one of token_sha256 = \"<hex>\" "
                        f"(the SHA-256 of the token: {_HOW_TO_HASH}) or token_file = \"/path\"")
        return None
    try:
        if given[0] == "token_sha256":
            return _digest_from_hex(table["token_sha256"])
        return hashlib.sha256(read_token_file(table["token_file"]).encode()).digest()
    except ValueError as exc:
        problems.append(f"{where}.{given[0]}: {exc}")
        return None


def _digest_from_hex(value: object) -> bytes:
    text = value.strip().lower() if isinstance(value, str) else ""
    if len(text) != TOKEN_SHA256_HEX_CHARS or not all(c in string.hexdigits for c in text):
        shown = f"{len(text)} characters" if isinstance(value, str) else repr(value)
        raise ValueError(f"expected {TOKEN_SHA256_HEX_CHARS} hex digits (the SHA-256 of the "
                         f"token: {_HOW_TO_HASH}), got {shown}")
    return bytes.fromhex(text)


def read_token_file(value: object) -> str:
    """The token held by the file ``value`` names (surrounding whitespace stripped)."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected the path of a file holding the token, got {value!r}")
    path = Path(value.strip()).expanduser()
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not text: it must hold the token on one line") from None
    check_token(token, str(path))
    return token


def check_token(token: str, where: str) -> None:
    """``ValueError`` unless ``token`` can be sent as a bearer token and is long enough."""
    if not token:
        raise ValueError(f"{where} is empty: write the tenant's token in it")
    bad = sorted({c for c in token if c not in TOKEN_CHARS})
    if bad:
        raise ValueError(f"the token in {where} holds {len(bad)} kind(s) of character a token "
                         "may not (letters, digits and -._~+/= only, on one line)")
    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError(f"the token in {where} has {len(token)} characters; use at least "
                         f"{MIN_TOKEN_CHARS} random ones (e.g. `openssl rand -hex 32`)")


def _quotas(table: Mapping[str, object], where: str, problems: list[str]) -> dict[Tier, int]:
    quotas: dict[Tier, int] = {}
    for key, value in table.items():
        if key in TOKEN_KEYS or key == PLAIN_TOKEN_KEY:
            continue
        if key == "disk":
            problems.append(f"{where}.disk: per-tenant disk quotas are not supported (the disk "
                            "tier is shared by every namespace): remove the key")
        elif key not in QUOTA_KEYS:
            problems.append(f"{where}.{key}: unknown key; a tenant table takes token_sha256 or "
                            "token_file, and the quotas hbm and dram")
        else:
            try:
                size = parse_size(value)  # type: ignore[arg-type]
            except ValueError as exc:
                problems.append(f"{where}.{key}: {exc}")
                continue
            if size <= 0:
                problems.append(f"{where}.{key}: a quota must be above 0; omit it to share the "
                                "tier under region_share")
                continue
            quotas[QUOTA_KEYS[key]] = size
    return quotas


def _check_unique_tokens(tenants: Mapping[str, TenantConfig], source: str,
                         problems: list[str]) -> None:
    by_digest: dict[bytes, str] = {}
    for name, tenant in tenants.items():
        other = by_digest.setdefault(tenant.token_sha256, name)
        if other != name:
            problems.append(f"{source}: tenants.{other} and tenants.{name} have the same token: "
                            "a token names one tenant, give each its own")
