"""`liveidol chat console` as a separate process: typed commands reach a running backend over /control
(token from the token file), play one after the other -- each next one when the backend says the last one ended --
and the process ends once its input is played out."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from tests.server.server_helpers import TOKEN


async def test_console_chat_process_drives_a_running_backend(running, tmp_path: Path) -> None:
    engine, server = running
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "backend.cli", "chat", "console", "--set", f"server.port={server.port}",
        "--set", f'server.token_file="{token_file}"', "--set", "director.global_cooldown_s=0",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(b"!blink\n!nod\nhello there\n"), 60)
    finally:
        if proc.returncode is None:  # timed out: end it, so that no client is left connected to the server
            proc.kill()
            await asyncio.wait_for(proc.wait(), 10)
    text = out.decode()
    assert proc.returncode == 0, text
    assert TOKEN not in text  # the token is never printed
    # the backend said when each ended (command events over /control), not the director's estimate
    assert text.count("decision=finished reason=played") == 2 and "duration_elapsed" not in text, text
    acts = [r for r in engine.session.log.records() if r.kind == "act" and r.source == "control"]
    assert [r.argument for r in acts] == ["blink", "nod"], text  # in order; the chatter is no command
    # the process left only after the director's queue played out, so both have been on screen by then
    assert [r.outcome for r in acts] == ["shown", "shown"]
    assert acts[1].arrival - acts[0].arrival >= 0.7  # one action at a time: nod waited for the blink (0.8 s)


async def test_a_remote_director_cancels_a_deleted_command_over_control(running) -> None:
    """`liveidol chat ...` runs its director in another process: its sink is a /control client, so the id the
    engine knows differs from the director's; a deletion after the start still cancels it (over the socket)."""
    import dataclasses

    from backend.config import DirectorConfig
    from backend.director import Director
    from backend.events import Command, Deletion
    from backend.remote import ControlClient
    from tests.director.director_kit import chat

    engine, server = running
    cfg = dataclasses.replace(DirectorConfig(), user_cooldown_s=0.0, global_cooldown_s=0.0, dedup_window_s=0.0)
    # bounded as a whole: in two full-suite runs it hung closing the director (the wake-up and the close in the
    # same instant: Python 3.11's wait_for dropped the cancel; the next test makes that ordering certain)
    async with asyncio.timeout(60), ControlClient(server.url + "/control", TOKEN) as control:
        async def sink(command: Command) -> object:
            return await control.command(command)

        async with Director(cfg, sink) as director:
            msg = chat("!wave", user="eve")
            await director.handle(msg)
            async with asyncio.timeout(10):
                while engine.status()["directive"]["action"] != "wave":  # noqa: ASYNC110 - engine state
                    await asyncio.sleep(0.02)
            decision = await director.handle(Deletion(msg.platform, msg.channel, msg.message_id))
            assert decision is not None and decision.decision == "cancelled"
            async with asyncio.timeout(10):
                while engine.status()["directive"]["action"] != "idle":  # noqa: ASYNC110 - engine state
                    await asyncio.sleep(0.02)
    assert engine.status()["commands_cancelled"] >= 1


async def test_a_remote_director_closed_as_the_end_of_its_command_arrives_closes(running) -> None:
    """The hang of the test above, made certain: the backend's word that the cancelled command ended wakes the
    director's dispatch task, and the director is closed in that same instant (the test's poll saw the idle
    action just as the event came). Python 3.11's ``asyncio.wait_for`` returned the wake-up and dropped the
    cancel then: the dispatch task ran on, and closing waited for it forever, the /control client connected."""
    import dataclasses

    from backend.config import DirectorConfig
    from backend.director import Director
    from backend.events import Command, Deletion
    from backend.remote import ControlClient, RemoteTicket
    from tests.director.director_kit import chat

    engine, server = running
    cfg = dataclasses.replace(DirectorConfig(), user_cooldown_s=0.0, global_cooldown_s=0.0, dedup_window_s=0.0)
    tickets: list[RemoteTicket] = []
    async with asyncio.timeout(60) as bound, ControlClient(server.url + "/control", TOKEN) as control:
        async def sink(command: Command) -> object:
            ticket = await control.command(command)
            tickets.append(ticket)
            return ticket

        director = Director(cfg, sink)
        async with director:
            msg = chat("!wave", user="eve")
            await director.handle(msg)
            async with asyncio.timeout(10):
                while not tickets:  # noqa: ASYNC110 - the director's task sends it
                    await asyncio.sleep(0.02)
            await director.handle(Deletion(msg.platform, msg.channel, msg.message_id))
            # the director waits on this too (its done-callback, added first, wakes the dispatch task); the
            # director is closed as the block ends, before that task has run again
            await tickets[0].finished
            assert tickets[0].ended == "cancelled"
    assert not bound.expired(), "closing the director waited for its dispatch task until the bound"
    assert director.lifecycle.value == "closed" and engine.status()["commands_cancelled"] >= 1
