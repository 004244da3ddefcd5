"""The OBS script's stdlib msgpack decoder and websocket client against the real msgpack and websockets.

Bytes in, bytes out: the decoder reads what the real ``msgpack`` packer writes; the client talks to a
real ``websockets`` server on 127.0.0.1 (which rejects unmasked client frames, so an echo proves masking).
"""

from __future__ import annotations

import asyncio
import struct

import msgpack
import pytest
from websockets.asyncio.server import ServerConnection, serve

from obs_plugin import _msgpack, _ws

# ------------------------------------------------------------------------------------------------
# msgpack
# ------------------------------------------------------------------------------------------------

INTS = [0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1,
        -1, -32, -33, -128, -129, -32768, -32769, -(2**31), -(2**31) - 1, -(2**63)]


@pytest.mark.parametrize("value", [
    None, True, False, *INTS, 0.5, -1e300, 3.141592653589793,
    "", "a" * 31, "é" * 16, "b" * 255, "c" * 256, "d" * 70000,
    b"", b"\x00" * 255, b"\x01" * 256, b"\x02" * 70000,
    list(range(15)), list(range(16)), list(range(70000)),
    {str(i): i for i in range(15)}, {str(i): i for i in range(16)}, {i: None for i in range(70000)},
    {"type": "frame", "seq": 7, "pts": 0.28, "width": 2, "height": 1, "format": "rgba", "data": bytes(range(8))},
    [[[{"a": [b"x", 1.5, None]}]]],
], ids=lambda v: f"{type(v).__name__}{len(v) if hasattr(v, '__len__') else ''}")
def test_msgpack_decodes_what_msgpack_packs(value):
    assert _msgpack.unpackb(msgpack.packb(value, use_bin_type=True)) == value


def test_msgpack_float32_and_memoryview_input():
    packed = msgpack.packb(0.25, use_single_float=True)
    assert packed[0] == 0xCA
    assert _msgpack.unpackb(memoryview(bytearray(packed))) == 0.25


@pytest.mark.parametrize(("data", "match"), [
    (b"", "truncated"),
    (msgpack.packb("hello")[:-1], "truncated"),
    (msgpack.packb({"a": 1}) + b"\x00", "1 extra bytes"),
    (msgpack.packb(msgpack.ExtType(1, b"x")), "unsupported msgpack type byte 0xd4"),
    (b"\xa2\xff\xfe", "invalid UTF-8"),
    (b"\x91" * 40 + b"\x00", "nesting deeper"),
    (b"\x81\x90\x00", "unhashable map key"),
])
def test_msgpack_errors_name_what_and_where(data, match):
    with pytest.raises(_msgpack.MsgpackError, match=match):
        _msgpack.unpackb(data)


# ------------------------------------------------------------------------------------------------
# websocket sans-I/O core
# ------------------------------------------------------------------------------------------------


def test_accept_key_matches_rfc_example():
    assert _ws.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 section 1.3


def test_handshake_response_checks():
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    ok = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
          b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    _ws.check_handshake_response(ok, key)
    with pytest.raises(_ws.HandshakeError, match="wrong Sec-WebSocket-Accept"):
        _ws.check_handshake_response(ok.replace(b"s3pP", b"AAAA"), key)
    with pytest.raises(_ws.HandshakeError, match=r"refused the websocket upgrade: HTTP/1\.1 404"):
        _ws.check_handshake_response(b"HTTP/1.1 404 Not Found\r\n", key)


def test_parse_url():
    assert _ws.parse_url("ws://127.0.0.1:8765/stream?format=rgba") == (False, "127.0.0.1", 8765, "/stream?format=rgba")
    assert _ws.parse_url("wss://example.org") == (True, "example.org", 443, "/")
    with pytest.raises(ValueError, match="not a websocket URL"):
        _ws.parse_url("http://x")


def test_protocol_joins_fragments_fed_byte_by_byte_and_answers_ping():
    p = _ws.Protocol()
    wire = (_ws.encode_frame(_ws.Opcode.BINARY, b"abc", fin=False)
            + _ws.encode_frame(_ws.Opcode.PING, b"hi")
            + _ws.encode_frame(_ws.Opcode.CONT, b"def", fin=False)
            + _ws.encode_frame(_ws.Opcode.CONT, b"g" * 70000)
            + _ws.encode_frame(_ws.Opcode.TEXT, "héllo".encode()))
    out = []
    for i in range(0, len(wire), 7):
        out += p.receive_data(wire[i:i + 7])
    assert out == [b"abcdef" + b"g" * 70000, "héllo"]
    pong = p.data_to_send()
    assert pong[0] == 0x8A and pong[1] == 0x80 | 2  # FIN+PONG, masked, 2 bytes
    mask = pong[2:6]
    assert bytes(b ^ mask[i % 4] for i, b in enumerate(pong[6:])) == b"hi"


