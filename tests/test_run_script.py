"""The bootstrap script `./run`, executed for real by bash with stand-ins for python, pip and apt.

Stand-ins (not the real programs, which would install packages on this machine): a fake ``python`` in a fake
venv that records its arguments (pip installs, ruff, mypy, pytest), a fake ``liveidol`` and fake ``sudo`` /
``apt-get`` that record theirs. PATH holds only the few coreutils the script needs, so OBS, Xvfb and
espeak-ng look missing and the apt branch runs.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ("bash", "sha1sum", "cut", "sort", "paste", "cat", "id", "dirname", "env", "head")


def _script(path: Path, body: str) -> None:
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def sandbox(tmp_path: Path) -> tuple[Path, dict[str, str], Path]:
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(ROOT / "run", repo / "run")
    shutil.copy(ROOT / "pyproject.toml", repo / "pyproject.toml")
    calls = tmp_path / "calls.log"
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    _script(venv / "python", f'[ "$1" = -c ] && exit 0\necho "python $*" >> {calls}\n')
    _script(venv / "liveidol", f'echo "liveidol $*" >> {calls}\n')
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        assert found, f"{tool} is needed by ./run"
        os.symlink(found, bin_ / tool)
    _script(bin_ / "sudo", '[ "$1" = -n ] && shift\nexec "$@"\n')
    _script(bin_ / "apt-get", f'echo "apt-get $*" >> {calls}\n')
    env = {"PATH": str(bin_), "HOME": str(tmp_path), "LIVEIDOL_VENV": str(venv.parent),
           "PYTHON": str(venv / "python")}
    return repo, env, calls


def run(repo: Path, env: dict[str, str], *args: str) -> None:
    subprocess.run(["bash", str(repo / "run"), *args], env=env, check=True, capture_output=True, timeout=60)


def pip_installs(calls: Path) -> list[str]:
    return [line for line in calls.read_text().splitlines() if " -m pip install " in line]


def test_serve_after_test_installs_nothing_more(sandbox) -> None:
    repo, env, calls = sandbox
    run(repo, env, "test", "-k", "nothing")
    run(repo, env, "serve", "--port", "9")
    run(repo, env, "serve", "--voice")
    installs = pip_installs(calls)
    assert len(installs) == 1 and installs[0].endswith("-e .[dev,perception,voice,wan]"), installs
    assert "liveidol serve --port 9" in calls.read_text()


def test_voice_flag_adds_the_voice_extra_and_test_keeps_it(sandbox) -> None:
    repo, env, calls = sandbox
    run(repo, env, "serve")
    run(repo, env, "serve", "--voice")
    run(repo, env, "serve", "--voice")
    run(repo, env, "test")
    installs = [line.rsplit(" ", 1)[-1] for line in pip_installs(calls)]
    assert installs == [".", ".[voice]", ".[dev,perception,voice,wan]"]
    (repo / "pyproject.toml").write_text((repo / "pyproject.toml").read_text() + "\n# changed\n")
    run(repo, env, "serve")  # a changed pyproject reinstalls what this command needs
    assert pip_installs(calls)[-1].endswith("-e .") and len(pip_installs(calls)) == 4


def test_the_open_tier_adds_the_wan_extra(sandbox) -> None:
    repo, env, calls = sandbox
    run(repo, env, "serve", "--voice")
    run(repo, env, "bench", "--model", "wan-1.3b")
    run(repo, env, "serve", "--voice")
    installs = [line.rsplit(" ", 1)[-1] for line in pip_installs(calls)]
    assert installs == [".[voice]", ".[voice,wan]"]


def test_test_waits_for_the_apt_lock_and_runs_mypy(sandbox) -> None:
    repo, env, calls = sandbox
    run(repo, env, "test")
    log = calls.read_text().splitlines()
    apt = [line for line in log if line.startswith("apt-get")]
    assert apt and all("DPkg::Lock::Timeout=600" in line for line in apt), apt
    assert any(line.endswith("-m mypy") for line in log) and any(" -m pytest" in line for line in log)
