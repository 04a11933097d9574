"""The page store: a bookkeeping manager, a transfer engine, arenas and a disk tier, composed.

``PageStore`` is the library API the daemon serves. Where things live:
``manager`` (index, decisions, the lock), ``plans`` (what moves), ``runner`` (plans to copies),
``transfer/`` (engines: cpu, fake device), ``media`` (arenas + engine by device), ``regions``,
``promotion``, ``eviction``, ``maintenance``, ``durability``.
"""

from tierd.store.page_store import PageStore
from tierd.store.types import CommitResult, IndexSnapshot, PeekedPage, PutResult, StoreStats

__all__ = ["CommitResult", "IndexSnapshot", "PageStore", "PeekedPage", "PutResult", "StoreStats"]
