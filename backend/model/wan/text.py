"""The umT5-XXL text encoder of the Wan2.1 tier, through ``transformers`` (``UMT5EncoderModel``), and its prompt cache.

What Wan2.1's ``T5EncoderModel`` pipeline does (github Wan-Video/Wan2.1 ``wan/modules/t5.py`` and
``tokenizers.py``), reproduced here with the transformers model instead of Wan's hand-written copy:

1. clean the prompt (``ftfy.fix_text`` when ftfy is installed, HTML unescape twice, whitespace collapsed);
2. tokenize with the umT5 tokenizer, padded and truncated to ``text_len`` (512) with the end token;
3. run the encoder with the attention mask, keep the first ``seq_len`` rows (the tokens and the end token);
4. the DiT pads those rows with zeros to ``text_len`` (so everything beyond the sequence is zero).

:meth:`UMT5TextEncoder.encode` returns step 4's ``(B, text_len, dim)`` with the lengths; :meth:`embed` one
prompt's ``(seq_len, dim)`` rows, which is what :class:`backend.model.generator.Conditions` carries.

Weights load from a local folder in either layout:

* transformers: ``config.json`` + ``*.safetensors`` / ``pytorch_model*.bin`` (e.g. ``google/umt5-xxl``), with
  the tokenizer files in the same folder;
* Wan's: ``models_t5_umt5-xxl-enc-bf16.pth`` (the encoder in Wan's key names, from ``Wan-AI/Wan2.1-T2V-1.3B``),
  the tokenizer in ``google/umt5-xxl/`` beside it (that repository's layout) or in the folder itself. Keys
  are renamed to transformers' (:func:`wan_to_hf_keys`) and sizes are read from the tensors' shapes.

:class:`PromptEncoder` keeps an LRU of embeddings and encodes new prompts on its own thread, so a prompt
switch never stalls the stream: :meth:`PromptEncoder.lookup` answers at once with the prompt's embedding
when it is ready, else with the last ready one (the generator keeps the old prompt until the new one is
ready).

Usage::

    enc = UMT5TextEncoder.from_folder("~/.cache/liveidol/models/wan2.1-t2v-1.3b", text_len=512,
                                      device=torch.device("cuda"), dtype=torch.bfloat16)
    with PromptEncoder(enc, capacity=64) as prompts:
        prompts.encode_now("a girl waves")          # blocking, e.g. at start-up
        emb, exact = prompts.lookup("a girl bows")  # never blocks: (old embedding, False) until ready
"""

from __future__ import annotations

import collections
import html
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from backend.errors import LiveIdolError
from backend.model.wan.weights import WeightsError, load_state_dict_into

__all__ = [
    "WAN_T5_FILE",
    "PromptEncoder",
    "TextEncoderError",
    "UMT5TextEncoder",
    "clean_prompt",
    "wan_to_hf_keys",
]

log = logging.getLogger(__name__)

