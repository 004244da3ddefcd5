"""A test that hangs ends the run with a failure that says where it waits (tests/timeouts.py), instead of stalling
CI. A real pytest process runs an async test that waits forever for a reply, under a 2 s timeout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.requires import need_modules

ROOT = Path(__file__).resolve().parents[1]

HANGING = '''
import asyncio


async def wait_for_a_reply_that_never_comes(reply: asyncio.Future) -> None:
    await reply


async def test_stuck() -> None:
    reply = asyncio.get_running_loop().create_future()
    await asyncio.create_task(wait_for_a_reply_that_never_comes(reply), name="the-stuck-reader")
'''


def test_pyproject_bounds_every_test() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    assert 'timeout = 300\ntimeout_method = "thread"' in text
    assert '"pytest-timeout>=2.3"' in text  # in the dev extra, which `./run test` installs


def test_a_hanging_async_test_fails_with_its_tasks_stacks(tmp_path: Path) -> None:
    need_modules("pytest_timeout", install="pip install -e '.[dev]'")
    (tmp_path / "pytest.ini").write_text("[pytest]\nasyncio_mode = auto\ntimeout = 2\ntimeout_method = thread\n")
    (tmp_path / "test_hang.py").write_text(HANGING)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")} | {"PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.timeouts",
                           "test_hang.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "test_hang.py::test_stuck ran past the 2 s timeout" in out, out
    assert "pending asyncio task(s)" in out and "the-stuck-reader" in out, out
    assert "in wait_for_a_reply_that_never_comes" in out, out  # the await it is stuck in, not just epoll
    assert "Stack of" in out, out  # pytest-timeout's dump of the threads followed
