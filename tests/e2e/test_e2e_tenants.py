"""End to end: a real ``tierd`` with two tenants keeps them apart. Each tenant's token names it;
neither can see or touch the other's pages; calls without a valid token are refused; tierctl
takes the token from ``--token`` or ``$TIERD_TOKEN``."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from e2e_daemon import REPO_ROOT, SPEC, TierdProcess

from tierd_client import ClientOptions, PermissionDeniedError, Tier, TierClient, UnauthenticatedError

pytestmark = pytest.mark.slow

TOKEN_ALPHA = "alpha-e2e-token-5f2a9c1d7e3b"
TOKEN_BRAVO = "bravo-e2e-token-8d4e6a0b2c9f"
PAGE_BYTES = SPEC.page_bytes
ALPHA_HBM_PAGES, ALPHA_DRAM_PAGES = 64, 128


def tenants_toml(bravo_token_file: Path) -> str:
    digest = hashlib.sha256(TOKEN_ALPHA.encode()).hexdigest()
    return f"""
[tenants.alpha]
token_sha256 = "{digest}"
hbm = "{ALPHA_HBM_PAGES * PAGE_BYTES}"
dram = "{ALPHA_DRAM_PAGES * PAGE_BYTES}"
[tenants.bravo]
token_file = "{bravo_token_file}"
"""


def tierctl(daemon: TierdProcess, *args: str, token_env: str | None = None
            ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TIERD_TOKEN"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    if token_env is not None:
        env["TIERD_TOKEN"] = token_env
    return subprocess.run([sys.executable, "-m", "tierd_client.tierctl", "--socket",
                           str(daemon.socket_path), *args], capture_output=True, text=True,
                          timeout=120, env=env)


def test_two_tenants_are_isolated(start_tierd: Callable[..., TierdProcess], tmp_path: Path) -> None:
    bravo_file = tmp_path / "bravo.token"
    bravo_file.write_text(TOKEN_BRAVO + "\n")
    daemon = start_tierd(extra_config=tenants_toml(bravo_file))
    assert "tenants alpha, bravo" in daemon.log_tail()
    tokens = list(range(4 * SPEC.page_tokens))
    pages = np.random.default_rng(7).integers(0, 256, (4, PAGE_BYTES), dtype=np.uint8)
    with TierClient(daemon.socket_path, ClientOptions(token=TOKEN_ALPHA)) as alpha, \
            TierClient(daemon.socket_path, ClientOptions(token=TOKEN_BRAVO)) as bravo:
        a_ns = alpha.register(SPEC)
        assert a_ns.tenant == "alpha"
        # Each new namespace of alpha gets region_share (0.5) of what is left of its quota.
        assert a_ns.region(Tier.HBM).num_slots == ALPHA_HBM_PAGES // 2
        assert a_ns.region(Tier.DRAM).num_slots == ALPHA_DRAM_PAGES // 2
        a_next = alpha.register(replace(SPEC, model="e2e-model@rev2"))  # a second one fits too
        assert a_next.region(Tier.HBM).num_slots == ALPHA_HBM_PAGES // 4
        assert a_next.region(Tier.DRAM).num_slots == ALPHA_DRAM_PAGES // 4
        a_keys = a_ns.keys(tokens)
        assert alpha.put(a_ns, a_keys[:2], pages[:2]).num_stored == 2
        arena = alpha.arena(a_ns, Tier.HBM)
        with alpha.allocate(a_ns, 2) as lease:  # zero-copy path, under alpha's session
            arena.bytes()[list(lease.slots)] = pages[2:]
            assert lease.commit(a_keys[2:]).num_committed == 2

        b_ns = bravo.register(SPEC)  # the same spec: a namespace of bravo's own
        assert b_ns.tenant == "bravo" and b_ns.ns_id != a_ns.ns_id
        assert {r.name for r in b_ns.regions}.isdisjoint(r.name for r in a_ns.regions)
        b_keys = b_ns.keys(tokens)
        assert set(b_keys).isdisjoint(a_keys)  # same prompt, different key space
        assert bravo.lookup(b_ns, b_keys) == 0
        stolen = replace(b_ns, ns_id=a_ns.ns_id)  # bravo naming alpha's namespace id
        for call in (lambda: bravo.lookup(stolen, a_keys), lambda: bravo.get(stolen, a_keys),
                     lambda: bravo.delete(stolen, a_keys),
                     lambda: bravo.put(stolen, a_keys[:1], pages[:1]),
                     lambda: bravo.acquire(stolen, a_keys, target_tier=Tier.DRAM)):
            with pytest.raises(PermissionDeniedError, match="belongs to another tenant"):
                call()
        with pytest.raises(PermissionDeniedError, match="may not register namespaces of tenant"):
            bravo.register(SPEC, tenant="alpha")

        assert alpha.lookup(a_ns, a_keys) == 4
        got = alpha.get(a_ns, a_keys)
        assert all(g == p.tobytes() for g, p in zip(got, pages)), "a page came back different"

    with TierClient(daemon.socket_path) as anonymous:
        assert anonymous.health()
        with pytest.raises(UnauthenticatedError, match="carries no token"):
            anonymous.register(SPEC)
    with TierClient(daemon.socket_path, ClientOptions(token="wrong-token-0123456789")) as wrong:
        with pytest.raises(UnauthenticatedError, match="matches no tenant"):
            wrong.stats()

    refused = tierctl(daemon, "stats")
    assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr
    assert tierctl(daemon, "--token", TOKEN_ALPHA, "stats", "--json").returncode == 0
    assert tierctl(daemon, "stats", token_env=TOKEN_BRAVO).returncode == 0
    assert tierctl(daemon, "health").returncode == 0


NOBODY_UID = 65534
SYSTEM_PYTHON = Path("/usr/bin/python3")
SETPRIV = Path("/usr/bin/setpriv")
# Passed as source: the checkout may sit where another user cannot read (a 0700 temp dir).
HOSTILE_WORKER = REPO_ROOT / "tests/e2e/hostile_worker.py"


@pytest.mark.skipif(os.geteuid() != 0 or not SYSTEM_PYTHON.exists() or not SETPRIV.exists(),
                    reason="needs root (to run a worker as another user), /usr/bin/python3, setpriv")
def test_a_worker_of_another_tenant_in_the_daemons_group_cannot_map_its_regions(
        start_tierd: Callable[..., TierdProcess], tmp_path: Path) -> None:
    """The attack that once worked: a process in the daemon's OS group, holding only tenant
    alpha's token, opened bravo's /dev/shm region file, read its page and overwrote it."""
    bravo_file = tmp_path / "bravo.token"
    bravo_file.write_text(TOKEN_BRAVO + "\n")
    daemon = start_tierd(extra_config=tenants_toml(bravo_file))
    daemon.work_dir.chmod(0o750)  # the group may reach the sockets (mkdtemp made it 0700)
    tokens = list(range(SPEC.page_tokens))
    rng = np.random.default_rng(11)
    a_page, b_page = (rng.integers(0, 256, PAGE_BYTES, dtype=np.uint8).tobytes() for _ in range(2))
    with TierClient(daemon.socket_path, ClientOptions(token=TOKEN_ALPHA)) as alpha, \
            TierClient(daemon.socket_path, ClientOptions(token=TOKEN_BRAVO)) as bravo:
        a_ns, b_ns = alpha.register(SPEC), bravo.register(SPEC)
        alpha.put(a_ns, a_ns.keys(tokens), [a_page])
        bravo.put(b_ns, b_ns.keys(tokens), [b_page])
        with alpha.acquire(a_ns, a_ns.keys(tokens), target_tier=Tier.DRAM) as lease:
            a_slot = lease.slots[0]
            a_dram = a_ns.region(Tier.DRAM)
            assert a_dram is not None and a_dram.socket_path
            job = {"pid": daemon.proc.pid if daemon.proc else 0, "shm_prefix": daemon.shm_prefix,
                   "region_socket": a_dram.socket_path, "own_grant": a_dram.grant.hex(),
                   "page_bytes": PAGE_BYTES, "slot": a_slot}
            # setpriv, not subprocess's user=: that makes Python fork (no vfork) a process full
            # of gRPC threads, whose fork handlers can crash the child before it execs.
            run = subprocess.run([str(SETPRIV), f"--reuid={NOBODY_UID}", "--regid=0", "--groups=0",
                                  str(SYSTEM_PYTHON), "-c", HOSTILE_WORKER.read_text()],
                                 input=json.dumps(job), capture_output=True, text=True, timeout=120,
                                 cwd="/")
        assert run.returncode == 0, run.stderr
        seen = json.loads(run.stdout)
        assert seen["uid"] == NOBODY_UID and 0 in seen["groups"]
        assert seen["shm_files"] == [], "a region must have no name anyone can open"
        assert seen["proc"]["opened"] == 0, "the daemon's descriptors must not open through /proc"
        assert seen["forged_opened"] == 0 and seen["forged_statuses"] == [1]  # NOT_FOUND
        # Its own tenant's grant works for the same worker: the check is the grant, not the group.
        assert seen["own_status"] == 0 and bytes.fromhex(seen["own_page_hex"]) == a_page
        assert bravo.get(b_ns, b_ns.keys(tokens)) == [b_page], "bravo's page must be untouched"
        assert all(h.grant != a_dram.grant for h in b_ns.regions)
