"""``tierctl``: inspect and operate a running tierd.

::

    tierctl [--socket PATH] [--token TOKEN] stats [--json] [--watch SECONDS]
    tierctl [--socket PATH] health
    tierctl [--socket PATH] [--token TOKEN] flush [--timeout SECONDS]
    tierctl check-config FILE

A daemon with tenants wants a tenant's token on stats and flush: ``--token`` or ``$TIERD_TOKEN``.
Without ``--socket``: ``$TIERD_SOCKET``, else the system daemon's ``/run/tierd/tierd.sock`` if it
exists, else ``./var/tierd.sock`` (what ``make run`` serves in a checkout) if it exists.

Exit status: 0 on success (Ctrl-C ends ``stats --watch`` with 0), 1 when the daemon answered with
an error or the config has problems, 2 for usage errors (argparse), 3 when the daemon cannot be
reached or is not serving, 130 when Ctrl-C interrupted any other command (no traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TextIO

from tierd.tier import Tier
from tierd.units import format_size
from tierd_client.errors import TierdRpcError, UnavailableError
from tierd_client.options import DEFAULT_SOCKET_PATH, SOCKET_ENV, TOKEN_ENV, ClientOptions, RetryPolicy
from tierd_client.sync import TierClient
from tierd_client.types import DaemonStats

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_UNREACHABLE = 3
# 128 + SIGINT, what a shell reports for a command Ctrl-C ended.
EXIT_INTERRUPTED = 128 + signal.SIGINT
# What `make run` serves (systemd/tierd.dev.toml), relative to the checkout it runs in.
DEV_SOCKET_PATH = Path("var") / "tierd.sock"
# An operator's command should fail within about a second when the daemon is down, not retry long.
TIERCTL_RETRY = RetryPolicy(max_attempts=3, initial_backoff_s=0.1, max_backoff_s=0.5)
# ANSI: cursor home + clear screen, so --watch redraws in place.
_CLEAR_SCREEN = "\x1b[H\x1b[2J"

_TABLE_COLUMNS = ("tier", "capacity", "used", "used%", "pages", "hits", "misses", "hit%",
                  "evictions", "in", "out", "in GB/s", "out GB/s", "queue")
BYTES_PER_GB = 1e9


@dataclass(frozen=True)
class SocketChoice:
    """The daemon address tierctl uses and, for the "not reachable" hint, what it looked at."""

    address: str
    tried: tuple[str, ...]


def choose_socket(flag: str | None, env: Mapping[str, str], cwd: Path) -> SocketChoice:
    """``--socket``, else ``$TIERD_SOCKET``, else the first of the system socket and ``make run``'s
    ``var/tierd.sock`` (under ``cwd``) that exists; with neither, the system one."""
    if flag:
        return SocketChoice(flag, (f"--socket {flag}",))
    if env.get(SOCKET_ENV):
        return SocketChoice(env[SOCKET_ENV], (f"${SOCKET_ENV}={env[SOCKET_ENV]}",))
    candidates = (Path(DEFAULT_SOCKET_PATH), cwd / DEV_SOCKET_PATH)
    tried = [f"${SOCKET_ENV} (unset)"]
    for path in candidates:
        if path.exists():
            return SocketChoice(str(path), (*tried, str(path)))
        tried.append(f"{path} (no such file)")
    return SocketChoice(str(candidates[0]), tuple(tried))


def unreachable_hint(choice: SocketChoice) -> str:
    """What to do when no daemon answers: where tierctl looked and how to start one."""
    return (f"  looked at: {', '.join(choice.tried)}\n"
            f"  start one: `make run` in a tierd checkout (serves ./{DEV_SOCKET_PATH}; run tierctl "
            f"there), or `sudo systemctl start tierd` (serves {DEFAULT_SOCKET_PATH}); or name the "
            "daemon with --socket PATH or $TIERD_SOCKET\n")


class _StopOnInterrupt:
    """While active, the first SIGINT only sets ``stop`` (the loop ends after the call in flight);
    a second one raises KeyboardInterrupt, for a call that hangs."""

    def __init__(self) -> None:
        self.stop = threading.Event()

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.stop.is_set():
            raise KeyboardInterrupt
        self.stop.set()

    @contextmanager
    def active(self) -> Iterator[threading.Event]:
        # Signals reach only the main thread; an ignored SIGINT (started with `&` by a script)
        # stays ignored.
        if (threading.current_thread() is not threading.main_thread()
                or signal.getsignal(signal.SIGINT) == signal.SIG_IGN):
            yield self.stop
            return
        previous = signal.signal(signal.SIGINT, self)
        try:
            yield self.stop
        finally:
            if previous is not None:  # None: a handler set outside Python, cannot be put back
                signal.signal(signal.SIGINT, previous)


def _percent(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}" if whole else "-"


def _rate(now_bytes: int, before_bytes: int | None, interval_s: float) -> str:
    """GB/s between two samples; "-" without an earlier sample of the same daemon."""
    if before_bytes is None or interval_s <= 0 or now_bytes < before_bytes:
        return "-"
    return f"{(now_bytes - before_bytes) / interval_s / BYTES_PER_GB:.2f}"


def format_stats(stats: DaemonStats, previous: DaemonStats | None = None) -> str:
    """A table with one row per tier, then the daemon-wide counters. With ``previous`` (an earlier
    sample, as ``--watch`` keeps) the GB/s columns show the rates in and out of each tier since."""
    rows = [list(_TABLE_COLUMNS)]
    interval_s = stats.uptime_s - previous.uptime_s if previous is not None else 0.0
    for tier in Tier:
        s = stats.tiers.get(tier)
        if s is None:
            continue
        before = previous.tiers.get(tier) if previous is not None else None
        rows.append([tier.label, format_size(s.capacity_bytes), format_size(s.used_bytes),
                     _percent(s.used_bytes, s.capacity_bytes), str(s.pages), str(s.hits),
                     str(s.misses), _percent(s.hits, s.hits + s.misses), str(s.evictions),
                     format_size(s.bytes_in), format_size(s.bytes_out),
                     _rate(s.bytes_in, before.bytes_in if before else None, interval_s),
                     _rate(s.bytes_out, before.bytes_out if before else None, interval_s),
                     str(s.queue_depth)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(_TABLE_COLUMNS))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths))) for row in rows]
    lines.append("")
    lines.append(f"namespaces {stats.namespaces}   leases {stats.leases}   sessions {stats.sessions}"
                 f"   checksum failures {stats.checksum_failures}"
                 f"   disk writes refused {stats.disk_writes_refused}"
                 f"   disk write failures {stats.disk_write_failures}")
    lines.append(f"write policy {stats.write_policy}   device {stats.device or '?'}   "
                 f"uptime {stats.uptime_s:.0f} s   rpcs in flight {stats.rpcs_in_flight}   "
                 f"rejected {stats.rpcs_rejected}   version {stats.version or '?'}")
    lines.append(f"eviction policy {stats.eviction_policy or '?'}   evictions with cached children "
                 f"{stats.evictions_with_children}")
    dram = stats.tiers.get(Tier.DRAM)
    if dram is not None and dram.pinned_bytes:
        lines.append(f"dram page-locked for {stats.device or 'the GPU'} "
                     f"{format_size(dram.pinned_bytes)} ({dram.pinned_bytes} bytes)")
    if stats.disk_write_error:
        lines.append(f"disk writes are failing: {stats.disk_write_error}")
    disk = stats.tiers.get(Tier.DISK)
    if disk is not None and disk.quantized_pages:
        lines.append(f"disk pages stored as fp8 {disk.quantized_pages}   bytes saved "
                     f"{format_size(disk.quantized_bytes_saved)}")
    remote = stats.remote
    if remote is not None:
        state = "available" if remote.available else "unavailable (backing off)"
        lines.append(f"remote {remote.backend} {state}   errors {remote.errors}   checksum failures "
                     f"{remote.checksum_failures}   pages written {remote.pages_written}   "
                     f"dropped {remote.dropped}")
    return "\n".join(lines)


def _cmd_stats(client: TierClient, args: argparse.Namespace, out: TextIO) -> int:
    def show(previous: DaemonStats | None) -> DaemonStats:
        stats = client.stats()
        text = json.dumps(stats.to_json_dict(), sort_keys=True) if args.json else format_stats(stats, previous)
        if args.watch is not None and out.isatty():
            out.write(_CLEAR_SCREEN)
        out.write(text + "\n")
        out.flush()
        return stats

    if args.watch is None:
        show(None)
        return EXIT_OK
    # Ctrl-C is how a watch ends: a handler instead of KeyboardInterrupt, which could land inside
    # a call on the client's loop and print a traceback.
    with _StopOnInterrupt().active() as stop:
        previous = show(None)
        while not stop.wait(args.watch):
            previous = show(previous)
    return EXIT_OK


def _cmd_health(client: TierClient, args: argparse.Namespace, out: TextIO) -> int:
    if client.health(timeout_s=args.timeout):
        out.write(f"tierd at {client.target}: SERVING\n")
        return EXIT_OK
    sys.stderr.write(f"tierd at {client.target} answers but is NOT SERVING (starting or "
                     "shutting down)\n")
    return EXIT_UNREACHABLE


def _cmd_flush(client: TierClient, args: argparse.Namespace, out: TextIO) -> int:
    flushed = client.flush(timeout_s=args.timeout)
    out.write(f"flushed {flushed} dirty pages to disk\n")
    return EXIT_OK


def _cmd_check_config(args: argparse.Namespace, out: TextIO) -> int:
    from tierd.daemon import check_config  # the daemon's own rules, imported on use only

    problems = check_config(args.file)
    for problem in problems:
        out.write(problem + "\n")
    if problems:
        return EXIT_ERROR
    out.write(f"{args.file}: OK\n")
    return EXIT_OK


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tierctl", description="Inspect and operate tierd.")
    parser.add_argument("--socket", default=None,
                        help=f"daemon socket path or host:port (default: ${SOCKET_ENV}, else "
                             f"{DEFAULT_SOCKET_PATH} if it exists, else ./{DEV_SOCKET_PATH} if it "
                             "exists, as `make run` serves it)")
    parser.add_argument("--tls-ca", type=Path, metavar="PEM", default=None,
                        help="CA of the daemon's certificate, for a TLS TCP address")
    parser.add_argument("--tls-cert", type=Path, metavar="PEM", default=None,
                        help="client certificate (mTLS); with --tls-key")
    parser.add_argument("--tls-key", type=Path, metavar="PEM", default=None)
    parser.add_argument("--token", default=None, metavar="TOKEN",
                        help=f"tenant token, for a daemon with tenants (default ${TOKEN_ENV}, "
                             "which other users cannot read in `ps` as they can a flag)")
    sub = parser.add_subparsers(dest="command", required=True)
    stats = sub.add_parser("stats", help="per-tier usage and counters")
    stats.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    stats.add_argument("--watch", type=_positive_float, metavar="SECONDS", default=None,
                       help="refresh every SECONDS until Ctrl-C (exit 0)")
    health = sub.add_parser("health", help="exit 0 when the daemon is serving")
    health.add_argument("--timeout", type=_positive_float, default=5.0, metavar="SECONDS")
    flush = sub.add_parser("flush", help="write every dirty page to disk")
    flush.add_argument("--timeout", type=_positive_float, default=None, metavar="SECONDS",
                       help="give up after SECONDS (default: the daemon's flush_timeout_s)")
    check = sub.add_parser("check-config", help="report every problem of a tierd.toml")
    check.add_argument("file", metavar="FILE")
    return parser


_CLIENT_COMMANDS: dict[str, Callable[[TierClient, argparse.Namespace, TextIO], int]] = {
    "stats": _cmd_stats, "health": _cmd_health, "flush": _cmd_flush,
}


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run one tierctl command; returns the exit status (the console script exits with it)."""
    args = build_parser().parse_args(argv)
    out = out or sys.stdout
    try:
        if args.command == "check-config":
            return _cmd_check_config(args, out)
        return _run_client_command(args, out)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _run_client_command(args: argparse.Namespace, out: TextIO) -> int:
    choice = choose_socket(args.socket, os.environ, Path.cwd())
    try:
        options = ClientOptions(retry=TIERCTL_RETRY, client_name="tierctl", tls_ca=args.tls_ca,
                                tls_cert=args.tls_cert, tls_key=args.tls_key, token=args.token)
        with TierClient(choice.address, options) as client:
            return _CLIENT_COMMANDS[args.command](client, args, out)
    except UnavailableError as exc:
        sys.stderr.write(f"tierctl {args.command}: cannot reach tierd: {exc.details}\n"
                         + unreachable_hint(choice))
        return EXIT_UNREACHABLE
    except TierdRpcError as exc:
        sys.stderr.write(f"tierctl {args.command}: {exc}\n")
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
