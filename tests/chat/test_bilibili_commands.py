"""Web and open platform commands -> backend.events, with payloads shaped like the live servers' JSON
(field layout from blivedm's models and the open platform docs)."""

from __future__ import annotations

import json
import logging

import pytest

from backend.events import ChatMessage, Deletion, PaidMessage, Role
from chat_bridges.bilibili.commands import CENTS_PER_CNY, CommandError, command_to_events
from chat_bridges.bilibili.open_platform import open_command_to_events

OWNER = 1000


def danmu(text: str, uid: int = 12345, name: str = "观众A", admin: int = 0, medal: list | None = None,
          guard: int = 0) -> dict:
    meta = [0, 1, 25, 16777215, 1700000000123, 1700000000, 0, "abcd", 0, 0, 0, "", 0, "{}", "{}",
            {"mode": 0, "extra": json.dumps({"id_str": "dm-1", "content": text})}]
    return {"cmd": "DANMU_MSG", "info": [meta, text, [uid, name, admin, 0, 0, 10000, 1, ""], medal or [],
                                         [31, 0, 9868950, ">50000", 0], ["", ""], 0, guard, None]}


def events(data: dict) -> list:
    return command_to_events(data["cmd"], data, channel="5050", owner_uid=OWNER)


def test_danmu_msg_with_cjk_emoji_medal_and_admin() -> None:
    [msg] = events(danmu("跳个舞吧 💃 dance!", admin=1, medal=[21, "粉丝团", "主播", 5050, 398668, "", 0]))
    assert msg == ChatMessage(platform="bilibili", channel="5050", user_id="12345", user_name="观众A",
                              text="跳个舞吧 💃 dance!", message_id="dm-1", role=Role.MODERATOR,
                              badges=("admin/1", "medal/粉丝团:21"), timestamp=1700000000.123)


def test_danmu_roles_guard_owner_viewer() -> None:
    [guard] = events(danmu("hi", guard=3))
    assert guard.role is Role.SUBSCRIBER and guard.badges == ("guard/3",)
    [owner] = events(danmu("hi", uid=OWNER, admin=1))
    assert owner.role is Role.BROADCASTER
    [viewer] = events(danmu("hi"))
    assert viewer.role is Role.VIEWER and viewer.badges == ()


def test_danmu_unlogged_masked_name() -> None:
    [msg] = events(danmu("hello", uid=0, name="观***"))
    assert msg.user_id == "0" and msg.user_name == "观***"


def test_send_gift_gold_and_silver() -> None:
    gold = {"cmd": "SEND_GIFT", "data": {"giftName": "小花花", "num": 52, "uid": 7, "uname": "送礼人", "price": 100,
                                         "coin_type": "gold", "total_coin": 5200, "tid": "t1", "timestamp": 1700000001}}
    [paid] = events(gold)
    assert paid == PaidMessage(platform="bilibili", channel="5050", user_id="7", user_name="送礼人",
                               text="小花花 x52", value_cents=73, kind="gift", message_id="t1",
                               timestamp=1700000001.0)  # 5.2 CNY * 14 = 72.8 cents
    silver = {"cmd": "SEND_GIFT", "data": {"giftName": "辣条", "num": 10, "uid": 7, "uname": "x", "price": 100,
                                           "coin_type": "silver", "total_coin": 1000}}
    assert events(silver)[0].value_cents == 0


def test_guard_buy() -> None:
    data = {"cmd": "GUARD_BUY", "data": {"uid": 9, "username": "舰长大人", "guard_level": 3, "num": 1,
                                         "price": 198000, "start_time": 1700000002}}
    [paid] = events(data)
    assert paid.kind == "guard" and paid.text == "舰长 x1"
    assert paid.value_cents == 198 * CENTS_PER_CNY
    assert paid.role is Role.SUBSCRIBER


def test_super_chat_and_its_deletion() -> None:
    sc = {"cmd": "SUPER_CHAT_MESSAGE", "data": {"id": 4242, "uid": 8, "price": 30, "message": "唱首歌 🎤",
                                                "user_info": {"uname": "SC君", "guard_level": 0}, "ts": 1700000003}}
    [paid] = events(sc)
    assert (paid.kind, paid.text, paid.value_cents, paid.message_id) == ("super_chat", "唱首歌 🎤", 420, "4242")
    deleted = events({"cmd": "SUPER_CHAT_MESSAGE_DELETE", "data": {"ids": [4242, 4243]}})
    assert deleted == [Deletion("bilibili", "5050", "4242"), Deletion("bilibili", "5050", "4243")]


