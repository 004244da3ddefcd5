"""The sans-I/O protocol and auth helpers, tested with bytes (no sockets)."""

from __future__ import annotations

import io
import json
import logging
import os
import stat

import msgpack
import numpy as np
import pytest

from backend.events import AudioChunk, CommandKind, VideoFrame
from backend.server.auth import (
    AuthError,
    AuthThrottle,
    Token,
    announce_token,
    bearer_token,
    check_token,
    default_token_path,
    load_or_create_token,
)
from backend.server.metrics import Metric, Sample, render
from backend.server.protocol import (
    Auth,
    Close,
    CloseCode,
    CommandRequest,
    ControlProtocol,
    ControlState,
    Dispatch,
    Error,
    Hello,
    Ok,
    ProtocolError,
    Send,
    StatusRequest,
    SubscribeRequest,
    audio_message,
    decode_client,
    decode_server,
    encode,
    frame_message,
)


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def test_decode_client_messages_from_msgpack_and_json():
    assert decode_client(pack({"type": "command", "kind": "act", "argument": "wave", "id": "7"})) == \
        CommandRequest(CommandKind.ACT, "wave", "7")
    assert decode_client('{"type":"command","kind":"say","argument":"hi","wait":true}') == \
        CommandRequest(CommandKind.SAY, "hi", "", True)
    assert decode_client(pack({"type": "status", "id": "s"})) == StatusRequest("s")
    assert decode_client('{"type":"subscribe","topics":["state"]}') == SubscribeRequest(("state",))
    auth = decode_client(pack({"type": "auth", "token": "s3cret"}))
    assert auth == Auth("s3cret") and "s3cret" not in repr(auth)


@pytest.mark.parametrize("data, match", [
    (b"\xc1\xff\x00", "not valid msgpack"),
    ("{not json", "not valid JSON"),
    (pack([1, 2]), "expected a map"),
    (pack({"kind": "act"}), "no 'type'"),
    (pack({"type": "dance"}), "unknown message type 'dance'"),
    (pack({"type": "command", "kind": "fly", "id": "3"}), "unknown kind 'fly'"),
    (pack({"type": "command", "kind": "act", "argument": 5, "id": "4"}), "'argument' must be str"),
    (pack({"type": "command", "kind": "act", "wait": 1}), "'wait' must be bool"),
    (pack({"type": "subscribe", "topics": ["chat"]}), "unknown topic 'chat'"),
    (pack({"type": "auth"}), "missing field 'token'"),
])
def test_decode_client_rejects_bad_input_with_a_code(data, match):
    with pytest.raises(ProtocolError, match=match) as info:
        decode_client(data)
    assert info.value.code == "bad_message"


def test_error_keeps_the_request_id():
    with pytest.raises(ProtocolError) as info:
        decode_client(pack({"type": "command", "kind": "fly", "id": "abc"}))
    assert info.value.id == "abc"


def test_server_messages_round_trip_and_json_refuses_binary():
    hello = Hello(64, 36, 20.0, "rgba", 48000)
    assert decode_server(encode(hello)) == hello
    raw = msgpack.unpackb(encode(hello))
    assert raw == {"type": "hello", "protocol": 1, "server": "liveidol/0.1.0", "width": 64, "height": 36,
                   "fps": 20.0, "format": "rgba", "sample_rate": 48000, "channels": 1}
    assert json.loads(encode(Ok("1", 5, "c1"), text=True))["effective_frame"] == 5
    f = frame_message(VideoFrame(3, 0.15, np.zeros((2, 3, 4), np.uint8)))
    with pytest.raises(ValueError, match="binary"):
        encode(f, text=True)


