"""One idol session: the character, the current directive, the speech being spoken and the input log.

The session is the engine's bookkeeping, free of threads, sockets and torch:

* ``reference_rgba`` and ``character`` (whatever the caller rendered the reference from; only its
  ``name`` attribute is read, for status);
* the current :class:`~backend.events.Directive` and when its action ends (non-looping actions return
  to ``idle_action`` by themselves);
* the speech being played (its mouth envelope drives ``next_chunk(mouth=...)``);
* the timing of actions, its one owner: each play of an action gets a ``serial`` (the same action again is
  a new play) and its progress per generated frame at the session's fps (:meth:`Session.plan`);
* an append-only :class:`InputLog`: every input written when it is accepted, then its outcome, the
  boundaries where changes applied and the chunks that reached the screen (enough to replay a session),
  kept in memory (bounded) and written as JSON lines when a path is given.

Frame indices here are *generated* frame indices ``g`` (the generator's timeline); the engine maps them
to output ``seq`` numbers when frames are shown.

Usage::

    session = Session(reference_rgba, fps=25.0, idle_action="idle")
    session.apply(Change(command=Command(CommandKind.ACT, "wave", command_id="c1")), at_g=48)
    plan = session.plan(g0=48, n=8)        # ChunkPlan(action="wave", ..., directive_id="c1", serial=1,
                                           #           play_id="c1", progress=[0, 1/60, ...])
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from backend import actions
from backend.events import Command, CommandKind, Directive

__all__ = ["Change", "ChunkPlan", "CommandError", "EngineError", "InputLog", "InputRecord", "Session", "Speech"]

log = logging.getLogger(__name__)


class EngineError(Exception):
    """Base of the engine's errors."""


class CommandError(EngineError, ValueError):
    """A command the engine cannot carry out (unknown action or emotion, no TTS ...). The stream goes on."""


@dataclass(frozen=True)
class Speech:
    """Audio the idol speaks, with one mouth-openness value per video frame."""

    pcm: np.ndarray = field(repr=False)  # (samples, channels) float32
    sample_rate: int
    mouth: np.ndarray = field(repr=False)  # (frames,) float32 in [0, 1]
    text: str = ""
    speech_id: str = ""

    @property
    def frames(self) -> int:
        return int(self.mouth.shape[0])


@dataclass(frozen=True)
class ChunkPlan:
    """What the next chunk is generated under."""

    action: str
    emotion: str
    prompt: str
    directive_id: str
    mouth: np.ndarray | None = field(default=None, repr=False)  # (n,) or None when not speaking
    serial: int = 0  # which play of the action this is: a new command (even the same action again) bumps it
    play_id: str = ""  # the command that started this play ("" when it began by itself: idle after an action)
    progress: np.ndarray | None = field(default=None, repr=False)  # (n,) the action's progress per frame, in [0, 1]


@dataclass
class InputRecord:
    """One input: arrival (monotonic seconds, for latency; ``wall_time`` in seconds since the epoch) and the
    output frame at which it took effect."""

    command_id: str
    kind: str
    argument: str
    source: str
    user_name: str
    arrival: float
    outcome: str = "pending"  # pending -> shown | superseded | cancelled | rejected | failed
    effect_frame: int | None = None
    effect_time: float | None = None
    error: str = ""
    wall_time: float = field(default_factory=time.time)

    @property
    def latency(self) -> float | None:
        return None if self.effect_time is None else self.effect_time - self.arrival

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["latency"] = self.latency
        return json.dumps(d, ensure_ascii=False)


