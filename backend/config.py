"""Configuration: frozen dataclasses, TOML loading and validation.

Every section of ``configs/default.toml`` is one frozen dataclass below; every field carries its
documentation and its allowed range in ``field(metadata=...)`` (see :func:`opt`).  Loading is
strict: an unknown key, a wrong type or an out-of-range value raises :class:`ConfigError` naming the
file, the dotted key, the value and what is allowed.  The CLI prints that one line, no traceback.

Usage::

    cfg = load_config(Path("configs/default.toml"), overrides={"server.port": 9000})
    cfg.server.port  # 9000

Components own their section (``cfg.engine``, ``cfg.server`` ...) and receive only that section.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from backend.errors import LiveIdolError

__all__ = [
    "CONFIG_DIR",
    "REPO_ROOT",
    "AutoencoderConfig",
    "ChatConfig",
    "Config",
    "ConfigError",
    "DirectorConfig",
    "EngineConfig",
    "ModelConfig",
    "ObsConfig",
    "PerceptionConfig",
    "ServerConfig",
    "VoiceConfig",
    "WanConfig",
    "describe",
    "from_mapping",
    "load_config",
    "opt",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"


class ConfigError(LiveIdolError, ValueError):
    """A configuration file or flag is wrong. The message names file, key, value and what is allowed.

    ``key`` is the dotted key at fault when one is (``engine.fps``, ``model.timesteps[1]``), so the loader
    can say whether the value came from the file or from the command line.
    """

    def __init__(self, message: str, *, key: str = "") -> None:
        super().__init__(message)
        self.key = key


def opt(default: Any, doc: str, *, min: float | None = None, max: float | None = None,
        secret: bool = False, factory: Any = None) -> Any:
    """A documented config field. ``min``/``max`` bound numbers (and the items of number tuples).

    ``secret`` fields are excluded from ``repr`` and never logged.
    """
    meta = {"doc": doc, "min": min, "max": max, "secret": secret}
    if factory is not None:
        return field(default_factory=factory, metadata=meta, repr=not secret)
    return field(default=default, metadata=meta, repr=not secret)


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DiTSizes:
    """Sizes of the causal video DiT (Wan2.1 block design). Wan2.1-1.3B: dim 1536, ffn 8960, 12 heads, 30 layers."""

    dim: int = opt(256, "Hidden size of the transformer.", min=8)
    ffn_dim: int = opt(512, "Hidden size of the feed-forward layers.", min=8)
    num_heads: int = opt(4, "Attention heads; dim / num_heads is the head size.", min=1)
    num_layers: int = opt(6, "Transformer blocks.", min=1)
    in_dim: int = opt(16, "Latent channels in (the autoencoder's latent channels).", min=1)
    out_dim: int = opt(16, "Latent channels out.", min=1)
    patch_size: tuple[int, int, int] = opt((1, 2, 2), "Patch size (frames, height, width) of the patch embedding.", min=1)
    freq_dim: int = opt(256, "Size of the sinusoidal timestep embedding.", min=2)
    text_dim: int = opt(256, "Size of the conditioning tokens before text_embedding (umT5: 4096).", min=1)
    text_len: int = opt(16, "Conditioning tokens per frame chunk (action, emotion, free text), zero-padded.", min=1)
    num_actions: int = opt(16, "Rows of the action embedding table (>= the action library size).", min=1)
    num_emotions: int = opt(8, "Rows of the emotion embedding table (>= the emotion list size).", min=1)
    num_controls: int = opt(8, "Per-frame scalar controls (mouth openness per video frame, action progress ...).", min=0)
    qk_norm: bool = opt(True, "RMSNorm on queries and keys.")
    cross_attn_norm: bool = opt(True, "Affine LayerNorm (norm3) before cross-attention.")
    eps: float = opt(1e-6, "Epsilon of the norms.", min=0.0)
    rope_theta: float = opt(10000.0, "RoPE base.", min=1.0)
    prediction: Literal["flow", "x0"] = opt(
        "flow", "What the head predicts: 'flow' (noise minus clean latents: Wan, Self-Forcing, the shipped v8) or "
        "'x0' (the clean latents, turned into flow as (x - x0) / max(sigma, 0.05), so the rest of the model is the "
        "same). x0 is for patches whose values (prod(patch_size) * out_dim) reach dim: the head cannot carry the "
        "noise of such a patch through and still draw the picture (JiT, Li & He 2025).")


@dataclass(frozen=True)
class AutoencoderConfig:
    """The small video autoencoder: RGBA pixels <-> latents."""

    latent_channels: int = opt(16, "Latent channels (must equal model.dit.in_dim).", min=1)
    spatial_factor: int = opt(8, "Pixels per latent cell along each side (power of two).", min=1, max=64)
    temporal_factor: int = opt(4, "Video frames per latent frame.", min=1, max=16)
    width: int = opt(64, "Base channel width of the encoder/decoder convolutions.", min=4)
    native_width: int = opt(256, "Native frame width in pixels (16:9 with native_height).", min=16)
    native_height: int = opt(144, "Native frame height in pixels.", min=16)
    hires_factors: tuple[int, ...] = opt(
        (2, 3, 5), "Up-sampling steps of the detail decoder, which renders the same latents at a larger size "
        "(their product pixels per latent cell: 2*3*5 = 30 gives 960x540 from a 256x144 model's 32x18 grid); "
        "[] for none.", min=1, max=8)
    mid_factors: tuple[int, ...] = opt(
        (3, 5), "Up-sampling steps of the mid detail decoder, the CPU's cheaper one: 3*5 = 15 draws 480x270 from the "
        "same 32x18 grid, resampled 2x to the output size (`liveidol train hires --decoder mid`); [] for none.",
        min=1, max=8)


@dataclass(frozen=True)
class WanConfig:
    """The Wan2.1 tier (model.family = 'wan'): the pieces around a Wan-based DiT (see `liveidol models list`)."""

    text_encoder: str = opt("", "umT5-XXL: a folder with Wan's models_t5_umt5-xxl-enc-bf16.pth (+ google/umt5-xxl/ "
                            "tokenizer) or a transformers UMT5 folder; '' = the `liveidol models pull umt5-xxl` "
                            "cache; 'random' = random weights (benchmarks).")
    text_encoder_device: Literal["auto", "cpu", "cuda"] = opt(
        "auto", "Where the text encoder runs. 'cpu' keeps its ~11 GB off the GPU (the 24 GB mode): a new prompt "
        "then takes seconds to embed while the stream keeps the old one.")
    text_encoder_offload: bool = opt(False, "Keep the text encoder on the CPU and move it to the GPU only to "
                                     "embed a new prompt (GPU memory between prompts, speed when they change).")
    prompt_cache: int = opt(64, "Prompt embeddings kept (least recently used dropped first).", min=1)
    vae: str = opt("", "Wan2.1_VAE.pth: encodes the avatar image (and decodes with decoder = 'vae'); '' = the "
                   "`liveidol models pull wan-vae` cache; 'random' = random weights.")
    decoder: Literal["taehv", "vae"] = opt("taehv", "Frame decoder: TAEHV (fast, real time) or the Wan VAE's "
                                           "causal decoder (full quality, slower).")
    taehv: str = opt("", "taew2_1.pth for decoder = 'taehv'; '' = the `liveidol models pull taehv` cache; 'random'.")
    decode_stream: bool = opt(True, "On CUDA with decoder = 'taehv': decode each chunk on a second CUDA stream, "
                              "overlapped with the next chunk's DiT passes (the engine shows its frames once they "
                              "are on the host). Off, or on a CPU: decode after the passes, in line.")


@dataclass(frozen=True)
class ModelConfig:
    """The generator: which weights, which sizes, how to sample."""

    family: Literal["liveidol", "wan"] = opt(
        "liveidol", "Model family: 'liveidol' (the embedded default: actions and emotions as tokens) or 'wan' "
        "(Wan2.1-based AR checkpoints: text prompts, an avatar image, [model.wan]; `--model wan-1.3b`).")
    checkpoint: str = opt("builtin", "'builtin' for the shipped default model, 'random' for untrained weights, "
                          "or a path to a .safetensors / Self-Forcing .pt checkpoint.")
    device: Literal["auto", "cpu", "cuda"] = opt("auto", "Where the generator runs; 'auto' picks CUDA when present.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = opt(
        "auto", "Compute dtype; 'auto' is bfloat16 on CUDA, float32 on CPU.")
    attention: Literal["auto", "sdpa", "sage", "sparse"] = opt(
        "auto", "Attention kernel: PyTorch SDPA, 8-bit SageAttention (CUDA, if installed), or 'sparse' (block-sparse "
        "attention over the context, an approximation: see sparse_keep). 'auto' prefers cuDNN SDPA on Hopper, SDPA "
        "on CPU and SageAttention on other CUDA GPUs.")
    sparse_keep: float = opt(0.25, "With attention = 'sparse': the fraction of key blocks (128 tokens) each query "
                             "block attends to, picked by pooled scores.", min=0.01, max=1.0)
    linears: Literal["auto", "dense", "fp8"] = opt(
        "auto", "The DiT blocks' linear layers: dense in model.dtype, or 'fp8' (e4m3 with per-row scales, bfloat16 on "
        "GPUs with FP8 units; an approximation). 'auto' = dense (FP8 misses the error budget).")
    steps: int = opt(4, "Denoising steps per chunk (1-4); the engine may lower it to hold real time.", min=1, max=4)
    timesteps: tuple[float, ...] = opt((1000.0, 750.0, 500.0, 250.0),
                                       "Denoising timesteps before the shift warp (first `steps` are used).",
                                       min=0.0, max=1000.0)
    shift: float = opt(5.0, "Flow-matching timestep shift.", min=0.1, max=100.0)
    context_noise: float = opt(0.1, "Noise level (sigma) of the generated frames written into the KV cache as "
                               "context; the default model is trained with it, which keeps long rollouts from "
                               "drifting. Use 0 for Self-Forcing / Wan checkpoints.", min=0.0, max=0.5)
    guidance: float = opt(0.5, "Action guidance: push each denoising step away from the prediction under "
                          "`guidance_negative` (costs a second pass while an action plays; 0 = off).",
                          min=0.0, max=20.0)
    guidance_negative: str = opt("idle", "The action whose prediction guidance pushes away from.")
    guidance_frames: int = opt(4, "Guide only the first this many latent frames of each action (the push that "
                               "starts it; the model's own context carries it on); 0 = the whole action.", min=0)
    distilled_guidance: Literal["skip", "apply"] = opt(
        "skip", "When the checkpoint has action (and emotion) guidance distilled into it (`liveidol train distill`): "
        "'skip' their extra passes (the weights guide themselves; an emotion whose configured push differs from the "
        "distilled one still gets a pass for the difference), or 'apply' model.guidance and emotion guidance on "
        "top anyway.")
    emotion_guidance: float = opt(1.0, "Emotion guidance: while an emotion of `emotion_guidance_for` is held, push "
                                  "each denoising step away from the prediction under the neutral emotion (the same "
                                  "action): f + w (f - f_neutral). Costs another pass per step, except with weights that "
                                  "have it distilled in (the shipped v8: see model.distilled_guidance); 0 = off.",
                                  min=0.0, max=20.0)
    emotion_guidance_for: tuple[str, ...] = opt(
        ("happy", "angry", "surprised", "sad"), "The emotions emotion guidance pushes (and `liveidol train distill` "
        "folds into the weights). Without the push the model draws them faintly, happy least.")
    emotion_guidance_weights: tuple[float, ...] = opt(
        (5.0, 1.0, 1.0, 1.0), "How hard emotion guidance pushes happy, angry, surprised and sad (in that order), as "
        "multiples of `emotion_guidance` (empty: 1 each). Happy needs 5: its prediction differs least from neutral's; "
        "angry at 2 floods the face red. With weights that have the push distilled in (the shipped v8: 5, 2, 1, 1) "
        "these are still the pushes you get: a weight apart from the distilled one costs a pass for that emotion "
        "(angry 1, the default: a face nearer the world's salmon, read as often as at 2).")
    chunk_frames: int = opt(2, "Latent frames per generated chunk.", min=1, max=16)
    window_frames: int = opt(8, "Latent frames of recent history kept in the KV cache (besides the sink).", min=1)
    sink_frames: int = opt(1, "Latent frames kept for good at the start of the cache (the identity frame).", min=0)
    seed: int = opt(0, "Seed of the sampling noise.", min=0)
    output_width: int = opt(960, "Width of frames sent to OBS (upscaled from the native size).", min=16, max=7680)
    output_height: int = opt(540, "Height of frames sent to OBS.", min=16, max=4320)
    compile: bool = opt(True, "Compile the cached DiT step (torch.compile of each block's fixed-shape halves) and "
                        "replay it as CUDA graphs (CUDA only; exact up to rounding). A chunk shape compiles the second "
                        "time it comes (a few seconds, once); the default idol runs 5x faster on an H200.")
    decoder: Literal["auto", "native", "mid", "hires"] = opt(
        "auto", "Which decoder draws the frames: 'hires' renders the output size from the latents (sharp detail), "
        "'mid' renders half of it (480x270, upscaled 2x: detail a 2-core CPU can afford), 'native' draws the native "
        "size and upscales it (cheapest); 'auto' is 'hires' on CUDA when the checkpoint has its weights ('mid' if it "
        "has only those), 'mid' on a CPU when it has those, else 'native'.")
    framings: tuple[Literal["half", "whole"], ...] = opt(
        ("half",), "What `liveidol train` draws its clips in: 'half' (the idol from the head to the waist, as the "
        "shipped v8 was trained) and/or 'whole' (from the hair to the shoes); with both, clips take turns. The export "
        "records them, and a character's `framing` must be one the checkpoint was trained on.")
    dit: DiTSizes = opt(None, "Transformer sizes.", factory=DiTSizes)
    autoencoder: AutoencoderConfig = opt(None, "Autoencoder sizes.", factory=AutoencoderConfig)
    wan: WanConfig = opt(None, "The Wan2.1 tier's text encoder and decoders.", factory=WanConfig)

    def __post_init__(self) -> None:
        if not self.framings or len(set(self.framings)) != len(self.framings):
            raise ConfigError(f"model.framings = {list(self.framings)}: expected one or both of 'half' and 'whole', "
                              "each once", key="model.framings")


@dataclass(frozen=True)
class EngineConfig:
    """The streaming engine: pacing, look-ahead, dynamic compute."""

    fps: float = opt(25.0, "Output frame rate.", min=1.0, max=120.0)
    lookahead_frames: int = opt(12, "Frames generated ahead of the display clock (bounded buffer). A command drops "
                                "what is queued beyond the chunk being made: on a 2-core CPU 12 (half a second) showed "
                                "23.95 distinct frames a second against 22.76 with 24, and answered in 285 / 323 ms "
                                "against 366 / 533 (p50 / p95).", min=1, max=600)
    min_steps: int = opt(1, "Fewest denoising steps the engine may drop to when behind real time.", min=1, max=4)
    min_chunk_frames: int = opt(1, "Smallest chunk (latent frames) the engine may drop to when behind.", min=1)
    idle_action: str = opt("idle", "Action played when no command is active.")
    restart_on_command: bool = opt(False, "A command that comes while a chunk is being made stops it and makes it "
                                    "again under the command (exact: its context is not in the cache yet), and only "
                                    "the made frames that cover the next chunk's making are kept: lower latency, "
                                    "some generator work thrown away. Off: that chunk is kept and the command "
                                    "follows it.")
    lookahead_cover: float = opt(0.0, "With restart_on_command, > 0: generate ahead only what covers the next "
                                 "chunk's making (its measured seconds) and this many frames more, at most "
                                 "lookahead_frames: frames queued beyond that delay a command's first frame, "
                                 "fewer make a restart repeat frames. 0: lookahead_frames alone.", min=0.0, max=600.0)
    finish_within_s: float = opt(0.0, "With restart_on_command: a command that comes while a chunk is being made "
                                 "lets that chunk finish (no work thrown away) instead of restarting it when the "
                                 "command's first frame would still show within this many seconds of the command, "
                                 "or no later than after a restart. 0: always restart.", min=0.0, max=10.0)
    log_path: str = opt("", "Append-only input log (JSON lines, each command written when accepted; "
                        "`liveidol replay` re-renders a session from it); '' keeps it in memory only.")


@dataclass(frozen=True)
class ServerConfig:
    """The websocket server that serves frames to OBS and takes control commands."""

    host: str = opt("127.0.0.1", "Address to bind. Only loopback by default; other addresses need allow_remote.")
    port: int = opt(8765, "TCP port.", min=0, max=65535)
    allow_remote: bool = opt(False, "Allow binding a non-loopback address (frames then go out as JPEG; every path "
                             "then needs the token from other machines; use tls_cert).")
    token_file: str = opt("", "Control token file; '' means <user config dir>/liveidol/token (created 0600).")
    jpeg_quality: int = opt(85, "JPEG quality for non-loopback clients.", min=1, max=100)
    max_message_bytes: int = opt(65536, "Largest control message accepted from a client.", min=256)
    client_slot_frames: int = opt(1, "Frames buffered per client; older ones are dropped for slow clients.", min=1, max=64)
    allowed_origins: tuple[str, ...] = opt((), "Web page origins (e.g. 'https://overlay.example') allowed to connect; "
                                           "a request carrying any other Origin header is refused with 403, so a page "
                                           "in your browser cannot reach the backend. OBS's script and the CLI send none.")
    tls_cert: str = opt("", "PEM certificate (chain): serve wss:// and https:// so the token and frames are "
                        "encrypted off loopback; '' = plain ws://.")
    tls_key: str = opt("", "PEM private key of tls_cert; '' = the key is in the tls_cert file.")


@dataclass(frozen=True)
class DirectorConfig:
    """Turns chat and voice into commands: grammar, moderation, priority."""

    prefix: str = opt("!", "Command prefix in chat.")
    allowed_actions: tuple[str, ...] = opt((), "Actions viewers may ask for; empty = all in the library.")
    mod_only_actions: tuple[str, ...] = opt((), "Actions only the broadcaster and moderators may ask for.")
    blocked_words: tuple[str, ...] = opt((), "Words refused in viewers' requests and in what the idol says.")
    max_message_chars: int = opt(200, "Longest chat message considered.", min=1)
    max_say_chars: int = opt(120, "Longest text the idol will say.", min=1)
    user_cooldown_s: float = opt(20.0, "Seconds between two commands of one viewer.", min=0.0)
    global_cooldown_s: float = opt(2.0, "Seconds between any two accepted viewer commands.", min=0.0)
    cooldown_reply_interval_s: float = opt(30.0, "Least seconds between two 'wait N s' replies.", min=0.0)
    dedup_window_s: float = opt(10.0, "Identical messages of one viewer within this window are dropped.", min=0.0)
    per_user_limit: int = opt(0, "Commands per viewer per stream; 0 = unlimited.", min=0)
    queue_size: int = opt(32, "Queued commands at most; the lowest priority is dropped beyond.", min=1)
    free_text: bool = opt(True, "Match free text (no prefix) to the nearest allowed action.")
    vote_window_s: float = opt(0.0, "Vote mode: chat votes on the next action in this window; 0 = off.", min=0.0)


@dataclass(frozen=True)
class TwitchConfig:
    channel: str = opt("", "Channel to join (login name).")
    nick: str = opt("", "Bot login; '' reads anonymously (justinfan).")
    oauth_token: str = opt("", "OAuth token (chat:read chat:edit); env LIVEIDOL_TWITCH_TOKEN wins.", secret=True)
    client_id: str = opt("", "App client id, for EventSub channel-point redemptions.")
    url: str = opt("wss://irc-ws.chat.twitch.tv:443", "IRC websocket URL.")
    eventsub_url: str = opt("wss://eventsub.wss.twitch.tv/ws", "EventSub websocket URL.")
    helix_url: str = opt("https://api.twitch.tv/helix", "Helix API base URL.")


@dataclass(frozen=True)
class BilibiliConfig:
    room_id: int = opt(0, "Live room id (short or long).", min=0)
    cookie: str = opt("", "Optional login cookie (SESSDATA=...); env LIVEIDOL_BILIBILI_COOKIE wins.", secret=True)
    open_platform_code: str = opt("", "Streamer IDCode for the open platform; '' uses the web protocol.", secret=True)
    app_id: int = opt(0, "Open platform app id.", min=0)
    access_key_id: str = opt("", "Open platform access key id.", secret=True)
    access_key_secret: str = opt("", "Open platform access key secret.", secret=True)
    api_url: str = opt("https://api.live.bilibili.com", "Web API base URL.")
    nav_url: str = opt("https://api.bilibili.com/x/web-interface/nav", "Account API giving the WBI signing keys.")
    open_api_url: str = opt("https://live-open.biliapi.com", "Open platform API base URL.")


@dataclass(frozen=True)
class ChatConfig:
    twitch: TwitchConfig = opt(None, "Twitch chat.", factory=TwitchConfig)
    bilibili: BilibiliConfig = opt(None, "Bilibili danmaku.", factory=BilibiliConfig)


@dataclass(frozen=True)
class VoiceConfig:
    enabled: bool = opt(False, "Listen to the streamer's microphone and speak with the idol's voice.")
    asr_model: str = opt("", "Path to a CTranslate2 faster-whisper model directory.")
    asr_compute_type: str = opt("auto", "faster-whisper compute type; 'auto' is int8 on CPU, float16 on CUDA.")
    language: str = opt("en", "Language of the streamer's speech ('' = detect).")
    wake_phrase: str = opt("idol", "Spoken commands start with this phrase; '' = every utterance is a command.")
    push_to_talk: bool = opt(False, "Only listen while push-to-talk is held (control command 'ptt').")
    input_device: str = opt("", "sounddevice input device name or index; '' = default microphone.")
    tts_engine: Literal["auto", "piper", "coqui", "espeak"] = opt("auto", "Text-to-speech engine.")
    tts_voice: str = opt("", "Piper voice .onnx path, or the coqui speaker sample .wav to clone.")
    sample_rate: int = opt(48000, "Sample rate of audio sent to OBS.", min=8000, max=192000)


@dataclass(frozen=True)
class ObsConfig:
    host: str = opt("127.0.0.1", "obs-websocket host.")
    port: int = opt(4455, "obs-websocket port.", min=1, max=65535)
    password: str = opt("", "obs-websocket password; env LIVEIDOL_OBS_PASSWORD wins.", secret=True)
    scene: str = opt("", "Scene to add the source to; '' = the current scene.")
    source_name: str = opt("LiveIdol", "Name of the source in OBS.")


REACTIONS = ("wave", "smile", "heart", "sad", "thumbs_up", "nod", "head_shake", "surprised")


@dataclass(frozen=True)
class PerceptionConfig:
    """The idol perceives: the streamer's camera (off by default) and the mood of chat and speech."""

    enabled: bool = opt(False, "Watch the streamer's camera and react to expressions and gestures (serve --camera). "
                        "Pictures stay in memory on this machine: never stored, never sent anywhere.")
    camera: Literal["obs", "device"] = opt("obs", "Where pictures come from: screenshots of an OBS source over "
                                           "obs-websocket ([obs] host, port, password), or a local camera device.")
    obs_source: str = opt("", "Name of the OBS source that shows the camera (needed with camera = 'obs').")
    device: int = opt(0, "Camera device index for camera = 'device' (needs opencv).", min=0)
    fps: float = opt(4.0, "Pictures looked at per second (perception runs in one low-priority thread).",
                     min=0.5, max=15.0)
    picture_size: int = opt(480, "Longest side of the pictures looked at, in pixels.", min=64, max=1920)
    reactions: tuple[str, ...] = opt(REACTIONS, "Reactions that are on: wave (waves back), smile (smiles), heart "
                                     "(heart hands -> a heart), sad (a gentle, concerned look), thumbs_up (a "
                                     "thumbs-up back), nod, head_shake, surprised.")
    reaction_cooldown_s: float = opt(10.0, "Seconds before the same reaction may play again.", min=0.0)
    global_cooldown_s: float = opt(3.0, "Seconds between any two reactions.", min=0.0)
    max_wait_s: float = opt(2.0, "A reaction that cannot start within this many seconds (viewers' commands "
                            "playing) is dropped: reactions queue below every viewer.", min=0.0)
    mood: bool = opt(False, "Let the sentiment of recent chat and of the streamer's speech set the idol's "
                     "emotion between commands.")
    mood_alpha: float = opt(0.2, "Weight of one message in the mood's moving average.", min=0.01, max=1.0)
    mood_enter: float = opt(0.3, "Mood above this (or below minus this) turns the idol happy (or sad).",
                            min=0.0, max=1.0)
    mood_exit: float = opt(0.1, "Mood back inside plus/minus this returns her to neutral (hysteresis).",
                           min=0.0, max=1.0)
    mood_hold_s: float = opt(15.0, "Seconds the mood leaves alone an emotion a viewer or the streamer asked for, "
                             "and the least time between two mood changes.", min=0.0)

    def __post_init__(self) -> None:
        unknown = [r for r in self.reactions if r not in REACTIONS]
        if unknown:
            raise ConfigError(f"perception.reactions: unknown {', '.join(map(repr, unknown))} "
                              f"(allowed: {', '.join(REACTIONS)})")
        if self.mood_exit > self.mood_enter:
            raise ConfigError(f"perception.mood_exit = {self.mood_exit} must not exceed mood_enter = {self.mood_enter}")