def test_unknown_command_is_ignored(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="chat_bridges.bilibili.commands"):
        assert events({"cmd": "INTERACT_WORD", "data": {}}) == []
    assert "cmd=INTERACT_WORD" in caplog.text


@pytest.mark.parametrize("data", [
    {"cmd": "DANMU_MSG", "info": []},
    {"cmd": "DANMU_MSG", "info": [[0, 0, 0, 0, 1], 5, [1, "a", 0]]},
    {"cmd": "SEND_GIFT", "data": {"giftName": "x"}},
    {"cmd": "SUPER_CHAT_MESSAGE", "data": {"id": 1, "uid": 1, "price": "lots", "message": "m",
                                           "user_info": {"uname": "u"}}},
    {"cmd": "SUPER_CHAT_MESSAGE_DELETE", "data": {"ids": "1"}},
])
def test_malformed_command_raises_command_error_naming_it(data: dict) -> None:
    with pytest.raises(CommandError, match=f"bad {data['cmd']} command in room 5050"):
        events(data)


# ----------------------------------------------------------------------------- open platform


def open_events(cmd: str, data: dict) -> list:
    return open_command_to_events(cmd, {"cmd": cmd, "data": data}, channel="777", owner_open_id="owner-open")


def test_open_platform_dm() -> None:
    [msg] = open_events("LIVE_OPEN_PLATFORM_DM", {
        "uname": "开放观众", "uid": 0, "open_id": "oid-1", "msg": "你好 ✨", "msg_id": "m-1", "timestamp": 1700000004,
        "guard_level": 2, "fans_medal_wearing_status": True, "fans_medal_name": "团", "fans_medal_level": 5,
        "room_id": 777, "dm_type": 0, "emoji_img_url": ""})
    assert msg == ChatMessage(platform="bilibili", channel="777", user_id="oid-1", user_name="开放观众",
                              text="你好 ✨", message_id="m-1", role=Role.SUBSCRIBER,
                              badges=("guard/2", "medal/团:5"), timestamp=1700000004.0)
    [owner] = open_events("LIVE_OPEN_PLATFORM_DM", {"uname": "主播", "open_id": "owner-open", "msg": "hi"})
    assert owner.role is Role.BROADCASTER


def test_open_platform_gift_paid_flag() -> None:
    gift = {"uname": "u", "open_id": "o", "gift_name": "牛哇", "gift_num": 2, "price": 100, "r_price": 100,
            "paid": True, "msg_id": "g-1", "timestamp": 1}
    assert open_events("LIVE_OPEN_PLATFORM_SEND_GIFT", gift)[0].value_cents == 3  # 0.2 CNY -> 2.8 cents
    assert open_events("LIVE_OPEN_PLATFORM_SEND_GIFT", {**gift, "paid": False})[0].value_cents == 0


def test_open_platform_guard_super_chat_and_delete() -> None:
    [guard] = open_events("LIVE_OPEN_PLATFORM_GUARD", {
        "user_info": {"open_id": "o", "uname": "舰长"}, "guard_level": 3, "guard_num": 1, "guard_unit": "月",
        "price": 198000, "msg_id": "gd-1", "timestamp": 1})
    assert (guard.kind, guard.value_cents, guard.text) == ("guard", 2772, "舰长 x1月")
    [sc] = open_events("LIVE_OPEN_PLATFORM_SUPER_CHAT", {
        "uname": "u", "open_id": "o", "message_id": 55, "message": "SC!", "rmb": 50, "msg_id": "s-1", "timestamp": 1})
    assert (sc.kind, sc.value_cents, sc.message_id) == ("super_chat", 700, "55")
    deleted = open_events("LIVE_OPEN_PLATFORM_SUPER_CHAT_DEL", {"room_id": 777, "message_ids": [55], "msg_id": "d"})
    assert deleted == [Deletion("bilibili", "777", "55")]
    with pytest.raises(CommandError, match="LIVE_OPEN_PLATFORM_SUPER_CHAT"):
        open_events("LIVE_OPEN_PLATFORM_SUPER_CHAT", {"uname": "u", "rmb": None})
