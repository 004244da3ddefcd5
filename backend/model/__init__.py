"""The generator core: pure, synchronous torch (no asyncio, no sockets).

Data flow: conditions + noise -> ``dit.CausalDiT`` (with ``kv_cache.KVCache``, ``attention``) driven
by ``sampler`` -> latents -> ``autoencoder`` streaming decode -> RGBA frames. ``generator.Generator``
is the one API the streaming engine uses; ``checkpoint`` loads and saves weights.
"""

from backend.model.generator import Conditions, Generator, GeneratorError, GeneratorState, control_vector

__all__ = ["Conditions", "Generator", "GeneratorError", "GeneratorState", "control_vector"]