def new_session_id() -> str:
    """A stream session's id: its start time (UTC) and 4 random hex digits, unique across restarts."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2)


class InputLog:
    """The durable, append-only log of one stream's inputs: JSON lines, one per event, each flushed to the
    OS before the call returns (a ``kill -9`` of the process loses nothing that was acknowledged).

    Lines (``event`` key): ``session`` (its id, wall-clock start, and what :func:`backend.replay` needs:
    fps, seed, model settings), ``accepted`` (a command, written when it is accepted, before anyone is told
    so), ``outcome`` (shown / superseded / cancelled / rejected / failed, with the output frame and wall-clock
    time), ``applied`` (the generated frame ``at_g`` at which a change took effect; a ``say`` carries its mouth
    envelope), ``chunk`` (a generated chunk that started showing: ``g``, ``n`` frames, ``steps``, ``latents``).
    The newest ``keep`` records also stay in memory (:meth:`records`)."""

    def __init__(self, path: str | Path | None = None, *, keep: int = 10000, session_id: str = "") -> None:
        self.path = Path(path) if path else None
        self.session_id = session_id or new_session_id()
        self._records: collections.deque[InputRecord] = collections.deque(maxlen=keep)
        self._lock = threading.Lock()
        self._failed = False

    def open(self, header: dict[str, Any]) -> None:
        """Start the file's session: the ``session`` line (no-op without a path)."""
        self._write({"event": "session", "session": self.session_id, "time": time.time(), **header})

    def add(self, record: InputRecord) -> InputRecord:
        """Keep ``record`` and write its ``accepted`` line now (and its outcome if it has one)."""
        self._records.append(record)
        self._write({"event": "accepted", "session": self.session_id, "id": record.command_id,
                     "kind": record.kind, "argument": record.argument, "source": record.source,
                     "user": record.user_name, "time": record.wall_time})
        if record.outcome != "pending":
            self._write_outcome(record)
        return record

    def resolve(self, record: InputRecord, outcome: str, *, frame: int | None = None,
                time: float | None = None, error: str = "") -> None:
        if record.outcome != "pending":
            return
        record.outcome, record.effect_frame, record.effect_time, record.error = outcome, frame, time, error
        self._write_outcome(record)

    def applied(self, command_id: str, kind: str, argument: str, at_g: int, mouth: np.ndarray | None = None) -> None:
        line: dict[str, Any] = {"event": "applied", "id": command_id, "kind": kind, "argument": argument, "at_g": at_g}
        if mouth is not None:
            line["mouth"] = [round(float(v), 6) for v in mouth]
        self._write(line)

    def chunk(self, g: int, n: int, steps: int, latents: int) -> None:
        self._write({"event": "chunk", "g": g, "n": n, "steps": steps, "latents": latents})

    def records(self) -> list[InputRecord]:
        return list(self._records)

    def _write_outcome(self, record: InputRecord) -> None:
        self._write({"event": "outcome", "id": record.command_id, "outcome": record.outcome,
                     "frame": record.effect_frame, "time": time.time(), "latency": record.latency,
                     "error": record.error})

    def _write(self, line: dict[str, Any]) -> None:
        if self.path is None or self._failed:
            return
        text = json.dumps(line, ensure_ascii=False) + "\n"
        try:
            with self._lock, open(self.path, "a", encoding="utf-8") as fh:
                fh.write(text)  # closed (so flushed to the OS) before the caller goes on: survives a kill -9
        except OSError as exc:  # the stream goes on without the file log
            self._failed = True
            log.error("input log write failed, file log off path=%s error=%s", self.path, exc)


@dataclass(frozen=True)
class Change:
    """A pending change to the session, applied at a chunk boundary."""

    command: Command
    record: InputRecord | None = None
    speech: Speech | None = None


def check_action(name: str) -> None:
    try:
        actions.action(name)
    except KeyError as exc:
        raise CommandError(exc.args[0]) from None


def check_emotion(name: str) -> None:
    try:
        actions.emotion_index(name)
    except KeyError as exc:
        raise CommandError(exc.args[0]) from None


def _check_reference(reference_rgba: np.ndarray | None) -> None:
    if reference_rgba is not None and (not isinstance(reference_rgba, np.ndarray) or reference_rgba.ndim != 3
                                       or reference_rgba.shape[2] != 4 or reference_rgba.dtype != np.uint8):
        raise ValueError(f"reference_rgba must be an (H, W, 4) uint8 array, got {getattr(reference_rgba, 'shape', '?')} "
                         f"{getattr(reference_rgba, 'dtype', type(reference_rgba).__name__)}")


