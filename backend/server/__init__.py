"""The websocket server: protocol (sans-I/O), token auth, Prometheus metrics, the server itself."""

from backend.server.auth import Token, load_or_create_token
from backend.server.server import Server, ServerError

__all__ = ["Server", "ServerError", "Token", "load_or_create_token"]
