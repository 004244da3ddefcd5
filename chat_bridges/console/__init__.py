"""The local console bridge: type chat lines (and /as, /bits, /ban ...) without a platform."""

from .client import ConsoleBridge
from .protocol import ConsoleInputError, ConsoleSession

__all__ = ["ConsoleBridge", "ConsoleInputError", "ConsoleSession"]
