"""The real server on loopback with a real engine (real tiny generator) and real websockets clients."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import msgpack
import numpy as np
import pytest
from websockets.asyncio.client import connect

from backend.config import EngineConfig, ServerConfig
from backend.engine import Engine
from backend.server import Server, ServerError
from tests.server.server_helpers import FPS, TOKEN, close_code, control, frames_for, recv_msg


def http_get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


async def test_stream_sends_hello_then_raw_rgba_frames(running):
    _engine, server = running
    async with connect(server.url + "/stream") as ws:
        hello = await recv_msg(ws)
        assert (hello.type, hello.protocol, hello.width, hello.height, hello.fps, hello.format) == \
            ("hello", 1, 64, 36, FPS, "rgba")
        frames = await frames_for(ws, 1.0)
    assert len(frames) >= 0.7 * FPS
    f = frames[-1]
    assert (f.width, f.height, f.format) == (64, 36, "rgba") and len(f.data) == 64 * 36 * 4
    assert f.pts == pytest.approx(f.seq / FPS)
    rgba = np.frombuffer(f.data, np.uint8).reshape(36, 64, 4)
    assert rgba[..., 3].max() > 0  # the generator's alpha comes through


async def test_stream_jpeg_on_request_and_bad_query_refused(running):
    import simplejpeg

    _, server = running
    async with connect(server.url + "/stream?format=jpeg&audio=0") as ws:
        assert (await recv_msg(ws)).format == "jpeg"
        (f, *_) = await frames_for(ws, 0.5)
        assert f.format == "jpeg" and simplejpeg.decode_jpeg(f.data).shape == (36, 64, 3)
    async with connect(server.url + "/stream?format=png") as ws:
        err = await recv_msg(ws)
        assert (err.type, err.code) == ("error", "bad_request") and "png" in err.message
        assert await close_code(ws) == 1008


async def test_wrong_token_closes_4001_and_commands_before_auth_close_4003(running):
    _, server = running
    async with connect(server.url + "/control") as ws:
        await ws.send(json.dumps({"type": "auth", "token": "nope"}))
        assert await close_code(ws) == 4001
    async with connect(server.url + "/control") as ws:
        await ws.send(json.dumps({"type": "command", "kind": "act", "argument": "wave"}))
        assert await close_code(ws) == 4003
    assert server.stats()["auth_failures"] == 1


async def test_command_over_control_interrupts_the_stream(running):
    engine, server = running
    async with connect(server.url + "/stream") as stream:
        await recv_msg(stream)
        ctl = await control(server.url)
        await ctl.send(msgpack.packb({"type": "command", "kind": "act", "argument": "wave", "id": "w1", "wait": True}))
        frames = await frames_for(stream, 1.2)
        ok = await recv_msg(ctl)
        await ctl.close()
    assert (ok.type, ok.id) == ("ok", "w1") and ok.command_id and ok.effective_frame is not None
    assert 0 < ok.latency_ms < 2000
    new = [f for f in frames if f.directive_id == ok.command_id]
    assert new and new[0].seq == ok.effective_frame
    assert all(f.directive_id == ok.command_id for f in frames if f.seq >= ok.effective_frame)
    assert engine.status()["directive"]["action"] == "wave"


async def test_bad_messages_get_errors_oversized_closes_1009_and_others_keep_streaming(running):
    _, server = running
    async with connect(server.url + "/stream") as stream:
        await recv_msg(stream)
        ctl = await control(server.url)
        await ctl.send(b"\xc1 not msgpack")
        err = await recv_msg(ctl)
        assert (err.type, err.code) == ("error", "bad_message")
        await ctl.send('{"type": "explode", "id": "x"}')
        err = json.loads(await ctl.recv())
        assert (err["code"], err["id"]) == ("bad_message", "x") and "explode" in err["message"]
        await ctl.send(json.dumps({"type": "command", "kind": "act", "argument": "moonwalk", "id": "m"}))
        err = json.loads(await ctl.recv())
        assert (err["type"], err["code"], err["id"]) == ("error", "bad_command", "m")
        assert "moonwalk" in err["message"]
        await ctl.send(json.dumps({"type": "status", "id": "s"}))  # still connected after all that
        st = json.loads(await ctl.recv())
        assert st["type"] == "status" and st["engine"]["commands_rejected"] == 1
        assert st["server"]["bad_messages"] == 2
        await ctl.send(b"\x00" * 5000)  # over max_message_bytes = 4096
        assert await close_code(ctl) == 1009
        frames = await frames_for(stream, 0.5)
    assert len(frames) >= 0.3 * FPS


async def test_state_topic_pushes_director_queue_changes(running):
    _, server = running
    ctl = await control(server.url)
    await ctl.send(json.dumps({"type": "subscribe", "topics": ["state"], "id": "sub"}))
    assert json.loads(await ctl.recv())["type"] == "ok"
    first = json.loads(await ctl.recv())
    assert first == {"type": "state", "now": None, "next": []}
    server.test_state["now"] = {"action": "wave", "user": "bob"}
    server.test_state["next"] = [{"action": "heart", "user": "amy"}]
    async with asyncio.timeout(3):
        pushed = json.loads(await ctl.recv())
    assert pushed == {"type": "state", "now": {"action": "wave", "user": "bob"},
                      "next": [{"action": "heart", "user": "amy"}]}
    await ctl.close()


async def test_healthz_and_metrics(running):
    _engine, server = running
    async with connect(server.url + "/stream"):
        base = server.url.replace("ws://", "http://")
        code, _, body = await asyncio.to_thread(http_get, base + "/healthz")
        assert (code, body) == (200, "ok\n")
        await asyncio.sleep(0.3)
        code, ctype, text = await asyncio.to_thread(http_get, base + "/metrics")
    assert code == 200 and ctype.startswith("text/plain; version=0.0.4")
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    assert 0.5 * FPS < values["liveidol_fps"] < 1.2 * FPS
    assert values['liveidol_clients{endpoint="stream"}'] == 1
    assert values['liveidol_frames_total{kind="shown"}'] > 0
    assert "liveidol_buffer_frames" in values and "liveidol_client_frames_dropped_total" in values
    assert 'liveidol_command_latency_seconds{quantile="0.95"}' in values
    code, _, _ = await asyncio.to_thread(http_get, base + "/nope")
    assert code == 404


async def test_healthz_503_when_engine_not_running(gen, server_cfg):
    engine = Engine(EngineConfig(fps=FPS), gen, None)  # never started
    async with Server(server_cfg, engine, token=TOKEN) as server:
        code, _, _body = await asyncio.to_thread(http_get, server.url.replace("ws://", "http://") + "/healthz")
    assert code == 503


async def test_twenty_clients_all_get_the_stream(running):
    _, server = running
    clients = [await connect(server.url + "/stream?audio=0") for _ in range(20)]
    try:
        for ws in clients:
            await recv_msg(ws)
        counts = await asyncio.gather(*(frames_for(ws, 1.5) for ws in clients))
    finally:
        for ws in clients:
            await ws.close()
    got = [len(c) for c in counts]
    assert min(got) >= 0.6 * 1.5 * FPS, got
    assert server.stats()["stream_connections"] >= 20


def test_non_loopback_host_needs_allow_remote(gen):
    engine = Engine(EngineConfig(), gen, None)
    with pytest.raises(ServerError, match="allow_remote"):
        Server(ServerConfig(host="0.0.0.0"), engine, token=TOKEN)
    Server(ServerConfig(host="0.0.0.0", allow_remote=True), engine, token=TOKEN)  # constructed, not bound
    Server(ServerConfig(host="::1"), engine, token=TOKEN)


async def test_commands_at_five_a_second_over_control_keep_the_picture_moving():
    """Cycling wave/heart/nod/like/bow at 5 commands a second over a real /control socket while a /stream
    client watches. Generation is made slower than real time on purpose (``SlowStandIn``, the engine tests'
    stand-in: the real model cannot be made reliably slow on a shared machine; 0.3 s of work per 0.32 s of
    video, as on the 2-core CPU). Before: every command threw away the chunk being made and the picture froze
    (1 distinct image, 0 commands shown). Now new frames keep coming and commands reach the screen."""
    from tests.engine.engine_helpers import SlowStandIn

    stand_in = SlowStandIn(seconds_per_step=0.15)
    cfg = EngineConfig(fps=25.0, lookahead_frames=8, min_steps=2, min_chunk_frames=2)
    engine = Engine(cfg, stand_in, None, max_steps=2, max_chunk_frames=2)
    cycle = ["wave", "heart", "nod", "like", "bow"]
    async with engine, Server(ServerConfig(port=0), engine, token=TOKEN) as server:
        await asyncio.wait_for(engine.wait_started(), 60)
        async with connect(server.url + "/stream") as stream:
            await recv_msg(stream)
            ctl = await control(server.url)
            watching = asyncio.ensure_future(frames_for(stream, 4.5))
            ids = []
            for i in range(20):
                await ctl.send(json.dumps({"type": "command", "kind": "act", "argument": cycle[i % 5],
                                           "id": str(i)}))
                ids.append(json.loads(await ctl.recv())["command_id"])
                await asyncio.sleep(0.2)
            frames = await watching
            await ctl.close()
        metrics = (await asyncio.to_thread(http_get, server.url.replace("ws://", "http://") + "/metrics"))[2]
    w, h = stand_in.output_size
    storm = [f for f in frames if f.pts >= frames[0].pts + 1.0]  # from the 6th command on
    images = {int(np.frombuffer(f.data, np.uint8).reshape(h, w, 4)[0, 0, 0]) for f in storm}
    shown = {f.directive_id for f in frames} & set(ids)
    assert len(images) >= 16, f"the picture froze: {len(images)} distinct images in {len(storm)} frames"
    assert len(shown) >= 2, f"commands shown: {len(shown)} of {len(ids)}"
    assert "liveidol_commands_coalesced_total" in metrics
