"""`liveidol train distill`: few-step distillation of the guided 4-step sampler (backend/training/distill.py).

Real micro models on the CPU (random weights stand in for a trained teacher: the mechanics, not the quality,
are under test; the quality is measured by `liveidol eval` on a GPU)."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from backend.actions import ACTION_INDEX
from backend.config import Config
from backend.model.autoencoder import VideoAutoencoder
from backend.model.checkpoint import load_weights, save_checkpoint
from backend.model.dit import CausalDiT
from backend.model.sampler import FlowMatchSchedule
from backend.training.distill import (
    build_batch,
    distill_loss,
    student_x0,
    teacher_trajectory,
    train_distill_stage,
    trajectory_noise,
)
from backend.training.train import (
    Run,
    emotion_progress_from_labels,
    export_stage,
    frames_since_switch,
    import_stage,
    progress_from_labels,
)
from tests.model.model_kit import micro_config, random_weights


def _checkpoint(tmp_path: Path, cfg: Config, training: dict | None = None) -> Path:
    w = random_weights(cfg.model, seed=7, std=0.1)
    dit, ae = CausalDiT(cfg.model.dit), VideoAutoencoder(cfg.model.autoencoder)
    dit.load_state_dict({k[4:]: v for k, v in w.items() if k.startswith("dit.")})
    ae.load_state_dict({k[12:]: v for k, v in w.items() if k.startswith("autoencoder.")})
    return save_checkpoint(tmp_path / "teacher.safetensors", dit, ae, cfg.model, dtype=torch.float32,
                           training=training or {"dit_step": 321, "sf_step": 0})


def _batch(cfg, b: int = 2, n: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """A synthetic batch in the LatentPool's layout, with a command switch (wave -> heart) inside the clip."""
    s, ae = cfg.dit, cfg.autoencoder
    h, w = ae.native_height // ae.spatial_factor, ae.native_width // ae.spatial_factor
    g = torch.Generator().manual_seed(seed)
    acts = torch.tensor([[ACTION_INDEX["idle"]] * 2 + [ACTION_INDEX["wave"]] * (n - 2)] * b)
    return {"latents": torch.randn(b, n, s.in_dim, h, w, generator=g),
            "reference": torch.randn(b, 1, s.in_dim, h, w, generator=g),
            "actions": acts, "emotions": torch.ones(b, n, dtype=torch.long),
            "mouth": torch.rand(b, n * ae.temporal_factor, generator=g),
            "progress": progress_from_labels(acts, ae.temporal_factor),
            "emotion_progress": emotion_progress_from_labels(torch.ones(b, n, dtype=torch.long), ae.temporal_factor),
            "since": frames_since_switch(acts)}


def _models(cfg) -> tuple[CausalDiT, CausalDiT]:
    w = random_weights(cfg, seed=3, std=0.15)
    teacher = CausalDiT(cfg.dit)
    teacher.load_state_dict({k[4:]: v for k, v in w.items() if k.startswith("dit.")})
    teacher.eval().requires_grad_(False)
    student = CausalDiT(cfg.dit)
    student.load_state_dict(teacher.state_dict())
    return teacher, student.train()


def test_trajectory_noise_is_standard_and_driven_by_z() -> None:
    z = torch.randn(2, 3, 16, 4, 8, generator=torch.Generator().manual_seed(0))
    draws = trajectory_noise(z, 4)
    assert len(draws) == 4 and draws[0] is z and torch.equal(draws[1], z)
    assert not torch.equal(draws[2], z) and not torch.equal(draws[3], draws[2])
    assert torch.equal(draws[2][:, :, 1], z[:, :, 0])  # a channel roll: still N(0, 1) per element


def test_teacher_trajectory_guides_only_young_actions_and_is_a_function_of_z() -> None:
    cfg = micro_config(guidance=1.0, guidance_frames=2)
    teacher, student = _models(cfg)
    batch, sched = _batch(cfg), FlowMatchSchedule(shift=cfg.shift)
    gen = torch.Generator().manual_seed(1)
    db = build_batch(teacher, student, cfg, batch, 1, 0, gen, None)
    # idle frames 0-1 are never guided; wave starts at frame 2: frames 2, 3 are its first 2 latent frames
    assert db.guided[0].tolist() == [False, False, True, True]
    z = torch.randn(batch["latents"].shape, generator=torch.Generator().manual_seed(2))
    states, x0 = teacher_trajectory(teacher, db, z, cfg, sched, guidance=1.0)
    _, x0b = teacher_trajectory(teacher, db, z, cfg, sched, guidance=1.0)
    assert len(states) == 4 and torch.equal(states[0], z) and torch.equal(x0, x0b)
    _, plain = teacher_trajectory(teacher, db, z, cfg, sched, guidance=0.0)
    diff = (x0 - plain).abs().mean(dim=(2, 3, 4))[0]
    assert diff[:2].max() == 0 and diff[2:].min() > 1e-4  # guidance changed the guided frames only


