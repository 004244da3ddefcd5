"""One idol session: the character, the current directive, the speech being spoken and the input log.

The session is the engine's bookkeeping, free of threads, sockets and torch:

* ``reference_rgba`` and ``character`` (whatever the caller rendered the reference from; only its
  ``name`` attribute is read, for status);
* the current :class:`~backend.events.Directive` and when its action ends (non-looping actions return
  to ``idle_action`` by themselves);
* the speech being played (its mouth envelope drives ``next_chunk(mouth=...)``);
* an append-only :class:`InputLog`: every input with its arrival time and the output frame at which it
  took effect, kept in memory (bounded) and written as JSON lines when a path is given.

Frame indices here are *generated* frame indices ``g`` (the generator's timeline); the engine maps them
to output ``seq`` numbers when frames are shown.

Usage::

    session = Session(reference_rgba, fps=25.0, idle_action="idle")
    session.apply(Change(command=Command(CommandKind.ACT, "wave", command_id="c1")), at_g=48)
    plan = session.plan(g0=48, n=8)        # ChunkPlan(action="wave", ..., directive_id="c1")
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import threading
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


@dataclass
class InputRecord:
    """One input: arrival (monotonic seconds) and the output frame at which it took effect."""

    command_id: str
    kind: str
    argument: str
    source: str
    user_name: str
    arrival: float
    outcome: str = "pending"  # pending -> shown | superseded | rejected | failed
    effect_frame: int | None = None
    effect_time: float | None = None
    error: str = ""

    @property
    def latency(self) -> float | None:
        return None if self.effect_time is None else self.effect_time - self.arrival

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["latency"] = self.latency
        return json.dumps(d, ensure_ascii=False)


class InputLog:
    """Append-only log of inputs. Records stay in memory (the newest ``keep``); each one is written as one
    JSON line to ``path`` when it is resolved (shown, superseded, rejected or failed)."""

    def __init__(self, path: str | Path | None = None, *, keep: int = 10000) -> None:
        self.path = Path(path) if path else None
        self._records: collections.deque[InputRecord] = collections.deque(maxlen=keep)
        self._lock = threading.Lock()

    def add(self, record: InputRecord) -> InputRecord:
        self._records.append(record)
        if record.outcome != "pending":
            self._write(record)
        return record

    def resolve(self, record: InputRecord, outcome: str, *, frame: int | None = None,
                time: float | None = None, error: str = "") -> None:
        if record.outcome != "pending":
            return
        record.outcome, record.effect_frame, record.effect_time, record.error = outcome, frame, time, error
        self._write(record)

    def records(self) -> list[InputRecord]:
        return list(self._records)

    def _write(self, record: InputRecord) -> None:
        if self.path is None:
            return
        line = record.to_json() + "\n"
        try:
            with self._lock, open(self.path, "a", encoding="utf-8") as fh:
                fh.write(line)
        except OSError as exc:  # the stream goes on without the file log
            log.warning("input log write failed path=%s error=%s", self.path, exc)


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
        or after every earlier ``apply``."""
        self._settle(at_g)
        cmd = change.command
        d = self.directive
        cid = cmd.command_id
        if cmd.kind is CommandKind.ACT:
            act = actions.action(cmd.argument)
            self.directive = Directive(act.name, d.emotion, d.prompt, command_id=cid)
            self._action_end_g = None if act.loop else at_g + max(1, math.ceil(act.duration_s * self.fps))
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
        elif cmd.kind is CommandKind.RESET:
            self._speech, self._action_end_g = None, None
            self.directive = Directive(action=self.idle_action, command_id=cid)

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

    def _settle(self, g: int) -> None:
        self.directive = self._effective(g)
        if self._action_end_g is not None and g >= self._action_end_g:
            self._action_end_g = None
        if self._speech is not None and not self._speaking(g):
            self._speech = None

    def plan(self, g0: int, n: int) -> ChunkPlan:
        """Conditions for the chunk of generated frames ``[g0, g0 + n)``. Pure: planning a chunk that is
        later dropped (rollback) changes nothing."""
        d = self._effective(g0)
        mouth = None
        if self._speaking(g0) and self._speech is not None:
            mouth = np.zeros(n, dtype=np.float32)
            lo = g0 - self._speech_start_g
            src = self._speech.mouth[max(lo, 0):lo + n]
            mouth[max(-lo, 0):max(-lo, 0) + len(src)] = src
        return ChunkPlan(d.action, d.emotion, d.prompt, d.command_id, mouth)
