"""Twitch IRC sans-I/O core, fed real-format lines (as in Twitch's IRC docs and captured from chat)."""

from __future__ import annotations

import logging
import random

import pytest

from backend.events import Ban, ChatMessage, Deletion, PaidMessage, Role
from chat_bridges.twitch import protocol as p

PRIVMSG = (
    "@badge-info=subscriber/8;badges=subscriber/6,premium/1;color=#0D4200;display-name=Ronni;"
    "emote-only=0;emotes=25:0-4,12-16/1902:6-10;first-msg=0;flags=;id=b34ccfc7-4977-403a-8a94-33c6bac34fb8;"
    "mod=0;returning-chatter=0;room-id=1337;subscriber=1;tmi-sent-ts=1507246572675;turbo=0;user-id=1337;"
    "user-type=global_mod :ronni!ronni@ronni.tmi.twitch.tv PRIVMSG #ronni :Kappa Keepo Kappa"
)


def test_parse_line_tags_prefix_params_trailing():
    msg = p.parse_line(PRIVMSG + "\r\n")
    assert msg.command == "PRIVMSG"
    assert msg.prefix == "ronni!ronni@ronni.tmi.twitch.tv"
    assert msg.nick == "ronni"
    assert msg.params == ("#ronni", "Kappa Keepo Kappa")
    assert msg.tags["emotes"] == "25:0-4,12-16/1902:6-10"
    assert msg.tags["flags"] == ""  # empty value
    assert msg.tags["tmi-sent-ts"] == "1507246572675"


def test_parse_line_without_tags_and_server_prefix():
    msg = p.parse_line(":tmi.twitch.tv 001 justinfan12345 :Welcome, GLHF!")
    assert (msg.command, msg.params, msg.tags, msg.nick) == ("001", ("justinfan12345", "Welcome, GLHF!"), {}, "")
    assert p.parse_line("PING :tmi.twitch.tv").params == ("tmi.twitch.tv",)
    assert p.parse_line(":tmi.twitch.tv CAP * ACK :twitch.tv/tags twitch.tv/commands").params == (
        "*", "ACK", "twitch.tv/tags twitch.tv/commands")


@pytest.mark.parametrize(("raw", "value"), [
    (r"hello\sworld", "hello world"),
    (r"a\:b", "a;b"),
    (r"back\\slash", "back\\slash"),
    (r"line\rbreak\n", "line\rbreak\n"),
    (r"unknown\qescape", "unknownqescape"),
    ("trailing\\", "trailing"),
    ("plain", "plain"),
])
def test_tag_value_unescaping(raw, value):
    assert p.unescape_tag_value(raw) == value


def test_escape_roundtrip_through_a_line():
    text = "semi; colon \\ back\r\nslash"
    line = p.serialize(p.IrcMessage("PRIVMSG", ("#c", "x"), {"k": text}))
    assert " " not in line.split(" ", 1)[0]  # the tags word has no raw space
    assert p.parse_line(line).tags["k"] == text


def test_privmsg_maps_to_chat_message_with_role_and_time():
    conn = p.TwitchIrcConnection("ronni", rng=random.Random(0))
    (event,) = conn.receive_data(PRIVMSG)
    assert isinstance(event, ChatMessage)
    assert event.platform == "twitch" and event.channel == "ronni"
    assert (event.user_id, event.user_name, event.text) == ("1337", "Ronni", "Kappa Keepo Kappa")
    assert event.message_id == "b34ccfc7-4977-403a-8a94-33c6bac34fb8"
    assert event.timestamp == pytest.approx(1507246572.675)
    # user-id == room-id: the channel owner even without the broadcaster badge
    assert event.role is Role.BROADCASTER
    assert event.badges == ("subscriber/6", "premium/1")


