"""A stuck test fails instead of stalling CI: pytest-timeout's per-test bound (``timeout`` in pyproject's pytest
config, method "thread": it dumps every thread's stack and ends the run), plus the one thing a thread dump cannot
show. An async test that waits forever sits in its event loop's epoll with every thread idle; where each pending
asyncio task waits is printed first, under the test's captured stderr.

tests/conftest.py takes the hook from here; tests/test_timeouts.py runs it on a test made to hang.
"""

from __future__ import annotations

import asyncio
import gc
import io
import sys
import threading
from typing import Any

import pytest


def pending_tasks_report() -> str:
    """Where every pending asyncio task of this process waits (their coroutine stacks), newest frame last."""
    tasks = []
    for obj in gc.get_objects():
        try:  # a lazy proxy (torch, transformers) can raise from its __class__: skip it
            if isinstance(obj, asyncio.Task) and not obj.done():
                tasks.append(obj)
        except Exception:
            continue
    out = io.StringIO()
    out.write(f"---- {len(tasks)} pending asyncio task(s) ----\n")
    for task in tasks:
        try:
            task.print_stack(file=out)
        except Exception as exc:  # a task that finished while we looked: say so and go on
            out.write(f"{task.get_name()}: stack unavailable ({type(exc).__name__}: {exc})\n")
    return out.getvalue()


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> bool | None:
    """pytest-timeout's thread method with the asyncio tasks' stacks printed before its thread dump and exit."""
    if settings.method != "thread":
        return None  # pytest-timeout's own signal method
    import pytest_timeout

    def expired() -> None:
        try:
            report = pending_tasks_report()
        except BaseException as exc:  # the run must end all the same
            report = f"(no asyncio task report: {type(exc).__name__}: {exc})"
        try:
            print(f"\n{item.nodeid} ran past the {settings.timeout:g} s timeout\n{report}", file=sys.stderr, flush=True)
        finally:
            # dumps the threads' stacks, then os._exit(1); never skipped for a "debugger" (a stuck CI run has none)
            pytest_timeout.timeout_timer(item, settings._replace(disable_debugger_detection=True))

    timer = threading.Timer(settings.timeout, expired)
    timer.name = f"timeout {item.nodeid}"
    timer.daemon = True

    def cancel() -> None:
        timer.cancel()
        timer.join()

    item.cancel_timeout = cancel  # type: ignore[attr-defined]  # what pytest-timeout's cancel hook calls
    timer.start()
    return True