@dataclass(frozen=True)
class Config:
    character: str = opt("aiko", "Character: a name in configs/characters/ or a path to a character .toml.")
    log_level: Literal["debug", "info", "warning", "error"] = opt("info", "Console log level.")
    model: ModelConfig = opt(None, "The generator.", factory=ModelConfig)
    engine: EngineConfig = opt(None, "The streaming engine.", factory=EngineConfig)
    server: ServerConfig = opt(None, "The websocket server.", factory=ServerConfig)
    director: DirectorConfig = opt(None, "Chat and voice commands.", factory=DirectorConfig)
    chat: ChatConfig = opt(None, "Chat platforms.", factory=ChatConfig)
    voice: VoiceConfig = opt(None, "Streamer voice and the idol's voice.", factory=VoiceConfig)
    obs: ObsConfig = opt(None, "OBS auto-setup.", factory=ObsConfig)
    perception: PerceptionConfig = opt(None, "Camera perception and mood.", factory=PerceptionConfig)


# ---------------------------------------------------------------------------------------------
# Loading and validation (generic over the dataclasses above and any other frozen dataclass)
# ---------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_type_name(args[0])}"
        return f"a list of {len(args)} " + "/".join(_type_name(a) for a in args)
    if dataclasses.is_dataclass(tp):
        return "a table"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _convert(tp: Any, value: Any, where: str, meta: Mapping[str, Any]) -> Any:
    def fail(allowed: str) -> ConfigError:
        shown = "<hidden>" if meta.get("secret") else repr(value)
        return ConfigError(f"{where} = {shown}: expected {allowed}", key=where)

    origin = typing.get_origin(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise fail("a table")
        return from_mapping(tp, value, _prefix=where)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise fail(_type_name(tp))
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise fail(_type_name(tp))
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]", meta) for i, v in enumerate(value))
        if len(value) != len(args):
            raise fail(_type_name(tp))
        return tuple(_convert(a, v, f"{where}[{i}]", meta) for i, (a, v) in enumerate(zip(args, value)))
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            try:
                return _convert(arg, value, where, meta)
            except ConfigError as exc:
                errors.append(exc)
        raise fail(" or ".join(_type_name(a) for a in typing.get_args(tp)))
    if tp is bool:
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("an integer")
        out: Any = value
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise fail("a number")
        out = float(value)
        if not math.isfinite(out):  # TOML has nan and inf; no setting means either
            raise fail(f"a finite number{_range_text(meta)}")
    elif tp is str:
        if not isinstance(value, str):
            raise fail("a string")
        return value
    else:  # pragma: no cover - a field type this loader does not know is a programming error
        raise TypeError(f"unsupported config field type {tp!r} at {where}")
    lo, hi = meta.get("min"), meta.get("max")
    if (lo is not None and out < lo) or (hi is not None and out > hi):
        raise fail(f"{_type_name(tp)}{_range_text(meta)}")
    return out