@pytest.mark.parametrize(("badges", "extra", "role"), [
    ("broadcaster/1,subscriber/0", "", Role.BROADCASTER),
    ("moderator/1", "", Role.MODERATOR),
    ("", "mod=1;", Role.MODERATOR),
    ("vip/1", "vip=1;", Role.VIP),
    ("subscriber/12", "", Role.SUBSCRIBER),
    ("founder/0", "", Role.SUBSCRIBER),
    ("glhf-pledge/1", "", Role.VIEWER),
    ("", "", Role.VIEWER),
])
def test_role_from_badges(badges, extra, role):
    line = f"@badges={badges};{extra}user-id=5;room-id=9 :v!v@v.tmi.twitch.tv PRIVMSG #chan :hi"
    (event,) = p.TwitchIrcConnection("chan").receive_data(line)
    assert event.role is role


def test_bits_become_paid_message():
    line = ("@badges=bits/100;bits=100;display-name=Cheerer;id=abc;user-id=77;room-id=9;tmi-sent-ts=1700000000000 "
            ":cheerer!cheerer@cheerer.tmi.twitch.tv PRIVMSG #chan :cheer100 !dance")
    (event,) = p.TwitchIrcConnection("chan").receive_data(line)
    assert isinstance(event, PaidMessage)
    assert (event.kind, event.value_cents, event.text, event.user_id) == ("bits", 100, "!dance", "77")


def test_reward_reply_emoji_me_and_cjk():
    conn = p.TwitchIrcConnection("chan")
    lines = "\r\n".join([
        "@custom-reward-id=27c8e486-a386-40cc-9a4b-dbb5cf01e439;display-name=Viewer;id=m1;user-id=1 "
        ":viewer!viewer@viewer.tmi.twitch.tv PRIVMSG #chan :please wave",
        "@display-name=Alice;id=m2;reply-parent-msg-id=m1;reply-parent-user-login=viewer;user-id=2 "
        ":alice!alice@alice.tmi.twitch.tv PRIVMSG #chan :@viewer 🎉 so cute 💖",
        "@display-name=Bob;id=m3;user-id=3 :bob!bob@bob.tmi.twitch.tv PRIVMSG #chan :\x01ACTION dances\x01",
        "@display-name=\u3055\u304f\u3089;id=m4;user-id=4 :sakura!sakura@sakura.tmi.twitch.tv PRIVMSG #chan "
        ":\u8e0a\u3063\u3066\uff01 !dance",
    ]) + "\r\n"
    reward, reply, action, cjk = conn.receive_data(lines)
    assert reward.reward_id == "27c8e486-a386-40cc-9a4b-dbb5cf01e439" and reward.text == "please wave"
    assert isinstance(reward, ChatMessage)  # the PaidMessage comes from EventSub (see protocol docstring)
    assert reply.reply_to == "m1" and reply.text == "@viewer 🎉 so cute 💖"
    assert action.text == "dances" and action.me and not reply.me
    assert cjk.user_name == "さくら" and cjk.text == "踊って！ !dance"


def test_missing_display_name_falls_back_to_login():
    (event,) = p.TwitchIrcConnection("chan").receive_data(":lurker!lurker@lurker.tmi.twitch.tv PRIVMSG #chan :yo")
    assert (event.user_name, event.user_id, event.message_id) == ("lurker", "lurker", "")


def test_clearchat_and_clearmsg():
    conn = p.TwitchIrcConnection("dallas")
    timeout, ban, clear, deletion = conn.receive_data(
        "@ban-duration=350;room-id=12345678;target-user-id=87654321;tmi-sent-ts=1642715756806 "
        ":tmi.twitch.tv CLEARCHAT #dallas :ronni\r\n"
        "@room-id=12345678;target-user-id=87654321;tmi-sent-ts=1642715695392 :tmi.twitch.tv CLEARCHAT #dallas :ronni\r\n"
        "@room-id=12345678;tmi-sent-ts=1642715695392 :tmi.twitch.tv CLEARCHAT #dallas\r\n"
        "@login=ronni;room-id=;target-msg-id=abc-123-def;tmi-sent-ts=1642720582342 "
        ":tmi.twitch.tv CLEARMSG #dallas :HeyGuys\r\n")
    assert timeout == Ban("twitch", "dallas", "87654321", "ronni", 350.0)
    assert ban == Ban("twitch", "dallas", "87654321", "ronni", 0.0)
    assert clear == Ban("twitch", "dallas", "")
    assert deletion == Deletion("twitch", "dallas", "abc-123-def")


