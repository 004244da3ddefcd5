"""The Director end to end on a fake clock: real grammar, moderation and policy, a recording sink standing in
for the engine and a recording reply callable standing in for the chat bridges (no network needed here)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import pytest

from backend.actions import action
from backend.config import DirectorConfig
from backend.director import Director, DirectorState, say_duration_s
from backend.events import Ban, ChatMessage, Command, CommandKind, Deletion, Role
from tests.director.director_kit import FakeClock, Recorder, Replies, chat, paid


async def drain(d: Director, clock: FakeClock, sink: Recorder) -> list[tuple[str, str]]:
    """Tick through the whole queue, jumping the clock to each action's end."""
    for _ in range(100):
        await d.tick()
        if d._current is None:
            break
        clock.t = d._current.ends
    return sink.pairs


# ----------------------------------------------------------------------------- serialisation


async def test_one_action_at_a_time(make, clock: FakeClock, sink: Recorder) -> None:
    d = make()
    assert (await d.handle(chat("!wave", user="a"))).decision == "queued"
    assert (await d.handle(chat("!heart", user="b"))).decision == "queued"
    assert sink.commands == []  # only tick() dispatches
    await d.tick()
    assert sink.pairs == [("act", "wave")]
    clock.advance(action("wave").duration_s - 0.1)
    await d.tick()
    assert sink.pairs == [("act", "wave")]  # still waving: heart waits
    assert d.state()["now"]["argument"] == "wave" and [i["argument"] for i in d.state()["next"]] == ["heart"]
    clock.advance(0.1)
    await d.tick()
    assert sink.pairs == [("act", "wave"), ("act", "heart")]
    assert sink.commands[1].issued_at == clock.t
    clock.advance(action("heart").duration_s)
    await d.tick()
    assert d.state()["now"] is None and d.current is None


async def test_emotion_and_prompt_go_through_at_once(make, clock: FakeClock, sink: Recorder) -> None:
    d = make()
    await d.handle(chat("!wave", user="a"))
    await d.tick()
    assert (await d.handle(chat("!emote happy", user="b"))).decision == "immediate"
    assert (await d.handle(chat("!prompt cherry blossoms", user="c"))).decision == "immediate"
    assert sink.pairs == [("act", "wave"), ("emotion", "happy"), ("prompt", "cherry blossoms")]
    assert d.state()["now"]["argument"] == "wave"  # the body action is untouched


async def test_say_is_serialized_with_its_estimated_duration(make, clock: FakeClock, sink: Recorder) -> None:
    d = make()
    await d.handle(chat("!say thank you all for coming", user="a"))
    await d.handle(chat("!bow", user="b"))
    await d.tick()
    assert sink.pairs == [("say", "thank you all for coming")]
    clock.advance(say_duration_s("thank you all for coming") - 0.01)
    await d.tick()
    assert len(sink.commands) == 1
    clock.advance(0.01)
    await d.tick()
    assert sink.pairs[-1] == ("act", "bow")
    assert say_duration_s("谢谢大家来看直播") > say_duration_s("thankyou")  # CJK is spoken slower per character


# ----------------------------------------------------------------------------- priority


async def test_priority_broadcaster_then_paid_by_value_then_sub_then_viewer(make, clock, sink) -> None:
    d = make()
    await d.handle(chat("!nod", user="viewer1"))
    await d.handle(chat("!bow", user="sub", role=Role.SUBSCRIBER))
    await d.handle(paid("!heart", 100, user="p100"))
    await d.handle(chat("!smile", user="viewer2"))
    await d.handle(paid("make a heart please", 500, user="p500", kind="super_chat", platform="bilibili"))
    await d.handle(chat("!like", user="vip", role=Role.VIP))
    await d.handle(chat("!wave", user="boss", role=Role.BROADCASTER))
    await d.handle(chat("!blink", user="mod", role=Role.MODERATOR))
    order = [(i["user"], i["tier"]) for i in d.state()["next"]]
    assert order == [("boss", "staff"), ("mod", "staff"), ("p500", "paid"), ("p100", "paid"),
                     ("sub", "member"), ("vip", "member"), ("viewer1", "viewer"), ("viewer2", "viewer")]
    await drain(d, clock, sink)
    assert [c.user_name for c in sink.commands] == [u for u, _ in order]


