"""``tierd`` / ``python -m tierd``: flags, config, start-up checks, then the daemon.

Exit status: 0 after a clean stop, 1 when serving or flushing failed, 2 for bad flags (argparse),
78 (EX_CONFIG) when the config is invalid, this machine cannot honour it, or the data dir is
refused (another tierd holds it, ``data.mdb`` is damaged, it is not tierd's); the reason is one
line on stderr and nothing else is, so systemd's ``RestartPreventExitStatus=78`` stops a loop.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import tierd
from tierd.daemon.checks import EXIT_CONFIG, ResolvedDevice, startup_problems
from tierd.daemon.config import DaemonConfig, all_keys, load_config
from tierd.daemon.logs import configure_logging
from tierd.daemon.machine import MachineFacts
from tierd.errors import ConfigError

log = logging.getLogger("tierd.daemon")

# Files and sockets the daemon creates are for its group too (clients in the tierd group).
DAEMON_UMASK = 0o007
# flag -> config key; the flag's value is checked with that key's parser.
FLAG_KEYS = {
    "socket": "server.socket", "tcp": "server.tcp", "data_dir": "data_dir", "device": "device",
    "hbm": "hbm.capacity", "dram": "dram.capacity", "disk": "disk.capacity",
    "log_level": "log_level", "write_policy": "store.write_policy",
    "eviction_policy": "store.eviction_policy",
}


def _checked(path: str) -> Callable[[str], str]:
    """An argparse ``type`` that validates with the key's parser but keeps the text."""
    parse = all_keys()[path].parse

    def check(text: str) -> str:
        try:
            parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text
    return check


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tierd", description="Node-local tiered KV-cache page store (hbm, dram, disk) "
        "served over gRPC. Precedence: flags > TIERD_* environment > config file > defaults.")
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="TOML config file (default: $TIERD_CONFIG, else none)")
    parser.add_argument("--socket", metavar="PATH", help="unix socket (default /run/tierd/tierd.sock)")
    parser.add_argument("--tcp", metavar="HOST:PORT",
                        help="also listen on TCP (TLS unless loopback; set tls_* in the config)")
    parser.add_argument("--data-dir", metavar="DIR", help="LMDB data dir (default /var/lib/tierd)")
    parser.add_argument("--device", metavar="auto|cpu|cuda[:N]", help="where hbm lives")
    parser.add_argument("--hbm", metavar="SIZE", help="hbm capacity, e.g. 8GiB")
    parser.add_argument("--dram", metavar="SIZE", help="dram capacity, e.g. 64GiB")
    parser.add_argument("--disk", metavar="SIZE", help="disk capacity, e.g. 1TiB")
    parser.add_argument("--log-level", metavar="debug|info|warning|error")
    parser.add_argument("--write-policy", metavar="write_back|write_through")
    parser.add_argument("--eviction-policy", metavar="lru|prefix_aware")
    parser.add_argument("--version", action="version", version=f"tierd {tierd.__version__}")
    for action in parser._actions:
        if action.dest in FLAG_KEYS:
            action.type = _checked(FLAG_KEYS[action.dest])
    return parser


def overrides_from(args: argparse.Namespace) -> dict[str, object]:
    """Config keys set by flags (flags not given are absent, so lower layers show through)."""
    return {path: getattr(args, dest) for dest, path in FLAG_KEYS.items()
            if getattr(args, dest) is not None}


def refuse(reason: str) -> int:
    print(f"tierd: refusing to start: {reason}", file=sys.stderr)
    return EXIT_CONFIG


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = overrides_from(args)
    env = dict(os.environ)

    def reload() -> DaemonConfig:
        return load_config(args.config, env, overrides)

    try:
        config = reload()
    except ConfigError as exc:
        return refuse(str(exc))
    configure_logging(config.log_level)
    os.umask(DAEMON_UMASK)
    device, problems = startup_problems(config, MachineFacts.probe())
    if problems or device is None:
        return refuse(problems[0] if problems else "no device")
    # The store builds its arenas for the device the checks resolved (one answer for both).
    config = replace(config, store=config.store.with_changes(device=device.device),
                     serving=replace(config.serving, device=device.name))
    return run_daemon(config, device, reload)


def run_daemon(config: DaemonConfig, device: ResolvedDevice, reload: Callable[[], DaemonConfig]) -> int:
    """Run the daemon on a fresh uvloop event loop (imports grpc and uvloop only now)."""
    import uvloop

    from tierd.daemon.notify import SdNotifier
    from tierd.daemon.runner import Daemon

    notifier = SdNotifier()
    try:
        return uvloop.run(Daemon(config, device, notifier, reload).run())
    finally:
        notifier.close()

