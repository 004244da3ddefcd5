"""The durable input log and `liveidol replay`, with real parts only:

* a real `liveidol`-style backend (engine + server, the real tiny random generator) in a CHILD PROCESS,
  flooded with commands over a real /control socket, then killed with SIGKILL: every command the server
  acknowledged is in the log (before: records were written only once shown or rejected, so all were lost),
  with ids unique across two runs and wall-clock times;
* the small shipped model on CPU at a few frames: a live engine session (commands, the same action twice,
  an interruption) is re-rendered from its log by `liveidol replay`, frame for frame the same.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from backend.config import load_config
from backend.events import Command, CommandKind
from tests.engine.engine_helpers import frames_digest, record_shown

ROOT = Path(__file__).resolve().parents[1]
DEADLINE_S = 60.0

CHILD = textwrap.dedent("""
    import asyncio, sys
    from backend.config import EngineConfig, ServerConfig
    from backend.engine import Engine
    from backend.server import Server
    from tests.server.server_helpers import real_generator

    async def main():
        engine = Engine(EngineConfig(fps=20.0, lookahead_frames=8, log_path=sys.argv[1]), real_generator(), None,
                        max_steps=2, max_chunk_frames=1)
        async with engine, Server(ServerConfig(port=0), engine, token="tok") as server:
            print(server.port, flush=True)
            await asyncio.Event().wait()

    asyncio.run(main())
""")


async def _flood_then_kill(log: Path, n: int) -> list[str]:
    """Start the child backend, send ``n`` commands over /control, collect the acknowledged ids, SIGKILL it."""
    from tests.server.server_helpers import control

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", CHILD, str(log), cwd=ROOT, env=env,
                                                stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(DEADLINE_S):
            port = int((await proc.stdout.readline()).decode())
        ctl = await control(f"ws://127.0.0.1:{port}", "tok")
        acked = []
        async with asyncio.timeout(DEADLINE_S):
            for i in range(n):
                await ctl.send(json.dumps({"type": "command", "kind": "act",
                                           "argument": ("wave", "heart", "nod")[i % 3], "id": str(i)}))
                reply = json.loads(await ctl.recv())
                assert reply["type"] == "ok"
                acked.append(reply["command_id"])
        proc.send_signal(signal.SIGKILL)  # at once, mid-flood: most commands are still pending
        await asyncio.wait_for(proc.wait(), DEADLINE_S)
        await ctl.close()
        return acked
    finally:
        if proc.returncode is None:
            proc.kill()
            await asyncio.wait_for(proc.wait(), DEADLINE_S)


async def test_kill_9_during_a_flood_loses_no_acknowledged_command(tmp_path: Path) -> None:
    log = tmp_path / "inputs.jsonl"
    first = await _flood_then_kill(log, 40)
    second = await _flood_then_kill(log, 10)  # a restart appends to the same log
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    accepted = [r for r in rows if r["event"] == "accepted"]
    ids = [r["id"] for r in accepted]
    assert set(first + second) <= set(ids)  # every acknowledged command is on disk
    assert len(ids) == len(set(ids)) == 50  # unique across the restart
    assert len({r["session"] for r in accepted}) == 2
    assert all(r["time"] > 1.7e9 for r in accepted)  # wall-clock seconds since the epoch


async def test_replay_re_renders_a_session_with_the_shipped_model_frame_for_frame(tmp_path: Path) -> None:
    from backend.app import build_generator, replay_header
    from backend.cli import main
    from backend.engine import Engine
    from backend.replay import replay

    log = tmp_path / "inputs.jsonl"
    cfg = load_config(None, {"model.device": "cpu", "model.steps": 1, "model.chunk_frames": 1,
                             "model.output_width": 128, "model.output_height": 72, "engine.fps": 25.0,
                             "engine.lookahead_frames": 8, "engine.log_path": str(log)})
    generator, reference, character = build_generator(cfg)
    engine = Engine(cfg.engine, generator, reference, max_steps=1, max_chunk_frames=1, character=character,
                    log_header=replay_header(cfg))
    async with engine, record_shown(engine) as shown:
        async with asyncio.timeout(DEADLINE_S):
            for kind, arg in (("act", "wave"), ("emotion", "happy"), ("act", "wave"), ("act", "heart")):
                ticket = await engine.submit(Command(CommandKind(kind), arg))
                await ticket.shown
            while len(shown) < 48:  # noqa: ASYNC110 - frames arrive from the engine's tasks
                await asyncio.sleep(0.05)
    assert engine.error is None
    summary = replay(None, log, max_frames=len(shown))
    assert summary["frames"] == len(shown) and summary["commands"] == 4
    assert summary["sha256"] == frames_digest(shown)  # the same frames as the live session showed

    out = tmp_path / "frames"
    assert main(["replay", str(log), "--out", str(out), "--frames", "8"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [f"frame_{i:06d}.png" for i in range(8)]
    from backend.world.png import read_png

    assert np.array_equal(read_png(out / "frame_000005.png"), shown[5])
