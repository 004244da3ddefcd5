"""Start-up: the port opens and streams the "starting" card before the model is loaded; the compute level
that held real time is remembered and the next start begins there.

The real ``backend.app.run_backend`` (real Server on a free loopback port, real Engine, real Director) with
the real micro model built by ``generator_loading``; the one thing injected is a gate the load waits on, so
the test can look at the server while the model is (still) loading, however fast this machine is.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from websockets.asyncio.client import connect

from backend.app import compute_key, generator_loading, run_backend
from backend.config import Config, EngineConfig, ServerConfig
from backend.engine.card import starting_card
from backend.engine.compute import ComputeMemory
from backend.engine.engine import Loaded, Loading
from backend.model.checkpoint import CheckpointError
from tests.model.model_kit import micro_config

DEADLINE_S = 30.0


def _cfg(tmp_path: Path) -> Config:
    return dataclasses.replace(Config(), model=micro_config(), engine=EngineConfig(fps=20.0, lookahead_frames=8),
                               server=ServerConfig(host="127.0.0.1", port=0, token_file=str(tmp_path / "token")))


def healthz(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url.replace("ws://", "http://") + "/healthz", timeout=5) as r:
            return r.status, r.read().decode().strip()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode().strip()


@contextlib.asynccontextmanager
async def backend(cfg: Config, loading: Loading, memory: ComputeMemory) -> AsyncIterator[Any]:
    stop = asyncio.Event()
    ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run_backend(cfg, loading, None, None, stop=stop, ready=ready.set_result,
                                           remember_level=memory.remember))
    try:
        async with asyncio.timeout(DEADLINE_S):
            await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
        yield ready.result()
    finally:
        stop.set()
        async with asyncio.timeout(DEADLINE_S):
            await task


def gated(loading: Loading, gate: threading.Event) -> Loading:
    def load() -> Loaded:
        assert gate.wait(DEADLINE_S), "the test never opened the gate"
        return loading.load()

    return Loading(load, loading.output_size)


async def test_port_serves_the_starting_card_before_the_model_is_loaded(tmp_path) -> None:
    cfg = _cfg(tmp_path)
    memory = ComputeMemory(tmp_path / "compute.json")
    gate = threading.Event()
    async with backend(cfg, gated(generator_loading(cfg, memory), gate), memory) as server:
        assert await asyncio.to_thread(healthz, server.url) == (503, "starting")
        async with connect(server.url + "/stream") as ws:
            hello = msgpack.unpackb(await ws.recv())
            assert (hello["type"], hello["width"], hello["height"]) == ("hello", 48, 24)
            cards = []
            while len(cards) < 3:
                msg = msgpack.unpackb(await ws.recv())
                if msg["type"] == "frame":
                    cards.append(msg)
            phases = [starting_card(48, 24, phase=p).tobytes() for p in range(3)]
            assert all(c["data"] in phases and c["directive_id"] == "" for c in cards)
            assert len({c["data"] for c in cards}) >= 2  # the dots move: the picture is not frozen
            assert server.engine.status()["starting"] and not server.engine.healthy
            gate.set()  # now the model loads; generated frames follow on the same clock
            async with asyncio.timeout(DEADLINE_S):
                while True:
                    msg = msgpack.unpackb(await ws.recv())
                    if msg["type"] == "frame" and msg["data"] not in phases:
                        break
            assert msg["seq"] > cards[-1]["seq"] and msg["pts"] == pytest.approx(msg["seq"] / 20.0)
        assert (await asyncio.to_thread(healthz, server.url))[0] == 200


async def test_a_load_error_stops_the_backend_with_it(tmp_path) -> None:
    cfg = _cfg(tmp_path)
    memory = ComputeMemory(tmp_path / "compute.json")
    bad = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, checkpoint=str(tmp_path / "missing.pt")))
    stop = asyncio.Event()
    with pytest.raises(CheckpointError, match=r"missing\.pt"):
        async with asyncio.timeout(DEADLINE_S):
            await run_backend(bad, generator_loading(bad, memory), None, None, stop=stop)


async def test_the_next_start_begins_at_the_remembered_compute_level(tmp_path, monkeypatch) -> None:
    import backend.engine.engine as engine_module

    monkeypatch.setattr(engine_module, "REMEMBER_AFTER_CHUNKS", 3)  # remember after 3 steady chunks, not 32
    cfg = _cfg(tmp_path)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, steps=3),
                              engine=dataclasses.replace(cfg.engine, min_steps=1, min_chunk_frames=1))
    path = tmp_path / "compute.json"
    memory = ComputeMemory(path)
    async with backend(cfg, generator_loading(cfg, memory), memory) as server:
        await server.engine.wait_loaded()
        # the micro model holds real time with room to spare: from the CPU floor (1 step, 1 latent frame)
        # the policy raises the level and, once it held, it is remembered
        assert memory.key  # set by the load: device, threads, model, sizes
        async with asyncio.timeout(DEADLINE_S):
            while memory.recall() is None or memory.recall() == (1, 1):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        remembered = memory.recall()
    assert remembered is not None and remembered > (1, 1)
    again = ComputeMemory(path)
    async with backend(cfg, generator_loading(cfg, again), again) as server:
        await server.engine.wait_loaded()
        assert again.key == memory.key
        assert server.engine.policy.level == remembered


def test_compute_memory_file_survives_junk(tmp_path) -> None:
    path = tmp_path / "c" / "compute.json"
    mem = ComputeMemory(path, key="k1")
    assert mem.recall() is None
    mem.remember(2, 1)
    assert ComputeMemory(path, key="k1").recall() == (2, 1) and ComputeMemory(path, key="k2").recall() is None
    path.write_bytes(b"\xff not json")
    assert ComputeMemory(path, key="k1").recall() is None  # junk is ignored: it is only a head start
    ComputeMemory(path, key="k1").remember(3, 2)
    assert ComputeMemory(path, key="k1").recall() == (3, 2)


def test_compute_key_names_device_model_and_sizes() -> None:
    from backend.app import build_generator

    cfg = dataclasses.replace(Config(), model=micro_config())
    gen, _, _ = build_generator(cfg)
    key = compute_key(cfg, gen)
    assert "cpu" in key and "[48,24]" in key and "random" in key
    other = dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, fps=30.0))
    assert compute_key(other, gen) != key


def test_starting_card_is_drawn_at_any_size() -> None:
    for w, h in ((960, 540), (48, 24), (16, 16)):
        card = starting_card(w, h, phase=1)
        assert card.shape == (h, w, 4) and card.dtype == np.uint8
        assert card[..., 3].max() > 0 and (card[..., :3] == 255).all(axis=-1).any()  # panel and white ink
    assert not np.array_equal(starting_card(96, 54, phase=0), starting_card(96, 54, phase=1))
    with pytest.raises(ValueError, match="16x16"):
        starting_card(8, 8)
