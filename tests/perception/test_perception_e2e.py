"""The idol perceives, end to end: a loopback OBS (a real obs-websocket v5 server on 127.0.0.1) serves real
pictures as the camera source's screenshots -> the real ObsCamera (obsws-python) -> the real MediaPipe models
and analysis in the Perception service's worker thread -> reactions -> the real Director -> the real Engine
(the tiny real random generator at 20 fps) -> frames whose directive id is the reaction's command.

Nothing is mocked; every clock is real. The server serves one picture per screenshot, in order, so the
clips play at the service's own pace however busy the machine is.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest

from backend.config import DirectorConfig, EngineConfig, ObsConfig, PerceptionConfig
from backend.director.director import Director
from backend.engine import Engine
from backend.events import VideoFrame
from backend.perception.camera import open_camera
from backend.perception.service import Perception
from tests.server.server_helpers import FPS, real_generator

from .conftest import clip, need, picture
from .obs_ws_server import ObsWsServer

DEADLINE_S = 60.0  # the whole suite may share the 2 cores


def scene(name: str, n: int = 1) -> list[tuple[str, Any]]:
    return [(name, picture(name))] * n


def clip_of(name: str, frames: slice = slice(None)) -> list[tuple[str, Any]]:
    return [(f"{name}/{f}", rgb) for f, rgb in clip(name)[frames]]


@pytest.fixture(scope="module")
def gen():
    return real_generator()


async def _record(engine: Engine, shown: dict[str, float]) -> None:
    sub = engine.subscribe(audio=False)
    try:
        async for item in sub:
            if isinstance(item, VideoFrame) and item.directive_id not in shown:
                shown[item.directive_id] = time.monotonic()
    finally:
        sub.close()


@contextlib.asynccontextmanager
async def idol_watching(gen: Any, server: Any, cfg: PerceptionConfig, password: str = "secret"):
    """Engine + director + perception on ``server``'s port (an ObsWsServer, or a real OBS's ObsProcess)."""
    engine = Engine(EngineConfig(fps=FPS, lookahead_frames=8), gen, None, max_steps=2, max_chunk_frames=1)
    shown: dict[str, float] = {}
    decisions: list[Any] = []
    async with engine:
        await asyncio.wait_for(engine.wait_started(), 10)
        async with Director(DirectorConfig(), engine.submit) as director:
            async def react(reaction: Any) -> Any:
                d = await director.handle_reaction(reaction.kind, reaction.argument, reason=reaction.name,
                                                   max_wait_s=cfg.max_wait_s)
                decisions.append((reaction, d))
                return d

            port = server.port if hasattr(server, "port") else server.ws_port
            obs = ObsConfig(host="127.0.0.1", port=port, password=password)
            recorder = asyncio.create_task(_record(engine, shown))
            try:
                async with Perception(cfg, lambda: open_camera(cfg, obs), react) as perception:
                    yield perception, director, engine, shown, decisions
            finally:
                recorder.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await recorder
    assert engine.error is None


async def wait_for(what: str, done: Any, state: Any) -> None:
    try:
        async with asyncio.timeout(DEADLINE_S):
            while not done():  # noqa: ASYNC110 - polling a worker thread and the engine
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(f"timed out waiting for {what}: {state()}")


async def test_each_reaction_reaches_the_engine(gen):
    need("mediapipe")
    cfg = PerceptionConfig(enabled=True, obs_source="Webcam", fps=8.0, reaction_cooldown_s=0.0,
                           global_cooldown_s=0.0, max_wait_s=60.0)
    neutral = clip_of("neutral_then_smile", slice(0, 4))
    script = (neutral + clip_of("wave") + scene("hands/other_stop.jpg", 2)
              + scene("hands/heart_4.jpg", 3) + neutral
              + scene("hands/thumbs_up_2.jpg", 3) + neutral
              + clip_of("sad_then_happy", slice(0, 5)) + neutral
              + clip_of("neutral_then_smile", slice(4, None)))
    with ObsWsServer(source="Webcam", password="secret") as server:
        server.play(script)
        async with idol_watching(gen, server, cfg) as (perception, _director, engine, shown, decisions):
            want = {"wave", "heart", "thumbs_up", "sad", "smile"}

            def state() -> Any:
                return {"reactions": [r.name for r in perception.reactions], "stats": perception.stats(),
                        "decisions": [(r.name, d.decision, d.reason) for r, d in decisions],
                        "engine": engine.status()["directive"]}

            await wait_for("every reaction decided", lambda: want <= {r.name for r, _ in decisions}, state)
            for _reaction, decision in decisions:
                assert decision.decision in ("queued", "immediate"), state()
            ids = {r.name: d.command_id for r, d in reversed(decisions) if r.name in want}  # first of each
            await wait_for("every reaction on screen", lambda: all(i in shown for i in ids.values()), state)
            firsts = list(dict.fromkeys(r.name for r, _ in decisions if r.name in want))
            assert firsts == ["wave", "heart", "thumbs_up", "sad", "smile"], state()  # in the script's order
            # what the engine played under those ids: the reactions' actions and emotion, shown on frames
            played = {r.command_id: (r.kind, r.argument, r.outcome, r.source) for r in engine.session.log.records()}
            assert [played[ids[n]] for n in ("wave", "heart", "thumbs_up", "sad", "smile")] == [
                ("act", "wave", "shown", "camera"), ("act", "heart", "shown", "camera"),
                ("act", "like", "shown", "camera"), ("emotion", "sad", "shown", "camera"),
                ("act", "smile", "shown", "camera")], played
            assert engine.status()["healthy"] and perception.errors == 0, state()
            assert perception.pictures >= len(script) - 5, state()


async def test_camera_trouble_is_logged_and_the_stream_goes_on(gen, caplog):
    need("mediapipe")
    cfg = PerceptionConfig(enabled=True, obs_source="Webcam", fps=8.0)
    with ObsWsServer(source="Webcam", password="secret") as server:
        server.show("nobody", None)  # the source is missing in OBS
        async with idol_watching(gen, server, cfg) as (perception, _, engine, _shown, _):
            await wait_for("an error", lambda: perception.errors >= 1, perception.stats)
            server.show("smile", picture("faces/happy_1.jpg"))
            await wait_for("pictures again", lambda: perception.pictures >= 2, perception.stats)
            assert engine.healthy
    lines = [r.getMessage() for r in caplog.records if r.name == "backend.perception.service"]
    assert any("OBS source 'Webcam': screenshot failed" in line and "code 600" in line for line in lines), lines
