"""Web danmaku commands -> the shared chat events (backend.events).

Pure functions over the JSON of a :class:`~chat_bridges.bilibili.protocol.Notification`:

- ``DANMU_MSG`` -> :class:`ChatMessage`
- ``SEND_GIFT`` -> :class:`PaidMessage` (kind "gift"; only gold-coin gifts carry value)
- ``GUARD_BUY`` -> :class:`PaidMessage` (kind "guard")
- ``SUPER_CHAT_MESSAGE`` -> :class:`PaidMessage` (kind "super_chat")
- ``SUPER_CHAT_MESSAGE_DELETE`` -> one :class:`Deletion` per id

Other commands are ignored (debug log). A command with a missing or mistyped field raises
:class:`CommandError` naming the command and the field; the client logs it and goes on.

Field layout: blivedm ``blivedm/models/web.py`` and bilibili-API-collect ``docs/live/message_stream.md``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from backend.events import ChatEvent, ChatMessage, Deletion, PaidMessage, Role
from chat_bridges.bilibili.errors import BilibiliError

__all__ = [
    "CENTS_PER_CNY",
    "GOLD_PER_CNY",
    "GUARD_NAMES",
    "PLATFORM",
    "CommandError",
    "cny_to_cents",
    "command_to_events",
    "gold_to_cents",
]

logger = logging.getLogger(__name__)

PLATFORM = "bilibili"

# PaidMessage.value_cents is in US cents-equivalent so that the director can rank Twitch bits and Bilibili
# money on one scale. 1 CNY is taken as 14 US cents (about the 2024-2025 exchange rate, rounded); this is a
# ranking weight, not accounting.
CENTS_PER_CNY = 14
# Gold coins (金瓜子 / battery * 100): 1000 gold = 1 CNY. Silver coins (free gifts) have no money value.
GOLD_PER_CNY = 1000

GUARD_NAMES = {1: "总督", 2: "提督", 3: "舰长"}  # governor, admiral, captain


class CommandError(BilibiliError):
    """A known command whose JSON does not have the expected shape."""


def cny_to_cents(cny: float) -> int:
    return round(cny * CENTS_PER_CNY)


def gold_to_cents(gold: float) -> int:
    return round(gold * CENTS_PER_CNY / GOLD_PER_CNY)


def command_to_events(cmd: str, data: Mapping[str, Any], *, channel: str,
                      owner_uid: int = 0) -> list[ChatEvent]:
    """The chat events of one web command (``data`` is the whole notification JSON, with ``cmd``).

    ``channel`` is the real room id as a string; ``owner_uid`` the room owner's uid (0 if unknown), whose
    messages get :attr:`Role.BROADCASTER`.
    """
    parser = _PARSERS.get(cmd)
    if parser is None:
        logger.debug("room=%s command ignored cmd=%s", channel, cmd)
        return []
    try:
        return parser(data, channel, owner_uid)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise CommandError(f"bad {cmd} command in room {channel}: {type(exc).__name__}: {exc}") from exc


# ----------------------------------------------------------------------------- parsers


def _role(uid: int, owner_uid: int, *, admin: bool = False, guard_level: int = 0) -> Role:
    if owner_uid and uid == owner_uid:
        return Role.BROADCASTER
    if admin:
        return Role.MODERATOR
    if guard_level > 0:
        # A guard (大航海) is a paid monthly membership of the room: Twitch's subscriber.
        return Role.SUBSCRIBER
    return Role.VIEWER


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(f"{what} is {value!r}, expected a number")
    return int(value)


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} is {value!r}, expected a string")
    return value


def _danmu_msg(data: Mapping[str, Any], channel: str, owner_uid: int) -> list[ChatEvent]:
    info = data["info"]
    meta, user = info[0], info[2]
    text = _str(info[1], "info[1] (text)")
    uid = _int(user[0], "info[2][0] (uid)")
    name = _str(user[1], "info[2][1] (name)")
    admin = bool(user[2]) if len(user) > 2 else False
    guard_level = _int(info[7], "info[7] (guard level)") if len(info) > 7 and info[7] else 0
    badges: list[str] = []
    if admin:
        badges.append("admin/1")
    if guard_level:
        badges.append(f"guard/{guard_level}")
    medal = info[3] if len(info) > 3 else []
    if medal:  # [level, name, anchor name, medal room id, ...]; [] when none is worn
        badges.append(f"medal/{_str(medal[1], 'info[3][1] (medal name)')}:{_int(medal[0], 'info[3][0] (medal level)')}")
    timestamp_ms = _int(meta[4], "info[0][4] (timestamp ms)") if len(meta) > 4 else 0
    return [ChatMessage(
        platform=PLATFORM,
        channel=channel,
        user_id=str(uid),
        user_name=name,
        text=text,
        message_id=_danmu_id(meta),
        role=_role(uid, owner_uid, admin=admin, guard_level=guard_level),
        badges=tuple(badges),
        timestamp=timestamp_ms / 1000,
    )]


def _danmu_id(meta: list[Any]) -> str:
    """The message id (``id_str``) hidden in info[0][15].extra (a JSON string), when present."""
    try:
        extra = json.loads(meta[15]["extra"])
        return str(extra.get("id_str", "")) if isinstance(extra, dict) else ""
    except (IndexError, KeyError, TypeError, ValueError):
        return ""


def _send_gift(data: Mapping[str, Any], channel: str, owner_uid: int) -> list[ChatEvent]:
    d = data["data"]
    uid = _int(d["uid"], "data.uid")
    num = _int(d.get("num", 1), "data.num")
    gift = _str(d["giftName"], "data.giftName")
    gold = 0
    if d.get("coin_type") == "gold":
        gold = _int(d["total_coin"], "data.total_coin") if "total_coin" in d else _int(d["price"], "data.price") * num
    guard_level = _int(d.get("guard_level", 0) or 0, "data.guard_level")
    return [PaidMessage(
        platform=PLATFORM,
        channel=channel,
        user_id=str(uid),
        user_name=_str(d["uname"], "data.uname"),
        text=f"{gift} x{num}",
        value_cents=gold_to_cents(gold),
        kind="gift",
        message_id=str(d.get("tid", "") or ""),
        role=_role(uid, owner_uid, guard_level=guard_level),
        timestamp=float(d.get("timestamp", 0) or 0),
    )]


def _guard_buy(data: Mapping[str, Any], channel: str, owner_uid: int) -> list[ChatEvent]:
    d = data["data"]
    uid = _int(d["uid"], "data.uid")
    level = _int(d["guard_level"], "data.guard_level")
    num = _int(d.get("num", 1), "data.num")
    price = _int(d["price"], "data.price")  # gold per unit
    return [PaidMessage(
        platform=PLATFORM,
        channel=channel,
        user_id=str(uid),
        user_name=_str(d["username"], "data.username"),
        text=f"{GUARD_NAMES.get(level, f'guard {level}')} x{num}",
        value_cents=gold_to_cents(price * num),
        kind="guard",
        message_id=str(d.get("payflow_id", "") or ""),
        role=_role(uid, owner_uid, guard_level=level),
        timestamp=float(d.get("start_time", 0) or 0),
    )]


def _super_chat(data: Mapping[str, Any], channel: str, owner_uid: int) -> list[ChatEvent]:
    d = data["data"]
    uid = _int(d["uid"], "data.uid")
    user_info = d.get("user_info") or {}
    guard_level = _int(user_info.get("guard_level", 0) or 0, "data.user_info.guard_level")
    price = d["price"]
    if isinstance(price, bool) or not isinstance(price, int | float):
        raise TypeError(f"data.price is {price!r}, expected a number of CNY")
    return [PaidMessage(
        platform=PLATFORM,
        channel=channel,
        user_id=str(uid),
        user_name=_str(user_info["uname"], "data.user_info.uname"),
        text=_str(d["message"], "data.message"),
        value_cents=cny_to_cents(price),
        kind="super_chat",
        message_id=str(_int(d["id"], "data.id")),
        role=_role(uid, owner_uid, guard_level=guard_level),
        timestamp=float(d.get("ts", 0) or d.get("start_time", 0) or 0),
    )]


def _super_chat_delete(data: Mapping[str, Any], channel: str, owner_uid: int) -> list[ChatEvent]:
    ids = data["data"]["ids"]
    if not isinstance(ids, list):
        raise TypeError(f"data.ids is {ids!r}, expected a list")
    return [Deletion(platform=PLATFORM, channel=channel, message_id=str(_int(i, "data.ids[]"))) for i in ids]


_PARSERS = {
    "DANMU_MSG": _danmu_msg,
    "SEND_GIFT": _send_gift,
    "GUARD_BUY": _guard_buy,
    "SUPER_CHAT_MESSAGE": _super_chat,
    "SUPER_CHAT_MESSAGE_DELETE": _super_chat_delete,
}
