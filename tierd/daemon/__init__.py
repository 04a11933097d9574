"""The daemon process: config (TOML > env > flags), start-up checks, listening, sd_notify,
signals, and the ``tierd`` command line. ``tierd.server`` is what it serves."""

from tierd.daemon.config import DaemonConfig, ServerSettings, check_config, load_config

__all__ = ["DaemonConfig", "ServerSettings", "check_config", "load_config"]