def _range_text(meta: Mapping[str, Any]) -> str:
    lo, hi = meta.get("min"), meta.get("max")
    if lo is None or hi is None:
        return "" if lo is None and hi is None else f" >= {lo}" if hi is None else f" <= {hi}"
    return f" from {lo} to {hi}"


def from_mapping(cls: type, data: Mapping[str, Any], *, _prefix: str = "") -> Any:
    """Build the frozen dataclass ``cls`` from a (TOML) mapping, strictly."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        where = f"{_prefix}.{key}" if _prefix else key
        if key not in fields:
            allowed = ", ".join(sorted(fields))
            raise ConfigError(f"{where}: unknown key (allowed here: {allowed})", key=where)
        kwargs[key] = _convert(hints[key], value, where, fields[key].metadata)
    return cls(**kwargs)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: {part} is not a table", key=dotted)
    node[parts[-1]] = value


def _read_toml(path: Path, what: str = "config file") -> dict[str, Any]:
    """The TOML table in ``path``; every way a file can be wrong is one ConfigError line naming it."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: {what} not found") from exc
    except IsADirectoryError as exc:
        raise ConfigError(f"{path}: is a directory, not a {what}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text file (byte {exc.start} is not UTF-8); expected TOML") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc


def _override_at_fault(key: str, overrides: Mapping[str, Any]) -> str | None:
    """The override whose value ``key`` (dotted, maybe with [i]) lies in, if any."""
    for name in overrides:
        if key == name or key.startswith((name + ".", name + "[")):
            return name
    return None