WAN_T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"  # the encoder's file name in Wan-AI/Wan2.1-T2V-1.3B
WAN_TOKENIZER_DIR = "google/umt5-xxl"  # the tokenizer's folder in that repository
# umT5-XXL (google/umt5-xxl, and Wan's umt5_xxl()): used for random weights at text_dim 4096.
UMT5_XXL = {"vocab_size": 256384, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_heads": 64}


class TextEncoderError(LiveIdolError, RuntimeError):
    """The text encoder's folder is missing, incomplete, or its weights do not fit."""


def clean_prompt(text: str) -> str:
    """Wan's ``whitespace`` cleaning: ftfy (when installed), HTML unescape twice, collapse whitespace."""
    try:
        import ftfy
    except ImportError:
        pass
    else:
        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


def wan_to_hf_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename Wan's ``T5Encoder`` keys to ``UMT5EncoderModel``'s (unknown keys are kept, so they get reported)."""
    out: dict[str, torch.Tensor] = {}
    block = re.compile(r"^blocks\.(\d+)\.(.+)$")
    inner = {
        "norm1.weight": "layer.0.layer_norm.weight",
        "attn.q.weight": "layer.0.SelfAttention.q.weight",
        "attn.k.weight": "layer.0.SelfAttention.k.weight",
        "attn.v.weight": "layer.0.SelfAttention.v.weight",
        "attn.o.weight": "layer.0.SelfAttention.o.weight",
        "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
        "norm2.weight": "layer.1.layer_norm.weight",
        "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",  # GELU(tanh) branch
        "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",  # linear branch
        "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
    }
    for key, value in state.items():
        m = block.match(key)
        if key == "token_embedding.weight":
            out["shared.weight"] = value
            out["encoder.embed_tokens.weight"] = value
        elif key == "norm.weight":
            out["encoder.final_layer_norm.weight"] = value
        elif m and m.group(2) in inner:
            out[f"encoder.block.{m.group(1)}.{inner[m.group(2)]}"] = value
        else:
            out[key] = value
    return out


def _transformers(*names: str) -> tuple[Any, ...]:
    try:
        import transformers
    except ImportError as exc:
        raise TextEncoderError("the Wan tier's text encoder needs transformers: pip install -e '.[wan]' "
                               "(./run does it for --model wan-1.3b)") from exc
    return tuple(getattr(transformers, n) for n in names)


def _config_from_wan(state: dict[str, torch.Tensor], source: str) -> Any:
    """A ``UMT5Config`` whose sizes come from the shapes of Wan-layout encoder weights."""
    (UMT5Config,) = _transformers("UMT5Config")

    try:
        vocab, dim = state["token_embedding.weight"].shape
        layers = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
        buckets, heads = state["blocks.0.pos_embedding.embedding.weight"].shape
        dim_attn = state["blocks.0.attn.q.weight"].shape[0]
        dim_ffn = state["blocks.0.ffn.fc1.weight"].shape[0]
    except (KeyError, ValueError) as exc:
        raise TextEncoderError(f"{source}: not a Wan umT5 encoder state dict (missing {exc})") from None
    return UMT5Config(vocab_size=vocab, d_model=dim, d_kv=dim_attn // heads, d_ff=dim_ffn, num_layers=layers,
                      num_heads=heads, relative_attention_num_buckets=buckets, relative_attention_max_distance=128,
                      feed_forward_proj="gated-gelu", dropout_rate=0.0, is_encoder_decoder=False)


class _ByteTokenizer:
    """Stand-in tokenizer for random weights (benchmarks): UTF-8 bytes + 3, then the end token 1, pad 0."""

    vocab_size = 259

    def __call__(self, texts: list[str], *, max_length: int, **_: Any) -> Any:
        ids = torch.zeros(len(texts), max_length, dtype=torch.long)
        for i, text in enumerate(texts):
            row = [*(b + 3 for b in text.encode()[:max_length - 1]), 1]
            ids[i, :len(row)] = torch.tensor(row)
        return _Tokens(ids, (ids > 0).long())


@dataclass
class _Tokens:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor


class UMT5TextEncoder:
    """Tokenizer + ``UMT5EncoderModel``: prompts -> Wan's text conditioning (see module docstring).

    ``offload``: keep the model on the CPU between encodings and move it to ``device`` only to encode
    (the 24 GB mode keeps it on the CPU for good: ``device=cpu``). Synchronous; :class:`PromptEncoder`
    calls it from one thread.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, text_len: int, device: torch.device,
                 dtype: torch.dtype, offload: bool = False, source: str = "") -> None:
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.text_len = text_len
        self.device, self.dtype, self.offload = device, dtype, offload and device.type != "cpu"
        self.source = source
        self.model.to("cpu" if self.offload else device, dtype)
        self.dim = int(getattr(model, "config").d_model)  # noqa: B009 - nn.Module's __getattr__ is typed Tensor | Module

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def from_folder(cls, path: str | Path, *, text_len: int, device: torch.device, dtype: torch.dtype,
                    offload: bool = False) -> UMT5TextEncoder:
        """Load a local folder (transformers layout or Wan's, see module docstring) or Wan's ``.pth`` file."""
        AutoTokenizer, UMT5EncoderModel = _transformers("AutoTokenizer", "UMT5EncoderModel")
        root = Path(path).expanduser()
        if not root.exists():
            raise TextEncoderError(f"{root}: text encoder folder not found (run `liveidol models pull umt5-xxl`, "
                                   "or copy the files there)")
        folder = root.parent if root.is_file() else root
        wan_file = root if root.is_file() else folder / WAN_T5_FILE
        tok_dir = folder / WAN_TOKENIZER_DIR if (folder / WAN_TOKENIZER_DIR).is_dir() else folder
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
        except (OSError, ValueError) as exc:
            raise TextEncoderError(f"{tok_dir}: no umT5 tokenizer here (tokenizer.json / spiece.model): {exc}") from None
        if wan_file.is_file():
            try:
                state = torch.load(str(wan_file), map_location="cpu", weights_only=True, mmap=True)
            except Exception as exc:  # pickle / zip errors of many kinds
                raise TextEncoderError(f"{wan_file}: not a loadable torch state dict: {exc}") from exc
            if not isinstance(state, dict):
                raise TextEncoderError(f"{wan_file}: expected a state dict, got {type(state).__name__}")
            config = _config_from_wan(state, str(wan_file))
            with torch.device("meta"):
                model = UMT5EncoderModel(config)
            try:  # the tier's one check: every missing, unexpected and mis-shaped key named in one line
                load_state_dict_into(model, wan_to_hf_keys(state), what="text encoder", source=str(wan_file),
                                     assign=True)
            except WeightsError as exc:
                raise TextEncoderError(str(exc)) from None
            model.encoder.embed_tokens = model.shared
        elif (folder / "config.json").is_file():
            try:
                model = UMT5EncoderModel.from_pretrained(str(folder), dtype=dtype)
            except (OSError, ValueError) as exc:
                raise TextEncoderError(f"{folder}: cannot load UMT5EncoderModel: {exc}") from None
        else:
            raise TextEncoderError(f"{folder}: neither {WAN_T5_FILE} nor a transformers config.json here")
        log.info("text encoder loaded source=%s layers=%d dim=%d", root, model.config.num_layers, model.config.d_model)
        return cls(model, tokenizer, text_len=text_len, device=device, dtype=dtype, offload=offload, source=str(root))

    @classmethod
    def random(cls, *, dim: int, text_len: int, device: torch.device, dtype: torch.dtype, seed: int = 0,
               offload: bool = False) -> UMT5TextEncoder:
        """Random weights (benchmarks, tests): umT5-XXL's sizes at ``dim`` 4096, a 2-layer model otherwise;
        a byte-level stand-in tokenizer."""
        UMT5Config, UMT5EncoderModel = _transformers("UMT5Config", "UMT5EncoderModel")
        sizes = dict(UMT5_XXL) if dim == UMT5_XXL["d_model"] else {
            "vocab_size": _ByteTokenizer.vocab_size, "d_model": dim, "d_kv": max(1, dim // 4), "d_ff": 2 * dim,
            "num_layers": 2, "num_heads": 4}
        sizes["vocab_size"] = max(sizes["vocab_size"], _ByteTokenizer.vocab_size)
        config = UMT5Config(**sizes, feed_forward_proj="gated-gelu", dropout_rate=0.0, is_encoder_decoder=False)
        torch.manual_seed(seed)
        home = device if not offload else torch.device("cpu")
        # drawing 5.7 billion random numbers on a CPU takes minutes: on a GPU machine they are drawn there and
        # the model then moves to its home (the 24 GB mode's CPU); real weights are read from the file instead
        init_device = torch.device("cuda") if home.type == "cpu" and torch.cuda.is_available() else home
        default = torch.get_default_dtype()
        torch.set_default_dtype(dtype)  # made in its dtype: umT5-XXL is 11 GB in bf16, 23 GB in float32
        try:
            with torch.device(init_device):
                model = UMT5EncoderModel(config)
        finally:
            torch.set_default_dtype(default)
        if init_device != home:
            model = model.to(home)
            torch.cuda.empty_cache()
        return cls(model, _ByteTokenizer(), text_len=text_len, device=device, dtype=dtype, offload=offload,
                   source="random")

    # -- encoding --------------------------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, text_len, dim)`` on the CPU (float32 rows of each prompt, zeros beyond) and the lengths ``(B,)``."""
        tokens = self.tokenizer([clean_prompt(p) for p in prompts], padding="max_length", truncation=True,
                                max_length=self.text_len, add_special_tokens=True, return_tensors="pt")
        ids, mask = tokens.input_ids, tokens.attention_mask
        lengths = mask.gt(0).sum(dim=1).long()
        if self.offload:
            self.model.to(self.device)
        try:
            hidden = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).last_hidden_state
        finally:
            if self.offload:
                self.model.to("cpu")
        out = hidden.float().cpu()
        keep = torch.arange(out.shape[1])[None, :] < lengths[:, None]  # (B, L)
        return out * keep[..., None], lengths

    def embed(self, prompt: str) -> torch.Tensor:
        """One prompt's rows ``(seq_len, dim)`` float32 on the CPU (the DiT pads them with zeros)."""
        out, lengths = self.encode([prompt])
        return out[0, : int(lengths[0])].clone()


