"""The DiT training sequence sees exactly what the streaming KV cache shows at serve time."""

from __future__ import annotations

import dataclasses
import math
import shutil

import numpy as np
import pytest
import torch

from backend.actions import ACTION_INDEX, ACTIONS, EMOTION_INDEX
from backend.model.attention import FlexAttention
from backend.model.dit import CausalDiT
from backend.model.generator import action_progress, control_vector, emotion_progress
from backend.model.kv_cache import CrossAttentionCache, KVCache
from backend.training.train import (
    block_causal_mask,
    controls_from_labels,
    emotion_progress_from_labels,
    progress_from_labels,
)
from tests.model.model_kit import micro_config, random_weights


def _dit(cfg) -> CausalDiT:
    dit = CausalDiT(cfg.dit)
    w = random_weights(cfg, seed=3, std=0.15)
    dit.load_state_dict({k[4:]: v for k, v in w.items() if k.startswith("dit.")})
    return dit.eval()


def test_mask_structure() -> None:
    m = block_causal_mask(n=6, chunk=2, window=4, sink=True)
    assert m.shape == (13, 13)
    assert m[0].tolist() == [True] + [False] * 12  # the reference sees only itself
    # noisy latent 5 (chunk 2 = latents 5,6): sink, clean 3..4 (window 4 ends at latent 6), noisy 5..6
    row = m[6 + 5]
    assert [i for i in range(13) if row[i]] == [0, 3, 4, 11, 12]
    # clean latent 2 (chunk 0): sink, clean 1..2
    assert [i for i in range(13) if m[2][i]] == [0, 1, 2]
    assert not block_causal_mask(2, 1, 4, sink=False)[1, 0]


