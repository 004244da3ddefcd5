"""The idol watches a real OBS: OBS Studio under Xvfb (tests/obs/obs_harness.py) shows real pictures in an image
source named "Webcam"; the real ObsCamera takes its screenshots over OBS's own obs-websocket (with a password),
and the real perception, director and engine (tiny real generator) answer: heart hands -> a heart, a thumbs-up
-> a thumbs-up, a smile -> a smile. The test changes the picture the way a streamer changes pose, by setting
the image source's file."""

from __future__ import annotations

import asyncio

import pytest

from backend.config import PerceptionConfig
from tests.obs.obs_harness import require_obs, running_obs

from .conftest import FIXTURES, need
from .test_perception_e2e import DEADLINE_S, gen, idol_watching  # noqa: F401 - gen is the generator fixture

pytestmark = [pytest.mark.obs, pytest.mark.slow]


@pytest.fixture(scope="module")
def obs(tmp_path_factory):
    require_obs("the real-OBS perception test")
    with running_obs(tmp_path_factory.mktemp("obs-perception"), width=640, height=360, password="camera-pw") as obs:
        yield obs


async def test_real_obs_camera_source_drives_reactions(obs, gen):  # noqa: F811 - the fixture
    need("mediapipe")
    proc, client = obs
    first = FIXTURES / "clips" / "neutral_then_smile" / "000.jpg"
    client.create_input("Scene", "Webcam", "image_source", {"file": str(first)}, True)
    cfg = PerceptionConfig(enabled=True, obs_source="Webcam", fps=6.0, reaction_cooldown_s=0.0,
                           global_cooldown_s=0.0, max_wait_s=60.0)
    steps = [("heart", "hands/heart_4.jpg"), ("thumbs_up", "hands/thumbs_up_2.jpg"),
             ("smile", "clips/neutral_then_smile/040.jpg")]
    async with idol_watching(gen, proc, cfg, password="camera-pw") as (perception, _, engine, shown, decisions):
        for name, file in steps:
            await asyncio.to_thread(client.set_input_settings, "Webcam", {"file": str(first)}, True)
            await asyncio.sleep(0.8)  # the streamer is back to neutral for a moment
            await asyncio.to_thread(client.set_input_settings, "Webcam", {"file": str(FIXTURES / file)}, True)
            try:
                async with asyncio.timeout(DEADLINE_S):
                    while not any(r.name == name for r, _ in decisions):  # noqa: ASYNC110 - a worker thread
                        await asyncio.sleep(0.05)
            except TimeoutError:
                pytest.fail(f"no {name} reaction: {[r.name for r in perception.reactions]} {perception.stats()}")
        ids = {r.name: d.command_id for r, d in reversed(decisions)}
        async with asyncio.timeout(DEADLINE_S):
            while not all(ids[n] in shown for n, _ in steps):  # noqa: ASYNC110 - the engine's frames
                await asyncio.sleep(0.05)
        played = {r.command_id: (r.argument, r.outcome) for r in engine.session.log.records()}
        assert [played[ids[n]] for n, _ in steps] == [("heart", "shown"), ("like", "shown"), ("smile", "shown")]
        assert perception.errors == 0
