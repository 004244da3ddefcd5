"""A client of a running backend's ``/control`` endpoint (docs/protocol.md), for `liveidol chat ...` and tools.

Usage::

    async with ControlClient("ws://127.0.0.1:8765/control", token) as control:
        ticket = await control.command(Command(CommandKind.ACT, "wave"))   # RemoteTicket, or RemoteError
        seq = await ticket.started       # output frame seq of its first frame (None: replaced before it showed)
        end = await ticket.finished      # frame seq where its play ended (None: never showed); ticket.reason: why
        status = await control.status()

One task reads the connection (:meth:`ControlClient.__aenter__` starts it): replies go to the request with their
``id``, command events (docs/protocol.md, "Command events") to the ticket of their ``command_id``. When the word
cannot come -- the connection dropped, an older backend that pushes no events, events lost -- the ticket's
futures raise :class:`RemoteError` saying so, and the director goes by its estimate for that command.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from backend.config import ServerConfig
from backend.errors import LiveIdolError
from backend.events import Command
from backend.server.auth import wire_logger
from backend.server.protocol import (
    EVENTS_VERSION,
    Auth,
    CommandRequest,
    EndReason,
    Error,
    Event,
    EventKind,
    Ok,
    ProtocolError,
    Status,
    StatusRequest,
    decode_server,
    encode,
)

__all__ = ["ControlClient", "RemoteError", "RemoteTicket", "backend_url", "client_tls"]

log = logging.getLogger(__name__)

BAD_MESSAGE_LOGS = 5  # unreadable messages from the backend logged per connection; the rest are counted


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


@dataclass
class RemoteTicket:
    """A command the backend accepted, shaped like the engine's :class:`~backend.engine.engine.Ticket`:
    ``started`` (also ``shown``) resolves to the output frame seq of its first shown frame, or None if it was
    replaced or cancelled before it showed; ``finished`` to the frame seq at which what it started ended on
    screen (None: it never showed), ``reason`` saying why (:class:`~backend.server.protocol.EndReason`). Both
    raise :class:`RemoteError` when that word cannot come (the connection dropped, an older backend, events
    lost)."""

    ok: Ok
    started: asyncio.Future[int | None] = field(repr=False)
    finished: asyncio.Future[int | None] = field(repr=False)
    reason: EndReason | None = None

    @property
    def command_id(self) -> str:
        """The id the backend's engine knows the command by (frames carry it as ``directive_id``)."""
        return self.ok.command_id

    @property
    def shown(self) -> asyncio.Future[int | None]:
        return self.started

    @property
    def ended(self) -> str:
        """Why it finished, as the engine's ``Ticket.ended`` says it ("" until then)."""
        return self.reason.value if self.reason is not None else ""

    @property
    def effective_frame(self) -> int | None:
        return self.ok.effective_frame


def _fail(future: asyncio.Future[Any], error: Exception) -> None:
    if not future.done():
        future.set_exception(error)
        future.exception()  # retrieved: nobody may be waiting for this one


