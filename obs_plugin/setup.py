"""``liveidol obs setup``: put the LiveIdol source into a running OBS over obs-websocket (obsws-python).

Steps: connect (host, port, password from :class:`backend.config.ObsConfig`; the environment
variable ``LIVEIDOL_OBS_PASSWORD`` wins), check that OBS knows the ``liveidol_source`` input kind
(i.e. ``obs_plugin/liveidol_source.py`` is loaded under Tools > Scripts), pick the scene (the
configured one, a new "LiveIdol Scene" with ``create_scene``, or the current one), create the source or update an
existing one, and fit it to the canvas (scene item bounds = the canvas size from GetVideoSettings).

obsws-python logs the password at INFO and logs tracebacks on connect errors: its logger is raised
to CRITICAL while connecting, and every failure becomes one :class:`ObsSetupError` line.

Usage::

    result = setup_obs(cfg.obs, script_path=SCRIPT_PATH, stream_url="ws://127.0.0.1:8765/stream", token="")
    run_setup(cfg.obs, SCRIPT_PATH, url, token, create_scene=False)   # the CLI's entry: prints, returns 0/1
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import obsws_python as obsws
from obsws_python.baseclient import ObsClient
from obsws_python.error import OBSSDKError, OBSSDKRequestError

from backend.config import ObsConfig
from backend.errors import LiveIdolError

__all__ = ["INPUT_KIND", "SCRIPT_PATH", "ObsSetupError", "SetupResult", "connect", "run_setup", "setup_obs"]

log = logging.getLogger(__name__)

INPUT_KIND = "liveidol_source"          # registered by obs_plugin/liveidol_source.py
SCRIPT_PATH = Path(__file__).resolve().parent / "liveidol_source.py"
NEW_SCENE_SUFFIX = " Scene"             # OBS names are unique across scenes and sources: "LiveIdol Scene"
PASSWORD_ENV = "LIVEIDOL_OBS_PASSWORD"
OBS_BOUNDS_SCALE_INNER = "OBS_BOUNDS_SCALE_INNER"
OBS_ALIGN_TOP_LEFT = 5                  # OBS_ALIGN_LEFT | OBS_ALIGN_TOP
WS_AUTH_FAILED = 4009                   # obs-websocket WebSocketCloseCode::AuthenticationFailed


class ObsSetupError(LiveIdolError, RuntimeError):
    """OBS could not be set up; the message is one line saying what to do."""


@dataclass(frozen=True)
class SetupResult:
    scene: str
    source_name: str
    scene_item_id: int
    created_source: bool
    created_scene: bool
    canvas: tuple[int, int]
    obs_version: str


@contextlib.contextmanager
def _quiet_obsws() -> Iterator[None]:
    """Silence obsws-python (it logs the password at INFO and tracebacks on connect errors)."""
    logger = logging.getLogger("obsws_python")
    old = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(old)


class _ReqClient(obsws.ReqClient):
    """obsws-python's ReqClient that closes its socket when login fails and never shows the password."""

    def __init__(self, **kwargs: Any) -> None:
        self.logger = logging.getLogger("obsws_python.reqs").getChild("ReqClient")
        self.base_client = ObsClient(**kwargs)
        try:
            self.base_client.authenticate()
        except BaseException:
            self.base_client.ws.shutdown()  # closes the socket even after the server's close frame
            raise

    def __repr__(self) -> str:
        return f"ReqClient(host={self.base_client.host!r}, port={self.base_client.port!r})"


def connect(cfg: ObsConfig, *, timeout: float = 5.0) -> obsws.ReqClient:
    """An authenticated ReqClient, or ObsSetupError naming the likely cause (password never shown)."""
    password = os.environ.get(PASSWORD_ENV) or cfg.password
    where = f"{cfg.host}:{cfg.port}"
    try:
        with _quiet_obsws():
            return _ReqClient(host=cfg.host, port=cfg.port, password=password, timeout=timeout)
    except ConnectionRefusedError as exc:
        raise ObsSetupError(
            f"OBS is not reachable at {where}: start OBS and enable Tools > WebSocket Server Settings > "
            "Enable WebSocket server (and check obs.port)") from exc
    except (TimeoutError, OSError) as exc:
        raise ObsSetupError(f"OBS is not reachable at {where}: {type(exc).__name__}: {exc} "
                            "(is OBS running, with its WebSocket server enabled?)") from exc
    except OBSSDKError as exc:
        if "no password" in str(exc):
            raise ObsSetupError(f"OBS at {where} requires a password: set obs.password or {PASSWORD_ENV}") from exc
        raise ObsSetupError(f"OBS at {where} rejected the login: wrong password? "
                            f"(set obs.password or {PASSWORD_ENV})") from exc
    except Exception as exc:  # websocket-client raises its own exception classes (closed, bad handshake)
        code = getattr(exc, "status_code", None) or getattr(exc, "code", None)
        if "closed" in type(exc).__name__.lower() or code == WS_AUTH_FAILED:
            raise ObsSetupError(f"OBS at {where} closed the connection: wrong password? "
                                f"(set obs.password or {PASSWORD_ENV})") from exc
        raise ObsSetupError(f"OBS at {where} did not answer as obs-websocket 5: {type(exc).__name__}: {exc}") from exc


