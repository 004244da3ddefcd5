"""A client of a running backend's ``/control`` endpoint (docs/protocol.md), for `liveidol chat ...` and tools.

Usage::

    async with ControlClient("ws://127.0.0.1:8765/control", token) as control:
        reply = await control.command(Command(CommandKind.ACT, "wave"))   # Ok, or RemoteError
        status = await control.status()
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from backend.config import ServerConfig
from backend.errors import LiveIdolError
from backend.events import Command
from backend.server.auth import wire_logger
from backend.server.protocol import (
    Auth,
    CommandRequest,
    Error,
    Ok,
    Status,
    StatusRequest,
    decode_server,
    encode,
)

__all__ = ["ControlClient", "RemoteError", "backend_url", "client_tls"]

log = logging.getLogger(__name__)


class RemoteError(LiveIdolError, RuntimeError):
    """The backend refused a request (or could not be reached); the message says why."""


def backend_url(cfg: ServerConfig, path: str) -> str:
    """The URL of a local backend's ``path`` from its config: ``wss://`` when it serves TLS."""
    host = cfg.host if ":" not in cfg.host else f"[{cfg.host}]"
    return f"{'wss' if cfg.tls_cert else 'ws'}://{host}:{cfg.port}{path}"


def client_tls(cfg: ServerConfig) -> ssl.SSLContext | None:
    """A TLS context for a client of a backend that serves ``cfg.tls_cert``: the system's trust plus that
    certificate itself, so a self-signed one is trusted too. None for plain ws://."""
    if not cfg.tls_cert:
        return None
    ctx = ssl.create_default_context()
    try:
        ctx.load_verify_locations(cafile=cfg.tls_cert)
    except (OSError, ssl.SSLError) as exc:
        raise RemoteError(f"server.tls_cert = {cfg.tls_cert!r}: cannot load the certificate: {exc}") from None
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # trust the leaf itself, not only a CA
    return ctx


class ControlClient:
    def __init__(self, url: str, token: str, *, timeout_s: float = 10.0, tls: ssl.SSLContext | None = None) -> None:
        self.url = url
        self._token = token
        self._timeout = timeout_s
        self._tls = tls
        self._ws: ClientConnection | None = None
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> ControlClient:
        try:
            tls: dict[str, Any] = {"ssl": self._tls} if self._tls is not None else {}  # wss:// alone: system trust
            self._ws = await connect(self.url, open_timeout=self._timeout, logger=wire_logger("websockets.client"), **tls)
        except OSError as exc:
            raise RemoteError(f"cannot reach the backend at {self.url} ({exc}); is `liveidol serve` running?") from exc
        await self._ws.send(encode(Auth(self._token)))
        reply = await self._receive()
        if not isinstance(reply, Ok):
            raise RemoteError(f"{self.url}: authentication refused")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._ws is not None:
            await self._ws.close()
            self._ws = None

    async def _receive(self) -> Any:
        assert self._ws is not None
        try:
            data = await asyncio.wait_for(self._ws.recv(), self._timeout)
        except Exception as exc:
            raise RemoteError(f"{self.url}: connection lost: {exc}") from exc
        return decode_server(data)

    async def _request(self, msg: Any) -> Any:
        assert self._ws is not None, "use `async with ControlClient(...)`"
        async with self._lock:
            await self._ws.send(encode(msg))
            while True:
                reply = await self._receive()
                if getattr(reply, "id", None) == msg.id:
                    break
        if isinstance(reply, Error):
            raise RemoteError(f"{reply.code}: {reply.message}")
        return reply

    async def command(self, command: Command) -> Ok:
        return await self._request(CommandRequest(kind=command.kind, argument=command.argument, id=str(next(self._ids))))

    async def status(self) -> Status:
        return await self._request(StatusRequest(id=str(next(self._ids))))