@pytest.mark.parametrize("bad", [
    "@badges=broadcaster/1;id=x",  # truncated after the tags
    ":tmi.twitch.tv",  # prefix only
    "@a=b :nick!n@h",  # tags + prefix, no command
    ":nick!n@h PRIV%MSG #chan :x",  # not a command
    "@bits=lots;id=x :a!a@a PRIVMSG #chan :cheer",  # non-integer bits
    ":a!a@a PRIVMSG #chan",  # no text
    ":a!a@a PRIVMSG nochannel :x",  # no #channel
    "@room-id=1 :tmi.twitch.tv CLEARMSG #chan :x",  # no target-msg-id
    ":tmi.twitch.tv :oops",
])
def test_malformed_lines_are_logged_and_skipped(bad, caplog):
    conn = p.TwitchIrcConnection("chan")
    good = "@id=ok;user-id=1 :a!a@a.tmi.twitch.tv PRIVMSG #chan :still here"
    with caplog.at_level(logging.WARNING, logger="chat_bridges.twitch.protocol"):
        events = conn.receive_data(bad + "\r\n" + good + "\r\n")
    assert [e.message_id for e in events] == ["ok"]
    assert "malformed" in caplog.text


def test_parse_line_raises_named_errors():
    with pytest.raises(p.IrcParseError, match="no command"):
        p.parse_line("@id=1")
    with pytest.raises(p.IrcParseError, match="empty"):
        p.parse_line("\r\n")


def test_serializers():
    assert p.cap_req() == "CAP REQ :twitch.tv/tags twitch.tv/commands"
    assert p.pass_("abc123") == "PASS oauth:abc123"
    assert p.pass_("oauth:abc123") == "PASS oauth:abc123"
    assert p.nick("MyBot") == "NICK mybot"
    assert p.join("#Dallas") == "JOIN #dallas"
    assert p.part("dallas") == "PART #dallas"
    assert p.pong("tmi.twitch.tv") == "PONG :tmi.twitch.tv"
    assert p.privmsg("dallas", "hello\r\nthere  you") == "PRIVMSG #dallas :hello there you"
    assert p.privmsg("dallas", "ok", "b34c-1") == "@reply-parent-msg-id=b34c-1 PRIVMSG #dallas :ok"
    assert p.privmsg("dallas", "ok") == "PRIVMSG #dallas :ok"
    assert len(p.privmsg("dallas", "x" * 900)) == len("PRIVMSG #dallas :") + 500
    assert p.parse_line(p.privmsg("dallas", "🎉 踊って")).params == ("#dallas", "🎉 踊って")
    assert p.anonymous_nick(random.Random(1)).startswith("justinfan")
    with pytest.raises(ValueError, match="channel"):
        p.join("two words")
    with pytest.raises(ValueError, match="empty"):
        p.privmsg("dallas", " \n ")


def test_connection_login_sequence_anonymous():
    conn = p.TwitchIrcConnection("Dallas", rng=random.Random(3))
    first = conn.data_to_send()
    assert first[0] == "CAP REQ :twitch.tv/tags twitch.tv/commands"
    assert not any(line.startswith("PASS") for line in first)
    assert first[1] == f"NICK {conn.nick}" and conn.nick.startswith("justinfan")
    assert conn.data_to_send() == []
    events = conn.receive_data(
        ":tmi.twitch.tv CAP * ACK :twitch.tv/tags twitch.tv/commands\r\n"
        f":tmi.twitch.tv 001 {conn.nick} :Welcome, GLHF!\r\n:tmi.twitch.tv 376 {conn.nick} :>\r\n")
    assert events == [p.CapAck(("twitch.tv/tags", "twitch.tv/commands")), p.Welcome(conn.nick)]
    assert conn.data_to_send() == ["JOIN #dallas"]
    assert conn.state is p.ConnectionState.JOINING
    events = conn.receive_data(f":{conn.nick}!{conn.nick}@{conn.nick}.tmi.twitch.tv JOIN #dallas\r\n"
                               ":other!other@other.tmi.twitch.tv JOIN #dallas")
    assert events == [p.Joined("dallas")]
    assert conn.state is p.ConnectionState.JOINED
    with pytest.raises(p.TwitchError, match="anonymous"):
        conn.send_privmsg("hi")