def _request(what: str, fn: Any, *args: Any) -> Any:
    try:
        with _quiet_obsws():
            return fn(*args)
    except OBSSDKRequestError as exc:
        raise ObsSetupError(f"OBS refused {what}: {exc}") from exc
    except (OBSSDKError, OSError) as exc:
        raise ObsSetupError(f"OBS connection failed during {what}: {type(exc).__name__}: {exc}") from exc


def _script_missing(script_path: Path) -> ObsSetupError:
    return ObsSetupError(
        f"OBS has no '{INPUT_KIND}' source kind: load the LiveIdol script in OBS with Tools > Scripts > + > "
        f"{script_path} (on Windows/macOS first set a Python under Tools > Scripts > Python Settings)")


def setup_obs(cfg: ObsConfig, *, script_path: Path | str = SCRIPT_PATH, stream_url: str, token: str = "",
              create_scene: bool = False, client: obsws.ReqClient | None = None) -> SetupResult:
    """Add (or update) the LiveIdol source in OBS, fitted to the canvas. Raises :class:`ObsSetupError`."""
    own = client is None
    cl = connect(cfg) if client is None else client
    try:
        version = _request("GetVersion", cl.get_version)
        kinds = _request("GetInputKindList", cl.get_input_kind_list, False).input_kinds
        if INPUT_KIND not in kinds:
            raise _script_missing(Path(script_path))

        scenes = [s["sceneName"] for s in _request("GetSceneList", cl.get_scene_list).scenes]
        created_scene = False
        if create_scene:
            scene = cfg.scene or cfg.source_name + NEW_SCENE_SUFFIX
            if scene not in scenes:
                _request(f"CreateScene {scene!r}", cl.create_scene, scene)
                created_scene = True
            _request(f"SetCurrentProgramScene {scene!r}", cl.set_current_program_scene, scene)
        elif cfg.scene:
            scene = cfg.scene
            if scene not in scenes:
                raise ObsSetupError(f"OBS has no scene {scene!r} (obs.scene); scenes: {', '.join(scenes) or 'none'}")
        else:
            scene = _request("GetCurrentProgramScene", cl.get_current_program_scene).current_program_scene_name

        settings: dict[str, Any] = {"url": stream_url}
        if token:
            settings["token"] = token
        name = cfg.source_name
        if name in scenes or name == scene:
            raise ObsSetupError(f"OBS already has a scene named {name!r}: OBS names must be unique, "
                                "set obs.source_name to another name")
        inputs = {i["inputName"]: i["inputKind"] for i in _request("GetInputList", cl.get_input_list).inputs}
        created_source = False
        if name in inputs:
            if inputs[name] != INPUT_KIND:
                raise ObsSetupError(f"OBS already has a source named {name!r} of kind {inputs[name]!r}: "
                                    "rename it or set obs.source_name")
            _request(f"SetInputSettings {name!r}", cl.set_input_settings, name, settings, True)
            items = _request(f"GetSceneItemList {scene!r}", cl.get_scene_item_list, scene).scene_items
            item_id = next((i["sceneItemId"] for i in items if i["sourceName"] == name), None)
            if item_id is None:
                item_id = _request(f"CreateSceneItem {name!r}", cl.create_scene_item, scene, name, True).scene_item_id
        else:
            item_id = _request(f"CreateInput {name!r}", cl.create_input, scene, name, INPUT_KIND, settings,
                               True).scene_item_id
            created_source = True

        video = _request("GetVideoSettings", cl.get_video_settings)
        width, height = int(video.base_width), int(video.base_height)
        transform = {"positionX": 0.0, "positionY": 0.0, "rotation": 0.0, "alignment": OBS_ALIGN_TOP_LEFT,
                     "boundsType": OBS_BOUNDS_SCALE_INNER, "boundsAlignment": 0,
                     "boundsWidth": float(width), "boundsHeight": float(height)}
        _request("SetSceneItemTransform", cl.set_scene_item_transform, scene, item_id, transform)
        log.info("OBS set up scene=%s source=%s item=%d canvas=%dx%d created=%s",
                 scene, name, item_id, width, height, created_source)
        return SetupResult(scene=scene, source_name=name, scene_item_id=int(item_id), created_source=created_source,
                           created_scene=created_scene, canvas=(width, height), obs_version=version.obs_version)
    finally:
        if own:
            with contextlib.suppress(Exception), _quiet_obsws():
                cl.disconnect()


def run_setup(cfg: ObsConfig, script_path: Path | str, stream_url: str, token: str, create_scene: bool) -> int:
    """The CLI entry: set up OBS, print one short result line; 0 on success, 1 on a setup error."""
    try:
        r = setup_obs(cfg, script_path=script_path, stream_url=stream_url, token=token, create_scene=create_scene)
    except ObsSetupError as exc:
        print(f"OBS setup failed: {exc}")
        return 1
    action = "added" if r.created_source else "updated"
    print(f"OBS {r.obs_version}: {action} source '{r.source_name}' in scene '{r.scene}'"
          f"{' (new scene)' if r.created_scene else ''}, fitted to the {r.canvas[0]}x{r.canvas[1]} canvas; "
          f"it reads {stream_url}")
    return 0
