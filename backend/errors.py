"""The root of LiveIdol's user errors.

A :class:`LiveIdolError` means "fix your input, a file, or your setup": a bad config value, a checkpoint
that does not fit, a token file that cannot be read, a port in use, a missing voice package. Its message
is one line naming what and where; the CLI prints it without a traceback and exits with status 2.
Every module's own user error derives from it (``ConfigError``, ``CheckpointError``, ``AuthError``,
``ServerError``, ``VoiceError`` ...), so the CLI catches them all without importing those modules.
Bugs and a broken GPU worker are not user errors: they keep their tracebacks.

Usage::

    class CheckpointError(LiveIdolError, RuntimeError):
        '''A checkpoint is missing, unreadable, or does not fit the configured model.'''
"""

from __future__ import annotations

__all__ = ["LiveIdolError"]


class LiveIdolError(Exception):
    """A user error: printed as one line (no traceback) by the CLI."""
