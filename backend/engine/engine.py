"""The streaming engine: generator thread -> look-ahead buffer -> paced output -> subscribers.

Two asyncio tasks and one thread:

* the *producer* task plans each chunk from the :class:`~backend.engine.session.Session`, has the
  :class:`~backend.engine.worker.GeneratorWorker` thread generate it (``snapshot()`` then
  ``next_chunk()``) and keeps the look-ahead buffer filled up to ``lookahead_frames``;
* the *pacer* task shows one frame per slot of an absolute ``t0 + n / fps`` schedule, publishing
  :class:`~backend.events.VideoFrame` (``pts = seq / fps``) and the speech's
  :class:`~backend.events.AudioChunk` s to every :class:`~backend.engine.broadcast.Subscription`; when the
  buffer runs dry it repeats the last frame (counted) instead of stalling;
* :class:`~backend.engine.compute.ComputePolicy` lowers steps, then chunk size, when generation falls
  behind real time, and raises them again with headroom.

Interruption: a command takes effect at the next chunk boundary. Chunks generated under the old
directive that have not started showing are dropped and the generator is restored to the snapshot taken
before the first dropped chunk, so the video stays continuous -- except the chunk that was being made when
the command came, when it is the next to show: it is kept, and every command that arrived meanwhile takes
effect together after it (coalesced, the newest winning, counted in ``commands_coalesced``), so commands
coming faster than chunks are made cannot freeze the picture. The latency from ``submit`` to the first
shown frame under the new directive is measured (``status()["latency_p50_s"]``).

With ``engine.restart_on_command`` (a generator with an ``interrupt`` hook: both tiers have it) a command
that comes while a chunk is being made stops that chunk between two passes and the generator goes back to
the snapshot before it -- exact, since the chunk has not written its context into the cache yet -- and the
chunk is made again under the command. Of the chunks already made, only those that cover the time to make
the next one are kept (the measured seconds per chunk, with a margin, from the pacer's next slot on), the rest
are dropped: the picture neither freezes nor waits longer than it must. Two settings trade what a restart
costs: ``engine.finish_within_s`` lets the chunk in the making finish instead (nothing thrown away, the command's
frames follow it) when the command's first frame still shows within that many seconds of the command, or no
later than after a restart (decided once, at the first pass after the command: :meth:`Engine._finish_pays`);
``engine.lookahead_cover`` queues only what covers the next chunk's making plus that many frames, so a command
never waits behind more frames than a restart needs (a fixed ``lookahead_frames`` fills up whenever the
generator is faster than real time, and a command's first frame then waits behind all of them).

Action timing has one owner, the :class:`~backend.engine.session.Session`: it numbers each play of an
action (``serial``; the same action again is a new play) and computes its progress per frame at the
engine's fps; both go to the generator in its conditions. ``Ticket.finished`` says when a play ended on
screen (the director waits on it). ``cancel`` stops a command's speech at once and its action at the next
chunk. Every command is written to the input log when accepted (``InputLog``; ``liveidol replay``).

Usage::

    async with Engine(cfg.engine, generator, reference_rgba, max_steps=cfg.model.steps,
                      max_chunk_frames=cfg.model.chunk_frames, sample_rate=cfg.voice.sample_rate,
                      tts=None) as engine:
        sub = engine.subscribe()
        ticket = await engine.submit(Command(CommandKind.ACT, "wave"))   # CommandError if unknown
        seq = await ticket.shown          # output frame at which it took effect (None if superseded)
        await engine.speak(pcm, 48000, text="hello")
        async for item in sub: ...        # VideoFrame | AudioChunk

``generator`` is anything with the :class:`FrameGenerator` methods (``backend.model.generator.Generator``),
or a :class:`Loading`: then the engine builds it in its generator thread while the pacer already shows the
"starting" card (:mod:`backend.engine.card`) on the same frame clock, so a server can open at once
(``await engine.wait_loaded()`` raises what loading raised).
``tts(text) -> (pcm float32, sample_rate)`` is called in a helper thread for ``say`` commands, one sentence at a
time: the first sentence starts speaking as soon as it is synthesized, the next ones are appended to the speech
while it plays (``tts.prepare(text)``, when it has one, checks the whole text first).
``conditions(action, emotion, prompt)`` builds the generator's conditions (default: :func:`default_conditions`).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from backend.config import EngineConfig
from backend.engine.broadcast import Broadcaster, Subscription
from backend.engine.card import starting_card
from backend.engine.compute import ComputePolicy
from backend.engine.pacer import Pacer, RateMeter
from backend.engine.session import (
    Change,
    CommandError,
    EngineError,
    InputRecord,
    Session,
    Speech,
)
from backend.engine.worker import GeneratorWorker
from backend.events import AudioChunk, Command, CommandKind, Directive, VideoFrame
from backend.voice.lipsync import mouth_envelope
from backend.voice.sentences import split_sentences

__all__ = ["ChunkConditions", "CommandError", "Engine", "EngineError", "FrameGenerator", "Loaded", "Loading",
           "Ticket"]

log = logging.getLogger(__name__)

TTS = Callable[[str], tuple[np.ndarray, int]]
REMEMBER_AFTER_CHUNKS = 32  # a compute level that held this long is remembered for the next start
READY_MARGIN_S = 0.005  # a chunk's frames reach the host this long after its passes (decode on a second stream)


class FrameGenerator(Protocol):
    """What the engine needs from a generator (``backend.model.generator.Generator`` has it)."""

    def reset(self, reference_rgba: np.ndarray | None, conditions: Any) -> None: ...

    def next_chunk(self, conditions: Any, mouth: np.ndarray | None = None, steps: int | None = None,
                   chunk_frames: int | None = None) -> np.ndarray: ...

    def frames_per_chunk(self, chunk_frames: int | None = None) -> int: ...

    @property
    def output_size(self) -> tuple[int, int]: ...

    def snapshot(self) -> Any: ...

    def restore(self, snapshot: Any) -> None: ...


@dataclass
class Loaded:
    """What :attr:`Loading.load` builds: the generator, the reference frame, the character, and the compute
    level (steps, latent frames per chunk) to start at (None: the most the engine allows)."""

    generator: FrameGenerator
    reference_rgba: np.ndarray | None
    character: Any = None
    level: tuple[int, int] | None = None
    conditions: ConditionsFactory | None = None  # the generator's own (e.g. the Wan tier's prompt embeddings)


@dataclass(frozen=True)
class Loading:
    """A generator still to be built. ``load`` runs in the engine's generator thread; until the first chunk
    exists the engine shows the starting card at ``output_size`` (width, height), ``card_fps`` times a second."""

    load: Callable[[], Loaded]
    output_size: tuple[int, int]
    card_fps: float = 5.0


class _NotLoaded:
    """Stands in for the generator while :class:`Loading` builds it: only the output size is known."""

    def __init__(self, output_size: tuple[int, int]) -> None:
        self._size = output_size

    @property
    def output_size(self) -> tuple[int, int]:
        return self._size

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise EngineError("the generator is still loading")

    reset = next_chunk = frames_per_chunk = snapshot = restore = _refuse


@dataclass(frozen=True)
class ChunkConditions:
    """Stand-in for ``backend.model.generator.Conditions`` when that module cannot be imported."""

    action: str = "idle"
    emotion: str = "neutral"
    text: Any = None
    serial: int = 0
    progress: Any = None


ConditionsFactory = Callable[..., Any]
"""(action, emotion, prompt, *, serial=0, progress=None) -> the generator's conditions object. ``serial``
numbers the plays of actions (a new command, even the same action again, restarts it) and ``progress`` is
the action's progress per video frame of the chunk: the session owns action timing and passes both down."""