@pytest.mark.parametrize("chunk", [1, 2])
def test_training_forward_equals_cached_inference(chunk: int) -> None:
    """Flow of every noisy chunk in ONE masked training forward == the cache path chunk by chunk, with
    per-chunk conditions (a command switch), per-frame controls and a rolling window that evicts."""
    cfg = micro_config(window_frames=3, chunk_frames=chunk)
    dit = _dit(cfg)
    s = cfg.dit
    n, (c, h, w) = 6, (s.in_dim, 4, 8)
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(1, 1, c, h, w, generator=g, dtype=torch.float32)
    clean = torch.randn(1, n, c, h, w, generator=g, dtype=torch.float32)
    noisy = torch.randn(1, n, c, h, w, generator=g, dtype=torch.float32)
    t_noisy = (torch.rand(1, n, generator=g, dtype=torch.float32) * 1000).repeat_interleave(1, 1)
    n_chunks = n // chunk
    t_noisy = t_noisy[:, ::chunk].repeat_interleave(chunk, 1)
    acts = torch.tensor([[ACTION_INDEX["wave"]] * 2 + [ACTION_INDEX["heart"]] * 4])  # switch on a chunk boundary
    emos = torch.tensor([[1] * n])
    ctrl = torch.rand(1, n, s.num_controls, generator=g, dtype=torch.float32)
    idle = torch.zeros(1, 1, dtype=torch.long)

    # serve-time path: the sink, then per chunk a noisy pass and the clean cache pass
    frame_tokens = dit.frame_tokens(h, w)
    kv = KVCache(num_layers=s.num_layers, heads=s.num_heads, head_dim=dit.head_dim, frame_tokens=frame_tokens,
                 sink_frames=1, window_frames=cfg.window_frames, dtype=torch.float32, device="cpu")
    cross = CrossAttentionCache(s.num_layers)
    with torch.no_grad():
        dit(ref.permute(0, 2, 1, 3, 4), torch.zeros(1, 1), dit.build_context(idle[:, 0], idle[:, 0]), start_frame=0,
            cache=kv, cross_cache=cross, controls=torch.zeros(1, 1, s.num_controls, dtype=torch.float32))
        cached = []
        for k in range(n_chunks):
            sl = slice(k * chunk, (k + 1) * chunk)
            cross.reset()
            ctx = dit.build_context(acts[:, k * chunk], emos[:, k * chunk])
            flow = dit(noisy[:, sl].permute(0, 2, 1, 3, 4), t_noisy[:, sl], ctx, start_frame=1 + k * chunk,
                       cache=kv, cross_cache=cross, controls=ctrl[:, sl])
            cached.append(flow)
            dit(clean[:, sl].permute(0, 2, 1, 3, 4), torch.zeros(1, chunk), ctx, start_frame=1 + k * chunk,
                cache=kv, cross_cache=cross, controls=ctrl[:, sl])
        cached_flow = torch.cat(cached, dim=2)

        # training path: one masked forward over [reference, clean, noisy]
        x = torch.cat([ref, clean, noisy], 1).permute(0, 2, 1, 3, 4)
        t = torch.cat([torch.zeros(1, 1 + n, dtype=torch.float32), t_noisy], 1)
        all_acts = torch.cat([idle, acts, acts], 1)
        all_emos = torch.cat([idle, emos, emos], 1)
        ctx = dit.build_context(all_acts.flatten(), all_emos.flatten()).unflatten(0, (1, 1 + 2 * n))
        controls = torch.cat([torch.zeros_like(ctrl[:, :1]), ctrl, ctrl], 1)
        pos = torch.arange(n) + 1
        frame_pos = torch.cat([torch.zeros(1, dtype=torch.long), pos, pos])
        mask = block_causal_mask(n, chunk, cfg.window_frames, sink=True)
        train_flow = dit.forward_train(x, t, ctx, controls=controls, frame_pos=frame_pos, attn_mask=mask)
        # the block-sparse kernel training uses on CUDA (eager here: same math, masked tiles skipped)
        flex_flow = dit.forward_train(x, t, ctx, controls=controls, frame_pos=frame_pos, attn_mask=mask,
                                      flex=FlexAttention(compile=False))
    torch.testing.assert_close(train_flow[:, :, 1 + n:], cached_flow, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(flex_flow[:, :, 1 + n:], cached_flow, atol=1e-4, rtol=1e-4)
    # and the mask matters: full attention gives something else
    full = dit.forward_train(x, t, ctx, controls=controls, frame_pos=frame_pos,
                             attn_mask=torch.ones_like(mask)).detach()
    assert (full[:, :, 1 + n:] - cached_flow).abs().max() > 1e-3


def test_batched_controls_and_progress_match_the_generator() -> None:
    cfg = micro_config()
    tf = cfg.autoencoder.temporal_factor
    names = ["wave"] * 5 + ["idle"] * 7 + ["talk"] * 30 + ["heart"] * 2
    acts = torch.tensor([[ACTION_INDEX[a] for a in names]])
    prog = progress_from_labels(acts, tf)
    start = 0
    for j, name in enumerate(names):
        if j and name != names[j - 1]:
            start = j
        assert prog[0, j].item() == pytest.approx(action_progress(name, j - start, tf), abs=1e-6)
    mouth = torch.rand(1, len(names) * tf) * 1.4 - 0.2
    emos = torch.tensor([[EMOTION_INDEX["sad"]] * 9 + [EMOTION_INDEX["happy"]] * 20 + [EMOTION_INDEX["sad"]] * 15])
    emo_prog = emotion_progress_from_labels(emos, tf)
    changed = 0
    for j in range(len(names)):
        if j and emos[0, j] != emos[0, j - 1]:
            changed = j
        # before the clip's first change the emotion was held all along (the world shows it fully)
        assert emo_prog[0, j].item() == pytest.approx(emotion_progress(j - changed if j >= 9 else 10**6, tf), abs=1e-6)
    assert emo_prog[0, 9].item() == 0.0 and emo_prog[0, 29].item() == 0.0 and emo_prog[0, 28].item() == 1.0
    batched = controls_from_labels(mouth, prog, cfg, emo_prog)
    for j in range(len(names)):
        one = control_vector(mouth[0, j * tf:(j + 1) * tf].numpy(), float(prog[0, j]), cfg, float(emo_prog[0, j]))
        torch.testing.assert_close(batched[0, j], one)
    assert (controls_from_labels(mouth, prog, cfg)[..., tf + 1] == 1).all()
    assert {a.name for a in ACTIONS} >= set(names)
    assert np.isfinite(batched.numpy()).all()
    assert dataclasses.is_dataclass(cfg)


def test_a_run_from_before_the_command_modulation_resumes_and_anneals(tmp_path, caplog) -> None:
    """A run whose DiT weights predate ``cond_modulation`` resumes (the new module starts at zero and
    learns), the step count goes on, and ``anneal`` lowers the learning rate to 10% by the deadline."""
    import json
    import logging
    import time

    from backend.config import Config
    from backend.model.autoencoder import VideoAutoencoder
    from backend.training.train import Run, train_dit_stage

    cfg = Config(model=micro_config())
    run = Run(tmp_path / "run")
    run.save("autoencoder.pt", {"ae_state": VideoAutoencoder(cfg.model.autoencoder).state_dict()})
    old = {k[4:]: v for k, v in random_weights(cfg.model, seed=5, std=0.05).items()
           if k.startswith("dit.") and not k.startswith("dit.cond_modulation.")}
    run.save_weights("dit_model.safetensors", old)
    run.save_weights("dit_ema.safetensors", old)
    (run.path / "dit_state.json").write_text(json.dumps({"step": 10, "sf_step": 0}))
    lrs: list[float] = []
    orig = torch.optim.AdamW.step

    def spy(self, *a, **k):  # the learning rate each step trains with
        lrs.append(self.param_groups[0]["lr"])
        return orig(self, *a, **k)

    torch.optim.AdamW.step = spy
    try:
        with caplog.at_level(logging.INFO, logger="backend.training.train"):
            train_dit_stage(cfg, run, time.monotonic() + 8.0, torch.device("cpu"), selfforcing=False, anneal=True)
    finally:
        torch.optim.AdamW.step = orig
    state = json.loads((run.path / "dit_state.json").read_text())
    assert state["step"] == 10 + len(lrs) and len(lrs) >= 3, len(lrs)
    saved = run.load_weights("dit_model.safetensors")
    assert saved is not None and saved["cond_modulation.weight"].abs().sum() > 0  # it learned from zero
    planned = lrs[0] / min(1.0, 1 / 200)  # the first step: warm-up 1/200 and anneal ~1.0
    assert lrs[-1] < 0.5 * planned * min(1.0, len(lrs) / 200)  # annealed well below the planned schedule
    assert any("dit saved" in r.getMessage() for r in caplog.records)


def _exported(tmp_path):
    """A micro model with random weights, exported as a checkpoint at dit step 123 (sf 45): (cfg, dit, ae, path)."""
    from backend.config import Config
    from backend.model.autoencoder import VideoAutoencoder
    from backend.model.checkpoint import save_checkpoint

    cfg = Config(model=micro_config())
    w = random_weights(cfg.model, seed=7, std=0.05)
    dit, ae = CausalDiT(cfg.model.dit), VideoAutoencoder(cfg.model.autoencoder)
    dit.load_state_dict({k[4:]: v for k, v in w.items() if k.startswith("dit.")})
    ae.load_state_dict({k[12:]: v for k, v in w.items() if k.startswith("autoencoder.")})
    path = save_checkpoint(tmp_path / "m.safetensors", dit, ae, cfg.model, dtype=torch.float32,
                           training={"dit_step": 123, "sf_step": 45})
    return cfg, dit, ae, path


def test_import_seeds_a_run_from_an_exported_checkpoint_and_training_continues(tmp_path) -> None:
    """export -> import round trip: the new run holds the same autoencoder and DiT, resumes at the exported
    step count; importing over a run, or resuming the autoencoder stage of an imported run, is refused."""
    import json
    import time

    from backend.model.checkpoint import load_weights
    from backend.training.train import Run, import_stage, train_autoencoder_stage, train_dit_stage

    cfg, dit, ae, path = _exported(tmp_path)
    assert load_weights(str(path)).config["training"] == {"dit_step": 123, "sf_step": 45}
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, checkpoint=str(path)))
    run = Run(tmp_path / "run")
    import_stage(cfg, run)
    assert json.loads((run.path / "dit_state.json").read_text()) == {"step": 123, "sf_step": 45}
    got = run.load_weights("dit_ema.safetensors")
    assert torch.allclose(got["blocks.0.self_attn.q.weight"].float(), dit.state_dict()["blocks.0.self_attn.q.weight"],
                          atol=1e-3)  # runs keep fp16
    ae_state = run.load("autoencoder.pt")["ae_state"]
    assert all(torch.equal(ae_state[k], v) for k, v in ae.state_dict().items())
    train_dit_stage(cfg, run, time.monotonic() + 4.0, torch.device("cpu"), selfforcing=False)
    assert json.loads((run.path / "dit_state.json").read_text())["step"] > 123
    with pytest.raises(SystemExit, match="already holds"):
        import_stage(cfg, run)
    with pytest.raises(SystemExit, match="imported from"):
        train_autoencoder_stage(cfg, run, time.monotonic() + 1.0, torch.device("cpu"))


