"""Generated gRPC stubs of the wire contract ``proto/tierd/v1/tierd.proto`` (package ``tierd.v1``).

Regenerate with ``make proto``; ``tests/test_proto_stubs.py`` fails when these drift from the proto.
"""
