"""Command events (docs/protocol.md, "Command events") in the sans-I/O protocol core, tested with bytes: the
``event`` message both ways, the ``events`` key of ``command`` and ``ok``, what older clients see, and clear
errors for events that are wrong."""

from __future__ import annotations

import json

import msgpack
import pytest

from backend.events import CommandKind
from backend.server.protocol import (
    EVENTS_VERSION,
    CommandRequest,
    ControlProtocol,
    Dispatch,
    EndReason,
    Event,
    EventKind,
    Ok,
    ProtocolError,
    decode_client,
    decode_server,
    encode,
)


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def test_started_and_finished_events_on_the_wire():
    started = Event(EventKind.STARTED, "20260101T000000-ab12.c7", "3", 120)
    assert encode(started, text=True) == (
        '{"type":"event","event":"started","command_id":"20260101T000000-ab12.c7","id":"3","frame":120,'
        '"reason":null,"dropped":0}')
    assert msgpack.unpackb(encode(started)) == {"type": "event", "event": "started",
                                                "command_id": "20260101T000000-ab12.c7", "id": "3", "frame": 120,
                                                "reason": None, "dropped": 0}
    finished = Event(EventKind.FINISHED, "s.c7", "3", 168, EndReason.PLAYED, dropped=2)
    never = Event(EventKind.FINISHED, "s.c8", "4", None, EndReason.REPLACED)
    for msg in (started, finished, never):
        for text in (False, True):
            back = decode_server(encode(msg, text=text))
            assert back == msg and isinstance(back.event, EventKind)
    assert json.loads(encode(never, text=True))["frame"] is None
    assert decode_server(pack({"type": "event", "event": "finished", "command_id": "c", "reason": "cancelled",
                               "frame": None})).reason is EndReason.CANCELLED
    # a key a later version adds is ignored, like everywhere in protocol 1
    assert decode_server('{"type":"event","event":"started","command_id":"c","frame":5,"new":1}') == \
        Event(EventKind.STARTED, "c", "", 5)


def test_events_are_asked_for_by_command_and_granted_by_ok():
    assert decode_client(pack({"type": "command", "kind": "act", "argument": "wave", "id": "1", "events": 1})) == \
        CommandRequest(CommandKind.ACT, "wave", "1", False, EVENTS_VERSION)
    assert msgpack.unpackb(encode(CommandRequest(CommandKind.ACT, "nod", "2", events=1)))["events"] == 1
    assert json.loads(encode(Ok("1", None, "s.c1", None, 1), text=True))["events"] == 1
    assert decode_server('{"type":"ok","id":"1","effective_frame":null,"command_id":"s.c1","latency_ms":null,'
                         '"events":1}').events == 1
    proto = ControlProtocol(lambda t: t == "good")
    proto.receive('{"type":"auth","token":"good"}')
    (d,) = proto.receive(pack({"type": "command", "kind": "act", "argument": "wave", "id": "9", "events": 1}))
    assert d == Dispatch(CommandRequest(CommandKind.ACT, "wave", "9", events=1), False)


def test_without_events_the_bytes_are_what_older_clients_always_got():
    """``events`` is left out at 0: a client that never asks sees the replies of before, byte for byte."""
    assert encode(Ok(""), text=True) == '{"type":"ok","id":"","effective_frame":null,"command_id":"","latency_ms":null}'
    assert msgpack.unpackb(encode(Ok("5", 40, "s.c2", 180.5))) == {
        "type": "ok", "id": "5", "effective_frame": 40, "command_id": "s.c2", "latency_ms": 180.5}
    assert "events" not in msgpack.unpackb(encode(CommandRequest(CommandKind.ACT, "wave", "1")))
    # an ok from an older server (no key) reads as no events
    assert decode_server(pack({"type": "ok", "id": "1", "command_id": "c"})).events == 0


@pytest.mark.parametrize("fields, match", [
    ({"event": "paused"}, "event: unknown event 'paused' \\(known: started, finished\\)"),
    ({"event": 1}, "field 'event' must be str, got int"),
    ({"event": "finished", "reason": "bored"}, "event finished: unknown reason 'bored' \\(known: played, replaced, "
                                               "cancelled, ignored, stopped\\)"),
    ({"event": "finished", "reason": None}, "field 'reason' must be str, got NoneType"),
    ({"event": "finished"}, "missing field 'reason'"),
    ({"event": "started", "reason": "played"}, "event started: a reason goes with finished only"),
    ({"event": "started", "frame": None}, "event started: field 'frame' must be the seq it was shown at, got null"),
    ({"event": "started", "frame": "12"}, "event started: field 'frame' must be a frame seq \\(int >= 0\\) or null, "
                                          "got '12'"),
    ({"event": "started", "frame": -1}, "must be a frame seq \\(int >= 0\\) or null, got -1"),
    ({"event": "started", "frame": True}, "must be a frame seq \\(int >= 0\\) or null, got True"),
    ({"event": "started", "command_id": 7}, "field 'command_id' must be str, got int"),
    ({"event": "started", "command_id": ...}, "missing field 'command_id'"),
    ({"event": "started", "dropped": -3}, "event started: field 'dropped' must be >= 0, got -3"),
    ({"event": "started", "dropped": 1.5}, "field 'dropped' must be int, got float"),
])
def test_wrong_events_are_refused_with_a_clear_error(fields, match):
    obj = {"type": "event", "command_id": "c1", "id": "1", "frame": 10, **fields}
    obj = {k: v for k, v in obj.items() if v is not ...}
    for data in (pack(obj), json.dumps(obj)):
        with pytest.raises(ProtocolError, match=match) as info:
            decode_server(data)
        assert info.value.code == "bad_message"


@pytest.mark.parametrize("events, match", [(True, "'events' must be int, got bool"), ("1", "must be int, got str"),
                                           (-1, "'events' must be 0 \\(none\\) or a version >= 1, got -1")])
def test_a_command_asking_for_events_wrongly_gets_an_error_with_its_id(events, match):
    with pytest.raises(ProtocolError, match=match) as info:
        decode_client(pack({"type": "command", "kind": "act", "argument": "wave", "id": "w", "events": events}))
    assert (info.value.code, info.value.id) == ("bad_message", "w")


def test_an_event_cannot_be_built_inconsistent():
    with pytest.raises(ValueError, match="a reason goes with finished"):
        Event(EventKind.FINISHED, "c", frame=3)
    with pytest.raises(ValueError, match="a reason goes with finished"):
        Event(EventKind.STARTED, "c", frame=3, reason=EndReason.PLAYED)
    with pytest.raises(ValueError, match="frame it was shown at is missing"):
        Event(EventKind.STARTED, "c")