def test_a_dit_only_export_names_its_autoencoder_and_imports_with_it(tmp_path) -> None:
    """export --dit-only writes the DiT alone with the autoencoder's fingerprint; import takes the autoencoder back
    from --autoencoder (a checkpoint holding that one) and the run is the full export's run again; an autoencoder
    with another fingerprint (the shipped one, by default, or one changed in a single weight) is refused, naming it."""
    import json
    import re

    from backend.model.autoencoder import VideoAutoencoder
    from backend.model.checkpoint import BUILTIN_PATH, autoencoder_fingerprint, load_weights, save_checkpoint
    from backend.training.train import Run, export_stage, import_stage, run_stage

    cfg, dit, ae, path = _exported(tmp_path)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, checkpoint=str(path)))
    import_stage(cfg, Run(tmp_path / "full"))
    slim = tmp_path / "dit_only.safetensors"
    export_stage(cfg, Run(tmp_path / "full"), slim, dit_only=True)
    w = load_weights(str(slim))
    assert w.autoencoder is None and slim.stat().st_size < path.stat().st_size
    sha = w.config["training"]["autoencoder_sha256"]
    assert sha == autoencoder_fingerprint(load_weights(str(path)).autoencoder)
    with pytest.raises(SystemExit, match="--dit-only is for the export stage"):
        run_stage(cfg, "dit", tmp_path / "x", minutes=0.01, dit_only=True)
    with pytest.raises(SystemExit, match="--autoencoder is for the import stage"):
        run_stage(cfg, "export", tmp_path / "x", minutes=0.01, autoencoder=str(path))

    from_slim = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, checkpoint=str(slim)))
    with pytest.raises(SystemExit, match=re.escape(f"trained with autoencoder {sha[:12]}; {BUILTIN_PATH}")):
        import_stage(from_slim, Run(tmp_path / "default"))  # the shipped autoencoder is another one
    other = VideoAutoencoder(cfg.model.autoencoder)
    other.load_state_dict(ae.state_dict())
    with torch.no_grad():
        next(other.parameters()).view(-1)[0] += 0.5
    changed = save_checkpoint(tmp_path / "other.safetensors", dit, other, cfg.model, dtype=torch.float32)
    with pytest.raises(SystemExit, match=r"holds autoencoder [0-9a-f]{12}: give the checkpoint it was trained with"):
        import_stage(from_slim, Run(tmp_path / "changed"), autoencoder=str(changed))

    run = Run(tmp_path / "slim")
    import_stage(from_slim, run, autoencoder=str(path))
    assert json.loads((run.path / "dit_state.json").read_text()) == {"step": 123, "sf_step": 45}
    ae_state = run.load("autoencoder.pt")["ae_state"]
    assert all(torch.equal(ae_state[k], v) for k, v in ae.state_dict().items())
    full = Run(tmp_path / "full").load_weights("dit_ema.safetensors")
    assert all(torch.equal(v, full[k]) for k, v in run.load_weights("dit_ema.safetensors").items())


