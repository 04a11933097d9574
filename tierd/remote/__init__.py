"""The ``remote`` tier: a best-effort page cache shared by nodes, behind a small backend interface.

``base`` is the interface a distributed store implements (batched exists / get into buffers /
put / delete, each with a deadline); ``page_value`` is the header and checksum every stored page
carries; ``tier`` decides (verifies, counts, backs off when the store is down) and ``writer``
feeds it from a bounded queue. Backends are imported lazily (``open_backend``).
"""
