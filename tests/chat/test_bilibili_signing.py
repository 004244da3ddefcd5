"""WBI signing against the public vectors of bilibili-API-collect (docs/misc/sign/wbi.md), and the open
platform's HMAC-SHA256 header signature against a vector computed independently with openssl:

    printf 'x-bili-accesskeyid:AKID123\\nx-bili-content-md5:0bbc...2646\\n...x-bili-timestamp:1700000000' \\
        | openssl dgst -sha256 -hmac SECRET456
"""

from __future__ import annotations

import pytest

from chat_bridges.bilibili import open_platform, wbi
from chat_bridges.bilibili.errors import InitError, OpenPlatformError

DOC_KEYS = wbi.WbiKeys("7cd084941338484aae1ad9425b84077c", "4932caff0ff746eab6f01bf08b70ac45")


def test_mixin_key_doc_vector() -> None:
    assert DOC_KEYS.mixin_key == "ea1db124af3c7062474693fa704f4ff8"


def test_w_rid_doc_vector() -> None:
    signed = wbi.sign({"foo": "114", "bar": "514", "zab": 1919810}, DOC_KEYS, wts=1702204169)
    assert signed["w_rid"] == "8f6f2b5b3d485fe1886cec6a0be8c5d4"
    assert wbi.encode_query(signed) == "bar=514&foo=114&wts=1702204169&zab=1919810&w_rid=8f6f2b5b3d485fe1886cec6a0be8c5d4"


def test_encoding_is_uppercase_percent_and_space_as_20() -> None:
    # The doc's encoding example: sorted, CJK as uppercase %XX, space as %20 (not '+').
    params = dict(sorted({"foo": "one one four", "bar": "五一四", "baz": 1919810}.items()))
    assert wbi.encode_query(params) == "bar=%E4%BA%94%E4%B8%80%E5%9B%9B&baz=1919810&foo=one%20one%20four"


def test_filtered_characters_do_not_change_the_signature() -> None:
    plain = wbi.sign({"q": "abc"}, DOC_KEYS, wts=1)
    noisy = wbi.sign({"q": "a!b'(c)*"}, DOC_KEYS, wts=1)
    assert noisy == plain


def test_keys_from_nav() -> None:
    nav = {"isLogin": False, "wbi_img": {"img_url": "https://i0.hdslb.com/bfs/wbi/7cd084941338484aae1ad9425b84077c.png",
                                         "sub_url": "https://i0.hdslb.com/bfs/wbi/4932caff0ff746eab6f01bf08b70ac45.png"}}
    assert wbi.WbiKeys.from_nav(nav) == DOC_KEYS
    with pytest.raises(ValueError, match="wbi_img"):
        wbi.WbiKeys.from_nav({"isLogin": False})
    with pytest.raises(ValueError, match="need 64"):
        wbi.mixin_key("short", "keys")


def test_open_platform_signature_vector() -> None:
    body = open_platform.encode_body({"code": "ABCDEF", "app_id": 1234})
    assert body == b'{"code":"ABCDEF","app_id":1234}'
    headers = open_platform.sign_headers(body, access_key_id="AKID123", access_key_secret="SECRET456",
                                         nonce="424242", timestamp=1700000000)
    assert headers["x-bili-content-md5"] == "0bbc5477358c8f57e36120950c0f2646"
    assert headers["Authorization"] == "f661a0ac46f793ae7e4c76ffa6b15ba111c7b0dafcfa907fb53cc24d1c77a885"
    assert headers["x-bili-signature-method"] == "HMAC-SHA256"
    assert headers["x-bili-signature-version"] == "1.0"
    assert headers["Content-Type"] == "application/json"
    assert "SECRET456" not in repr(headers)


def test_open_platform_response_errors() -> None:
    with pytest.raises(OpenPlatformError) as info:
        open_platform.parse_response("/v2/app/start", 200, b'{"code":7007,"message":"bad code","request_id":"r1"}')
    assert info.value.code == 7007 and "r1" in str(info.value)
    with pytest.raises(InitError, match="non-JSON"):
        open_platform.parse_response("/v2/app/start", 502, b"<html>")
    with pytest.raises(InitError, match="wss_link"):
        open_platform.parse_start({"websocket_info": {"auth_body": "x", "wss_link": []}})