class Session:
    """The character, the directive timeline and the input log of one stream (see module docstring)."""

    def __init__(self, reference_rgba: np.ndarray | None, *, fps: float, idle_action: str = "idle",
                 character: Any = None, log_path: str | Path | None = None) -> None:
        check_action(idle_action)
        _check_reference(reference_rgba)
        self.reference_rgba = reference_rgba
        self.character = character
        self.fps = fps
        self.idle_action = idle_action
        self.log = InputLog(log_path)
        self.directive = Directive(action=idle_action)
        self._action_end_g: int | None = None  # generated frame at which a non-looping action ends
        self._speech: Speech | None = None
        self._speech_start_g = 0
        self._serial = 0  # plays of actions so far: each command's action, and what follows when one ends
        self._play_start_g = 0  # generated frame at which the current play began
        self._play_id = ""  # the command that started it

    @property
    def character_name(self) -> str:
        return str(getattr(self.character, "name", "") or "")

    @property
    def speech(self) -> Speech | None:
        return self._speech

    def validate(self, command: Command) -> None:
        """Raise :class:`CommandError` if ``command`` cannot be applied."""
        if command.kind is CommandKind.ACT:
            check_action(command.argument)
        elif command.kind is CommandKind.EMOTION:
            check_emotion(command.argument)
        elif command.kind is CommandKind.CANCEL and not command.argument.strip():
            raise CommandError("cancel: the argument is the command id to cancel, got nothing")
        elif command.kind is CommandKind.RESET and command.argument not in ("", self.character_name):
            raise CommandError(f"reset: cannot switch to character {command.argument!r} here (the current one is "
                               f"{self.character_name or 'unnamed'}); the app renders a new reference and calls "
                               "Engine.reset(reference_rgba, character)")

    def set_character(self, reference_rgba: np.ndarray | None, character: Any) -> None:
        _check_reference(reference_rgba)
        self.reference_rgba, self.character = reference_rgba, character

    def apply(self, change: Change, at_g: int) -> None:
        """Apply ``change`` from generated frame ``at_g`` (a chunk boundary) on.

        Boundaries only move forward (the engine never rolls back past a shown frame), so ``at_g`` is at
        or after every earlier ``apply``. Every ``act``/``say``/``reset`` starts a new play of its action
        (a new serial, progress from 0), even the same action again."""
        self._settle(at_g)
        cmd = change.command
        d = self.directive
        cid = cmd.command_id
        if cmd.kind is CommandKind.ACT:
            act = actions.action(cmd.argument)
            self.directive = Directive(act.name, d.emotion, d.prompt, command_id=cid)
            self._action_end_g = None if act.loop else at_g + self._frames(act.duration_s)
            self._start_play(at_g, cid)
        elif cmd.kind is CommandKind.EMOTION:
            self.directive = dataclasses.replace(d, emotion=cmd.argument, command_id=cid)
        elif cmd.kind is CommandKind.PROMPT:
            self.directive = dataclasses.replace(d, prompt=cmd.argument, command_id=cid)
        elif cmd.kind is CommandKind.SAY:
            if change.speech is None:
                raise CommandError("say: no speech audio attached")
            self._speech, self._speech_start_g = change.speech, at_g
            self.directive = dataclasses.replace(d, action="talk", command_id=cid)
            self._action_end_g = None
            self._start_play(at_g, cid)
        elif cmd.kind is CommandKind.RESET:
            self._speech, self._action_end_g = None, None
            self.directive = Directive(action=self.idle_action, command_id=cid)
            self._start_play(at_g, cid)
        elif cmd.kind is CommandKind.CANCEL:
            self.cancel(cmd.argument, at_g, cid)

    def cancel(self, target_id: str, at_g: int, command_id: str = "") -> bool:
        """End the action or speech that command ``target_id`` started, from ``at_g`` on (back to the idle
        action under ``command_id``); False when it is no longer playing."""
        self._settle(at_g)
        speaking = self._speech is not None and self._speech.speech_id == target_id
        if self.directive.command_id != target_id and not speaking:
            return False
        if speaking:
            self._speech = None
        d = self.directive
        self.directive = Directive(self.idle_action, d.emotion, d.prompt, command_id=command_id)
        self._action_end_g = None
        self._start_play(at_g, command_id)
        return True

    def _frames(self, seconds: float) -> int:
        return max(1, math.ceil(seconds * self.fps))

    def _start_play(self, at_g: int, command_id: str) -> None:
        self._serial += 1
        self._play_start_g = at_g
        self._play_id = command_id

    def extend_speech(self, more: Speech, frontier_g: int) -> Speech | None:
        """Append ``more`` (the next sentence of the speech being spoken, same id) to the current speech, if
        it is still speaking at ``frontier_g`` (the next frame to generate): the old audio is padded to its
        last frame's end so audio and mouth stay aligned. Returns the extended speech, or None (it ended:
        start ``more`` as a new speech)."""
        old = self._speech
        if old is None or old.speech_id != more.speech_id or not self._speaking(frontier_g):
            return None
        if more.sample_rate != old.sample_rate or more.pcm.shape[1] != old.pcm.shape[1]:
            raise CommandError(f"say: the next sentence has {more.sample_rate} Hz x {more.pcm.shape[1]} channels, "
                               f"the speech {old.sample_rate} Hz x {old.pcm.shape[1]}")
        end = int(old.frames * old.sample_rate / self.fps)  # where frame `frames` begins (lipsync's edges)
        pad = np.zeros((max(0, end - old.pcm.shape[0]), old.pcm.shape[1]), np.float32)
        pcm = np.concatenate([old.pcm[:end], pad, more.pcm])
        self._speech = Speech(pcm, old.sample_rate, np.concatenate([old.mouth, more.mouth]),
                              f"{old.text} {more.text}".strip(), old.speech_id)
        return self._speech

    def _speaking(self, g: int) -> bool:
        return self._speech is not None and g < self._speech_start_g + self._speech.frames

    def _effective(self, g: int) -> Directive:
        """The directive in force at generated frame ``g`` (finished actions and speech ended)."""
        d = self.directive
        speaking = self._speaking(g)
        if self._action_end_g is not None and g >= self._action_end_g:
            sid = self._speech.speech_id if speaking and self._speech is not None else ""
            return Directive("talk" if speaking else self.idle_action, d.emotion, d.prompt, command_id=sid)
        if d.action == "talk" and not speaking:
            return Directive(self.idle_action, d.emotion, d.prompt)
        return d

    def _phase(self, g: int) -> tuple[int, int, str]:
        """(serial, first generated frame, command id) of the play of the action in force at ``g``. When an
        action or a speech ends by itself, what follows (idle, or talk) is the next play, from the frame it
        ended at, started by no command."""
        if self._action_end_g is not None and g >= self._action_end_g:
            return self._serial + 1, self._action_end_g, ""
        if self.directive.action == "talk" and self._speech is not None and not self._speaking(g):
            return self._serial + 1, self._speech_start_g + self._speech.frames, ""
        return self._serial, self._play_start_g, self._play_id

    def _settle(self, g: int) -> None:
        self._serial, self._play_start_g, self._play_id = self._phase(g)
        self.directive = self._effective(g)
        if self._action_end_g is not None and g >= self._action_end_g:
            self._action_end_g = None
        if self._speech is not None and not self._speaking(g):
            self._speech = None

    def progress(self, action_name: str, g0: int, n: int, start_g: int) -> np.ndarray:
        """Progress in [0, 1] of ``action_name`` at generated frames ``[g0, g0 + n)`` of a play that began at
        ``start_g``: elapsed / duration for a one-shot action, the phase within its period for a looping one;
        durations from :mod:`backend.actions`, counted at this session's fps (the one owner of action timing)."""
        act = actions.action(action_name)
        elapsed = np.arange(g0 - start_g, g0 - start_g + n, dtype=np.float64)
        duration = act.duration_s * self.fps
        if duration <= 0:
            return np.ones(n, dtype=np.float32)
        if act.loop:
            return ((elapsed % duration) / duration).astype(np.float32)
        return np.clip(elapsed / duration, 0.0, 1.0).astype(np.float32)

    def plan(self, g0: int, n: int) -> ChunkPlan:
        """Conditions for the chunk of generated frames ``[g0, g0 + n)``. Pure: planning a chunk that is
        later dropped (rollback) changes nothing."""
        d = self._effective(g0)
        serial, start, play_id = self._phase(g0)
        mouth = None
        if self._speaking(g0) and self._speech is not None:
            mouth = np.zeros(n, dtype=np.float32)
            lo = g0 - self._speech_start_g
            src = self._speech.mouth[max(lo, 0):lo + n]
            mouth[max(-lo, 0):max(-lo, 0) + len(src)] = src
        return ChunkPlan(d.action, d.emotion, d.prompt, d.command_id, mouth, serial=serial, play_id=play_id,
                         progress=self.progress(d.action, g0, n, start))
