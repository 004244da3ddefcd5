"""`liveidol ...`: parse flags, load the config, run one subcommand.

    liveidol serve [--config F] [--set key=value ...] [--port N] [--character NAME] [--voice] [--camera [SOURCE]]
    liveidol bench [--seconds S] [--live] [--set key=value ...]  one JSON line of speed and memory figures
    liveidol bench --live --minutes N                          a soak: memory slope, stalls, repeated frames
    liveidol bench --model wan-1.3b --stages [--fixtures DIR]    the open tier's speed by stage, and each approximation's error
    liveidol train {autoencoder,dit,selfforcing,distill,probe,export,import} --run DIR [--minutes M] [--anneal] [--kernel K] [--[no-]compile] [--out F] [--dit-only] [--teacher-steps N]
                   [--rollout-share P] [--rollout-latents N] [--context-lag N] [--lr PEAK] [--critic [--critic-weight W]]
                   [--one-step-share P]
                   [--checkpoint F [--teacher T | --grow | --repatch | --repredict]]
    liveidol eval [--checkpoint F] [--commands N] [--minutes M] [--seed N] [--character NAME | --all-characters]
                  [--steps 1,2,3,4] [--chunks 1,2] [--stride N] [--no-quality] [--sheet PATH.png]
    liveidol obs setup [--host H] [--port P] [--new-scene]
    liveidol chat {twitch CHANNEL | bilibili ROOM | console}
    liveidol config [--check F]                                 print the documented defaults / check a file
    liveidol replay LOG [--session ID] [--out DIR] [--frames N]  re-render a session from its input log
    liveidol models {list | pull NAME | verify [NAME ...]}      the Wan tier's open weights (~/.cache/liveidol/models)

``serve`` and ``bench`` take ``--model wan-1.3b`` (configs/models/wan-1.3b.toml: the Wan2.1 tier's sizes and
sampling) before any ``--set``.

Errors in the configuration or in flags print one line (no traceback) and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from backend.config import Config, load_config
from backend.errors import LiveIdolError

__all__ = ["main"]

log = logging.getLogger(__name__)


class CliError(LiveIdolError):
    """A user error on the command line or in a file; printed as one line."""


def _parse_set(items: Sequence[str], origins: dict[str, str] | None = None) -> dict[str, Any]:
    """`--set model.steps=2 --set server.host="0.0.0.0"`: values are TOML literals, bare words are strings.

    ``origins`` (if given) receives each key's flag as typed, for errors that name it."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise CliError(f"--set {item!r}: expected key=value, e.g. --set model.steps=2")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        out[key.strip()] = value
        if origins is not None:
            origins[key.strip()] = f"--set {item}"
    return out


