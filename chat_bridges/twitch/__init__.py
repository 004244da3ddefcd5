"""Twitch: IRC chat (protocol.py, sans-I/O), EventSub redemptions (eventsub.py, sans-I/O), async clients (client.py)."""

from .client import TwitchBridge, TwitchEventSubClient
from .protocol import AuthError, TwitchError

__all__ = ["AuthError", "TwitchBridge", "TwitchError", "TwitchEventSubClient"]