class ControlClient:
    """An authenticated ``/control`` connection (see module docstring). ``events=False`` asks for no command
    events: tickets then raise :class:`RemoteError` at once (callers go by estimates)."""

    def __init__(self, url: str, token: str, *, timeout_s: float = 10.0, tls: ssl.SSLContext | None = None,
                 events: bool = True) -> None:
        self.url = url
        self._token = token
        self._timeout = timeout_s
        self._tls = tls
        self._events = events
        self._ws: ClientConnection | None = None
        self._ids = itertools.count(1)
        self._replies: dict[str, asyncio.Future[Any]] = {}  # request id -> its reply
        self._commands: set[str] = set()  # request ids of commands (their ok makes a ticket)
        self._tickets: dict[str, RemoteTicket] = {}  # command_id -> ticket, until it finished
        self._reader: asyncio.Task[None] | None = None
        self._lost: RemoteError | None = None  # why the connection is no more
        self._dropped = 0  # events the backend reported lost on this connection
        self._bad = 0  # unreadable messages from the backend
        self._warned_no_events = False

    async def __aenter__(self) -> ControlClient:
        try:
            tls: dict[str, Any] = {"ssl": self._tls} if self._tls is not None else {}  # wss:// alone: system trust
            self._ws = await connect(self.url, open_timeout=self._timeout, logger=wire_logger("websockets.client"), **tls)
        except OSError as exc:
            raise RemoteError(f"cannot reach the backend at {self.url} ({exc}); is `liveidol serve` running?") from exc
        try:
            await self._ws.send(encode(Auth(self._token)))
            reply = await self._receive()
            if not isinstance(reply, Ok):
                raise RemoteError(f"{self.url}: authentication refused")
        except BaseException:
            await self._ws.close()
            self._ws = None
            raise
        self._reader = asyncio.create_task(self._read(self._ws), name="control-client-reader")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
            self._reader = None
        if self._ws is not None:
            await self._ws.close()
            self._ws = None
        self._lose(RemoteError(f"{self.url}: the control connection was closed by this client"))

    @property
    def connected(self) -> bool:
        return self._ws is not None and self._lost is None

    async def _receive(self) -> Any:
        """One message, before the reader runs (the auth reply)."""
        assert self._ws is not None
        try:
            async with asyncio.timeout(self._timeout):  # not wait_for: Python 3.11's can drop a cancel (director.py)
                data = await self._ws.recv()
        except TimeoutError:
            raise RemoteError(f"{self.url}: no reply to auth within {self._timeout:g} s") from None
        except Exception as exc:
            raise RemoteError(f"{self.url}: connection lost: {exc}") from exc
        return decode_server(data)

    async def _read(self, ws: ClientConnection) -> None:
        why = "the backend closed it"
        try:
            async for data in ws:
                try:
                    msg = decode_server(data)
                except ProtocolError as exc:
                    self._bad += 1
                    if self._bad <= BAD_MESSAGE_LOGS:
                        log.warning("unreadable message from the backend url=%s error=%s", self.url, exc)
                    continue
                self._route(msg)
        except ConnectionClosed as exc:
            why = str(exc)
        except asyncio.CancelledError:
            why = "closed by this client"
            raise
        except Exception as exc:  # a bug in routing must not leave the waiters hanging: they get it
            log.exception("control client reader failed url=%s", self.url)
            why = f"{type(exc).__name__}: {exc}"
        finally:
            code = ws.close_code
            detail = f"{why}" if code is None or str(code) in why else f"{why} (code {code})"
            self._lose(RemoteError(f"{self.url}: connection lost: {detail}"))

    def _route(self, msg: Any) -> None:
        if isinstance(msg, Event):
            self._event(msg)
            return
        mid = getattr(msg, "id", None)
        waiter = self._replies.pop(mid, None) if isinstance(mid, str) else None
        if waiter is None:
            if isinstance(msg, Error):
                log.warning("error from the backend url=%s code=%s message=%s", self.url, msg.code, msg.message)
            return  # a state push, or a reply nobody waits for any more
        if isinstance(msg, Ok) and mid in self._commands:
            self._commands.discard(mid)
            msg = self._ticket(msg)
        if not waiter.done():
            waiter.set_result(msg)

    def _ticket(self, ok: Ok) -> RemoteTicket:
        loop = asyncio.get_running_loop()
        ticket = RemoteTicket(ok, loop.create_future(), loop.create_future())
        if ok.events >= 1:
            self._tickets[ok.command_id] = ticket
            return ticket
        if self._events and not self._warned_no_events:
            self._warned_no_events = True
            log.warning("the backend at %s pushes no command events (it is older than this client): the director "
                        "goes by each action's estimated duration", self.url)
        why = "the backend pushes none" if self._events else "this client asked for none"
        error = RemoteError(f"{self.url}: no command events for command {ok.command_id} ({why})")
        _fail(ticket.started, error)
        _fail(ticket.finished, error)
        return ticket

    def _event(self, event: Event) -> None:
        if event.dropped > self._dropped:  # some were lost before this one: which, nobody knows
            lost = event.dropped - self._dropped
            self._dropped = event.dropped
            log.warning("the backend dropped %d command events for this connection url=%s: the commands in flight "
                        "go by their estimates", lost, self.url)
            error = RemoteError(f"{self.url}: {lost} command events lost (this connection was read too slowly)")
            for command_id in [c for c in self._tickets if c != event.command_id]:
                gone = self._tickets.pop(command_id)
                _fail(gone.started, error)
                _fail(gone.finished, error)
        ticket = self._tickets.get(event.command_id)
        if ticket is None:
            return  # finished already, or given up on
        if event.event is EventKind.STARTED:
            if not ticket.started.done():
                ticket.started.set_result(event.frame)
            return
        del self._tickets[event.command_id]
        ticket.reason = event.reason
        if not ticket.started.done():
            if event.frame is None:
                ticket.started.set_result(None)  # never showed
            else:
                _fail(ticket.started, RemoteError(f"{self.url}: the start of command {event.command_id} was lost"))
        if not ticket.finished.done():
            ticket.finished.set_result(event.frame)

    def _lose(self, error: RemoteError) -> None:
        """The connection is gone: every waiter gets ``error``."""
        if self._lost is None:
            self._lost = error
        for waiter in self._replies.values():
            _fail(waiter, error)
        for ticket in self._tickets.values():
            _fail(ticket.started, error)
            _fail(ticket.finished, error)
        self._replies.clear()
        self._commands.clear()
        self._tickets.clear()

    async def _request(self, msg: CommandRequest | StatusRequest) -> Any:
        if self._ws is None:
            raise RemoteError("use `async with ControlClient(...)`")
        if self._lost is not None:
            raise RemoteError(str(self._lost))
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._replies[msg.id] = waiter
        if isinstance(msg, CommandRequest):
            self._commands.add(msg.id)
        try:
            await self._ws.send(encode(msg))
            async with asyncio.timeout(self._timeout):
                reply = await asyncio.shield(waiter)
        except TimeoutError:
            raise RemoteError(f"{self.url}: no reply to {msg.type} id={msg.id} within {self._timeout:g} s") from None
        except ConnectionClosed as exc:
            raise RemoteError(f"{self.url}: connection lost: {exc}") from exc
        finally:
            self._replies.pop(msg.id, None)
            self._commands.discard(msg.id)
        if isinstance(reply, Error):
            raise RemoteError(f"{reply.code}: {reply.message}")
        return reply

    async def command(self, command: Command) -> RemoteTicket:
        """Send ``command``; its :class:`RemoteTicket` once the backend accepted it (:class:`RemoteError` if not)."""
        return await self._request(CommandRequest(kind=command.kind, argument=command.argument, id=str(next(self._ids)),
                                                  events=EVENTS_VERSION if self._events else 0))

    async def status(self) -> Status:
        return await self._request(StatusRequest(id=str(next(self._ids))))
