"""The sans-I/O danmaku protocol fed with real bytes: packets are built here with struct, zlib and brotli
directly (not with the module under test), in the layout the live servers send."""

from __future__ import annotations

import json
import logging
import struct
import zlib

import brotli
import pytest

from chat_bridges.bilibili.errors import AuthError, InvalidStateError
from chat_bridges.bilibili.protocol import (
    AuthOk,
    CompressedBatch,
    ConnectionState,
    DanmakuConnection,
    Notification,
    Operation,
    Popularity,
    ProtoVer,
    build_auth_body,
    decompress,
    pack,
)

HEADER = struct.Struct(">IHHII")


def packet(op: int, body: bytes | dict, ver: int = 0, seq: int = 0) -> bytes:
    if isinstance(body, dict):
        body = json.dumps(body, ensure_ascii=False).encode()
    return HEADER.pack(16 + len(body), 16, ver, op, seq) + body


def command(cmd: str, **fields: object) -> bytes:
    return packet(5, {"cmd": cmd, **fields})


DANMU = {"info": [[0, 1, 25, 16777215, 1700000000123], "你好 👋", [12345, "观众A", 0], [], [0], ["", ""], 0, 0]}
GIFT = {"data": {"giftName": "辣条", "num": 3, "uid": 7, "uname": "x", "coin_type": "silver", "total_coin": 300}}
SUPER_CHAT = {"data": {"id": 99, "uid": 8, "price": 30, "message": "加油", "user_info": {"uname": "y"}}}


def opened(**kwargs: object) -> DanmakuConnection:
    conn = DanmakuConnection(room_id=5050, **kwargs)
    conn.send_auth(build_auth_body(uid=0, room_id=5050, token="tok", buvid="B3"))
    conn.data_to_send()
    assert conn.receive_message(packet(8, {"code": 0}, ver=1)) == [AuthOk()]
    return conn


def test_auth_packet_bytes() -> None:
    conn = DanmakuConnection(room_id=5050)
    conn.send_auth(build_auth_body(uid=42, room_id=5050, token="tok", buvid="B3"))
    [data] = conn.data_to_send()
    length, header_len, ver, op, _seq = HEADER.unpack(data[:16])
    assert (length, header_len, ver, op) == (len(data), 16, 1, 7)
    assert json.loads(data[16:]) == {"uid": 42, "roomid": 5050, "protover": 3, "platform": "web", "type": 2,
                                     "buvid": "B3", "key": "tok"}
    assert conn.state is ConnectionState.AUTHENTICATING
    assert conn.data_to_send() == []


def test_auth_body_without_token_omits_key() -> None:
    assert "key" not in build_auth_body(uid=0, room_id=1, token="")


def test_open_platform_auth_body_string_is_sent_verbatim() -> None:
    conn = DanmakuConnection()
    conn.send_auth('{"roomid":1,"key":"opaque"}')
    [data] = conn.data_to_send()
    assert data[16:] == b'{"roomid":1,"key":"opaque"}'


def test_auth_ok_then_heartbeat_and_popularity() -> None:
    conn = opened()
    assert conn.state is ConnectionState.OPEN
    conn.send_heartbeat()
    [data] = conn.data_to_send()
    _, _, ver, op, _ = HEADER.unpack(data[:16])
    assert (ver, op) == (1, 2)
    reply = packet(3, (987654).to_bytes(4, "big") + b"[object Object]", ver=1)
    assert conn.receive_message(reply) == [Popularity(987654)]
    assert conn.popularity == 987654


def test_auth_refused_raises_auth_error() -> None:
    conn = DanmakuConnection(room_id=5050)
    conn.send_auth(build_auth_body(uid=0, room_id=5050, token="stale"))
    with pytest.raises(AuthError) as info:
        conn.receive_message(packet(8, {"code": -101}, ver=1))
    assert info.value.code == -101
    assert "token" in str(info.value)
    assert conn.state is ConnectionState.CLOSED
    assert conn.receive_message(packet(5, {"cmd": "DANMU_MSG"})) == []


def test_invalid_state_transitions() -> None:
    conn = DanmakuConnection()
    with pytest.raises(InvalidStateError):
        conn.send_heartbeat()
    conn.send_auth({"roomid": 1})
    with pytest.raises(InvalidStateError):
        conn.send_auth({"roomid": 1})


def test_brotli_batch_with_several_packets() -> None:
    conn = opened()
    inner = command("DANMU_MSG:4:0:2:2:2:0", **DANMU) + command("SEND_GIFT", **GIFT) + command(
        "SUPER_CHAT_MESSAGE", **SUPER_CHAT)
    events = conn.receive_message(packet(5, brotli.compress(inner), ver=3))
    assert [e.cmd for e in events] == ["DANMU_MSG", "SEND_GIFT", "SUPER_CHAT_MESSAGE"]
    assert events[0].data["info"][1] == "你好 👋"
    assert events[2].data["data"]["price"] == 30


def test_zlib_batch_with_several_packets() -> None:
    conn = opened()
    inner = command("DANMU_MSG", **DANMU) + command("ONLINE_RANK_COUNT", data={"count": 3})
    events = conn.receive_message(packet(5, zlib.compress(inner), ver=2))
    assert [e.cmd for e in events] == ["DANMU_MSG", "ONLINE_RANK_COUNT"]


