"""The composition root: builds every component from the config and owns their lifecycles.

    chat bridges / voice -> Director -> Engine (generator thread) -> Server -> OBS source

``serve(cfg)`` runs the whole backend until Ctrl-C: the server opens first and shows a "starting" card
while the model loads in the generator thread, which then starts at the compute level remembered for this
device and model (``~/.cache/liveidol/compute.json``; on a CPU without one, the cheapest). ``chat(cfg, platform)`` runs one chat bridge and a
director in a separate process that sends commands to a running ``liveidol serve`` over ``/control``.
``obs_setup(cfg)`` adds the LiveIdol source to a running OBS.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np

from backend.config import Config
from backend.events import ChatEvent, Command

__all__ = ["BackgroundGenerator", "chat", "obs_setup", "serve"]

log = logging.getLogger(__name__)


class BackgroundGenerator:
    """Wraps a generator so its frames get the character's background (colour or image) when configured."""

    def __init__(self, generator: Any, character: Any) -> None:
        from backend.world.character import load_background

        self._gen = generator
        self._character = character
        self._image = load_background(character, generator.output_size)  # ConfigError naming file and key

    def __getattr__(self, name: str) -> Any:
        return getattr(self._gen, name)

    def next_chunk(self, *args: Any, **kwargs: Any) -> np.ndarray:
        from backend.world.character import apply_background

        frames = self._gen.next_chunk(*args, **kwargs)
        return apply_background(frames, self._character, self._image, premultiplied=False)


def build_generator(cfg: Config) -> tuple[Any, np.ndarray, Any]:
    """The generator (background applied), the character's reference frame, and the character.

    ``model.family = 'wan'``: the Wan-tier generator (backend/model/wan), the character's reference image (its
    ``reference_image``, else the rendered idol) becomes the sink frame; frames are opaque, so no background."""
    from backend.model.generator import Generator
    from backend.world.character import load_character
    from backend.world.reference import reference_frame

    character = load_character(cfg.character)
    if cfg.model.family == "wan":
        from backend.model.wan.generator import build_wan_generator

        wan = build_wan_generator(cfg.model, character.prompts, idle_action=cfg.engine.idle_action)
        if not character.reference_image:
            log.warning("character %s has no reference_image: the avatar is the rendered idol", character.name)
        return wan, reference_frame(character, wan.native_size), character
    generator = Generator(cfg.model)
    generator.check_framing(character.framing, character.source)
    reference = reference_frame(character, generator.native_size)
    if character.background != "transparent":
        return BackgroundGenerator(generator, character), reference, character
    return generator, reference, character


def compute_key(cfg: Config, generator: Any) -> str:
    """What the cost of a chunk depends on: the remembered compute level is kept per this key."""
    import json

    import torch

    state = getattr(generator, "state", None)
    m = cfg.model
    return json.dumps([str(getattr(state, "device", "")), str(getattr(state, "dtype", "")), torch.get_num_threads(),
                       m.family, m.checkpoint, m.steps, m.chunk_frames, m.guidance,
                       list(getattr(generator, "native_size", ())), list(generator.output_size), cfg.engine.fps],
                      separators=(",", ":"))


def generator_loading(cfg: Config, memory: Any = None, on_built: Callable[[Any], None] | None = None) -> Any:
    """A :class:`backend.engine.engine.Loading` that builds the generator (in the engine's thread) and picks
    the compute level to start at: the one ``memory`` (a ComputeMemory) recalls for it, else the cheapest
    on a CPU (the policy raises it with headroom) and the full one on CUDA. ``on_built(generator)`` is told
    of the generator (to close it later); the Wan tier's own conditions factory comes with it."""
    from backend.engine.engine import Loaded, Loading

    def load() -> Loaded:
        generator, reference, character = build_generator(cfg)
        if on_built is not None:
            on_built(generator)
        level = None
        if memory is not None:
            memory.key = compute_key(cfg, generator)
            level = memory.recall()
        device = str(getattr(getattr(generator, "state", None), "device", "cpu"))
        if level is None and not device.startswith("cuda"):
            level = (1, 1)  # clamped up to engine.min_steps / engine.min_chunk_frames
        factory = getattr(generator, "conditions_factory", None)  # the Wan tier: commands -> prompt embeddings
        return Loaded(generator, reference, character, level, factory() if factory is not None else None)

    return Loading(load, (cfg.model.output_width, cfg.model.output_height))


def replay_header(cfg: Config) -> dict[str, Any]:
    """What `liveidol replay` needs to re-render a session, for the input log's session line: the model
    section (seed, sizes, checkpoint) and the character. No secrets: those live in other sections."""
    return {"config": {"model": dataclasses.asdict(cfg.model), "character": cfg.character}}


