"""The "bring your own open model" tier: Wan2.1-based causal checkpoints (Self-Forcing, CausVid, LongLive,
Causal Forcing) and the pieces around their DiT.

The causal DiT is the default model's (``backend/model/dit.py`` loads Wan / Self-Forcing weights unchanged);
beside it, everything here loads public weights' own layouts from local paths:

- ``vae.py``: the Wan2.1 VAE (encoder for the avatar, and the causal decoder streaming chunk by chunk);
- ``taehv.py``: TAEHV, the tiny decoder for the same latents (the fast path for real time);
- ``weights.py``: reading a state dict with one-line errors naming missing/unexpected/mis-shaped keys;
- ``bench_decode.py``: decode timing at full size (random weights) for the GPU;
- ``text.py``: the umT5-XXL text encoder (transformers) and its non-blocking prompt cache;
- ``prompts.py``: commands -> prompts from the character's templates;
- ``generator.py``: the Wan-tier generator the streaming engine drives (a ``StreamingGenerator``, as the
  default tier's);
- ``hub.py``: ``liveidol models``: the known weights, pulled into a local cache and verified.
"""
