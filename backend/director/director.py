"""The director: chat events and the streamer's voice in, one :class:`~backend.events.Command` at a time out.

Usage::

    async with Director(cfg.director, engine.submit, reply=send_reply) as director:
        async for event in bridge.events():
            await director.handle(event)

``async with`` runs the dispatch task; without it, call :meth:`Director.tick` yourself (tests drive it with a
fake clock, nothing ever sleeps on that clock).

Lanes - decided here, documented for the engine:

* **Serialized lane** (``ACT``, ``SAY``): body actions and speech never overlap.  They wait in the priority
  queue (:mod:`backend.director.policy`) and the next one is sent only when the current one has finished.
  The engine owns action timing (its session counts frames): when the sink returns the engine's ticket, the
  director waits on its ``finished`` -- in process (``engine.submit``) or from another process over ``/control``
  (:class:`backend.remote.RemoteTicket`, resolved by the backend's command events). Only where that word cannot
  come (a sink that gives none, like a test recorder; a ``finished`` that raises: the connection dropped, an older
  backend) does the director go by an estimate on its own clock: an action's ``duration_s`` from
  :mod:`backend.actions`, speech by :func:`say_duration_s`; and a watchdog goes on if the word never comes.
* **Moderation after the start**: a deleted message, or a banned viewer, whose command is already playing is
  cancelled (``CommandKind.CANCEL`` to the engine: speech stops at once, an action at its next chunk).
* **Immediate lane** (``EMOTION``, ``PROMPT``, ``RESET``): they change the conditioning, not the body, so they
  go to the sink at once (still moderated, still under cooldowns); the latest one wins.

Per request, in order: normalise + length -> grammar -> blocked words (request; and say text) -> mod-only and
allowlist -> dedup -> vote (vote mode) -> per-user limit -> cooldowns (with a rate-limited "@user wait N s"
reply) -> queue (held there until the streamer approves, in approval mode).  The broadcaster and moderators
bypass dedup, limits and cooldowns; paid messages bypass cooldowns; the streamer's own commands
(:meth:`Director.handle_streamer`) bypass everything except blocked words in what the idol says.  Every
decision is logged (``decision=... reason=... user=... platform=...``) and kept in a bounded log
(:attr:`Director.decisions`); plain chatter that is no command is logged at debug level only and not kept,
so a busy chat cannot flush the log.

Streamer controls: :meth:`Director.skip`, :meth:`Director.remove`, :meth:`Director.approve` (and approval
mode, ``require_approval=True``: viewers' items wait, held, until approved); the same as words: ``skip``,
``approve <id>``, ``remove <id>`` (跳过 / 批准 / 删除) from the streamer, or with the prefix from the broadcaster
and moderators in chat.

``reply(platform, text) -> bool`` sends a chat message on that platform (False where it cannot: anonymous
login, platform without replies); the app wires it to the bridges' ``send_reply``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from backend.actions import ACTIONS, action
from backend.config import DirectorConfig
from backend.events import Ban, ChatEvent, ChatMessage, Command, CommandKind, Deletion, PaidMessage, Role
from backend.tasks import cancel_and_wait

from .grammar import STREAMER_MIN_COVERAGE, Grammar, Request, is_cjk
from .moderation import Moderator, Rejected, normalize
from .policy import (
    CommandQueue,
    Cooldowns,
    QueueItem,
    ReplyLimiter,
    Tier,
    UsageLimits,
    VoteBox,
    tier_for,
    wait_seconds,
)

__all__ = ["Decision", "Director", "DirectorState", "say_duration_s"]

logger = logging.getLogger(__name__)

Sink = Callable[[Command], Awaitable[object]]
Reply = Callable[[str, str], Awaitable[bool]]
StateCallback = Callable[[dict[str, Any]], object]

_IMMEDIATE = frozenset({CommandKind.EMOTION, CommandKind.PROMPT, CommandKind.RESET})
# control words of the broadcaster and moderators in chat (with the prefix) and of the streamer (also bare)
_CONTROLS = {"skip": "skip", "跳过": "skip", "approve": "approve", "批准": "approve", "remove": "remove",
             "veto": "remove", "删除": "remove"}
_SILENT = frozenset({"no_command", "empty"})  # chatter: logged at debug level, not kept
WATCHDOG_S = 30.0  # an action the engine has not reported finished this long after its estimate: go on anyway


def say_duration_s(text: str) -> float:
    """Estimated speaking time: ~4 CJK characters or ~14 other characters a second, plus a breath."""
    cjk = sum(1 for ch in text if is_cjk(ch))
    return round(max(1.0, 0.25 * cjk + 0.07 * (len(text) - cjk)) + 0.5, 3)


class DirectorState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    CLOSED = "closed"


@dataclass(frozen=True)
class Decision:
    """One decision of the director, as logged.

    ``decision``: queued, immediate, dispatched, finished, rejected, ignored, voted, vote_won, dropped,
    purged, cancelled (it had started: the engine is sent a ``cancel``), skipped, removed, approved, expired (a
    reaction that did not start in time), error.
    """

    at: float
    decision: str
    reason: str
    user: str = ""
    platform: str = ""
    command_id: str = ""
    kind: str = ""
    argument: str = ""
    detail: str = ""


@dataclass
class _Current:
    item: QueueItem
    started: float
    ends: float  # an estimate (for the overlay), and the end only where the sink gives no ``finished``
    finished: asyncio.Future[Any] | None = None  # the engine's word that its play ended (Ticket.finished)
    engine_id: str = ""  # the id the engine knows it by (a remote backend assigns its own)
    ticket: object = None  # what the sink returned (its ``ended``: why the play ended, once ``finished``)


class Director:
    """Turns chat events and the streamer's commands into commands for the engine, one action at a time."""

    def __init__(self, cfg: DirectorConfig, sink: Sink, *, clock: Callable[[], float] = time.monotonic,
                 reply: Reply | None = None, decision_log_size: int = 256, idle_action: str = "idle",
                 poll_interval_s: float = 0.05, require_approval: bool = False,
                 free_text_prompts: bool = False) -> None:
        action(idle_action)  # KeyError naming the known actions if wrong
        self.cfg = cfg
        self._sink = sink
        self._clock = clock
        self._reply = reply
        self.idle_action = idle_action
        self.poll_interval_s = poll_interval_s
        self.require_approval = require_approval
        self.moderator = Moderator(cfg)
        free_actions = {a for a in (cfg.allowed_actions or self._requestable()) if a not in cfg.mod_only_actions}
        # free_text_prompts (the Wan tier): free text becomes a PROMPT embedded as it is, not the nearest action
        self.grammar = Grammar(normalize(cfg.prefix), free_text=cfg.free_text, free_text_actions=free_actions,
                               free_text_prompts=free_text_prompts)
        self.queue = CommandQueue(cfg.queue_size)
        self.cooldowns = Cooldowns(cfg.user_cooldown_s, cfg.global_cooldown_s)
        self.replies = ReplyLimiter(cfg.cooldown_reply_interval_s)
        self.limits = UsageLimits(cfg.per_user_limit)
        self.votes = VoteBox(cfg.vote_window_s)
        self._ids = itertools.count(1)
        self._current: _Current | None = None
        self._decisions: deque[Decision] = deque(maxlen=decision_log_size)
        self._subscribers: list[StateCallback] = []
        self._last_state: dict[str, Any] | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.emotion_hold_s = 15.0  # reactions and the mood leave an asked-for emotion alone this long
        self._asked_emotion_at = -math.inf
        self.lifecycle = DirectorState.CREATED

    @staticmethod
    def _requestable() -> list[str]:
        return [a.name for a in ACTIONS if not a.loop]

    # ------------------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> Director:
        if self.lifecycle is not DirectorState.CREATED:
            raise RuntimeError(f"director cannot start: it is {self.lifecycle.value}")
        self.lifecycle = DirectorState.RUNNING
        self._task = asyncio.create_task(self._run(), name="director-dispatch")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.lifecycle = DirectorState.CLOSED
        task, self._task = self._task, None
        await cancel_and_wait(task)  # a closer cancelled from outside is passed on, not swallowed

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # a bug in one tick must not end the stream's commands: log it loudly, go on
                logger.exception("director tick failed")
            delay = self.poll_interval_s
            if self._current is not None and self._current.finished is None:  # no word from the engine: estimate
                delay = min(delay, max(0.0, self._current.ends - self._clock()))
            self._wake.clear()
            # asyncio.timeout, not wait_for: Python 3.11's wait_for returns a wake-up that came in the same
            # instant as a cancel and drops the cancel, and closing the director then waits for this task forever
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    # ------------------------------------------------------------------------- inputs

    async def handle(self, event: ChatEvent) -> Decision | None:
        """Take one chat event. Returns the decision (None for a Deletion/Ban that purged nothing)."""
        if isinstance(event, Deletion):
            return await self._purge(lambda i: i.platform == event.platform and i.message_id == event.message_id
                                     and bool(event.message_id), "deleted", event.platform,
                                     votes={"message_id": event.message_id})
        if isinstance(event, Ban):
            if not event.user_id:
                return await self._purge(lambda i: i.platform == event.platform and i.tier < Tier.STREAMER,
                                         "chat_cleared", event.platform, votes={"platform": event.platform})
            key = self._user_key(event.platform, event.user_id, event.user_name)
            return await self._purge(lambda i: i.user_key == key, "banned", event.platform,
                                     votes={"user_key": key}, user=event.user_name or event.user_id)
        if isinstance(event, ChatMessage | PaidMessage):
            try:
                return await self._handle_message(event)
            except Rejected as exc:
                return self._decide("rejected", exc.reason, user=event.user_name, platform=event.platform,
                                    detail=exc.detail)
        raise TypeError(f"director.handle: not a chat event: {type(event).__name__}")

    async def handle_streamer(self, text: str, source: str = "voice") -> Decision:
        """The streamer's own command ("wave", "!heart", "say thanks for the raid"): top priority, no
        cooldowns, limits or allowlist; only what the idol says is checked for blocked words."""
        norm = normalize(text)
        control = await self._control(norm.removeprefix(self.grammar.prefix), user="streamer", platform=source)
        if control is not None:
            return control
        parsed = self.grammar.parse(norm, free_text=True, bare_commands=True, any_action=True,
                                    min_coverage=STREAMER_MIN_COVERAGE)
        if parsed.request is None:
            return self._decide("rejected", parsed.reason.split(" ")[0], user="streamer", platform=source,
                                detail=parsed.reason)
        req = parsed.request
        try:
            if req.kind is CommandKind.SAY:
                req = dataclasses.replace(req, argument=self.moderator.check_say(req.argument, limit=False))
            elif req.kind is CommandKind.ACT:
                action(req.argument)
        except (Rejected, KeyError) as exc:
            reason = exc.reason if isinstance(exc, Rejected) else "unknown_action"
            return self._decide("rejected", reason, user="streamer", platform=source)
        item = self._item(req, tier=Tier.STREAMER, platform=source, user_key="", user_name="streamer")
        return await self._accept(item)

    async def handle_reaction(self, kind: CommandKind, argument: str, *, reason: str,
                              max_wait_s: float) -> Decision:
        """The idol's own reaction to what the camera saw (``reason``: "wave", "smile" ...): queued below every
        viewer (:attr:`Tier.REACTION`) and dropped if it has not started within ``max_wait_s``; an emotion goes
        at once, unless a viewer or the streamer asked for one within ``emotion_hold_s``."""
        if kind is CommandKind.EMOTION and self._emotion_held():
            return self._decide("rejected", "emotion_held", user="camera", platform="camera", kind=kind.value,
                                argument=argument, detail=reason)
        item = self._item(Request(kind, argument, reason), tier=Tier.REACTION, platform="camera", user_key="",
                          user_name="camera")
        item.expires_at = self._clock() + max_wait_s
        return await self._accept(item)

    async def handle_mood(self, emotion: str, *, detail: str = "") -> Decision:
        """The room's mood (chat and speech sentiment) sets the emotion between commands: sent at once, unless
        a viewer or the streamer asked for an emotion within ``emotion_hold_s``."""
        if self._emotion_held():
            return self._decide("rejected", "emotion_held", user="mood", platform="mood", kind="emotion",
                                argument=emotion, detail=detail)
        item = self._item(Request(CommandKind.EMOTION, emotion, "mood"), tier=Tier.REACTION, platform="mood",
                          user_key="", user_name="mood")
        return await self._accept(item)

    def _emotion_held(self) -> bool:
        return self._clock() - self._asked_emotion_at < self.emotion_hold_s

    # ------------------------------------------------------------------------- streamer controls

    async def skip(self) -> Decision | None:
        """End the current action now (the engine is sent the idle action); the next one follows at the next tick."""
        cur = self._current
        if cur is None:
            return None
        self._current = None
        if cur.item.command.kind is CommandKind.ACT:
            await self._send(Command(CommandKind.ACT, self.idle_action, source="control", user_name="streamer",
                                     command_id=self._new_id(), issued_at=self._clock()))
        decision = self._decide("skipped", "streamer", item=cur.item)
        self._changed()
        return decision

    def remove(self, command_id: str) -> bool:
        """Remove one queued item (the streamer's veto)."""
        gone = self.queue.remove_where(lambda i: i.command.command_id == command_id)
        for item in gone:
            self._decide("removed", "streamer", item=item)
        self._changed()
        return bool(gone)

    def approve(self, command_id: str) -> bool:
        """Play a queued item next (raised to the streamer's priority; released if held for approval)."""
        item = self.queue.promote(command_id)
        if item is not None:
            self._decide("approved", "streamer", item=item)
            self._changed()
        return item is not None

    def new_stream(self) -> None:
        """Start counting per-user limits afresh."""
        self.limits.reset()

    # ------------------------------------------------------------------------- dispatch

    async def tick(self) -> None:
        """Advance: close a due vote, end the current action when its time is up, dispatch the next one."""
        now = self._clock()
        if self.votes.enabled and self.votes.due(now):
            result = self.votes.close()
            if result is not None:
                req = Request(CommandKind.ACT, result.option, "vote")
                item = self._item(req, tier=Tier.VIEWER, platform=result.platform, user_key="",
                                  user_name="chat vote")
                self._decide("vote_won", f"{result.votes}_votes", item=item, platform=result.platform)
                await self._accept(item)
            self._changed()
        cur = self._current
        if cur is not None and cur.finished is not None and cur.finished.done() \
                and (cur.finished.cancelled() or cur.finished.exception() is not None):
            # no word will come (a remote backend's connection dropped, the engine stopped): the estimate ends it
            error = "cancelled" if cur.finished.cancelled() else str(cur.finished.exception())
            logger.warning("no word from the engine about command=%s (%s); going by its estimate",
                           cur.item.command.command_id, error)
            cur.finished = None
        if cur is not None and cur.finished is not None and not cur.finished.done() \
                and now >= cur.ends + WATCHDOG_S:  # a safety net only: the engine stopped answering
            logger.warning("no word from the engine about command=%s %.0f s after its estimated end; going on",
                           cur.item.command.command_id, WATCHDOG_S)
            cur.finished = None
        if cur is not None and (cur.finished.done() if cur.finished is not None else now >= cur.ends):
            self._current = None
            word = cur.finished is not None  # the engine's (played, replaced by another client's command ...)
            self._decide("finished", "played" if word else "duration_elapsed", item=cur.item,
                         detail=str(getattr(cur.ticket, "ended", "") or "") if word else "")
            self._changed()
        for stale in self.queue.remove_where(lambda i: i.expires_at <= now):
            self._decide("expired", "not_started_in_time", item=stale)
            self._changed()
        while self._current is None:
            popped = self.queue.pop()
            if popped is None:
                break
            item = popped
            item.command = dataclasses.replace(item.command, issued_at=now)
            current = None
            if item.command.kind not in _IMMEDIATE:  # an approved emotion/prompt does not occupy the body
                current = self._current = _Current(item, now, now + item.duration_s)
            self._decide("dispatched", f"next_{item.tier.name.lower()}", item=item)
            self._changed()
            sent = await self._send(item.command)
            if current is not None and self._current is current:
                current.engine_id = str(getattr(sent, "command_id", "") or item.command.command_id)
                current.ticket = sent
                finished = getattr(sent, "finished", None)
                looping = item.command.kind is CommandKind.ACT and action(item.command.argument).loop
                if isinstance(finished, asyncio.Future) and not looping:  # the engine times the action
                    # (a looping action, idle or talk, plays until replaced: its estimate ends it here)
                    current.finished = finished
                    finished.add_done_callback(lambda _: self._wake.set())

    # ------------------------------------------------------------------------- state

    @property
    def decisions(self) -> list[Decision]:
        return list(self._decisions)

    @property
    def current(self) -> Command | None:
        return None if self._current is None else self._current.item.command

    def state(self) -> dict[str, Any]:
        """For the "now / up next" overlay: plain JSON-able data that changes only on events.

        ``{"now": item | None, "next": [item, ...], "vote": {"tally", "closes_at", "window_s"} | None}``; an item
        is ``{"id", "kind", "argument", "user", "platform", "tier", "value_cents", "duration_s", "held"}``, "now"
        adds "started_at" / "ends_at" on the director's clock (an overlay counts down from ``duration_s``)."""
        now = None
        if self._current is not None:
            now = {**self._item_view(self._current.item), "started_at": self._current.started,
                   "ends_at": self._current.ends}
        vote = None
        if self.votes.open:
            vote = {"tally": self.votes.tally(), "closes_at": self.votes.closes_at(), "window_s": self.votes.window_s}
        return {"now": now, "next": [self._item_view(i) for i in self.queue], "vote": vote}

    def subscribe(self, callback: StateCallback) -> Callable[[], None]:
        """Call ``callback(state)`` whenever :meth:`state` changes; returns the unsubscribe function.

        Callbacks run synchronously in the director's task: hand the state to a queue, don't block."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(callback)

        return unsubscribe

    # ------------------------------------------------------------------------- internals

    @staticmethod
    def _user_key(platform: str, user_id: str, user_name: str) -> str:
        # Bilibili without login reports uid 0 for everyone: fall back to the (masked) name then
        uid = user_id if user_id and user_id != "0" else user_name
        return f"{platform}:{uid}"

    def _new_id(self) -> str:
        return f"d{next(self._ids)}"

    async def _handle_message(self, event: ChatMessage | PaidMessage) -> Decision | None:
        now = self._clock()
        paid = isinstance(event, PaidMessage) or bool(getattr(event, "reward_id", ""))
        value = event.value_cents if isinstance(event, PaidMessage) else 0
        role = event.role
        tier = tier_for(role, paid=paid)
        user_key = self._user_key(event.platform, event.user_id, event.user_name)
        who: dict[str, Any] = {"user": event.user_name, "platform": event.platform}

        try:
            text = self.moderator.clean_message(event.text)
        except Rejected as exc:
            # a gift without text, or a long chat line that is not even trying to be a command, is chatter
            if exc.reason == "empty" or not (paid or normalize(event.text[:64]).startswith(self.grammar.prefix)):
                logger.debug("decision=ignored reason=%s user=%s platform=%s", exc.reason, event.user_name,
                             event.platform)
                return None
            raise
        if role >= Role.MODERATOR and text.startswith(self.grammar.prefix):
            control = await self._control(text[len(self.grammar.prefix):], user=event.user_name,
                                          platform=event.platform)
            if control is not None:
                return control
        parsed = self.grammar.parse(text, free_text=True if paid else None)
        if parsed.request is None:
            reason = parsed.reason.split(" ")[0]
            if reason in _SILENT:
                logger.debug("decision=ignored reason=%s user=%s platform=%s", reason, event.user_name,
                             event.platform)
                return None
            return self._decide("rejected", reason, detail=parsed.reason, **who)
        req = parsed.request

        if role < Role.BROADCASTER:
            self.moderator.check_blocked(text)
        if req.kind is CommandKind.SAY:
            req = dataclasses.replace(req, argument=self.moderator.check_say(req.argument))
        elif req.kind is CommandKind.ACT:
            self.moderator.check_action(req.argument, role)

        staff = tier >= Tier.STAFF
        if not staff and self.moderator.is_duplicate(user_key, text, now):
            raise Rejected("duplicate", f"same message within {self.cfg.dedup_window_s:g} s")

        if self.votes.enabled and req.kind is CommandKind.ACT and tier < Tier.PAID:
            first = self.votes.cast(user_key, req.argument, now, platform=event.platform,
                                    message_id=event.message_id)
            self._changed()
            return self._decide("voted", "first_vote" if first else "vote_changed", kind=req.kind.value,
                                argument=req.argument, **who)

        if not staff:
            if self.limits.exhausted(user_key):
                raise Rejected("user_limit", f"{self.limits.limit} commands per stream")
            if not paid:
                left = self.cooldowns.remaining(user_key, now)
                if left > 0:
                    await self._cooldown_reply(event, left, now)
                    raise Rejected("cooldown", f"{left:.1f} s left")

        item = self._item(req, tier=tier, platform=event.platform, user_key=user_key,
                          user_name=event.user_name, message_id=event.message_id, value_cents=value)
        item.held = self.require_approval and not staff
        decision = await self._accept(item)
        if decision.decision in ("queued", "immediate") and not staff:
            self.cooldowns.record(user_key, now)
            self.limits.record(user_key)
        return decision

    def _item(self, req: Request, *, tier: Tier, platform: str, user_key: str, user_name: str,
              message_id: str = "", value_cents: int = 0) -> QueueItem:
        command = Command(req.kind, req.argument, source=platform, user_name=user_name,
                          command_id=self._new_id(), issued_at=self._clock())
        if req.kind is CommandKind.ACT:
            duration = action(req.argument).duration_s
        elif req.kind is CommandKind.SAY:
            duration = say_duration_s(req.argument)
        else:
            duration = 0.0
        return QueueItem(command, tier, value_cents=value_cents, platform=platform, user_key=user_key,
                         message_id=message_id, duration_s=duration)

    async def _accept(self, item: QueueItem) -> Decision:
        if item.command.kind is CommandKind.EMOTION and item.tier > Tier.REACTION:
            self._asked_emotion_at = self._clock()
        if item.command.kind in _IMMEDIATE and not item.held:
            decision = self._decide("immediate", f"{item.command.kind.value}_does_not_overlap", item=item)
            await self._send(item.command)
            return decision
        try:
            evicted = self.queue.push(item)
        except Rejected as exc:
            return self._decide("rejected", exc.reason, item=item)
        if evicted is not None:
            self._decide("dropped", "queue_full_lowest_priority", item=evicted)
        decision = self._decide("queued", f"tier_{item.tier.name.lower()}" + ("_held" if item.held else ""),
                                item=item)
        self._changed()
        self._wake.set()
        return decision

    async def _send(self, command: Command) -> object:
        try:
            return await self._sink(command)
        except Exception as exc:  # the stream goes on: one failed hand-off is logged, not fatal
            logger.exception("director sink failed command=%s kind=%s", command.command_id, command.kind.value)
            self._decide("error", f"sink_failed:{type(exc).__name__}", user=command.user_name,
                         platform=command.source, command_id=command.command_id)
            return None

    async def _control(self, rest: str, *, user: str, platform: str) -> Decision | None:
        """``skip`` / ``approve <id>`` / ``remove <id>`` (ids as in :meth:`state`); None if ``rest`` is none."""
        head, _, arg = rest.strip().partition(" ")
        control = _CONTROLS.get(head.casefold())
        if control is None:
            return None
        arg = arg.strip()
        if control == "skip":
            done = await self.skip()
            return done or self._decide("rejected", "nothing_to_skip", user=user, platform=platform)
        if not arg:
            return self._decide("rejected", f"missing_argument for {head!r}", user=user, platform=platform)
        ok = self.approve(arg) if control == "approve" else self.remove(arg)
        if not ok:
            return self._decide("rejected", "unknown_id", user=user, platform=platform, detail=arg)
        return self._decisions[-1]

    async def _cooldown_reply(self, event: ChatMessage | PaidMessage, left: float, now: float) -> None:
        if self._reply is None or not self.replies.ready(now):
            return
        n = wait_seconds(left)
        text = (f"@{event.user_name} 请等待 {n} 秒" if event.platform == "bilibili"
                else f"@{event.user_name} please wait {n} s")
        try:
            sent = await self._reply(event.platform, text)
        except Exception:  # a failed reply must not stop the director
            logger.exception("cooldown reply failed user=%s platform=%s", event.user_name, event.platform)
            return
        if sent:
            self.replies.mark(now)

    async def _purge(self, pred: Callable[[QueueItem], bool], reason: str, platform: str, *,
                     votes: dict[str, str], user: str = "") -> Decision | None:
        gone = self.queue.remove_where(pred)
        withdrawn = self.votes.withdraw(**votes) if self.votes.enabled else 0
        last = None
        for item in gone:
            last = self._decide("purged", reason, item=item)
        cur = self._current
        if cur is not None and pred(cur.item):
            # It already started: the engine stops it (speech at once, an action at its next chunk).
            self._current = None
            last = self._decide("cancelled", reason, item=cur.item)
            await self._send(Command(CommandKind.CANCEL, cur.engine_id or cur.item.command.command_id,
                                     source=cur.item.platform, user_name="moderation",
                                     command_id=self._new_id(), issued_at=self._clock()))
            self._changed()
        if withdrawn:
            last = self._decide("purged", f"{reason}_votes", user=user, platform=platform, detail=str(withdrawn))
        if gone or withdrawn:
            self._changed()
        elif reason != "deleted":
            logger.info("decision=purged reason=%s user=%s platform=%s removed=0", reason, user, platform)
        return last

    def _decide(self, decision: str, reason: str, *, item: QueueItem | None = None, user: str = "",
                platform: str = "", kind: str = "", argument: str = "", detail: str = "",
                command_id: str = "") -> Decision:
        if item is not None:
            c = item.command
            user, platform, command_id, kind, argument = (user or c.user_name, platform or item.platform,
                                                          c.command_id, c.kind.value, c.argument)
        d = Decision(self._clock(), decision, reason, user, platform, command_id, kind, argument, detail)
        self._decisions.append(d)
        logger.info("decision=%s reason=%s user=%s platform=%s command=%s kind=%s detail=%s", decision, reason,
                    user, platform, command_id, kind, detail)
        return d

    @staticmethod
    def _item_view(item: QueueItem) -> dict[str, Any]:
        c = item.command
        return {"id": c.command_id, "kind": c.kind.value, "argument": c.argument, "user": c.user_name,
                "platform": item.platform, "tier": item.tier.name.lower(), "value_cents": item.value_cents,
                "duration_s": item.duration_s, "held": item.held}

    def _changed(self) -> None:
        state = self.state()
        if state == self._last_state:
            return
        self._last_state = state
        for callback in list(self._subscribers):
            try:
                callback(state)
            except Exception:  # one broken overlay must not stop the director
                logger.exception("director state subscriber failed")