def test_frame_message_rgba_bytes_and_jpeg():
    import simplejpeg

    rgba = np.zeros((16, 24, 4), np.uint8)
    rgba[:, :12, 0] = 255
    rgba[..., 3] = 128
    msg = msgpack.unpackb(encode(frame_message(VideoFrame(9, 0.36, rgba, "c4"))))
    assert (msg["type"], msg["seq"], msg["pts"], msg["width"], msg["height"], msg["format"], msg["directive_id"]) == \
        ("frame", 9, 0.36, 24, 16, "rgba", "c4")
    assert msg["data"] == rgba.tobytes() and len(msg["data"]) == 24 * 16 * 4
    jpeg = frame_message(VideoFrame(9, 0.36, rgba), "jpeg", jpeg_quality=90)
    img = simplejpeg.decode_jpeg(jpeg.data)
    assert img.shape == (16, 24, 3) and img[8, 2, 0] > 200 and img[8, 20, 0] < 50


def test_audio_message_is_little_endian_float32_interleaved():
    pcm = np.array([[0.5, -0.5], [0.25, 1.0]], np.float32)
    msg = msgpack.unpackb(encode(audio_message(AudioChunk(2, 1.5, 48000, pcm))))
    assert (msg["channels"], msg["sample_rate"], msg["format"], msg["pts"]) == (2, 48000, "f32le", 1.5)
    np.testing.assert_array_equal(np.frombuffer(msg["data"], "<f4"), [0.5, -0.5, 0.25, 1.0])


def test_control_state_machine_auth_first():
    proto = ControlProtocol(lambda t: t == "good")
    (close,) = proto.receive(pack({"type": "status", "id": "1"}))
    assert close == Close(CloseCode.NOT_AUTHENTICATED, "authenticate first") and proto.state is ControlState.CLOSED
    assert proto.receive(pack({"type": "auth", "token": "good"})) == []  # closed: ignores everything

    proto = ControlProtocol(lambda t: t == "good")
    assert proto.receive('{"type":"auth","token":"bad"}') == [Close(4001, "bad token")]

    proto = ControlProtocol(lambda t: t == "good")
    (ok,) = proto.receive('{"type":"auth","token":"good"}')
    assert isinstance(ok, Send) and json.loads(ok.payload)["type"] == "ok"
    (err,) = proto.receive(b"\x93garbage")
    assert decode_server(err.payload) == Error("bad_message", err_msg(err), "")
    (d,) = proto.receive(pack({"type": "command", "kind": "emotion", "argument": "happy", "id": "9"}))
    assert d == Dispatch(CommandRequest(CommandKind.EMOTION, "happy", "9"), False)
    (d,) = proto.receive('{"type":"status","id":"2"}')
    assert d.text is True and proto.state is ControlState.READY


def err_msg(send: Send) -> str:
    return decode_server(send.payload).message


def test_token_created_0600_once_and_read_back(tmp_path):
    path = tmp_path / "cfg" / "liveidol" / "token"
    first = load_or_create_token(path)
    assert first.created and len(first.value) >= 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert first.value not in repr(first)
    again = load_or_create_token(path)
    assert again.value == first.value and not again.created
    assert check_token(first.value, first.value)
    assert not check_token(first.value, first.value + "x") and not check_token(first.value, None)
    path.write_text("")
    with pytest.raises(AuthError, match="empty"):
        load_or_create_token(path)


def test_default_token_path_follows_xdg():
    assert str(default_token_path({"XDG_CONFIG_HOME": "/x/cfg", "HOME": "/home/u"})) == "/x/cfg/liveidol/token"
    assert str(default_token_path({"HOME": "/home/u"})) == "/home/u/.config/liveidol/token"


def test_prometheus_render():
    text = render([Metric("liveidol_x", "gauge", "An x.", [Sample(1.5, {"kind": 'a"b'}), Sample(None)])])
    assert text == '# HELP liveidol_x An x.\n# TYPE liveidol_x gauge\nliveidol_x{kind="a\\"b"} 1.5\nliveidol_x NaN\n'


def test_is_loopback():
    from backend.server.server import is_loopback

    assert all(is_loopback(h) for h in ("127.0.0.1", "127.5.0.1", "::1", "::ffff:127.0.0.1", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "192.168.1.4", "::", "example.com", ""))


