"""The umT5 text path against Wan2.1's own T5 pipeline (tests/fixtures/wan_text, made by its make_fixture.py)."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from backend.model.wan.text import WAN_T5_FILE, PromptEncoder, TextEncoderError, UMT5TextEncoder, clean_prompt

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "wan_text"
META = json.loads((FIXTURE / "fixture.json").read_text())
CPU = torch.device("cpu")


def wan_folder(tmp: Path, state: dict[str, torch.Tensor] | None = None) -> Path:
    """A folder in Wan-AI/Wan2.1-T2V-1.3B's layout: the encoder .pth and google/umt5-xxl/ (tokenizer)."""
    folder = tmp / "wan"
    (folder / "google").mkdir(parents=True)
    shutil.copytree(FIXTURE / "tokenizer", folder / "google" / "umt5-xxl")
    torch.save(state if state is not None else load_file(FIXTURE / "wan_t5_tiny.safetensors"), folder / WAN_T5_FILE)
    return folder


def test_matches_the_wan_reference_pipeline(tmp_path: Path) -> None:
    ref = load_file(FIXTURE / "reference_io.safetensors")
    enc = UMT5TextEncoder.from_folder(wan_folder(tmp_path), text_len=META["text_len"], device=CPU, dtype=torch.float32)
    out, lengths = enc.encode(META["prompts"])
    assert out.shape == ref["context"].shape == (len(META["prompts"]), META["text_len"], META["sizes"]["dim"])
    assert torch.equal(lengths, ref["lengths"])
    assert int(lengths.max()) == META["text_len"]  # one prompt is truncated at text_len
    torch.testing.assert_close(out, ref["context"], atol=2e-5, rtol=1e-4)
    for row, n in zip(out, lengths):
        assert torch.count_nonzero(row[n:]) == 0 and torch.count_nonzero(row[:n].abs().sum(-1)) == n
    one = enc.embed(META["prompts"][1])  # the generator's input: the rows of the sequence only
    torch.testing.assert_close(one, ref["context"][1, : int(ref["lengths"][1])], atol=2e-5, rtol=1e-4)


def test_transformers_layout_gives_the_same(tmp_path: Path) -> None:
    wan = UMT5TextEncoder.from_folder(wan_folder(tmp_path), text_len=META["text_len"], device=CPU, dtype=torch.float32)
    hf = tmp_path / "hf"
    wan.model.save_pretrained(hf)
    wan.tokenizer.save_pretrained(hf)
    again = UMT5TextEncoder.from_folder(hf, text_len=META["text_len"], device=CPU, dtype=torch.float32)
    torch.testing.assert_close(again.encode(META["prompts"])[0], wan.encode(META["prompts"])[0])


def test_bad_weights_name_the_key(tmp_path: Path) -> None:
    state = load_file(FIXTURE / "wan_t5_tiny.safetensors")
    del state["blocks.1.ffn.fc2.weight"]
    with pytest.raises(TextEncoderError, match=r"missing: encoder\.block\.1\.layer\.1\.DenseReluDense\.wo\.weight"):
        UMT5TextEncoder.from_folder(wan_folder(tmp_path / "a", state), text_len=8, device=CPU, dtype=torch.float32)
    state = load_file(FIXTURE / "wan_t5_tiny.safetensors")
    state["blocks.0.attn.k.weight"] = torch.zeros(16, 32)
    with pytest.raises(TextEncoderError, match=r"SelfAttention\.k\.weight \(16, 32\) vs \(32, 32\)"):
        UMT5TextEncoder.from_folder(wan_folder(tmp_path / "b", state), text_len=8, device=CPU, dtype=torch.float32)
    state = load_file(FIXTURE / "wan_t5_tiny.safetensors") | {"blocks.0.extra": torch.zeros(1)}
    with pytest.raises(TextEncoderError, match=r"text encoder: .* 1 unexpected: blocks\.0\.extra"):
        UMT5TextEncoder.from_folder(wan_folder(tmp_path / "c", state), text_len=8, device=CPU, dtype=torch.float32)
    with pytest.raises(TextEncoderError, match=r"not found .*liveidol models pull"):
        UMT5TextEncoder.from_folder(tmp_path / "nowhere", text_len=8, device=CPU, dtype=torch.float32)


def test_clean_prompt_is_wans_whitespace_cleaning() -> None:
    assert clean_prompt("  the idol \n smiles &amp;amp; nods ") == "the idol smiles & nods"


class _Gated(UMT5TextEncoder):
    """The real tiny encoder, made to wait at a gate before encoding (so the test sees the switch in flight)."""

    gate: threading.Event

    def embed(self, prompt: str) -> torch.Tensor:
        assert self.gate.wait(30)
        return super().embed(prompt)


def test_prompt_switch_never_blocks_and_lru_is_bounded(tmp_path: Path) -> None:
    base = UMT5TextEncoder.from_folder(wan_folder(tmp_path), text_len=META["text_len"], device=CPU, dtype=torch.float32)
    enc = _Gated(base.model, base.tokenizer, text_len=META["text_len"], device=CPU, dtype=torch.float32)
    enc.gate = threading.Event()
    enc.gate.set()
    with PromptEncoder(enc, capacity=2) as prompts:
        old = prompts.encode_now("a young woman waves")
        enc.gate.clear()
        emb, exact = prompts.lookup("she bows")  # answered at once with the old prompt's embedding
        assert not exact and emb is old and prompts.pending == 1
        enc.gate.set()
        assert prompts.wait_idle(30)
        new, exact = prompts.lookup("she bows")
        assert exact and new.shape[1] == META["sizes"]["dim"] and not torch.equal(new[:3], old[:3])
        prompts.encode_now("she nods")
        assert prompts.ready("she nods") and prompts.ready("she bows") and not prompts.ready("a young woman waves")
        assert prompts.encoded == 3


def test_random_weights_have_the_requested_width() -> None:
    enc = UMT5TextEncoder.random(dim=24, text_len=10, device=CPU, dtype=torch.float32)
    out, lengths = enc.encode(["hello", "a much longer prompt than ten bytes"])
    assert out.shape == (2, 10, 24) and lengths.tolist() == [6, 10]
