"""The console bridge: its line language (sans-I/O) and the bridge over an async line source and a real pipe."""

from __future__ import annotations

import asyncio
import os

import pytest

from backend.events import Ban, ChatMessage, Deletion, PaidMessage, Role
from chat_bridges.console import ConsoleBridge, ConsoleInputError, ConsoleSession
from chat_bridges.console.client import stdin_lines
from chat_bridges.console.protocol import HELP, Note


def session() -> ConsoleSession:
    return ConsoleSession(clock=lambda: 123.0)


def test_plain_lines_are_the_broadcaster():
    s = session()
    msg = s.feed("!dance 🎉\n")
    assert msg == ChatMessage("console", "console", "console:streamer", "streamer", "!dance 🎉",
                              message_id="console-1", role=Role.BROADCASTER, timestamp=123.0)
    assert s.feed("   ") is None
    assert s.feed("//slash text").text == "/slash text"


def test_as_role_one_shot_and_sticky():
    s = session()
    assert s.feed("/as viewer !wave").role is Role.VIEWER
    assert s.feed("still me").role is Role.BROADCASTER  # one-shot did not stick
    note = s.feed("/as mod")
    assert isinstance(note, Note) and "moderator" in note.text
    assert s.feed("!skip").role is Role.MODERATOR
    assert isinstance(s.feed("/user alice"), Note)
    msg = s.feed("/as sub hi")
    assert (msg.user_name, msg.user_id, msg.role) == ("alice", "console:alice", Role.SUBSCRIBER)
    assert s.feed("/AS VIP x").role is Role.VIP


def test_paid_and_moderation_commands():
    s = session()
    bits = s.feed("/bits 100 !wave")
    assert isinstance(bits, PaidMessage) and (bits.kind, bits.value_cents, bits.text) == ("bits", 100, "!wave")
    redeem = s.feed("/redeem !dance")
    assert (redeem.kind, redeem.value_cents, redeem.message_id) == ("redemption", 0, "console-2")
    assert s.feed("/delete") == Deletion("console", "console", "console-2")
    assert s.feed("/delete console-1") == Deletion("console", "console", "console-1")
    assert s.feed("/ban troll 600") == Ban("console", "console", "console:troll", "troll", 600.0)
    assert s.feed("/ban troll") == Ban("console", "console", "console:troll", "troll", 0.0)
    assert s.feed("/clear") == Ban("console", "console", "")
    assert s.feed("/help") == Note(HELP) and "/bits" in HELP


@pytest.mark.parametrize(("line", "error"), [
    ("/as king hi", "unknown role 'king'"),
    ("/as", "usage: /as"),
    ("/bits lots !x", "positive whole number"),
    ("/bits 0", "positive whole number"),
    ("/redeem", "usage: /redeem"),
    ("/ban", "usage: /ban"),
    ("/ban troll soon", "seconds='soon'"),
    ("/ban troll -5", ">= 0"),
    ("/user two words", "one word"),
    ("/delete", "nothing was sent"),
    ("/frobnicate", "unknown command /frobnicate"),
])
def test_bad_lines_raise_clear_errors(line, error):
    with pytest.raises(ConsoleInputError, match=error):
        session().feed(line)


async def lines(*items: str):
    for item in items:
        yield item


async def test_bridge_over_async_lines_prints_errors_and_continues():
    out: list[str] = []
    async with ConsoleBridge(lines=lines("!dance", "/as viewer", "/oops", "hi", "/delete"), output=out.append) as c:
        events = [e async for e in c.events()]
        assert await c.send_reply("thanks!", reply_to="console-2")
    assert [type(e) for e in events] == [ChatMessage, ChatMessage, Deletion]
    assert [e.role for e in events[:2]] == [Role.BROADCASTER, Role.VIEWER]
    assert events[2].message_id == "console-2"
    assert out[0] == "[console-1]"
    assert any(line.startswith("error: unknown command /oops") for line in out)
    assert out[-1] == "idol @console-2: thanks!"
    assert await c.send_reply("closed") is False


async def test_events_needs_the_context():
    with pytest.raises(RuntimeError, match="async with"):
        async for _ in ConsoleBridge(lines=lines("x")).events():
            pass


async def test_stdin_lines_reads_a_real_pipe_without_blocking():
    read_fd, write_fd = os.pipe()
    with os.fdopen(read_fd, "r", encoding="utf-8") as stream:
        bridge = ConsoleBridge(lines=stdin_lines(stream), output=lambda _: None)
        async with bridge:
            events = bridge.events()
            first = asyncio.ensure_future(anext(events))
            await asyncio.sleep(0.05)
            assert not first.done()  # waiting on the pipe, the loop still runs
            os.write(write_fd, "/as vip 踊って\n!wave\n".encode())
            os.close(write_fd)
            got = [await asyncio.wait_for(first, 5)] + [e async for e in events]
    assert [(e.text, e.role) for e in got] == [("踊って", Role.VIP), ("!wave", Role.BROADCASTER)]


async def test_stdin_lines_reads_a_regular_file(tmp_path):
    path = tmp_path / "script.txt"
    path.write_text("!dance\n/bits 5\n", encoding="utf-8")
    with path.open(encoding="utf-8") as stream:
        got = [line async for line in stdin_lines(stream)]
    assert got == ["!dance", "/bits 5"]
