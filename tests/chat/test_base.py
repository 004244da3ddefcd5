"""What the bridges share (chat_bridges.base): one pump, one HTTP helper, one backoff, for every platform."""

from __future__ import annotations

import asyncio
import inspect
import random

import pytest

from backend.config import BilibiliConfig, TwitchConfig
from backend.events import Deletion
from chat_bridges import base
from chat_bridges.base import Backoff, BridgeStatus, EventPump
from chat_bridges.bilibili import client as bilibili_client
from chat_bridges.console.client import ConsoleBridge
from chat_bridges.twitch import client as twitch_client


def test_backoff_is_full_jitter_as_documented() -> None:
    """Before: the docstring said full jitter while the code drew from [cap/2, cap] (equal jitter)."""
    backoff = Backoff(base_s=1.0, max_s=8.0, rng=random.Random(7))
    delays = []
    for _ in range(200):
        backoff.reset()
        backoff.attempt = 3  # cap = min(8, 1 * 2**3) = 8
        delays.append(backoff.next_delay())
    assert all(0.0 <= d <= 8.0 for d in delays)
    assert min(delays) < 1.0 and max(delays) > 7.0  # the whole [0, cap] range, not [cap/2, cap]
    assert "full jitter" in (Backoff.__doc__ or "")


def test_one_copy_of_the_pump_http_and_backoff() -> None:
    twitch = twitch_client.TwitchBridge(TwitchConfig(channel="dallas"), env={})
    bili = bilibili_client.BilibiliBridge(BilibiliConfig(room_id=1))
    console = ConsoleBridge(lines=None)
    for bridge in (twitch, bili, console):
        assert type(bridge._pump) is EventPump
        assert isinstance(bridge.status, BridgeStatus)
    assert twitch_client.urllib_http is base.urllib_http and bilibili_client.urllib_http is base.urllib_http
    for module in (twitch_client, bilibili_client):
        source = inspect.getsource(module)
        assert "class _Pump" not in source and "def urllib_http" not in source and "class Backoff" not in source


async def test_pump_drops_when_full_counts_in_status_and_reports_the_error() -> None:
    status = BridgeStatus("test", "chan")
    pump = EventPump("test", 2, status=status)
    ready = asyncio.Event()

    async def run() -> None:
        for i in range(4):
            pump.put(Deletion("test", "chan", str(i)))
        ready.set()
        raise RuntimeError("login refused")

    pump.start(run())
    await ready.wait()
    got = []
    with pytest.raises(RuntimeError, match="login refused"):
        async for event in pump.events():
            got.append(event.message_id)
    assert got == ["1"]  # queue of 2: the end marker makes room for itself by dropping the oldest
    assert pump.dropped == 2 and status.dropped == 2
    assert (status.state, status.error) == ("failed", "login refused")
