"""`liveidol ...`: parse flags, load the config, run one subcommand.

    liveidol serve [--config F] [--set key=value ...] [--port N] [--character NAME] [--voice] [--camera [SOURCE]]
    liveidol bench [--seconds S] [--live] [--set key=value ...]  one JSON line of speed and memory figures
    liveidol train {autoencoder,dit,selfforcing,probe,export,import} --run DIR [--minutes M] [--anneal] [--kernel K] [--[no-]compile]
    liveidol eval [--checkpoint F] [--commands N] [--minutes M] [--seed N]
    liveidol obs setup [--host H] [--port P] [--new-scene]
    liveidol chat {twitch CHANNEL | bilibili ROOM | console}
    liveidol config [--check F]                                 print the documented defaults / check a file

Errors in the configuration or in flags print one line (no traceback) and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from backend.config import Config, ConfigError, load_config

__all__ = ["main"]

log = logging.getLogger(__name__)


class CliError(Exception):
    """A user error on the command line or in a file; printed as one line."""


def _parse_set(items: Sequence[str]) -> dict[str, Any]:
    """`--set model.steps=2 --set server.host="0.0.0.0"`: values are TOML literals, bare words are strings."""
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
    return out


def _config(args: argparse.Namespace, **flags: Any) -> Config:
    overrides = _parse_set(getattr(args, "set", []) or [])
    overrides.update({k: v for k, v in flags.items() if v is not None})
    return load_config(Path(args.config) if args.config else None, overrides)


def _setup_logging(level: str) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(level=level.upper(), format="%(message)s", datefmt="[%X]",
                        handlers=[RichHandler(show_path=False, rich_tracebacks=False)])


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="config file (default: configs/default.toml)")
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
    p.add_argument("--seconds", type=float, default=10.0, help="how long to generate (default 10)")
    p.add_argument("--live", action="store_true",
                   help="run the whole engine in real time with a command every 2 s: FPS, jitter, command latency")
    p.add_argument("--checkpoint", help="'builtin', 'random' or a checkpoint path")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])

    p = sub.add_parser("train", help="train the default model (resumable steps of at most --minutes)")
    _add_common(p)
    p.add_argument("stage", choices=["autoencoder", "dit", "selfforcing", "probe", "export", "import"],
                   help="import: seed a new run from --checkpoint (default: the shipped weights) to train on")
    p.add_argument("--run", default="runs/default", help="run directory holding checkpoints and logs")
    p.add_argument("--minutes", type=float, default=9.0, help="stop and save after this long (default 9)")
    p.add_argument("--anneal", action="store_true",
                   help="dit/selfforcing: decay the learning rate to 10%% by the end of this step (before export)")
    p.add_argument("--checkpoint", help="import: the checkpoint to start from (default 'builtin', the shipped weights)")
    p.add_argument("--kernel", choices=["auto", "flex", "sdpa"], default="auto",
                   help="dit/selfforcing: masked attention kernel; auto = block-sparse flex attention on CUDA, SDPA on CPU")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="dit/selfforcing: torch.compile the DiT blocks (default: on CUDA, 1.75x faster steps on an H100)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])

    p = sub.add_parser("eval", help="evaluate action following, identity and temporal stability, speed")
    _add_common(p)
    p.add_argument("--checkpoint", help="'builtin', 'random' or a checkpoint path")
    p.add_argument("--commands", type=int, default=100, help="random commands to test (default 100)")
    p.add_argument("--minutes", type=float, default=30.0, help="minutes of video for the identity test")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the command plan and identity script (another seed = a held-out plan)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])

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

    p = sub.add_parser("config", help="print the documented default config, or check a file")
    p.add_argument("--check", metavar="FILE", help="validate FILE and exit")
    return parser


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors that mean "fix your input or install something", printed as one line (no traceback).
    Only from modules that import here (a training machine may lack the streaming packages)."""
    import importlib

    found: list[type[Exception]] = []
    for module, name in (("backend.model.checkpoint", "CheckpointError"), ("backend.model.generator", "GeneratorError"),
                         ("backend.training.evaluate", "EvalError"), ("backend.remote", "RemoteError"),
                         ("backend.server.auth", "AuthError"), ("backend.server.server", "ServerError"),
                         ("backend.voice.errors", "VoiceError"), ("obs_plugin.setup", "ObsSetupError"),
                         ("backend.perception.camera", "CameraError"),
                         ("backend.perception.landmarks", "PerceptionUnavailable"),
                         ("backend.perception.mood", "SentimentUnavailable")):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except ImportError:
            continue
    return tuple(found)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except (ConfigError, CliError, *_user_errors()) as exc:
        print(f"liveidol: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "config":
        from backend.config import default_toml

        if args.check:
            load_config(Path(args.check))
            print(f"{args.check}: ok")
        else:
            sys.stdout.write(default_toml())
        return 0

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
        cfg = _config(args, **{"model.checkpoint": args.checkpoint, "model.device": args.device})
        from backend.bench import run_bench, run_live_bench

        result = run_live_bench(cfg, seconds=args.seconds) if args.live else run_bench(cfg, seconds=args.seconds)
        print(json.dumps(result), flush=True)
        return 0

    if args.command == "train":
        cfg = _config(args, **{"model.device": args.device, "model.checkpoint": args.checkpoint})
        _setup_logging(cfg.log_level)
        from backend.training.train import run_stage

        return run_stage(cfg, args.stage, Path(args.run), minutes=args.minutes, anneal=args.anneal,
                         kernel=args.kernel, compile=args.compile)

    if args.command == "eval":
        cfg = _config(args, **{"model.checkpoint": args.checkpoint, "model.device": args.device})
        _setup_logging(cfg.log_level)
        from backend.training.evaluate import run_eval

        result = run_eval(cfg, commands=args.commands, minutes=args.minutes, seed=args.seed)
        print(json.dumps(result), flush=True)
        return 0

    if args.command == "obs":
        cfg = _config(args, **{"obs.host": args.host, "obs.port": args.port, "obs.scene": args.scene})
        _setup_logging(cfg.log_level)
        from backend.app import obs_setup

        return obs_setup(cfg, url=args.url, new_scene=args.new_scene)

    if args.command == "chat":
        flags: dict[str, Any] = {}
        if args.platform == "twitch":
            flags["chat.twitch.channel"] = args.channel
        elif args.platform == "bilibili":
            flags["chat.bilibili.room_id"] = args.room
        cfg = _config(args, **flags)
        _setup_logging(cfg.log_level)
        from backend.app import chat

        return chat(cfg, args.platform)

    raise CliError(f"unknown command {args.command}")  # pragma: no cover - argparse refuses first


if __name__ == "__main__":
    sys.exit(main())
