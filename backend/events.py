"""The shared vocabulary of the data flow:

chat / voice -> ChatEvent -> director -> Command -> engine (Directive) -> VideoFrame / AudioChunk -> server -> OBS

Plain frozen dataclasses, no behaviour. Every component speaks these and nothing else across its edge.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "AudioChunk",
    "Ban",
    "ChatEvent",
    "ChatMessage",
    "Command",
    "CommandKind",
    "Deletion",
    "Directive",
    "PaidMessage",
    "Role",
    "VideoFrame",
]


class Role(enum.IntEnum):
    """Who sent something, in priority order (higher first)."""

    VIEWER = 0
    SUBSCRIBER = 1
    VIP = 2
    MODERATOR = 3
    BROADCASTER = 4


# ----------------------------------------------------------------------------- chat bridges -> director


@dataclass(frozen=True)
class ChatMessage:
    platform: str  # "twitch", "bilibili", "console", "voice"
    channel: str
    user_id: str
    user_name: str
    text: str
    message_id: str = ""
    role: Role = Role.VIEWER
    badges: tuple[str, ...] = ()
    timestamp: float = 0.0  # platform time, seconds since the epoch (0 if unknown)
    reply_to: str = ""  # message id this replies to
    reward_id: str = ""  # Twitch channel-point reward id, if a redemption
    me: bool = False  # sent as an action ("/me ...", IRC CTCP ACTION); the text is without the wrapper


@dataclass(frozen=True)
class PaidMessage:
    """Bits, super chats, gifts, guard buys, channel-point redemptions: value in US cents-equivalent
    (Twitch: 1 bit = 1 cent; Bilibili: 1 CNY = 14 cents, see chat_bridges.bilibili)."""

    platform: str
    channel: str
    user_id: str
    user_name: str
    text: str
    value_cents: int
    kind: str  # "bits", "super_chat", "gift", "guard", "redemption"
    message_id: str = ""
    role: Role = Role.VIEWER
    timestamp: float = 0.0
    me: bool = False  # sent as an action ("/me ..."), as on ChatMessage


@dataclass(frozen=True)
class Deletion:
    """A moderator deleted one message (Twitch CLEARMSG, Bilibili super chat delete)."""

    platform: str
    channel: str
    message_id: str


@dataclass(frozen=True)
class Ban:
    """A user was banned or timed out (Twitch CLEARCHAT with a user); empty user_id = whole chat cleared."""

    platform: str
    channel: str
    user_id: str
    user_name: str = ""
    duration_s: float = 0.0  # 0 = permanent


ChatEvent = ChatMessage | PaidMessage | Deletion | Ban


# ----------------------------------------------------------------------------- director -> engine


class CommandKind(enum.StrEnum):
    ACT = "act"  # argument: action name (backend.actions)
    EMOTION = "emotion"  # argument: emotion name
    SAY = "say"  # argument: text the idol speaks
    PROMPT = "prompt"  # argument: free text conditioning
    RESET = "reset"  # argument: "" or a character name
    CANCEL = "cancel"  # argument: the command id whose action or speech must stop (a deleted message, a ban)


@dataclass(frozen=True)
class Command:
    kind: CommandKind
    argument: str = ""
    source: str = "control"  # "control", "twitch", "bilibili", "console", "voice"
    user_name: str = ""
    command_id: str = ""  # unique id, used in logs and in the "now / up next" state
    issued_at: float = 0.0  # time.monotonic() when it was issued


# ----------------------------------------------------------------------------- engine state and output


@dataclass(frozen=True)
class Directive:
    """What the idol is doing now: the conditions the generator renders under."""

    action: str = "idle"
    emotion: str = "neutral"
    prompt: str = ""
    started_frame: int = 0  # output frame index at which it took effect
    command_id: str = ""


@dataclass(frozen=True)
class VideoFrame:
    seq: int  # output frame index, from 0 at server start
    pts: float  # presentation time in seconds on the engine's clock (monotonic, from stream start)
    rgba: np.ndarray = field(repr=False)  # (H, W, 4) uint8, straight (not premultiplied) alpha
    directive_id: str = ""  # command id of the directive it was generated under

    @property
    def width(self) -> int:
        return int(self.rgba.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgba.shape[0])


@dataclass(frozen=True)
class AudioChunk:
    seq: int
    pts: float  # presentation time of the first sample, same clock as VideoFrame.pts
    sample_rate: int
    pcm: np.ndarray = field(repr=False)  # (samples, channels) float32 in [-1, 1]

    @property
    def duration(self) -> float:
        return self.pcm.shape[0] / self.sample_rate