async def test_streamer_commands_come_first_and_bypass_cooldowns(make, clock, sink) -> None:
    d = make(user_cooldown_s=60.0, global_cooldown_s=60.0, allowed_actions=("wave",))
    await d.handle(chat("!wave", user="a", role=Role.MODERATOR))
    for text in ("wave", "bow", "make a heart"):  # allowlist and cooldowns do not apply to the streamer
        assert (await d.handle_streamer(text)).decision == "queued"
    assert [(i["argument"], i["tier"]) for i in d.state()["next"]][:3] == [
        ("wave", "streamer"), ("bow", "streamer"), ("heart", "streamer")]
    say = await d.handle_streamer("say thanks for the raid everyone, this is a long sentence " * 4)
    assert say.decision == "queued"  # the streamer's say has no length limit
    assert (await d.handle_streamer("dance like nobody")).decision == "rejected"


# ----------------------------------------------------------------------------- cooldowns and replies


async def test_cooldowns_with_rate_limited_polite_reply(make, clock, sink, replies: Replies) -> None:
    d = make(user_cooldown_s=20.0, global_cooldown_s=2.0, cooldown_reply_interval_s=30.0)
    assert (await d.handle(chat("!wave", user="alice"))).decision == "queued"
    clock.advance(1.0)
    r = await d.handle(chat("!heart", user="bob"))  # global cooldown
    assert (r.decision, r.reason) == ("rejected", "cooldown")
    assert replies.sent == [("twitch", "@bob please wait 1 s")]
    clock.advance(4.0)
    r = await d.handle(chat("!heart", user="alice"))  # alice's own cooldown: 15 s left, but reply rate-limited
    assert (r.decision, r.reason) == ("rejected", "cooldown")
    assert len(replies.sent) == 1
    assert (await d.handle(chat("!heart", user="bob"))).decision == "queued"  # bob is free after 2 s
    clock.advance(26.0)  # t = 31: replies allowed again; alice is free
    assert (await d.handle(chat("!nod", user="alice"))).decision == "queued"
    clock.advance(1.0)
    await d.handle(chat("!nod", user="alice", platform="bilibili"))  # another platform identity: global cooldown
    assert replies.sent[-1] == ("bilibili", "@alice 请等待 1 秒")
    assert len(replies.sent) == 2


async def test_failed_reply_does_not_use_up_the_rate(make, clock, sink) -> None:
    cannot = Replies(allowed=False)
    d = Director(dataclasses.replace(DirectorConfig(), user_cooldown_s=20.0, dedup_window_s=0.0), sink,
                 clock=clock, reply=cannot)
    await d.handle(chat("!wave", user="a"))
    clock.advance(2.0)
    await d.handle(chat("!heart", user="a"))
    cannot.allowed = True
    clock.advance(1.0)
    await d.handle(chat("!nod", user="a"))
    assert cannot.sent == [("twitch", "@a please wait 17 s")]


async def test_mods_and_paid_bypass_cooldowns(make, clock, sink) -> None:
    d = make(user_cooldown_s=60.0, global_cooldown_s=10.0)
    await d.handle(chat("!wave", user="v"))
    assert (await d.handle(chat("!bow", user="m", role=Role.MODERATOR))).decision == "queued"
    assert (await d.handle(chat("!nod", user="m", role=Role.MODERATOR))).decision == "queued"
    assert (await d.handle(paid("!heart", 100, user="v"))).decision == "queued"
    assert (await d.handle(chat("!smile", user="s", role=Role.SUBSCRIBER))).reason == "cooldown"


# ----------------------------------------------------------------------------- limits, dedup, moderation