@pytest.mark.parametrize("steps", [1, 2])
def test_a_teacher_of_fewer_steps_ends_where_the_samplers_first_steps_end(steps: int) -> None:
    """--teacher-steps N: the end point is the 4-step trajectory's x0 after N calls (same z, same draws), the
    first N states are that trajectory's, and each later state is the end point re-noised to its timestep with
    the trajectory's draw, so a student regressed onto it from every state keeps the N-step picture."""
    cfg = micro_config(guidance=0.5, guidance_frames=2)
    teacher, student = _models(cfg)
    batch, sched = _batch(cfg), FlowMatchSchedule(shift=cfg.shift)
    db = build_batch(teacher, student, cfg, batch, 2, 0, torch.Generator().manual_seed(1), None)
    z = torch.randn(batch["latents"].shape, generator=torch.Generator().manual_seed(2))
    full, _ = teacher_trajectory(teacher, db, z, cfg, sched, guidance=0.5)
    states, x0 = teacher_trajectory(teacher, db, z, cfg, sched, guidance=0.5, steps=steps)
    assert len(states) == 4
    for i in range(steps):
        assert torch.equal(states[i], full[i])
    if steps < 4:  # the N-step end point is what the full trajectory re-noised into its state N
        s_n = sched.warp_list(cfg.timesteps)[steps] / sched.num_train_steps
        draws = trajectory_noise(z, 4)
        assert torch.allclose(full[steps], (1 - s_n) * x0 + s_n * draws[steps], atol=1e-5)
        for i in range(steps, 4):
            s_i = sched.warp_list(cfg.timesteps)[i] / sched.num_train_steps
            assert torch.allclose(states[i], (1 - s_i) * x0 + s_i * draws[i], atol=1e-6)
    _, four = teacher_trajectory(teacher, db, z, cfg, sched, guidance=0.5, steps=4)
    assert not torch.allclose(x0, four)  # a different end point: the 4-step one goes on from here
    with pytest.raises(ValueError, match="teacher steps"):
        teacher_trajectory(teacher, db, z, cfg, sched, guidance=0.5, steps=5)


