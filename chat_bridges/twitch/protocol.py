"""Twitch chat over IRC (IRCv3 tags), sans-I/O: parse and serialize lines, and a small connection state machine.

Pure code, no sockets and no clocks; :mod:`chat_bridges.twitch.client` feeds it the text frames of the
websocket and sends what it asks for::

    conn = TwitchIrcConnection("somechannel")       # anonymous (justinfan) read-only login
    for line in conn.data_to_send(): ...            # CAP REQ, PASS?, NICK; JOIN follows the 001 welcome
    for event in conn.receive_data(frame_text): ... # ChatMessage, PaidMessage, Ban, Deletion, Welcome, ...

Formats follow Twitch's "IRC concepts" / "Tags" docs and RFC 1459 / IRCv3 message-tags:
``[@tags] [:prefix] COMMAND [params] [:trailing]`` with ``\\s \\: \\\\ \\r \\n`` escapes in tag values.

Mapping to :mod:`backend.events`:

- PRIVMSG -> :class:`ChatMessage` (role from badges; ``/me`` text is unwrapped from ``\\x01ACTION ...\\x01``);
  with ``bits`` > 0 -> :class:`PaidMessage` (kind "bits", 1 bit = 1 cent; the cheermotes are stripped from
  the text, :func:`strip_cheermotes`, so "Cheer100 !wave" is the command ``!wave`` paid with 100 bits);
  ``me`` is set for ``/me`` messages.
- PRIVMSG with ``custom-reward-id`` (a channel-point reward that asks for text) -> :class:`ChatMessage` with
  ``reward_id`` set. Decision: the IRC line carries neither the reward title nor its cost, and the same
  redemption also arrives, complete, over EventSub as ``PaidMessage(kind="redemption")``
  (:mod:`chat_bridges.twitch.eventsub`); emitting a PaidMessage here as well would count it twice.
- USERNOTICE ``sub``/``resub`` -> ``PaidMessage(kind="guard")`` (a paid membership, like Bilibili's guard),
  ``subgift`` -> ``PaidMessage(kind="gift")`` from the gifter, valued by ``msg-param-sub-plan`` (:data:`SUB_PLAN_CENTS`).
  ``submysterygift`` is only logged: Twitch follows it with one ``subgift`` per gifted sub, counting it would double.
  Other USERNOTICEs (raids, announcements, ...) are ignored.
- CLEARCHAT with a user -> :class:`Ban` (``ban-duration`` seconds, 0 = permanent); without -> ``Ban(user_id="")``.
- CLEARMSG -> :class:`Deletion` of ``target-msg-id``.

Malformed lines are logged and skipped: :meth:`TwitchIrcConnection.receive_data` never raises.
"""

from __future__ import annotations

import enum
import logging
import random
import re
from dataclasses import dataclass, field

from backend.events import Ban, ChatEvent, ChatMessage, Deletion, PaidMessage, Role

__all__ = [
    "AuthError",
    "CapAck",
    "ConnectionState",
    "IrcMessage",
    "IrcParseError",
    "Joined",
    "LoginFailed",
    "Reconnect",
    "TwitchError",
    "TwitchIrcConnection",
    "Welcome",
    "anonymous_nick",
    "cap_req",
    "chat_event",
    "escape_tag_value",
    "join",
    "nick",
    "parse_badges",
    "parse_line",
    "part",
    "pass_",
    "pong",
    "privmsg",
    "role_from_badges",
    "serialize",
    "strip_cheermotes",
    "unescape_tag_value",
]

log = logging.getLogger(__name__)

PLATFORM = "twitch"
CAPABILITIES = ("twitch.tv/tags", "twitch.tv/commands")
MAX_MESSAGE_CHARS = 500  # Twitch drops longer PRIVMSG text
# US cents per subscription by msg-param-sub-plan (list prices of tier 1/2/3; Prime counted as tier 1).
SUB_PLAN_CENTS = {"Prime": 499, "1000": 499, "2000": 999, "3000": 2499}