def test_import_grow_deepens_the_dit_a_run_trains_and_exports(tmp_path) -> None:
    """import --grow: a 2-block checkpoint seeds a 4-block run computing what the checkpoint does; the dit stage
    trains it at that depth and export writes num_layers 4 (the generator serves it with the same config); without
    --grow, with --teacher, or to fewer blocks the import is refused with the reason."""
    import json
    import time

    from backend.model.checkpoint import load_weights
    from backend.model.generator import Generator
    from backend.training.train import Run, export_stage, import_stage, run_stage, train_dit_stage

    cfg, dit, _, path = _exported(tmp_path)
    deep_cfg = dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, checkpoint=str(path), dit=dataclasses.replace(cfg.model.dit, num_layers=4)))
    with pytest.raises(Exception, match="num_layers: checkpoint 2, config 4"):
        import_stage(deep_cfg, Run(tmp_path / "plain"))  # growing is asked for, never implied
    with pytest.raises(SystemExit, match="not both"):
        import_stage(deep_cfg, Run(tmp_path / "t"), teacher=str(path), grow=True)
    with pytest.raises(SystemExit, match="--grow is for the import stage"):
        run_stage(deep_cfg, "dit", tmp_path / "t2", minutes=0.01, grow=True)
    shallow = dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, checkpoint=str(path), dit=dataclasses.replace(cfg.model.dit, num_layers=1)))
    with pytest.raises(SystemExit, match="cannot drop blocks"):
        import_stage(shallow, Run(tmp_path / "s"), grow=True)

    run = Run(tmp_path / "run")
    import_stage(deep_cfg, run, grow=True)
    assert json.loads((run.path / "dit_state.json").read_text()) == {"step": 123, "sf_step": 45}
    deep = CausalDiT(deep_cfg.model.dit).eval()
    deep.load_state_dict(run.load_weights("dit_ema.safetensors"))
    x, t = torch.randn(1, 16, 2, 4, 8), torch.tensor([[900.0, 400.0]])
    ctx = dit.build_context(torch.tensor([2]), torch.tensor([1]))
    with torch.no_grad():
        torch.testing.assert_close(deep(x, t, ctx), dit.eval()(x, t, ctx), atol=2e-3, rtol=2e-3)  # runs keep fp16
    train_dit_stage(deep_cfg, run, time.monotonic() + 4.0, torch.device("cpu"), selfforcing=False)
    assert json.loads((run.path / "dit_state.json").read_text())["step"] > 123
    out = tmp_path / "deep.safetensors"
    export_stage(deep_cfg, run, out)
    assert load_weights(str(out)).config["dit"]["num_layers"] == 4
    serve = dataclasses.replace(deep_cfg.model, checkpoint=str(out))
    assert len(Generator(serve).dit.blocks) == 4


@pytest.mark.slow
def test_compiled_blocks_train_like_eager() -> None:
    """``liveidol train dit --compile`` compiles each block in place (state-dict keys unchanged): the
    training forward and its gradients equal the eager ones."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("torch.compile on the CPU needs a C compiler")
    cfg = micro_config()
    eager, compiled = _dit(cfg).train(), _dit(cfg).train()
    for block in compiled.blocks:
        block.compile()
    s, n = cfg.dit, 4
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, s.in_dim, 1 + 2 * n, 4, 8, generator=g)
    t = torch.rand(2, 1 + 2 * n, generator=g) * 1000
    acts = torch.randint(len(ACTIONS), (2 * (1 + 2 * n),), generator=g)
    ctx = eager.build_context(acts, torch.zeros_like(acts)).unflatten(0, (2, 1 + 2 * n))
    ctrl = torch.rand(2, 1 + 2 * n, s.num_controls, generator=g)
    pos = torch.cat([torch.zeros(1, dtype=torch.long), torch.arange(n) + 1, torch.arange(n) + 1])
    mask = block_causal_mask(n, 2, cfg.window_frames, sink=True)
    outs, grads = [], []
    for dit in (eager, compiled):
        out = dit.forward_train(x, t, ctx.detach(), controls=ctrl, frame_pos=pos, attn_mask=mask)
        out.square().mean().backward()
        outs.append(out.detach())
        grads.append({k: p.grad for k, p in dit.named_parameters() if p.grad is not None})
    assert list(compiled.state_dict()) == list(eager.state_dict())
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-4)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], atol=1e-5, rtol=1e-3, msg=k)


def test_latent_pool_counts_an_emotion_switch_as_a_new_command() -> None:
    """The loss weighs up the first second after a command; "look angry" alone (the action unchanged) is a command
    too, so the pool's ``since`` restarts on an emotion switch as on an action switch. Real clips, micro sizes."""
    from backend.config import Config
    from backend.model.autoencoder import VideoAutoencoder
    from backend.training.train import LatentPool

    cfg = Config(model=micro_config())
    ae = VideoAutoencoder(cfg.model.autoencoder).eval()
    pool = LatentPool(cfg, ae, 24, seed=5, device=torch.device("cpu"))
    acts, emos, since = pool.actions, pool.emotions, pool.since
    emotion_only = (acts[:, 1:] == acts[:, :-1]) & (emos[:, 1:] != emos[:, :-1])
    assert emotion_only.any()  # the plan has emotion-only switches to test
    assert (since[:, 1:][emotion_only] == 0).all()
    same = (acts[:, 1:] == acts[:, :-1]) & (emos[:, 1:] == emos[:, :-1])
    assert (since[:, 1:][same] == since[:, :-1][same] + 1).all()
    assert (since[:, 0] == 0).all()
    # the extra emotion weight starts at a mid-clip emotion change only, never at the clip start
    from backend.training.train import ACTION_START_LATENTS, EMOTION_SWITCH_WEIGHT, loss_weights

    since_emo = pool.since_emotion
    emo_change = emos[:, 1:] != emos[:, :-1]
    assert (since_emo[:, 1:][emo_change] == 0).all()
    first_change = torch.where(emo_change.any(1), emo_change.float().argmax(1) + 1, emos.shape[1])
    before = torch.arange(emos.shape[1])[None] < first_change[:, None]
    assert (since_emo[before] == emos.shape[1]).all()
    # clips showing a hard action (the bow) or holding a hard emotion are drawn that many times as often as the
    # others, the largest weight that applies
    from backend.training.train import HARD_ACTIONS, HARD_EMOTIONS

    bow = (acts == ACTION_INDEX["bow"]).any(1)
    assert bow.any() and (~bow).any()
    expect_w = torch.where(bow, HARD_ACTIONS["bow"], 1.0)
    for name, w in HARD_EMOTIONS.items():
        expect_w = torch.where((emos == EMOTION_INDEX[name]).any(1), torch.clamp(expect_w, min=w), expect_w)
    assert torch.equal(pool.draw_weight, expect_w) and (expect_w > 1).sum() > bow.sum()
    gen = torch.Generator().manual_seed(0)
    drawn = torch.cat([torch.multinomial(pool.draw_weight, 64, replacement=True, generator=gen) for _ in range(50)])
    share = bow[drawn].float().mean().item()
    expected = HARD_ACTIONS["bow"] * bow.sum().item() / pool.draw_weight.sum().item()
    assert abs(share - expected) < 0.05 and expected > bow.float().mean().item()
    assert pool.batch(5, torch.Generator().manual_seed(1))["latents"].shape[0] == 5
    weight = loss_weights(since, since_emo)
    fresh = since_emo < ACTION_START_LATENTS
    assert fresh.any() and (~fresh).any()
    torch.testing.assert_close(weight[fresh], 1 + 2 * (since[fresh] < ACTION_START_LATENTS).float()
                               + EMOTION_SWITCH_WEIGHT)
    assert (weight[~fresh] <= 3).all() and (weight[:, 0] == 3).all()


