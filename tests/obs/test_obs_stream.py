"""The OBS script's pure parts (URL/settings, backoff, pts clock, placeholder, message parsing) and its
stream receiver against a loopback backend that speaks docs/protocol.md (real websockets + msgpack).

``test_source_pushes_*`` replaces libobs with a recorder (``RecordingLib``): calling libobs's output
functions needs a running OBS, which test_obs_e2e.py covers for real.
"""

from __future__ import annotations

import itertools
import struct
import threading
import time

import msgpack
import pytest

from obs_plugin import _stream, liveidol_source
from tests.obs.obs_fake_backend import FakeBackend


def wait_until(cond, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


# ------------------------------------------------------------------------------------------------
# pure parts
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "url"), [
    ("", "ws://127.0.0.1:8765/stream?format=rgba&audio=1"),
    ("127.0.0.1:9000", "ws://127.0.0.1:9000/stream?format=rgba&audio=1"),
    (" ws://localhost:8765/ ", "ws://localhost:8765/stream?format=rgba&audio=1"),
    ("http://10.0.0.2:8765/stream?audio=0", "ws://10.0.0.2:8765/stream?audio=0&format=rgba"),
    ("wss://idol.example/stream", "wss://idol.example/stream?format=rgba&audio=1"),
])
def test_normalize_url(text, url):
    assert _stream.normalize_url(text) == url


@pytest.mark.parametrize(("text", "match"), [
    ("ftp://x", "scheme must be ws"),
    ("ws://:80", "no host"),
    ("ws://h:99999", "bad port"),
    ("ws://h/stream?format=jpeg", "needs format=rgba"),
    ("ws://h/stream?audio=yes", "audio must be 0 or 1"),
])
def test_normalize_url_errors_name_the_input(text, match):
    with pytest.raises(ValueError, match=match) as info:
        _stream.normalize_url(text)
    assert repr(text) in str(info.value)


def test_source_settings_keep_errors_and_hide_token():
    s = liveidol_source.SourceSettings("127.0.0.1:1", " secret ")
    assert s.url.startswith("ws://127.0.0.1:1/stream") and s.token == "secret" and not s.error
    assert "secret" not in repr(s)
    bad = liveidol_source.SourceSettings("ftp://x", "")
    assert bad.url == "" and "scheme" in bad.error
    assert s == liveidol_source.SourceSettings("ws://127.0.0.1:1/stream", "secret") and s != bad