def _int_list(text: str) -> list[int]:
    """`1,2,4` -> [1, 2, 4] (argparse type: a bad value is reported as a usage error naming the flag)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers, e.g. 1,2,4") from None
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r}: expected at least one integer")
    return values


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _preset(name: str | None) -> dict[str, Any]:
    """``--model NAME``: configs/models/NAME.toml as dotted overrides (below --set and the flags)."""
    if not name:
        return {}
    from backend.config import CONFIG_DIR, REPO_ROOT

    path = CONFIG_DIR / "models" / f"{name}.toml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in (CONFIG_DIR / "models").glob("*.toml")))
        raise CliError(f"--model {name}: unknown model (known: {known})")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise CliError(f"{path}: not valid TOML: {exc}") from None
    base = data.pop("base", None)  # a preset over another preset (e.g. wan-1.3b-live over wan-1.3b)
    if base is not None and (not isinstance(base, str) or base == name):
        raise CliError(f"{path}: base must name another preset, got {base!r}")
    flat = _flatten(data)
    checkpoint = flat.get("model.checkpoint")
    if isinstance(checkpoint, str) and checkpoint not in ("", "builtin", "random") and not Path(checkpoint).is_absolute():
        flat["model.checkpoint"] = str(REPO_ROOT / checkpoint)  # a preset's file is the repository's
    return {**(_preset(base) if base else {}), **flat}


def _config(args: argparse.Namespace, **flags: Any) -> Config:
    origins: dict[str, str] = {}
    model = getattr(args, "model", None)
    overrides = _preset(model)
    origins.update({k: f"--model {model} (configs/models/{model}.toml)" for k in overrides})
    overrides.update(_parse_set(getattr(args, "set", []) or [], origins))
    for key, value in flags.items():
        if value is not None:
            overrides[key] = value
            origins[key] = "command line"
    return load_config(Path(args.config) if args.config else None, overrides, origins=origins)


def _finite(text: str) -> float:
    """argparse type: a finite number (nan and inf are refused like any other bad value)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _setup_logging(level: str) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(level=level.upper(), format="%(message)s", datefmt="[%X]",
                        handlers=[RichHandler(show_path=False, rich_tracebacks=False)])


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="config file (default: configs/default.toml)")
    if p.prog.split()[-1] in ("serve", "bench", "train", "eval"):
        p.add_argument("--model", metavar="NAME", help="a model preset from configs/models/ (e.g. wan-1.3b)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set model.steps=2 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="liveidol", description="A real-time AR-diffusion virtual idol for live streams.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="start the idol and serve frames to OBS")
    _add_common(p)
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="websocket port (default 8765)")
    p.add_argument("--character", help="character name in configs/characters/ or a .toml path")
    p.add_argument("--checkpoint", help="'builtin', 'random' or a checkpoint path")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--voice", action="store_true", default=None, help="listen to the microphone and speak")
    p.add_argument("--twitch", metavar="CHANNEL", help="also read this Twitch channel's chat")
    p.add_argument("--bilibili", metavar="ROOM", type=int, help="also read this Bilibili room's danmaku")
    p.add_argument("--camera", nargs="?", const="", default=None, metavar="OBS_SOURCE",
                   help="watch the streamer's camera (perception.enabled); optionally name the OBS source showing it")

    p = sub.add_parser("bench", help="measure generation speed and memory; prints one JSON line")
    _add_common(p)
    p.add_argument("--seconds", type=_finite, default=10.0, help="how long to generate (default 10)")
    p.add_argument("--live", action="store_true",
                   help="run the whole engine in real time with a command every 2 s: FPS, jitter, command latency")
    p.add_argument("--minutes", type=_finite,
                   help="with --live: a soak of this many minutes: memory slope, stalls, repeated frames, distinct FPS")
    p.add_argument("--checkpoint", help="'builtin', 'random' or a checkpoint path")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--stages", action="store_true",
                   help="with --model: the speed harness at the tier's sizes (random weights): per-stage times, FPS, "
                        "prompt-switch latency, the ratio to a dense eager pass, each approximation's error")
    p.add_argument("--fixtures", metavar="DIR",
                   help="with --model: also measure the approximations on the equivalence fixtures in DIR "
                        "(tests/fixtures/wan_causal_ref)")

    p = sub.add_parser("train", help="train the default model (resumable steps of at most --minutes)")
    _add_common(p)
    p.add_argument("stage", choices=["autoencoder", "hires", "dit", "selfforcing", "distill", "probe", "export",
                                     "import"],
                   help="import: seed a new run from --checkpoint (default: the shipped weights) to train on")
    p.add_argument("--run", default="runs/default", help="run directory holding checkpoints and logs")
    p.add_argument("--minutes", type=_finite, default=9.0, help="stop and save after this long (default 9)")
    p.add_argument("--anneal", action="store_true",
                   help="dit/selfforcing: decay the learning rate to 10%% by the end of this step (before export)")
    p.add_argument("--checkpoint", help="import: the checkpoint to start from (default 'builtin', the shipped weights)")
    p.add_argument("--teacher", metavar="PATH.safetensors",
                   help="import: go on distilling --checkpoint (a distilled export) with this teacher, the DiT it was "
                        "distilled from")
    p.add_argument("--grow", action="store_true",
                   help="import: deepen the checkpoint's DiT to model.dit.num_layers (--set model.dit.num_layers=N; "
                        "new blocks start as pass-throughs); give the run's later stages the same --set")
    p.add_argument("--repatch", action="store_true",
                   help="import: seed the DiT of a run that trained its own autoencoder on a finer latent grid from "
                        "--checkpoint's blocks (the patch embedding and head start fresh; same tokens a frame)")
    p.add_argument("--repredict", action="store_true",
                   help="import: the checkpoint's DiT predicts another thing than model.dit.prediction (--set "
                        "model.dit.prediction=x0): its head starts at zero, the rest goes on")
    p.add_argument("--rollout-share", type=_finite, metavar="P",
                   help="selfforcing: the share of steps whose context is the model's own few-step rollout "
                        "(default 0.3)")
    p.add_argument("--rollout-latents", type=int, metavar="N",
                   help="selfforcing: the most latent frames such a rollout runs before the frames the loss sees "
                        "(default 6; the window is model.window_frames)")
    p.add_argument("--context-lag", type=int, default=0, metavar="N",
                   help="dit/selfforcing: in half the steps on the world's context, hold it still for up to N latent "
                        "frames after each command switch, so the model learns to start a motion from the command "
                        "(default 0: off)")
    p.add_argument("--lr", type=_finite, metavar="PEAK",
                   help="dit/selfforcing: a warm restart of the learning rate: up to PEAK over 200 steps, then a "
                        "cosine to 10%% of it by the end of this call, --anneal's decay built in (default: the "
                        "planned schedule, 4e-4 down to 4e-5 over 40,000 steps)")
    p.add_argument("--teacher-steps", type=int, choices=[1, 2, 3, 4],
                   help="distill: the student learns the end point of the teacher's sampler at this many steps, from "
                        "every step count (default 4, or what the run started with)")
    p.add_argument("--out", metavar="PATH.safetensors",
                   help="export: write the checkpoint here (default: the shipped weights' path)")
    p.add_argument("--dit-only", action="store_true",
                   help="export: write the DiT alone, naming its autoencoder by fingerprint (a teacher kept small)")
    p.add_argument("--autoencoder", metavar="PATH.safetensors",
                   help="import: where a DiT-only checkpoint or teacher takes its autoencoder from (default: the "
                        "shipped weights; the fingerprints must agree)")
    p.add_argument("--critic", action="store_true",
                   help="hires: sharpen the detail decoder with a patch discriminator (crisper, but can dither edges); "
                        "dit/selfforcing: a latent critic (heads over a frozen copy of the DiT) judges the predicted "
                        "clean latents against the world's, so the 1-step picture commits to a pose instead of the mean")
    p.add_argument("--critic-weight", type=_finite, metavar="W",
                   help="dit/selfforcing with --critic: the adversarial term's weight beside the squared error, after "
                        "the balance of their gradients (default 0.5)")
    p.add_argument("--one-step-share", type=_finite, metavar="P",
                   help="dit/selfforcing: this share of the chunks start from pure noise, the 1-step sampler's state, "
                        "on top of the stage's timesteps (default 0; 0.5 with --critic)")
    p.add_argument("--decoder", choices=["hires", "mid"], default="hires",
                   help="hires: which detail decoder to train: 'hires' (960x540, hires.pt) or 'mid' (480x270, the "
                        "CPU's; mid.pt)")
    p.add_argument("--kernel", choices=["auto", "flex", "sdpa"], default="auto",
                   help="dit/selfforcing: masked attention kernel; auto = block-sparse flex attention on CUDA, SDPA on CPU")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="dit/selfforcing: torch.compile the DiT blocks (default: on CUDA, 1.75x faster steps on an H100)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])

    p = sub.add_parser("eval", help="evaluate action following, identity and temporal stability, speed")
    _add_common(p)
    p.add_argument("--checkpoint", help="'builtin', 'random' or a checkpoint path")
    p.add_argument("--commands", type=int, help="random commands to test per character (default 100; 150 with "
                                                 "--all-characters, for a per-character rate within about +-4%%)")
    p.add_argument("--minutes", type=_finite, default=30.0, help="minutes of video for the identity test")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the command plan and identity script (another seed = a held-out plan)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--character", help="evaluate this character (configs/characters/NAME.toml)")
    p.add_argument("--all-characters", action="store_true",
                   help="evaluate aiko, rin and hana in turn (every emotion issued equally often)")
    p.add_argument("--steps", type=_int_list, help="compute levels: denoising steps, e.g. 1,2,3,4 (default: model.steps)")
    p.add_argument("--chunks", type=_int_list, help="compute levels: latent frames per chunk, e.g. 1,2 (default: model.chunk_frames)")
    p.add_argument("--stride", type=int, default=2, help="measure picture quality on every Nth frame (default 2)")
    p.add_argument("--no-quality", action="store_true", help="skip the picture-quality measures")
    p.add_argument("--sheet", metavar="PATH.png", help="also write a contact sheet of every action at 1 and 4 steps")
    p.add_argument("--balance-emotions", action="store_true",
                   help="issue every emotion equally often (default: neutral about two thirds of the commands)")
    p.add_argument("--face-reader", metavar="FILE", help="read emotions with this face reader (default: the shipped "
                   "backend/weights/face_reader.safetensors; 'none': the probe's emotion head)")
    p.add_argument("--framing", choices=["half", "whole"], help="evaluate the characters framed so (default: as each "
                   "character file says; the checkpoint must have been trained on it)")

    p = sub.add_parser("obs", help="OBS helpers")
    obs_sub = p.add_subparsers(dest="obs_command", required=True)
    q = obs_sub.add_parser("setup", help="add the LiveIdol source to a running OBS over obs-websocket")
    _add_common(q)
    q.add_argument("--host")
    q.add_argument("--port", type=int)
    q.add_argument("--scene", help="scene to add the source to (default: the current scene)")
    q.add_argument("--new-scene", action="store_true", help="create a 'LiveIdol' scene for it")
    q.add_argument("--url", help="backend stream URL (default ws://127.0.0.1:<server.port>/stream)")

    p = sub.add_parser("chat", help="connect a chat platform to a running `liveidol serve`")
    chat_sub = p.add_subparsers(dest="platform", required=True)
    q = chat_sub.add_parser("twitch", help="read a Twitch channel's chat")
    _add_common(q)
    q.add_argument("channel")
    q = chat_sub.add_parser("bilibili", help="read a Bilibili room's danmaku")
    _add_common(q)
    q.add_argument("room", type=int)
    q = chat_sub.add_parser("console", help="type commands as the streamer or a viewer")
    _add_common(q)

    p = sub.add_parser("replay", help="re-render a stream session from its input log (engine.log_path) and seed")
    p.add_argument("--config", help="config file the session ran with (default: configs/default.toml); the log's "
                   "model settings, fps and character override it")
    p.add_argument("log", help="the input log (JSON lines)")
    p.add_argument("--session", default="", help="session id (default: the last session in the log)")
    p.add_argument("--out", help="write the frames here as PNG files (frame_000000.png, ...)")
    p.add_argument("--frames", type=int, help="stop after this many frames")

    p = sub.add_parser("models", help="the Wan tier's open weights: list, pull (Hugging Face) and verify")
    models_sub = p.add_subparsers(dest="models_command", required=True)
    models_sub.add_parser("list", help="the known recipes, where they go and what is there")
    q = models_sub.add_parser("pull", help="download one recipe into the cache and verify it")
    q.add_argument("name")
    q = models_sub.add_parser("verify", help="check sizes and sha256 of pulled recipes")
    q.add_argument("names", nargs="*")

    p = sub.add_parser("config", help="print the documented default config, or check a file")
    p.add_argument("--check", metavar="FILE", help="validate FILE and exit")
    return parser