def _bridges(cfg: Config) -> list[Any]:
    bridges: list[Any] = []
    if cfg.chat.twitch.channel:
        from chat_bridges.twitch.client import TwitchBridge, TwitchEventSubClient, resolve_token

        bridges.append(TwitchBridge(cfg.chat.twitch))
        token = resolve_token(cfg.chat.twitch)
        if token and cfg.chat.twitch.client_id:
            bridges.append(TwitchEventSubClient(cfg.chat.twitch, token))
    if cfg.chat.bilibili.room_id or cfg.chat.bilibili.open_platform_code:
        from chat_bridges.bilibili.client import BilibiliBridge

        bridges.append(BilibiliBridge(cfg.chat.bilibili, nav_url=cfg.chat.bilibili.nav_url))
    return bridges


async def _pump(bridge: Any, handle: Callable[[ChatEvent], Awaitable[Any]]) -> None:
    """Feed one bridge's events to the director until cancelled; a bridge failure never stops the stream."""
    name = getattr(bridge, "platform", type(bridge).__name__)
    try:
        async with bridge:
            async for event in bridge.events():
                try:
                    await handle(event)
                except Exception:
                    log.exception("director failed on an event platform=%s", name)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.error("chat bridge stopped platform=%s error=%s", name, exc)


def _chat_status(bridges: list[Any]) -> list[dict[str, Any]]:
    """Each bridge's :class:`chat_bridges.base.BridgeStatus` (``failed`` with the reason after a refused login)."""
    return [b.status.as_dict() for b in bridges if getattr(b, "status", None) is not None]


def _replies(bridges: list[Any]) -> Callable[[str, str], Awaitable[bool]]:
    by_platform = {getattr(b, "platform", ""): b for b in bridges}

    async def reply(platform: str, text: str) -> bool:
        bridge = by_platform.get(platform)
        return bool(bridge and await bridge.send_reply(text))

    return reply


@contextlib.asynccontextmanager
async def _stop_on_signals() -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        yield stop
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)