async def test_per_user_limit_per_stream(make, clock, sink) -> None:
    d = make(per_user_limit=2)
    assert (await d.handle(chat("!wave", user="a"))).decision == "queued"
    assert (await d.handle(chat("!heart", user="a"))).decision == "queued"
    r = await d.handle(chat("!nod", user="a"))
    assert (r.decision, r.reason) == ("rejected", "user_limit")
    assert (await d.handle(chat("!nod", user="b"))).decision == "queued"
    assert (await d.handle(chat("!nod", user="m", role=Role.MODERATOR))).decision == "queued"
    d.new_stream()
    assert (await d.handle(chat("!nod", user="a"))).decision == "queued"


async def test_dedup_of_spam(make, clock, sink) -> None:
    d = make(dedup_window_s=10.0)
    assert (await d.handle(chat("!wave", user="a"))).decision == "queued"
    clock.advance(3.0)
    r = await d.handle(chat("！ｗａｖｅ\u200b", user="a"))  # same after NFKC and zero-width removal
    assert (r.decision, r.reason) == ("rejected", "duplicate")
    assert (await d.handle(chat("!wave", user="b"))).decision == "queued"
    clock.advance(11.0)
    assert (await d.handle(chat("!wave", user="a"))).decision == "queued"


async def test_blocked_words_in_requests_and_in_say(make, clock, sink) -> None:
    d = make(blocked_words=("badword", "坏词"))
    r = await d.handle(chat("!prompt a BadWord beach", user="a"))
    assert (r.decision, r.reason) == ("rejected", "blocked_word")
    assert await d.handle(chat("badword wave", user="a")) is None  # chatter, not a request: left to the mods
    r = await d.handle(chat("!say you are a b\u200ba\u200bdword", user="b"))
    assert (r.decision, r.reason) == ("rejected", "blocked_word")
    r = await d.handle(chat("!说 你是坏词", user="c", platform="bilibili"))
    assert r.reason == "blocked_word"
    # the broadcaster's requests are not filtered, but what the idol says still is
    r = await d.handle(chat("!say ＢＡＤＷＯＲＤ", user="boss", role=Role.BROADCASTER))
    assert r.reason == "blocked_word"
    r = await d.handle_streamer("say badword")
    assert (r.decision, r.reason) == ("rejected", "blocked_word")
    await d.tick()
    assert sink.commands == []
    assert (await d.handle(chat("!say hello friends", user="e"))).decision == "queued"


async def test_length_limits(make, clock, sink) -> None:
    d = make(max_message_chars=20, max_say_chars=8)
    r = await d.handle(chat("!say " + "a" * 30, user="a"))
    assert (r.decision, r.reason) == ("rejected", "too_long")
    assert await d.handle(chat("just a long chat line about the game " * 3, user="a")) is None  # chatter
    assert await d.handle(paid("", 1000, user="gifter", kind="gift")) is None  # a gift without text
    assert [x.reason for x in d.decisions] == ["too_long"]
    r = await d.handle(chat("!say way too long", user="a"))
    assert (r.decision, r.reason) == ("rejected", "say_too_long")
    assert (await d.handle(chat("!say hi all", user="a"))).decision == "queued"


async def test_zero_width_tricks_still_parse(make, clock, sink) -> None:
    d = make()
    r = await d.handle(chat("!w\u200ba\u200dve", user="a"))
    assert (r.decision, r.argument) == ("queued", "wave")


async def test_mod_only_and_allowlist(make, clock, sink) -> None:
    d = make(allowed_actions=("wave", "heart"), mod_only_actions=("racket",))
    assert (await d.handle(chat("!wave", user="a"))).decision == "queued"
    assert (await d.handle(chat("!bow", user="a"))).reason == "not_allowed"
    assert (await d.handle(chat("!racket", user="a", role=Role.VIP))).reason == "mod_only"
    assert (await d.handle(chat("!racket", user="m", role=Role.MODERATOR))).decision == "queued"
    assert (await d.handle(chat("!bow", user="boss", role=Role.BROADCASTER))).decision == "queued"
    # free text only reaches allowed, non-mod-only actions
    assert await d.handle(chat("tennis racket please", user="z")) is None
    assert (await d.handle(chat("make a heart", user="z"))).decision == "queued"