def test_connection_with_token_ping_reconnect_and_send():
    conn = p.TwitchIrcConnection("dallas", nick="MyBot", token="s3cret")
    assert conn.data_to_send() == ["CAP REQ :twitch.tv/tags twitch.tv/commands", "PASS oauth:s3cret", "NICK mybot"]
    with pytest.raises(p.TwitchError, match="logging_in"):
        conn.send_privmsg("too early")
    conn.receive_data(":tmi.twitch.tv 001 mybot :Welcome\r\n:mybot!mybot@mybot.tmi.twitch.tv JOIN #dallas")
    assert conn.data_to_send() == ["JOIN #dallas"]
    assert conn.receive_data("PING :tmi.twitch.tv\r\n") == []
    assert conn.data_to_send() == ["PONG :tmi.twitch.tv"]
    conn.send_privmsg("hello", "parent-1")
    assert conn.data_to_send() == ["@reply-parent-msg-id=parent-1 PRIVMSG #dallas :hello"]
    assert conn.receive_data(":tmi.twitch.tv RECONNECT") == [p.Reconnect()]
    assert conn.state is p.ConnectionState.CLOSED


def test_login_failure_notice():
    conn = p.TwitchIrcConnection("dallas", nick="mybot", token="bad")
    events = conn.receive_data(":tmi.twitch.tv NOTICE * :Login authentication failed\r\n")
    assert events == [p.LoginFailed("Login authentication failed")]
    assert conn.state is p.ConnectionState.CLOSED
    # a NOTICE after the login is information, not a failure
    ok = p.TwitchIrcConnection("dallas")
    ok.receive_data(":tmi.twitch.tv 001 x :Welcome")
    assert ok.receive_data("@msg-id=msg_ratelimit :tmi.twitch.tv NOTICE #dallas :slow down") == []


def test_token_requires_nick():
    with pytest.raises(ValueError, match="nick"):
        p.TwitchIrcConnection("dallas", token="t")


def test_usernotice_subs_and_gifts():
    conn = p.TwitchIrcConnection("dallas")
    resub, gift, mystery, raid = (
        "@badge-info=;badges=staff/1,broadcaster/1,turbo/1;color=#008000;display-name=ronni;emotes=;"
        "id=db25007f-7a18-43eb-9379-80131e44d633;login=ronni;mod=0;msg-id=resub;msg-param-cumulative-months=6;"
        "msg-param-streak-months=2;msg-param-should-share-streak=1;msg-param-sub-plan=Prime;"
        "msg-param-sub-plan-name=Prime;room-id=12345678;subscriber=1;system-msg=ronni\\shas\\ssubscribed\\sfor\\s6"
        "\\smonths!;tmi-sent-ts=1507246572675;turbo=1;user-id=87654321;user-type=staff "
        ":tmi.twitch.tv USERNOTICE #dallas :Great stream -- keep it up!",
        "@badges=subscriber/0;display-name=TWW2;id=e9176cd8-5e22-4684-ad40-ce53c2561c5e;login=tww2;"
        "msg-id=subgift;msg-param-months=1;msg-param-recipient-display-name=Mr_Woodchuck;"
        "msg-param-recipient-id=55554444;msg-param-recipient-user-name=mr_woodchuck;msg-param-sub-plan=2000;"
        "room-id=19571752;subscriber=1;tmi-sent-ts=1521159445153;user-id=13405587 "
        ":tmi.twitch.tv USERNOTICE #dallas",
        "@display-name=TWW2;id=x;login=tww2;msg-id=submysterygift;msg-param-mass-gift-count=5;"
        "msg-param-sub-plan=1000;user-id=13405587 :tmi.twitch.tv USERNOTICE #dallas",
        "@display-name=TestChannel;id=r;login=testchannel;msg-id=raid;msg-param-viewerCount=15;user-id=1 "
        ":tmi.twitch.tv USERNOTICE #dallas",
    )
    events = conn.receive_data("\r\n".join([resub, gift, mystery, raid]))
    assert len(events) == 2  # the mystery gift is counted through its subgift notices; raids are not paid
    assert events[0] == PaidMessage("twitch", "dallas", "87654321", "ronni", "Great stream -- keep it up!", 499,
                                    "guard", "db25007f-7a18-43eb-9379-80131e44d633", Role.BROADCASTER,
                                    1507246572.675)
    assert (events[1].kind, events[1].value_cents, events[1].user_name, events[1].text) == ("gift", 999, "TWW2", "")
    assert conn.receive_data(gift.replace("sub-plan=2000", "sub-plan=9999")) == []  # unknown plan: skipped


