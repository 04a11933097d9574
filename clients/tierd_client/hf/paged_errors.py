"""Errors of the paged worker (``tierd_client.hf.paged``). Each message says what to change.

They derive from the ``tierd.errors`` class of the same meaning, so code that handles tierd's
errors by kind handles these too. tierd's RPC errors (``tierd_client.errors``) pass through as
they are.
"""

from __future__ import annotations

from tierd.errors import FailedPrecondition, InvalidArgument, ResourceExhausted, TierdError


class PagedWorkerError(TierdError):
    """Base of the errors the paged worker raises on purpose."""


class PagedModelError(PagedWorkerError, InvalidArgument):
    """The model is not one the paged worker can run: an attention implementation other than the
    registered paged one, a dtype, head_dim or page size the kernels do not take, a model on
    another device than the hbm arena. (A model without a page spec at all raises ``spec_for``'s
    errors, ``tierd_client.hf.errors``.)"""


class PagedCacheError(PagedWorkerError, FailedPrecondition):
    """The paged cache or attention was used outside what it supports: no slot for a position,
    no paged cache reaching the attention, batch > 1, an attention mask, a closed request."""


class PageLostError(PagedWorkerError, ResourceExhausted):
    """A page this request committed left hbm before the request could pin it again.

    Between the Commit of a full page and the Acquire that pins it, the daemon may evict it when
    other workers press on hbm; without its K/V the request cannot go on.
    """
