"""The page socket (tierd.server.page_socket): byte-path GET and PUT frames against a real store,
spoken raw, so every check of the daemon is seen from the wire: HELLO and tenants, limits, bad
frames, namespaces of other tenants, connections past the limit, close."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import grpc
import pytest
from server_harness import (
    ALPHA_TOKEN,
    BRAVO_TOKEN,
    PAGE_BYTES,
    PAGE_SPEC,
    ServerThread,
    keys_for,
    make_server,
    open_channel,
    pages_for,
)

from tierd.errors import ConfigError
from tierd.page_wire import (
    MAGIC,
    REPLY_HEAD_BYTES,
    REQUEST_HEAD_BYTES,
    PageOp,
    ReplyFlag,
    ReplyHead,
    RequestFlag,
    RequestHead,
    decode_ticket,
)
from tierd.server.page_service import PageService
from tierd.server.page_socket import PageSocket, PageSocketSettings
from tierd.tier import Tier
from tierd.v1 import tierd_pb2 as pb
from tierd.v1 import tierd_pb2_grpc as pb_grpc

Code = grpc.StatusCode
CLOSE_POLLS = 3000  # 10 ms apart: however slow the machine, its close is seen


class Peer:
    """A raw page-socket client: frames in, (head, payload) out."""

    def __init__(self, path: str, token: str = "", hello: bool = True) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(path)
        if hello:
            self.sock.sendall(RequestHead(PageOp.HELLO, payload_bytes=len(token)).encode() + token.encode())
            self.hello = self.reply()

    def reply(self) -> tuple[ReplyHead, bytes]:
        head = ReplyHead.decode(self.exactly(REPLY_HEAD_BYTES))
        return head, self.exactly(head.payload_bytes)

    def exactly(self, num_bytes: int) -> bytes:
        data = b""
        while len(data) < num_bytes:
            chunk = self.sock.recv(num_bytes - len(data))
            if not chunk:
                raise EOFError(f"closed after {len(data)} of {num_bytes} bytes")
            data += chunk
        return data

    def get(self, ns_id: int, keys: list[bytes]) -> list[tuple[ReplyHead, bytes]]:
        self.sock.sendall(RequestHead(PageOp.GET, ns_id, len(keys)).encode() + b"".join(keys))
        frames = [self.reply()]
        while frames[-1][0].status == 0 and frames[-1][0].flags & ReplyFlag.MORE:
            frames.append(self.reply())
        return frames

    def put(self, ns_id: int, keys: list[bytes], pages: list[bytes], tier: Tier = Tier.DRAM,
            parent: bytes | None = None) -> tuple[ReplyHead, bytes]:
        flags = RequestFlag.HAS_PARENT if parent is not None else RequestFlag.NONE
        data = b"".join(pages)
        head = RequestHead(PageOp.PUT, ns_id, len(keys), len(data), int(tier), flags)
        self.sock.sendall(head.encode() + b"".join(keys) + (parent or b"") + data)
        return self.reply()

    def closed(self) -> bool:
        return self.sock.recv(1) == b""

    def close(self) -> None:
        self.sock.close()


def page_path(srv: ServerThread) -> str:
    return srv.settings.advertised_page_socket


def register(srv: ServerThread, metadata: tuple[tuple[str, str], ...] = ()) -> pb.RegisterResponse:
    with open_channel(srv) as channel:
        response: pb.RegisterResponse = pb_grpc.TierdStub(channel).Register(
            pb.RegisterRequest(spec=PAGE_SPEC), metadata=metadata)
        return response


def test_register_names_the_page_socket_and_hello_answers_its_epoch(server: ServerThread) -> None:
    reg = register(server)
    assert reg.page_socket == page_path(server) and len(reg.server_epoch) == 16
    peer = Peer(reg.page_socket)
    head, epoch = peer.hello
    assert head.status == 0 and epoch == reg.server_epoch
    assert reg.regions[0].epoch == reg.server_epoch  # the same run as the handles
    peer.close()


def test_put_then_get_returns_the_pages_and_the_cached_prefix_only(server: ServerThread) -> None:
    reg = register(server)
    keys, pages = keys_for(reg, 6), pages_for(6, seed=3)
    peer = Peer(page_path(server))
    head, ticket = peer.put(reg.ns_id, keys[:4], pages[:4])
    assert (head.status, head.count, head.value, decode_ticket(ticket)) == (0, 4, 0, 0)
    head, _ = peer.put(reg.ns_id, keys[3:5], pages[3:5], parent=keys[2])
    assert (head.count, head.value) == (1, 1)  # keys[3] was cached: skipped
    frames = peer.get(reg.ns_id, keys)  # keys[5] is missing: the prefix is 5 pages
    got = b"".join(payload for _, payload in frames)
    assert sum(h.count for h, _ in frames) == 5 and got == b"".join(pages[:5])
    assert all(h.value == PAGE_BYTES for h, _ in frames)
    frames = peer.get(reg.ns_id, [keys[5], keys[0]])
    assert [(h.status, h.count, h.flags) for h, _ in frames] == [(0, 0, ReplyFlag.NONE)]
    # What the page socket stored, gRPC's GetPages serves (one store, one API).
    with open_channel(server) as channel:
        stream = pb_grpc.TierdStub(channel).GetPages(pb.GetPagesRequest(ns_id=reg.ns_id, keys=keys))
        assert b"".join(m.data for m in stream) == b"".join(pages[:5])
    peer.close()


def test_a_get_larger_than_a_chunk_comes_in_several_frames(server: ServerThread) -> None:
    reg = register(server)
    keys, pages = keys_for(reg, 7), pages_for(7, seed=5)
    peer = Peer(page_path(server))
    assert peer.put(reg.ns_id, keys, pages)[0].count == 7
    frames = peer.get(reg.ns_id, keys)
    per_frame = max(1, server.settings.chunk_bytes // PAGE_BYTES)
    assert [h.count for h, _ in frames] == [per_frame] * (7 // per_frame) + ([7 % per_frame] if 7 % per_frame else [])
    assert [bool(h.flags & ReplyFlag.MORE) for h, _ in frames] == [True] * (len(frames) - 1) + [False]
    assert b"".join(p for _, p in frames) == b"".join(pages)
    peer.close()


def test_refused_requests_change_nothing_and_keep_the_connection(server: ServerThread) -> None:
    reg = register(server)
    keys, pages = keys_for(reg, 2), pages_for(2)
    peer = Peer(page_path(server))
    cases = [
        (lambda: peer.get(reg.ns_id + 99, keys)[0], Code.NOT_FOUND, "namespace"),
        (lambda: peer.put(reg.ns_id, keys, pages[:1]), Code.INVALID_ARGUMENT, "expected"),
        (lambda: peer.put(reg.ns_id, keys, pages, tier=Tier.DISK), Code.INVALID_ARGUMENT, "memory tier"),
        (lambda: peer.put(reg.ns_id + 99, keys, pages), Code.NOT_FOUND, "namespace"),
        (lambda: peer.put(reg.ns_id, keys, pages, tier=Tier.REMOTE), Code.INVALID_ARGUMENT, "memory tier"),
    ]
    for send, code, words in cases:
        head, message = send()
        assert head.status == code.value[0], message
        assert words in message.decode()
    too_many = server.settings.max_get_bytes // PAGE_BYTES + 1
    head, message = peer.get(reg.ns_id, keys_for(reg, too_many))[0]
    assert head.status == Code.INVALID_ARGUMENT.value[0] and b"max_get_bytes" in message
    assert server.store.get(reg.ns_id, keys) == []  # nothing was stored
    assert peer.put(reg.ns_id, keys, pages)[0].count == 2  # the connection still serves
    peer.close()


@pytest.mark.parametrize("frame, words", [
    (b"XXXX" + bytes(REQUEST_HEAD_BYTES - 4), "magic"),
    (MAGIC + bytes([9]) + bytes(REQUEST_HEAD_BYTES - 5), "unknown page op"),
    (RequestHead(PageOp.HELLO).encode(), "HELLO comes once"),
    (RequestHead(PageOp.GET, 1, 2000).encode(), "max_keys_per_request"),
    (RequestHead(PageOp.GET, 1, 1, payload_bytes=8).encode(), "payload"),
    (RequestHead(PageOp.PUT, 1, 1, payload_bytes=(1 << 20) + 1).encode(), "max_put_bytes"),
])
def test_a_malformed_frame_is_answered_then_the_connection_closed(server: ServerThread, frame: bytes,
                                                                  words: str) -> None:
    peer = Peer(page_path(server))
    peer.sock.sendall(frame)
    head, message = peer.reply()
    assert head.status == Code.INVALID_ARGUMENT.value[0] and words in message.decode()
    assert peer.closed()
    peer.close()
    fresh = Peer(page_path(server))  # the socket still serves others
    assert fresh.hello[0].status == 0
    fresh.close()


def test_a_connection_must_start_with_hello(server: ServerThread) -> None:
    peer = Peer(page_path(server), hello=False)
    peer.sock.sendall(RequestHead(PageOp.GET, 1, 0).encode())
    head, message = peer.reply()
    assert head.status == Code.INVALID_ARGUMENT.value[0] and b"starts with one HELLO" in message
    assert peer.closed()


def test_tenants_need_a_token_and_reach_only_their_namespaces(tenant_server: ServerThread) -> None:
    path = page_path(tenant_server)
    for token in ("", "not-a-token"):
        peer = Peer(path, token)
        assert peer.hello[0].status == Code.UNAUTHENTICATED.value[0]
        assert b"token" in peer.hello[1] and peer.closed()
    alpha = register(tenant_server, (("authorization", f"Bearer {ALPHA_TOKEN}"),))
    keys, pages = keys_for(alpha, 2), pages_for(2, seed=7)
    as_a, as_b = Peer(path, ALPHA_TOKEN), Peer(path, BRAVO_TOKEN)
    assert as_a.put(alpha.ns_id, keys, pages)[0].count == 2
    for head, message in (as_b.get(alpha.ns_id, keys)[0], as_b.put(alpha.ns_id, keys, pages)):
        assert head.status == Code.PERMISSION_DENIED.value[0] and b"another tenant" in message
    assert b"".join(p for _, p in as_a.get(alpha.ns_id, keys)) == b"".join(pages)
    as_a.close()
    as_b.close()


def test_connections_past_the_limit_are_told_and_closed(short_tmp: Path) -> None:
    srv = make_server(short_tmp)
    path = short_tmp / "p.sock"
    service = PageService(srv.store, srv.settings, b"e" * 16)
    try:
        with PageSocket(PageSocketSettings(path, max_connections=2), service) as pages:
            held = [Peer(str(path)) for _ in range(2)]
            assert pages.num_connections == 2
            refused = Peer(str(path), hello=False)
            head, message = refused.reply()
            assert head.status == Code.UNAVAILABLE.value[0] and b"connections already" in message
            held[0].close()
            for _ in range(CLOSE_POLLS):  # the daemon notices the close on its own thread
                if pages.num_connections < 2:
                    break
                time.sleep(0.01)
            assert pages.num_connections == 1
            assert Peer(str(path)).hello[0].status == 0
    finally:
        srv.stop()


def test_close_ends_connections_removes_the_file_and_is_idempotent(short_tmp: Path) -> None:
    srv = make_server(short_tmp)
    path = short_tmp / "p.sock"
    try:
        pages = PageSocket(PageSocketSettings(path), PageService(srv.store, srv.settings, b"e" * 16))
        pages.start()
        pages.start()
        peer = Peer(str(path))
        with pytest.raises(ConfigError, match="another process serves the socket .*server.page_socket"):
            PageSocket(PageSocketSettings(path), PageService(srv.store, srv.settings, b"f" * 16)).start()
        pages.close()
        pages.close()
        assert peer.closed() and not path.exists() and pages.num_connections == 0
    finally:
        srv.stop()


def test_keys_of_a_put_with_parent_are_a_chain(server: ServerThread) -> None:
    reg = register(server)
    keys, pages = keys_for(reg, 3), pages_for(3, seed=9)
    peer = Peer(page_path(server))
    assert peer.put(reg.ns_id, keys[:1], pages[:1])[0].count == 1
    head, _ = peer.put(reg.ns_id, keys[1:], pages[1:], parent=keys[0])
    assert head.count == 2
    assert [p.tier for p in server.store.peek(reg.ns_id, keys)] == [Tier.DRAM] * 3
    assert [p.data for p in server.store.peek(reg.ns_id, keys)] == pages  # type: ignore[union-attr]
    peer.close()


def test_frames_may_arrive_in_pieces_or_back_to_back(server: ServerThread) -> None:
    reg = register(server)
    keys, pages = keys_for(reg, 2), pages_for(2, seed=11)
    peer = Peer(page_path(server))
    data = b"".join(pages)
    frame = RequestHead(PageOp.PUT, reg.ns_id, 2, len(data), int(Tier.DRAM)).encode() + b"".join(keys) + data
    for i in range(REQUEST_HEAD_BYTES + 40):  # head and keys a byte at a time, then the pages
        peer.sock.sendall(frame[i:i + 1])
    peer.sock.sendall(frame[REQUEST_HEAD_BYTES + 40:])
    assert peer.reply()[0].count == 2
    get = RequestHead(PageOp.GET, reg.ns_id, 1).encode()
    peer.sock.sendall(get + keys[1] + get + keys[0])  # two requests in one send
    assert [peer.reply()[1], peer.reply()[1]] == [pages[1], pages[0]]
    peer.close()