async def test_chatter_and_unknown_commands(make, clock, sink) -> None:
    d = make()
    assert await d.handle(chat("what a nice stream", user="a")) is None
    assert d.decisions == []  # chatter is not kept in the decision log
    r = await d.handle(chat("!dance", user="a"))
    assert (r.decision, r.reason) == ("rejected", "unknown_command")
    d2 = make(free_text=False)
    assert await d2.handle(chat("wave", user="a")) is None
    assert (await d2.handle(paid("wave", 200, user="p"))).decision == "queued"  # paid text always matched
    redemption = chat("heart", user="r", reward_id="reward-1")
    assert (await d2.handle(redemption)).decision == "queued"
    assert d2.state()["next"][0]["tier"] == "paid"
    with pytest.raises(TypeError, match="not a chat event"):
        await d.handle("!wave")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- votes


async def test_vote_mode(make, clock, sink) -> None:
    d = make(vote_window_s=10.0)
    assert (await d.handle(chat("!wave", user="u1"))).decision == "voted"
    clock.advance(1.0)
    await d.handle(chat("!heart", user="u2"))
    await d.handle(chat("!heart", user="u3", role=Role.SUBSCRIBER))
    await d.handle(chat("!wave", user="u4"))
    await d.handle(chat("!bow", user="u5"))
    assert d.state()["vote"]["tally"] == {"wave": 2, "heart": 2, "bow": 1}
    # paid and mod commands skip the vote and go first
    assert (await d.handle(paid("!nod", 300, user="p"))).decision == "queued"
    await d.tick()
    assert sink.pairs == [("act", "nod")]
    clock.advance(9.0)  # t = +10: the window closes; wave and heart tie, wave was first
    await d.tick()
    won = [x for x in d.decisions if x.decision == "vote_won"]
    assert len(won) == 1 and won[0].argument == "wave" and won[0].reason == "2_votes"
    assert d.state()["vote"] is None
    await drain(d, clock, sink)
    assert sink.pairs == [("act", "nod"), ("act", "wave")]


# ----------------------------------------------------------------------------- purge


async def test_purge_on_deletion_and_ban(make, clock, sink) -> None:
    d = make()
    m1 = chat("!wave", user="troll", message_id="del-me")
    await d.handle(m1)
    await d.handle(chat("!heart", user="troll"))
    await d.handle(chat("!bow", user="nice"))
    await d.handle(chat("!nod", user="other", platform="bilibili"))
    r = await d.handle(Deletion("twitch", "chan", "del-me"))
    assert (r.decision, r.reason, r.argument) == ("purged", "deleted", "wave")
    assert [i["argument"] for i in d.state()["next"]] == ["heart", "bow", "nod"]
    assert await d.handle(Deletion("bilibili", "chan", "del-me")) is None  # ids are per platform
    r = await d.handle(Ban("twitch", "chan", "id-troll", "troll"))
    assert (r.decision, r.reason) == ("purged", "banned")
    assert [i["user"] for i in d.state()["next"]] == ["nice", "other"]
    await d.handle_streamer("wave", source="voice")
    r = await d.handle(Ban("twitch", "chan", ""))  # whole twitch chat cleared
    assert r.reason == "chat_cleared"
    assert [(i["user"], i["platform"]) for i in d.state()["next"]] == [("streamer", "voice"), ("other", "bilibili")]


async def test_ban_withdraws_votes(make, clock, sink) -> None:
    d = make(vote_window_s=10.0)
    await d.handle(chat("!bow", user="troll"))
    await d.handle(chat("!wave", user="a"))
    await d.handle(chat("!bow", user="troll2", message_id="x1"))
    await d.handle(Ban("twitch", "chan", "id-troll"))
    await d.handle(Deletion("twitch", "chan", "x1"))
    clock.advance(10.0)
    await d.tick()
    assert sink.pairs == [("act", "wave")]


# ----------------------------------------------------------------------------- queue bound


