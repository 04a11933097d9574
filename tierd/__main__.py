"""``python -m tierd``: the daemon (same as the ``tierd`` console script)."""

from tierd.daemon.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