def test_receive_data_never_raises_on_mangled_lines():
    """Truncations and random byte flips of real lines: each is either parsed or logged and skipped."""
    rng = random.Random(0)
    seeds = [PRIVMSG, ":tmi.twitch.tv CLEARCHAT #dallas :ronni", "@login=a;target-msg-id=x :tmi.twitch.tv CLEARMSG #d :y",
             "@bits=5;id=1 :a!a@a PRIVMSG #c :cheer5", "@msg-id=subgift;msg-param-sub-plan=1000 :tmi.twitch.tv USERNOTICE #c",
             "PING :tmi.twitch.tv", ":tmi.twitch.tv 001 x :Welcome"]
    alphabet = " :;=@#!\\\x01\r\n/abc1é🎉"
    conn = p.TwitchIrcConnection("c")
    for _ in range(2000):
        line = rng.choice(seeds)
        if rng.random() < 0.5:
            line = line[: rng.randrange(len(line) + 1)]
        chars = list(line)
        for _ in range(rng.randrange(4)):
            chars.insert(rng.randrange(len(chars) + 1), rng.choice(alphabet))
        conn.receive_data("".join(chars))  # must not raise
    conn.data_to_send()


@pytest.mark.parametrize(("text", "bits", "expected"), [
    ("Cheer100 !wave", 100, "!wave"),
    ("!wave Cheer100", 100, "!wave"),
    ("cheer1 cheer1 !heart cheer1", 3, "!heart"),
    ("Kappa100 BibleThump50 !nod please", 150, "!nod please"),
    ("!bow mychan25", 25, "!bow"),  # a channel's own cheermote: the known ones do not add up to the bits
    ("!bow abc1 mychan25", 25, "!bow abc1"),  # only the word that makes up the missing bits goes
    ("Cheer100 wave123 !wave", 100, "wave123 !wave"),  # bits already accounted for: other words stay
    ("uni100", 100, ""),
])
def test_cheermotes_are_stripped(text: str, bits: int, expected: str) -> None:
    assert p.strip_cheermotes(text, bits) == expected
    line = f"@bits={bits};id=c1;user-id=5 :a!a@a PRIVMSG #chan :{text}"
    (event,) = p.TwitchIrcConnection("chan").receive_data(line)
    assert isinstance(event, PaidMessage) and event.text == expected and event.value_cents == bits


def test_only_login_failure_notices_end_the_login() -> None:
    conn = p.TwitchIrcConnection("dallas", nick="mybot", token="tok")
    assert conn.receive_data(":tmi.twitch.tv NOTICE * :Server restarting in 5 minutes\r\n") == []
    assert conn.state is p.ConnectionState.LOGGING_IN
    conn.data_to_send()
    assert conn.receive_data(":tmi.twitch.tv 001 mybot :Welcome") == [p.Welcome("mybot")]
    assert conn.data_to_send() == ["JOIN #dallas"]
    for reason in ("Improperly formatted auth", "Login unsuccessful", "Invalid NICK"):
        bad = p.TwitchIrcConnection("dallas", nick="mybot", token="tok")
        assert bad.receive_data(f":tmi.twitch.tv NOTICE * :{reason}") == [p.LoginFailed(reason)]
        assert bad.state is p.ConnectionState.CLOSED
