"""Logging to stderr, journald-friendly.

Under systemd (``JOURNAL_STREAM`` set, stderr connected to the journal) each line starts with a
``<N>`` syslog priority, which journald turns into the entry's priority, and carries no
timestamp (the journal adds one). Elsewhere lines carry a timestamp and the level name.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping

from tierd.daemon.config import LogLevel

# sd-daemon(3) priorities by logging level.
_SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
                    logging.CRITICAL: 2}
_HANDLER_NAME = "tierd-stderr"


class JournalFormatter(logging.Formatter):
    """``<priority>logger: message`` with tracebacks folded into the same entry."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _SYSLOG_PRIORITY.get(record.levelno, 6)
        text = super().format(record).replace("\n", "\n    ")
        return f"<{priority}>{text}"


def stderr_is_journal(env: Mapping[str, str]) -> bool:
    """True when stderr is the journal stream systemd named in ``JOURNAL_STREAM`` (dev:inode)."""
    device, _, inode = env.get("JOURNAL_STREAM", "").partition(":")
    if not device or not inode:
        return False
    try:
        stats = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return f"{stats.st_dev}:{stats.st_ino}" == f"{device}:{inode}"


def configure_logging(level: LogLevel, env: Mapping[str, str] | None = None) -> None:
    """Send the root logger to stderr at ``level``; idempotent (one handler, replaced)."""
    env = os.environ if env is None else env
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    if stderr_is_journal(env):
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    set_log_level(level)


def set_log_level(level: LogLevel) -> None:
    logging.getLogger().setLevel(level.level)
    # grpc's own debug lines (one per poller wake-up) drown ours; they are for grpc developers.
    logging.getLogger("grpc").setLevel(max(level.level, logging.INFO))