def load_config(path: Path | None = None, overrides: Mapping[str, Any] | None = None, *,
                origins: Mapping[str, str] | None = None) -> Config:
    """Load ``path`` (default: configs/default.toml) and apply dotted ``overrides`` (CLI flags).

    Errors name where the bad value came from: the file
    (``configs/default.toml: server.port = 70000: expected an integer from 0 to 65535``), or for a value
    from ``overrides`` its ``origins`` label (the CLI passes ``--set server.port=70000``; default
    ``command line``).
    """
    path = path or CONFIG_DIR / "default.toml"
    overrides = overrides or {}
    data = _read_toml(path)

    def origin(key: str) -> str:
        name = _override_at_fault(key, overrides)
        if name is None:
            return str(path)
        return (origins or {}).get(name, "command line")

    for key, value in overrides.items():
        try:
            _set_dotted(data, key, value)
        except ConfigError as exc:
            raise ConfigError(f"{origin(key)}: {exc}", key=exc.key) from None
    try:
        return from_mapping(Config, data)
    except ConfigError as exc:
        raise ConfigError(f"{origin(exc.key)}: {exc}", key=exc.key) from None


def load_table(cls: type, path: Path) -> Any:
    """Load one TOML file into the frozen dataclass ``cls`` (used for characters)."""
    data = _read_toml(path, "file")
    try:
        return from_mapping(cls, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}", key=exc.key) from None