def test_student_at_one_step_moves_toward_the_teachers_four_step_output() -> None:
    """Overfit one batch: the loss falls and the student's 1-step x0 (from z at t=1000) and its 2-step last
    call come closer to the teacher's guided 4-step end point; the flow share keeps training too."""
    cfg = micro_config(guidance=0.5)
    teacher, student = _models(cfg)
    batch, sched = _batch(cfg), FlowMatchSchedule(shift=cfg.shift)
    db = build_batch(teacher, student, cfg, batch, 2, 5, torch.Generator().manual_seed(1), None)
    z = torch.randn(batch["latents"].shape, generator=torch.Generator().manual_seed(2))
    states, target = teacher_trajectory(teacher, db, z, cfg, sched, guidance=0.5)
    ts = sched.warp_list(cfg.timesteps)

    def distance(k: int) -> float:
        with torch.no_grad():
            now = build_batch(teacher, student, cfg, batch, 2, 5, torch.Generator().manual_seed(1), None)
            t = torch.full(z.shape[:2], ts[k])
            return float((student_x0(student, now, states[k], t, sched) - target).square().mean())

    before = [distance(0), distance(1)]
    opt = torch.optim.Adam(student.parameters(), lr=3e-3)
    weight = torch.ones(z.shape[:2])
    losses = []
    for _ in range(60):
        db = build_batch(teacher, student, cfg, batch, 2, 5, torch.Generator().manual_seed(1), None)
        loss, _ = distill_loss(student, db, states, target, batch["latents"], 2, sched, cfg,
                                   torch.Generator().manual_seed(4), torch.Generator().manual_seed(5), weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    after = [distance(0), distance(1)]
    assert losses[-1] < 0.5 * losses[0], losses[::10]
    assert after[0] < 0.5 * before[0] and after[1] < 0.5 * before[1], (before, after)


def test_distill_stage_resumes_and_exports_its_metadata(tmp_path: Path) -> None:
    cfg = Config(model=micro_config())
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, checkpoint=str(_checkpoint(tmp_path, cfg))))
    run = Run(tmp_path / "run")
    import_stage(cfg, run)
    teacher = run.load_weights("dit_ema.safetensors")
    train_distill_stage(cfg, run, time.monotonic() + 4.0, torch.device("cpu"))
    first = json.loads((run.path / "distill_state.json").read_text())
    assert first["distill_step"] >= 2 and first["teacher_step"] == 321 and first["guidance_distilled"]
    from backend.model.generator import emotion_pushes

    assert first["emotion_guidance_distilled"] == emotion_pushes(cfg.model) != {}  # the emotion guidance is folded in
    student = run.load_weights("distill_model.safetensors")
    assert any(not torch.equal(student[k], teacher[k]) for k in teacher)  # it trained
    assert run.load_weights("dit_ema.safetensors").keys() == teacher.keys()
    assert all(torch.equal(run.load_weights("dit_ema.safetensors")[k], v) for k, v in teacher.items())  # frozen
    train_distill_stage(cfg, run, time.monotonic() + 3.0, torch.device("cpu"))
    second = json.loads((run.path / "distill_state.json").read_text())
    assert second["distill_step"] > first["distill_step"]
    logged = [json.loads(line) for line in (run.path / "log.jsonl").read_text().splitlines()]
    assert any(r.get("stage") == "distill" for r in logged)

    out = tmp_path / "distilled.safetensors"
    export_stage(cfg, run, out)
    training = load_weights(str(out)).config["training"]
    assert training["distill_step"] == second["distill_step"] and training["guidance_distilled"] is True
    assert training["dit_step"] == 321 and training["distilled"]["teacher_steps"] == 4
    assert training["emotion_guidance_distilled"] == first["emotion_guidance_distilled"]
    assert training["distilled"]["student_steps"] == [1, 2, 3, 4]
    exported = load_weights(str(out)).dit
    ema = run.load_weights("distill_ema.safetensors")
    assert torch.allclose(exported["blocks.0.self_attn.q.weight"].float(), ema["blocks.0.self_attn.q.weight"])

    # import of the distilled checkpoint keeps its record; an export of that run ships it again
    cfg2 = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, checkpoint=str(out)))
    run2 = Run(tmp_path / "run2")
    import_stage(cfg2, run2)
    meta = json.loads((run2.path / "dit_state.json").read_text())
    assert meta["distill_step"] == second["distill_step"] and meta["guidance_distilled"] is True
    export_stage(cfg2, run2, tmp_path / "again.safetensors")
    again = load_weights(str(tmp_path / "again.safetensors")).config["training"]
    assert again["distill_step"] == training["distill_step"] and again["guidance_distilled"] is True

    # a later session goes on distilling the shipped student: import it with its teacher; the count goes on
    teacher_path = str(tmp_path / "teacher.safetensors")
    cfg3 = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, checkpoint=str(out)))
    run3 = Run(tmp_path / "run3")
    import_stage(cfg3, run3, teacher=teacher_path)
    resumed = json.loads((run3.path / "distill_state.json").read_text())
    assert resumed == {**second, "guidance": resumed["guidance"]} and resumed["teacher_step"] == 321
    assert json.loads((run3.path / "dit_state.json").read_text()) == {"step": 321, "sf_step": 0}  # the teacher's
    assert all(torch.equal(run3.load_weights("dit_ema.safetensors")[k], v) for k, v in teacher.items())
    student3 = run3.load_weights("distill_ema.safetensors")
    assert torch.equal(student3["blocks.0.self_attn.q.weight"], exported["blocks.0.self_attn.q.weight"].float())
    train_distill_stage(cfg3, run3, time.monotonic() + 3.0, torch.device("cpu"))
    assert json.loads((run3.path / "distill_state.json").read_text())["distill_step"] > second["distill_step"]
    # the wrong teacher, or a student that is not distilled, is refused with the reason
    with pytest.raises(SystemExit, match="distilled itself"):
        import_stage(cfg3, Run(tmp_path / "run4"), teacher=str(out))
    later = _checkpoint(tmp_path / "later", cfg, training={"dit_step": 400, "sf_step": 0})
    with pytest.raises(SystemExit, match=r"step 400.*step 321"):
        import_stage(cfg3, Run(tmp_path / "run5"), teacher=str(later))
    with pytest.raises(SystemExit, match="not a distilled checkpoint"):
        import_stage(cfg, Run(tmp_path / "run6"), teacher=teacher_path)

    # a teacher trained on after the student was made is refused, with the way out named
    (run.path / "dit_state.json").write_text(json.dumps({"step": 400, "sf_step": 0}))
    with pytest.raises(SystemExit, match="new run"):
        train_distill_stage(cfg, run, time.monotonic() + 1.0, torch.device("cpu"))
    with pytest.raises(SystemExit, match="new run"):
        export_stage(cfg, run, tmp_path / "stale.safetensors")