def test_frames_since_change_ignores_the_clip_start() -> None:
    from backend.training.train import frames_since_change

    labels = torch.tensor([[0, 0, 1, 1, 1, 0], [2, 2, 2, 2, 2, 2]])
    assert frames_since_change(labels).tolist() == [[6, 6, 0, 1, 2, 0], [6, 6, 6, 6, 6, 6]]


def test_import_repatch_seeds_a_finer_grid_run_with_the_checkpoints_blocks(tmp_path) -> None:
    """import --repatch: a run whose autoencoder has a finer latent grid (spatial factor 4 -> 2, patch 2 -> 4: the
    same tokens a frame) takes every block of the checkpoint's DiT, a fresh patch embedding and head, step 0; the
    dit stage trains it, export writes it, the generator serves it. Refused: before the run has its autoencoder,
    over a DiT, with a DiT the blocks do not fit, and off the import stage."""
    import json
    import time

    from backend.model.autoencoder import VideoAutoencoder
    from backend.model.checkpoint import load_weights
    from backend.model.generator import Generator
    from backend.training.train import Run, export_stage, import_blocks_stage, run_stage, train_dit_stage

    cfg, dit, _, path = _exported(tmp_path)
    m = cfg.model
    fine = dataclasses.replace(cfg, model=dataclasses.replace(
        m, checkpoint=str(path), autoencoder=dataclasses.replace(m.autoencoder, spatial_factor=2),
        dit=dataclasses.replace(m.dit, patch_size=(1, 4, 4))))
    run = Run(tmp_path / "fine")
    with pytest.raises(SystemExit, match=r"autoencoder\.pt missing"):
        import_blocks_stage(fine, run)
    ae = VideoAutoencoder(fine.model.autoencoder)
    run.save("autoencoder.pt", {"ae_state": ae.state_dict()})  # what `train autoencoder` leaves, less its record
    import_blocks_stage(fine, run)
    assert json.loads((run.path / "dit_state.json").read_text()) == {"step": 0, "sf_step": 0}
    got, old = run.load_weights("dit_ema.safetensors"), dit.state_dict()
    assert got["patch_embedding.weight"].shape[-2:] == (4, 4) and old["patch_embedding.weight"].shape[-2:] == (2, 2)
    assert got["head.head.weight"].shape[0] == 4 * old["head.head.weight"].shape[0]
    kept = [k for k in old if not k.startswith(("patch_embedding.", "head.head."))]
    assert kept and all(torch.allclose(got[k].float(), old[k], atol=1e-3) for k in kept)  # runs keep fp16
    with pytest.raises(SystemExit, match="already holds dit_model"):
        import_blocks_stage(fine, run)
    wide = dataclasses.replace(fine, model=dataclasses.replace(
        fine.model, dit=dataclasses.replace(fine.model.dit, dim=48, ffn_dim=96)))
    other = Run(tmp_path / "wide")
    other.save("autoencoder.pt", {"ae_state": ae.state_dict()})
    with pytest.raises(SystemExit, match=r"does not fit model\.dit"):
        import_blocks_stage(wide, other)
    with pytest.raises(SystemExit, match="--repatch is for the import stage"):
        run_stage(fine, "dit", tmp_path / "t", minutes=0.01, repatch=True)

    train_dit_stage(fine, run, time.monotonic() + 4.0, torch.device("cpu"), selfforcing=False)
    assert json.loads((run.path / "dit_state.json").read_text())["step"] > 0
    out = tmp_path / "fine.safetensors"
    export_stage(fine, run, out)
    assert load_weights(str(out)).config["autoencoder"]["spatial_factor"] == 2
    frames = Generator(dataclasses.replace(fine.model, checkpoint=str(out)))
    assert frames.dit.sizes.patch_size == (1, 4, 4)


def test_the_export_records_the_framings_and_the_generator_serves_only_those(tmp_path) -> None:
    """A checkpoint from before framings (no record) knows the half framing only: a character framed whole is
    refused with its file named. A run trained with model.framings = half and whole exports that record, and the
    generator then takes both."""
    from backend.model.checkpoint import load_weights
    from backend.model.generator import Generator, GeneratorError
    from backend.training.train import Run, export_stage, import_stage

    cfg, _, _, path = _exported(tmp_path)
    old = Generator(dataclasses.replace(cfg.model, checkpoint=str(path)))
    assert old.framings == ("half",)
    old.check_framing("half", "aiko.toml")
    with pytest.raises(GeneratorError, match=r"mia\.toml: framing = 'whole', but .* was trained on 'half' only"):
        old.check_framing("whole", "mia.toml")
    both = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, checkpoint=str(path),
                                                              framings=("half", "whole")))
    run = Run(tmp_path / "run")
    import_stage(both, run)
    out = tmp_path / "both.safetensors"
    export_stage(both, run, out)
    assert load_weights(str(out)).config["training"]["framings"] == ["half", "whole"]
    gen = Generator(dataclasses.replace(both.model, checkpoint=str(out)))
    assert gen.framings == ("half", "whole")
    gen.check_framing("whole", "mia.toml")


