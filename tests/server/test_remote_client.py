""":class:`backend.remote.ControlClient` against a scripted backend on a real loopback websocket: what the real
server never sends on purpose -- a malformed event, events it had to drop, replies out of order -- is scripted here
(the scripts speak the protocol's real bytes, built with the protocol core). The real server is in
test_remote_events.py."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from backend.events import Command, CommandKind
from backend.remote import ControlClient, RemoteError
from backend.server.protocol import EndReason, Event, EventKind, Ok, Status, decode_client, encode

Script = Callable[[ServerConnection, list[Any]], Awaitable[None]]


async def scripted(script: Script) -> tuple[Any, str, list[Any]]:
    """A backend that answers auth, then runs ``script(ws, requests)`` (requests: what the client sent)."""
    requests: list[Any] = []

    async def handler(ws: ServerConnection) -> None:
        assert decode_client(await ws.recv()).type == "auth"
        await ws.send(encode(Ok("")))
        await script(ws, requests)
        await ws.wait_closed()

    server = await serve(handler, "127.0.0.1", 0)
    return server, f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/control", requests


async def next_request(ws: ServerConnection, requests: list[Any]) -> Any:
    req = decode_client(await ws.recv())
    requests.append(req)
    return req


async def test_replies_and_events_are_routed_and_bad_events_are_skipped_with_a_clear_line(caplog) -> None:
    async def script(ws: ServerConnection, requests: list[Any]) -> None:
        a = await next_request(ws, requests)
        b = await next_request(ws, requests)
        s = await next_request(ws, requests)
        assert (a.events, b.events) == (1, 1)
        await ws.send(encode(Status(s.id, {}, {"answered": "first"})))  # replies in another order than asked
        await ws.send(encode(Ok(b.id, None, "c-b", None, 1), text=True))
        await ws.send(encode(Ok(a.id, None, "c-a", None, 1)))
        await ws.send(json.dumps({"type": "event", "event": "paused", "command_id": "c-a", "frame": 3}))
        await ws.send(json.dumps({"type": "event", "event": "started", "command_id": "c-a", "frame": "3"}))
        await ws.send(encode(Event(EventKind.STARTED, "c-a", a.id, 3)))
        await ws.send(encode(Event(EventKind.FINISHED, "c-b", b.id, None, EndReason.REPLACED)))
        await ws.send(encode(Event(EventKind.FINISHED, "c-a", a.id, 51, EndReason.PLAYED)))

    server, url, _ = await scripted(script)
    caplog.set_level(logging.WARNING, logger="backend.remote")
    async with server, ControlClient(url, "tok") as control:
        async with asyncio.timeout(10):
            a, b, status = await asyncio.gather(control.command(Command(CommandKind.ACT, "wave")),
                                                control.command(Command(CommandKind.ACT, "nod")), control.status())
            assert status.server == {"answered": "first"}
            assert (a.command_id, b.command_id) == ("c-a", "c-b")
            assert (await a.started, await a.finished, a.reason) == (3, 51, EndReason.PLAYED)
            assert (await b.started, await b.finished, b.ended) == (None, None, "replaced")
    lines = [r.getMessage() for r in caplog.records]
    assert any("unknown event 'paused'" in line for line in lines), lines
    assert any("'frame' must be a frame seq" in line for line in lines), lines


async def test_dropped_events_give_up_on_what_is_in_flight() -> None:
    """The backend lost events of this connection (``dropped`` grew): nobody knows whose, so every other command
    in flight fails clearly (its director goes by the estimate) and the one the event is about goes on."""
    async def script(ws: ServerConnection, requests: list[Any]) -> None:
        a = await next_request(ws, requests)
        await ws.send(encode(Ok(a.id, None, "c-a", None, 1)))
        b = await next_request(ws, requests)
        await ws.send(encode(Ok(b.id, None, "c-b", None, 1)))
        await ws.send(encode(Event(EventKind.STARTED, "c-b", b.id, 9, dropped=2)))
        await ws.send(encode(Event(EventKind.FINISHED, "c-b", b.id, 40, EndReason.PLAYED, dropped=2)))

    server, url, _ = await scripted(script)
    async with server, ControlClient(url, "tok") as control:
        async with asyncio.timeout(10):
            a = await control.command(Command(CommandKind.ACT, "wave"))
            b = await control.command(Command(CommandKind.ACT, "nod"))
            assert (await b.started, await b.finished) == (9, 40)
            with pytest.raises(RemoteError, match="2 command events lost"):
                await a.finished


async def test_a_backend_that_goes_away_fails_requests_and_tickets_at_once() -> None:
    async def script(ws: ServerConnection, requests: list[Any]) -> None:
        a = await next_request(ws, requests)
        await ws.send(encode(Ok(a.id, None, "c-a", None, 1)))
        await next_request(ws, requests)  # a status it never answers
        await ws.close(1011, "backend crashed")

    server, url, _ = await scripted(script)
    async with server, ControlClient(url, "tok", timeout_s=30) as control:
        async with asyncio.timeout(10):
            a = await control.command(Command(CommandKind.ACT, "wave"))
            with pytest.raises(RemoteError, match=r"connection lost.*1011"):
                await control.status()  # answered by the loss, long before its 30 s timeout
            with pytest.raises(RemoteError, match="connection lost"):
                await a.started
            with pytest.raises(RemoteError, match="connection lost"):
                await control.command(Command(CommandKind.ACT, "nod"))
