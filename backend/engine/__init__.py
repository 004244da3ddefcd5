"""The streaming engine: sessions, the generator thread, frame pacing, dynamic compute, fan-out."""

from backend.engine.broadcast import Subscription
from backend.engine.engine import ChunkConditions, Engine, FrameGenerator, Ticket
from backend.engine.session import CommandError, EngineError

__all__ = ["ChunkConditions", "CommandError", "Engine", "EngineError", "FrameGenerator", "Subscription", "Ticket"]