def test_protocol_echoes_close():
    p = _ws.Protocol()
    assert p.receive_data(_ws.encode_frame(_ws.Opcode.CLOSE, struct.pack(">H", 4001) + b"bad token")) == [
        _ws.Close(4001, "bad token")]
    echo = p.data_to_send()
    assert echo[0] == 0x88 and p.close_sent


@pytest.mark.parametrize(("wire", "match"), [
    (bytes([0xC2, 0x00]), "reserved bits"),
    (bytes([0x83, 0x00]), "unknown opcode"),
    (bytes([0x89, 126, 0, 200]) + b"x" * 200, "control frame too long"),
    (_ws.encode_frame(_ws.Opcode.CONT, b"x"), "continuation frame without"),
    (_ws.encode_frame(_ws.Opcode.TEXT, b"a", fin=False) + _ws.encode_frame(_ws.Opcode.TEXT, b"b"), "unfinished"),
    (_ws.encode_frame(_ws.Opcode.TEXT, b"\xff"), "not UTF-8"),
    (_ws.encode_frame(_ws.Opcode.BINARY, b"x" * 2000), "larger than max_size=1000"),
])
def test_protocol_errors(wire, match):
    with pytest.raises(_ws.ProtocolError, match=match):
        _ws.Protocol(max_size=1000).receive_data(wire)


# ------------------------------------------------------------------------------------------------
# websocket client against the real websockets server
# ------------------------------------------------------------------------------------------------


async def test_client_against_real_server():
    events: list[object] = []
    pong_ok = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        events.append(("path", ws.request.path, ws.request.headers.get("Authorization")))
        async for msg in ws:  # echo, until the client's "finale"
            if msg == "finale":
                break
            await ws.send(msg)
        await ws.send([b"frag-", b"mented-", b"x" * 100_000])  # a fragmented message
        waiter = await ws.ping(b"p1")
        await ws.send("after-ping")
        await asyncio.wait_for(waiter, 5)
        pong_ok.set()
        await ws.close(4001, "bad token")
        events.append(("server saw close", ws.close_code))

    async with serve(handler, "127.0.0.1", 0, max_size=2**22) as server:
        port = server.sockets[0].getsockname()[1]

        def client() -> list[object]:
            got: list[object] = []
            with _ws.connect(f"ws://127.0.0.1:{port}/stream?x=1", timeout=5,
                             headers={"Authorization": "Bearer t0k"}) as ws:
                ws.send(b"\x00\x01binary")
                got.append(ws.recv())
                ws.send("text é")
                got.append(ws.recv())
                big = bytes(range(256)) * 8000
                ws.send(big)
                got.append(ws.recv() == big)
                ws.send("finale")
                got.append(ws.recv())
                got.append(ws.recv())
                got.append(ws.recv())  # the server's close -> None
                got.append(ws.protocol.close_received)
            return got

        got = await asyncio.to_thread(client)
        await asyncio.wait_for(pong_ok.wait(), 5)
    assert got == [b"\x00\x01binary", "text é", True, b"frag-mented-" + b"x" * 100_000, "after-ping", None,
                   _ws.Close(4001, "bad token")]
    assert events[0] == ("path", "/stream?x=1", "Bearer t0k")
    assert events[-1] == ("server saw close", 4001)


async def test_client_close_reaches_server_and_refused_upgrade_is_an_error():
    closed = asyncio.Event()
    codes = []

    async def handler(ws: ServerConnection) -> None:
        await ws.wait_closed()
        codes.append(ws.close_code)
        closed.set()

    def process_request(conn, request):
        if request.path == "/nope":
            return conn.respond(404, "no such endpoint\n")
        return None

    async with serve(handler, "127.0.0.1", 0, process_request=process_request) as server:
        port = server.sockets[0].getsockname()[1]

        def client() -> None:
            ws = _ws.connect(f"ws://127.0.0.1:{port}/", timeout=5)
            ws.close(1000, "bye")
            with pytest.raises(_ws.HandshakeError, match="404"):
                _ws.connect(f"ws://127.0.0.1:{port}/nope", timeout=5)

        await asyncio.to_thread(client)
        await asyncio.wait_for(closed.wait(), 5)
    assert codes == [1000]
