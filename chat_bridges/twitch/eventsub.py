"""Twitch EventSub over WebSocket, sans-I/O: parse messages, map notifications, build Helix subscription bodies.

Message shapes follow Twitch's "Handling WebSocket Events" reference: every message is a JSON object
``{"metadata": {message_id, message_type, message_timestamp, [subscription_type, subscription_version]},
"payload": {...}}``. Flow (driven by :class:`chat_bridges.twitch.client.TwitchEventSubClient`):

1. connect, receive ``session_welcome`` (payload.session.id, keepalive_timeout_seconds);
2. POST ``helix/eventsub/subscriptions`` with :func:`subscription_request` (transport websocket + session id)
   within the keepalive window;
3. ``notification`` -> :func:`to_chat_event`; ``session_keepalive`` only proves the link is alive; if no
   message at all arrives for longer than the keepalive timeout (:func:`keepalive_expired`), reconnect;
4. ``session_reconnect`` -> connect to payload.session.reconnect_url (subscriptions carry over, no new POST);
5. ``revocation`` -> that subscription is gone (token revoked, user banned, ...).

Mapping: ``channel.channel_points_custom_reward_redemption.add`` -> ``PaidMessage(kind="redemption",
value_cents=0)`` (channel points are not money; text is the viewer's input, or the reward's title when the reward
asks for none, so a reward titled ``!dance`` works as a command); ``channel.cheer`` -> ``PaidMessage(kind="bits")``;
``channel.chat.message_delete`` -> :class:`Deletion`.
"""

from __future__ import annotations

import json
import logging
import re
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from backend.events import ChatEvent, Deletion, PaidMessage

from .protocol import TwitchError

__all__ = [
    "CHEER",
    "MESSAGE_DELETE",
    "REDEMPTION_ADD",
    "EventSubError",
    "EventSubMessage",
    "EventSubSession",
    "Keepalive",
    "Notification",
    "Revocation",
    "SessionReconnect",
    "Welcome",
    "keepalive_expired",
    "parse_message",
    "subscription_request",
    "to_chat_event",
]

log = logging.getLogger(__name__)

PLATFORM = "twitch"
REDEMPTION_ADD = "channel.channel_points_custom_reward_redemption.add"
CHEER = "channel.cheer"
MESSAGE_DELETE = "channel.chat.message_delete"
# Version of each subscription type we know how to map (Twitch EventSub subscription types reference).
VERSIONS = {REDEMPTION_ADD: "1", CHEER: "1", MESSAGE_DELETE: "1"}
_FRACTION = re.compile(r"\.\d+")
DEFAULT_KEEPALIVE_S = 10.0  # Twitch's default keepalive_timeout_seconds


class EventSubError(TwitchError, ValueError):
    """An EventSub message that is not what the reference describes."""


@dataclass(frozen=True)
class Welcome:
    session_id: str
    keepalive_timeout_s: float
    message_id: str = ""


@dataclass(frozen=True)
class Keepalive:
    message_id: str = ""


@dataclass(frozen=True)
class Notification:
    subscription_type: str
    subscription_version: str
    event: dict[str, Any] = field(repr=False)
    message_id: str = ""
    timestamp: float = 0.0  # message_timestamp, seconds since the epoch


@dataclass(frozen=True)
class SessionReconnect:
    reconnect_url: str
    session_id: str = ""
    message_id: str = ""


@dataclass(frozen=True)
class Revocation:
    subscription_type: str
    status: str  # "authorization_revoked", "user_removed", "version_removed"
    subscription_id: str = ""
    message_id: str = ""


EventSubMessage = Welcome | Keepalive | Notification | SessionReconnect | Revocation


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise EventSubError(f"eventsub: {where} must be an object, got {type(value).__name__}")
    return value


