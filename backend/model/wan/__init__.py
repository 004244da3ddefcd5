"""The Wan2.1 tier: bring your own open AR checkpoint (Self-Forcing, CausVid, LongLive, Causal Forcing).

The causal DiT is the default model's (``backend/model/dit.py``, which loads Wan / Self-Forcing weights as they
are); this package holds what surrounds it for Wan2.1-T2V-1.3B-based checkpoints:

* ``text.py``: the umT5-XXL text encoder (transformers) and its non-blocking prompt cache;
* ``vae.py`` / ``taehv.py``: the Wan2.1 VAE (encoder for the avatar, streaming decoder) and TAEHV (fast decoder);
* ``prompts.py``: commands -> prompts from the character's templates;
* ``generator.py``: the Wan-tier generator the streaming engine drives;
* ``hub.py``: ``liveidol models``: the known weights, pulled into a local cache and verified.
"""
