"""The Bilibili bridge's small exception hierarchy.

Every error the bridge raises is a :class:`BilibiliError`; the client catches them, logs one line with
the room and the reason, and reconnects with backoff, so none of them stops the stream.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "BilibiliError",
    "InitError",
    "InvalidStateError",
    "OpenPlatformError",
    "ProtocolError",
    "SignatureError",
]


class BilibiliError(Exception):
    """Base class of the Bilibili bridge's errors."""


class ProtocolError(BilibiliError):
    """Bytes that do not follow the danmaku protocol (bad header, truncated batch, bad JSON, bomb)."""


class InvalidStateError(BilibiliError):
    """A :class:`~chat_bridges.bilibili.protocol.DanmakuConnection` method called in the wrong state."""


class AuthError(BilibiliError):
    """The danmaku server refused the auth packet (AUTH_REPLY code != 0; -101 = token error)."""

    def __init__(self, code: int, message: str = "") -> None:
        self.code = code
        super().__init__(message or f"danmaku server refused auth: code={code}")


class InitError(BilibiliError):
    """A room-init HTTP API (get_info, nav, getDanmuInfo, open platform start) failed or answered garbage."""


class SignatureError(InitError):
    """getDanmuInfo answered -352: the WBI signature (w_rid/wts) was refused (stale keys or a risk check)."""


class OpenPlatformError(InitError):
    """The open platform API answered code != 0 (bad IDCode, app id, access key or signature)."""

    def __init__(self, endpoint: str, code: int, message: str = "", request_id: str = "") -> None:
        self.endpoint = endpoint
        self.code = code
        self.request_id = request_id
        super().__init__(f"open platform {endpoint} failed: code={code} message={message!r} request_id={request_id}")
