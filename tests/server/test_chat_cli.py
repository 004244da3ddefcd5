"""`liveidol chat console` as a separate process: typed commands reach a running backend over /control
(token from the token file), play one after the other, and the process ends once its input is played out."""

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
    out, _ = await asyncio.wait_for(proc.communicate(b"!blink\n!nod\nhello there\n"), 60)
    text = out.decode()
    assert proc.returncode == 0, text
    assert TOKEN not in text  # the token is never printed
    acts = [r for r in engine.session.log.records() if r.kind == "act" and r.source == "control"]
    assert [r.argument for r in acts] == ["blink", "nod"], text  # in order; the chatter is no command
    # the process left only after the director's queue played out, so both have been on screen by then
    assert [r.outcome for r in acts] == ["shown", "shown"]
    assert acts[1].arrival - acts[0].arrival >= 0.7  # one action at a time: nod waited for the blink (0.8 s)