def test_a_pool_of_two_framings_renders_blocks_by_turns_and_twins_alike() -> None:
    """model.framings = half and whole: the pool's clips take turns by blocks of 32, a clip and its emotion twin
    in the same framing (their references match), and each block's reference is the idol in that framing."""
    from backend.config import Config
    from backend.model.autoencoder import VideoAutoencoder
    from backend.training.data import make_specs, rest_reference
    from backend.training.train import CLIP_LATENTS, LatentPool, _pick_framing
    from backend.world.render import straight_alpha

    cfg = Config(model=micro_config(framings=("half", "whole")))
    ae = VideoAutoencoder(cfg.model.autoencoder).eval()
    pool = LatentPool(cfg, ae, 64, seed=5, device=torch.device("cpu"), twins=True)
    assert len(pool) == 128
    torch.testing.assert_close(pool.reference[:64], pool.reference[64:])  # twins: one idol, one framing
    size, tf = (cfg.model.autoencoder.native_width, cfg.model.autoencoder.native_height), 4
    specs = make_specs(64, CLIP_LATENTS * tf, seed=5, align=tf, twins=True)  # the pool's own clips
    for i, framing in ((0, "half"), (32, "whole"), (64, "half"), (96, "whole")):
        rest = rest_reference(specs[i].identity[None], size, tf, framing)
        with torch.no_grad():
            want = ae.encode(straight_alpha(rest)).to(torch.bfloat16)[0]
        torch.testing.assert_close(pool.reference[i].float(), want.float(), atol=2e-2, rtol=0)
        other = rest_reference(specs[i].identity[None], size, tf, "whole" if framing == "half" else "half")
        with torch.no_grad():
            assert not torch.allclose(pool.reference[i].float(), ae.encode(straight_alpha(other))[0].float(),
                                      atol=2e-2)
    one = torch.Generator().manual_seed(3)
    state = one.get_state()
    assert _pick_framing(("whole",), one) == "whole" and torch.equal(one.get_state(), state)  # nothing drawn
    drawn = {_pick_framing(("half", "whole"), torch.Generator().manual_seed(s)) for s in range(20)}
    assert drawn == {"half", "whole"}


def test_optimizer_step_moves_every_ema_parameter_toward_the_model() -> None:
    """The DiT stages' step: gradients clipped, the optimiser steps, then each EMA tensor moves by 1 - decay (the
    decay ramping up over a run's first steps) toward the model's new value."""
    import copy

    from backend.training.train import optimizer_step

    dit = CausalDiT(micro_config().dit)
    ema = copy.deepcopy(dit).requires_grad_(False)
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    before = [p.detach().clone() for p in ema.parameters()]
    opt = torch.optim.AdamW(dit.parameters(), lr=1e-2)
    loss = sum((p.float() ** 2).sum() for p in dit.parameters())
    optimizer_step(opt, dit, ema, loss, lr=1e-2, step=5, ema_decay=0.999)
    decay = 6 / 15  # (1 + step) / (10 + step), under ema_decay
    for old, new, p in zip(before, ema.parameters(), dit.parameters()):
        torch.testing.assert_close(new, old + (1 - decay) * (p.detach() - old))
    assert opt.param_groups[0]["lr"] == 1e-2


def test_import_repredict_gives_the_dit_an_x0_head_that_trains_and_exports(tmp_path) -> None:
    """import --repredict: a checkpoint whose DiT predicts flow seeds a run whose model.dit.prediction is x0: every
    tensor but the head's linear is the checkpoint's, the head starts at zero (x0 = 0: the flow is x / sigma), the
    step counts go on; dit trains it and export records x0, which the generator serves only with x0 configured.
    Without --repredict, with nothing to switch, or outside import it is refused with the reason."""
    import json
    import time

    from backend.model.checkpoint import CheckpointError, load_weights
    from backend.model.dit import X0_SIGMA_MIN
    from backend.model.generator import Generator
    from backend.training.train import Run, export_stage, import_stage, run_stage, train_dit_stage

    cfg, dit, _, path = _exported(tmp_path)
    flow_cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, checkpoint=str(path)))
    x0_cfg = dataclasses.replace(flow_cfg, model=dataclasses.replace(
        flow_cfg.model, dit=dataclasses.replace(cfg.model.dit, prediction="x0")))
    with pytest.raises(SystemExit, match=r"predicts flow, model\.dit\.prediction says x0: --set "
                                         r"model\.dit\.prediction=flow to train it on as it is, or --repredict"):
        import_stage(x0_cfg, Run(tmp_path / "plain"))  # a new head is asked for, never implied
    with pytest.raises(SystemExit, match="predicts flow already"):
        import_stage(flow_cfg, Run(tmp_path / "same"), repredict=True)
    with pytest.raises(SystemExit, match="--repredict is for the import stage"):
        run_stage(x0_cfg, "dit", tmp_path / "d", minutes=0.01, repredict=True)

    run = Run(tmp_path / "run")
    import_stage(x0_cfg, run, repredict=True)
    assert json.loads((run.path / "dit_state.json").read_text()) == {"step": 123, "sf_step": 45}
    got = run.load_weights("dit_ema.safetensors")
    assert not got["head.head.weight"].any() and not got["head.head.bias"].any()
    own = dit.state_dict()
    assert all(torch.allclose(v.float(), own[k], atol=1e-3) for k, v in got.items() if not k.startswith("head.head."))
    x0_dit = CausalDiT(x0_cfg.model.dit).eval()
    x0_dit.load_state_dict(got)
    x, t = torch.randn(1, 16, 2, 4, 8), torch.tensor([[900.0, 10.0]])
    with torch.no_grad():
        flow = x0_dit(x, t, dit.build_context(torch.tensor([2]), torch.tensor([1])))
    sigma = torch.tensor([0.9, X0_SIGMA_MIN]).view(1, 1, 2, 1, 1)  # 10/1000 is below the clamp
    torch.testing.assert_close(flow, x / sigma)

    train_dit_stage(x0_cfg, run, time.monotonic() + 4.0, torch.device("cpu"), selfforcing=False)
    assert json.loads((run.path / "dit_state.json").read_text())["step"] > 123
    assert run.load_weights("dit_model.safetensors")["head.head.weight"].any()  # the head learns from zero
    out = tmp_path / "x0.safetensors"
    export_stage(x0_cfg, run, out)
    assert load_weights(str(out)).config["dit"]["prediction"] == "x0"
    assert Generator(dataclasses.replace(x0_cfg.model, checkpoint=str(out))).dit.sizes.prediction == "x0"
    with pytest.raises(CheckpointError, match=r"--set model.dit.prediction=\"x0\""):
        Generator(dataclasses.replace(flow_cfg.model, checkpoint=str(out)))