def default_conditions() -> ConditionsFactory:
    """Build ``backend.model.generator.Conditions(action, emotion, serial=, progress=)``; the free-text prompt
    is kept in the directive but not passed on (the generator takes a text *embedding*: inject a factory
    that embeds it)."""
    conditions: Callable[..., Any]
    try:
        from backend.model.generator import Conditions

        conditions = Conditions
    except ImportError:
        conditions = ChunkConditions

    def make(action: str, emotion: str, prompt: str, *, serial: int = 0, progress: np.ndarray | None = None) -> Any:
        return conditions(action=action, emotion=emotion, serial=serial, progress=progress)

    return make


@dataclass
class Ticket:
    """Handle of a submitted command. ``shown`` resolves to the output frame seq at which it took effect,
    or None if a later command replaced it before any of its frames were shown. ``finished`` resolves to
    the output frame seq at which what it started (an action's play, a speech) ended on screen -- by
    itself, interrupted or cancelled -- or None if it never showed. The session's frame count is the one
    clock of action timing: the director waits on ``finished``, not on its own clock. ``ended`` says why it
    finished (set before ``finished`` resolves): "played" (by itself; an emotion or prompt once shown),
    "replaced" (a later command took its place), "cancelled", "ignored" (a cancel with nothing to stop)."""

    command_id: str
    record: InputRecord
    shown: asyncio.Future[int | None] = field(repr=False)
    finished: asyncio.Future[int | None] = field(repr=False)
    ended: str = ""


class _Ready:
    """Frames already on the host, as a pending chunk (a generator without ``start_chunk``)."""

    def __init__(self, frames: np.ndarray) -> None:
        self.frames = frames
        self.count = int(frames.shape[0]) if frames.ndim >= 1 else 0

    def done(self) -> bool:
        return True

    def result(self) -> np.ndarray:
        return self.frames


@dataclass
class _Chunk:
    start_g: int
    count: int  # video frames
    pending: Any = field(repr=False)  # its frames on their way to the host (.done(), .result())
    directive: Directive  # what it was generated under (started_frame unset)
    snapshot: Any = field(repr=False)  # generator state before this chunk; None once it started showing
    shown: int = 0
    play_id: str = ""  # the command whose play of an action it shows (ChunkPlan.play_id)
    steps: int = 0  # denoising steps and latent frames it was made with (the input log keeps them for replay)
    latents: int = 0
    keep: bool = False  # it was in progress when a command came: kept, the command applies after it
    frames: np.ndarray | None = field(default=None, repr=False)  # (count, H, W, 4) uint8 once on the host

    @property
    def left(self) -> int:
        return self.count - self.shown


@dataclass
class _Playing:
    speech: Speech
    start_pts: float
    pos: int = 0  # next sample


def _check_frames(frames: np.ndarray) -> None:
    if frames.ndim != 4 or frames.shape[-1] != 4 or frames.dtype != np.uint8:
        raise EngineError(f"generator returned frames of shape {frames.shape} dtype {frames.dtype}; "
                          "expected (N, H, W, 4) uint8")


