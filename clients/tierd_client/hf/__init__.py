"""HuggingFace transformers over tierd (needs the ``hf`` extra; transformers is imported lazily).

``prefix``: save a ``DynamicCache``'s full pages and restore the longest cached prefix, and the
``tiered_generation`` helper around ``generate``. ``paged``: an attention implementation and a
cache class whose K/V live in tierd's ``hbm`` pages, attended with ``tierd_kernels``.
"""