def _calm_openmp() -> None:
    """OpenMP threads wait passively (sleep) instead of spinning between torch ops, unless the user chose.

    The streaming engine runs torch in its own thread beside the event loop; on a small CPU shared with
    other work, spinning OpenMP threads starve both: measured on the 2-core machine at load ~10, 6 chunks
    took 3-24 s spinning and 1.4 s passive. It must be set before torch loads (it is read once)."""
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("serve", "bench"):
        _calm_openmp()
    try:
        return _dispatch(args)
    except LiveIdolError as exc:  # ConfigError, CheckpointError, AuthError, ServerError, VoiceError ...
        print(f"liveidol: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "replay":
        from backend.replay import replay

        result = replay(Path(args.config) if args.config else None, Path(args.log), session_id=args.session,
                        out_dir=Path(args.out) if args.out else None, max_frames=args.frames)
        print(json.dumps(result), flush=True)
        return 0

    if args.command == "config":
        from backend.config import default_toml

        if args.check:
            load_config(Path(args.check))
            print(f"{args.check}: ok")
        else:
            sys.stdout.write(default_toml())
        return 0

    if args.command == "models":
        from backend.model.wan.hub import run_models

        return run_models(args.models_command, getattr(args, "name", None) or getattr(args, "names", None))

    if args.command == "serve":
        cfg = _config(args, **{"server.host": args.host, "server.port": args.port, "character": args.character,
                               "model.checkpoint": args.checkpoint, "model.device": args.device,
                               "voice.enabled": args.voice, "chat.twitch.channel": args.twitch,
                               "chat.bilibili.room_id": args.bilibili,
                               "perception.enabled": True if args.camera is not None else None,
                               "perception.obs_source": args.camera or None})
        _setup_logging(cfg.log_level)
        from backend.app import serve

        return serve(cfg)

    if args.command == "bench":
        flags = {"model.checkpoint": args.checkpoint, "model.device": args.device}
        if args.model and args.stages:  # the tier's speed harness: its sizes under --set and the flags
            from backend.perf import format_table, preset_overrides, run_model_bench

            given = {k for k in _parse_set(args.set or [])} | {k for k, v in flags.items() if v is not None}
            flags = {**{k: v for k, v in preset_overrides(args.model).items() if k not in given},
                     **{k: v for k, v in flags.items() if v is not None}}
            cfg = _config(args, **flags)
            _setup_logging(cfg.log_level)
            result = run_model_bench(cfg, seconds=args.seconds, fixtures=Path(args.fixtures) if args.fixtures else None)
            print(json.dumps(result), flush=True)
            print(format_table(result), flush=True)
            return 0
        cfg = _config(args, **flags)
        from backend.bench import run_bench, run_live_bench

        if args.minutes is not None:
            if not args.live:
                raise CliError("bench --minutes needs --live (a soak runs the whole engine in real time)")
            from backend.bench import run_soak

            result = run_soak(cfg, minutes=args.minutes,
                              progress=lambda p: print(json.dumps({"soak": p}), file=sys.stderr, flush=True))
            print(json.dumps(result), flush=True)
            return 0
        result = run_live_bench(cfg, seconds=args.seconds) if args.live else run_bench(cfg, seconds=args.seconds)
        print(json.dumps(result), flush=True)
        return 0

    if args.command == "train":
        cfg = _config(args, **{"model.device": args.device, "model.checkpoint": args.checkpoint})
        _setup_logging(cfg.log_level)
        from backend.training.train import run_stage

        out = {"export_path": Path(args.out)} if args.out else {}
        return run_stage(cfg, args.stage, Path(args.run), minutes=args.minutes, anneal=args.anneal,
                         kernel=args.kernel, compile=args.compile, critic=args.critic, decoder=args.decoder,
                         teacher=args.teacher, grow=args.grow, autoencoder=args.autoencoder, dit_only=args.dit_only,
                         repatch=args.repatch, repredict=args.repredict, teacher_steps=args.teacher_steps,
                         rollout_share=args.rollout_share, rollout_latents=args.rollout_latents,
                         context_lag=args.context_lag, peak_lr=args.lr, critic_weight=args.critic_weight,
                         one_step_share=args.one_step_share, **out)

    if args.command == "eval":
        cfg = _config(args, **{"model.checkpoint": args.checkpoint, "model.device": args.device,
                               "character": args.character})
        _setup_logging(cfg.log_level)
        from backend.training.evaluate import ALL_CHARACTERS, format_table, run_eval

        extra: dict[str, Any] = {}
        if args.all_characters:
            extra["characters"] = list(ALL_CHARACTERS)
            extra["balance_emotions"] = True  # each emotion's rate on enough commands to mean something
        for key in ("steps", "chunks", "sheet", "framing"):
            if getattr(args, key) is not None:
                extra[key] = getattr(args, key)
        if args.no_quality:
            extra["quality"] = False
        if args.balance_emotions:
            extra["balance_emotions"] = True
        if args.face_reader:
            extra["face_reader"] = False if args.face_reader == "none" else args.face_reader
        commands = args.commands if args.commands is not None else (150 if args.all_characters else 100)
        if args.stride != 2:
            extra["stride"] = args.stride
        result = run_eval(cfg, commands=commands, minutes=args.minutes, seed=args.seed, **extra)
        if "characters" in result:
            print(format_table(result), file=sys.stderr, flush=True)  # for people; stdout stays one JSON line
        print(json.dumps(result), flush=True)
        return 0

    if args.command == "obs":
        cfg = _config(args, **{"obs.host": args.host, "obs.port": args.port, "obs.scene": args.scene})
        _setup_logging(cfg.log_level)
        from backend.app import obs_setup

        return obs_setup(cfg, url=args.url, new_scene=args.new_scene)

    if args.command == "chat":
        chat_flags: dict[str, Any] = {}
        if args.platform == "twitch":
            chat_flags["chat.twitch.channel"] = args.channel
        elif args.platform == "bilibili":
            chat_flags["chat.bilibili.room_id"] = args.room
        cfg = _config(args, **chat_flags)
        _setup_logging(cfg.log_level)
        from backend.app import chat

        return chat(cfg, args.platform)

    raise CliError(f"unknown command {args.command}")  # pragma: no cover - argparse refuses first


if __name__ == "__main__":
    sys.exit(main())