async def test_full_queue_drops_lowest_priority_with_a_logged_reason(make, clock, sink, caplog) -> None:
    d = make(queue_size=2)
    await d.handle(chat("!wave", user="v1"))
    await d.handle(chat("!bow", user="v2"))
    r = await d.handle(chat("!nod", user="v3"))
    assert (r.decision, r.reason) == ("rejected", "queue_full")
    with caplog.at_level(logging.INFO, logger="backend.director"):
        await d.handle(chat("!heart", user="s", role=Role.SUBSCRIBER))
    assert "decision=dropped reason=queue_full_lowest_priority user=v2 platform=twitch" in caplog.text
    assert [i["user"] for i in d.state()["next"]] == ["s", "v1"]


# ----------------------------------------------------------------------------- state, controls, log


async def test_state_and_subscription(make, clock, sink) -> None:
    d = make()
    seen: list[dict] = []
    unsubscribe = d.subscribe(seen.append)
    await d.handle(chat("!wave", user="a", platform="bilibili"))
    assert seen[-1] == {"now": None, "next": [{"id": seen[-1]["next"][0]["id"], "kind": "act", "argument": "wave",
                                                "user": "a", "platform": "bilibili", "tier": "viewer",
                                                "value_cents": 0, "duration_s": action("wave").duration_s,
                                                "held": False}], "vote": None}
    await d.handle(paid("!heart", 250, user="p"))
    await d.tick()
    state = d.state()
    assert state["now"]["argument"] == "heart" and state["now"]["value_cents"] == 250
    assert state["now"]["ends_at"] == pytest.approx(clock.t + action("heart").duration_s)
    assert [i["argument"] for i in state["next"]] == ["wave"]
    assert seen[-1] == state
    n = len(seen)
    await d.tick()  # nothing changed: no callback
    await d.handle(chat("!emote sad", user="x"))  # immediate: the overlay state is unchanged
    assert len(seen) == n
    unsubscribe()
    await d.handle(chat("!bow", user="y"))
    assert len(seen) == n


async def test_skip_remove_approve(make, clock, sink) -> None:
    d = make()
    await d.handle(chat("!wave", user="a"))
    await d.handle(chat("!heart", user="b"))
    bow = await d.handle(chat("!bow", user="c"))
    nod = await d.handle(chat("!nod", user="d"))
    await d.tick()
    assert (await d.skip()).decision == "skipped"
    assert sink.pairs[-1] == ("act", "idle")  # the engine stops the action
    assert d.approve(nod.command_id) and not d.approve("nope")
    assert d.remove(bow.command_id) and not d.remove(bow.command_id)
    await d.tick()
    assert sink.pairs[-1] == ("act", "nod")
    assert [i["argument"] for i in d.state()["next"]] == ["heart"]
    assert {x.decision for x in d.decisions} >= {"skipped", "approved", "removed", "dispatched", "queued"}


async def test_decisions_are_logged_and_bounded(clock, sink, caplog) -> None:
    cfg = dataclasses.replace(DirectorConfig(), user_cooldown_s=0.0, global_cooldown_s=0.0, dedup_window_s=0.0)
    d = Director(cfg, sink, clock=clock, decision_log_size=5)
    with caplog.at_level(logging.INFO, logger="backend.director"):
        for i in range(8):
            await d.handle(chat("!dance", user=f"u{i}"))
    assert len(d.decisions) == 5 and d.decisions[-1].user == "u7"
    assert "decision=rejected reason=unknown_command user=u7 platform=twitch" in caplog.text


async def test_sink_failure_is_logged_and_the_stream_goes_on(clock, caplog) -> None:
    calls: list[Command] = []

    async def flaky(cmd: Command) -> None:
        calls.append(cmd)
        if len(calls) == 1:
            raise ConnectionError("engine restarting")

    cfg = dataclasses.replace(DirectorConfig(), user_cooldown_s=0.0, global_cooldown_s=0.0)
    d = Director(cfg, flaky, clock=clock)
    await d.handle(chat("!emote happy", user="a"))
    await d.handle(chat("!emote sad", user="b"))
    assert [c.argument for c in calls] == ["happy", "sad"]
    assert d.decisions[1].decision == "error" and d.decisions[1].reason == "sink_failed:ConnectionError"
    assert "engine restarting" in caplog.text