class TwitchError(Exception):
    """Base of the Twitch bridge's errors."""


class IrcParseError(TwitchError, ValueError):
    """A line that is not a well-formed IRC message."""


class AuthError(TwitchError):
    """Twitch refused the login (bad or expired token, missing scope) or the Helix call was unauthorized."""


# ----------------------------------------------------------------------------- lines


@dataclass(frozen=True)
class IrcMessage:
    """One IRC line. ``params`` includes the trailing parameter (if any) as its last element."""

    command: str
    params: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)
    prefix: str = ""

    @property
    def nick(self) -> str:
        """The nick part of a ``nick!user@host`` prefix ('' for a server prefix like ``tmi.twitch.tv``)."""
        if "!" in self.prefix:
            return self.prefix.split("!", 1)[0]
        if "@" in self.prefix:
            return self.prefix.split("@", 1)[0]
        return "" if "." in self.prefix else self.prefix

    @property
    def trailing(self) -> str:
        return self.params[-1] if self.params else ""


_UNESCAPE = {"s": " ", ":": ";", "\\": "\\", "r": "\r", "n": "\n"}
_ESCAPE = {" ": "\\s", ";": "\\:", "\\": "\\\\", "\r": "\\r", "\n": "\\n"}


def unescape_tag_value(value: str) -> str:
    r"""IRCv3 tag value unescaping: ``\s`` space, ``\:`` ``;``, ``\\`` backslash, ``\r``, ``\n``; any other
    escaped character stands for itself and a lone trailing backslash is dropped."""
    if "\\" not in value:
        return value
    out: list[str] = []
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "\\":
            if i + 1 < len(value):
                nxt = value[i + 1]
                out.append(_UNESCAPE.get(nxt, nxt))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def escape_tag_value(value: str) -> str:
    return "".join(_ESCAPE.get(ch, ch) for ch in value)