def test_distill_stage_keeps_the_teacher_steps_it_started_with(tmp_path: Path) -> None:
    cfg = Config(model=micro_config())
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, checkpoint=str(_checkpoint(tmp_path, cfg))))
    run = Run(tmp_path / "run")
    import_stage(cfg, run)
    train_distill_stage(cfg, run, time.monotonic() + 3.0, torch.device("cpu"), teacher_steps=2)
    first = json.loads((run.path / "distill_state.json").read_text())
    assert first["teacher_steps"] == 2
    train_distill_stage(cfg, run, time.monotonic() + 2.0, torch.device("cpu"))  # no flag: goes on with 2
    second = json.loads((run.path / "distill_state.json").read_text())
    assert second["teacher_steps"] == 2 and second["distill_step"] > first["distill_step"]
    with pytest.raises(SystemExit, match=r"2-step end point, not 4.*--teacher-steps 2"):
        train_distill_stage(cfg, run, time.monotonic() + 2.0, torch.device("cpu"), teacher_steps=4)
    out = tmp_path / "distilled.safetensors"
    export_stage(cfg, run, out)
    assert load_weights(str(out)).config["training"]["distilled"]["teacher_steps"] == 2


@pytest.mark.parametrize(("distilled", "mode", "emotion", "passes"),
                         [(False, "skip", "neutral", 5), (True, "skip", "neutral", 3), (True, "apply", "neutral", 5),
                          (False, "skip", "happy", 7), (True, "skip", "happy", 3), (True, "apply", "happy", 7)])
def test_generator_skips_the_guidance_pass_of_a_guidance_distilled_checkpoint(tmp_path: Path, distilled: bool,
                                                                            mode: str, emotion: str,
                                                                            passes: int) -> None:
    """2 steps on a fresh action: guided = 2 x 2 passes + the cache pass (never guided: only its conditional
    K/V are kept and its output is discarded, though with context noise it runs at t > 0) = 5; distilled = 2 + 1.
    Held happy adds the neutral-emotion pass to each step (7), unless the checkpoint has emotion guidance
    distilled too (3)."""
    from backend.model.generator import Conditions, Generator

    cfg = Config(model=micro_config(guidance=0.5, guidance_frames=4, distilled_guidance=mode))
    record = {"guidance_distilled": True, "emotion_guidance_distilled": {"happy": 5.0}} if distilled else {}
    path = _checkpoint(tmp_path, cfg, {"dit_step": 1, **record})
    gen = Generator(dataclasses.replace(cfg.model, checkpoint=str(path)))
    assert gen.guidance_distilled is distilled
    assert gen.emotion_guidance_distilled == ({"happy": 5.0} if distilled else {})
    gen.reset(np.full((16, 32, 4), 200, np.uint8), Conditions(emotion=emotion))
    calls = []
    inner = gen.fast

    def counting(*args, **kwargs):
        calls.append(1)
        return inner(*args, **kwargs)

    gen.fast = counting  # type: ignore[assignment]
    gen.next_chunk(Conditions(action="wave", emotion=emotion), steps=2)
    assert len(calls) == passes


