"""What a test needs from the machine: it skips here when that is missing, and fails under CI=true
(where everything the suite needs is installed, so a skip would hide a broken set-up)."""

from __future__ import annotations

import importlib.util
import os
from typing import NoReturn

import pytest


def unavailable(reason: str, *, ci_reason: str | None = None) -> NoReturn:
    """Skip the calling test with ``reason``; under CI=true fail it (with ``ci_reason`` when given)."""
    if os.environ.get("CI") == "true":
        pytest.fail(ci_reason or reason)
    pytest.skip(reason)


def need_modules(*modules: str, install: str) -> None:
    """Skip (locally) or fail (CI=true) when a python module is not importable; ``install`` says how to get it."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        unavailable("not installed: " + ", ".join(missing) + f" ({install})")
