"""[tenants.NAME] tables: tokens as SHA-256 digests or token files, quotas, and clear refusals."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tierd.daemon.config import check_config, load_config
from tierd.errors import ConfigError
from tierd.server.auth import token_digest
from tierd.tier import Tier

GiB = 1 << 30
TOKEN_A = "alpha-token-0123456789abcdef"
TOKEN_B = "bravo-token-0123456789abcdef"


def sha_hex(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def write(tmp_path: Path, text: str, name: str = "tierd.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_tokens_from_digest_and_file_become_tenants_with_quotas(tmp_path: Path) -> None:
    token_file = write(tmp_path, f"  {TOKEN_B}\n", "bravo.token")
    config = load_config(write(tmp_path, f"""
[tenants.alpha]
token_sha256 = "{sha_hex(TOKEN_A).upper()}"
hbm = "512MiB"
dram = "2GiB"
[tenants.bravo]
token_file = "{token_file}"
"""), env={})
    tokens = {t.tenant: t.token_sha256 for t in config.tenant_tokens}
    assert tokens == {"alpha": token_digest(TOKEN_A), "bravo": token_digest(TOKEN_B)}
    assert config.store.tenant_quotas == {"alpha": {Tier.HBM: GiB // 2, Tier.DRAM: 2 * GiB}}
    assert config.serving.tenant_tokens == config.tenant_tokens


def test_without_tenant_tables_the_daemon_is_open(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[dram]\ncapacity = "1GiB"\n'), env={})
    assert config.tenant_tokens == () and config.store.tenant_quotas == {}


def test_no_digest_or_token_shows_in_reprs(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, f'[tenants.alpha]\ntoken_sha256 = "{sha_hex(TOKEN_A)}"\n'),
                         env={})
    text = repr(config)
    assert "alpha" in text and sha_hex(TOKEN_A) not in text and TOKEN_A not in text
    assert repr(token_digest(TOKEN_A)) not in text


@pytest.mark.parametrize(("table", "fragment"), [
    ('token_sha256 = "abc123"', "expected 64 hex digits"),
    (f'token_sha256 = "{"zz" * 32}"', "expected 64 hex digits"),
    ("token_sha256 = 42", "expected 64 hex digits"),
    ('hbm = "1GiB"', "has no token"),
    (f'token_sha256 = "{"ab" * 32}"\ntoken_file = "/x"', "both token_sha256 and token_file"),
    ('token = "plain-secret-0123456789"', "never holds a plain token"),
    ('token_file = "/nonexistent/tierd/token"', "cannot read /nonexistent/tierd/token"),
    (f'token_sha256 = "{"ab" * 32}"\nhbm = "lots"', "tenants.t.hbm: cannot read size 'lots'"),
    (f'token_sha256 = "{"ab" * 32}"\ndram = 0', "a quota must be above 0"),
    (f'token_sha256 = "{"ab" * 32}"\ndisk = "1GiB"', "per-tenant disk quotas are not supported"),
    (f'token_sha256 = "{"ab" * 32}"\nhbm = "64GiB"', "tenants.t.hbm (64.0 GiB) exceeds hbm.capacity"),
])
def test_bad_tenant_tables_are_refused_with_a_reason(tmp_path: Path, table: str,
                                                      fragment: str) -> None:
    path = write(tmp_path, f"[tenants.t]\n{table}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert fragment in str(info.value)
    problems = check_config(path)
    assert len(problems) == 1 and fragment in problems[0], problems


@pytest.mark.parametrize(("content", "fragment"), [
    ("", "is empty"),
    ("short-token", "has 11 characters; use at least 16"),
    ("two words on one line here", "may not"),
])
def test_bad_token_files_are_refused_without_echoing_the_token(tmp_path: Path, content: str,
                                                               fragment: str) -> None:
    token_file = write(tmp_path, content, "t.token")
    problems = check_config(write(tmp_path, f'[tenants.t]\ntoken_file = "{token_file}"\n'))
    assert len(problems) == 1 and fragment in problems[0], problems
    assert not content or content not in problems[0]


@pytest.mark.parametrize(("name", "fragment"), [
    ("team\\u0007a", "U+0007 at index 4"),
    ("é" * 65, "is 130 bytes of UTF-8"),  # 65 characters, but more bytes than a Register allows
])
def test_tenant_names_keep_to_the_register_limits(tmp_path: Path, name: str, fragment: str) -> None:
    problems = check_config(write(tmp_path, f'[tenants."{name}"]\ntoken_sha256 = "{"ab" * 32}"\n'))
    assert len(problems) == 1 and fragment in problems[0], problems


def test_two_tenants_may_not_share_a_token(tmp_path: Path) -> None:
    token_file = write(tmp_path, TOKEN_A, "a.token")
    problems = check_config(write(tmp_path, f"""
[tenants.one]
token_sha256 = "{sha_hex(TOKEN_A)}"
[tenants.two]
token_file = "{token_file}"
"""))
    assert len(problems) == 1 and "tenants.one and tenants.two have the same token" in problems[0]


def test_check_config_reports_every_tenant_problem(tmp_path: Path) -> None:
    problems = check_config(write(tmp_path, """
[tenants.one]
token_sha256 = "nope"
[tenants.two]
gpu = "1GiB"
"""))
    assert any("tenants.one.token_sha256" in p for p in problems)
    assert any("tenants.two: has no token" in p for p in problems)
    assert any("tenants.two.gpu: unknown key" in p for p in problems)
