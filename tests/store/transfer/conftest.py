"""Fixtures of the transfer-engine tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from store_helpers import SPEC, small_config

from tierd.spec import Namespace
from tierd.tiers.disk import DiskTier


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[DiskTier]:
    """An open disk tier that knows namespace 1 (pages' checksums cover its fingerprint)."""
    tier = DiskTier(small_config(tmp_path))
    tier.open()
    tier.save_namespace(Namespace(ns_id=1, tenant="t", spec=SPEC, fingerprint=bytes(16)))
    yield tier
    tier.close()
