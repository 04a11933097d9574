"""Register of one spec in two layouts gives two namespaces, each answered with its own layout."""

from __future__ import annotations

from server_harness import PAGE_SPEC, ServerThread

from tierd.keys import namespace_fingerprint
from tierd.spec import DEFAULT_LAYOUT
from tierd.v1 import tierd_pb2 as pb
from tierd.v1 import tierd_pb2_grpc as pb_grpc
from tierd.wire import spec_from_pb


def test_two_layouts_are_two_namespaces(server: ServerThread, stub: pb_grpc.TierdStub) -> None:
    other_spec = pb.PageSpec()
    other_spec.CopyFrom(PAGE_SPEC)
    other_spec.layout = "vllm-0.32.0/cpu-vec/float16/b16"
    plain = stub.Register(pb.RegisterRequest(spec=PAGE_SPEC))
    other = stub.Register(pb.RegisterRequest(spec=other_spec))
    assert plain.ns_id != other.ns_id and plain.fingerprint != other.fingerprint
    assert spec_from_pb(plain.spec).layout == DEFAULT_LAYOUT
    assert other.spec.layout == other_spec.layout
    assert other.fingerprint == namespace_fingerprint(spec_from_pb(other_spec), b"default")
    assert server.store.stats().namespaces == 2
    again = stub.Register(pb.RegisterRequest(spec=other_spec))
    assert again.ns_id == other.ns_id