def test_backoff_grows_caps_and_resets():
    b = _stream.Backoff(initial=0.5, factor=2, maximum=3, jitter=0.0)
    assert [b.next() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    b.reset()
    assert b.next() == 0.5
    j = _stream.Backoff(initial=1, jitter=0.1)
    assert j.next(rand=lambda: 0.0) == pytest.approx(0.9) and j.next(rand=lambda: 1.0) == pytest.approx(2.2)


def test_pts_clock_maps_and_resyncs():
    c = _stream.PtsClock(delay_s=0.1, resync_s=1.0)
    now = 10_000_000_000
    assert c.to_ns(5.0, now) == now + 100_000_000
    assert c.to_ns(5.04, now + 40_000_000) == now + 140_000_000  # same base: pts differences are kept
    assert c.to_ns(5.5, now) == now + 600_000_000                # 0.5 s ahead: still within resync
    assert c.resets == 0
    assert c.to_ns(0.0, now + 50_000_000) == now + 150_000_000   # backend restarted at pts 0: re-based
    assert c.resets == 1


def test_placeholder_is_striped_and_sized():
    img = _stream.placeholder_rgba(64, 40, period=32)
    assert len(img) == 64 * 40 * 4
    px = [img[i:i + 4] for i in range(0, 64 * 4, 4)]
    assert px[0] == bytes((96, 64, 160, 204)) and px[16] == bytes((200, 110, 170, 204))
    assert img[64 * 4: 64 * 4 + 4] == px[1]  # next row shifted by one pixel: diagonal stripes
    with pytest.raises(ValueError, match="positive"):
        _stream.placeholder_rgba(0, 10)


def _pack(**msg):
    return msgpack.packb(msg, use_bin_type=True)


def test_parse_message_accepts_the_protocol_and_rejects_bad_messages():
    hello = _stream.parse_message(_pack(type="hello", protocol=1, server="liveidol/0.1", width=4, height=2,
                                        fps=25.0, format="rgba", sample_rate=48000, channels=1))
    assert hello == _stream.Hello(4, 2, 25.0, 48000, 1, "liveidol/0.1")
    frame = _stream.parse_message(_pack(type="frame", seq=3, pts=0.12, width=2, height=1, format="rgba",
                                        data=bytes(8)))
    assert frame == _stream.Frame(3, 0.12, 2, 1, bytes(8))
    audio = _stream.parse_message(_pack(type="audio", seq=0, pts=0.0, sample_rate=48000, channels=1,
                                        format="f32le", data=struct.pack("<3f", 0, 0.5, -0.5)))
    assert isinstance(audio, _stream.AudioChunk) and audio.frames == 3
    assert _stream.parse_message(_pack(type="state", now=None)) is None  # unknown types are ignored
    bad = {
        "frame seq=1: 7 bytes of data for 2x1 RGBA": _pack(type="frame", seq=1, pts=0, width=2, height=1,
                                                            format="rgba", data=bytes(7)),
        "format 'jpeg'": _pack(type="frame", seq=1, pts=0, width=2, height=1, format="jpeg", data=b""),
        "protocol 2 not supported": _pack(type="hello", protocol=2, width=1, height=1, fps=1),
        "not whole float32 samples": _pack(type="audio", seq=0, pts=0, sample_rate=48000, channels=2,
                                           data=bytes(4)),
        "server error 'busy'": _pack(type="error", code="busy", message="x"),
        "not a map": msgpack.packb([1]),
        "bad msgpack": b"\xc1",
        "text frame": "{}",
        "field 'width' missing": _pack(type="hello", protocol=1, height=1, fps=1),
    }
    for match, payload in bad.items():
        with pytest.raises(_stream.StreamError, match=match):
            _stream.parse_message(payload)


# ------------------------------------------------------------------------------------------------
# receiver + source against the loopback backend
# ------------------------------------------------------------------------------------------------


class RecordingSink:
    def __init__(self):
        self.events = []
        self.lock = threading.Lock()

    def _add(self, kind, value):
        with self.lock:
            self.events.append((kind, value))

    def on_hello(self, hello):
        self._add("hello", hello)

    def on_frame(self, frame):
        self._add("frame", frame)

    def on_audio(self, chunk):
        self._add("audio", chunk)

    def on_disconnect(self, reason):
        self._add("disconnect", reason)

    def count(self, kind):
        with self.lock:
            return sum(1 for k, _ in self.events if k == kind)


def test_receiver_reads_stream_and_reconnects_after_backend_restart():
    sink = RecordingSink()
    with FakeBackend(width=8, height=4, fps=50) as backend:
        rx = _stream.StreamReceiver(_stream.normalize_url(backend.url), token="tok", sink=sink,
                                    backoff=_stream.Backoff(initial=0.05, maximum=0.2, jitter=0))
        rx.start()
        try:
            wait_until(lambda: sink.count("frame") >= 5, what="5 frames")
            backend.stop()
            wait_until(lambda: sink.count("disconnect") >= 1, what="disconnect")
            backend.start()  # same port
            wait_until(lambda: sink.count("hello") >= 2 and sink.events[-1][0] in ("frame", "audio"),
                       what="frames after restart")
        finally:
            rx.stop()
        assert not rx.running
    kinds = [k for k, _ in sink.events]
    assert kinds[0] == "hello" and sink.events[0][1].width == 8
    frames = [v for k, v in sink.events if k == "frame"]
    assert all(f.data == backend.frames[f.seq % len(backend.frames)] for f in frames)  # bytes exact
    audio = [v for k, v in sink.events if k == "audio"]
    assert audio and all(a.frames == 960 for a in audio)  # 48000 / 50
    assert rx.connects >= 2 and rx.bad_messages == 0
    path, headers = backend.requests[0]
    assert path == "/stream?format=rgba&audio=1" and headers["Authorization"] == "Bearer tok"
    n = len(sink.events)
    time.sleep(0.1)
    assert len(sink.events) == n  # nothing delivered after stop()


def test_receiver_backs_off_while_backend_is_down():
    sink = RecordingSink()
    rx = _stream.StreamReceiver("ws://127.0.0.1:9/stream", sink=sink,
                                backoff=_stream.Backoff(initial=0.02, factor=2, maximum=0.08, jitter=0))
    rx.start()
    wait_until(lambda: sink.count("disconnect") >= 4, what="4 failed connects")
    t0 = time.monotonic()
    rx.stop()
    assert time.monotonic() - t0 < 1.0
    assert all("connect failed" in r for k, r in sink.events)
    assert rx.backoff._attempt >= 4


class RecordingLib:
    """Stands in for _libobs.LibObs (libobs output calls need a running OBS)."""

    def __init__(self):
        self.video = []
        self.audio = []
        self.t0 = time.monotonic_ns()

    def gettime_ns(self):
        return time.monotonic_ns()

    def output_video_rgba(self, source, w, h, data, ts):
        self.video.append((source, w, h, data, ts))

    def output_audio_f32(self, source, data, channels, rate, ts):
        self.audio.append((source, len(data) // 4, channels, rate, ts))


def test_source_pushes_frames_audio_and_placeholder_with_shared_timestamps():
    lib = RecordingLib()
    with FakeBackend(width=8, height=4, fps=50) as backend:
        src = liveidol_source.LiveIdolSource(lib, 1234, liveidol_source.SourceSettings(backend.url, ""))
        assert lib.video[0][1:3] == liveidol_source.PLACEHOLDER_SIZE  # placeholder before connecting
        wait_until(lambda: len(lib.video) >= 11 and len(lib.audio) >= 10, what="frames and audio")
        backend.stop()
        wait_until(lambda: lib.video[-1][1:3] == (8, 4) and lib.video[-1][3] == _stream.placeholder_rgba(8, 4),
                   what="placeholder after disconnect")
        src.stop()
    n = len(lib.video)
    pushed = [v for v in lib.video[1:] if v[3] in backend.frames]
    assert len(pushed) >= 10 and all(v[0] == 1234 for v in lib.video)
    ts = [v[4] for v in pushed]
    assert ts == sorted(ts)
    steps = {round((b - a) / 1e6) for a, b in itertools.pairwise(ts)}
    assert steps <= {20, 40, 60}  # 50 fps pts spacing kept (a frame may be missed at startup)
    # Audio chunk k and frame k share pts k/50 s, so their OBS timestamps are equal.
    video_by_ts = set(ts)
    matched = sum(1 for a in lib.audio if a[4] in video_by_ts)
    assert matched >= len(lib.audio) - 2 and all(a[1:4] == (960, 1, 48000) for a in lib.audio)
    time.sleep(0.1)
    assert len(lib.video) == n  # stopped: no more pushes


def test_source_update_switches_backend_and_bad_url_shows_placeholder_only():
    lib = RecordingLib()
    with FakeBackend(width=8, height=4, fps=50) as a, FakeBackend(width=8, height=4, fps=50, mirror=True) as b:
        src = liveidol_source.LiveIdolSource(lib, 1, liveidol_source.SourceSettings(a.url, ""))
        try:
            wait_until(lambda: any(v[3] in a.frames for v in lib.video), what="frames from a")
            src.update(liveidol_source.SourceSettings(b.url, ""))
            wait_until(lambda: lib.video[-1][3] in b.frames, what="frames from b")
            wait_until(lambda: a.active == 0, what="a disconnected")
            assert b.active == 1
            src.update(liveidol_source.SourceSettings("ftp://nope", ""))
            assert src.receiver is None
            wait_until(lambda: b.active == 0, what="b disconnected")
            assert lib.video[-1][3] == _stream.placeholder_rgba(8, 4)
        finally:
            src.stop()
