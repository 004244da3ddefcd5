"""Reading public weight files: one-line errors that name the file and the keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from backend.model.wan.weights import (
    WeightsError,
    check_state_dict,
    load_state_dict_into,
    read_state_dict,
    state_dict_mismatch,
)


def test_reads_pth_and_safetensors_and_strips_a_prefix(tmp_path: Path) -> None:
    state = {"model.a.weight": torch.ones(2, 3), "model.b": torch.zeros(1)}
    torch.save(state, tmp_path / "w.pth")
    save_file(state, str(tmp_path / "w.safetensors"))
    for name in ("w.pth", "w.safetensors"):
        got = read_state_dict(tmp_path / name, what="thing", strip_prefix="model.")
        assert sorted(got) == ["a.weight", "b"] and torch.equal(got["a.weight"], torch.ones(2, 3))


@pytest.mark.parametrize(("name", "content", "pattern"), [
    ("absent.pth", None, r"thing: no weights file at .*absent\.pth"),
    ("w.onnx", b"x", r"unknown suffix '\.onnx'"),
    ("broken.pth", b"not a zip", r"broken\.pth is not a loadable torch file"),
    ("broken.safetensors", b"\x00\x01", r"broken\.safetensors is not a readable safetensors file"),
])
def test_unreadable_files_are_named(tmp_path: Path, name: str, content: bytes | None, pattern: str) -> None:
    if content is not None:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(WeightsError, match=pattern) as info:
        read_state_dict(tmp_path / name, what="thing")
    assert "\n" not in str(info.value)


def test_a_nested_checkpoint_is_not_a_state_dict(tmp_path: Path) -> None:
    torch.save({"generator": {"w": torch.ones(1)}, "step": 3}, tmp_path / "nested.pt")
    with pytest.raises(WeightsError, match=r"does not hold a flat state dict.*generator, step"):
        read_state_dict(tmp_path / "nested.pt", what="thing")


def test_mismatch_lists_every_kind_and_caps_long_lists() -> None:
    expected = {f"k{i}": (2,) for i in range(10)} | {"m": (3, 3)}
    state = {"m": torch.zeros(3, 4), "extra": torch.zeros(1)}
    msg = state_dict_mismatch(expected, state)
    assert msg.startswith("10 missing: k0, k1, k2, k3, k4, k5 (+4 more)")
    assert "1 unexpected: extra" in msg and "1 mis-shaped (file vs model): m (3, 4) vs (3, 3)" in msg
    assert state_dict_mismatch({"m": (3, 4)}, {"m": torch.zeros(3, 4)}) == ""


def test_load_checks_then_loads_strictly() -> None:
    module = nn.Linear(3, 2)
    with pytest.raises(WeightsError, match=r"lin: f\.pth does not fit the model: 1 missing: bias \(hint\)"):
        check_state_dict(module, {"weight": torch.zeros(2, 3)}, what="lin", source="f.pth", hint="hint")
    load_state_dict_into(module, {"weight": torch.ones(2, 3), "bias": torch.full((2,), 2.0)}, what="lin", source="f")
    assert torch.equal(module(torch.zeros(1, 3)), torch.full((1, 2), 2.0))
    with torch.device("meta"):
        meta = nn.Linear(3, 2)
    load_state_dict_into(meta, {"weight": torch.ones(2, 3), "bias": torch.ones(2)}, what="lin", source="f", assign=True)
    assert meta.weight.device.type == "cpu"