def test_residual_push_turns_the_distilled_push_into_the_wanted_one() -> None:
    """residual_pushes: a student distilled with push d draws ~ f + d (f - f_n) (f_n under neutral); pushing it by
    the residual w' gives exactly the teacher pushed by the wanted w; emotions where the two agree get no pass."""
    from backend.model.generator import residual_pushes

    wanted = {"happy": 5.0, "angry": 1.0, "sad": 1.0}
    distilled = {"happy": 5.0, "angry": 2.0, "surprised": 1.0, "sad": 1.0}
    res = residual_pushes(wanted, distilled)
    assert set(res) == {"angry", "surprised"} and res["angry"] == pytest.approx(-1 / 3)
    assert res["surprised"] == pytest.approx(-0.5)  # not wanted at all: the distilled push taken back out
    assert residual_pushes({"happy": 2.0}, {}) == {"happy": 2.0}  # nothing distilled: the plain push
    g = torch.Generator().manual_seed(0)
    f_e, f_n = torch.randn(8, generator=g), torch.randn(8, generator=g)
    for e in ("angry", "surprised"):
        d, w = distilled[e], wanted.get(e, 0.0)
        student_e, student_n = f_e + d * (f_e - f_n), f_n
        torch.testing.assert_close(student_e + res[e] * (student_e - student_n), f_e + w * (f_e - f_n))


def test_generator_runs_only_the_difference_from_the_distilled_emotion_push(tmp_path: Path) -> None:
    """Weights with angry pushed 2 inside, config asking angry 1: held angry costs the neutral pass again (5 passes
    for 2 steps of a fresh action instead of 3) with the residual push -1/3; held happy (5 inside, 5 asked) none."""
    from backend.model.generator import Conditions, Generator

    cfg = Config(model=micro_config(guidance=0.5, guidance_frames=4, emotion_guidance_weights=(5.0, 1.0, 1.0, 1.0)))
    record = {"guidance_distilled": True, "emotion_guidance_distilled": {"happy": 5.0, "angry": 2.0,
                                                                         "surprised": 1.0, "sad": 1.0}}
    path = _checkpoint(tmp_path, cfg, {"dit_step": 1, **record})
    gen = Generator(dataclasses.replace(cfg.model, checkpoint=str(path)))
    assert gen.emotion_push == {"angry": pytest.approx(-1 / 3)}
    for emotion, passes in (("happy", 3), ("angry", 5)):
        gen.reset(np.full((16, 32, 4), 200, np.uint8), Conditions(emotion=emotion))
        calls: list[int] = []
        inner = gen.fast

        def counting(*args, calls=calls, inner=inner, **kwargs):
            calls.append(1)
            return inner(*args, **kwargs)

        gen.fast = counting  # type: ignore[assignment]
        gen.next_chunk(Conditions(action="wave", emotion=emotion), steps=2)
        gen.fast = inner  # type: ignore[assignment]
        assert len(calls) == passes, emotion
    plain = Generator(dataclasses.replace(cfg.model, checkpoint=str(path), emotion_guidance_weights=(5.0, 2.0, 1.0, 1.0)))
    assert plain.emotion_push == {}
    plain.reset(np.full((16, 32, 4), 200, np.uint8), Conditions(emotion="angry"))
    gen.reset(np.full((16, 32, 4), 200, np.uint8), Conditions(emotion="angry"))
    plain._noise.manual_seed(3)
    gen._noise.manual_seed(3)
    a = plain.next_chunk(Conditions(action="wave", emotion="angry"), steps=2)
    b = gen.next_chunk(Conditions(action="wave", emotion="angry"), steps=2)
    assert np.abs(a.astype(int) - b.astype(int)).max() > 0  # the residual push changes the picture


def test_cli_names_the_stage_and_the_export_path() -> None:
    from backend.cli import build_parser

    args = build_parser().parse_args(["train", "distill", "--run", "runs/d", "--minutes", "5.5"])
    assert (args.stage, args.run, args.minutes, args.out) == ("distill", "runs/d", 5.5, None)
    args = build_parser().parse_args(["train", "export", "--run", "runs/d", "--out", "d.safetensors"])
    assert args.out == "d.safetensors"
    args = build_parser().parse_args(["train", "import", "--run", "runs/d", "--checkpoint", "student.safetensors",
                                      "--teacher", "teacher.safetensors"])
    assert (args.stage, args.checkpoint, args.teacher) == ("import", "student.safetensors", "teacher.safetensors")
    # --teacher belongs to import: another stage refuses it before it touches the run
    from backend.training.train import run_stage

    with pytest.raises(SystemExit, match="import stage"):
        run_stage(Config(model=micro_config()), "distill", Path("runs/never-made"), minutes=0.1,
                  teacher="teacher.safetensors")
    assert not Path("runs/never-made").exists()


