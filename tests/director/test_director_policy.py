"""Policy parts on their own: tiers, the bounded priority queue, cooldowns, reply limiter, limits, votes."""

from __future__ import annotations

import pytest

from backend.director.moderation import Rejected
from backend.director.policy import (
    CommandQueue,
    Cooldowns,
    QueueItem,
    ReplyLimiter,
    Tier,
    UsageLimits,
    VoteBox,
    tier_for,
    wait_seconds,
)
from backend.events import Command, CommandKind, Role


def item(name: str, tier: Tier, cents: int = 0) -> QueueItem:
    return QueueItem(Command(CommandKind.ACT, "wave", command_id=name), tier, value_cents=cents)


def ids(q: CommandQueue) -> list[str]:
    return [i.command.command_id for i in q]


def test_tiers() -> None:
    assert tier_for(Role.BROADCASTER) is Tier.STAFF and tier_for(Role.MODERATOR, paid=True) is Tier.STAFF
    assert tier_for(Role.VIEWER, paid=True) is Tier.PAID and tier_for(Role.SUBSCRIBER, paid=True) is Tier.PAID
    assert tier_for(Role.VIP) is Tier.MEMBER and tier_for(Role.SUBSCRIBER) is Tier.MEMBER
    assert tier_for(Role.VIEWER) is Tier.VIEWER


def test_queue_orders_by_tier_then_value_then_fifo() -> None:
    q = CommandQueue(10)
    for it in (item("v1", Tier.VIEWER), item("p100", Tier.PAID, 100), item("s1", Tier.MEMBER),
               item("p500", Tier.PAID, 500), item("m1", Tier.STAFF), item("v2", Tier.VIEWER),
               item("p100b", Tier.PAID, 100), item("s2", Tier.MEMBER)):
        q.push(it)
    assert ids(q) == ["m1", "p500", "p100", "p100b", "s1", "s2", "v1", "v2"]
    assert q.pop().command.command_id == "m1"


def test_full_queue_drops_lowest_or_refuses_newcomer() -> None:
    q = CommandQueue(2)
    q.push(item("v1", Tier.VIEWER))
    q.push(item("v2", Tier.VIEWER))
    with pytest.raises(Rejected, match="queue_full"):
        q.push(item("v3", Tier.VIEWER))  # equal tier: FIFO, the newcomer is the lowest
    evicted = q.push(item("s1", Tier.MEMBER))
    assert evicted is not None and evicted.command.command_id == "v2"
    assert ids(q) == ["s1", "v1"]


def test_promote_and_remove() -> None:
    q = CommandQueue(5)
    for it in (item("a", Tier.STAFF), item("b", Tier.VIEWER), item("c", Tier.VIEWER)):
        q.push(it)
    assert q.promote("c") is not None and ids(q) == ["c", "a", "b"]
    assert q.promote("b") is not None and ids(q) == ["c", "b", "a"]  # approvals keep their order
    assert q.promote("zzz") is None
    assert [i.command.command_id for i in q.remove_where(lambda i: i.command.command_id == "a")] == ["a"]
    assert ids(q) == ["c", "b"] and len(q) == 2
    held = item("h", Tier.STREAMER)
    held.held = True
    q.push(held)
    assert q.pop().command.command_id == "c" and q.pop().command.command_id == "b"
    assert q.pop() is None and len(q) == 1  # a held item is never popped
    q.promote("h")
    assert q.pop().command.command_id == "h"
    with pytest.raises(ValueError):
        CommandQueue(0)


def test_cooldowns_user_and_global() -> None:
    c = Cooldowns(user_s=20.0, global_s=2.0)
    assert c.remaining("a", 0.0) == 0.0
    c.record("a", 0.0)
    assert c.remaining("a", 5.0) == pytest.approx(15.0)
    assert c.remaining("b", 1.0) == pytest.approx(1.0)  # global
    assert c.remaining("b", 2.0) == 0.0
    assert c.remaining("a", 20.0) == 0.0
    assert wait_seconds(14.2) == 15 and wait_seconds(0.01) == 1 and wait_seconds(3.0) == 3


def test_reply_limiter() -> None:
    r = ReplyLimiter(30.0)
    assert r.ready(0.0)
    r.mark(0.0)
    assert not r.ready(29.9) and r.ready(30.0)


def test_usage_limits() -> None:
    u = UsageLimits(2)
    for _ in range(2):
        assert not u.exhausted("a")
        u.record("a")
    assert u.exhausted("a") and not u.exhausted("b") and u.used("a") == 2
    u.reset()
    assert not u.exhausted("a")
    unlimited = UsageLimits(0)
    for _ in range(100):
        unlimited.record("a")
    assert not unlimited.exhausted("a")


def test_votes_most_wins_ties_by_first_vote() -> None:
    v = VoteBox(10.0)
    assert v.enabled and not v.open
    v.cast("u1", "heart", 0.0)
    v.cast("u2", "wave", 1.0)
    v.cast("u3", "wave", 2.0)
    v.cast("u4", "heart", 3.0)
    assert v.tally() == {"heart": 2, "wave": 2}
    assert not v.due(9.9) and v.due(10.0)
    res = v.close()
    assert res is not None and (res.option, res.votes) == ("heart", 2)  # tie: heart was voted first
    assert not v.open and v.close() is None


def test_vote_once_per_user_and_withdraw() -> None:
    v = VoteBox(10.0)
    assert v.cast("u1", "bow", 0.0, message_id="m1")
    assert not v.cast("u1", "nod", 1.0, message_id="m2")  # changes the ballot
    v.cast("u2", "nod", 2.0, platform="bilibili")
    assert v.tally() == {"nod": 2}
    assert v.withdraw(message_id="m2") == 1
    assert v.withdraw(platform="bilibili") == 1
    assert not v.open and not VoteBox(0).enabled
