"""Errors of the transformers integration: what the caller gave cannot be paged, or does not match.

All derive from ``tierd.errors.InvalidArgument`` (like the client's own checks before sending):
they are the caller's to fix, and the messages say how.
"""

from __future__ import annotations

from tierd.errors import InvalidArgument


class HfPagingError(InvalidArgument):
    """Base of the errors ``tierd_client.hf`` raises on purpose."""


class UnsupportedModelError(HfPagingError):
    """The model's KV cannot be cut into tierd pages (sliding-window or hybrid layers, latent
    attention, a config without the fields a shape is derived from)."""


class ModelIdentityError(HfPagingError):
    """The model's name or revision is unknown, so its pages could be mistaken for another's."""


class CacheMismatchError(HfPagingError):
    """A cache, token ids or namespace that do not fit together (layers, heads, dtype, length)."""


class UnsupportedGenerationError(HfPagingError):
    """``generate`` arguments that the tiered helper cannot serve (beams, padding, a cache of
    the caller's own)."""
