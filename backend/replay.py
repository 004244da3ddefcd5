"""`liveidol replay LOG`: re-render a stream session from its input log (``engine.log_path``) and seed.

The engine's input log (:class:`backend.engine.session.InputLog`) holds, per session, the settings the
frames depend on (the model section with its seed, fps, idle action, character), every change with the
generated frame at which it took effect (``applied``; a ``say`` with its mouth envelope) and every chunk
that reached the screen with the steps and chunk size it was made with (``chunk``). Replaying them in
order through the same :class:`~backend.engine.session.Session` and generator gives the same frames on
the same device: chunks the live engine threw away (a command interrupted them) were never shown and are
not in the log, and the generator's noise was rolled back with them.

Usage::

    summary = replay(load_config(), Path("inputs.jsonl"), out_dir=Path("frames"))   # PNGs frame_000000.png ...

Not replayed: the speech audio itself (its mouth envelope is), and a reset to ANOTHER character (the log
names the one the session started with).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from backend.config import Config, ConfigError, load_config
from backend.errors import LiveIdolError

__all__ = ["LoggedSession", "ReplayError", "read_sessions", "render", "replay"]

log = logging.getLogger(__name__)


class ReplayError(LiveIdolError, ValueError):
    """The log cannot be replayed (no session in it, a missing chunk, another device's settings ...)."""


@dataclass
class LoggedSession:
    """One session of an input log: its header and the changes and chunks that reached the screen."""

    header: dict[str, Any]
    applied: list[dict[str, Any]] = field(default_factory=list)
    chunks: list[dict[str, Any]] = field(default_factory=list)
    commands: int = 0

    @property
    def session_id(self) -> str:
        return str(self.header.get("session", ""))


def read_sessions(path: Path) -> list[LoggedSession]:
    """The sessions in an input log, in order. A torn last line (the process was killed mid-write) is skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ReplayError(f"{path}: cannot read the input log: {exc.strerror or exc}") from exc
    sessions: list[LoggedSession] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            log.warning("%s:%d: not a JSON line, skipped", path, number)
            continue
        event = row.get("event") if isinstance(row, dict) else None
        if event == "session":
            sessions.append(LoggedSession(row))
        elif not sessions:
            continue  # lines of an older log format before any session header
        elif event == "applied":
            sessions[-1].applied.append(row)
        elif event == "chunk":
            sessions[-1].chunks.append(row)
        elif event == "accepted":
            sessions[-1].commands += 1
    if not sessions:
        raise ReplayError(f"{path}: no session in this input log (is it engine.log_path of `liveidol serve`?)")
    return sessions


def session_config(base_config: Path | None, header: dict[str, Any]) -> Config:
    """The config the session ran with: ``base_config`` with the logged model, engine timing and character."""
    logged = header.get("config")
    if not isinstance(logged, dict) or not isinstance(logged.get("model"), dict):
        raise ReplayError(f"session {header.get('session', '?')}: the log's header has no model settings "
                          "(written by an engine started without them); cannot know the seed and sizes")
    overrides: dict[str, Any] = {"model": logged["model"], "engine.fps": header.get("fps", 25.0),
                                 "engine.idle_action": header.get("idle_action", "idle")}
    if logged.get("character"):
        overrides["character"] = logged["character"]
    try:
        return load_config(base_config, overrides)
    except ConfigError as exc:
        raise ReplayError(f"session {header.get('session', '?')}: its logged settings do not load: {exc}") from exc


def render(session: LoggedSession, generator: Any, reference: np.ndarray | None, *, fps: float,
           idle_action: str = "idle", character: Any = None, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """Yield the session's frames, chunk by chunk, as the live engine showed them (RGBA uint8, (H, W, 4))."""
    from backend.engine.engine import default_conditions
    from backend.engine.session import Change, Session, Speech
    from backend.events import Command, CommandKind

    make = default_conditions()
    state = Session(reference, fps=fps, idle_action=idle_action, character=character)
    generator.reset(reference, make(idle_action, "neutral", ""))
    changes = sorted(enumerate(session.applied), key=lambda p: (int(p[1]["at_g"]), p[0]))
    pending = [row for _, row in changes]
    chunks = sorted(session.chunks, key=lambda c: int(c["g"]))
    made = 0
    expected_g = chunks[0]["g"] if chunks else 0
    for chunk in chunks:
        g, n = int(chunk["g"]), int(chunk["n"])
        if g != expected_g:
            raise ReplayError(f"session {session.session_id}: chunk at generated frame {g} follows the one "
                              f"ending at {expected_g}: the log misses a chunk")
        while pending and int(pending[0]["at_g"]) <= g:
            row = pending.pop(0)
            kind = CommandKind(row["kind"])
            if kind is CommandKind.RESET:
                generator.reset(reference, make(idle_action, "neutral", ""))
            speech = None
            if kind is CommandKind.SAY:
                mouth = np.asarray(row.get("mouth", []), dtype=np.float32)
                speech = Speech(np.zeros((1, 1), np.float32), 1, mouth, row.get("argument", ""), row["id"])
            state.apply(Change(Command(kind, row.get("argument", ""), command_id=row["id"]), None, speech),
                        int(row["at_g"]))
        plan = state.plan(g, n)
        cond = make(plan.action, plan.emotion, plan.prompt, serial=plan.serial, progress=plan.progress)
        frames = np.asarray(generator.next_chunk(cond, mouth=plan.mouth, steps=int(chunk["steps"]),
                                                 chunk_frames=int(chunk["latents"])))
        if frames.shape[0] != n:
            raise ReplayError(f"session {session.session_id}: the chunk at {g} gave {frames.shape[0]} frames, the "
                              f"log says {n} (other model settings?)")
        expected_g = g + n
        for frame in frames:
            if max_frames is not None and made >= max_frames:
                return
            made += 1
            yield frame


def replay(base_config: Path | None, log_path: Path, *, session_id: str = "", out_dir: Path | None = None,
           max_frames: int | None = None) -> dict[str, Any]:
    """Re-render one session (default: the last one) of ``log_path``; PNGs into ``out_dir`` when given.
    Returns a JSON-able summary with a SHA-256 over all frames (equal digests = the same frames)."""
    from backend.app import build_generator

    sessions = read_sessions(log_path)
    if session_id:
        found = [s for s in sessions if s.session_id == session_id]
        if not found:
            raise ReplayError(f"{log_path}: no session {session_id!r}; it has "
                              + ", ".join(s.session_id for s in sessions))
        session = found[-1]
    else:
        session = sessions[-1]
    cfg = session_config(base_config, session.header)
    generator, reference, character = build_generator(cfg)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        from backend.world.png import write_png
    digest = hashlib.sha256()
    count = 0
    for frame in render(session, generator, reference, fps=cfg.engine.fps, idle_action=cfg.engine.idle_action,
                        character=character, max_frames=max_frames):
        digest.update(np.ascontiguousarray(frame).tobytes())
        if out_dir is not None:
            write_png(out_dir / f"frame_{count:06d}.png", frame)
        count += 1
    log.info("replayed session=%s frames=%d chunks=%d commands=%d", session.session_id, count,
             len(session.chunks), session.commands)
    return {"session": session.session_id, "frames": count, "chunks": len(session.chunks),
            "commands": session.commands, "changes": len(session.applied), "sha256": digest.hexdigest(),
            "out": str(out_dir) if out_dir is not None else None}
