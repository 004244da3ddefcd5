"""The control token: created once, stored 0600 in the user's config dir, compared in constant time.

The token file is ``ServerConfig.token_file`` if set, else ``$XDG_CONFIG_HOME/liveidol/token`` or
``~/.config/liveidol/token``. On first start a token is made with :func:`secrets.token_urlsafe` and
written with mode 0600; :attr:`Token.created` tells the CLI to show it once with :func:`announce_token`,
straight on the terminal: the token never goes through logging (``repr=False``), so no log handler, file
or journal ever holds it.

Usage::

    token = load_or_create_token(cfg.server.token_file or None)
    announce_token(token)                     # prints it once if just created (stderr, a terminal only)
    check_token(token.value, given)   # hmac.compare_digest

    throttle = AuthThrottle()                 # per-address lockout after wrong tokens (the caller passes the clock)
    if (wait := throttle.locked_for(peer, now)) > 0: refuse(retry_after=wait)
    elif check_token(...): throttle.succeeded(peer)
    else: throttle.failed(peer, now)
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import stat
import sys
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from backend.errors import LiveIdolError

__all__ = [
    "AuthError",
    "AuthThrottle",
    "Token",
    "announce_token",
    "bearer_token",
    "check_token",
    "default_token_path",
    "load_or_create_token",
    "wire_logger",
]

log = logging.getLogger(__name__)


class AuthError(LiveIdolError):
    """The token file cannot be read or created."""


@dataclass(frozen=True)
class Token:
    value: str = field(repr=False)
    path: Path | None = None
    created: bool = False  # True when this call created it: show it to the user once


def default_token_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME") or Path.home()) / ".config")
    return Path(base) / "liveidol" / "token"


def load_or_create_token(path: str | Path | None = None) -> Token:
    """Read the token at ``path`` (default :func:`default_token_path`), creating it (0600) if missing."""
    path = Path(path) if path else default_token_path()
    try:
        value = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        pass
    except IsADirectoryError as exc:
        raise AuthError(f"{path}: is a directory, not a control token file (server.token_file)") from exc
    except OSError as exc:
        raise AuthError(f"{path}: cannot read the control token: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise AuthError(f"{path}: the control token file is not UTF-8 text (byte {exc.start}); "
                        "delete it to make a new token") from exc
    else:
        if not value:
            raise AuthError(f"{path}: the control token file is empty (delete it to make a new token)")
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            log.warning("token file readable by others, fixing mode path=%s mode=%o", path, mode)
            path.chmod(0o600)
        return Token(value, path, created=False)
    value = secrets.token_urlsafe(32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # created by a concurrent start: read theirs
        return load_or_create_token(path)
    except OSError as exc:
        raise AuthError(f"{path}: cannot create the control token: {exc.strerror}") from exc
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(value + "\n")
    log.info("control token created path=%s", path)
    return Token(value, path, created=True)


def announce_token(token: Token, stream: TextIO | None = None) -> None:
    """Show a token this start created, once, on the terminal (``stream``, default stderr): never via logging.

    When ``stream`` is not a terminal (redirected to a file, a pipe, a service journal) the token stays in its
    0600 file and only the path is shown, so it is not copied into logs kept elsewhere.
    """
    if not token.created:
        return
    stream = sys.stderr if stream is None else stream
    if stream.isatty():
        text = f"LiveIdol control token (shown once; stored in {token.path}): {token.value}"
    else:
        text = f"LiveIdol control token created in {token.path} (not shown here: this output is not a terminal)"
    print(text, file=stream, flush=True)


class _NoWireDebug(logging.LoggerAdapter):
    def isEnabledFor(self, level: int) -> bool:
        return level > logging.DEBUG and self.logger.isEnabledFor(level)


def wire_logger(name: str) -> logging.LoggerAdapter:
    """A logger for websockets' ``logger=``: the library's lines minus its debug ones, which echo every frame
    and header sent or received (an auth message's token, an ``Authorization`` header) into the log."""
    return _NoWireDebug(logging.getLogger(name), {})


def check_token(expected: str, given: object) -> bool:
    """Constant-time comparison; anything but a non-empty str is wrong."""
    if not isinstance(given, str) or not given or not expected:
        return False
    return hmac.compare_digest(expected.encode("utf-8"), given.encode("utf-8"))


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; None when there is no such header."""
    if header is None:
        return None
    scheme, _, value = header.strip().partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


@dataclass
class _Peer:
    failures: int = 0
    locked_until: float = 0.0
    last_failure: float = 0.0


class AuthThrottle:
    """Per-address lockout after wrong tokens; sans-I/O (every call takes ``now``, monotonic seconds).

    The first ``free`` wrong tokens from an address cost nothing; each one after that locks the address out
    for ``base_s`` doubled per extra failure, at most ``max_s``. While locked out every attempt is refused
    without looking at its token (so guessing in parallel gains nothing); a right token resets the address.
    An address quiet for ``forget_s`` starts afresh; at most ``peers`` addresses are remembered (oldest
    forgotten first), so memory stays bounded under a flood of addresses.
    """

    def __init__(self, *, free: int = 5, base_s: float = 1.0, max_s: float = 60.0, forget_s: float = 600.0,
                 peers: int = 4096) -> None:
        self.free, self.base_s, self.max_s, self.forget_s, self.peers = free, base_s, max_s, forget_s, peers
        self._peers: OrderedDict[str, _Peer] = OrderedDict()

    def locked_for(self, peer: str, now: float) -> float:
        """Seconds ``peer`` stays locked out (0 when it may try a token)."""
        state = self._peers.get(peer)
        if state is None:
            return 0.0
        if now - state.last_failure > self.forget_s:
            del self._peers[peer]
            return 0.0
        return max(0.0, state.locked_until - now)

    def failed(self, peer: str, now: float) -> float:
        """Record a wrong token from ``peer``; returns the lockout it starts (0 while still free)."""
        state = self._peers.pop(peer, None) or _Peer()
        if now - state.last_failure > self.forget_s:
            state = _Peer()
        self._peers[peer] = state  # most recent last
        while len(self._peers) > self.peers:
            self._peers.popitem(last=False)
        state.failures += 1
        state.last_failure = now
        if state.failures <= self.free:
            return 0.0
        lockout = min(self.max_s, self.base_s * 2.0 ** min(state.failures - self.free - 1, 32))
        state.locked_until = now + lockout
        return lockout

    def succeeded(self, peer: str) -> None:
        self._peers.pop(peer, None)