async def _loaded_or_stopped(engine: Any, stop: asyncio.Event) -> bool:
    """True once the engine's generator is built, False if ``stop`` came first; raises what loading raised."""
    loaded = asyncio.ensure_future(engine.wait_loaded())
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({loaded, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (loaded, stopped):
            task.cancel()
        await asyncio.gather(loaded, stopped, return_exceptions=True)
    if loaded.cancelled():
        return False
    loaded.result()  # the load error, if any: the backend stops with it
    return True


async def run_backend(cfg: Config, generator: Any, reference: np.ndarray | None, character: Any, *,
                      stop: asyncio.Event, ready: Callable[[Any], None] | None = None,
                      remember_level: Callable[[int, int], None] | None = None) -> None:
    """Engine + server + director + chat bridges (+ voice) until ``stop`` is set. ``generator`` may be a
    :class:`backend.engine.engine.Loading` (``reference`` and ``character`` then come from it): the server
    opens and streams the starting card while it loads; voice and chat start once it is loaded."""
    from backend.director.director import Director
    from backend.engine.engine import Engine
    from backend.server.auth import announce_token, load_or_create_token
    from backend.server.server import Server

    token = load_or_create_token(cfg.server.token_file or None)
    listen = None
    bridges = _bridges(cfg)
    async with contextlib.AsyncExitStack() as stack:
        factory = getattr(generator, "conditions_factory", None)  # the Wan tier: commands -> prompt embeddings
        engine = Engine(cfg.engine, generator, reference, max_steps=cfg.model.steps,
                        max_chunk_frames=cfg.model.chunk_frames, sample_rate=cfg.voice.sample_rate, tts=None,
                        character=character, log_header=replay_header(cfg), remember_level=remember_level,
                        conditions=factory() if factory is not None else None)
        director = await stack.enter_async_context(Director(cfg.director, engine.submit, reply=_replies(bridges),
                                                            idle_action=cfg.engine.idle_action,
                                                            free_text_prompts=cfg.model.family == "wan"))
        server = await stack.enter_async_context(Server(cfg.server, engine, token=token, state_fn=director.state,
                                                        chat_fn=lambda: _chat_status(bridges)))
        # The engine starts (and its thread begins loading torch and the model) only once the port is open:
        # loading holds the interpreter for seconds at a time. It stops first (closing the streams).
        await stack.enter_async_context(engine)
        announce_token(token)  # on the terminal, once; never into a log handler
        log.info("LiveIdol is live: stream=%s/stream control=%s/control character=%s", server.url, server.url,
                 cfg.character)
        handle, heard = await _perceive(cfg, director, stack)
        if ready is not None:
            ready(server)
        if not await _loaded_or_stopped(engine, stop):
            return
        if cfg.voice.enabled:
            from backend.voice.service import build_voice

            engine.tts, listen = await asyncio.to_thread(build_voice, cfg.voice, engine.session.character,
                                                         blocked_words=cfg.director.blocked_words)
            if listen is not None:
                server.push_to_talk = listen.set_push_to_talk
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(_pump(b, handle)) for b in bridges]
            if listen is not None:
                tasks.append(tg.create_task(listen(director.handle_streamer, *([heard] if heard else []))))
            await stop.wait()
            for task in tasks:
                task.cancel()


async def _perceive(cfg: Config, director: Any, stack: contextlib.AsyncExitStack
                   ) -> tuple[Callable[[ChatEvent], Awaitable[Any]], Callable[[Any], Awaitable[Any]] | None]:
    """Camera perception and the mood ([perception]), when on: the chat handler to use (the mood taps it),
    and what hears the streamer's every utterance (None without the mood)."""
    pcfg = cfg.perception
    director.emotion_hold_s = pcfg.mood_hold_s
    if pcfg.enabled:
        from backend.perception.camera import open_camera
        from backend.perception.service import Perception

        async def react(reaction: Any) -> Any:
            return await director.handle_reaction(reaction.kind, reaction.argument, reason=reaction.name,
                                                  max_wait_s=pcfg.max_wait_s)

        await stack.enter_async_context(Perception(pcfg, lambda: open_camera(pcfg, cfg.obs), react))
    if not pcfg.mood:
        return director.handle, None
    from backend.perception.service import Mood

    mood = await stack.enter_async_context(Mood(pcfg, director.handle_mood))

    async def heard(utterance: Any) -> Any:
        return await mood.observe(utterance.text, "voice")

    return mood.tap(director.handle), heard


def serve(cfg: Config) -> int:
    """`liveidol serve`: run until Ctrl-C. The port opens at once; the model loads behind the starting card."""
    from backend.engine.compute import ComputeMemory

    memory = ComputeMemory(ComputeMemory.default_path())
    built: list[Any] = []

    async def main() -> None:
        async with _stop_on_signals() as stop:
            await run_backend(cfg, generator_loading(cfg, memory, built.append), None, None, stop=stop,
                              remember_level=memory.remember)

    try:
        asyncio.run(main())
    finally:
        for generator in built:
            close = getattr(generator, "close", None)  # the Wan tier's text-encoder thread
            if close is not None:
                close()
    log.info("LiveIdol stopped")
    return 0


def chat(cfg: Config, platform: str) -> int:
    """`liveidol chat PLATFORM`: a bridge + director in this process, commands to a running backend."""
    from backend.director.director import Director
    from backend.remote import ControlClient, backend_url, client_tls
    from backend.server.auth import announce_token, load_or_create_token

    token = load_or_create_token(cfg.server.token_file or None)
    announce_token(token)
    if platform == "console":
        from chat_bridges.console.client import ConsoleBridge

        bridges: list[Any] = [ConsoleBridge()]
    else:
        bridges = [b for b in _bridges(cfg) if getattr(b, "platform", "") == platform]
    url = backend_url(cfg.server, "/control")

    async def main() -> None:
        async with _stop_on_signals() as stop, ControlClient(url, token.value, tls=client_tls(cfg.server)) as control:
            async def sink(command: Command) -> object:
                return await control.command(command)

            async with Director(cfg.director, sink, reply=_replies(bridges)) as director:
                pumps = [asyncio.create_task(_pump(b, director.handle)) for b in bridges]
                stopped = asyncio.create_task(stop.wait())
                played_out = asyncio.Event()

                def on_state(state: dict[str, Any]) -> None:
                    if not state["now"] and not state["next"]:
                        played_out.set()
                    else:
                        played_out.clear()

                unsubscribe = director.subscribe(on_state)
                on_state(director.state())
                drained: asyncio.Task[Any] | None = None
                try:
                    bridges_done: asyncio.Future[Any] = asyncio.gather(*pumps)
                    await asyncio.wait([stopped, bridges_done], return_when=asyncio.FIRST_COMPLETED)
                    # the bridges ended (e.g. console input closed): play the queue out, then leave
                    drained = asyncio.create_task(played_out.wait())
                    await asyncio.wait([stopped, drained], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    unsubscribe()
                    tasks = [*pumps, stopped, *([drained] if drained else [])]
                    for task in tasks:
                        task.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())
    return 0


def obs_setup(cfg: Config, *, url: str | None, new_scene: bool) -> int:
    """`liveidol obs setup`."""
    from backend.remote import backend_url
    from obs_plugin.setup import SCRIPT_PATH, run_setup

    stream_url = url or backend_url(cfg.server, "/stream")
    # /stream needs no token; the control token must not end up in OBS's scene collection.
    return run_setup(cfg.obs, SCRIPT_PATH, stream_url, "", new_scene)