async def test_async_lifecycle_dispatches_by_itself(sink: Recorder) -> None:
    """Real clock, real dispatch task: the queued action is sent without anyone calling tick()."""
    got = asyncio.Event()

    async def engine(cmd: Command) -> None:
        sink.commands.append(cmd)
        got.set()

    cfg = dataclasses.replace(DirectorConfig(), user_cooldown_s=0.0, global_cooldown_s=0.0)
    d = Director(cfg, engine, poll_interval_s=5.0)  # a long poll: the wake-up must come from handle()
    async with d:
        assert d.lifecycle is DirectorState.RUNNING
        await d.handle(chat("!wave", user="a"))
        await asyncio.wait_for(got.wait(), 2.0)
    assert d.lifecycle is DirectorState.CLOSED and sink.pairs == [("act", "wave")]
    with pytest.raises(RuntimeError, match="closed"):
        async with d:
            pass


async def test_closing_as_the_dispatch_task_is_woken_ends_it(sink: Recorder) -> None:
    """A wake-up (a queued command, the engine's word that an action ended) in the same instant as the close:
    the dispatch task must still end. Python 3.11's ``asyncio.wait_for`` returned the wake-up and dropped the
    cancel, so the task ran on and the close waited for it forever (a rare hang of a full test run)."""
    cfg = dataclasses.replace(DirectorConfig(), user_cooldown_s=0.0, global_cooldown_s=0.0)
    d = Director(cfg, sink, poll_interval_s=5.0)
    async with asyncio.timeout(10) as bound:
        async with d:
            for _ in range(3):
                await asyncio.sleep(0)  # the dispatch task ticked once and waits for a wake-up (5 s poll)
            await d.handle(chat("!wave", user="a"))  # wakes it; closed before it runs again
    assert not bound.expired(), "the close waited for the dispatch task until the bound"
    assert sink.pairs == []  # it never ran again: the queued wave was not sent


async def test_a_close_cancelled_from_outside_says_so() -> None:
    """A close that its caller bounds (or cancels) passes the cancel on instead of swallowing it with the
    dispatch task's own: here a sink that ignores the first cancel keeps the task alive past the bound."""
    entered = asyncio.Event()

    async def stubborn(cmd: Command) -> None:
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await asyncio.Event().wait()  # the second cancel ends it

    cfg = dataclasses.replace(DirectorConfig(), user_cooldown_s=0.0, global_cooldown_s=0.0)
    d = Director(cfg, stubborn, poll_interval_s=5.0)
    await d.__aenter__()
    await d.handle(chat("!wave", user="a"))
    async with asyncio.timeout(10):
        await entered.wait()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await d.__aexit__(None, None, None)
    assert d.lifecycle is DirectorState.CLOSED


def test_bad_config_is_named() -> None:
    with pytest.raises(ValueError, match="dance"):
        Director(dataclasses.replace(DirectorConfig(), mod_only_actions=("dance",)), Recorder())
    with pytest.raises(KeyError, match="sleep"):
        Director(DirectorConfig(), Recorder(), idle_action="sleep")


async def test_chat_message_type_is_the_shared_one() -> None:
    assert isinstance(chat("x"), ChatMessage) and CommandKind.ACT.value == "act"


async def test_approval_mode_holds_viewer_items(clock: FakeClock, sink: Recorder) -> None:
    cfg = dataclasses.replace(DirectorConfig(), user_cooldown_s=0.0, global_cooldown_s=0.0, dedup_window_s=0.0)
    d = Director(cfg, sink, clock=clock, require_approval=True)
    wave = await d.handle(chat("!wave", user="v"))
    prompt = await d.handle(chat("!prompt neon city", user="v2"))
    await d.handle(chat("!bow", user="m", role=Role.MODERATOR))
    assert wave.reason == "tier_viewer_held" and prompt.decision == "queued"
    assert [(i["argument"], i["held"]) for i in d.state()["next"]] == [
        ("bow", False), ("wave", True), ("neon city", True)]
    await drain(d, clock, sink)
    assert sink.pairs == [("act", "bow")]  # held items stay until approved
    assert d.approve(prompt.command_id) and d.approve(wave.command_id)
    await d.tick()
    # the approved prompt goes out and does not occupy the body: the wave follows in the same tick
    assert sink.pairs == [("act", "bow"), ("prompt", "neon city"), ("act", "wave")]


