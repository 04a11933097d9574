"""The four tiers, fastest first. Names are the ones used in config, stats and the wire."""

from __future__ import annotations

import enum


class Tier(enum.IntEnum):
    """A storage tier. Lower value = faster and smaller."""

    HBM = 0
    DRAM = 1
    DISK = 2
    REMOTE = 3  # a cache shared by nodes (``tierd.remote``); never the target of a put or move

    @property
    def label(self) -> str:
        """The lowercase name used in config files, stats and `tierctl` (``hbm``, ``dram``, ``disk``, ``remote``)."""
        return self.name.lower()

    @classmethod
    def parse(cls, name: str) -> Tier:
        """``"hbm"``/``"dram"``/``"disk"``/``"remote"`` (any case) to a ``Tier``; ``ValueError`` names the choices."""
        try:
            return cls[name.strip().upper()]
        except KeyError:
            choices = ", ".join(t.label for t in cls)
            raise ValueError(f"unknown tier {name!r}: expected one of {choices}") from None


MEMORY_TIERS: tuple[Tier, Tier] = (Tier.HBM, Tier.DRAM)
LOCAL_TIERS: tuple[Tier, Tier, Tier] = (Tier.HBM, Tier.DRAM, Tier.DISK)
