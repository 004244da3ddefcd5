"""The Wan tier end to end at a tiny size on the CPU: the real server, engine, director and Wan generator
(a tiny random Self-Forcing-style DiT checkpoint, the tiny VAE and TAEHV of the reference fixtures, the tiny umT5),
frames received over the websocket; a prompt sent over /control reaches the generator as its embedding.
Also ``liveidol bench --model wan-1.3b --checkpoint random`` (random weights, the public VAE/TAEHV widths, a tiny
DiT and resolution)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import torch
from websockets.asyncio.client import connect

from backend.app import run_backend
from backend.cli import main
from backend.config import Config, EngineConfig, ServerConfig
from backend.model.wan.generator import build_wan_generator
from backend.server.auth import load_or_create_token
from backend.world.character import load_character
from backend.world.reference import reference_frame
from tests.model.wan.wan_kit import FIXTURES, TINY_TAEHV, TINY_VAE, tiny_model_config
from tests.server.server_helpers import frames_for, recv_msg

PROMPT = "she sings on a stage under pink lights"


@contextlib.asynccontextmanager
async def _serving(cfg: Config, gen: Any, character: Any) -> AsyncIterator[asyncio.Future]:
    """``run_backend`` on ``gen`` (the character's reference_image, resized, as the sink frame) until the block
    ends: yields the future of its server (set once it listens); then stops the backend and closes the generator."""
    stop = asyncio.Event()
    ready: asyncio.Future = asyncio.get_running_loop().create_future()
    reference = reference_frame(character, gen.native_size)
    backend = asyncio.create_task(run_backend(cfg, gen, reference, character, stop=stop, ready=ready.set_result))
    try:
        yield ready
    finally:
        stop.set()
        await backend
        gen.close()


async def test_serve_streams_the_wan_tier_and_takes_prompts(tmp_path: Path) -> None:
    cfg = dataclasses.replace(Config(), character="sakura", model=tiny_model_config(tmp_path),
                              engine=EngineConfig(fps=16.0, lookahead_frames=8),
                              server=ServerConfig(port=0, token_file=str(tmp_path / "token")))
    character = load_character(cfg.character)
    gen = build_wan_generator(cfg.model, character.prompts, vae_cfg=TINY_VAE, taehv_cfg=TINY_TAEHV)
    assert gen.prompts is not None
    async with _serving(cfg, gen, character) as ready:
        async with asyncio.timeout(120):
            server = await ready
            async with connect(server.url + "/stream", max_size=None) as ws:
                hello = await recv_msg(ws, 60)
                assert (hello.type, hello.width, hello.height, hello.fps) == ("hello", 48, 32, 16.0)
                frames = await frames_for(ws, 3.0)
                assert len(frames) >= 8 and {f.width for f in frames} == {48}
                token = load_or_create_token(cfg.server.token_file).value
                async with connect(server.url + "/control") as control:
                    await control.send(json.dumps({"type": "auth", "token": token}))
                    assert json.loads(await control.recv())["type"] == "ok"
                    await control.send(json.dumps({"type": "command", "kind": "prompt", "argument": PROMPT,
                                                   "id": "p1", "wait": False}))
                    assert json.loads(await control.recv())["type"] == "ok"
                while True:  # the prompt is embedded on the text thread, then the next chunk carries it
                    emb, ready_now = gen.prompts.lookup(PROMPT)
                    if ready_now and gen._conditions is not None and gen._conditions.text is emb:
                        break
                    await asyncio.sleep(0.05)
                assert len(await frames_for(ws, 1.0)) >= 4  # and frames keep coming


async def test_serve_the_live_setting_restarts_the_chunk_a_command_finds_in_the_making(tmp_path: Path) -> None:
    """The Wan tier's live setting (1-latent chunks, restart on command) through the real server: a command sent
    over /control while a chunk is being made (held there by PassGate: a CPU's timing cannot be relied on)
    stops that chunk, it is made again under the command, the command's frames reach the websocket client and
    the stream never stops."""
    from tests.engine.engine_helpers import PassGate

    cfg = dataclasses.replace(Config(), character="sakura", model=tiny_model_config(tmp_path, chunk_frames=1),
                              engine=EngineConfig(fps=16.0, lookahead_frames=8, min_steps=2, restart_on_command=True),
                              server=ServerConfig(port=0, token_file=str(tmp_path / "token")))
    character = load_character(cfg.character)
    gen = build_wan_generator(cfg.model, character.prompts, vae_cfg=TINY_VAE, taehv_cfg=TINY_TAEHV)
    gate = PassGate(gen, at_pass=3)  # steps=2: both denoising passes ran, the cache pass is next
    async with _serving(cfg, gen, character) as ready:
        async with asyncio.timeout(120):
            server = await ready
            engine = server.engine
            async with connect(server.url + "/stream", max_size=None) as ws:
                await recv_msg(ws, 60)  # hello
                assert len(await frames_for(ws, 2.0)) >= 4
                token = load_or_create_token(cfg.server.token_file).value
                async with connect(server.url + "/control") as control:
                    await control.send(json.dumps({"type": "auth", "token": token}))
                    assert json.loads(await control.recv())["type"] == "ok"
                    gate.armed.set()
                    assert await asyncio.to_thread(gate.caught.wait, 30)
                    await control.send(json.dumps({"type": "command", "kind": "act", "argument": "wave",
                                                   "id": "w1", "wait": False}))
                    assert json.loads(await control.recv())["type"] == "ok"
                    while not engine._interrupt.is_set():  # noqa: ASYNC110 - the director hands it to the engine
                        await asyncio.sleep(0.01)
                    gate.go.set()
                while engine.directive.action != "wave":  # noqa: ASYNC110 - shown once its chunk is made
                    await asyncio.sleep(0.02)
                assert engine.counters["chunks_restarted"] == 1 and engine.error is None
                assert len(await frames_for(ws, 1.0)) >= 4  # and frames keep coming


def test_bench_cli_runs_the_wan_tier_with_random_weights(capsys: pytest.CaptureFixture[str]) -> None:
    tiny = {"model.device": "cpu", "model.dit.dim": 32, "model.dit.ffn_dim": 64, "model.dit.num_heads": 2,
            "model.dit.num_layers": 2, "model.dit.text_dim": 32, "model.dit.text_len": 16,
            "model.autoencoder.native_width": 48, "model.autoencoder.native_height": 32,
            "model.output_width": 48, "model.output_height": 32, "character": "sakura"}
    sets = [a for k, v in tiny.items() for a in ("--set", f"{k}={v}")]
    assert main(["bench", "--model", "wan-1.3b", "--checkpoint", "random", "--seconds", "0.5", *sets]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["model_family"] == "wan" and result["decoder"] == "taehv" and result["checkpoint"] == "random"
    assert result["chunk_video_frames"] == 12 and result["frames"] >= 12 and result["fps"] > 0
    assert result["first_frame_latency_ms"] > 0 and result["peak_memory_mib"] > 0
    assert result["parameters"] > 100_000_000  # the public VAE's and TAEHV's widths (random weights)


def test_serve_without_weights_says_what_to_pull(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LIVEIDOL_MODELS", str(tmp_path))
    token = tmp_path / "token"  # the port (and its token) opens before the model loads: keep it here
    assert main(["serve", "--model", "wan-1.3b", "--character", "sakura", "--port", "0",
                 "--set", f"server.token_file={token}"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if not line.startswith("LiveIdol control token created")]
    assert len(lines) == 1 and "run `liveidol models pull self-forcing-dmd`" in lines[0]


def test_the_wan_preset_builds_the_wan21_1p3b_dit_exactly() -> None:
    """`--model wan-1.3b` gives a DiT whose state dict is Wan2.1-T2V-1.3B's (825 keys, their shapes; the fixture
    lists them from the reference code) plus only LiveIdol's optional extras, which Wan checkpoints lack."""
    from backend.cli import _preset
    from backend.config import load_config
    from backend.model.dit import EXTRA_PREFIXES, CausalDiT

    cfg = load_config(None, _preset("wan-1.3b"))
    assert (cfg.model.family, cfg.model.chunk_frames, cfg.model.context_noise, cfg.model.guidance) == ("wan", 3, 0.0, 0.0)
    with torch.device("meta"):
        dit = CausalDiT(cfg.model.dit)
    ours = {k: list(v.shape) for k, v in dit.state_dict().items() if not k.startswith(EXTRA_PREFIXES)}
    lines = (FIXTURES / "wan_causal_ref" / "key_shapes_1p3b.txt").read_text().splitlines()
    theirs = {k: json.loads(shape) for k, shape in (line.split("\t") for line in lines if line.strip())}
    assert len(theirs) == 825 and ours == theirs
    assert sum(v.numel() for k, v in dit.state_dict().items() if not k.startswith(EXTRA_PREFIXES)) == 1_418_996_800
