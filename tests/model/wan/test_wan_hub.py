"""`liveidol models`: pulled from a loopback server in the Hugging Face hub's layout, verified, offline help.

The server is real HTTP on 127.0.0.1 answering what huggingface_hub asks of the hub: HEAD and GET on
``/<repo>/resolve/<revision>/<path>`` with ``X-Repo-Commit`` and ``ETag`` headers. Nothing leaves the machine.
"""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar
from urllib.parse import unquote

import pytest

from backend.cli import main
from backend.model.wan import hub
from backend.model.wan.hub import HubError, HubFile, Recipe

COMMIT = "0123456789abcdef0123456789abcdef01234567"
FILES = {"checkpoints/tiny.pt": b"tiny checkpoint bytes " * 100, "tok/spiece.model": b"a tokenizer"}


class _Hub(http.server.BaseHTTPRequestHandler):
    files: ClassVar[dict[str, bytes]] = {}
    repo = "someone/tiny"
    requests: ClassVar[list[str]] = []

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _find(self) -> bytes | None:
        self.requests.append(f"{self.command} {self.path}")
        prefix = f"/{self.repo}/resolve/"
        if not self.path.startswith(prefix):
            return None
        _rev, _, path = unquote(self.path[len(prefix):]).partition("/")
        return self.files.get(path)

    def _head(self, body: bytes | None) -> None:
        if body is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", '"' + hashlib.sha256(body).hexdigest() + '"')
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()

    def do_HEAD(self) -> None:
        self._head(self._find())

    def do_GET(self) -> None:
        body = self._find()
        self._head(body)
        if body is not None:
            self.wfile.write(body)


@pytest.fixture
def server() -> Iterator[str]:
    _Hub.files, _Hub.requests = dict(FILES), []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        thread.join()
        httpd.server_close()


@pytest.fixture
def tiny_recipe(monkeypatch: pytest.MonkeyPatch) -> Recipe:
    body = FILES["checkpoints/tiny.pt"]
    r = Recipe("tiny", "someone/tiny", (HubFile("checkpoints/tiny.pt", len(body), hashlib.sha256(body).hexdigest()),
                                        HubFile("tok/spiece.model")),
               "a tiny test recipe", "MIT", "model.checkpoint", "checkpoints/tiny.pt")
    monkeypatch.setitem(hub.RECIPES, "tiny", r)
    return r


def test_pull_downloads_in_the_hub_layout_and_verifies(server: str, tiny_recipe: Recipe, tmp_path: Path) -> None:
    statuses = hub.pull("tiny", root=tmp_path, endpoint=server)
    assert [s.ok for s in statuses] == [True, True]
    assert (tmp_path / "tiny" / "checkpoints" / "tiny.pt").read_bytes() == FILES["checkpoints/tiny.pt"]
    assert (tmp_path / "tiny" / "tok" / "spiece.model").read_bytes() == FILES["tok/spiece.model"]
    assert any(r.startswith("HEAD /someone/tiny/resolve/main/checkpoints/tiny.pt") for r in _Hub.requests)
    assert hub.local_path("tiny", tmp_path) == tmp_path / "tiny" / "checkpoints" / "tiny.pt"
    before = len(_Hub.requests)
    hub.pull("tiny", root=tmp_path, endpoint=server)  # already there and valid: nothing fetched again
    assert len(_Hub.requests) == before


def test_verify_catches_a_damaged_file(server: str, tiny_recipe: Recipe, tmp_path: Path) -> None:
    hub.pull("tiny", root=tmp_path, endpoint=server)
    path = tmp_path / "tiny" / "checkpoints" / "tiny.pt"
    data = bytearray(path.read_bytes())
    data[0] ^= 1
    path.write_bytes(bytes(data))
    bad = [s for s in hub.verify(["tiny"], root=tmp_path) if not s.ok]
    assert len(bad) == 1 and bad[0].problem.startswith("sha256")
    path.write_bytes(b"short")
    assert "size 5 bytes, expected 2,200" in hub.verify(["tiny"], root=tmp_path)[0].problem


def test_a_file_the_server_lacks_fails_with_what_to_do(server: str, tiny_recipe: Recipe, tmp_path: Path) -> None:
    del _Hub.files["tok/spiece.model"]
    with pytest.raises(HubError, match=r"could not download someone/tiny/tok/spiece.model .*copy it to .*tok/spiece"):
        hub.pull("tiny", root=tmp_path, endpoint=server)


def test_offline_says_where_to_copy_the_files(server: str, tiny_recipe: Recipe, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets at import
    with pytest.raises(HubError, match=r"Offline\? fetch http://127.0.0.1:\d+/someone/tiny/resolve/main/checkpoints/"
                                       r"tiny.pt .*copy it to .*tiny/checkpoints/tiny.pt, then run `liveidol models verify"):
        hub.pull("tiny", root=tmp_path, endpoint=server)
    assert _Hub.requests == []  # nothing was asked of the network


def test_cli_list_pull_verify(server: str, tiny_recipe: Recipe, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LIVEIDOL_MODELS", str(tmp_path))
    monkeypatch.setenv("HF_ENDPOINT", server)
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("self-forcing-dmd", "causvid", "longlive", "causal-forcing", "wan-vae", "umt5-xxl", "taehv", "tiny"):
        assert name in out
    assert main(["models", "pull", "tiny"]) == 0
    assert "model.checkpoint" in capsys.readouterr().out
    assert main(["models", "verify"]) == 0
    assert "ok" in capsys.readouterr().out
    (tmp_path / "tiny" / "tok" / "spiece.model").unlink()
    assert main(["models", "verify", "tiny"]) == 1
    assert "missing" in capsys.readouterr().out
    assert main(["models", "pull", "nope"]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