def _parse_tags(raw: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for item in raw.split(";"):
        if not item:
            continue
        key, _, value = item.partition("=")
        tags[key] = unescape_tag_value(value)
    return tags


def parse_line(line: str) -> IrcMessage:
    """Parse one IRC line (without or with its CRLF). Raises :class:`IrcParseError` naming the problem."""
    rest = line.rstrip("\r\n")
    if not rest.strip():
        raise IrcParseError("empty line")
    tags: dict[str, str] = {}
    if rest.startswith("@"):
        raw_tags, sep, rest = rest[1:].partition(" ")
        if not sep:
            raise IrcParseError(f"line has tags but no command: {line[:80]!r}")
        tags = _parse_tags(raw_tags)
        rest = rest.lstrip(" ")
    prefix = ""
    if rest.startswith(":"):
        prefix, sep, rest = rest[1:].partition(" ")
        if not sep or not prefix:
            raise IrcParseError(f"line has a prefix but no command: {line[:80]!r}")
        rest = rest.lstrip(" ")
    trailing: str | None = None
    if " :" in rest:
        rest, trailing = rest.split(" :", 1)
    elif rest.startswith(":"):
        raise IrcParseError(f"line has no command: {line[:80]!r}")
    words = rest.split()
    if not words:
        raise IrcParseError(f"line has no command: {line[:80]!r}")
    command = words[0].upper()
    if not (command.isalpha() or (len(command) == 3 and command.isdigit())):
        raise IrcParseError(f"bad command {words[0][:20]!r} in line {line[:80]!r}")
    params = tuple(words[1:]) + ((trailing,) if trailing is not None else ())
    return IrcMessage(command=command, params=params, tags=tags, prefix=prefix)


def _check_word(what: str, value: str) -> str:
    if not value or any(ch in value for ch in " \r\n\0"):
        raise ValueError(f"twitch irc: {what} must be a non-empty word without spaces or line breaks, got {value!r}")
    return value


def serialize(msg: IrcMessage, *, trailing: bool = False) -> str:
    """One line (without CRLF). Only the last parameter may contain spaces; it is sent as trailing
    (``:text``) when it needs to be or when ``trailing`` is set."""
    parts: list[str] = []
    if msg.tags:
        parts.append("@" + ";".join(f"{k}={escape_tag_value(v)}" if v else k for k, v in msg.tags.items()))
    if msg.prefix:
        parts.append(":" + msg.prefix)
    parts.append(_check_word("command", msg.command))
    for i, param in enumerate(msg.params):
        if any(ch in param for ch in "\r\n\0"):
            raise ValueError(f"twitch irc: parameter {i} of {msg.command} contains a line break")
        if i == len(msg.params) - 1 and (trailing or not param or " " in param or param.startswith(":")):
            parts.append(":" + param)
        else:
            _check_word(f"parameter {i} of {msg.command}", param)
            parts.append(param)
    return " ".join(parts)


def _channel(name: str) -> str:
    return "#" + _check_word("channel", name.lstrip("#").lower())


def cap_req(caps: tuple[str, ...] = CAPABILITIES) -> str:
    return serialize(IrcMessage("CAP", ("REQ", " ".join(caps))))


def pass_(token: str) -> str:
    """``PASS oauth:<token>`` (the ``oauth:`` prefix is added when missing). Never log the result."""
    token = token.strip()
    if not token.startswith("oauth:"):
        token = "oauth:" + token
    return "PASS " + _check_word("token", token)


def nick(name: str) -> str:
    return serialize(IrcMessage("NICK", (name.lower(),)))


_nick_line = nick  # TwitchIrcConnection's ``nick`` argument shadows the function


def anonymous_nick(rng: random.Random | None = None) -> str:
    """``justinfan<digits>``: Twitch's read-only anonymous login, no PASS needed."""
    return f"justinfan{(rng or random.Random()).randint(10_000, 99_999)}"


def join(channel: str) -> str:
    return serialize(IrcMessage("JOIN", (_channel(channel),)))


def part(channel: str) -> str:
    return serialize(IrcMessage("PART", (_channel(channel),)))


def privmsg(channel: str, text: str, reply_parent_msg_id: str = "") -> str:
    """A chat message; line breaks become spaces and the text is cut to 500 characters (Twitch's limit)."""
    text = " ".join(text.replace("\r", " ").replace("\n", " ").split())[:MAX_MESSAGE_CHARS]
    if not text:
        raise ValueError("twitch irc: PRIVMSG text is empty")
    tags = {"reply-parent-msg-id": reply_parent_msg_id} if reply_parent_msg_id else {}
    return serialize(IrcMessage("PRIVMSG", (_channel(channel), text), tags), trailing=True)


def pong(token: str = "tmi.twitch.tv") -> str:
    return serialize(IrcMessage("PONG", (token,)), trailing=True)


# ----------------------------------------------------------------------------- chat mapping


def parse_badges(value: str) -> dict[str, str]:
    """``broadcaster/1,subscriber/12`` -> ``{"broadcaster": "1", "subscriber": "12"}``."""
    badges: dict[str, str] = {}
    for item in value.split(","):
        if item:
            name, _, version = item.partition("/")
            badges[name] = version
    return badges


def role_from_badges(badges: dict[str, str], tags: dict[str, str] | None = None) -> Role:
    """Highest role among the badges (and the ``mod``/``vip``/``subscriber`` tags, if given)."""
    tags = tags or {}
    if "broadcaster" in badges or (tags.get("user-id") and tags.get("user-id") == tags.get("room-id")):
        return Role.BROADCASTER
    if "moderator" in badges or tags.get("mod") == "1":
        return Role.MODERATOR
    if "vip" in badges or "vip" in tags:
        return Role.VIP
    if "subscriber" in badges or "founder" in badges or tags.get("subscriber") == "1":
        return Role.SUBSCRIBER
    return Role.VIEWER


def _int_tag(tags: dict[str, str], key: str) -> int:
    value = tags.get(key, "")
    if not value:
        return 0
    try:
        return int(value)
    except ValueError:
        raise IrcParseError(f"tag {key}={value[:20]!r} is not an integer") from None


def chat_event(msg: IrcMessage) -> ChatEvent | None:
    """Map a PRIVMSG / CLEARCHAT / CLEARMSG to a backend event (None for other commands)."""
    if msg.command not in ("PRIVMSG", "CLEARCHAT", "CLEARMSG", "USERNOTICE"):
        return None
    if not msg.params or not msg.params[0].startswith("#"):
        raise IrcParseError(f"{msg.command} without a #channel")
    channel = msg.params[0][1:]
    tags = msg.tags
    if msg.command == "CLEARCHAT":
        if len(msg.params) < 2:
            return Ban(PLATFORM, channel, user_id="")
        return Ban(PLATFORM, channel, user_id=tags.get("target-user-id", "") or msg.params[1],
                   user_name=msg.params[1], duration_s=float(_int_tag(tags, "ban-duration")))
    if msg.command == "CLEARMSG":
        target = tags.get("target-msg-id", "")
        if not target:
            raise IrcParseError("CLEARMSG without a target-msg-id tag")
        return Deletion(PLATFORM, channel, target)
    if msg.command == "USERNOTICE":
        return _usernotice(msg, channel)
    if len(msg.params) < 2:
        raise IrcParseError("PRIVMSG without text")
    text = msg.params[1]
    me = text.startswith("\x01ACTION ") and text.endswith("\x01")
    if me:
        text = text[len("\x01ACTION "):-1]
    login = msg.nick
    user_name = tags.get("display-name") or login
    user_id = tags.get("user-id") or login
    badges = parse_badges(tags.get("badges", ""))
    role = role_from_badges(badges, tags)
    ts_ms = _int_tag(tags, "tmi-sent-ts")
    bits = _int_tag(tags, "bits")
    if bits > 0:
        return PaidMessage(PLATFORM, channel, user_id, user_name, strip_cheermotes(text, bits), value_cents=bits,
                           kind="bits", message_id=tags.get("id", ""), role=role, timestamp=ts_ms / 1000.0, me=me)
    return ChatMessage(PLATFORM, channel, user_id, user_name, text, message_id=tags.get("id", ""), role=role,
                       badges=tuple(f"{k}/{v}" for k, v in badges.items()), timestamp=ts_ms / 1000.0,
                       reply_to=tags.get("reply-parent-msg-id", ""), reward_id=tags.get("custom-reward-id", ""),
                       me=me)


# Twitch's global cheermote prefixes (Helix "Get Cheermotes", type global_first_party / global_third_party;
# the list TwitchPubSubMirror and others keep). A cheermote is a prefix directly followed by the bits it
# spends: "Cheer100", "Kappa5", "anon1".
CHEERMOTE_PREFIXES = frozenset(p.casefold() for p in (
    "Cheer", "DoodleCheer", "BibleThump", "cheerwhal", "Corgo", "uni", "ShowLove", "Party", "SeemsGood", "Pride",
    "Kappa", "FrankerZ", "HeyGuys", "DansGame", "EleGiggle", "TriHard", "Kreygasm", "4Head", "SwiftRage",
    "NotLikeThis", "FailFish", "VoHiYo", "PJSalt", "MrDestructoid", "bday", "RIPCheer", "Shamrock", "BitBoss",
    "Streamlabs", "Muxy", "HolidayCheer", "Anon", "Charity", "Goal", "Hype"))
_CHEERMOTE = re.compile(r"^([0-9A-Za-z]*?[A-Za-z])([1-9][0-9]*)$")


def strip_cheermotes(text: str, bits: int) -> str:
    """The text of a cheer without its cheermotes (what a viewer typed around them), spaces normalized.

    A word is a cheermote when it is a known global prefix + amount ("Cheer100", "kappa5"). Channels can
    upload their own prefixes, which IRC does not name: when the known ones do not add up to ``bits``, other
    letters+digits words are taken as cheermotes too when they make up exactly the missing bits (all of them,
    or one)."""
    words = text.split()
    kept: list[str] = []
    maybe: list[tuple[int, int]] = []  # (index in kept, amount) of words that look like custom cheermotes
    spent = 0
    for word in words:
        m = _CHEERMOTE.match(word)
        if m is None:
            kept.append(word)
            continue
        amount = int(m.group(2))
        if m.group(1).casefold() in CHEERMOTE_PREFIXES:
            spent += amount
            continue
        maybe.append((len(kept), amount))
        kept.append(word)
    left = bits - spent
    drop: set[int] = set()
    if maybe and left > 0:
        if sum(a for _, a in maybe) == left:
            drop = {i for i, _ in maybe}
        else:
            drop = next(({i} for i, a in maybe if a == left), set())
    return " ".join(w for i, w in enumerate(kept) if i not in drop)


def _usernotice(msg: IrcMessage, channel: str) -> PaidMessage | None:
    tags = msg.tags
    kind = {"sub": "guard", "resub": "guard", "subgift": "gift"}.get(tags.get("msg-id", ""))
    if kind is None:
        if tags.get("msg-id") == "submysterygift":
            log.debug("twitch irc: submysterygift count=%s (its subgift notices follow)",
                      tags.get("msg-param-mass-gift-count", "?"))
        return None
    plan = tags.get("msg-param-sub-plan", "")
    if plan not in SUB_PLAN_CENTS:
        raise IrcParseError(f"USERNOTICE {tags.get('msg-id')} with unknown msg-param-sub-plan={plan[:20]!r}")
    login = tags.get("login", "")
    text = msg.params[1] if len(msg.params) > 1 else ""
    return PaidMessage(PLATFORM, channel, tags.get("user-id") or login, tags.get("display-name") or login, text,
                       value_cents=SUB_PLAN_CENTS[plan], kind=kind, message_id=tags.get("id", ""),
                       role=role_from_badges(parse_badges(tags.get("badges", "")), tags),
                       timestamp=_int_tag(tags, "tmi-sent-ts") / 1000.0)


# ----------------------------------------------------------------------------- connection state machine


@dataclass(frozen=True)
class Welcome:
    """001 RPL_WELCOME: the login was accepted under ``nick``."""

    nick: str


@dataclass(frozen=True)
class CapAck:
    capabilities: tuple[str, ...]


@dataclass(frozen=True)
class Joined:
    channel: str


@dataclass(frozen=True)
class Reconnect:
    """Twitch asks us to reconnect (maintenance); the server closes the connection soon after."""


@dataclass(frozen=True)
class LoginFailed:
    """A login-failure NOTICE before the welcome (:data:`LOGIN_FAILURE_NOTICES`): the login was refused. ``reason`` is the server's text (holds no token)."""

    reason: str


ConnectionEvent = Welcome | CapAck | Joined | Reconnect | LoginFailed
IrcEvent = ChatEvent | ConnectionEvent


class ConnectionState(enum.Enum):
    LOGGING_IN = "logging_in"  # CAP/PASS/NICK queued, waiting for 001
    JOINING = "joining"  # 001 seen, JOIN queued
    JOINED = "joined"
    CLOSED = "closed"  # RECONNECT or login failure: this connection is done


# The NOTICE texts that mean the login itself was refused (Twitch "IRC concepts: authenticating"; TwitchIO
# and tmi.js match the same texts). Any other NOTICE before the 001 welcome is only logged.
LOGIN_FAILURE_NOTICES = ("login authentication failed", "login unsuccessful", "improperly formatted auth",
                         "invalid nick")


def _is_login_failure(text: str) -> bool:
    low = text.casefold()
    return any(n in low for n in LOGIN_FAILURE_NOTICES)


class TwitchIrcConnection:
    """One IRC session with Twitch chat, sans-I/O.

    ``token`` empty -> anonymous read-only login (``justinfan<digits>``, no PASS). The login lines are
    queued at construction; ``JOIN`` is queued on the 001 welcome; ``PING`` is answered with ``PONG`` here.
    ``receive_data(text)`` takes whole lines (one or more, CRLF-separated: what one websocket frame holds)
    and returns events; ``data_to_send()`` returns the lines to send (without CRLF) and empties the queue.
    """

    def __init__(self, channel: str, *, nick: str = "", token: str = "", rng: random.Random | None = None):
        self.channel = _channel(channel)[1:]
        self.anonymous = not token
        if token and not nick:
            raise ValueError("twitch irc: a token needs the bot's login name as nick")
        self.nick = anonymous_nick(rng) if self.anonymous else _check_word("nick", nick.lower())
        self.state = ConnectionState.LOGGING_IN
        self._outgoing: list[str] = [cap_req()]
        if token:
            self._outgoing.append(pass_(token))
        self._outgoing.append(_nick_line(self.nick))

    def data_to_send(self) -> list[str]:
        out, self._outgoing = self._outgoing, []
        return out

    def send_privmsg(self, text: str, reply_parent_msg_id: str = "") -> None:
        """Queue a chat message. Raises :class:`TwitchError` when anonymous or not joined."""
        if self.anonymous:
            raise TwitchError("twitch irc: an anonymous (justinfan) login cannot send messages")
        if self.state is not ConnectionState.JOINED:
            raise TwitchError(f"twitch irc: cannot send in state {self.state.value}")
        self._outgoing.append(privmsg(self.channel, text, reply_parent_msg_id))

    def receive_data(self, text: str) -> list[IrcEvent]:
        events: list[IrcEvent] = []
        for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
            if not line.strip():
                continue
            try:
                event = self._handle(parse_line(line))
            except ValueError as exc:  # IrcParseError, or a PING token we cannot echo
                log.warning("twitch irc: skipped malformed line: %s channel=%s", exc, self.channel)
                continue
            if event is not None:
                events.append(event)
        return events

    def _handle(self, msg: IrcMessage) -> IrcEvent | None:
        cmd = msg.command
        if cmd == "PING":
            self._outgoing.append(pong(msg.trailing or "tmi.twitch.tv"))
            return None
        if cmd == "001":
            if self.state is ConnectionState.LOGGING_IN:
                self.state = ConnectionState.JOINING
                self._outgoing.append(join(self.channel))
            return Welcome(msg.params[0] if msg.params else self.nick)
        if cmd == "CAP":
            if len(msg.params) >= 3 and msg.params[1] == "ACK":
                return CapAck(tuple(msg.trailing.split()))
            if len(msg.params) >= 3 and msg.params[1] == "NAK":
                log.warning("twitch irc: capabilities refused: %s", msg.trailing)
            return None
        if cmd == "JOIN":
            if msg.nick == self.nick and msg.params and msg.params[0].lstrip("#") == self.channel:
                self.state = ConnectionState.JOINED
                return Joined(self.channel)
            return None
        if cmd == "RECONNECT":
            self.state = ConnectionState.CLOSED
            return Reconnect()
        if cmd == "NOTICE":
            if self.state is ConnectionState.LOGGING_IN and _is_login_failure(msg.trailing):
                self.state = ConnectionState.CLOSED
                return LoginFailed(msg.trailing)
            log.info("twitch irc: notice msg_id=%s text=%s", msg.tags.get("msg-id", ""), msg.trailing)
            return None
        return chat_event(msg)