def describe(cls: type = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, doc) for every field: the source of the documented default.toml."""
    rows = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        hint = typing.get_type_hints(cls)[f.name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            rows.extend(describe(hint, key + "."))
        else:
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:  # pragma: no cover - every config field has a default
                raise TypeError(f"config field {key} has no default")
            rows.append((key, "<secret>" if f.metadata.get("secret") else repr(default), f.metadata.get("doc", "")))
    return rows


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v) if isinstance(v, float) else str(v)


def default_toml() -> str:
    """The documented default configuration, as configs/default.toml holds it (a test keeps them equal)."""
    import textwrap

    out = ["# LiveIdol configuration. Every key is optional: a missing key keeps the default shown here.",
           "# CLI flags override (e.g. `liveidol serve --port 9000`, or `--set model.steps=2`).",
           "# Unknown keys, wrong types and out-of-range values are refused with one clear error line.", ""]

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        fields = dataclasses.fields(cls)
        if prefix:
            out.append(f"[{prefix}]")
            if cls.__doc__:
                out.extend(f"# {line}" for line in textwrap.wrap(cls.__doc__.strip().splitlines()[0], 108))
        for f in fields:
            if dataclasses.is_dataclass(hints[f.name]):
                continue
            m, rng = f.metadata, []
            if m.get("min") is not None:
                rng.append(f"min {m['min']}")
            if m.get("max") is not None:
                rng.append(f"max {m['max']}")
            if typing.get_origin(hints[f.name]) is Literal:
                rng.append("one of " + ", ".join(map(repr, typing.get_args(hints[f.name]))))
            text = m.get("doc", "") + (f" ({'; '.join(rng)})" if rng else "")
            out.extend(f"# {line}" for line in textwrap.wrap(text, 108))
            out.append(f"{f.name} = {_toml_value(f.default)}")
        out.append("")
        for f in fields:
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], f"{prefix}.{f.name}" if prefix else f.name)

    walk(Config, "")
    return "\n".join(out).rstrip() + "\n"
