"""The director: chat and the streamer's voice -> moderated, prioritised commands, one action at a time.

grammar.py (what a line asks for) -> moderation.py (may it) -> policy.py (when, in which order) -> director.py
(the async component that ties them together and feeds the engine).
"""

from .director import Decision, Director, DirectorState, say_duration_s
from .grammar import Grammar, ParseResult, Request
from .moderation import DirectorError, Moderator, Rejected, normalize
from .policy import CommandQueue, Tier, VoteBox

__all__ = [
    "CommandQueue",
    "Decision",
    "Director",
    "DirectorError",
    "DirectorState",
    "Grammar",
    "Moderator",
    "ParseResult",
    "Rejected",
    "Request",
    "Tier",
    "VoteBox",
    "normalize",
    "say_duration_s",
]
