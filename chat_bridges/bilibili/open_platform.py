"""The Bilibili live open platform (直播开放平台), sans-I/O: signed requests and its messages.

A streamer gives their IDCode (身份码); the app calls ``POST {open_api_url}/v2/app/start {code, app_id}``,
gets a ``game_id``, the websocket urls (``wss_link``) and an ``auth_body`` string to send as the auth packet
(same binary framing as the web protocol, :mod:`chat_bridges.bilibili.protocol`), then calls
``/v2/app/heartbeat {game_id}`` every 20 s and ``/v2/app/end {app_id, game_id}`` when done. One connection
per IDCode.

Every request is signed: the ``x-bili-*`` headers, sorted by name, joined as ``name:value`` lines, HMAC-SHA256
with the access key secret (hex) -> ``Authorization``. Sources: the open platform's signature doc
(open-live.bilibili.com, "签名"), blivedm ``blivedm/clients/open_live.py`` and ``blivedm/models/open_live.py``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from backend.events import ChatEvent, ChatMessage, Deletion, PaidMessage, Role
from chat_bridges.bilibili.commands import GUARD_NAMES, PLATFORM, CommandError, cny_to_cents, gold_to_cents
from chat_bridges.bilibili.errors import InitError, OpenPlatformError

__all__ = [
    "END_PATH",
    "GAME_HEARTBEAT_INTERVAL_S",
    "HEARTBEAT_PATH",
    "START_PATH",
    "AppSession",
    "encode_body",
    "open_command_to_events",
    "parse_response",
    "parse_start",
    "sign_headers",
]

logger = logging.getLogger(__name__)

START_PATH = "/v2/app/start"
HEARTBEAT_PATH = "/v2/app/heartbeat"
END_PATH = "/v2/app/end"
GAME_HEARTBEAT_INTERVAL_S = 20.0


def encode_body(body: Mapping[str, Any]) -> bytes:
    """The exact request body bytes (their MD5 is signed, so send these bytes, not a re-encoding)."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def sign_headers(body: bytes, *, access_key_id: str, access_key_secret: str, nonce: str,
                 timestamp: int) -> dict[str, str]:
    """All headers of a signed request over ``body``. ``nonce`` is random per request, ``timestamp`` unix s."""
    signed = {
        "x-bili-accesskeyid": access_key_id,
        "x-bili-content-md5": hashlib.md5(body).hexdigest(),
        "x-bili-signature-method": "HMAC-SHA256",
        "x-bili-signature-nonce": nonce,
        "x-bili-signature-version": "1.0",
        "x-bili-timestamp": str(timestamp),
    }
    string_to_sign = "\n".join(f"{name}:{signed[name]}" for name in sorted(signed))
    signature = hmac.new(access_key_secret.encode("utf-8"), string_to_sign.encode("utf-8"), hashlib.sha256)
    return {"Accept": "application/json", "Content-Type": "application/json", **signed,
            "Authorization": signature.hexdigest()}


def parse_response(endpoint: str, status: int, payload: bytes) -> dict[str, Any]:
    """The ``data`` object of an open platform answer; OpenPlatformError when ``code`` != 0."""
    try:
        answer = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InitError(f"open platform {endpoint} answered HTTP {status} with non-JSON: {payload[:120]!r}") from exc
    if not isinstance(answer, dict) or not isinstance(answer.get("code"), int):
        raise InitError(f"open platform {endpoint} answered HTTP {status} without an int code: {payload[:120]!r}")
    if answer["code"] != 0:
        raise OpenPlatformError(endpoint, answer["code"], str(answer.get("message", "")),
                                str(answer.get("request_id", "")))
    data = answer.get("data") or {}
    if not isinstance(data, dict):
        raise InitError(f"open platform {endpoint}: data is a {type(data).__name__}, expected an object")
    return data


@dataclass(frozen=True)
class AppSession:
    """What /v2/app/start returns: one open platform session (场次)."""

    game_id: str
    wss_links: tuple[str, ...]
    room_id: int
    owner_uid: int = 0
    owner_open_id: str = ""
    auth_body: str = field(default="", repr=False)  # a credential: never logged


