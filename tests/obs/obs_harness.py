"""Start a real OBS Studio headless (Xvfb) with a pre-written config that autoloads the LiveIdol script.

Recipe (OBS 29): global.ini enables obs-websocket on a free port
without auth, a profile sets the canvas, and the scene collection lists the script under
``modules.scripts-tool``.  A unique X display and port per run.  Stopped by closing its main window
(WM_DELETE_WINDOW, tests/obs/x11.py), not by SIGINT: OBS 29 closes from inside its SIGINT handler and can
deadlock in X there; closing the window is the clean shutdown (scripts unload, the log is complete).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import obsws_python as obsws
import websocket  # websocket-client, obsws-python's transport
from obsws_python.error import OBSSDKError

from tests.obs.x11 import close_window
from tests.requires import unavailable

STOP_S = 60.0  # for OBS to exit once asked (0.15 s here when idle; generous for a loaded 2-core CI machine)
SCRIPT = Path(__file__).resolve().parents[2] / "obs_plugin" / "liveidol_source.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_display() -> int:
    for n in range(100 + os.getpid() % 300, 1000):
        if not Path(f"/tmp/.X{n}-lock").exists() and not Path(f"/tmp/.X11-unix/X{n}").exists():
            return n
    raise RuntimeError("no free X display number")


def write_config(root: Path, *, ws_port: int, width: int, height: int, password: str = "",
                 script: Path = SCRIPT, script_settings: dict | None = None) -> None:
    obs_dir = root / "obs-studio"
    (obs_dir / "basic" / "profiles" / "Untitled").mkdir(parents=True)
    (obs_dir / "basic" / "scenes").mkdir(parents=True)
    (obs_dir / "global.ini").write_text(
        "[General]\nFirstRun=true\nLastVersion=486539266\nEnableAutoUpdates=false\nConfirmOnExit=false\n\n"
        "[Basic]\nProfile=Untitled\nProfileDir=Untitled\nSceneCollection=Untitled\nSceneCollectionFile=Untitled\n\n"
        f"[OBSWebSocket]\nFirstLoad=false\nServerEnabled=true\nServerPort={ws_port}\nAlertsEnabled=false\n"
        f"AuthRequired={'true' if password else 'false'}\nServerPassword={password}\n")
    (obs_dir / "basic" / "profiles" / "Untitled" / "basic.ini").write_text(
        f"[General]\nName=Untitled\n\n[Video]\nBaseCX={width}\nBaseCY={height}\nOutputCX={width}\n"
        f"OutputCY={height}\nFPSType=0\nFPSCommon=30\n")
    scene = {
        "name": "Untitled", "current_scene": "Scene", "current_program_scene": "Scene",
        "scene_order": [{"name": "Scene"}],
        "sources": [{"id": "scene", "versioned_id": "scene", "name": "Scene", "uuid": "6f1c1f43-0000-4000-8000-000000000001",
                     "settings": {"items": [], "id_counter": 0, "custom_size": False}, "enabled": True}],
        "modules": {"scripts-tool": [{"path": str(script), "settings": script_settings or {}}]},
    }
    (obs_dir / "basic" / "scenes" / "Untitled.json").write_text(json.dumps(scene))


class ObsProcess:
    """Xvfb + OBS with the config in ``root``; ``client()`` gives an obsws ReqClient once it answers."""

    def __init__(self, root: Path, *, width: int = 320, height: int = 180, password: str = "") -> None:
        self.root = root
        self.password = password
        self.ws_port = free_port()
        self.display = free_display()
        self.width, self.height = width, height
        self.xvfb: subprocess.Popen | None = None
        self.obs: subprocess.Popen | None = None
        self.log_path = root / "obs-stdout.log"
        self.stopped_how = ""  # how stop() ended OBS, for assertion messages

    def start(self, timeout: float = 30.0) -> obsws.ReqClient:
        """Start Xvfb and OBS and return a client once obs-websocket answers; on failure stop both."""
        try:
            return self._start(timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout: float) -> obsws.ReqClient:
        write_config(self.root, ws_port=self.ws_port, width=self.width, height=self.height, password=self.password)
        self.xvfb = subprocess.Popen(["Xvfb", f":{self.display}", "-screen", "0", "1280x720x24", "-nolisten", "tcp"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not Path(f"/tmp/.X11-unix/X{self.display}").exists():
            if time.monotonic() > deadline or self.xvfb.poll() is not None:
                raise RuntimeError(f"Xvfb :{self.display} did not start")
            time.sleep(0.05)
        env = dict(os.environ, XDG_CONFIG_HOME=str(self.root), DISPLAY=f":{self.display}", LIBGL_ALWAYS_SOFTWARE="1")
        with open(self.log_path, "wb") as out:
            self.obs = subprocess.Popen(
                ["obs", "--multi", "--minimize-to-tray", "--disable-shutdown-check", "--disable-updater"],
                env=env, stdout=out, stderr=subprocess.STDOUT, cwd=self.root, start_new_session=True)
        return self.client(timeout)

    def client(self, timeout: float = 30.0) -> obsws.ReqClient:
        deadline = time.monotonic() + timeout
        quiet = logging.getLogger("obsws_python")
        old = quiet.level
        quiet.setLevel(logging.CRITICAL)
        try:
            while True:
                if self.obs is not None and self.obs.poll() is not None:
                    raise RuntimeError(f"OBS exited with {self.obs.returncode}: {self.tail()}")
                try:
                    return obsws.ReqClient(host="127.0.0.1", port=self.ws_port, password=self.password, timeout=5)
                except (OSError, OBSSDKError, websocket.WebSocketException):
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        finally:
            quiet.setLevel(old)

    def obs_log(self) -> str:
        logs = sorted((self.root / "obs-studio" / "logs").glob("*.txt"))
        return logs[-1].read_text(errors="replace") if logs else ""

    def tail(self, n: int = 4000) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text[-n:]

    def stop(self, timeout: float = STOP_S) -> int | None:
        """Shut OBS down the clean way and wait for it to exit (its scripts unload, its log is written and
        closed), then Xvfb.  Returns OBS's exit status (negative: the signal that ended it; None: it never ran
        or had to be killed); ``stopped_how`` says in words what happened."""
        rc = None
        if self.obs is not None and self.obs.poll() is None:
            try:
                asked = close_window(f":{self.display}", self.obs.pid, "OBS ")
                how = f"closed OBS's window {asked!r}" if asked else "sent OBS SIGINT (it had no main window)"
            except (OSError, RuntimeError) as exc:  # no libX11, or the X server is gone
                asked, how = None, f"sent OBS SIGINT (could not close its window: {exc})"
            if asked is None:  # the signal is all there is
                self.obs.send_signal(signal.SIGINT)
            try:
                rc = self.obs.wait(timeout)
                self.stopped_how = f"{how}; it exited with {describe_status(rc)}"
            except subprocess.TimeoutExpired:
                self.obs.kill()
                self.obs.wait(10)
                self.stopped_how = f"{how}; it had not exited {timeout:g} s later and was killed (SIGKILL)"
        elif self.obs is not None:
            rc = self.obs.returncode
            self.stopped_how = f"OBS had exited by itself with {describe_status(rc)}"
        if self.xvfb is not None and self.xvfb.poll() is None:
            self.xvfb.terminate()
            try:
                self.xvfb.wait(5)
            except subprocess.TimeoutExpired:
                self.xvfb.kill()
        return rc


def describe_status(rc: int | None) -> str:
    if rc is None:
        return "no status"
    if rc < 0:
        return f"signal {signal.Signals(-rc).name}"
    return f"status {rc}"


def have_obs() -> bool:
    return shutil.which("obs") is not None and shutil.which("Xvfb") is not None


def require_obs(test: str) -> None:
    """Skip (locally) or fail (CI=true, which requires ``test``) when OBS Studio or Xvfb is not installed."""
    if not have_obs():
        unavailable("needs the obs and Xvfb binaries (apt-get install obs-studio xvfb libgl1-mesa-dri)",
                    ci_reason=f"OBS Studio or Xvfb is not installed, and CI=true requires {test}")


@contextmanager
def running_obs(root: Path, *, width: int, height: int,
                password: str = "") -> Iterator[tuple[ObsProcess, obsws.ReqClient]]:
    """OBS (under Xvfb) started in ``root`` and a client of it; the client disconnected and OBS stopped on exit."""
    proc = ObsProcess(root, width=width, height=height, password=password)
    client = proc.start()
    try:
        yield proc, client
    finally:
        client.disconnect()
        proc.stop()


def decode_png(data: bytes) -> tuple[int, int, int, bytes]:
    """(width, height, channels, pixels) of an 8-bit RGB/RGBA PNG (what OBS's screenshots are)."""
    import struct
    import zlib

    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, width = 8, [], 0
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            if depth != 8 or color not in (2, 6) or interlace:
                raise ValueError(f"unsupported PNG depth={depth} color={color} interlace={interlace}")
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    raw = zlib.decompress(b"".join(idat))
    stride = width * channels
    out = bytearray()
    prev = bytearray(stride)
    for y in range(height):
        ftype = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = prev[i]
            c = prev[i - channels] if i >= channels else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 255
            elif ftype == 2:
                line[i] = (line[i] + b) & 255
            elif ftype == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        out += line
        prev = line
    return width, height, channels, bytes(out)