def _str(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise EventSubError(f"eventsub: {where}.{key} must be a non-empty string, got {value!r:.60}")
    return value


def _timestamp(value: Any) -> float:
    """RFC 3339 with nanoseconds (``2023-07-19T14:56:51.634234626Z``) -> epoch seconds; 0.0 if unreadable."""
    if not isinstance(value, str) or not value:
        return 0.0
    text = value.replace("Z", "+00:00")
    text = _FRACTION.sub(lambda m: m.group(0)[:7], text)  # Python 3.11 reads at most 6 fraction digits
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        return 0.0
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()


def parse_message(text: str | bytes) -> EventSubMessage:
    """Parse one EventSub websocket message. Raises :class:`EventSubError` naming what is wrong."""
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise EventSubError(f"eventsub: message is not JSON: {exc}") from exc
    data = _obj(data, "message")
    meta = _obj(data.get("metadata"), "metadata")
    payload = _obj(data.get("payload", {}), "payload")
    kind = _str(meta, "message_type", "metadata")
    message_id = str(meta.get("message_id") or "")
    if kind == "session_welcome":
        session = _obj(payload.get("session"), "payload.session")
        keepalive = session.get("keepalive_timeout_seconds")
        if not isinstance(keepalive, int | float) or isinstance(keepalive, bool) or keepalive <= 0:
            keepalive = DEFAULT_KEEPALIVE_S
        return Welcome(_str(session, "id", "payload.session"), float(keepalive), message_id)
    if kind == "session_keepalive":
        return Keepalive(message_id)
    if kind == "notification":
        sub = _obj(payload.get("subscription"), "payload.subscription")
        sub_type = str(meta.get("subscription_type") or sub.get("type") or "")
        if not sub_type:
            raise EventSubError("eventsub: notification without a subscription type")
        version = str(meta.get("subscription_version") or sub.get("version") or "")
        event = _obj(payload.get("event"), "payload.event")
        return Notification(sub_type, version, event, message_id, _timestamp(meta.get("message_timestamp")))
    if kind == "session_reconnect":
        session = _obj(payload.get("session"), "payload.session")
        return SessionReconnect(_str(session, "reconnect_url", "payload.session"), str(session.get("id") or ""),
                                message_id)
    if kind == "revocation":
        sub = _obj(payload.get("subscription"), "payload.subscription")
        return Revocation(str(sub.get("type") or meta.get("subscription_type") or ""), str(sub.get("status") or ""),
                          str(sub.get("id") or ""), message_id)
    raise EventSubError(f"eventsub: unknown message_type {kind!r:.40}")


def to_chat_event(note: Notification) -> ChatEvent | None:
    """Map a notification to a backend event; None for subscription types we do not map.

    Raises :class:`EventSubError` when a mapped event lacks a field it needs."""
    ev = note.event
    channel = str(ev.get("broadcaster_user_login") or "")
    if note.subscription_type == REDEMPTION_ADD:
        reward = _obj(ev.get("reward"), "event.reward")
        text = str(ev.get("user_input") or "").strip() or str(reward.get("title") or "")
        return PaidMessage(PLATFORM, channel, _str(ev, "user_id", "event"),
                           str(ev.get("user_name") or ev.get("user_login") or ""), text, value_cents=0,
                           kind="redemption", message_id=_str(ev, "id", "event"), timestamp=note.timestamp)
    if note.subscription_type == CHEER:
        bits = ev.get("bits")
        if not isinstance(bits, int) or isinstance(bits, bool) or bits <= 0:
            raise EventSubError(f"eventsub: channel.cheer event.bits must be a positive integer, got {bits!r:.20}")
        anonymous = bool(ev.get("is_anonymous"))
        return PaidMessage(PLATFORM, channel, "" if anonymous else str(ev.get("user_id") or ""),
                           "anonymous" if anonymous else str(ev.get("user_name") or ev.get("user_login") or ""),
                           str(ev.get("message") or ""), value_cents=bits, kind="bits",
                           message_id=note.message_id, timestamp=note.timestamp)
    if note.subscription_type == MESSAGE_DELETE:
        return Deletion(PLATFORM, channel, _str(ev, "message_id", "event"))
    return None


def subscription_request(sub_type: str, session_id: str, *, broadcaster_user_id: str, user_id: str = "",
                         version: str = "") -> dict[str, Any]:
    """The JSON body of ``POST helix/eventsub/subscriptions`` for a websocket session.

    ``user_id`` (the reading user, i.e. the token's owner) is needed by ``channel.chat.*`` types."""
    if not session_id:
        raise ValueError("eventsub: subscription_request needs the session id from session_welcome")
    if not broadcaster_user_id:
        raise ValueError(f"eventsub: {sub_type} needs broadcaster_user_id")
    condition = {"broadcaster_user_id": broadcaster_user_id}
    if sub_type.startswith("channel.chat."):
        if not user_id:
            raise ValueError(f"eventsub: {sub_type} needs user_id (the token's user)")
        condition["user_id"] = user_id
    return {
        "type": sub_type,
        "version": version or VERSIONS.get(sub_type, "1"),
        "condition": condition,
        "transport": {"method": "websocket", "session_id": session_id},
    }


def keepalive_expired(last_message_at: float, now: float, keepalive_timeout_s: float, grace_s: float = 2.0) -> bool:
    """True when no message (of any type) arrived for longer than the keepalive timeout (+ grace):
    Twitch's advice is then to assume the connection is lost and reconnect."""
    return now - last_message_at > keepalive_timeout_s + grace_s


class EventSubSession:
    """The state of one EventSub websocket session, sans-I/O.

    ``receive(text, now)`` parses a message, remembers the session id / keepalive, drops duplicate message ids
    (Twitch may resend a notification) and returns it (None for a malformed or duplicate message: logged,
    never raised). ``expired(now)`` applies :func:`keepalive_expired` to the last message time.
    """

    def __init__(self, now: float, *, dedup_size: int = 512):
        self.session_id = ""
        self.keepalive_timeout_s = DEFAULT_KEEPALIVE_S
        self.last_message_at = now
        self._seen: deque[str] = deque(maxlen=dedup_size)

    def receive(self, text: str | bytes, now: float) -> EventSubMessage | None:
        self.last_message_at = now
        try:
            msg = parse_message(text)
        except EventSubError as exc:
            log.warning("%s", exc)
            return None
        if msg.message_id:
            if msg.message_id in self._seen:
                log.debug("eventsub: duplicate message_id=%s skipped", msg.message_id)
                return None
            self._seen.append(msg.message_id)
        if isinstance(msg, Welcome):
            self.session_id = msg.session_id
            self.keepalive_timeout_s = msg.keepalive_timeout_s
        return msg

    def expired(self, now: float, grace_s: float = 2.0) -> bool:
        return keepalive_expired(self.last_message_at, now, self.keepalive_timeout_s, grace_s)