class PromptEncoder:
    """An LRU of prompt embeddings in front of a :class:`UMT5TextEncoder`, encoding on its own thread.

    ``lookup(prompt)`` never blocks: the prompt's embedding when cached, else the most recent ready one
    (and the prompt is queued; the newest ``max_pending`` requests are kept, older ones dropped).
    ``on_ready(prompt)`` is called from the encoding thread after each new embedding.
    """

    def __init__(self, encoder: UMT5TextEncoder, *, capacity: int = 64, max_pending: int = 4,
                 on_ready: Any = None) -> None:
        if capacity < 1:
            raise ValueError(f"PromptEncoder: capacity must be >= 1, got {capacity}")
        self.encoder = encoder
        self.capacity, self.max_pending = capacity, max_pending
        self.on_ready = on_ready
        self._cache: collections.OrderedDict[str, torch.Tensor] = collections.OrderedDict()
        self._pending: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._later: collections.deque[str] = collections.deque(maxlen=capacity)  # prefetch, after _pending
        self._last: torch.Tensor | None = None
        self._lock = threading.Condition()
        self._encoding = threading.Lock()  # one encoding at a time (encode_now and the thread share the model)
        self._thread: threading.Thread | None = None
        self._closed = False
        self._busy = False  # the thread is encoding (guarded by _lock)
        self.encoded = 0  # prompts encoded so far
        self.failures: list[str] = []  # one line per prompt that failed to encode (kept bounded)

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> PromptEncoder:
        if self._thread is None:
            self._closed = False
            self._thread = threading.Thread(target=self._run, name="liveidol-text-encoder", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._pending.clear()
            self._later.clear()
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> PromptEncoder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- API -------------------------------------------------------------------------------------
    def encode_now(self, prompt: str) -> torch.Tensor:
        """Encode ``prompt`` on the calling thread (start-up) and cache it."""
        with self._lock:
            hit = self._get(prompt)
        if hit is not None:
            return hit
        with self._encoding:
            emb = self.encoder.embed(prompt)
        with self._lock:
            self._put(prompt, emb)
        return emb

    def lookup(self, prompt: str) -> tuple[torch.Tensor | None, bool]:
        """(embedding, True) when ``prompt`` is ready; else queue it and return (last ready embedding, False)."""
        with self._lock:
            hit = self._get(prompt)
            if hit is not None:
                return hit, True
            if prompt not in self._pending:
                self._pending[prompt] = None
                while len(self._pending) > self.max_pending:
                    dropped, _ = self._pending.popitem(last=False)
                    log.debug("prompt request dropped (newer ones waiting) prompt_chars=%d", len(dropped))
                self._lock.notify_all()
            else:
                self._pending.move_to_end(prompt)
            return self._last, False

    def prefetch(self, prompts: list[str]) -> None:
        """Encode ``prompts`` in the background when nothing else waits (e.g. every action's prompt, so a
        command finds its embedding ready); never evicts a requested prompt's place in the queue."""
        with self._lock:
            fresh = [p for p in prompts if p not in self._cache and p not in self._later and p not in self._pending]
            self._later.extend(fresh)
            if fresh:
                self._lock.notify_all()

    def ready(self, prompt: str) -> bool:
        with self._lock:
            return prompt in self._cache

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing is pending (tests, start-up); False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: not self._pending and not self._later and not self._busy, timeout)

    # -- internals -------------------------------------------------------------------------------
    def _get(self, prompt: str) -> torch.Tensor | None:
        emb = self._cache.get(prompt)
        if emb is not None:
            self._cache.move_to_end(prompt)
        return emb

    def _put(self, prompt: str, emb: torch.Tensor) -> None:
        self._cache[prompt] = emb
        self._cache.move_to_end(prompt)
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        self._last = emb
        self.encoded += 1

    def _run(self) -> None:
        while True:
            with self._lock:
                self._lock.wait_for(lambda: self._closed or bool(self._pending) or bool(self._later))
                if self._closed:
                    return
                if self._pending:
                    prompt = next(reversed(self._pending))  # the newest request first
                    if prompt in self._cache:  # encoded meanwhile by encode_now
                        del self._pending[prompt]
                        self._lock.notify_all()
                        continue
                else:
                    prompt = self._later.popleft()
                    if prompt in self._cache:
                        self._lock.notify_all()
                        continue
                self._busy = True
            try:
                with self._encoding:
                    emb = self.encoder.embed(prompt)
            except Exception as exc:  # a bad prompt must not end the stream: log, drop it, go on
                log.error("text encoding failed prompt_chars=%d error=%s", len(prompt), exc)
                with self._lock:
                    self._pending.pop(prompt, None)
                    self.failures = [*self.failures[-15:], f"{type(exc).__name__}: {exc}"]
                    self._busy = False
                    self._lock.notify_all()
                continue
            with self._lock:
                self._pending.pop(prompt, None)
                self._put(prompt, emb)
                self._busy = False
                self._lock.notify_all()
            if self.on_ready is not None:
                self.on_ready(prompt)