def _is_interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` is the generator's ChunkInterrupted (imported lazily: the engine runs without torch)."""
    try:
        from backend.model.generator import ChunkInterrupted
    except ImportError:
        return False
    return isinstance(exc, ChunkInterrupted)


def _percentile(values: collections.abc.Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values), q)) if values else None


class Engine:
    """The streaming engine (see module docstring). Use as ``async with Engine(...) as engine``."""

    def __init__(self, cfg: EngineConfig, generator: FrameGenerator | Loading, reference_rgba: np.ndarray | None, *,
                 max_steps: int = 4, max_chunk_frames: int = 2, sample_rate: int = 48000,
                 tts: TTS | None = None, character: Any = None,
                 conditions: ConditionsFactory | None = None,
                 audio_chunk_s: float = 0.02, audio_lead_s: float = 0.1,
                 remember_level: Callable[[int, int], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, log_header: dict[str, Any] | None = None) -> None:
        self.cfg = cfg
        self._loading = generator if isinstance(generator, Loading) else None
        self._gen: FrameGenerator = (_NotLoaded(generator.output_size) if isinstance(generator, Loading)
                                     else generator)
        self.tts = tts
        self.sample_rate = sample_rate
        self._conditions = conditions or default_conditions()
        self._clock = clock
        self._audio_chunk_s, self._audio_lead_s = audio_chunk_s, audio_lead_s
        self.session = Session(reference_rgba, fps=cfg.fps, idle_action=cfg.idle_action, character=character,
                               log_path=cfg.log_path or None)
        self.policy = ComputePolicy(fps=cfg.fps, max_steps=max_steps, min_steps=min(cfg.min_steps, max_steps),
                                    max_chunk=max_chunk_frames,
                                    min_chunk=min(cfg.min_chunk_frames, max_chunk_frames))
        self.pacer = Pacer(cfg.fps, clock=clock)
        self._worker = GeneratorWorker()
        self._interrupt = threading.Event()  # set from the loop: the chunk being made stops (restart_on_command)
        self._chunk_s: float | None = None  # smoothed worker seconds per chunk (not the first: it warms up)
        # (clock, steps, latent frames, worker seconds) of each chunk made: what the benchmark reports
        self.chunk_log: collections.deque[tuple[float, int, int, float]] = collections.deque(maxlen=4096)
        self._out = Broadcaster()
        self._buffer: collections.deque[_Chunk] = collections.deque()
        self._next_g = 0
        self._pending: list[tuple[Change, Ticket | None]] = []
        self._tickets: list[Ticket] = []  # applied, waiting for their first shown frame
        self._wake = asyncio.Event()
        self._first_chunk = asyncio.Event()
        self._loaded: asyncio.Future[None] | None = None  # made in start(), on the running loop
        self._cards: dict[int, np.ndarray] = {}
        self._card_every = max(1, round(cfg.fps / generator.card_fps)) if isinstance(generator, Loading) else 1
        self._remember_level = remember_level
        self._level_held = 0  # chunks generated since the compute level last changed
        self._level_remembered: tuple[int, int] | None = None
        self._ids = itertools.count(1)
        self._tasks: list[asyncio.Task[None]] = []
        self._speaking_tasks: set[asyncio.Task[None]] = set()  # synthesizing the next sentences of a `say`
        self._last: VideoFrame | None = None
        self.directive = Directive(action=cfg.idle_action)  # the one on screen (started_frame = output seq)
        self._last_wall: float | None = None
        self._scheduled_speech: tuple[Speech | None, int] | None = None
        self._playing: _Playing | None = None
        self._audio_seq = 0
        self._rate = RateMeter(clock=clock)
        self._latencies: collections.deque[float] = collections.deque(maxlen=512)
        self.error: BaseException | None = None
        self.counters = {"frames_made": 0, "frames_shown": 0, "frames_dropped": 0, "frames_repeated": 0,
                         "chunks_made": 0, "chunks_dropped": 0, "audio_chunks": 0, "commands": 0,
                         "commands_rejected": 0, "commands_coalesced": 0, "commands_cancelled": 0,
                         "frames_starting": 0, "chunks_restarted": 0, "chunks_finished_for_command": 0}
        self._plays: dict[str, Ticket] = {}  # applied commands whose play has not ended on screen yet
        self._cancelled: collections.deque[str] = collections.deque(maxlen=64)  # ids cancelled lately
        self._shown_play = ""  # play_id of the last frame shown
        self._generating = False  # the worker is making a chunk now
        self._arrived_while_generating = False  # a command came while it was: that chunk is kept
        # the first command that came while the chunk in the making was made: (its arrival, the time the frames
        # queued then run out); set by the loop before the interrupt, read by the worker (engine.finish_within_s)
        self._command_at: tuple[float, float] | None = None
        self._chunk_t0 = 0.0  # worker clock at the start of the chunk in the making
        self._finishing = False  # the chunk in the making finishes although a command came (finish_within_s)
        self._log_header = dict(log_header or {})

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._tasks:
            raise EngineError("engine already started")
        self.session.log.open({"fps": self.cfg.fps, "idle_action": self.cfg.idle_action,
                               "character": self.session.character_name, **self._log_header})
        self._worker.start()
        self._loaded = asyncio.get_running_loop().create_future()
        if self._loading is None:
            self._loaded.set_result(None)
        self._tasks = [asyncio.create_task(self._produce(), name="engine-producer"),
                       asyncio.create_task(self._pace(), name="engine-pacer")]

    async def stop(self) -> None:
        if self._loaded is not None and not self._loaded.done():
            self._loaded.cancel()  # stopped while loading: nobody waits for the load any more
        for task in [*self._tasks, *self._speaking_tasks]:
            task.cancel()
        await asyncio.gather(*self._speaking_tasks, return_exceptions=True)
        await asyncio.gather(*self._tasks, return_exceptions=True)  # a failed producer was logged already
        self._tasks = []
        await self._worker.stop()
        self._out.close()
        waiting = [t for _, t in self._pending if t is not None] + self._tickets
        self._pending, self._tickets = [], []
        for ticket in waiting:
            self.session.log.resolve(ticket.record, "failed", error="engine stopped before it took effect")
            if not ticket.shown.done():
                ticket.shown.cancel()
        for ticket in [*waiting, *self._plays.values()]:
            if not ticket.finished.done():
                ticket.finished.cancel()
        self._plays.clear()

    async def wait_loaded(self) -> None:
        """Wait until the generator is built (at once unless it came as a :class:`Loading`); raises what
        loading raised. The engine must be started."""
        if self._loaded is None:
            raise EngineError("the engine is not running")
        await asyncio.shield(self._loaded)

    @property
    def starting(self) -> bool:
        """No generated frame shown yet (the starting card, if any, is on screen) and nothing failed."""
        return self._last is None and self.error is None

    async def wait_started(self) -> None:
        """Wait until the first chunk exists (frames flow from then on); wrap in ``asyncio.timeout``."""
        await self._first_chunk.wait()

    # ------------------------------------------------------------------ public API

    @property
    def fps(self) -> float:
        return self.cfg.fps

    @property
    def output_size(self) -> tuple[int, int]:
        return tuple(self._gen.output_size)  # type: ignore[return-value]

    @property
    def healthy(self) -> bool:
        """Frames were shown within the last second and the generator has not failed."""
        if self.error is not None or self._last_wall is None:
            return False
        return self._clock() - self._last_wall < 1.0

    @property
    def subscribers(self) -> int:
        return len(self._out)

    def subscribe(self, *, video: bool = True, audio: bool = True, slot_frames: int = 1,
                  audio_chunks: int = 512) -> Subscription:
        """A new subscription to the output (newest frames, every audio chunk)."""
        return self._out.subscribe(video=video, audio=audio, slot_frames=slot_frames, audio_chunks=audio_chunks)

    async def submit(self, command: Command) -> Ticket:
        """Queue ``command`` for the next chunk boundary. Raises :class:`CommandError` for unknown
        actions/emotions or a ``say`` without TTS; the stream goes on either way."""
        if not isinstance(command, Command):
            raise CommandError(f"expected a Command, got {type(command).__name__}")
        if command.kind is CommandKind.SAY:
            return await self._say(command)
        command, record = self._accept(command)
        if command.kind is CommandKind.CANCEL:
            self._cancel_now(command.argument)
        try:
            self.session.validate(command)
        except CommandError as exc:
            self._reject(record, exc)
            raise
        return self._enqueue(Change(command, record))

    async def reset(self, reference_rgba: np.ndarray | None = None, character: Any = None) -> Ticket:
        """Restart the stream from a new reference (and character), or from the current one if None.
        Rendering another character's reference is the caller's job."""
        if reference_rgba is not None or character is not None:
            self.session.set_character(reference_rgba if reference_rgba is not None else self.session.reference_rgba,
                                       character if character is not None else self.session.character)
        return await self.submit(Command(CommandKind.RESET, "", source="app"))

    async def speak(self, pcm: np.ndarray, sample_rate: int, text: str = "", *,
                    command: Command | None = None) -> Ticket:
        """Speak ``pcm`` (float32 mono, or (samples, channels)) from the next chunk boundary on: the action
        becomes "talk", the mouth follows the audio, audio chunks carry pts aligned to the frames."""
        command, record = self._accept(command or Command(CommandKind.SAY, text, source="speak"))
        try:
            speech = self._make_speech(pcm, sample_rate, text, command.command_id)
        except CommandError as exc:
            self._reject(record, exc)
            raise
        return self._enqueue(Change(command, record, speech))

    def status(self) -> dict[str, Any]:
        """A JSON-able snapshot of the engine state."""
        d = self.directive
        lat = list(self._latencies)
        state = getattr(self._gen, "state", None)
        if dataclasses.is_dataclass(state) and not isinstance(state, type):
            state = dataclasses.asdict(state)
        elif state is not None and not isinstance(state, dict):
            state = str(state)
        return {
            **self.counters,
            "frames_skipped": self.pacer.skipped,
            "fps_target": self.cfg.fps,
            "fps_measured": round(self._rate.rate(), 3),
            "steps": self.policy.steps,
            "chunk_frames": self.policy.chunk,
            "load": self.policy.load,
            "buffer_frames": self.buffer_frames,
            "lookahead_frames": self.cfg.lookahead_frames,
            "restart_on_command": self._restartable,
            "chunk_seconds": self._chunk_s,
            "latency_p50_s": _percentile(lat, 50),
            "latency_p95_s": _percentile(lat, 95),
            "latency_last_s": lat[-1] if lat else None,
            "directive": {"action": d.action, "emotion": d.emotion, "prompt": d.prompt,
                          "started_frame": d.started_frame, "command_id": d.command_id},
            "speaking": self._playing is not None,
            "subscribers": self.subscribers,
            "character": self.session.character_name,
            "healthy": self.healthy,
            "starting": self.starting,
            "error": repr(self.error) if self.error else None,
            "generator": state,
        }

    @property
    def buffer_frames(self) -> int:
        return sum(c.left for c in self._buffer)

    @property
    def latencies(self) -> list[float]:
        return list(self._latencies)

    # ------------------------------------------------------------------ commands

    def _accept(self, command: Command) -> tuple[Command, InputRecord]:
        if not command.command_id:  # unique across restarts: the session id is part of it
            command = dataclasses.replace(command, command_id=f"{self.session.log.session_id}.c{next(self._ids)}")
        self.counters["commands"] += 1
        record = self.session.log.add(InputRecord(
            command.command_id, str(command.kind), command.argument, command.source, command.user_name,
            arrival=self._clock()))
        log.info("command id=%s kind=%s source=%s", command.command_id, command.kind, command.source)
        return command, record

    def _cancel_now(self, target_id: str) -> None:
        """What a ``cancel`` does at once, before its chunk boundary: a command not applied yet is withdrawn,
        and speech of ``target_id`` goes silent now (its action ends at the next chunk, when the cancel applies)."""
        self._cancelled.append(target_id)  # also what is still being prepared: a say waiting for its TTS
        for change, ticket in list(self._pending):
            if change.command.command_id == target_id:
                self._pending.remove((change, ticket))
                if ticket is not None:
                    self.session.log.resolve(ticket.record, "cancelled")
                    if not ticket.shown.done():
                        ticket.shown.set_result(None)
                    self._finish(ticket, None, "cancelled")
                self.counters["commands_cancelled"] += 1
        silenced = False
        if self._scheduled_speech is not None and self._scheduled_speech[0] is not None \
                and self._scheduled_speech[0].speech_id == target_id:
            self._scheduled_speech = None
            silenced = True
        if self._playing is not None and self._playing.speech.speech_id == target_id:
            self._playing = None
            silenced = True
        if silenced:
            self.counters["commands_cancelled"] += 1
        log.info("cancel target=%s speech_silenced=%s", target_id, silenced)

    def _reject(self, record: InputRecord, exc: Exception) -> None:
        self.counters["commands_rejected"] += 1
        self.session.log.resolve(record, "rejected", error=str(exc))
        log.info("command rejected id=%s error=%s", record.command_id, exc)

    def _enqueue(self, change: Change) -> Ticket:
        assert change.record is not None
        if change.command.command_id in self._cancelled:  # cancelled while it was prepared (a say's TTS)
            loop = asyncio.get_running_loop()
            ticket = Ticket(change.command.command_id, change.record, loop.create_future(), loop.create_future())
            self.session.log.resolve(change.record, "cancelled")
            ticket.shown.set_result(None)
            self._finish(ticket, None, "cancelled")
            log.info("command cancelled before it was queued id=%s", change.command.command_id)
            return ticket
        if not self._tasks or self.error is not None:
            err = EngineError("the engine is not running" if self.error is None else
                              f"the engine stopped: {self.error!r}")
            self.session.log.resolve(change.record, "failed", error=str(err))
            raise err
        loop = asyncio.get_running_loop()
        ticket = Ticket(change.command.command_id, change.record, loop.create_future(), loop.create_future())
        self._pending.append((change, ticket))
        if self._generating:
            if self._restartable:
                if not self._interrupt.is_set():
                    self._command_at = (self._clock(), self._runout())
                self._interrupt.set()  # the chunk being made stops at its next pass (or finishes: _stop_now)
            else:
                self._arrived_while_generating = True
        self._wake.set()
        return ticket

    async def _say(self, command: Command) -> Ticket:
        command, record = self._accept(command)
        try:
            if self.tts is None:
                raise CommandError("say: no text-to-speech engine configured")
            if not command.argument.strip():
                raise CommandError("say: empty text")
            tts = self.tts
            try:
                prepare = getattr(tts, "prepare", None)
                text = prepare(command.argument) if prepare is not None else command.argument
                first, *rest = split_sentences(text) or [text]
                pcm, sr = await asyncio.to_thread(tts, first)
            except Exception as exc:
                raise CommandError(f"say: text-to-speech failed: {exc}") from exc
            speech = self._make_speech(pcm, sr, first, command.command_id)
        except CommandError as exc:
            self._reject(record, exc)
            raise
        ticket = self._enqueue(Change(command, record, speech))
        if rest:
            task = asyncio.create_task(self._say_rest(command, tts, rest), name=f"say-{command.command_id}")
            self._speaking_tasks.add(task)
            task.add_done_callback(self._speaking_tasks.discard)
        return ticket

    async def _say_rest(self, command: Command, tts: TTS, sentences: list[str]) -> None:
        """Synthesize the sentences after the first and append each to the speech while it plays."""
        for i, sentence in enumerate(sentences, 2):
            try:
                pcm, sr = await asyncio.to_thread(tts, sentence)
                more = self._make_speech(pcm, sr, sentence, command.command_id)
            except Exception as exc:  # the sentences spoken so far stand; the stream goes on
                log.warning("say: sentence %d of command id=%s not spoken: %s", i, command.command_id, exc)
                return
            if command.command_id in self._cancelled:  # cancelled (or silenced) meanwhile: say no more
                return
            if self._extend_speech(more):
                continue
            # the speech ended before this sentence was ready: it starts as a speech of its own
            part = dataclasses.replace(command, argument=sentence, command_id=f"{command.command_id}.{i}")
            part, record = self._accept(part)
            more = dataclasses.replace(more, speech_id=part.command_id)
            try:
                self._enqueue(Change(part, record, more))
            except EngineError:
                return

    def _extend_speech(self, more: Speech) -> bool:
        extended = self.session.extend_speech(more, self._next_g)
        if extended is None:
            return False
        if self._playing is not None and self._playing.speech.speech_id == extended.speech_id:
            self._playing.speech = extended
        scheduled = self._scheduled_speech
        if scheduled is not None and scheduled[0] is not None and scheduled[0].speech_id == extended.speech_id:
            self._scheduled_speech = (extended, scheduled[1])
        return True

    def _make_speech(self, pcm: np.ndarray, sample_rate: int, text: str, speech_id: str) -> Speech:
        pcm = np.asarray(pcm)
        if pcm.ndim == 1:
            pcm = pcm[:, None]
        if pcm.ndim != 2 or pcm.shape[0] == 0 or pcm.shape[1] > 8:
            raise CommandError(f"speak: pcm must be (samples,) or (samples, channels), got shape {pcm.shape}")
        if not np.issubdtype(pcm.dtype, np.floating):
            raise CommandError(f"speak: pcm must be float in [-1, 1], got dtype {pcm.dtype}")
        if int(sample_rate) <= 0:
            raise CommandError(f"speak: sample_rate must be positive, got {sample_rate}")
        pcm = np.ascontiguousarray(pcm, dtype=np.float32)
        mouth = mouth_envelope(pcm, int(sample_rate), self.cfg.fps)
        return Speech(pcm, int(sample_rate), mouth, text, speech_id)

    # ------------------------------------------------------------------ producer

    async def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        result, _ = await self._worker.call(fn, *args, **kwargs)
        return result

    @property
    def _restartable(self) -> bool:
        """A command may stop the chunk being made (``restart_on_command`` and a generator that can)."""
        return self.cfg.restart_on_command and hasattr(self._gen, "interrupt")

    def _gen_chunk(self, conditions: Any, mouth: np.ndarray | None, steps: int,
                   chunk: int) -> tuple[Any, Any]:
        """Runs in the worker thread: state before the chunk, then the chunk (None: a command stopped it, and
        the generator is back at that state)."""
        snap = self._gen.snapshot()
        restart = self._restartable
        if restart:
            self._chunk_t0 = self._clock()
            self._gen.interrupt = self._stop_now  # type: ignore[attr-defined]
        try:
            start = getattr(self._gen, "start_chunk", None)  # decode overlapped with the next chunk's passes
            if start is not None:
                made = start(conditions, mouth=mouth, steps=steps, chunk_frames=chunk)
            else:
                made = _Ready(np.asarray(self._gen.next_chunk(conditions, mouth=mouth, steps=steps,
                                                              chunk_frames=chunk)))
        except Exception as exc:
            if not (restart and _is_interrupted(exc)):
                raise
            self._gen.restore(snap)
            return snap, None
        finally:
            if restart:
                self._gen.interrupt = None  # type: ignore[attr-defined]
        return snap, made

    def _make_conditions(self, action: str, emotion: str, prompt: str, serial: int = 0,
                         progress: np.ndarray | None = None) -> Any:
        return self._conditions(action, emotion, prompt, serial=serial, progress=progress)

    async def _load(self, loading: Loading) -> None:
        t0 = self._clock()
        loaded: Loaded = await self._call(loading.load)
        if tuple(loaded.generator.output_size) != tuple(loading.output_size):
            log.warning("generator output size %s differs from the announced %s", loaded.generator.output_size,
                        loading.output_size)
        self._gen = loaded.generator
        self.session.set_character(loaded.reference_rgba, loaded.character if loaded.character is not None
                                   else self.session.character)
        if loaded.level is not None:
            self.policy.set_level(*loaded.level)
        if loaded.conditions is not None:
            self._conditions = loaded.conditions
        self._loading = None
        log.info("generator loaded seconds=%.1f steps=%d chunk=%d", self._clock() - t0, self.policy.steps,
                 self.policy.chunk)

    async def _produce(self) -> None:
        assert self._loaded is not None
        try:
            if self._loading is not None:
                try:
                    await self._load(self._loading)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a bad checkpoint, missing weights: wait_loaded() raises it to the app
                    self.error = exc
                    self._loaded.set_exception(exc)
                    self._loaded.exception()  # retrieved: a caller may never wait for it
                    log.debug("generator failed to load: %s", exc)
                    return
                self._loaded.set_result(None)
            await self._call(self._gen.reset, self.session.reference_rgba,
                             self._make_conditions(self.cfg.idle_action, "neutral", ""))
            while True:
                if self._pending:
                    await self._apply_pending()
                    continue
                if self.buffer_frames >= self._lookahead():
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                await self._generate_one()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self.error = exc
            log.exception("generator failed; output repeats the last frame")
            raise

    async def _generate_one(self) -> None:
        policy = self.policy
        n = self._gen.frames_per_chunk(policy.chunk)
        plan = self.session.plan(self._next_g, n)
        cond = self._make_conditions(plan.action, plan.emotion, plan.prompt, plan.serial, plan.progress)
        steps, latents = policy.steps, policy.chunk
        policy.chunk_started()
        self._interrupt.clear()
        self._command_at, self._finishing = None, False
        self._generating = True
        try:
            (snap, made), seconds = await self._worker.call(self._gen_chunk, cond, plan.mouth, steps, latents)
        finally:
            self._generating = False
        if made is None:  # a command stopped it: it is made again under the command (see _apply_pending)
            policy.chunk_discarded()
            self.counters["chunks_restarted"] += 1
            return
        if self.counters["chunks_made"] > 0:
            self._chunk_s = seconds if self._chunk_s is None else 0.5 * seconds + 0.5 * self._chunk_s
        self.chunk_log.append((self._clock(), steps, latents, seconds))
        if self.counters["chunks_made"] == 0:
            policy.chunk_discarded()  # the first chunk pays the warm-up: not a measure of the level
        else:
            before = policy.level
            policy.chunk_finished(made.count)
            self._level_held = 0 if policy.level != before else self._level_held + 1
            if (self._remember_level is not None and self._level_held >= REMEMBER_AFTER_CHUNKS
                    and policy.level != self._level_remembered):
                self._level_remembered = policy.level
                self._remember_level(*policy.level)
        directive = Directive(plan.action, plan.emotion, plan.prompt, command_id=plan.directive_id)
        # A command that came while this chunk was being made does not throw it away (see _apply_pending); with
        # restarts, when the chunk was let finish (or the command came during its last pass and finishing pays).
        keep, self._arrived_while_generating = self._arrived_while_generating, False
        if self._restartable and self._interrupt.is_set():
            keep = self._finishing or self._finish_pays(0.0)
        chunk = _Chunk(self._next_g, made.count, made, directive, snap, play_id=plan.play_id, steps=steps,
                       latents=latents, keep=keep)
        if made.done():
            _check_frames(self._take_frames(chunk))  # in line (no decode stream): checked here, as made
        self._buffer.append(chunk)
        self._next_g += made.count
        self.counters["frames_made"] += made.count
        self.counters["chunks_made"] += 1
        self._first_chunk.set()

    async def _apply_pending(self) -> None:
        changes, self._pending = self._pending, []
        # The boundary: after the chunk showing now, and after the chunk that was in progress when a command
        # came if it is the next to show (never thrown away: when commands come faster than chunks are made,
        # the picture still moves on). Chunks made ahead of that, not showing yet, are dropped for a quick
        # response (the engine is ahead of real time then, so dropping them cannot freeze the picture).
        keep = sum(1 for chunk in self._buffer if chunk.shown > 0)  # only the head can have started
        if self._restartable:
            # keep what covers the making of the next chunk, so the picture does not freeze meanwhile, and a
            # chunk let finish for the command (finish_within_s)
            cover = self._cover_frames()
            kept = sum(c.left for c in itertools.islice(self._buffer, keep))
            finished = max((i + 1 for i, c in enumerate(self._buffer) if c.keep), default=0)
            while keep < len(self._buffer) and (kept < cover or keep < finished):
                kept += self._buffer[keep].left
                keep += 1
        elif keep < len(self._buffer) and self._buffer[keep].keep:
            keep += 1
        for chunk in self._buffer:
            chunk.keep = False
        if len(changes) > 1:
            self.counters["commands_coalesced"] += len(changes) - 1
            log.info("commands coalesced at one chunk boundary n=%d ids=%s (the newest wins)", len(changes),
                     ",".join(c.command.command_id for c, _ in changes))
        dropped = list(itertools.islice(self._buffer, keep, None))
        boundary = dropped[0].start_g if dropped else self._next_g
        for _ in dropped:
            self._buffer.pop()
        if dropped:
            self.counters["frames_dropped"] += sum(c.left for c in dropped)
            self.counters["chunks_dropped"] += len(dropped)
        self._next_g = boundary
        resetting = any(c.command.kind is CommandKind.RESET for c, _ in changes)
        if resetting:
            await self._call(self._gen.reset, self.session.reference_rgba,
                             self._make_conditions(self.cfg.idle_action, "neutral", ""))
        elif dropped:
            await self._call(self._gen.restore, dropped[0].snapshot)
        for change, ticket in changes:
            self.session.apply(change, boundary)
            cmd = change.command
            self.session.log.applied(cmd.command_id, cmd.kind.value, cmd.argument, boundary,
                                     change.speech.mouth if change.speech is not None else None)
            if change.command.kind is CommandKind.SAY:
                self._scheduled_speech = (change.speech, boundary)
            elif change.command.kind is CommandKind.RESET:
                self._scheduled_speech = (None, boundary)
            if cmd.kind is CommandKind.CANCEL and self.session.directive.command_id != cmd.command_id:
                # nothing of the target was playing any more (or it was withdrawn before it applied)
                if ticket is not None:
                    self.session.log.resolve(ticket.record, "ignored", error="nothing of it was playing")
                    if not ticket.shown.done():
                        ticket.shown.set_result(None)
                    self._finish(ticket, None, "ignored")
                continue
            if cmd.kind is CommandKind.CANCEL:
                self.counters["commands_cancelled"] += 1
            if ticket is not None:
                self._tickets.append(ticket)
                self._plays[cmd.command_id] = ticket
        log.debug("applied changes=%d boundary=%d dropped_chunks=%d", len(changes), boundary, len(dropped))

    def _cover_frames(self) -> float:
        """Frames that must stay queued so the next chunk is ready for the slot after them: its measured
        making (the smoothed seconds per chunk, +10% and 10 ms for its jitter and decode) less the time until
        the pacer's next slot (everything, before a chunk was measured)."""
        if self._chunk_s is None:
            return math.inf
        need = 1.1 * self._chunk_s + 0.01
        if not self.pacer.started:
            return need * self.cfg.fps + 1.0
        # kept frames fill the slots from the next one on; the new chunk's first frame is due K slots later
        slack = max(0.0, self.pacer.deadline(self.pacer.next_seq) - self._clock())
        return max(0.0, (need - slack) * self.cfg.fps)

    def _lookahead(self) -> float:
        """Frames the producer queues at most: ``lookahead_frames``, or with ``lookahead_cover`` (and a chunk
        measured) only what covers the next chunk's making plus that many frames, so a command finds no more
        queued than a restart needs (each frame more delays its first frame by a frame)."""
        cap = float(self.cfg.lookahead_frames)
        if self.cfg.lookahead_cover <= 0 or not self._restartable or self._chunk_s is None:
            return cap
        return min(cap, self._chunk_s * self.cfg.fps + self.cfg.lookahead_cover)

    def _runout(self) -> float:
        """When the frames queued now have all been shown: the deadline of the first slot none of them fills."""
        now = self._clock()
        if not self.pacer.started:
            return now
        return max(now, self.pacer.deadline(self.pacer.next_seq + self.buffer_frames))

    def _slot_at(self, t: float) -> float:
        """The deadline of the first slot at or after ``t`` (``t`` itself before the pacer started)."""
        if self.pacer.t0 is None:
            return t
        return self.pacer.deadline(max(self.pacer.next_seq, math.ceil((t - self.pacer.t0) * self.cfg.fps - 1e-6)))

    def _finish_pays(self, remaining_s: float) -> bool:
        """Whether the chunk in the making, ``remaining_s`` from done, should finish rather than restart for the
        command that came meanwhile: the command's first frame then shows within ``finish_within_s`` of it, or no
        later than after a restart. Finishing throws nothing away; a restart throws the passes done away and
        makes the chunk again (its making then has to be covered by the frames queued, or frames repeat)."""
        budget, at, chunk_s = self.cfg.finish_within_s, self._command_at, self._chunk_s
        if budget <= 0 or at is None or chunk_s is None:
            return False
        arrival, runout = at
        now = self._clock()
        ready = now + remaining_s + READY_MARGIN_S
        shows = max(runout, self._slot_at(ready))  # the finished chunk's first frame
        n = self._gen.frames_per_chunk(self.policy.chunk)
        finish = max(shows + n / self.cfg.fps, self._slot_at(ready + chunk_s))  # then the command's
        restart = max(runout, self._slot_at(now + chunk_s + READY_MARGIN_S))
        return finish - arrival <= max(budget, restart - arrival + 1e-6)

    def _stop_now(self) -> bool:
        """The generator's ``interrupt`` (worker thread, before each pass): stop the chunk in the making for the
        command that came, unless finishing it pays (:meth:`_finish_pays`; decided once, at the first pass after
        the command)."""
        if not self._interrupt.is_set() or self._finishing:
            return False
        if self.cfg.finish_within_s > 0 and self._chunk_s is not None:
            remaining = max(0.0, self._chunk_s - (self._clock() - self._chunk_t0))
            if self._finish_pays(remaining):
                self._finishing = True
                self.counters["chunks_finished_for_command"] += 1
                return False
        return True

    # ------------------------------------------------------------------ pacer

    @staticmethod
    def _take_frames(chunk: _Chunk) -> np.ndarray:
        """The chunk's frames, fetched from its pending result (which must be done)."""
        if chunk.frames is None:
            chunk.frames = np.asarray(chunk.pending.result())
            chunk.pending = None
            if chunk.frames.shape[:1] != (chunk.count,):
                raise EngineError(f"generator returned {chunk.frames.shape[0]} frames for a chunk of {chunk.count}")
        return chunk.frames

    def _pop(self) -> tuple[np.ndarray, Directive, int, str] | None:
        if not self._buffer:
            return None
        chunk = self._buffer[0]
        if chunk.frames is None:
            if not chunk.pending.done():  # still decoding on the second stream: repeat for now
                return None
            try:
                _check_frames(self._take_frames(chunk))
            except Exception as exc:  # a broken generator: the stream repeats its last frame, as when it fails
                self.error = exc
                self._buffer.clear()
                log.error("generator returned bad frames: %s", exc)
                return None
        assert chunk.frames is not None
        i = chunk.shown
        if i == 0:  # it starts showing: it can no longer be dropped, so it is part of the session for good
            self.session.log.chunk(chunk.start_g, chunk.count, chunk.steps, chunk.latents)
        chunk.shown += 1
        chunk.snapshot = None  # started showing: never restored to
        if chunk.left == 0:
            self._buffer.popleft()
        return chunk.frames[i], chunk.directive, chunk.start_g + i, chunk.play_id

    async def _pace(self) -> None:
        if self._loading is None:  # a generator given ready: the clock starts with its first chunk
            await self._first_chunk.wait()
        self.pacer.start()
        while True:
            seq = await self.pacer.next_slot()
            self._show(seq)

    def _show(self, seq: int) -> None:
        pts = self.pacer.pts(seq)
        item = self._pop()
        if item is None:
            if self._last is None:
                self._show_card(seq, pts)
                return
            rgba, did, g, play_id = self._last.rgba, self._last.directive_id, None, self._shown_play
            self.counters["frames_repeated"] += 1
        else:
            rgba, directive, g, play_id = item
            did = directive.command_id
            if play_id != self._shown_play:
                ended, self._shown_play = self._shown_play, play_id
                self._finish(self._plays.pop(ended, None), seq, self._ended_by(self._plays.get(play_id), ended))
            self._wake.set()
            if self._last is None or did != self._last.directive_id:
                self.directive = dataclasses.replace(directive, started_frame=seq)
        frame = VideoFrame(seq, pts, rgba, did)
        prev = self._last
        self._last = frame
        self._last_wall = self._clock()
        self.counters["frames_shown"] += 1
        self._rate.tick()
        if g is not None and (prev is None or did != prev.directive_id):
            self._took_effect(did, seq, play_id)
        if g is not None and self._scheduled_speech is not None and g >= self._scheduled_speech[1]:
            speech = self._scheduled_speech[0]
            self._scheduled_speech = None
            self._playing = _Playing(speech, pts) if speech is not None else None
        self._out.publish_frame(frame)
        self._emit_audio(pts)

    def _show_card(self, seq: int, pts: float) -> None:
        """Before the first generated frame (only when built from a :class:`Loading`): the starting card."""
        every = self._card_every
        if self.error is not None or self._first_chunk.is_set() or seq % every:
            return
        phase = (seq // every) % 3
        card = self._cards.get(phase)
        if card is None:
            w, h = self._gen.output_size
            card = self._cards[phase] = starting_card(int(w), int(h), phase=phase)
        self.counters["frames_starting"] += 1
        self._out.publish_frame(VideoFrame(seq, pts, card, ""))

    def _took_effect(self, directive_id: str, seq: int, play_id: str = "") -> None:
        idx = next((i for i, t in enumerate(self._tickets) if t.command_id == directive_id), None)
        if idx is None:
            return
        now = self._clock()
        for i, ticket in enumerate(self._tickets[:idx + 1]):
            if i != idx and ticket.command_id == play_id:
                # its action plays, under an emotion or prompt that came at the same boundary: shown, not ended
                self.session.log.resolve(ticket.record, "shown", frame=seq, time=now)
                if not ticket.shown.done():
                    ticket.shown.set_result(seq)
                continue
            outcome = "shown" if i == idx else "superseded"
            self.session.log.resolve(ticket.record, outcome, frame=seq, time=now)
            if i == idx:
                self._latencies.append(now - ticket.record.arrival)
                log.info("command shown id=%s frame=%d latency_ms=%.0f", ticket.command_id, seq,
                         1000 * (now - ticket.record.arrival))
            if not ticket.shown.done():
                ticket.shown.set_result(seq if i == idx else None)
            kind = ticket.record.kind
            if i != idx or kind in (CommandKind.EMOTION.value, CommandKind.PROMPT.value):
                # never played / occupies no action
                self._finish(ticket, seq if i == idx else None,
                             "played" if i == idx else self._ended_by(self._tickets[idx], ticket.command_id))
                self._plays.pop(ticket.command_id, None)
        del self._tickets[:idx + 1]

    def _finish(self, ticket: Ticket | None, seq: int | None, why: str = "played") -> None:
        if ticket is not None and not ticket.finished.done():
            ticket.ended = why
            ticket.finished.set_result(seq)

    @staticmethod
    def _ended_by(successor: Ticket | None, command_id: str) -> str:
        """Why ``command_id``'s play ended, from the ticket of the play that took its place (None: by itself)."""
        if successor is None:
            return "played"
        record = successor.record
        return "cancelled" if record.kind == CommandKind.CANCEL.value and record.argument == command_id else "replaced"

    def _emit_audio(self, pts: float) -> None:
        playing = self._playing
        if playing is None:
            return
        sp = playing.speech
        step = max(1, round(sp.sample_rate * self._audio_chunk_s))
        total = sp.pcm.shape[0]
        horizon = pts + self._audio_lead_s
        while playing.pos < total:
            chunk_pts = playing.start_pts + playing.pos / sp.sample_rate
            if chunk_pts > horizon:
                break
            pcm = sp.pcm[playing.pos:playing.pos + step]
            self._out.publish_audio(AudioChunk(self._audio_seq, chunk_pts, sp.sample_rate, pcm))
            self._audio_seq += 1
            self.counters["audio_chunks"] += 1
            playing.pos += pcm.shape[0]
        if playing.pos >= total:
            self._playing = None