async def test_full_width_prefix_in_config(clock: FakeClock, sink: Recorder) -> None:
    cfg = dataclasses.replace(DirectorConfig(), prefix="！", user_cooldown_s=0.0, global_cooldown_s=0.0)
    d = Director(cfg, sink, clock=clock)
    assert (await d.handle(chat("!比心", user="a"))).argument == "heart"
    assert (await d.handle(chat("！点赞", user="b"))).argument == "like"


async def test_a_failing_reply_or_subscriber_does_not_stop_the_director(clock: FakeClock, sink: Recorder,
                                                                        caplog) -> None:
    async def broken_reply(platform: str, text: str) -> bool:
        raise ConnectionResetError("chat socket closed")

    def broken_overlay(state: dict) -> None:
        raise RuntimeError("overlay gone")

    cfg = dataclasses.replace(DirectorConfig(), user_cooldown_s=30.0, global_cooldown_s=0.0, dedup_window_s=0.0)
    d = Director(cfg, sink, clock=clock, reply=broken_reply)
    d.subscribe(broken_overlay)
    assert (await d.handle(chat("!wave", user="a"))).decision == "queued"
    assert (await d.handle(chat("!bow", user="a"))).reason == "cooldown"
    await d.tick()
    assert sink.pairs == [("act", "wave")]
    assert "chat socket closed" in caplog.text and "overlay gone" in caplog.text


async def test_controls_from_mods_in_chat_and_from_the_streamer(make, clock, sink) -> None:
    d = make()
    await d.handle(chat("!wave", user="a"))
    bow = await d.handle(chat("!bow", user="b"))
    nod = await d.handle(chat("!nod", user="c"))
    await d.tick()
    # a viewer's "!skip" is no control (and no action either)
    assert (await d.handle(chat("!skip", user="a"))).reason == "unknown_command"
    assert d.current.argument == "wave"
    assert (await d.handle(chat("!skip", user="m", role=Role.MODERATOR))).decision == "skipped"
    assert (await d.handle(chat(f"!remove {bow.command_id}", user="m", role=Role.MODERATOR))).decision == "removed"
    assert (await d.handle(chat("!approve d999", user="m", role=Role.MODERATOR))).reason == "unknown_id"
    assert (await d.handle_streamer(f"approve {nod.command_id}")).decision == "approved"
    await d.tick()
    assert d.current.argument == "nod"
    assert (await d.handle_streamer("跳过")).decision == "skipped"
    assert (await d.handle_streamer("skip")).reason == "nothing_to_skip"


async def test_streamer_free_text_is_looser_than_viewers(make, sink) -> None:
    """The streamer's voice commands ("Idol, wave to chat." with the wake phrase stripped) work, though an
    alias covers only part of the line; the same words from a viewer stay chatter."""
    d = make()
    for text, kind, arg in [("wave to chat", CommandKind.ACT, "wave"), ("Wave to chat.", CommandKind.ACT, "wave"),
                            ("look surprised", CommandKind.EMOTION, "surprised"),
                            ("wave at the camera", CommandKind.ACT, "wave"), ("make a heart", CommandKind.ACT, "heart")]:
        r = await d.handle_streamer(text)
        assert r.decision in ("queued", "immediate"), (text, r)  # an emotion plays at once, over the action
        assert (r.kind, r.argument) == (kind.value, arg), text
    for text in ("don't wave", "I really like this game", "what a game, chat", "dance like nobody"):
        assert (await d.handle_streamer(text)).decision == "rejected", text
    queued = len(d.state()["next"])
    for text in ("wave to chat", "wave at the camera", "I love your wave"):
        assert await d.handle(chat(text, user="viewer")) is None, text  # chatter: ignored, not queued
    assert len(d.state()["next"]) == queued