def test_a_short_stage_is_not_stopped_by_its_compile_step() -> None:
    """time_for_a_step: the first step (compilation, warm-up: 30 s on the H200) is no forecast, so a stage with a
    minute left goes on after it; from the second step on, the slowest recent step twice over must fit."""
    import time

    from backend.training.train import time_for_a_step

    now = time.monotonic()
    assert time_for_a_step([], now + 10) and not time_for_a_step([], now - 1)
    assert time_for_a_step([30.0], now + 10)  # before session 19 this stopped the stage after one step
    assert not time_for_a_step([30.0], now - 1)
    assert time_for_a_step([30.0, 0.2, 0.3], now + 10)
    assert not time_for_a_step([30.0, 0.2, 6.0], now + 10)  # 2 x 6 s does not fit in 10


def test_selfforcing_context_shares_and_rollout_lengths() -> None:
    from backend.training.train import (
        ONE_PASS_SHARE,
        ROLLOUT_LATENTS,
        ROLLOUT_SHARE,
        _context_kind,
        _rollout_length,
    )

    def shares(p: float) -> dict[str, float]:
        us = (np.arange(10_000) + 0.5) / 10_000
        kinds = [_context_kind(float(u), p) for u in us]
        return {k: kinds.count(k) / len(kinds) for k in ("rollout", "one_pass", "truth")}

    default = shares(ROLLOUT_SHARE)
    assert default == pytest.approx({"rollout": 0.3, "one_pass": ONE_PASS_SHARE, "truth": 0.3}, abs=1e-3)
    assert shares(0.8) == pytest.approx({"rollout": 0.8, "one_pass": 0.2, "truth": 0.0}, abs=1e-3)
    assert shares(0.0)["rollout"] == 0.0
    gen = torch.Generator().manual_seed(0)
    # the default: what the stage always drew (chunk 1: 1-6 frames; chunk 2: 2, 4 or 6)
    assert {_rollout_length(1, 16, ROLLOUT_LATENTS, gen) for _ in range(300)} == set(range(1, 7))
    assert {_rollout_length(2, 16, ROLLOUT_LATENTS, gen) for _ in range(300)} == {2, 4, 6}
    # longer rollouts leave at least one chunk of the clip for the loss; whole chunks only
    assert {_rollout_length(2, 16, 20, gen) for _ in range(500)} == {2, 4, 6, 8, 10, 12, 14}
    assert {_rollout_length(2, 16, 3, gen) for _ in range(100)} == {2}


def test_selfforcing_trains_on_its_own_rollouts_only_when_asked(tmp_path) -> None:
    """rollout_share 1: every step's context is the model's own rollout (counted in sf_step); the flags are
    refused on other stages and out of range."""
    import json
    import time
    from pathlib import Path

    from backend.training.train import Run, import_stage, run_stage, train_dit_stage

    cfg, _, _, path = _exported(tmp_path)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, checkpoint=str(path)))
    run = Run(tmp_path / "run")
    import_stage(cfg, run)
    train_dit_stage(cfg, run, time.monotonic() + 6.0, torch.device("cpu"), selfforcing=True, rollout_share=1.0,
                    rollout_latents=12)
    state = json.loads((run.path / "dit_state.json").read_text())
    assert state["step"] > 123 and state["sf_step"] - 45 == state["step"] - 123  # every step self-forced
    with pytest.raises(SystemExit, match="for the selfforcing stage, not dit"):
        run_stage(cfg, "dit", Path(run.path), minutes=0.01, rollout_share=0.5)
    with pytest.raises(SystemExit, match="rollout-share must be in"):
        train_dit_stage(cfg, run, time.monotonic() + 1.0, torch.device("cpu"), selfforcing=True, rollout_share=1.5)