@pytest.mark.parametrize("emotion", ["neutral", "happy"])
def test_teacher_trajectory_is_the_generators_guided_sampler(emotion: str) -> None:
    """The distillation target is what the engine samples: the first chunk of a stream after a command (guided;
    held happy: emotion guidance too), made by the real Generator (cache path, 4 steps), equals the teacher's
    trajectory on the training sequence given the same noise draws."""
    from backend.actions import EMOTION_INDEX
    from backend.model.generator import Conditions, Generator, emotion_progress, emotion_pushes

    cfg = micro_config(guidance=0.5, guidance_frames=4, chunk_frames=2, context_noise=0.1,
                       emotion_guidance=1.5, emotion_guidance_for=("happy", "sad"))
    weights = random_weights(cfg, seed=3, std=0.15)
    gen = Generator(cfg, weights=weights)
    ref_img = np.random.default_rng(0).integers(0, 256, (16, 32, 4), dtype=np.uint8)
    gen.reset(ref_img, Conditions())
    ref_latent = gen.autoencoder.encode(gen._reference_tensor(ref_img)[:, None].expand(1, 4, 4, 16, 32))
    state = gen._noise.get_state()
    draws = torch.Generator().manual_seed(0)
    draws.set_state(state)
    f, (h, w) = cfg.chunk_frames, gen.latent_hw
    noise = [torch.randn((1, f, cfg.dit.in_dim, h, w), generator=draws)]
    noise += [torch.randn((1, f, cfg.dit.in_dim, h, w), generator=draws) for _ in range(3)]
    captured = []
    step = gen.decoder.step
    gen.decoder.step = lambda x0: captured.append(x0.clone()) or step(x0)  # type: ignore[method-assign]
    gen.next_chunk(Conditions(action="wave", emotion=emotion), steps=4)

    teacher = gen.dit
    acts = torch.full((1, f), ACTION_INDEX["wave"])
    emos = torch.full((1, f), EMOTION_INDEX[emotion])
    batch = {"latents": torch.zeros(1, f, cfg.dit.in_dim, h, w), "reference": ref_latent,
             "actions": acts, "emotions": emos,
             "mouth": torch.zeros(1, f * cfg.autoencoder.temporal_factor),
             "progress": progress_from_labels(acts, cfg.autoencoder.temporal_factor),
             "emotion_progress": emotion_progress_from_labels(emos, cfg.autoencoder.temporal_factor),
             "since": frames_since_switch(acts)}
    if emotion != "neutral":  # it changed with this chunk: its progress starts at 0, as the generator counts
        batch["emotion_progress"] = torch.tensor([[emotion_progress(j, cfg.autoencoder.temporal_factor)
                                                   for j in range(f)]])
    pushes = emotion_pushes(cfg)
    assert pushes == {"happy": 1.5 * 5.0, "sad": 1.5}  # the default weights: happy 5, the others 1
    db = build_batch(teacher, teacher, cfg, batch, f, 0, torch.Generator().manual_seed(0), None, pushes)
    assert db.guided.all()
    assert (db.neutral_context is not None) is (emotion == "happy")  # no neutral pass: nothing to push
    sched = FlowMatchSchedule(shift=cfg.shift)
    _, x0 = teacher_trajectory(teacher, db, noise[0], cfg, sched, guidance=0.5, noise=noise)
    torch.testing.assert_close(x0, captured[0].float(), atol=1e-4, rtol=1e-4)
    _, unguided = teacher_trajectory(teacher, db, noise[0], cfg, sched, guidance=0.0, noise=noise)
    assert (unguided - captured[0]).abs().max() > 1e-3  # the comparison can fail: guidance is in the target
    if emotion == "happy":  # ... and so is the emotion's push
        unpushed = build_batch(teacher, teacher, cfg, batch, f, 0, torch.Generator().manual_seed(0), None)
        _, x0_unpushed = teacher_trajectory(teacher, unpushed, noise[0], cfg, sched, guidance=0.5, noise=noise)
        assert (x0_unpushed - captured[0]).abs().max() > 1e-3