def test_each_message_is_a_unit_two_packets_in_one_message() -> None:
    conn = opened()
    data = command("DANMU_MSG", **DANMU) + packet(3, (5).to_bytes(4, "big"), ver=1)
    assert [type(e) for e in conn.receive_message(data)] == [Notification, Popularity]
    assert [type(e) for e in conn.receive_message(data + data)] == [Notification, Popularity] * 2


def test_a_truncated_or_junk_tail_costs_only_its_own_message(caplog: pytest.LogCaptureFixture) -> None:
    """Before: a cut packet or junk at the end of one message was buffered and corrupted the NEXT message."""
    conn = opened()
    whole = command("DANMU_MSG", **DANMU)
    gift = command("SEND_GIFT", **GIFT)
    with caplog.at_level(logging.WARNING):
        assert [e.cmd for e in conn.receive_message(whole + gift[:-7])] == ["DANMU_MSG"]  # truncated tail
        assert [e.cmd for e in conn.receive_message(gift)] == ["SEND_GIFT"]  # the next message is whole
        assert [e.cmd for e in conn.receive_message(whole + b"\x00\x00\x00\xffjunk")] == ["DANMU_MSG"]
        assert [e.cmd for e in conn.receive_message(whole)] == ["DANMU_MSG"]
        assert [e.cmd for e in conn.receive_message(whole[:10])] == []  # not even a header
        assert [e.cmd for e in conn.receive_message(gift)] == ["SEND_GIFT"]
    assert caplog.text.count("rest of message dropped") == 3 and "room=5050" in caplog.text


def test_bytes_after_a_heartbeat_reply_are_not_glued_to_the_next_message(caplog: pytest.LogCaptureFixture) -> None:
    conn = opened()
    echo = packet(3, (777).to_bytes(4, "big"), ver=1) + b"\x00\x00\x00\x1a\x00\x10\x00"  # echoed bytes
    with caplog.at_level(logging.WARNING):
        assert conn.receive_message(echo) == [Popularity(777)]
        [event] = conn.receive_message(command("DANMU_MSG", **DANMU))
        assert conn.receive_message(b"") == []  # an empty message
        assert conn.receive_message(packet(5, b"")) == []  # an empty body
        assert conn.receive_message(packet(3, b"", ver=1)) == []
    assert event.cmd == "DANMU_MSG" and conn.popularity == 777
    assert caplog.text == ""  # nothing in these is worth a warning


def test_malformed_header_is_dropped_and_stream_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    conn = opened()
    bad = HEADER.pack(40, 3, 0, 5, 0) + b"x" * 24  # header length 3 < 16
    with caplog.at_level(logging.WARNING):
        assert conn.receive_message(bad) == []
    assert "rest of message dropped" in caplog.text and "room=5050" in caplog.text
    [event] = conn.receive_message(command("DANMU_MSG", **DANMU))
    assert event.cmd == "DANMU_MSG"


def test_malformed_packets_are_skipped_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    conn = opened()
    chunk = (
        packet(5, b"\x1b\x00garbage", ver=3)  # corrupt brotli
        + packet(5, b"not json", ver=0)
        + packet(5, {"nocmd": 1})
        + packet(5, b"[1, 2]")
        + packet(3, b"\x00", ver=1)  # popularity needs 4 bytes
        + packet(5, {"cmd": "X"}, ver=9)  # unknown version
        + command("DANMU_MSG", **DANMU)
    )
    with caplog.at_level(logging.WARNING):
        events = conn.receive_message(chunk)
    assert [e.cmd for e in events] == ["DANMU_MSG"]
    assert caplog.text.count("malformed packet skipped") == 6


def test_truncated_batch_keeps_packets_before_the_cut(caplog: pytest.LogCaptureFixture) -> None:
    conn = opened()
    inner = command("DANMU_MSG", **DANMU) + command("SEND_GIFT", **GIFT)[:-5]
    with caplog.at_level(logging.WARNING):
        events = conn.receive_message(packet(5, brotli.compress(inner), ver=3))
    assert [e.cmd for e in events] == ["DANMU_MSG"]
    assert "truncated packet" in caplog.text


def test_truncated_compressed_stream_and_bomb_are_rejected(caplog: pytest.LogCaptureFixture) -> None:
    conn = opened()
    whole = brotli.compress(command("DANMU_MSG", **DANMU))
    bomb = zlib.compress(b"\x00" * (5 * 1024 * 1024))
    with caplog.at_level(logging.WARNING):
        assert conn.receive_message(packet(5, whole[:-3], ver=3)) == []
        assert conn.receive_message(packet(5, bomb, ver=2)) == []
    assert "truncated brotli" in caplog.text
    assert "inflates to more than" in caplog.text


def test_deferred_decompression_for_an_executor() -> None:
    conn = opened(inline_decompress=False)
    inner = command("DANMU_MSG", **DANMU) + command("SEND_GIFT", **GIFT)
    [batch] = conn.receive_message(packet(5, brotli.compress(inner), ver=3))
    assert isinstance(batch, CompressedBatch) and batch.ver == ProtoVer.BROTLI
    events = conn.receive_batch(decompress(batch.ver, batch.payload))
    assert [e.cmd for e in events] == ["DANMU_MSG", "SEND_GIFT"]


def test_pack_matches_the_wire_layout() -> None:
    data = pack(Operation.HEARTBEAT, b"{}", ver=ProtoVer.HEARTBEAT, seq_id=7)
    assert data == HEADER.pack(18, 16, 1, 2, 7) + b"{}"