@pytest.mark.parametrize("data", [
    "[" * 50_000 + "]" * 50_000,  # json.loads raised RecursionError: 1011 and a traceback (issue 16, point 2)
    '{"type": "auth", "token": ' + "[" * 900 + "]" * 900 + "}",
    '{"type": "subscribe", "topics": [[[[[[[[["state"]]]]]]]]]}',
    pack({"type": "status", "id": "1", "x": [[[[[[[[[[1]]]]]]]]]]}),
    b"\x91" * 100_000 + b"\x00",
])
def test_decode_client_refuses_deep_nesting_with_a_protocol_error(data):
    with pytest.raises(ProtocolError) as info:
        decode_client(data)
    assert info.value.code == "bad_message"
    proto = ControlProtocol(lambda t: True)
    assert proto.receive(data) == [Close(CloseCode.NOT_AUTHENTICATED, "authenticate first")]


def test_auth_throttle_locks_out_after_the_free_failures_doubling_up_to_the_cap():
    throttle = AuthThrottle(free=3, base_s=1.0, max_s=5.0, forget_s=100.0, peers=2)
    now = 1000.0
    assert [throttle.failed("a", now) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert throttle.locked_for("a", now) == 0.0
    assert [throttle.failed("a", now) for _ in range(4)] == [1.0, 2.0, 4.0, 5.0]  # doubling, capped
    assert throttle.locked_for("a", now + 1) == 4.0 and throttle.locked_for("b", now) == 0.0
    throttle.succeeded("a")
    assert throttle.locked_for("a", now) == 0.0
    for _ in range(4):
        throttle.failed("b", now)
    assert throttle.locked_for("b", now + 50) == 0.0  # the lockout is over, the count not yet forgotten
    assert throttle.failed("b", now + 50) == 2.0
    assert throttle.failed("b", now + 200) == 0.0  # quiet for longer than forget_s: a fresh start
    throttle.failed("c", now)
    throttle.failed("d", now)  # at most `peers` addresses remembered: the oldest ("b") is forgotten
    assert throttle.failed("b", now) == 0.0


def test_bearer_token_reads_the_authorization_header():
    assert bearer_token(None) is None
    assert bearer_token("Bearer abc") == "abc" and bearer_token("bearer  abc ") == "abc"
    assert bearer_token("Basic abc") == "" and bearer_token("abc") == ""


def test_token_files_that_cannot_be_read_are_one_line(tmp_path):
    """A non-UTF-8 token file ended in a UnicodeDecodeError traceback (issue 16, point 3)."""
    path = tmp_path / "token"
    path.write_bytes(b"\xff\xfe\x00secret")
    with pytest.raises(AuthError) as info:
        load_or_create_token(path)
    assert str(info.value) == (f"{path}: the control token file is not UTF-8 text (byte 0); "
                               "delete it to make a new token")
    (tmp_path / "dir").mkdir()
    with pytest.raises(AuthError, match="is a directory"):
        load_or_create_token(tmp_path / "dir")


class _Terminal(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_a_new_token_is_shown_once_on_a_terminal_and_never_logged(tmp_path, caplog):
    """The token was logged at creation, so it reached every log handler (issue 16, point 6)."""
    caplog.set_level(logging.DEBUG)
    token = load_or_create_token(tmp_path / "token")
    terminal, redirected = _Terminal(True), _Terminal(False)
    announce_token(token, terminal)
    announce_token(token, redirected)
    assert token.value in terminal.getvalue() and str(tmp_path / "token") in terminal.getvalue()
    assert token.value not in redirected.getvalue() and str(tmp_path / "token") in redirected.getvalue()
    again = _Terminal(True)
    announce_token(load_or_create_token(tmp_path / "token"), again)  # not created this time: nothing shown
    announce_token(Token("x"), again)
    assert again.getvalue() == ""
    assert not [r for r in caplog.records if token.value in r.getMessage()]
