"""Unit tests of the engine's sans-I/O parts: compute policy and pacer (fake clocks), session timeline,
broadcast slots, the worker thread."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading

import numpy as np
import pytest

from backend.engine.broadcast import Broadcaster
from backend.engine.compute import ComputePolicy
from backend.engine.pacer import Pacer, RateMeter
from backend.engine.session import Change, CommandError, InputLog, InputRecord, Session, Speech
from backend.engine.worker import GeneratorWorker, WorkerStopped
from backend.events import AudioChunk, Command, CommandKind, VideoFrame


class FakeClock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


# ------------------------------------------------------------------ compute policy


def run_chunks(policy: ComputePolicy, clock: FakeClock, seconds_per_step_frame, n: int) -> list[tuple[int, int]]:
    """Drive the policy: each chunk takes cost(steps, chunk) seconds on the fake clock."""
    seen = []
    for _ in range(n):
        frames = policy.chunk * 4
        policy.chunk_started()
        clock.t += seconds_per_step_frame(policy.steps, policy.chunk) * frames
        policy.chunk_finished(frames)
        seen.append((policy.steps, policy.chunk))
    return seen


def test_policy_lowers_steps_first_then_chunk_and_stops_at_floor():
    clock = FakeClock()
    p = ComputePolicy(fps=25, max_steps=4, min_steps=2, max_chunk=3, min_chunk=2, cooldown=1, clock=clock)
    # Far too slow whatever we do: 0.1 s per frame (budget 0.04 s).
    seen = run_chunks(p, clock, lambda s, c: 0.1, 20)
    order = [x for i, x in enumerate(seen) if i == 0 or x != seen[i - 1]]
    assert order == [(3, 3), (2, 3), (2, 2)]  # steps 4->3->2 first, then chunk 3->2, then the floor
    assert (p.steps, p.chunk) == (2, 2)
    assert p.behind
    assert p.stats.lowered == 3


def test_policy_settles_where_real_time_holds_and_does_not_flap():
    clock = FakeClock()
    p = ComputePolicy(fps=25, max_steps=4, min_steps=1, max_chunk=2, min_chunk=1, clock=clock)
    # cost per frame proportional to steps: 4 steps = 1.25x real time, 3 steps = 0.94x, 2 steps = 0.625x
    cost = lambda s, c: 0.04 * 0.3125 * s  # noqa: E731
    seen = [(p.steps, p.chunk), *run_chunks(p, clock, cost, 60)]
    assert seen[-1] == (2, 2)
    changes = sum(1 for a, b in itertools.pairwise(seen) if a != b)
    assert changes == 2  # 4 -> 3 -> 2 and then stays: 3 would be predicted at 0.94 > high
    assert p.stats.raised == 0


def test_policy_recovers_with_headroom_after_hysteresis():
    clock = FakeClock()
    p = ComputePolicy(fps=25, max_steps=4, min_steps=1, max_chunk=2, min_chunk=1, recover_after=4,
                      cooldown=2, clock=clock)
    slow = run_chunks(p, clock, lambda s, c: 0.1, 12)
    assert slow[-1] == (1, 1)
    fast = run_chunks(p, clock, lambda s, c: 0.002 * s, 40)  # plenty of headroom now
    assert fast[-1] == (4, 2)
    # chunk size comes back first, then steps; never two changes closer than recover_after chunks
    order = [x for i, x in enumerate(fast) if i == 0 or x != fast[i - 1]]
    assert order[:3] == [(1, 1), (1, 2), (2, 2)]
    idx = [i for i in range(1, len(fast)) if fast[i] != fast[i - 1]]
    assert all(b - a >= 4 for a, b in itertools.pairwise(idx))


def test_policy_rejects_bad_ranges():
    with pytest.raises(ValueError, match="min_steps"):
        ComputePolicy(fps=25, max_steps=2, min_steps=3, max_chunk=1, min_chunk=1)
    with pytest.raises(RuntimeError):
        ComputePolicy(fps=25, max_steps=2, min_steps=1, max_chunk=1, min_chunk=1).chunk_finished(4)


# ------------------------------------------------------------------ pacer


async def test_pacer_schedule_is_absolute_and_skips_missed_slots():
    clock = FakeClock(10.0)
    sleeps: list[float] = []

    async def sleep(d: float) -> None:  # oversleeps by 7 ms every time: errors must not accumulate
        sleeps.append(d)
        clock.t += d + 0.007

    pacer = Pacer(20.0, clock=clock, sleep=sleep)
    pacer.start()
    seqs = [await pacer.next_slot() for _ in range(100)]
    assert seqs == list(range(100))
    assert pacer.deadline(99) == pytest.approx(10.0 + 99 / 20)
    assert clock.t - pacer.deadline(99) == pytest.approx(0.007)  # still only one oversleep late
    assert pacer.pts(40) == pytest.approx(2.0)
    clock.t += 0.5  # the loop stalled for 10 slots
    seq = await pacer.next_slot()
    assert seq == 109 and pacer.skipped == 9  # slot 109 is the one due now


def test_rate_meter():
    clock = FakeClock(0.0)
    m = RateMeter(window=1.0, clock=clock)
    for _ in range(30):
        m.tick()
        clock.t += 0.04
    assert m.rate() == pytest.approx(25.0, rel=0.05)


# ------------------------------------------------------------------ session


def test_session_non_looping_action_returns_to_idle_and_speech_drives_mouth():
    s = Session(None, fps=25.0, idle_action="idle")
    s.apply(Change(Command(CommandKind.ACT, "blink", command_id="a")), at_g=8)  # 0.8 s = 20 frames
    assert s.plan(8, 8).action == "blink" and s.plan(8, 8).directive_id == "a"
    assert s.plan(24, 8).action == "blink"
    p = s.plan(28, 8)
    assert (p.action, p.directive_id) == ("idle", "")
    mouth = np.linspace(0, 1, 10, dtype=np.float32)
    speech = Speech(np.zeros((1000, 1), np.float32), 2500, mouth, "hi", "sp")
    s.apply(Change(Command(CommandKind.SAY, "hi", command_id="sp"), speech=speech), at_g=32)
    p = s.plan(32, 8)
    assert p.action == "talk" and p.directive_id == "sp"
    np.testing.assert_allclose(p.mouth, mouth[:8])
    p = s.plan(40, 8)
    np.testing.assert_allclose(p.mouth, [mouth[8], mouth[9], 0, 0, 0, 0, 0, 0])
    p = s.plan(48, 8)
    assert p.action == "idle" and p.mouth is None


def test_session_act_during_speech_returns_to_talk():
    s = Session(None, fps=25.0)
    speech = Speech(np.zeros((100, 1), np.float32), 25, np.ones(100, np.float32), "", "sp")
    s.apply(Change(Command(CommandKind.SAY, "x", command_id="sp"), speech=speech), at_g=0)
    s.apply(Change(Command(CommandKind.ACT, "nod", command_id="n")), at_g=8)  # 1.6 s = 40 frames
    assert s.plan(16, 8).action == "nod" and s.plan(16, 8).mouth is not None
    p = s.plan(48, 8)
    assert (p.action, p.directive_id) == ("talk", "sp")
    s.apply(Change(Command(CommandKind.EMOTION, "happy", command_id="e")), at_g=56)
    p = s.plan(56, 8)
    assert (p.action, p.emotion, p.directive_id) == ("talk", "happy", "e")


def test_session_validates_names():
    s = Session(None, fps=25.0)
    with pytest.raises(CommandError, match="unknown action 'dance'"):
        s.validate(Command(CommandKind.ACT, "dance"))
    with pytest.raises(CommandError, match="unknown emotion 'meh'"):
        s.validate(Command(CommandKind.EMOTION, "meh"))
    with pytest.raises(ValueError, match="reference_rgba"):
        Session(np.zeros((4, 4, 3), np.uint8), fps=25.0)


def test_input_log_writes_each_command_when_accepted_then_its_outcome(tmp_path):
    """Before: a record was written only once resolved, so a kill during a flood lost every pending command."""
    path = tmp_path / "log.jsonl"
    log = InputLog(path, session_id="S1")
    log.open({"fps": 25.0})
    r = log.add(InputRecord("c1", "act", "wave", "twitch", "bob", arrival=5.0, wall_time=1_800_000_000.5))
    rows = [json.loads(line) for line in path.read_text().splitlines()]  # on disk before anyone is told
    assert [row["event"] for row in rows] == ["session", "accepted"]
    assert rows[0]["session"] == "S1" and rows[0]["fps"] == 25.0 and rows[0]["time"] > 1.7e9
    assert rows[1] == {"event": "accepted", "session": "S1", "id": "c1", "kind": "act", "argument": "wave",
                       "source": "twitch", "user": "bob", "time": 1_800_000_000.5}
    log.resolve(r, "shown", frame=42, time=5.25)
    log.resolve(r, "superseded", frame=50, time=6.0)  # resolving twice changes nothing
    log.applied("c1", "act", "wave", 40)
    log.chunk(40, 8, 2, 2)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [row["event"] for row in rows] == ["session", "accepted", "outcome", "applied", "chunk"]
    outcome = rows[2]
    assert (outcome["id"], outcome["outcome"], outcome["frame"], outcome["latency"]) == ("c1", "shown", 42, 0.25)
    assert outcome["time"] > 1.7e9  # wall clock
    assert rows[3] == {"event": "applied", "id": "c1", "kind": "act", "argument": "wave", "at_g": 40}
    assert rows[4] == {"event": "chunk", "g": 40, "n": 8, "steps": 2, "latents": 2}
    assert InputLog(path).session_id != InputLog(path).session_id  # a new session id per start


# ------------------------------------------------------------------ broadcast


def frame(seq: int) -> VideoFrame:
    return VideoFrame(seq, seq / 25, np.zeros((2, 2, 4), np.uint8))


async def test_slow_subscriber_keeps_only_newest_frame_but_all_audio():
    b = Broadcaster()
    slow, fast = b.subscribe(), b.subscribe()
    got = []
    for i in range(10):
        b.publish_frame(frame(i))
        got.append(await anext(fast))
    b.publish_audio(AudioChunk(0, 0.0, 100, np.zeros((2, 1), np.float32)))
    b.publish_audio(AudioChunk(1, 0.02, 100, np.zeros((2, 1), np.float32)))
    assert [f.seq for f in got] == list(range(10))
    items = [await anext(slow) for _ in range(3)]
    assert [type(x).__name__ for x in items] == ["AudioChunk", "AudioChunk", "VideoFrame"]
    assert items[2].seq == 9 and slow.dropped_frames == 9
    b.close()
    with pytest.raises(StopAsyncIteration):
        await anext(slow)
    assert len(b) == 0


async def test_audio_queue_drops_oldest_only_on_overflow():
    b = Broadcaster()
    sub = b.subscribe(audio_chunks=3)
    for i in range(5):
        b.publish_audio(AudioChunk(i, i * 0.02, 100, np.zeros((2, 1), np.float32)))
    assert [(await anext(sub)).seq for _ in range(3)] == [2, 3, 4]
    assert sub.dropped_audio == 2


# ------------------------------------------------------------------ worker


async def test_worker_runs_calls_in_its_own_thread_in_order_and_joins():
    names = []

    def job(i: int) -> int:
        names.append(threading.current_thread().name)
        return i * 2

    async with GeneratorWorker(name="gen-test") as w:
        results = await asyncio.gather(*(w.call(job, i) for i in range(4)))
        assert [r for r, _ in results] == [0, 2, 4, 6]
        with pytest.raises(ZeroDivisionError):
            await w.call(lambda: 1 / 0)
        assert (await w.call(job, 5))[0] == 10  # still serving after an error
    assert set(names) == {"gen-test"}
    assert not any(t.name == "gen-test" for t in threading.enumerate())
    with pytest.raises(WorkerStopped):
        await w.call(job, 1)


def test_session_numbers_each_play_and_counts_progress_at_its_fps():
    """The session is the one owner of action timing: serial per play (the same action again is a new play),
    progress per frame at ITS fps, and what follows a finished action (idle) is a play of its own."""
    s = Session(None, fps=10.0)
    s.apply(Change(Command(CommandKind.ACT, "blink", command_id="a")), at_g=0)  # 0.8 s = 8 frames at 10 fps
    first = s.plan(0, 4)
    assert first.play_id == "a" and np.allclose(first.progress, [0, 1 / 8, 2 / 8, 3 / 8])
    s.apply(Change(Command(CommandKind.ACT, "blink", command_id="b")), at_g=4)  # the same action again
    again = s.plan(4, 4)
    assert again.serial != first.serial and again.play_id == "b" and again.progress[0] == 0.0
    after = s.plan(12, 4)  # blink b ended at 4 + 8 = 12: idle, a play of its own from there
    assert (after.action, after.play_id) == ("idle", "") and after.serial not in (first.serial, again.serial)
    assert after.progress[0] == 0.0
    s.apply(Change(Command(CommandKind.EMOTION, "happy", command_id="e")), at_g=16)  # no new play
    assert s.plan(16, 4).serial == after.serial
