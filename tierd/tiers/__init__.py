"""Tier media: memory arenas (``hbm``, ``dram``) and the LMDB ``disk`` tier.

Media only hold bytes; they never decide what to evict or where a page lives (``tierd.index``
and ``tierd.store`` do).
"""
