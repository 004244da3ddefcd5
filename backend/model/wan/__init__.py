"""The "bring your own open model" tier: Wan2.1-based causal checkpoints and the pieces around their DiT.

Beside the default model's files (``backend/model/*.py``), everything here loads public weights'
own layouts from local paths:

- ``vae.py``: the Wan2.1 VAE (encoder, and the causal decoder streaming chunk by chunk);
- ``taehv.py``: TAEHV, the tiny decoder for the same latents (the fast path for real time);
- ``weights.py``: reading a state dict with one-line errors naming missing/unexpected/mis-shaped keys;
- ``bench_decode.py``: decode timing at full size (random weights) for the GPU.
"""
