"""The ``parents`` database of the disk tier: disk key -> the 16-byte key of the page's parent.

Only pages with a parent have a record. The writer puts and deletes a record in the same
transaction as its page, so a crash never leaves one without the other. A record read back that
is not exactly ``PARENT_BYTES`` long is ignored (logged and counted): the page is then a root.
"""

from __future__ import annotations

import logging

import lmdb

from tierd.keys import KEY_BYTES

log = logging.getLogger(__name__)

PARENTS_DB = b"parents"
PARENT_BYTES = KEY_BYTES


class ParentRecords:
    """Reads and writes of the ``parents`` database inside transactions the caller owns."""

    def __init__(self, db: lmdb._Database) -> None:
        self._db = db
        self.ignored = 0  # records read back with a bad length (never trusted)

    def write(self, txn: lmdb.Transaction, dkey: bytes, parent: bytes | None) -> None:
        """Record ``parent`` of ``dkey``, or remove a record when it has none (a rewrite)."""
        if parent is None:
            txn.delete(dkey, db=self._db)
        else:
            txn.put(dkey, parent, db=self._db)

    def delete(self, txn: lmdb.Transaction, dkey: bytes) -> None:
        txn.delete(dkey, db=self._db)

    def read(self, txn: lmdb.Transaction, dkey: bytes) -> bytes | None:
        """The parent key of ``dkey``; None when it has none or its record is malformed."""
        value = txn.get(dkey, db=self._db)
        if value is None:
            return None
        if len(value) != PARENT_BYTES:
            self.ignored += 1
            log.warning("disk tier: the parent record of disk key %s is %d bytes, not %d; "
                        "ignoring it (the page is a chain root)", dkey.hex(), len(value),
                        PARENT_BYTES)
            return None
        return bytes(value)