def parse_start(data: Mapping[str, Any]) -> AppSession:
    """/v2/app/start's ``data`` -> AppSession; InitError naming the missing field."""
    try:
        websocket_info = data["websocket_info"]
        anchor = data.get("anchor_info") or {}
        links = websocket_info["wss_link"]
        if not isinstance(links, list) or not links or not all(isinstance(u, str) for u in links):
            raise ValueError(f"websocket_info.wss_link is {links!r}, expected a non-empty list of urls")
        auth_body = websocket_info["auth_body"]
        if not isinstance(auth_body, str) or not auth_body:
            raise ValueError("websocket_info.auth_body is not a non-empty string")
        return AppSession(
            game_id=str((data.get("game_info") or {}).get("game_id", "")),
            wss_links=tuple(links),
            room_id=int(anchor.get("room_id", 0) or 0),
            owner_uid=int(anchor.get("uid", 0) or 0),
            owner_open_id=str(anchor.get("open_id", "") or ""),
            auth_body=auth_body,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InitError(f"open platform {START_PATH} answer is missing {exc}") from exc


# ----------------------------------------------------------------------------- messages -> events


def open_command_to_events(cmd: str, data: Mapping[str, Any], *, channel: str,
                           owner_open_id: str = "") -> list[ChatEvent]:
    """The chat events of one open platform command (``data`` is the whole notification JSON)."""
    parser = _PARSERS.get(cmd)
    if parser is None:
        logger.debug("room=%s open platform command ignored cmd=%s", channel, cmd)
        return []
    try:
        return parser(data["data"], channel, owner_open_id)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise CommandError(f"bad {cmd} command in room {channel}: {type(exc).__name__}: {exc}") from exc


def _user_id(d: Mapping[str, Any]) -> str:
    # open_id replaced the deprecated uid (which is now 0).
    return str(d.get("open_id") or d.get("uid") or "")


def _role(user_id: str, owner_open_id: str, guard_level: int) -> Role:
    if owner_open_id and user_id == owner_open_id:
        return Role.BROADCASTER
    return Role.SUBSCRIBER if guard_level > 0 else Role.VIEWER


def _badges(d: Mapping[str, Any]) -> tuple[str, ...]:
    badges = []
    if d.get("guard_level"):
        badges.append(f"guard/{int(d['guard_level'])}")
    if d.get("fans_medal_wearing_status") and d.get("fans_medal_name"):
        badges.append(f"medal/{d['fans_medal_name']}:{int(d.get('fans_medal_level', 0))}")
    return tuple(badges)


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} is {value!r}, expected a string")
    return value


def _dm(d: Mapping[str, Any], channel: str, owner_open_id: str) -> list[ChatEvent]:
    user_id = _user_id(d)
    return [ChatMessage(
        platform=PLATFORM, channel=channel, user_id=user_id, user_name=_text(d["uname"], "data.uname"),
        text=_text(d["msg"], "data.msg"), message_id=str(d.get("msg_id", "")),
        role=_role(user_id, owner_open_id, int(d.get("guard_level", 0) or 0)), badges=_badges(d),
        timestamp=float(d.get("timestamp", 0) or 0),
    )]


def _gift(d: Mapping[str, Any], channel: str, owner_open_id: str) -> list[ChatEvent]:
    user_id = _user_id(d)
    num = int(d["gift_num"])
    # price / r_price: gold per gift (1000 = 1 CNY); r_price is what was really paid (discounts, blind boxes).
    # Free gifts carry a silver price here too, so only ``paid`` gifts have value.
    unit = int(d.get("r_price", d.get("price", 0)) or 0)
    return [PaidMessage(
        platform=PLATFORM, channel=channel, user_id=user_id, user_name=_text(d["uname"], "data.uname"),
        text=f"{_text(d['gift_name'], 'data.gift_name')} x{num}",
        value_cents=gold_to_cents(unit * num) if d.get("paid") else 0, kind="gift",
        message_id=str(d.get("msg_id", "")), role=_role(user_id, owner_open_id, int(d.get("guard_level", 0) or 0)),
        timestamp=float(d.get("timestamp", 0) or 0),
    )]


def _guard(d: Mapping[str, Any], channel: str, owner_open_id: str) -> list[ChatEvent]:
    user = d["user_info"]
    user_id = _user_id(user)
    level = int(d["guard_level"])
    num = int(d.get("guard_num", 1) or 1)
    unit = str(d.get("guard_unit", "月"))
    return [PaidMessage(
        platform=PLATFORM, channel=channel, user_id=user_id, user_name=_text(user["uname"], "data.user_info.uname"),
        text=f"{GUARD_NAMES.get(level, f'guard {level}')} x{num}{unit}",
        value_cents=gold_to_cents(int(d["price"]) * num), kind="guard", message_id=str(d.get("msg_id", "")),
        role=_role(user_id, owner_open_id, level), timestamp=float(d.get("timestamp", 0) or 0),
    )]


def _super_chat(d: Mapping[str, Any], channel: str, owner_open_id: str) -> list[ChatEvent]:
    user_id = _user_id(d)
    rmb = d["rmb"]
    if isinstance(rmb, bool) or not isinstance(rmb, int | float):
        raise TypeError(f"data.rmb is {rmb!r}, expected a number of CNY")
    return [PaidMessage(
        platform=PLATFORM, channel=channel, user_id=user_id, user_name=_text(d["uname"], "data.uname"),
        text=_text(d["message"], "data.message"), value_cents=cny_to_cents(rmb), kind="super_chat",
        # message_id (not msg_id) is what LIVE_OPEN_PLATFORM_SUPER_CHAT_DEL refers to.
        message_id=str(int(d["message_id"])), role=_role(user_id, owner_open_id, int(d.get("guard_level", 0) or 0)),
        timestamp=float(d.get("timestamp", 0) or 0),
    )]


def _super_chat_del(d: Mapping[str, Any], channel: str, owner_open_id: str) -> list[ChatEvent]:
    ids = d["message_ids"]
    if not isinstance(ids, list):
        raise TypeError(f"data.message_ids is {ids!r}, expected a list")
    return [Deletion(platform=PLATFORM, channel=channel, message_id=str(int(i))) for i in ids]


_PARSERS = {
    "LIVE_OPEN_PLATFORM_DM": _dm,
    "LIVE_OPEN_PLATFORM_SEND_GIFT": _gift,
    "LIVE_OPEN_PLATFORM_GUARD": _guard,
    "LIVE_OPEN_PLATFORM_SUPER_CHAT": _super_chat,
    "LIVE_OPEN_PLATFORM_SUPER_CHAT_DEL": _super_chat_del,
}
