"""Measure perception on this machine: gesture -> first answering frame, CPU cost, engine FPS on vs off.

    PYTHONPATH=$PWD python -m tests.perception.measure --seconds 40 [--fps 4] [--set model.steps=...]

The real default model (CPU here) in the real engine; the loopback obs-websocket server (tests/perception)
plays the real test pictures as the camera source, cycling neutral -> wave -> neutral -> heart -> neutral ->
thumbs-up -> neutral -> smile at 6 pictures a second, whatever the poller's pace. A gesture's time is when OBS first handed over a picture showing it; the
answer is the first frame the engine emits under the reaction's command. Prints one JSON line.
Phase 1 runs the engine alone, phase 2 the same with perception on (the same length).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from typing import Any

import numpy as np

from backend.cli import _parse_set
from backend.config import load_config
from backend.events import VideoFrame

from .conftest import clip, picture
from .obs_ws_server import ObsWsServer


def _script() -> tuple[list[tuple[str, Any]], dict[str, str]]:
    """One cycle of pictures (one per screenshot) and which label starts which gesture."""
    # at 6 pictures a second: 2 s of neutral face between gestures, each gesture held 2 s
    neutral = [(f"neutral/{f}", rgb) for f, rgb in clip("neutral_then_smile")[:4]] * 3
    wave = [(f"wave/{f}", rgb) for f, rgb in clip("wave")]
    heart = [("heart", picture("hands/heart_4.jpg"))] * 12
    thumbs = [("thumbs_up", picture("hands/thumbs_up_2.jpg"))] * 12
    smile = [(f"smile/{f}", rgb) for f, rgb in clip("neutral_then_smile")[5:17]]
    onsets = {"wave": wave[0][0], "heart": "heart", "thumbs_up": "thumbs_up", "smile": smile[0][0]}
    return neutral + wave + neutral + heart + neutral + thumbs + neutral + smile + neutral, onsets


async def _phase(cfg: Any, generator: Any, reference: Any, character: Any, seconds: float,
                 server: ObsWsServer | None) -> dict[str, Any]:
    from backend.director.director import Director
    from backend.engine.engine import Engine
    from backend.perception.camera import ObsCamera
    from backend.perception.service import Perception

    out: dict[str, Any] = {}
    async with Engine(cfg.engine, generator, reference, max_steps=cfg.model.steps,
                      max_chunk_frames=cfg.model.chunk_frames, character=character) as engine:
        await asyncio.wait_for(engine.wait_started(), 60)
        first_frame: dict[str, float] = {}
        sub = engine.subscribe(audio=False)

        async def watch() -> None:
            async for item in sub:
                if isinstance(item, VideoFrame) and item.directive_id not in first_frame:
                    first_frame[item.directive_id] = time.monotonic()

        watcher = asyncio.create_task(watch())
        await asyncio.sleep(3.0)  # warm-up
        async with Director(cfg.director, engine.submit) as director:
            decided: list[tuple[Any, Any, float]] = []

            async def react(reaction: Any) -> Any:
                d = await director.handle_reaction(reaction.kind, reaction.argument, reason=reaction.name,
                                                   max_wait_s=cfg.perception.max_wait_s)
                decided.append((reaction, d, time.monotonic()))
                return d

            perception = None
            if server is not None:
                pcfg = cfg.perception
                perception = Perception(pcfg, lambda: ObsCamera("127.0.0.1", server.port, "", "Webcam",
                                                                size=pcfg.picture_size), react)
                await perception.__aenter__()
            made0, cpu0, t0 = engine.status()["frames_made"], time.process_time(), time.monotonic()
            await asyncio.sleep(seconds)
            made1, cpu1, t1 = engine.status()["frames_made"], time.process_time(), time.monotonic()
            if perception is not None:
                out["perception"] = perception.stats()
                out["perception_worker_cpu_percent"] = round(100 * perception.cpu_s / (t1 - t0), 1)
                await perception.__aexit__(None, None, None)
            await asyncio.sleep(3.0)  # let the last reactions reach the screen
        watcher.cancel()
        out["distinct_fps"] = round((made1 - made0) / (t1 - t0), 2)
        out["process_cpu_percent"] = round(100 * (cpu1 - cpu0) / (t1 - t0), 1)
        out["steps_now"], out["chunk_frames_now"] = engine.status()["steps"], engine.status()["chunk_frames"]
        if server is not None:
            out["decided"] = decided
            out["first_frame"] = first_frame
    return out


async def _alone(cfg: Any, server: ObsWsServer, seconds: float) -> dict[str, Any]:
    """Perception without the engine: its whole CPU cost (MediaPipe's threads included) per second."""
    from backend.perception.camera import ObsCamera
    from backend.perception.service import Perception

    async def react(reaction: Any) -> None:
        return None

    pcfg = cfg.perception
    async with Perception(pcfg, lambda: ObsCamera("127.0.0.1", server.port, "", "Webcam", size=pcfg.picture_size),
                          react) as perception:
        await asyncio.sleep(2.0)
        cpu0, t0, n0 = time.process_time(), time.monotonic(), perception.pictures
        await asyncio.sleep(seconds)
        cpu1, t1, n1 = time.process_time(), time.monotonic(), perception.pictures
        return {"pictures_per_s": round((n1 - n0) / (t1 - t0), 2),
                "process_cpu_percent": round(100 * (cpu1 - cpu0) / (t1 - t0), 1),
                "cpu_ms_per_picture": round(1000 * (cpu1 - cpu0) / max(1, n1 - n0), 1),
                **perception.stats()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--fps", type=float, default=4.0)
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    overrides = {"model.device": "cpu", "perception.fps": args.fps, "perception.reaction_cooldown_s": 0.0,
                 "perception.global_cooldown_s": 0.0, **_parse_set(args.set)}
    cfg = load_config(None, overrides)
    from backend.app import build_generator

    generator, reference, character = build_generator(cfg)
    script, onsets = _script()
    result: dict[str, Any] = {"cpus": os.cpu_count(), "perception_fps": args.fps, "seconds": args.seconds,
                              "load_average_before": os.getloadavg()[0]}
    with ObsWsServer(source="Webcam") as server:
        server.play(script * 50, fps=6.0)  # a camera: the clips at their own 6 pictures a second
        result["alone"] = asyncio.run(_alone(cfg, server, args.seconds / 2))
        # engine alone and with perception, alternated so the machine's other load hits both alike
        phases = []
        for on in (False, True, False, True):
            server.play(script * 50, fps=6.0)
            phases.append(asyncio.run(_phase(cfg, generator, reference, character, args.seconds / 2,
                                             server if on else None)))
            start, labels = server.script_start, [label for label, _ in script * 50]
            phases[-1]["onsets"] = {o: [start + k / 6.0 for k, lab in enumerate(labels) if lab == o]
                                    for o in onsets.values()}
    offs, ons = phases[0::2], phases[1::2]
    result["distinct_fps_off"] = [p["distinct_fps"] for p in offs]
    result["distinct_fps_on"] = [p["distinct_fps"] for p in ons]
    result["process_cpu_percent_off"] = [p["process_cpu_percent"] for p in offs]
    result["process_cpu_percent_on"] = [p["process_cpu_percent"] for p in ons]
    result["perception_in_engine"] = [p["perception"] for p in ons]
    # latency, per phase (command ids restart with each director): each reaction -> the latest onset of its
    # gesture served before the picture that showed it
    lat: dict[str, list[float]] = {}
    detect: dict[str, list[float]] = {}
    for phase in ons:
        for reaction, decision, decided_at in phase["decided"]:
            onset = onsets.get(reaction.name)
            # the gesture's time: when the camera showed its first picture (the schedule), seen or not
            starts = [t for t in phase["onsets"].get(onset, []) if t <= reaction.seen_at + 1e-6]
            shown = phase["first_frame"].get(decision.command_id)
            if not starts or shown is None:
                continue
            lat.setdefault(reaction.name, []).append(shown - starts[-1])
            detect.setdefault(reaction.name, []).append(decided_at - starts[-1])
    result["load_average_after"] = os.getloadavg()[0]
    allv = [v for vs in lat.values() for v in vs]
    result["gesture_to_frame_ms"] = {k: [round(1000 * v) for v in vs] for k, vs in lat.items()}
    result["gesture_to_reaction_ms"] = {k: [round(1000 * v) for v in vs] for k, vs in detect.items()}
    if allv:
        result["gesture_to_frame_ms_p50"] = round(1000 * float(np.percentile(allv, 50)))
        result["gesture_to_frame_ms_max"] = round(1000 * max(allv))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
