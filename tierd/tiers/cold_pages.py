"""How the disk tier stores one namespace's pages: exactly, or in its spec's cold format (fp8).

A ``StoredForm`` says what a stored payload is (its header encoding and size) and converts a
page to it and back. ``ColdForms`` is the disk tier's registry of the namespaces whose pages are
quantized (filled from the namespace records; an unlisted namespace stores exact pages). The
tier encodes on its writer thread and decodes on the reader threads; neither keeps state here.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from tierd.errors import InvalidArgument
from tierd.spec import PageSpec
from tierd.tiers.disk_ops import PageEncoder, PutPage
from tierd.tiers.fp8_pages import Fp8PageCodec, codec_for
from tierd.tiers.page_format import ENCODINGS, NS_ID_BYTES, encode_header, split_disk_key


@dataclass(frozen=True)
class StoredForm:
    """A quantized namespace's stored pages: ``payload_bytes`` each (after the header), header
    encoding ``encoding``, restored to ``page_bytes`` of the namespace's dtype by ``codec``."""

    encoding: int
    page_bytes: int
    payload_bytes: int
    codec: Fp8PageCodec

    def encode(self, page: memoryview, out: memoryview) -> None:
        """Exact page (``page_bytes``) -> stored payload (``payload_bytes``)."""
        self.codec.encode(page, out)

    def decode(self, stored: memoryview, out: memoryview) -> None:
        """Stored payload -> exact-dtype page in ``out``."""
        self.codec.decode(stored, out)

    def saved_bytes(self, stored_payload_bytes: int) -> int:
        """Bytes a stored payload of this size takes less than the exact page (may be < 0 for
        tiny pages, whose scales outweigh what fp8 saves)."""
        return self.page_bytes - stored_payload_bytes


def stored_form(spec: PageSpec) -> StoredForm | None:
    """The stored form of ``spec``'s pages; ``None`` when they are stored exactly."""
    codec = codec_for(spec)
    if codec is None:
        return None
    return StoredForm(encoding=ENCODINGS[spec.cold], page_bytes=spec.page_bytes,
                      payload_bytes=codec.stored_bytes, codec=codec)


def stored_payload_bytes(spec: PageSpec) -> int:
    """Bytes of one stored payload of ``spec`` on disk (the header not included)."""
    form = stored_form(spec)
    return spec.page_bytes if form is None else form.payload_bytes


class ColdForms:
    """ns_id -> ``StoredForm`` of the namespaces with a cold format; thread-safe."""

    def __init__(self, initial: Mapping[int, StoredForm] | None = None) -> None:
        self._lock = threading.Lock()
        self._by_ns: dict[int, StoredForm] = dict(initial or {})

    @classmethod
    def of_specs(cls, specs: Mapping[int, PageSpec]) -> ColdForms:
        """The forms of the quantized ones among ``specs`` (ns_id -> spec)."""
        forms = {ns_id: form for ns_id, spec in specs.items()
                 if (form := stored_form(spec)) is not None}
        return cls(forms)

    def get(self, ns_id: int) -> StoredForm | None:
        with self._lock:
            return self._by_ns.get(ns_id)

    def of_disk_key(self, dkey: bytes | memoryview) -> StoredForm | None:
        """The form of the namespace a disk key belongs to (its first ``NS_ID_BYTES``)."""
        if len(dkey) < NS_ID_BYTES:
            raise InvalidArgument(f"a disk key starts with a {NS_ID_BYTES}-byte namespace id, "
                                  f"got {len(dkey)} bytes")
        return self.get(int.from_bytes(bytes(dkey[:NS_ID_BYTES]), "big"))

    def add(self, ns_id: int, spec: PageSpec) -> None:
        """Record ``spec``'s form for ``ns_id``; an exact spec removes any (a namespace record
        saved again under an id an earlier daemon gave another spec)."""
        form = stored_form(spec)
        with self._lock:
            if form is None:
                self._by_ns.pop(ns_id, None)
            else:
                self._by_ns[ns_id] = form


def quantized_put(form: StoredForm, dkey: bytes, page: memoryview, seq: int,
                  on_done: Callable[[bool], None] | None, fingerprint: bytes) -> PutPage:
    """The writer op storing ``page`` (exact, pinned by the caller until ``on_done``) under disk
    key ``dkey`` in ``form``: the writer thread encodes it, then seals the header over the stored
    bytes (the checksum covers what is on disk)."""
    ns_id, key = split_disk_key(dkey)
    if page.nbytes != form.page_bytes:
        raise InvalidArgument(f"a page of namespace {ns_id} is {form.page_bytes} bytes, "
                              f"got {page.nbytes}")
    seal = functools.partial(encode_header, ns_id, key, fingerprint, form.payload_bytes, seq,
                             encoding=form.encoding)
    return PutPage(dkey, ns_id, page, seq, on_done, b"", PageEncoder(form.payload_bytes, form.encode, seal))
