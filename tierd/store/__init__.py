"""The page store: a bookkeeping manager, a transfer engine, arenas and a disk tier, composed.

``PageStore`` is the library API the daemon serves. Where things live:
``manager`` (index, decisions, the lock; ``lookups`` and ``leasing`` run under it), ``plans``
(what moves), ``runner`` (plans to copies), ``transfer/`` (engines: cpu, fake device), ``media``
(arenas + engine by device), ``regions``, ``promotion``, ``eviction``, ``maintenance``,
``durability``, ``assembly`` (open and close).
"""

from tierd.store.page_store import PageStore
from tierd.store.types import CommitResult, IndexSnapshot, PeekedPage, PutResult, StoreStats

__all__ = ["CommitResult", "IndexSnapshot", "PageStore", "PeekedPage", "PutResult", "StoreStats"]