def test_held_context_keeps_the_pose_before_a_switch_for_the_first_frames_after_it() -> None:
    from backend.training.train import frames_since_switch, held_context

    # clip 0: idle until frame 5, wave from 5; clip 1: wave from the clip's start (nothing before it to hold)
    labels = torch.tensor([[0] * 5 + [1] * 7, [1] * 12])
    since = frames_since_switch(labels)
    ctx = torch.arange(12, dtype=torch.float32).view(1, 12, 1, 1, 1).expand(2, 12, 3, 2, 2).clone()
    lags = set()
    for seed in range(40):
        out = held_context(ctx, since, 3, torch.Generator().manual_seed(seed))
        frames = out[0, :, 0, 0, 0].tolist()
        held = [j for j in range(12) if frames[j] != j]
        assert all(frames[j] == 4.0 for j in held) and held == list(range(5, 5 + len(held)))
        lags.add(len(held))
        assert torch.equal(out[1], ctx[1])  # no switch inside the clip: nothing held
        assert torch.equal(out[0, :5], ctx[0, :5]) and torch.equal(out[0, 5 + len(held):], ctx[0, 5 + len(held):])
    assert lags == {1, 2, 3}  # the lag is drawn per clip, up to the most
    # emotion twins (rows i and i + B/2, the same motion) hold for the same number of frames
    pair = torch.tensor([[0] * 5 + [1] * 7] * 4)
    four = ctx[:1].expand(4, 12, 3, 2, 2)
    for seed in range(20):
        out = held_context(four, frames_since_switch(pair), 5, torch.Generator().manual_seed(seed), twins=True)
        assert torch.equal(out[0], out[2]) and torch.equal(out[1], out[3])


def test_the_dit_stage_trains_with_held_context(tmp_path) -> None:
    import json
    import time
    from pathlib import Path

    from backend.training.train import Run, import_stage, run_stage, train_dit_stage

    cfg, _, _, path = _exported(tmp_path)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, checkpoint=str(path)))
    run = Run(tmp_path / "run")
    import_stage(cfg, run)
    train_dit_stage(cfg, run, time.monotonic() + 4.0, torch.device("cpu"), selfforcing=False, context_lag=4,
                    peak_lr=2e-4, one_step_share=0.3)
    assert json.loads((run.path / "dit_state.json").read_text())["step"] > 123
    with pytest.raises(SystemExit, match="--one-step-share is for the dit and selfforcing stages, not hires"):
        run_stage(cfg, "hires", Path(run.path), minutes=0.01, one_step_share=0.5)
    with pytest.raises(SystemExit, match=r"--one-step-share must be in \[0, 1\] \(got 1.5\)"):
        train_dit_stage(cfg, run, time.monotonic() + 1.0, torch.device("cpu"), selfforcing=False, one_step_share=1.5)
    with pytest.raises(SystemExit, match="--lr is for the dit and selfforcing stages, not distill"):
        run_stage(cfg, "distill", Path(run.path), minutes=0.01, peak_lr=1e-4)
    from backend.cli import main

    with pytest.raises(SystemExit, match="--lr is for the dit and selfforcing stages, not probe"):  # the CLI's flag
        main(["train", "probe", "--lr", "1e-4", "--run", str(run.path)])
    with pytest.raises(SystemExit, match="--lr must be in"):
        train_dit_stage(cfg, run, time.monotonic() + 1.0, torch.device("cpu"), selfforcing=False, peak_lr=0.0)
    with pytest.raises(SystemExit, match="context-lag is for the dit and selfforcing stages, not distill"):
        run_stage(cfg, "distill", Path(run.path), minutes=0.01, context_lag=2)
    with pytest.raises(SystemExit, match="context-lag must be >= 0"):
        train_dit_stage(cfg, run, time.monotonic() + 1.0, torch.device("cpu"), selfforcing=False, context_lag=-1)


def test_the_dit_learning_rate_plans_and_restarts() -> None:
    from backend.training.train import DIT_PEAK_LR, DIT_PLANNED_STEPS, dit_learning_rate

    # the plan: a 200-step warm-up from where the call resumed, the peak, a cosine to 10% over the planned steps
    assert dit_learning_rate(0, 0, 0.0) == pytest.approx(DIT_PEAK_LR / 200)
    assert dit_learning_rate(199, 0, 0.5) == pytest.approx(
        DIT_PEAK_LR * (1 - 0.9 * 0.5 * (1 - math.cos(math.pi * 199 / DIT_PLANNED_STEPS))))
    assert dit_learning_rate(DIT_PLANNED_STEPS + 5000, 0, 0.3) == pytest.approx(0.1 * DIT_PEAK_LR)
    late = dit_learning_rate(34_254 + 400, 34_254, 0.0)
    assert late == pytest.approx(DIT_PEAK_LR * (0.1 + 0.45 * (1 + math.cos(math.pi * 34_654 / DIT_PLANNED_STEPS))))
    assert late < 0.16 * DIT_PEAK_LR  # late in the plan: about a seventh of the peak
    # anneal: the call's own cosine on top, to 10% by its end
    assert dit_learning_rate(34_654, 34_254, 1.0, anneal=True) == pytest.approx(0.1 * late)
    # a warm restart: the warm-up to the given peak whatever the step, then down to 10% of it by the call's end
    assert dit_learning_rate(34_254, 34_254, 0.0, peak=2e-4) == pytest.approx(2e-4 / 200)
    assert dit_learning_rate(34_454, 34_254, 0.0, peak=2e-4) == pytest.approx(2e-4)
    assert dit_learning_rate(34_454, 34_254, 0.5, peak=2e-4) == pytest.approx(2e-4 * 0.55)
    assert dit_learning_rate(40_454, 34_254, 1.0, peak=2e-4) == pytest.approx(2e-5)


def test_one_step_draws_sets_that_share_of_the_chunks_to_pure_noise() -> None:
    from backend.training.train import one_step_draws

    t = torch.full((400, 8), 250.0)
    gen = torch.Generator().manual_seed(3)
    state = gen.get_state()
    assert one_step_draws(t, 0.0, gen) is t and torch.equal(gen.get_state(), state)  # 0: nothing drawn
    assert (one_step_draws(t, 1.0, gen) == 1000.0).all()
    out = one_step_draws(t, 0.3, gen)
    share = (out == 1000.0).float().mean().item()
    assert abs(share - 0.3) < 0.03 and ((out == 1000.0) | (out == 250.0)).all()
