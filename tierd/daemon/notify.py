"""sd_notify without libsystemd: datagrams to ``$NOTIFY_SOCKET`` (path or abstract ``@name``).

Outside systemd (no ``NOTIFY_SOCKET``) every call is a no-op returning ``False``. A failed send is
logged once and never raised: telling systemd is best effort and must not stop the daemon.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Mapping

log = logging.getLogger(__name__)

# systemd's WatchdogSec= arrives as WATCHDOG_USEC; pinging at half of it leaves a full period of slack.
WATCHDOG_FRACTION = 0.5
_USEC_PER_S = 1_000_000


def notify_address(env: Mapping[str, str]) -> str | bytes | None:
    """The ``sendto`` address of ``NOTIFY_SOCKET``: a path, or bytes with a leading NUL (abstract)."""
    raw = env.get("NOTIFY_SOCKET", "")
    if not raw:
        return None
    if raw.startswith("@"):
        return b"\0" + raw[1:].encode()
    if raw.startswith("/"):
        return raw
    log.warning("NOTIFY_SOCKET=%r is neither a path nor an @abstract name: not notifying", raw)
    return None


def watchdog_interval_s(env: Mapping[str, str], pid: int | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings, or ``None`` when systemd expects none from this process."""
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner and owner.isdigit() and int(owner) != (os.getpid() if pid is None else pid):
        return None
    return int(usec) / _USEC_PER_S * WATCHDOG_FRACTION


class SdNotifier:
    """Sends ``KEY=value`` lines to systemd. Thread-safe; ``close`` is idempotent."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self._address = notify_address(env)
        self._watchdog_interval_s = watchdog_interval_s(env)
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        return self._watchdog_interval_s if self.enabled else None

    def send(self, **fields: str | int) -> bool:
        """One datagram ``K1=v1\\nK2=v2``; ``True`` when it was sent."""
        if self._address is None:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(message, self._address)
            except OSError as exc:
                if not self._warned:
                    log.warning("cannot notify systemd at %r: %s", self._address, exc)
                    self._warned = True
                return False
        return True

    def ready(self, status: str) -> bool:
        return self.send(READY=1, STATUS=status, MAINPID=os.getpid())

    def status(self, text: str) -> bool:
        return self.send(STATUS=text)

    def watchdog(self) -> bool:
        return self.send(WATCHDOG=1)

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more start-up/stop time (systemd >= 236) while long work is under way."""
        return self.send(EXTEND_TIMEOUT_USEC=int(seconds * _USEC_PER_S))

    def stopping(self, status: str = "stopping") -> bool:
        return self.send(STOPPING=1, STATUS=status)

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
